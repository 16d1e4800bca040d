//! Reads a whole response body that has a size limit (a manifest, an index, an image
//! config, a token response, an error body), in bounded memory: a body whose
//! `Content-Length` passes the limit is refused before any of it is read, and a body
//! without one (chunked) is refused as soon as what arrived passes the limit, whatever the
//! headers said.

use bytes::{Bytes, BytesMut};
use tonic::Status;

use crate::registry::errors::{error_chain, Failure};

/// The body of `response`, at most `limit` bytes. `what` names it in errors ("Manifest
/// sha256:… from registry.example"). A body over the limit is `FAILED_PRECONDITION`; a body
/// that breaks is a transient `UNAVAILABLE`.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Bytes, Failure> {
    if let Some(length) = response.content_length() {
        if length > limit {
            return Err(Failure::permanent(Status::failed_precondition(format!(
                "{what} is {length} bytes (Content-Length), more than the limit of {limit}"
            ))));
        }
    }
    let capacity = response.content_length().unwrap_or(0).min(limit) as usize;
    let mut body = BytesMut::with_capacity(capacity);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(Failure::permanent(Status::failed_precondition(format!(
                        "{what} has more than the limit of {limit} bytes"
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(Failure::transient(Status::unavailable(format!(
                    "{what}: the connection broke after {} bytes: {}",
                    body.len(),
                    error_chain(&e)
                ))))
            }
        }
    }
}
