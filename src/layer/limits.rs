//! Limits on layer metadata (names, link targets, extension records, entry counts),
//! enforced while the tar stream is parsed, before memory is spent on what they bound.
//!
//! Fixed limits, what Linux workers can materialise and what Go's archive/tar (used by
//! docker, containerd and umoci) reads:
//! - a path component: [`MAXIMUM_COMPONENT_BYTES`] (255, `NAME_MAX`);
//! - a path or link target: [`MAXIMUM_PATH_BYTES`] (4096, `PATH_MAX`);
//! - one PAX extended header (`x`) or GNU long name/link (`L`, `K`) record:
//!   [`MAXIMUM_EXTENSION_RECORD_BYTES`] (1 MiB), checked on its tar header, before `tar`
//!   reads the record into memory.
//!
//! Configurable totals ([`MetadataLimits`]): entries and bytes of names and link targets,
//! per layer (checked while parsing) and per image (checked on the changesets before they
//! are applied). A violation is FAILED_PRECONDITION naming the limit and, where there is
//! one, the entry (truncated to [`SHOWN_NAME_BYTES`]).
//!
//! Memory: while one layer is parsed, what `tar` buffers for one entry is bounded by
//! `readers::METADATA_LIMIT_BYTES` (three records, their headers and padding); what is
//! kept is at most `maximum_layer_entries` changeset entries holding at most
//! `maximum_layer_name_bytes` bytes of names and targets (each name at most 4096 bytes,
//! however it was encoded: ustar fields, GNU long names or PAX records).

use crate::proto::cache::{layer_entry::Kind, LayerChangeset, LayerEntry};
use std::sync::Arc;
use tonic::Status;

/// `NAME_MAX` of Linux file systems.
pub const MAXIMUM_COMPONENT_BYTES: usize = 255;
/// `PATH_MAX` of Linux.
pub const MAXIMUM_PATH_BYTES: usize = 4096;
/// One PAX extended header or GNU long name/link record, as in Go's archive/tar.
pub const MAXIMUM_EXTENSION_RECORD_BYTES: u64 = 1 << 20;
/// How much of an entry name an error message shows.
pub const SHOWN_NAME_BYTES: usize = 256;

/// Configurable totals of layer metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Tar entries of one layer (extension headers not counted).
    pub maximum_layer_entries: u64,
    /// Bytes of entry names and link targets of one layer.
    pub maximum_layer_name_bytes: u64,
    /// Changeset entries of all layers of one image (a layer listed twice counts twice).
    pub maximum_image_entries: u64,
    /// Bytes of entry names and link targets of all layers of one image.
    pub maximum_image_name_bytes: u64,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        use crate::config::container_images as defaults;
        Self {
            maximum_layer_entries: defaults::DEFAULT_MAXIMUM_LAYER_ENTRIES,
            maximum_layer_name_bytes: defaults::DEFAULT_MAXIMUM_LAYER_NAME_BYTES,
            maximum_image_entries: defaults::DEFAULT_MAXIMUM_IMAGE_ENTRIES,
            maximum_image_name_bytes: defaults::DEFAULT_MAXIMUM_IMAGE_NAME_BYTES,
        }
    }
}

/// The name as shown in error messages: lossy UTF-8, cut to [`SHOWN_NAME_BYTES`] bytes
/// with the total length appended.
pub(crate) fn shown(name: &[u8]) -> String {
    if name.len() <= SHOWN_NAME_BYTES {
        return String::from_utf8_lossy(name).into_owned();
    }
    format!(
        "{}… ({} bytes)",
        String::from_utf8_lossy(&name[..SHOWN_NAME_BYTES]),
        name.len()
    )
}

/// Checks a path (or hard-link target, `components` true) or a symlink target
/// (`components` false) against the fixed limits.
pub(crate) fn check_name(name: &[u8], what: &str, components: bool) -> Result<(), String> {
    if name.len() > MAXIMUM_PATH_BYTES {
        return Err(format!(
            "Limit exceeded: {what} is {} bytes long, while at most {MAXIMUM_PATH_BYTES} \
             bytes are allowed",
            name.len()
        ));
    }
    if components {
        if let Some(part) = name
            .split(|&b| b == b'/')
            .find(|p| p.len() > MAXIMUM_COMPONENT_BYTES)
        {
            return Err(format!(
                "Limit exceeded: a component of the {what} is {} bytes long, while at most \
                 {MAXIMUM_COMPONENT_BYTES} bytes are allowed",
                part.len()
            ));
        }
    }
    Ok(())
}

