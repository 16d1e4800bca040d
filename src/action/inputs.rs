//! The client's inputs (steps 1 and 2 of docs/how-it-works.md): the Action and Command
//! read from the CAS, and the decision whether the action names images at all. The
//! image properties are looked for in `Action.platform`, or, for older clients that send
//! no Action platform, in `Command.platform`.
//!
//! When the Action's platform names images, the Command and the input root Directory
//! are read in one batch (docs/how-it-works.md, "Storage calls per action").
//!
//! A missing Action or Command is FAILED_PRECONDITION with a PreconditionFailure naming
//! it, as REAPI's Execute prescribes, so that the client uploads it and retries.

// Command.platform is deprecated in REAPI, but older clients still send it; it is read
// on purpose.
#![allow(deprecated)]

use super::images::{self, ImageProperty};
use crate::blobstore::{decode_message, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::status::wrap;
use bytes::Bytes;
use prost::Message;
use std::sync::Arc;
use tonic::{Code, Status};

/// An action that names images, with what its rewrite needs.
pub(crate) struct NamingImages {
    pub command: reapi::Command,
    pub images: Vec<ImageProperty>,
    /// The input root Directory, when it was read beside the Command (it always is when
    /// the Action's platform names the images). `None` leaves it to the merge to read.
    pub input_root: Option<(reapi::Digest, Arc<reapi::Directory>)>,
}

/// The images `action` names in any of the properties `names`, with its Command; `None`
/// when it names none (it is forwarded as it is). When the Action's platform names
/// images, the Command and the input root are read in one batch.
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
        instance.digest_function.validate(command_digest)?;
        // The input root rides along when it is valid and not the empty Directory; if
        // it cannot be read here, the merge reads it again and reports what is wrong.
        let input_root = action
            .input_root_digest
            .as_ref()
            .filter(|d| d.size_bytes > 0 && instance.digest_function.validate(d).is_ok());
        let mut wanted = vec![command_digest.clone()];
        wanted.extend(input_root.cloned());
        let mut read = cas.get_batch(instance, wanted).await.into_iter();
        let command_blob = read.next().expect("one result per digest");
        let command = decoded(command_blob, command_digest, "Command")?;
        let input_root = input_root.and_then(|digest| {
            let data = read.next()?.ok()?;
            let directory = decode_message::<reapi::Directory>(digest, data).ok()?;
            Some((digest.clone(), Arc::new(directory)))
        });
        return Ok(Some(NamingImages {
            command,
            images,
            input_root,
        }));
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
    Ok(Some(NamingImages {
        command,
        images,
        input_root: None,
    }))
}

/// Reads the client's Action or Command (`what`).
pub(crate) async fn read<M: Message + Default>(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    digest: &reapi::Digest,
    what: &str,
) -> Result<M, Status> {
    instance.digest_function.validate(digest)?;
    let data = cas.get(instance, digest).await;
    decoded(data, digest, what)
}

/// The client's Action or Command (`what`) decoded from the result of reading it: a
/// missing one is FAILED_PRECONDITION naming it.
fn decoded<M: Message + Default>(
    data: Result<Bytes, Status>,
    digest: &reapi::Digest,
    what: &str,
) -> Result<M, Status> {
    match data.and_then(|data| decode_message::<M>(digest, data)) {
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
