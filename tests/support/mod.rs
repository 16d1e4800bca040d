//! Test harness shared by integration tests: real peers on 127.0.0.1 only.
//!
//! - [`registry_server::RegistryServer`]: a real CNCF Distribution registry (Debian package
//!   `docker-registry`) on a free loopback port with a temporary storage directory, plain,
//!   with htpasswd basic auth, or with Docker-style bearer tokens issued by
//!   [`token_server::TokenServer`]; killed on drop.
//! - [`images`]: small OCI / Docker images built in memory (tar layers, gzip, zstd or
//!   uncompressed; OCI indexes and Docker manifest lists) and pushed byte-exact.
//! - [`fake_http::FakeHttpServer`]: a scriptable HTTP/1.1 server for faults a real registry
//!   will not produce (5xx, connections dropped mid-body).
//! - [`fault_proxy::FaultProxy`]: a reverse proxy in front of a real registry that injects
//!   faults per request (trickled bodies, dropped connections, statuses, redirects, huge
//!   or lying bodies, delays) and logs every request.
//! - [`chroot_worker::ChrootWorker`]: a scheduler + worker that runs actions chrooted into
//!   their input root, as bb_runner's `chrootIntoInputRoot` does (needs root).
//! - [`buildgrid::BuildGrid`]: a real REAPI scheduler, BuildGrid 0.9.1 on PostgreSQL, with
//!   a chroot worker of its Bots API (`scripts/buildgrid.sh`; needs root).
//! - [`host_userland::host_userland`]: tar entries of host programs and their libraries.
//! - [`bazel::BazelClient`]: Bazel on a temporary copy of a workspace.
//!
//! Use from a test crate with `mod support;`. Needs the Debian packages `docker-registry`,
//! `apache2-utils` (htpasswd) and `openssl` (and `bazel-bootstrap` for the Bazel end-to-end
//! test); a missing one fails the test with the install command, it is never skipped.

#![allow(dead_code)]

pub mod bazel;
pub mod buildgrid;
pub mod chroot_worker;
pub mod fake_http;
pub mod fault_proxy;
pub mod host_userland;
pub mod images;
pub mod registry_server;
pub mod token_server;

use std::path::Path;

/// The command that installs what this harness needs (CI runs it).
pub const INSTALL_HINT: &str =
    "apt-get update && apt-get install -y docker-registry apache2-utils openssl bazel-bootstrap";

/// Panics with the install command if `program` is missing.
pub fn require_program(program: &str, package: &str) {
    let found = if program.contains('/') {
        Path::new(program).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).exists())
        })
    };
    assert!(
        found,
        "{program} (Debian package {package}) is not installed; these integration tests need \
         it. Run: {INSTALL_HINT}"
    );
}

/// One HTTP/1.1 GET of `path` from `address` (`host:port`), blocking; `None` while
/// nothing listens there.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
