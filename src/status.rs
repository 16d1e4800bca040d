//! Helpers to build `tonic::Status` errors with context, in the manner of Buildbarn's
//! `util.StatusWrap`: the message gets a prefix ("Failed to fetch layer sha256:…: …") and
//! the code of the underlying error is kept, so that callers can still tell a client's
//! mistake (INVALID_ARGUMENT, NOT_FOUND, …) from a transient fault (UNAVAILABLE).

use tonic::{Code, Status};

/// Prefixes the message of `status` with `context`, keeping its code and its details
/// (a `PreconditionFailure` naming missing blobs, for instance, survives the wrapping).
/// When the details are an encoded `google.rpc.Status`, as gRPC defines them, the message
/// inside them is prefixed too, so that both messages say the same.
pub(crate) fn wrap(status: Status, context: impl std::fmt::Display) -> Status {
    use prost::Message;
    let message = format!("{}: {}", context, status.message());
    if status.details().is_empty() {
        return Status::new(status.code(), message);
    }
    let details: bytes::Bytes = match crate::proto::rpc::Status::decode(status.details()) {
        Ok(mut details) => {
            details.message = message.clone();
            details.encode_to_vec().into()
        }
        Err(_) => bytes::Bytes::copy_from_slice(status.details()),
    };
    Status::with_details(status.code(), message, details)
}

/// Prefixes the message of `status` with `context` and replaces its code. The details
/// are dropped: they describe the failure under its old code (a `PreconditionFailure`
/// under anything but FAILED_PRECONDITION would mislead a client).
pub(crate) fn wrap_with_code(
    status: Status,
    code: Code,
    context: impl std::fmt::Display,
) -> Status {
    Status::new(code, format!("{}: {}", context, status.message()))
}

/// Extension trait to wrap the error of a `Result<T, Status>`.
pub(crate) trait StatusContext<T> {
    /// Prefixes the error message with the context returned by `f`.
    fn context_with<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T, Status>;
    /// Prefixes the error message with `context`.
    fn context(self, context: impl std::fmt::Display) -> Result<T, Status>;
}

impl<T> StatusContext<T> for Result<T, Status> {
    fn context_with<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T, Status> {
        self.map_err(|s| wrap(s, f()))
    }
    fn context(self, context: impl std::fmt::Display) -> Result<T, Status> {
        self.map_err(|s| wrap(s, context))
    }
}

/// Maps an I/O error to a status: reads and writes of local files are internal faults.
pub(crate) fn from_io(err: std::io::Error, context: impl std::fmt::Display) -> Status {
    Status::internal(format!("{context}: {err}"))
}

/// FAILED_PRECONDITION for blobs that are not in the CAS, with REAPI's
/// `PreconditionFailure` (violations of type "MISSING", subject "blobs/{hash}/{size}")
/// in the details, so that clients know to upload them again.
pub fn missing_blobs(
    message: impl Into<String>,
    digests: &[crate::proto::reapi::Digest],
) -> Status {
    use crate::proto::error_details::{precondition_failure::Violation, PreconditionFailure};
    use prost::Message;
    let failure = PreconditionFailure {
        violations: digests
            .iter()
            .map(|d| Violation {
                r#type: "MISSING".into(),
                subject: format!("blobs/{}/{}", d.hash, d.size_bytes),
                description: String::new(),
            })
            .collect(),
    };
    let message = message.into();
    let details = crate::proto::rpc::Status {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![crate::proto::protobuf::Any {
            type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
            value: failure.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        details.encode_to_vec().into(),
    )
}

/// INVALID_ARGUMENT for request fields that are not valid, with a `google.rpc.BadRequest`
/// holding one `FieldViolation` per `(field, description)`.
pub fn bad_request(message: impl Into<String>, violations: &[(String, String)]) -> Status {
    use crate::proto::error_details::{bad_request::FieldViolation, BadRequest};
    use prost::Message;
    let request = BadRequest {
        field_violations: violations
            .iter()
            .map(|(field, description)| FieldViolation {
                field: field.clone(),
                description: description.clone(),
            })
            .collect(),
    };
    let message = message.into();
    let details = crate::proto::rpc::Status {
        code: Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![crate::proto::protobuf::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: request.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::InvalidArgument,
        message,
        details.encode_to_vec().into(),
    )
}

/// The digests a status reports missing through a `PreconditionFailure`, if any.
pub fn missing_blobs_of(status: &Status) -> Vec<String> {
    use crate::proto::error_details::PreconditionFailure;
    use prost::Message;
    if status.code() != Code::FailedPrecondition {
        return Vec::new();
    }
    let Ok(details) = crate::proto::rpc::Status::decode(status.details()) else {
        return Vec::new();
    };
    details
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("/google.rpc.PreconditionFailure"))
        .filter_map(|any| PreconditionFailure::decode(any.value.as_slice()).ok())
        .flat_map(|f| f.violations)
        .filter(|v| v.r#type == "MISSING")
        .map(|v| v.subject)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_code() {
        let s = wrap(
            Status::not_found("Blob not found"),
            "Failed to read Command",
        );
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "Failed to read Command: Blob not found");
    }

    #[test]
    fn wrap_keeps_details() {
        use prost::Message;
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"x");
        let s = wrap(
            missing_blobs("Action not found", std::slice::from_ref(&d)),
            "Failed to forward Execute",
        );
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "Failed to forward Execute: Action not found");
        assert_eq!(missing_blobs_of(&s), vec![format!("blobs/{}/1", d.hash)]);
        let details = crate::proto::rpc::Status::decode(s.details()).unwrap();
        assert_eq!(details.message, s.message());
        assert_eq!(details.code, Code::FailedPrecondition as i32);

        // Wrapping twice prefixes twice and still keeps them.
        let twice = wrap(s, "Failed to execute");
        assert_eq!(
            twice.message(),
            "Failed to execute: Failed to forward Execute: Action not found"
        );
        assert_eq!(
            missing_blobs_of(&twice),
            vec![format!("blobs/{}/1", d.hash)]
        );
    }

    #[test]
    fn wrap_keeps_details_it_cannot_decode() {
        let s = wrap(
            Status::with_details(Code::Aborted, "Busy", bytes::Bytes::from_static(b"\xff")),
            "Context",
        );
        assert_eq!(s.code(), Code::Aborted);
        assert_eq!(s.message(), "Context: Busy");
        assert_eq!(s.details(), b"\xff");
    }

    #[test]
    fn wrap_with_code_drops_details() {
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"x");
        let s = wrap_with_code(
            missing_blobs("Blob not found", std::slice::from_ref(&d)),
            Code::Internal,
            "Failed to read cached tree",
        );
        assert_eq!(s.code(), Code::Internal);
        assert!(s.details().is_empty());
        assert!(missing_blobs_of(&s).is_empty());
    }

    #[test]
    fn missing_blobs_round_trip() {
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"x");
        let s = missing_blobs("Action not found", std::slice::from_ref(&d));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(missing_blobs_of(&s), vec![format!("blobs/{}/1", d.hash)]);
    }

    #[test]
    fn wrap_with_code_replaces_code() {
        let s = wrap_with_code(
            Status::not_found("Blob not found"),
            Code::FailedPrecondition,
            "Failed to read input root",
        );
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "Failed to read input root: Blob not found");
    }
}
