//! Digests of the REAPI instance: which hash function an instance uses, how to hash blobs
//! with it, and validation of the `Digest` messages clients send.
//!
//! These digests have nothing to do with the `sha256:` digests of OCI registries (see
//! `registry`): a file's REAPI digest uses the instance's digest function (docs/design/directories.md#digests).

use crate::proto::reapi;
use reapi::digest_function::Value as DigestFunctionValue;
use sha2::Digest as _;
use tonic::Status;

/// The hash functions the expander can compute. Buildbarn supports more (BLAKE3, the
/// VSO hash, …); requests that use them are answered with INVALID_ARGUMENT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Sha384,
    Sha512,
}

impl DigestFunction {
    /// The digest function a request names, or the one implied by the length of a hash
    /// when the request leaves it unset (as REAPI prescribes for old clients).
    pub fn from_request(value: i32, hash_for_inference: &str) -> Result<Self, Status> {
        match DigestFunctionValue::try_from(value).unwrap_or(DigestFunctionValue::Unknown) {
            DigestFunctionValue::Sha256 => Ok(Self::Sha256),
            DigestFunctionValue::Sha384 => Ok(Self::Sha384),
            DigestFunctionValue::Sha512 => Ok(Self::Sha512),
            DigestFunctionValue::Unknown if value == 0 => match hash_for_inference.len() {
                64 => Ok(Self::Sha256),
                96 => Ok(Self::Sha384),
                128 => Ok(Self::Sha512),
                n => Err(Status::invalid_argument(format!(
                    "Unknown digest hash length: {n} characters"
                ))),
            },
            _ => Err(Status::invalid_argument(format!(
                "Unsupported digest function: {value}"
            ))),
        }
    }

    /// The REAPI enum value.
    pub fn to_proto(self) -> DigestFunctionValue {
        match self {
            Self::Sha256 => DigestFunctionValue::Sha256,
            Self::Sha384 => DigestFunctionValue::Sha384,
            Self::Sha512 => DigestFunctionValue::Sha512,
        }
    }

    /// Lower-case name as used in ByteStream resource names ("sha256").
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Number of hexadecimal characters of a hash.
    pub(crate) fn hash_length(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }

    /// A streaming hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new(), 0),
            Self::Sha384 => Hasher::Sha384(sha2::Sha384::new(), 0),
            Self::Sha512 => Hasher::Sha512(sha2::Sha512::new(), 0),
        }
    }

    /// The digest of `data`.
    pub fn digest_of(self, data: &[u8]) -> reapi::Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }

    /// The digest of the empty blob, which servers treat as always present.
    pub fn empty_digest(self) -> reapi::Digest {
        self.digest_of(&[])
    }

    /// Checks that `digest` is well-formed for this function: a lower-case hexadecimal
    /// hash of the right length and a non-negative size (docs/design/directories.md#what-buildbarn-rejects).
    pub fn validate(self, digest: &reapi::Digest) -> Result<(), Status> {
        if digest.hash.len() != self.hash_length() {
            return Err(Status::invalid_argument(format!(
                "Hash {:?} has length {}, while {} characters were expected for {}",
                digest.hash,
                digest.hash.len(),
                self.hash_length(),
                self.name()
            )));
        }
        if !digest
            .hash
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(Status::invalid_argument(format!(
                "Non-hexadecimal character in digest hash {:?}",
                digest.hash
            )));
        }
        if digest.size_bytes < 0 {
            return Err(Status::invalid_argument(format!(
                "Invalid digest size: {} bytes",
                digest.size_bytes
            )));
        }
        Ok(())
    }
}

/// Incremental hashing with a byte count, producing a REAPI `Digest`.
pub enum Hasher {
    Sha256(sha2::Sha256, u64),
    Sha384(sha2::Sha384, u64),
    Sha512(sha2::Sha512, u64),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h, n) => {
                h.update(data);
                *n += data.len() as u64
            }
            Hasher::Sha384(h, n) => {
                h.update(data);
                *n += data.len() as u64
            }
            Hasher::Sha512(h, n) => {
                h.update(data);
                *n += data.len() as u64
            }
        }
    }

    pub fn finish(self) -> reapi::Digest {
        let (hash, size) = match self {
            Hasher::Sha256(h, n) => (hex::encode(h.finalize()), n),
            Hasher::Sha384(h, n) => (hex::encode(h.finalize()), n),
            Hasher::Sha512(h, n) => (hex::encode(h.finalize()), n),
        };
        reapi::Digest {
            hash,
            size_bytes: size as i64,
        }
    }
}

/// `hash-size`, the form Buildbarn prints digests in.
pub fn display(digest: &reapi::Digest) -> String {
    format!("{}-{}", digest.hash, digest.size_bytes)
}

/// Encodes a message and returns its bytes with their digest.
pub fn encode_message<M: prost::Message>(
    function: DigestFunction,
    message: &M,
) -> (reapi::Digest, bytes::Bytes) {
    let data = bytes::Bytes::from(message.encode_to_vec());
    (function.digest_of(&data), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_hello() {
        let d = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            d.hash,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.size_bytes, 5);
    }

    #[test]
    fn infers_function_from_hash_length() {
        assert_eq!(
            DigestFunction::from_request(0, &"a".repeat(64)).unwrap(),
            DigestFunction::Sha256
        );
        assert_eq!(
            DigestFunction::from_request(0, &"a".repeat(128)).unwrap(),
            DigestFunction::Sha512
        );
        let err = DigestFunction::from_request(0, "abc").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn rejects_unsupported_function() {
        let err = DigestFunction::from_request(DigestFunctionValue::Blake3 as i32, "").unwrap_err();
        assert_eq!(err.message(), "Unsupported digest function: 9");
    }

    #[test]
    fn validate_rejects_upper_case_and_bad_length() {
        let f = DigestFunction::Sha256;
        let mut d = f.digest_of(b"x");
        assert!(f.validate(&d).is_ok());
        d.hash = d.hash.to_uppercase();
        assert!(f
            .validate(&d)
            .unwrap_err()
            .message()
            .starts_with("Non-hexadecimal character"));
        d.hash = "ab".into();
        assert_eq!(
            f.validate(&d).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
