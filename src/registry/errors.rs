//! Turns what a registry answered (an HTTP status with the OCI error envelope, or a
//! transport error) into `tonic::Status`, and says which failures are worth a retry.
//!
//! | what happened | code | retried |
//! |---|---|---|
//! | connection refused/reset, timeout, broken body, 5xx | `UNAVAILABLE` | yes |
//! | 429 / `TOOMANYREQUESTS` | `UNAVAILABLE` | yes, after `Retry-After` (at least 2 s without one) |
//! | `Retry-After` longer than `maximumRetryAfter` | `UNAVAILABLE` | no |
//! | 401, `UNAUTHORIZED`, `DENIED`, 403, token request refused | `PERMISSION_DENIED` | no |
//! | an address or redirect the policies refuse | `PERMISSION_DENIED` | no |
//! | 404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN` | `NOT_FOUND` | no |
//! | `NAME_INVALID`, `TAG_INVALID`, `DIGEST_INVALID` | `INVALID_ARGUMENT` | no |
//! | content does not match its digest | `DATA_LOSS` | no |
//! | anything else the registry says | `FAILED_PRECONDITION` | no |
//!
//! Wrong credentials are `PERMISSION_DENIED`, not `UNAUTHENTICATED`: the credentials are the
//! service's (from its configuration), and `UNAUTHENTICATED` would tell the REAPI client that
//! *its* credentials are wrong. Missing images are `NOT_FOUND` (the caller may turn that into
//! a `FAILED_PRECONDITION` of its own).
//!
//! Messages never hold credentials: URLs carry none, error bodies are cut short, and the
//! caller scrubs configured secrets on top.

use std::time::Duration;

use oci_client::errors::{OciEnvelope, OciErrorCode};
use tonic::{Code, Status};

use super::http::address_policy::AddressRefused;

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

/// The wait after a 429 that says nothing of how long to wait.
pub(crate) const RATE_LIMIT_DELAY: Duration = Duration::from_secs(2);

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

/// The failure an HTTP status means, `text` describing it.
pub(crate) fn from_http_status(code: u16, text: String) -> Failure {
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

/// The code as the registry wrote it (`MANIFEST_UNKNOWN`).
fn code_name(code: &OciErrorCode) -> String {
    serde_json::to_string(code)
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// The failure a non-success answer means: its status, refined by the error codes of the
/// OCI error envelope in `body` when there is one. `text` names the request.
pub(crate) fn from_response(code: u16, body: &[u8], text: String) -> Failure {
    let envelope: Option<OciEnvelope> = serde_json::from_slice(body).ok();
    let detail = match &envelope {
        Some(e) => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", code_name(&e.code), e.message))
            .collect::<Vec<_>>()
            .join("; "),
        None => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned(),
    };
    let text = if detail.is_empty() {
        text
    } else {
        format!("{text}: {detail}")
    };
    let codes: Vec<&OciErrorCode> = envelope
        .as_ref()
        .map(|e| e.errors.iter().map(|e| &e.code).collect())
        .unwrap_or_default();
    let any = |wanted: &[OciErrorCode]| codes.iter().any(|c| wanted.contains(c));
    if (200..300).contains(&code) || codes.is_empty() {
        return from_http_status(code, text);
    }
    if any(&[OciErrorCode::Toomanyrequests]) {
        from_http_status(429, text)
    } else if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
        from_http_status(if code == 403 { 403 } else { 401 }, text)
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
    } else if code >= 500 {
        from_http_status(code, text)
    } else {
        Failure::permanent(Status::failed_precondition(format!(
            "Registry error: {text}"
        )))
    }
}

/// The failure of a request that got no answer: a refused address is permanent
/// (`PERMISSION_DENIED`), anything else (connecting, sending, reading, timeouts) is a
/// transient `UNAVAILABLE`.
pub(crate) fn from_transport(error: &(dyn std::error::Error + 'static), text: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        // An io::Error's source() skips the error it wraps: look inside it too.
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<AddressRefused>());
        if let Some(refused) = e.downcast_ref::<AddressRefused>().or(wrapped) {
            return Failure::permanent(Status::permission_denied(format!(
                "Not connecting to {text}: {refused}"
            )));
        }
        source = e.source();
    }
    Failure::transient(Status::new(
        Code::Unavailable,
        format!("Registry is unreachable ({text}): {}", error_chain(error)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(code: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errors": [{"code": code, "message": "m"}]
        }))
        .unwrap()
    }

    #[test]
    fn http_codes() {
        let f = from_response(503, b"busy", "GET x".into());
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
        assert!(
            f.status.message().contains("busy"),
            "{}",
            f.status.message()
        );
        let f = from_response(429, b"", "GET x".into());
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
        assert!(f.minimum_delay >= Duration::from_secs(1));
        let f = from_response(404, b"", "GET x".into());
        assert_eq!((f.status.code(), f.retryable), (Code::NotFound, false));
        let f = from_response(403, b"", "GET x".into());
        assert_eq!(f.status.code(), Code::PermissionDenied);
        let f = from_response(401, b"", "GET x".into());
        assert_eq!(
            (f.status.code(), f.retryable),
            (Code::PermissionDenied, false)
        );
        let f = from_response(400, b"", "GET x".into());
        assert_eq!(f.status.code(), Code::FailedPrecondition);
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
            let f = from_response(400, &envelope(code), "GET x".into());
            assert_eq!(f.status.code(), want, "{code}");
            assert!(f.status.message().contains(code), "{}", f.status.message());
        }
    }

    #[test]
    fn transport_errors() {
        let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let f = from_transport(&e, "GET http://h/v2/");
        assert_eq!((f.status.code(), f.retryable), (Code::Unavailable, true));
        let e = std::io::Error::other(AddressRefused("10.0.0.1 is private".into()));
        let f = from_transport(&e, "GET http://10.0.0.1/v2/");
        assert_eq!(
            (f.status.code(), f.retryable),
            (Code::PermissionDenied, false)
        );
        assert!(f.status.message().contains("10.0.0.1 is private"));
    }
}