/// Bytes of names and link targets an entry holds.
pub(crate) fn name_bytes(entry: &LayerEntry) -> u64 {
    let target = match &entry.kind {
        Some(Kind::Symlink(symlink)) => symlink.target.len(),
        Some(Kind::HardLink(link)) => link.target.len(),
        _ => 0,
    };
    (entry.path.len() + target) as u64
}

/// Running totals of one layer.
#[derive(Default)]
pub(crate) struct LayerTotals {
    entries: u64,
    name_bytes: u64,
}

impl LayerTotals {
    /// Counts one tar entry.
    pub(crate) fn add_entry(&mut self, limits: &MetadataLimits) -> Result<(), String> {
        self.entries += 1;
        if self.entries > limits.maximum_layer_entries {
            return Err(format!(
                "Limit exceeded: the layer has more than {} entries \
                 (containerImages.maximumLayerEntries)",
                limits.maximum_layer_entries
            ));
        }
        Ok(())
    }

    /// Counts the names and link targets of one changeset entry.
    pub(crate) fn add_names(
        &mut self,
        entry: &LayerEntry,
        limits: &MetadataLimits,
    ) -> Result<(), String> {
        self.name_bytes += name_bytes(entry);
        if self.name_bytes > limits.maximum_layer_name_bytes {
            return Err(format!(
                "Limit exceeded: the layer has more than {} bytes of entry names and link \
                 targets (containerImages.maximumLayerNameBytes)",
                limits.maximum_layer_name_bytes
            ));
        }
        Ok(())
    }
}

/// Checks the per-image totals on the changesets of an image's layers, in order
/// (`digests[i]` names `changesets[i]`). FAILED_PRECONDITION naming the layer at which a
/// limit was crossed.
pub fn check_image_totals(
    changesets: &[Arc<LayerChangeset>],
    digests: &[String],
    limits: &MetadataLimits,
) -> Result<(), Status> {
    let (mut entries, mut names) = (0u64, 0u64);
    for (position, changeset) in changesets.iter().enumerate() {
        entries += changeset.entries.len() as u64;
        names += changeset.entries.iter().map(name_bytes).sum::<u64>();
        let crossed = if entries > limits.maximum_image_entries {
            Some(format!(
                "more than {} entries (containerImages.maximumImageEntries)",
                limits.maximum_image_entries
            ))
        } else if names > limits.maximum_image_name_bytes {
            Some(format!(
                "more than {} bytes of entry names and link targets \
                 (containerImages.maximumImageNameBytes)",
                limits.maximum_image_name_bytes
            ))
        } else {
            None
        };
        if let Some(crossed) = crossed {
            let digest = digests.get(position).map(String::as_str).unwrap_or("?");
            return Err(Status::failed_precondition(format!(
                "Limit exceeded: the image's layers up to layer {digest} (position \
                 {position}) have {crossed}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let component = "c".repeat(MAXIMUM_COMPONENT_BYTES);
        assert!(check_name(component.as_bytes(), "path", true).is_ok());
        let long = format!("{component}c");
        assert_eq!(
            check_name(long.as_bytes(), "path", true).unwrap_err(),
            "Limit exceeded: a component of the path is 256 bytes long, while at most 255 \
             bytes are allowed"
        );
        assert!(check_name(long.as_bytes(), "symlink target", false).is_ok());
        let path = format!("{}/", "a/".repeat(MAXIMUM_PATH_BYTES / 2 - 1)) + "b";
        assert_eq!(path.len(), MAXIMUM_PATH_BYTES);
        assert!(check_name(path.as_bytes(), "path", true).is_ok());
        assert_eq!(
            check_name(format!("{path}b").as_bytes(), "path", true).unwrap_err(),
            "Limit exceeded: path is 4097 bytes long, while at most 4096 bytes are allowed"
        );
    }

    #[test]
    fn shown_names_are_truncated() {
        assert_eq!(shown(b"a/b"), "a/b");
        let long = "x".repeat(1000);
        assert_eq!(
            shown(long.as_bytes()),
            format!("{}… (1000 bytes)", &long[..SHOWN_NAME_BYTES])
        );
    }
}
