//! Image references: what a `container-image` platform property names.
//!
//! Accepted forms, with Docker's normalisation applied:
//! - `docker://registry.example.com:5000/team/app:v1` (the transport prefix is optional);
//! - `127.0.0.1:5000/app@sha256:…` (pinned by digest), or `app:v1@sha256:…` (both; the digest
//!   wins when fetching, the tag is kept for messages);
//! - `debian` → `docker.io/library/debian:latest`, `user/img` → `docker.io/user/img:latest`,
//!   `index.docker.io/…` → `docker.io/…`.
//!
//! The first path component is a registry host when it contains `.` or `:`, or is `localhost`
//! (the rule of Docker's reference grammar); otherwise the image is on Docker Hub. Repository
//! names must be lowercase. Parse errors are `INVALID_ARGUMENT` and name the offending input.

use std::fmt;
use std::str::FromStr;

use tonic::Status;

/// The registry that stands for Docker Hub in normalised references.
pub(crate) const DOCKER_HUB_REGISTRY: &str = "docker.io";
const DOCKER_HUB_LEGACY_REGISTRIES: &[&str] = &["index.docker.io", "registry-1.docker.io"];
const DEFAULT_TAG: &str = "latest";
const TRANSPORT_PREFIX: &str = "docker://";
/// Docker's limit on the length of `registry/repository`.
const MAXIMUM_NAME_LENGTH: usize = 255;

/// A normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses a reference, applying Docker's defaults (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, Status> {
        parse(text).map_err(|reason| {
            Status::invalid_argument(format!("Invalid image reference {text:?}: {reason}"))
        })
    }

    /// The registry host, with the port if one was given (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `library/debian`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any. A reference with neither tag nor digest gets `latest` when parsed.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`algorithm:hex`), if the reference is pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest` (the tag is kept, for messages).
    pub fn with_digest(&self, digest: &str) -> Result<Self, Status> {
        validate_digest(digest).map_err(|reason| {
            Status::invalid_argument(format!("Invalid digest {digest:?}: {reason}"))
        })?;
        Ok(Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        })
    }
}

impl FromStr for Reference {
    type Err = Status;
    fn from_str(s: &str) -> Result<Self, Status> {
        Self::parse(s)
    }
}

/// `docker://registry/repository[:tag][@digest]`: the normalised form, as it appears in
/// error messages.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TRANSPORT_PREFIX}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn parse(text: &str) -> Result<Reference, String> {
    let rest = text.strip_prefix(TRANSPORT_PREFIX).unwrap_or(text);
    if rest.is_empty() {
        return Err("the reference is empty".into());
    }
    if let Some((transport, _)) = rest.split_once("://") {
        return Err(format!(
            "transport {transport:?} is not supported (only {TRANSPORT_PREFIX:?} is)"
        ));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters".into());
    }

    // Split off the digest, then the tag (a ':' after the last '/').
    let (rest, digest) = match rest.split_once('@') {
        Some((name, digest)) => {
            validate_digest(digest)?;
            (name, Some(digest.to_owned()))
        }
        None => (rest, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }

    // Split the registry host from the repository path.
    let (registry, repository) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            validate_host(first)?;
            (first.to_owned(), remainder.to_owned())
        }
        _ => (DOCKER_HUB_REGISTRY.to_owned(), name.to_owned()),
    };
    let registry = if DOCKER_HUB_LEGACY_REGISTRIES.contains(&registry.as_str()) {
        DOCKER_HUB_REGISTRY.to_owned()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB_REGISTRY && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    validate_repository(&repository)?;
    if registry.len() + 1 + repository.len() > MAXIMUM_NAME_LENGTH {
        return Err(format!(
            "the name is longer than {MAXIMUM_NAME_LENGTH} characters"
        ));
    }

    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_owned()),
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `host[:port]`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
pub(crate) fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(stripped) = host.strip_prefix('[') {
        let (address, after) = stripped
            .split_once(']')
            .ok_or_else(|| format!("registry host {host:?} has an unclosed '['"))?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "registry host {host:?} is not a valid IPv6 address"
            ));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("registry host {host:?} is malformed")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(format!("registry host {host:?} has an invalid port"));
        }
    }
    if let Some(name) = name {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!("registry host {host:?} is not a valid host name"));
        }
    }
    Ok(())
}

