//! OCI content digests (`sha256:<hex>`, `sha384:<hex>`, `sha512:<hex>`): parsing the strings that
//! manifests and image configs carry, and hashing streams to compare against them
//! (docs/design/layers.md#verification).
//!
//! These are the registry's digests, unrelated to the REAPI instance's digest function
//! (`crate::digest`). Any other algorithm cannot be checked, so it is rejected.

use sha2::Digest as _;
use std::fmt;
use tonic::Status;

/// The digest algorithms an OCI digest may use here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OciAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl OciAlgorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_length(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }
}

/// A parsed `algorithm:hex` digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OciDigest {
    algorithm: OciAlgorithm,
    hex: String,
}

impl OciDigest {
    /// Parses a digest. The encoded part must be lower-case hexadecimal of the
    /// algorithm's length (OCI descriptor.md). Errors are INVALID_ARGUMENT.
    pub(crate) fn parse(value: &str) -> Result<Self, Status> {
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(Status::invalid_argument(format!(
                "Digest {value:?} has no algorithm prefix"
            )));
        };
        let algorithm = match algorithm {
            "sha256" => OciAlgorithm::Sha256,
            "sha384" => OciAlgorithm::Sha384,
            "sha512" => OciAlgorithm::Sha512,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "Digest {value:?} uses unsupported digest algorithm {algorithm:?}"
                )))
            }
        };
        if hex.len() != algorithm.hex_length()
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(Status::invalid_argument(format!(
                "Digest {value:?} does not have {} lower-case hexadecimal characters",
                algorithm.hex_length()
            )));
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// A hasher computing a digest with the same algorithm.
    pub(crate) fn hasher(&self) -> OciHasher {
        match self.algorithm {
            OciAlgorithm::Sha256 => OciHasher::Sha256(sha2::Sha256::new()),
            OciAlgorithm::Sha384 => OciHasher::Sha384(sha2::Sha384::new()),
            OciAlgorithm::Sha512 => OciHasher::Sha512(sha2::Sha512::new()),
        }
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// Incremental hashing into an [`OciDigest`].
pub(crate) enum OciHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl OciHasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> OciDigest {
        match self {
            Self::Sha256(h) => OciDigest {
                algorithm: OciAlgorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Self::Sha384(h) => OciDigest {
                algorithm: OciAlgorithm::Sha384,
                hex: hex::encode(h.finalize()),
            },
            Self::Sha512(h) => OciDigest {
                algorithm: OciAlgorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_hashes_sha256() {
        let d = OciDigest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.hasher().finish(), d);
    }

    #[test]
    fn hashes_sha512() {
        let d = OciDigest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        let mut h = d.hasher();
        h.update(b"abc");
        assert!(h.finish().to_string().starts_with("sha512:ddaf35a1"));
    }

    #[test]
    fn hashes_sha384() {
        let d = OciDigest::parse(&format!("sha384:{}", "0".repeat(96))).unwrap();
        let mut h = d.hasher();
        h.update(b"abc");
        assert!(h.finish().to_string().starts_with("sha384:cb00753f"));
        assert!(OciDigest::parse(&format!("sha384:{}", "0".repeat(64))).is_err());
    }

    #[test]
    fn rejects_bad_digests() {
        let err = OciDigest::parse("md5:d41d8cd98f00b204e9800998ecf8427e").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "Digest \"md5:d41d8cd98f00b204e9800998ecf8427e\" uses unsupported digest algorithm \"md5\""
        );
        assert!(OciDigest::parse("e3b0c442").is_err());
        assert!(OciDigest::parse(&EMPTY_SHA256.to_uppercase().replace("SHA", "sha")).is_err());
        assert!(OciDigest::parse("sha256:abc").is_err());
    }
}
