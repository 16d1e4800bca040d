//! Turns errors of the `oci-client` crate into `tonic::Status`, and says which are worth a
//! retry.
//!
//! | what happened | code | retried |
//! |---|---|---|
//! | connection refused/reset, timeout, broken body, 5xx | `UNAVAILABLE` | yes |
//! | 429 / `TOOMANYREQUESTS` | `UNAVAILABLE` | yes, with a longer delay |
//! | 401, `UNAUTHORIZED`, `DENIED`, 403, token request refused | `PERMISSION_DENIED` | no |
//! | 404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN` | `NOT_FOUND` | no |
//! | `NAME_INVALID`, `TAG_INVALID`, `DIGEST_INVALID` | `INVALID_ARGUMENT` | no |
//! | content does not match its digest | `DATA_LOSS` | no |
//! | anything else the registry says | `FAILED_PRECONDITION` | no |
//!
//! Wrong credentials are `PERMISSION_DENIED`, not `UNAUTHENTICATED`: the credentials are the
//! service's (from its configuration), and `UNAUTHENTICATED` would tell the REAPI client that
//! *its* credentials are wrong. Missing images are `NOT_FOUND` (the caller may turn that into
//! a `FAILED_PRECONDITION` of its own). `oci-client` 0.18 does not expose response headers with
//! its errors, so a `Retry-After` header cannot be honoured; 429 waits at least 2 s instead.
//!
//! Messages never hold credentials: `oci-client` puts URLs (without user info) and registry
//! error bodies in its errors, and the caller scrubs configured secrets on top.

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use tonic::{Code, Status};

/// A failed attempt, with what the retry loop needs to know.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The error to report if no retry succeeds.
    pub status: Status,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Wait at least this long before the next attempt (rate limiting).
    pub minimum_delay: Duration,
}

impl Failure {
    /// A failure that is not worth a retry.
    pub(crate) fn permanent(status: Status) -> Self {
        Self {
            status,
            retryable: false,
            minimum_delay: Duration::ZERO,
        }
    }

    /// A failure that may go away.
    pub fn transient(status: Status) -> Self {
        Self {
            status,
            retryable: true,
            minimum_delay: Duration::ZERO,
        }
    }
}

const RATE_LIMIT_DELAY: Duration = Duration::from_secs(2);

/// `error` and its sources, joined with ": ".
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

fn from_http_status(code: u16, text: String) -> Failure {
    match code {
        429 => Failure {
            status: Status::unavailable(format!("Registry is rate limiting (HTTP 429): {text}")),
            retryable: true,
            minimum_delay: RATE_LIMIT_DELAY,
        },
        500..=599 => Failure::transient(Status::unavailable(format!(
            "Registry failed with HTTP {code}: {text}"
        ))),
        401 | 403 => Failure::permanent(Status::permission_denied(format!(
            "Registry refused access (HTTP {code}); check the credentials configured for it: {text}"
        ))),
        404 => Failure::permanent(Status::not_found(format!("Not found (HTTP 404): {text}"))),
        408 => Failure::transient(Status::unavailable(format!(
            "Registry timed out (HTTP 408): {text}"
        ))),
        _ => Failure::permanent(Status::failed_precondition(format!(
            "Registry answered HTTP {code}: {text}"
        ))),
    }
}

