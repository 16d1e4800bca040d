//! Which decompressor a layer gets: the media type table of docs/design/layers.md#compression and the
//! magic-byte sniffing of docs/design/layers.md#compression.
//!
//! The OCI uncompressed types are read as they are. Every other accepted type (those that
//! declare gzip or zstd, and Docker's `rootfs.diff.tar`, whose compression is unknown) is
//! sniffed the way containerd's `DecompressStream` does it: gzip magic, zstd magic or a
//! zstd skippable frame, otherwise uncompressed. A zero-byte blob has no magic and so is
//! an empty uncompressed stream (docs/design/layers.md#compression). Anything else is rejected with INVALID_ARGUMENT.

use tonic::Status;

/// How to find the compression of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecompressionPlan {
    /// Never decompress (the OCI `…v1.tar` types).
    Uncompressed,
    /// Look at the first bytes ([`sniff`]).
    Detect,
}

/// The compression of a blob's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Number of bytes [`sniff`] wants to see (fewer are fine at the end of a blob).
pub(crate) const SNIFF_LENGTH: usize = 4;

/// The plan for a layer media type, or INVALID_ARGUMENT for types that cannot be applied
/// (encrypted layers, artifacts, erofs, unknown types).
pub(crate) fn plan_for_media_type(media_type: &str) -> Result<DecompressionPlan, Status> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(DecompressionPlan::Uncompressed)
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(DecompressionPlan::Detect),
        _ => Err(Status::invalid_argument(format!(
            "Unsupported layer media type {media_type:?}"
        ))),
    }
}

/// Detects the compression from the first bytes of a blob.
pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        // A zstd frame, or a skippable frame (magic 0x184D2A50…0x184D2A5F, little endian).
        Compression::Zstd
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            plan_for_media_type("application/vnd.oci.image.layer.v1.tar").unwrap(),
            DecompressionPlan::Uncompressed
        );
        assert_eq!(
            plan_for_media_type("application/vnd.docker.image.rootfs.diff.tar").unwrap(),
            DecompressionPlan::Detect
        );
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.empty.v1+json",
            "application/vnd.in-toto+json",
            "application/vnd.erofs.layer.v1",
            "",
        ] {
            let err = plan_for_media_type(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                err.message(),
                format!("Unsupported layer media type {bad:?}")
            );
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 0x08, 0x00]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(&[0x5a, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(sniff(&[0x60, 0x2a, 0x4d, 0x18]), Compression::None);
        assert_eq!(sniff(b"etc/"), Compression::None);
        assert_eq!(sniff(&[]), Compression::None);
        assert_eq!(sniff(&[0x1f, 0x8b]), Compression::None);
    }
}