/// Path components of lowercase letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name {repository:?} must be lowercase"));
    }
    for component in repository.split('/') {
        if !valid_path_component(component) {
            return Err(format!(
                "repository path component {component:?} is invalid (expected lowercase \
                 letters and digits, separated by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

/// A word character first, then up to 127 word characters, `.` or `-`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 128
        || !word(bytes[0])
        || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
    {
        return Err(format!(
            "tag {tag:?} is invalid (expected up to 128 letters, digits, '_', '.' or '-', \
             not starting with '.' or '-')"
        ));
    }
    Ok(())
}

/// `sha256:` + 64, `sha384:` + 96 or `sha512:` + 128 lowercase hex digits. Other algorithms
/// cannot be verified, so they are refused here rather than after a download.
pub(crate) fn validate_digest(digest: &str) -> Result<(), String> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("digest {digest:?} has no algorithm (expected \"sha256:…\")"))?;
    let expected_length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "digest algorithm {algorithm:?} is not supported (sha256, sha384 or sha512)"
            ))
        }
    };
    if hex.len() != expected_length
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "digest {digest:?} must have {expected_length} lowercase hexadecimal digits"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(text: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(text).unwrap();
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        )
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn full_reference_with_transport() {
        assert_eq!(
            parts("docker://127.0.0.1:5000/test/x:v1"),
            (s("127.0.0.1:5000"), s("test/x"), Some(s("v1")), None)
        );
        assert_eq!(
            Reference::parse("docker://127.0.0.1:5000/test/x:v1")
                .unwrap()
                .to_string(),
            "docker://127.0.0.1:5000/test/x:v1"
        );
    }

    #[test]
    fn docker_hub_normalisation() {
        assert_eq!(
            parts("debian"),
            (s("docker.io"), s("library/debian"), Some(s("latest")), None)
        );
        assert_eq!(
            Reference::parse("debian").unwrap().to_string(),
            "docker://docker.io/library/debian:latest"
        );
        assert_eq!(
            parts("user/img"),
            (s("docker.io"), s("user/img"), Some(s("latest")), None)
        );
        assert_eq!(
            parts("index.docker.io/debian:12"),
            (s("docker.io"), s("library/debian"), Some(s("12")), None)
        );
        assert_eq!(
            parts("docker.io/library/debian:bookworm"),
            (
                s("docker.io"),
                s("library/debian"),
                Some(s("bookworm")),
                None
            )
        );
        assert_eq!(
            Reference::parse("debian").unwrap().name(),
            "docker.io/library/debian"
        );
    }

    #[test]
    fn localhost_and_ports_are_registries() {
        assert_eq!(parts("localhost/app").0, "localhost");
        assert_eq!(parts("localhost:5000/app").0, "localhost:5000");
        assert_eq!(parts("[::1]:5000/app").0, "[::1]:5000");
        // Without '.', ':' or "localhost", the first component is a Docker Hub user.
        assert_eq!(parts("myhost/app").0, "docker.io");
        assert_eq!(parts("myhost/app").1, "myhost/app");
    }

    #[test]
    fn digests() {
        assert_eq!(
            parts(&format!("host.example/repo@{D}")),
            (s("host.example"), s("repo"), None, Some(s(D)))
        );
        let both = Reference::parse(&format!("host.example/repo:v2@{D}")).unwrap();
        assert_eq!(both.tag(), Some("v2"));
        assert_eq!(both.digest(), Some(D));
        assert_eq!(
            both.to_string(),
            format!("docker://host.example/repo:v2@{D}")
        );

        let pinned = Reference::parse("host.example/repo:v1")
            .unwrap()
            .with_digest(D)
            .unwrap();
        assert_eq!(pinned.digest(), Some(D));
        assert!(Reference::parse("a.b/repo")
            .unwrap()
            .with_digest("md5:00")
            .is_err());
    }

    #[test]
    fn path_components() {
        for ok in [
            "a",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "a1/b2/c3",
            "foo.bar-baz_qux",
        ] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-a", "a-", "a___b", "a..b", "a/", "/a", "a//b", "_a", "a.-b",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_invalid_argument_and_clear() {
        let cases = [
            ("", "empty"),
            ("docker://", "empty"),
            ("oci://host.example/x", "transport"),
            ("host.example/Repo", "lowercase"),
            ("host.example/repo:", "tag"),
            ("host.example/repo:-x", "tag"),
            ("host.example/repo@sha256:abc", "64 lowercase"),
            (
                &format!(
                    "host.example/repo@{}",
                    D.to_uppercase().replace("SHA", "sha")
                ),
                "lowercase",
            ),
            (
                "host.example/repo@md5:d41d8cd98f00b204e9800998ecf8427e",
                "not supported",
            ),
            ("host.example/repo@0123", "no algorithm"),
            ("host.example:99999/repo", "port"),
            ("host..example/repo", "host name"),
            ("host.example/re po", "whitespace"),
            ("host.example/", "empty"),
        ];
        for (input, needle) in cases {
            let err = Reference::parse(input).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{input}");
            assert!(
                err.message().contains(needle) && err.message().contains("Invalid image reference"),
                "{input}: {}",
                err.message()
            );
        }
        let long = format!("host.example/{}", "a".repeat(300));
        assert!(Reference::parse(&long)
            .unwrap_err()
            .message()
            .contains("longer"));
    }

    #[test]
    fn tag_versus_port() {
        // A ':' before the last '/' is a port, not a tag.
        assert_eq!(
            parts("host.example:5000/repo"),
            (s("host.example:5000"), s("repo"), Some(s("latest")), None)
        );
        assert_eq!(parts("host.example:5000/repo:1.0").2, Some(s("1.0")));
    }
}