/// Classifies an `oci-client` error. `scrub` removes configured secrets from the message.
pub(crate) fn classify(error: OciDistributionError, scrub: &dyn Fn(&str) -> String) -> Failure {
    let text = scrub(&error_chain(&error));
    match &error {
        OciDistributionError::RequestError(e) => {
            if let Some(status) = e.status() {
                return from_http_status(status.as_u16(), text);
            }
            // Connecting, sending, reading the body, timeouts, redirects: all transport.
            Failure::transient(Status::unavailable(format!("Registry is unreachable: {text}")))
        }
        OciDistributionError::IoError(_) => {
            Failure::transient(Status::unavailable(format!("Registry is unreachable: {text}")))
        }
        OciDistributionError::ServerError { code, .. } => from_http_status(*code, text),
        OciDistributionError::UnauthorizedError { .. } => {
            Failure::permanent(Status::permission_denied(format!(
                "Registry refused access (HTTP 401); check the credentials configured for it: {text}"
            )))
        }
        OciDistributionError::AuthenticationFailure(_) => {
            Failure::permanent(Status::permission_denied(format!(
                "Registry token request failed; check the credentials configured for it: {text}"
            )))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let any = |wanted: &[OciErrorCode]| codes.iter().any(|c| wanted.contains(c));
            if any(&[OciErrorCode::Toomanyrequests]) {
                from_http_status(429, text)
            } else if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                from_http_status(401, text)
            } else if any(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::BlobUnknown,
                OciErrorCode::NotFound,
                OciErrorCode::ManifestBlobUnknown,
            ]) {
                Failure::permanent(Status::not_found(format!("Not found: {text}")))
            } else if any(&[
                OciErrorCode::NameInvalid,
                OciErrorCode::TagInvalid,
                OciErrorCode::DigestInvalid,
            ]) {
                Failure::permanent(Status::invalid_argument(format!(
                    "Registry refused the reference: {text}"
                )))
            } else {
                Failure::permanent(Status::failed_precondition(format!(
                    "Registry error: {text}"
                )))
            }
        }
        OciDistributionError::DigestError(_) => Failure::permanent(Status::data_loss(format!(
            "Registry sent content that does not match its digest: {text}"
        ))),
        OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_)
        | OciDistributionError::ManifestEncodingError(_)
        | OciDistributionError::JsonError(_)
        | OciDistributionError::SpecViolationError(_)
        | OciDistributionError::RegistryNoDigestError
        | OciDistributionError::HeaderValueError(_) => Failure::permanent(
            Status::failed_precondition(format!("Registry response is not usable: {text}")),
        ),
        _ => Failure::permanent(Status::new(Code::Unknown, text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::OciEnvelope;

    fn no_scrub(s: &str) -> String {
        s.to_owned()
    }

    fn envelope(code: &str) -> OciDistributionError {
        let envelope: OciEnvelope = serde_json::from_value(serde_json::json!({
            "errors": [{"code": code, "message": "m"}]
        }))
        .unwrap();
        OciDistributionError::RegistryError {
            envelope,
            url: "http://127.0.0.1:1/v2/x/manifests/y".into(),
        }
    }

    #[test]
    fn http_codes() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://h/v2/".into(),
            message: "body".into(),
        };
        let f = classify(server(503), &no_scrub);
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
        let f = classify(server(429), &no_scrub);
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
        assert!(f.minimum_delay >= Duration::from_secs(1));
        let f = classify(server(404), &no_scrub);
        assert_eq!((f.status.code(), f.retryable), (Code::NotFound, false));
        let f = classify(server(403), &no_scrub);
        assert_eq!(f.status.code(), Code::PermissionDenied);
        let f = classify(server(400), &no_scrub);
        assert_eq!(f.status.code(), Code::FailedPrecondition);
        let f = classify(
            OciDistributionError::UnauthorizedError { url: "u".into() },
            &no_scrub,
        );
        assert_eq!(
            (f.status.code(), f.retryable),
            (Code::PermissionDenied, false)
        );
    }

    #[test]
    fn envelopes() {
        for (code, want) in [
            ("MANIFEST_UNKNOWN", Code::NotFound),
            ("NAME_UNKNOWN", Code::NotFound),
            ("BLOB_UNKNOWN", Code::NotFound),
            ("DENIED", Code::PermissionDenied),
            ("UNAUTHORIZED", Code::PermissionDenied),
            ("TOOMANYREQUESTS", Code::Unavailable),
            ("TAG_INVALID", Code::InvalidArgument),
            ("SOMETHING_NEW", Code::FailedPrecondition),
        ] {
            assert_eq!(
                classify(envelope(code), &no_scrub).status.code(),
                want,
                "{code}"
            );
        }
    }

    #[test]
    fn scrubbing_applies() {
        let e = OciDistributionError::AuthenticationFailure("password s3cret rejected".into());
        let f = classify(e, &|s: &str| s.replace("s3cret", "<redacted>"));
        assert!(!f.status.message().contains("s3cret"));
        assert_eq!(f.status.code(), Code::PermissionDenied);
    }

    #[test]
    fn io_errors_are_transient() {
        let e = OciDistributionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        let f = classify(e, &no_scrub);
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
    }
}
