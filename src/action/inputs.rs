//! The client's inputs (steps 1 and 2 of docs/how-it-works.md): the Action and Command
//! read from the CAS, and the decision whether the action names images at all. The
//! image properties are looked for in `Action.platform`, or, for older clients that send
//! no Action platform, in `Command.platform`.
//!
//! A missing Action or Command is FAILED_PRECONDITION with a PreconditionFailure naming
//! it, as REAPI's Execute prescribes, so that the client uploads it and retries.

// Command.platform is deprecated in REAPI, but older clients still send it; it is read
// on purpose.
#![allow(deprecated)]

use super::images::{self, ImageProperty};
use crate::blobstore::{get_message, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::status::wrap;
use prost::Message;
use tonic::{Code, Status};

/// An action that names images, with what its rewrite needs.
pub(crate) struct NamingImages {
    pub command: reapi::Command,
    pub images: Vec<ImageProperty>,
}

/// The images `action` names in any of the properties `names`, with its Command; `None`
/// when it names none (it is forwarded as it is).
pub(crate) async fn images_named(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    action: &reapi::Action,
    names: &[String],
) -> Result<Option<NamingImages>, Status> {
    let images = images::collect(action.platform.as_ref(), names);
    let command_digest = action
        .command_digest
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("Action has no command digest"))?;
    if !images.is_empty() {
        let command = read(cas, instance, command_digest, "Command").await?;
        return Ok(Some(NamingImages { command, images }));
    }
    let action_has_platform = action
        .platform
        .as_ref()
        .is_some_and(|p| !p.properties.is_empty());
    if action_has_platform {
        return Ok(None);
    }
    let command: reapi::Command = read(cas, instance, command_digest, "Command").await?;
    let images = images::collect(command.platform.as_ref(), names);
    if images.is_empty() {
        return Ok(None);
    }
    Ok(Some(NamingImages { command, images }))
}

/// Reads the client's Action or Command (`what`).
pub(crate) async fn read<M: Message + Default>(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    digest: &reapi::Digest,
    what: &str,
) -> Result<M, Status> {
    instance.digest_function.validate(digest)?;
    match get_message::<M>(cas, instance, digest).await {
        Ok(m) => Ok(m),
        Err(s) if s.code() == Code::NotFound => Err(crate::status::missing_blobs(
            format!(
                "{what} {} is not in the Content Addressable Storage",
                crate::digest::display(digest)
            ),
            std::slice::from_ref(digest),
        )),
        Err(s) => Err(wrap(s, format!("Failed to read {what}"))),
    }
}
