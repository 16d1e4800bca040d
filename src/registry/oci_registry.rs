//! [`Registry`] on the `oci-client` crate (0.18).
//!
//! Facts about `oci-client` this relies on (read from its source):
//! - the scheme is chosen per host by `ClientProtocol`; we keep two clients, one plain-HTTP
//!   (loopback and `insecure` hosts) and one HTTPS, so hosts allowed by `allowAnyRegistry`
//!   need not be known in advance;
//! - credentials are stored per registry on first use (`store_auth_if_needed`), and a bearer
//!   token is fetched when the registry's `/v2/` answers with a `Bearer` challenge; a basic
//!   challenge uses the credentials directly. A failed token request is swallowed and the
//!   request goes out anonymously, so it surfaces as HTTP 401 (`PERMISSION_DENIED`);
//! - `pull_manifest_raw` sends our `Accept` list, checks the body against the
//!   `Docker-Content-Digest` header and the reference's digest, but does not return the
//!   `Content-Type` header (see [`super::manifest`] for how documents are classified);
//! - `pull_blob_stream` verifies the digest when the stream ends and would try descriptor
//!   `urls` if the registry fails; we pass bare digests, so `urls` are never followed
//!   (docs/design/layers.md#manifests-and-configs);
//! - `read_timeout` bounds each wait for bytes, `connect_timeout` each connection.
//!
//! Mirrors are tried in order before the registry itself; a mirror that fails (not found,
//! unavailable, refused) passes the request on. Requests to a mirror carry `?ns=<registry>`
//! (containerd's convention; Distribution ignores it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::DigestError;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use tonic::{Code, Status};
use tracing::warn;

use super::configuration::{is_loopback_host, normalize_host, RegistryConfiguration};
use super::credentials::{self, Secrets};
use super::errors::{classify, error_chain, Failure};
use super::manifest::{
    check_config_descriptor, parse_config, parse_manifest, Descriptor, Manifest,
    ACCEPTED_MANIFEST_MEDIA_TYPES,
};
use super::platform::{select_manifest, Platform};
use super::reference::{validate_digest, Reference};
use super::retry::RetryPolicy;
use super::{ImageMetadata, Registry};
use crate::blobstore::ChunkStream;
use crate::layer::LayerDescriptor;
use crate::status::StatusContext;

const USER_AGENT: &str = concat!("bb-container-expander/", env!("CARGO_PKG_VERSION"));
/// Manifests and indexes larger than this are refused (containerd uses the same bound).
const MAXIMUM_MANIFEST_SIZE: usize = 4 << 20;
/// Image configs larger than this are refused.
const MAXIMUM_CONFIG_SIZE: i64 = 16 << 20;
/// How deep indexes may nest.
const MAXIMUM_INDEX_DEPTH: usize = 4;

/// How one host is contacted.
#[derive(Clone, Debug)]
struct HostSettings {
    plain_http: bool,
    auth: RegistryAuth,
}

/// One place to try for a reference: a mirror or the registry itself.
#[derive(Clone, Debug)]
struct Endpoint {
    /// The host contacted, normalised.
    host: String,
    /// Set for mirrors: requests carry the registry's name.
    mirror_of: Option<String>,
    settings: HostSettings,
}

/// Registry access through `oci-client`, configured by [`RegistryConfiguration`].
pub struct OciRegistry {
    configuration: RegistryConfiguration,
    /// Settings of every host listed in `registries[].hosts`, by normalised host.
    hosts: HashMap<String, HostSettings>,
    http_client: Client,
    https_client: Client,
    retry: RetryPolicy,
    secrets: Arc<Secrets>,
}

impl std::fmt::Debug for OciRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRegistry")
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .field("allow_any_registry", &self.configuration.allow_any_registry)
            .finish_non_exhaustive()
    }
}

