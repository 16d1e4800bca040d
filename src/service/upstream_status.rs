//! How failures of the upstream scheduler reach the client. A status produced by the
//! scheduler itself is relayed with its code and details (a PreconditionFailure naming
//! missing blobs is what tells a client to upload them again), its message prefixed
//! with what the expander was doing; a failure of the connection (the scheduler is
//! unreachable, or died mid-stream) becomes UNAVAILABLE, so that clients retry instead
//! of treating it as a verdict on their action.

use tonic::{Code, Status};

/// Maps a status received from the upstream call.
pub(crate) fn from_upstream(status: Status, context: &str) -> Status {
    let connection_failure = match status.code() {
        // tonic reports broken connections and HTTP/2 resets as UNKNOWN or INTERNAL
        // with a transport error as source.
        Code::Unknown | Code::Internal | Code::Cancelled => has_transport_source(&status),
        _ => false,
    };
    if connection_failure {
        Status::unavailable(format!("{context}: {}", status.message()))
    } else {
        crate::status::wrap(status, context)
    }
}

fn has_transport_source(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>()
            || err.is::<h2::Error>()
            || err.is::<hyper::Error>()
            || err.is::<std::io::Error>()
        {
            return true;
        }
        source = err.source();
    }
    // Errors decoded from HTTP/2 frames carry no source but say so in the text.
    let m = status.message();
    m.contains("h2 protocol error")
        || m.contains("error reading a body from connection")
        || m.contains("transport error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_statuses_keep_code_and_details() {
        let digest = crate::digest::DigestFunction::Sha256.digest_of(b"action");
        let missing =
            crate::status::missing_blobs("Action not found", std::slice::from_ref(&digest));
        let relayed = from_upstream(missing, "Failed to forward Execute to the scheduler");
        assert_eq!(relayed.code(), Code::FailedPrecondition);
        assert_eq!(
            relayed.message(),
            "Failed to forward Execute to the scheduler: Action not found"
        );
        assert_eq!(
            crate::status::missing_blobs_of(&relayed),
            vec![format!("blobs/{}/6", digest.hash)]
        );
        let plain = from_upstream(Status::invalid_argument("Bad platform"), "Context");
        assert_eq!(plain.code(), Code::InvalidArgument);
        assert_eq!(plain.message(), "Context: Bad platform");
        assert!(plain.details().is_empty());
    }
}