fn new_client(
    protocol: ClientProtocol,
    configuration: &RegistryConfiguration,
) -> Result<Client, Status> {
    Client::try_from(ClientConfig {
        protocol,
        platform_resolver: None,
        read_timeout: Some(configuration.request_timeout),
        connect_timeout: Some(configuration.request_timeout),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
    .map_err(|e| Status::internal(format!("Failed to create registry HTTP client: {e}")))
}

impl OciRegistry {
    /// Validates `configuration`, reads the credentials it names (Docker config files are
    /// read now, once) and creates the HTTP clients. Configuration errors are
    /// `INVALID_ARGUMENT`.
    pub fn new(configuration: RegistryConfiguration) -> Result<Self, Status> {
        configuration.validate().map_err(|e| {
            Status::invalid_argument(format!("Invalid registry configuration: {e}"))
        })?;
        let mut hosts = HashMap::new();
        let mut secrets = Secrets::default();
        for entry in &configuration.registries {
            for host in &entry.hosts {
                let auth = credentials::resolve(entry.credentials.as_ref(), host).map_err(|e| {
                    Status::invalid_argument(format!("Invalid registry configuration: {e}"))
                })?;
                secrets.add(&auth);
                hosts.insert(
                    normalize_host(host),
                    HostSettings {
                        plain_http: entry.insecure || is_loopback_host(host),
                        auth,
                    },
                );
            }
        }
        Ok(Self {
            http_client: new_client(ClientProtocol::Http, &configuration)?,
            https_client: new_client(ClientProtocol::Https, &configuration)?,
            retry: RetryPolicy {
                maximum_retries: configuration.maximum_retries,
                initial_delay: configuration.initial_retry_delay,
                request_timeout: configuration.request_timeout,
            },
            configuration,
            hosts,
            secrets: Arc::new(secrets),
        })
    }

    /// The configuration this registry was built from.
    pub fn configuration(&self) -> &RegistryConfiguration {
        &self.configuration
    }

    /// Where to look for `reference`, in order; refused if its registry is not allowed.
    fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, Status> {
        let host = normalize_host(reference.registry());
        let entry = self.configuration.entry_for(&host);
        if entry.is_none() && !self.configuration.allow_any_registry {
            return Err(Status::permission_denied(format!(
                "Registry {host} is not allowed: it is not listed in the registries of the \
                 configuration (and allowAnyRegistry is false)"
            )));
        }
        let settings_of = |h: &str| {
            self.hosts.get(h).cloned().unwrap_or_else(|| HostSettings {
                plain_http: is_loopback_host(h),
                auth: RegistryAuth::Anonymous,
            })
        };
        let mut endpoints: Vec<Endpoint> = entry
            .map(|e| e.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let m = normalize_host(m);
                Endpoint {
                    settings: settings_of(&m),
                    host: m,
                    mirror_of: Some(host.clone()),
                }
            })
            .collect();
        endpoints.push(Endpoint {
            settings: settings_of(&host),
            host,
            mirror_of: None,
        });
        Ok(endpoints)
    }

    fn client(&self, endpoint: &Endpoint) -> &Client {
        if endpoint.settings.plain_http {
            &self.http_client
        } else {
            &self.https_client
        }
    }

    fn oci_reference(endpoint: &Endpoint, reference: &Reference) -> oci_client::Reference {
        let mut r = reference.to_oci();
        if endpoint.mirror_of.is_some() {
            r.set_mirror_registry(endpoint.host.clone());
        }
        r
    }

    fn classify(&self, error: oci_client::errors::OciDistributionError) -> Failure {
        classify(error, &|s: &str| self.secrets.scrub(s))
    }

    /// Runs `attempt` against each endpoint in turn until one succeeds or fails with an
    /// error a later endpoint cannot fix.
    async fn first_success<'a, T, F, Fut>(
        &'a self,
        endpoints: &'a [Endpoint],
        mut attempt: F,
    ) -> Result<T, Status>
    where
        F: FnMut(&'a Endpoint) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let last = endpoints.len() - 1;
        for (i, endpoint) in endpoints.iter().enumerate() {
            match attempt(endpoint).await {
                Ok(value) => return Ok(value),
                Err(e) if i < last && passes_to_next_endpoint(e.code()) => {
                    warn!(
                        mirror = endpoint.host,
                        error = e.message(),
                        "Registry mirror failed; trying the next"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("endpoints always holds the registry itself")
    }

    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
    ) -> Result<String, Status> {
        let oci_ref = &Self::oci_reference(endpoint, reference);
        let client = self.client(endpoint);
        let auth = &endpoint.settings.auth;
        let digest = self
            .retry
            .run("resolve", || async move {
                client
                    .fetch_manifest_digest(oci_ref, auth)
                    .await
                    .map_err(|e| self.classify(e))
            })
            .await?;
        validate_digest(&digest).map_err(|reason| {
            Status::failed_precondition(format!("Registry returned an unusable digest: {reason}"))
        })?;
        Ok(digest)
    }

    /// Fetches one manifest or index; returns its bytes and digest.
    async fn pull_manifest(
        &self,
        endpoint: &Endpoint,
        oci_ref: &oci_client::Reference,
    ) -> Result<(Bytes, String), Status> {
        let client = self.client(endpoint);
        let auth = &endpoint.settings.auth;
        let (body, digest) = self
            .retry
            .run("manifest", || async move {
                client
                    .pull_manifest_raw(oci_ref, auth, ACCEPTED_MANIFEST_MEDIA_TYPES)
                    .await
                    .map_err(|e| self.classify(e))
            })
            .await?;
        if body.len() > MAXIMUM_MANIFEST_SIZE {
            return Err(Status::failed_precondition(format!(
                "Manifest {digest} is {} bytes, more than the limit of {MAXIMUM_MANIFEST_SIZE}",
                body.len()
            )));
        }
        Ok((body, digest))
    }

    async fn fetch_image_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ImageMetadata, Status> {
        let mut oci_ref = Self::oci_reference(endpoint, reference);
        let (mut body, mut digest) = self.pull_manifest(endpoint, &oci_ref).await?;
        let mut declared: Option<String> = None;
        let mut index_digest: Option<String> = None;
        let mut depth = 0;
        loop {
            let (media_type, manifest) = match parse_manifest(&body, declared.as_deref())
                .context_with(|| format!("Manifest {digest}"))?
            {
                Manifest::Image(media_type, manifest) => (media_type, manifest),
                Manifest::Index(_, index) => {
                    depth += 1;
                    if depth > MAXIMUM_INDEX_DEPTH {
                        return Err(Status::failed_precondition(format!(
                            "Image indexes nest more than {MAXIMUM_INDEX_DEPTH} deep"
                        )));
                    }
                    index_digest.get_or_insert_with(|| digest.clone());
                    let selection = select_manifest(&index, platform)
                        .context_with(|| format!("Index {digest}"))?;
                    let child = selection.descriptor;
                    validate_digest(&child.digest).map_err(|reason| {
                        Status::failed_precondition(format!("Index {digest}: {reason}"))
                    })?;
                    oci_ref = oci_ref.clone_with_digest(child.digest.clone());
                    (body, digest) = self.pull_manifest(endpoint, &oci_ref).await?;
                    if body.len() as i64 != child.size {
                        return Err(Status::data_loss(format!(
                            "Manifest {digest} is {} bytes, its index entry says {}",
                            body.len(),
                            child.size
                        )));
                    }
                    declared = child.media_type;
                    continue;
                }
            };

            check_config_descriptor(&manifest).context_with(|| format!("Manifest {digest}"))?;
            if manifest.config.size > MAXIMUM_CONFIG_SIZE {
                return Err(Status::failed_precondition(format!(
                    "Image config {} is {} bytes, more than the limit of {MAXIMUM_CONFIG_SIZE}",
                    manifest.config.digest, manifest.config.size
                )));
            }
            let config = self
                .fetch_small_blob(endpoint, &oci_ref, &manifest.config)
                .await
                .context_with(|| {
                    format!("Failed to fetch image config {}", manifest.config.digest)
                })?;
            let (parsed, layers) = parse_config(&manifest, &config)
                .context_with(|| format!("Image config {}", manifest.config.digest))?;
            let image_platform = Platform::new(
                &parsed.os,
                &parsed.architecture,
                parsed.variant.as_deref().unwrap_or(""),
            );
            if index_digest.is_none() && !platform.matches(&image_platform) {
                warn!(
                    image = %reference,
                    wanted = %platform,
                    found = %image_platform,
                    "Image has a single manifest for another platform; using it anyway, as Docker does"
                );
            }
            return Ok(ImageMetadata {
                index_digest,
                manifest_digest: digest,
                manifest_media_type: media_type,
                config_digest: manifest.config.digest.clone(),
                config,
                platform: image_platform,
                layers,
            });
        }
    }

    /// Opens a blob stream (one attempt): checks the announced length against `size`.
    async fn open_blob(
        &self,
        endpoint: &Endpoint,
        oci_ref: &oci_client::Reference,
        digest: &str,
        size: i64,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, Failure> {
        let client = self.client(endpoint);
        client
            .store_auth_if_needed(oci_ref.resolve_registry(), &endpoint.settings.auth)
            .await;
        let sized = client
            .pull_blob_stream(oci_ref, digest)
            .await
            .map_err(|e| self.classify(e))?;
        if let Some(length) = sized.content_length {
            if length != size as u64 {
                return Err(Failure::permanent(Status::data_loss(format!(
                    "Registry announced {length} bytes for blob {digest}, its descriptor says {size}"
                ))));
            }
        }
        Ok(sized.stream)
    }

    /// Fetches a small blob (the config) whole, retrying the whole download.
    async fn fetch_small_blob(
        &self,
        endpoint: &Endpoint,
        oci_ref: &oci_client::Reference,
        descriptor: &Descriptor,
    ) -> Result<Bytes, Status> {
        self.retry
            .run("config", || async move {
                let stream = self
                    .open_blob(endpoint, oci_ref, &descriptor.digest, descriptor.size)
                    .await?;
                let mut stream = BlobStream::new(stream, &descriptor.digest, descriptor.size);
                let mut buffer = BytesMut::with_capacity(descriptor.size.max(0) as usize);
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => buffer.extend_from_slice(&chunk),
                        Err(status) if status.code() == Code::Unavailable => {
                            return Err(Failure::transient(status))
                        }
                        Err(status) => return Err(Failure::permanent(status)),
                    }
                }
                Ok(buffer.freeze())
            })
            .await
    }

    async fn fetch_blob_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<ChunkStream, Status> {
        let oci_ref = &Self::oci_reference(endpoint, reference);
        let stream = self
            .retry
            .run("blob", || {
                self.open_blob(endpoint, oci_ref, &layer.digest, layer.size)
            })
            .await?;
        let context = format!(
            "Failed to fetch layer {} of image {reference}",
            layer.digest
        );
        Ok(BlobStream::new(stream, &layer.digest, layer.size)
            .map(move |chunk| chunk.map_err(|status| crate::status::wrap(status, &context)))
            .boxed())
    }
}

/// Errors after which a mirror hands the request on to the next endpoint.
fn passes_to_next_endpoint(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::Unavailable
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::DeadlineExceeded
            | Code::DataLoss
            | Code::Unknown
            | Code::Internal
    )
}

#[async_trait]
impl Registry for OciRegistry {
    fn check_allowed(&self, reference: &Reference) -> Result<(), Status> {
        self.endpoints(reference).map(|_| ())
    }

    async fn resolve(&self, reference: &Reference) -> Result<String, Status> {
        let context = || format!("Failed to resolve image {reference}");
        let endpoints = self.endpoints(reference).context_with(context)?;
        if let Some(digest) = reference.digest() {
            return Ok(digest.to_owned());
        }
        self.first_success(&endpoints, |endpoint| self.resolve_at(endpoint, reference))
            .await
            .context_with(context)
    }

    async fn fetch_image(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ImageMetadata, Status> {
        let context = || format!("Failed to fetch image {reference} for platform {platform}");
        platform.check_supported().context_with(context)?;
        let endpoints = self.endpoints(reference).context_with(context)?;
        self.first_success(&endpoints, |endpoint| {
            self.fetch_image_at(endpoint, reference, platform)
        })
        .await
        .context_with(context)
    }

    async fn fetch_blob(
        &self,
        reference: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<ChunkStream, Status> {
        let context = || {
            format!(
                "Failed to fetch layer {} of image {reference}",
                layer.digest
            )
        };
        validate_digest(&layer.digest)
            .map_err(Status::invalid_argument)
            .context_with(context)?;
        if layer.size < 0 {
            return Err(Status::invalid_argument(format!(
                "{}: negative size {}",
                context(),
                layer.size
            )));
        }
        let endpoints = self.endpoints(reference).context_with(context)?;
        self.first_success(&endpoints, |endpoint| {
            self.fetch_blob_at(endpoint, reference, layer)
        })
        .await
        .context_with(context)
    }
}

/// A blob body as it arrives: held to its descriptor's size, errors as `Status`.
struct BlobStream {
    inner: BoxStream<'static, std::io::Result<Bytes>>,
    digest: String,
    expected: u64,
    received: u64,
    finished: bool,
}

impl BlobStream {
    fn new(inner: BoxStream<'static, std::io::Result<Bytes>>, digest: &str, size: i64) -> Self {
        Self {
            inner,
            digest: digest.to_owned(),
            expected: size.max(0) as u64,
            received: 0,
            finished: false,
        }
    }

    fn error(&self, error: std::io::Error) -> Status {
        let digest_mismatch = error
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<DigestError>().is_some());
        if digest_mismatch && self.received >= self.expected {
            Status::data_loss(format!(
                "Blob {} does not match its digest: {}",
                self.digest,
                error_chain(&error)
            ))
        } else if digest_mismatch {
            Status::unavailable(format!(
                "Blob {} ended after {} of {} bytes",
                self.digest, self.received, self.expected
            ))
        } else {
            Status::unavailable(format!(
                "Connection to the registry broke after {} of {} bytes of blob {}: {}",
                self.received,
                self.expected,
                self.digest,
                error_chain(&error)
            ))
        }
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                if this.received > this.expected {
                    this.finished = true;
                    return Poll::Ready(Some(Err(Status::data_loss(format!(
                        "Blob {} is larger than the {} bytes its descriptor says",
                        this.digest, this.expected
                    )))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finished = true;
                Poll::Ready(Some(Err(this.error(error))))
            }
            Poll::Ready(None) => {
                this.finished = true;
                if this.received != this.expected {
                    return Poll::Ready(Some(Err(Status::data_loss(format!(
                        "Blob {} has {} bytes, its descriptor says {}",
                        this.digest, this.received, this.expected
                    )))));
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::configuration::{
        new_registry_configuration_from_configuration, RegistryHostsConfiguration,
    };
    use futures::TryStreamExt;

    fn configuration(json: &str) -> RegistryConfiguration {
        new_registry_configuration_from_configuration(&serde_json::from_str(json).unwrap())
    }

    #[tokio::test]
    async fn hosts_not_listed_are_refused_before_any_request() {
        let registry = OciRegistry::new(configuration(
            r#"{"registries": [{"hosts": ["allowed.example"]}]}"#,
        ))
        .unwrap();
        let reference = Reference::parse("docker://other.example/x:y").unwrap();
        let err = registry.resolve(&reference).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            err.message().starts_with(
                "Failed to resolve image docker://other.example/x:y: Registry other.example is not allowed"
            ),
            "{}",
            err.message()
        );
        let err = registry
            .fetch_image(&reference, &Platform::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(registry.check_allowed(&reference).is_err());
        assert!(registry
            .check_allowed(&Reference::parse("allowed.example/x").unwrap())
            .is_ok());
    }

    #[test]
    fn endpoints_follow_the_configuration() {
        let mut c = configuration(
            r#"{"registries": [
                {"hosts": ["docker.io"], "mirrors": ["127.0.0.1:5555", "mirror.example"]},
                {"hosts": ["mirror.example"], "insecure": true,
                 "credentials": {"basic": {"username": "u", "password": "p"}}}
            ], "allowAnyRegistry": true}"#,
        );
        c.registries.push(RegistryHostsConfiguration {
            hosts: vec!["secure.example".into()],
            insecure: false,
            credentials: None,
            mirrors: vec![],
            redirect_hosts: None,
            request_budget: None,
        });
        let registry = OciRegistry::new(c).unwrap();
        let endpoints = registry
            .endpoints(&Reference::parse("debian").unwrap())
            .unwrap();
        let summary: Vec<(&str, bool, bool)> = endpoints
            .iter()
            .map(|e| {
                (
                    e.host.as_str(),
                    e.settings.plain_http,
                    matches!(e.settings.auth, RegistryAuth::Basic(..)),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("127.0.0.1:5555", true, false),
                ("mirror.example", true, true),
                ("docker.io", false, false)
            ]
        );
        let mirror_ref =
            OciRegistry::oci_reference(&endpoints[0], &Reference::parse("debian").unwrap());
        assert_eq!(mirror_ref.resolve_registry(), "127.0.0.1:5555");
        assert_eq!(mirror_ref.namespace(), Some("docker.io"));
        // allowAnyRegistry: unlisted hosts are anonymous, plain HTTP only on loopback.
        let e = registry
            .endpoints(&Reference::parse("localhost:1/x").unwrap())
            .unwrap();
        assert!(e[0].settings.plain_http);
        let e = registry
            .endpoints(&Reference::parse("secure.example/x").unwrap())
            .unwrap();
        assert!(!e[0].settings.plain_http);
    }

    #[test]
    fn missing_docker_config_is_a_configuration_error() {
        let err = OciRegistry::new(configuration(
            r#"{"registries": [{"hosts": ["a.example"], "credentials": {"dockerConfigPath": "/nonexistent/c.json"}}]}"#,
        ))
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("/nonexistent/c.json"));
    }

    fn chunks(
        parts: Vec<std::io::Result<&'static [u8]>>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        futures::stream::iter(parts.into_iter().map(|p| p.map(Bytes::from_static))).boxed()
    }

    #[tokio::test]
    async fn blob_stream_checks_size() {
        let ok = BlobStream::new(chunks(vec![Ok(b"ab"), Ok(b"c")]), "sha256:x", 3);
        let data: Vec<Bytes> = ok.try_collect().await.unwrap();
        assert_eq!(data.concat(), b"abc");

        let long = BlobStream::new(chunks(vec![Ok(b"ab"), Ok(b"cd")]), "sha256:x", 3);
        let err = long.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);

        let short = BlobStream::new(chunks(vec![Ok(b"ab")]), "sha256:x", 3);
        assert_eq!(
            short.try_collect::<Vec<_>>().await.unwrap_err().code(),
            Code::DataLoss
        );

        let broken = BlobStream::new(
            chunks(vec![
                Ok(b"a"),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by peer",
                )),
            ]),
            "sha256:x",
            3,
        );
        let err = broken.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("after 1 of 3 bytes"),
            "{}",
            err.message()
        );

        let truncated = BlobStream::new(
            chunks(vec![
                Ok(b"a"),
                Err(std::io::Error::other(DigestError::VerificationError {
                    expected: "sha256:x".into(),
                    actual: "sha256:y".into(),
                })),
            ]),
            "sha256:x",
            3,
        );
        assert_eq!(
            truncated.try_collect::<Vec<_>>().await.unwrap_err().code(),
            Code::Unavailable
        );

        let corrupt = BlobStream::new(
            chunks(vec![
                Ok(b"abc"),
                Err(std::io::Error::other(DigestError::VerificationError {
                    expected: "sha256:x".into(),
                    actual: "sha256:y".into(),
                })),
            ]),
            "sha256:x",
            3,
        );
        assert_eq!(
            corrupt.try_collect::<Vec<_>>().await.unwrap_err().code(),
            Code::DataLoss
        );
    }
}
