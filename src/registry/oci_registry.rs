//! [`Registry`] over the distribution protocol, on the HTTP layer of [`super::http`].
//!
//! Mirrors are tried in order before the registry itself; a mirror that fails (not found,
//! unavailable, refused) passes the request on. Requests to a mirror carry `?ns=<registry>`
//! (containerd's convention; Distribution ignores it). Docker Hub (`docker.io`) is contacted
//! at `registry-1.docker.io`.
//!
//! Every document is checked before it is used: manifests and indexes are read with a
//! size limit ([`MAXIMUM_MANIFEST_SIZE`]) and verified against the digest that named them
//! (or the registry's `Docker-Content-Digest`); the image config is read with its
//! descriptor's size as the limit ([`MAXIMUM_CONFIG_SIZE`] at most) and verified; a layer
//! blob streams through [`BlobStream`] (its size; the layer ingester checks its digest) and
//! [`LimitedStream`](super::http::transfer_limits::LimitedStream) (transfer deadline and
//! minimum rate). Descriptor `urls` are never followed (docs/design/layers.md#manifests-and-configs).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use oci_client::secrets::RegistryAuth;
use reqwest::Method;
use tonic::{Code, Status};
use tracing::warn;

use super::configuration::{is_loopback_host, normalize_host, RegistryConfiguration};
use super::credential_helper::CredentialHelper;
use super::credentials::{self, Secrets, Source};
use super::errors::{error_chain, Failure};
use super::http::bounded_body::read_bounded;
use super::http::distribution_client::{DistributionClient, Target};
use super::http::transfer_limits::{LimitedStream, TransferLimits};
use super::instance_name_prefixes;
use super::manifest::{
    check_config_descriptor, parse_config, parse_manifest, Descriptor, Manifest,
    ACCEPTED_MANIFEST_MEDIA_TYPES,
};
use super::metrics;
use super::platform::{select_manifest, Platform};
use super::reference::{validate_digest, Reference};
use super::retry::RetryPolicy;
use super::{ImageMetadata, Registry};
use crate::blobstore::ChunkStream;
use crate::layer::oci_digest::{OciDigest, OciHasher};
use crate::layer::LayerDescriptor;
use crate::status::StatusContext;

/// Manifests and indexes larger than this are refused, from `Content-Length` before the
/// body is read, or as soon as more arrived (containerd uses the same bound).
pub(crate) const MAXIMUM_MANIFEST_SIZE: u64 = 4 << 20;
/// Image configs larger than this are refused, from their descriptor before any request.
pub(crate) const MAXIMUM_CONFIG_SIZE: i64 = 16 << 20;
/// How deep indexes may nest.
const MAXIMUM_INDEX_DEPTH: usize = 4;
/// The header registries name a manifest's digest in.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Where the credentials of one host come from.
#[derive(Clone, Debug)]
enum HostAuth {
    Static(RegistryAuth),
    /// Asked for before each use (cached by the helper).
    Helper(Arc<CredentialHelper>),
}

/// How one host is contacted.
#[derive(Clone, Debug)]
struct HostSettings {
    plain_http: bool,
    auth: HostAuth,
}

/// One place to try for a reference: a mirror or the registry itself.
#[derive(Clone, Debug)]
struct Endpoint {
    /// The host contacted, normalised.
    host: String,
    /// Set for mirrors: requests carry the registry's name.
    mirror_of: Option<String>,
    settings: HostSettings,
    /// The credentials used now: the static ones, or the helper's answer once
    /// [`OciRegistry::with_credentials`] asked for it.
    auth: RegistryAuth,
}

impl Endpoint {
    fn target<'a>(&'a self, reference: &'a Reference) -> Target<'a> {
        Target {
            host: if self.host == "docker.io" {
                "registry-1.docker.io"
            } else {
                &self.host
            },
            plain_http: self.settings.plain_http,
            credentials: &self.auth,
            repository: reference.repository(),
            namespace: self.mirror_of.as_deref(),
        }
    }
}

/// Registry access over the distribution protocol, configured by [`RegistryConfiguration`].
pub struct OciRegistry {
    configuration: RegistryConfiguration,
    /// Settings of every host listed in `registries[].hosts`, by normalised host.
    hosts: HashMap<String, HostSettings>,
    client: DistributionClient,
    retry: RetryPolicy,
    transfer: TransferLimits,
}

impl std::fmt::Debug for OciRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRegistry")
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .field("allow_any_registry", &self.configuration.allow_any_registry)
            .finish_non_exhaustive()
    }
}

/// The digest of `body` with the algorithm of `like`.
fn digest_like(like: &OciDigest, body: &[u8]) -> OciDigest {
    let mut hasher = like.hasher();
    hasher.update(body);
    hasher.finish()
}

/// Checks that `body` has digest `expected` (`DATA_LOSS` if not).
fn verify(what: &str, expected: &str, body: &[u8]) -> Result<(), Status> {
    let parsed = OciDigest::parse(expected).map_err(|e| {
        Status::failed_precondition(format!("{what}: unusable digest: {}", e.message()))
    })?;
    let actual = digest_like(&parsed, body);
    if actual != parsed {
        return Err(Status::data_loss(format!(
            "{what} does not match its digest: expected {expected}, got {actual}"
        )));
    }
    Ok(())
}

impl OciRegistry {
    /// Validates `configuration`, reads the credentials it names (Docker config files are
    /// read now, once; credential helpers they name run when first needed) and creates
    /// the HTTP client. Configuration errors are `INVALID_ARGUMENT`.
    pub fn new(configuration: RegistryConfiguration) -> Result<Self, Status> {
        configuration.validate().map_err(|e| {
            Status::invalid_argument(format!("Invalid registry configuration: {e}"))
        })?;
        let mut hosts = HashMap::new();
        let secrets = Secrets::default();
        for entry in &configuration.registries {
            for host in &entry.hosts {
                let source =
                    credentials::resolve(entry.credentials.as_ref(), host).map_err(|e| {
                        Status::invalid_argument(format!("Invalid registry configuration: {e}"))
                    })?;
                let auth = match source {
                    Source::Static(auth) => {
                        secrets.add(&auth);
                        HostAuth::Static(auth)
                    }
                    Source::Helper(name) => HostAuth::Helper(CredentialHelper::new(
                        &name,
                        &normalize_host(host),
                        configuration.credential_helpers.clone(),
                        secrets.clone(),
                    )),
                };
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
            client: DistributionClient::new(&configuration, secrets)?,
            retry: RetryPolicy {
                maximum_retries: configuration.maximum_retries,
                initial_delay: configuration.initial_retry_delay,
                request_timeout: configuration.request_timeout,
            },
            transfer: TransferLimits {
                timeout: configuration.blob_transfer_timeout,
                minimum_bytes_per_second: configuration.minimum_transfer_bytes_per_second,
                window: configuration.transfer_rate_window,
            },
            configuration,
            hosts,
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
        let endpoint = |h: String, mirror_of: Option<String>| {
            let settings = self.hosts.get(&h).cloned().unwrap_or_else(|| HostSettings {
                plain_http: is_loopback_host(&h),
                auth: HostAuth::Static(RegistryAuth::Anonymous),
            });
            let auth = match &settings.auth {
                HostAuth::Static(auth) => auth.clone(),
                HostAuth::Helper(_) => RegistryAuth::Anonymous,
            };
            Endpoint {
                host: h,
                mirror_of,
                settings,
                auth,
            }
        };
        let mut endpoints: Vec<Endpoint> = entry
            .map(|e| e.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| endpoint(normalize_host(m), Some(host.clone())))
            .collect();
        endpoints.push(endpoint(host, None));
        Ok(endpoints)
    }

    /// [`Self::endpoints`] with the credentials of credential helpers filled in. A mirror
    /// whose helper fails is skipped (with a warning); the registry's own failure is the
    /// caller's error.
    async fn with_credentials(&self, reference: &Reference) -> Result<Vec<Endpoint>, Status> {
        let endpoints = self.endpoints(reference)?;
        let mut ready = Vec::with_capacity(endpoints.len());
        for mut endpoint in endpoints {
            if let HostAuth::Helper(helper) = &endpoint.settings.auth {
                match helper.get().await {
                    Ok(auth) => endpoint.auth = auth,
                    Err(e) if endpoint.mirror_of.is_some() => {
                        warn!(
                            mirror = endpoint.host,
                            error = e.message(),
                            "Registry mirror skipped: its credential helper failed"
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            ready.push(endpoint);
        }
        Ok(ready)
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

    /// The tag or digest a manifest request names.
    fn manifest_path(reference: &Reference) -> String {
        match (reference.digest(), reference.tag()) {
            (Some(digest), _) => format!("manifests/{digest}"),
            (None, Some(tag)) => format!("manifests/{tag}"),
            (None, None) => "manifests/latest".to_owned(),
        }
    }

    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
    ) -> Result<String, Status> {
        let target = endpoint.target(reference);
        let path = Self::manifest_path(reference);
        let accept = ACCEPTED_MANIFEST_MEDIA_TYPES.join(", ");
        let header = self
            .retry
            .run("resolve", || async {
                let response = self
                    .client
                    .send(&target, Method::HEAD, &path, Some(&accept), "manifest")
                    .await?;
                Ok(response
                    .headers()
                    .get(DOCKER_CONTENT_DIGEST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned))
            })
            .await?;
        let digest = match header {
            Some(digest) => digest,
            // No digest header: the digest of the manifest itself.
            None => self.pull_manifest(&target, &path).await?.1,
        };
        validate_digest(&digest).map_err(|reason| {
            Status::failed_precondition(format!("Registry returned an unusable digest: {reason}"))
        })?;
        Ok(digest)
    }

    /// Fetches one manifest or index at `path` (`manifests/<tag or digest>`); returns its
    /// bytes and digest, verified.
    async fn pull_manifest(
        &self,
        target: &Target<'_>,
        path: &str,
    ) -> Result<(Bytes, String), Status> {
        let accept = ACCEPTED_MANIFEST_MEDIA_TYPES.join(", ");
        let what = format!("Manifest {path} from {}", target.host);
        let (body, header) = self
            .retry
            .run("manifest", || async {
                let response = self
                    .client
                    .send(target, Method::GET, path, Some(&accept), "manifest")
                    .await?;
                let header = response
                    .headers()
                    .get(DOCKER_CONTENT_DIGEST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = read_bounded(response, MAXIMUM_MANIFEST_SIZE, &what)
                    .await
                    .inspect_err(|f| {
                        if f.status.code() == Code::FailedPrecondition {
                            metrics::refused(target.host, "too_large");
                        }
                    })?;
                Ok((body, header))
            })
            .await?;
        let named = path.strip_prefix("manifests/").unwrap_or(path);
        let digest = if named.contains(':') {
            verify(&what, named, &body)?;
            named.to_owned()
        } else if let Some(header) = header {
            verify(&what, &header, &body)?;
            header
        } else {
            let mut hasher = OciHasher::Sha256(Default::default());
            hasher.update(&body);
            hasher.finish().to_string()
        };
        Ok((body, digest))
    }

    async fn fetch_image_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ImageMetadata, Status> {
        let target = endpoint.target(reference);
        let (mut body, mut digest) = self
            .pull_manifest(&target, &Self::manifest_path(reference))
            .await?;
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
                    if child.size < 0 || child.size as u64 > MAXIMUM_MANIFEST_SIZE {
                        return Err(Status::failed_precondition(format!(
                            "Index {digest}: manifest {} is {} bytes, more than the limit \
                             of {MAXIMUM_MANIFEST_SIZE}",
                            child.digest, child.size
                        )));
                    }
                    (body, digest) = self
                        .pull_manifest(&target, &format!("manifests/{}", child.digest))
                        .await?;
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
                .fetch_small_blob(&target, &manifest.config)
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
        target: &Target<'_>,
        digest: &str,
        size: i64,
    ) -> Result<reqwest::Response, Failure> {
        let response = self
            .client
            .send(
                target,
                Method::GET,
                &format!("blobs/{digest}"),
                None,
                "blob",
            )
            .await?;
        if let Some(length) = response.content_length() {
            if length != size as u64 {
                return Err(Failure::permanent(Status::data_loss(format!(
                    "Registry announced {length} bytes for blob {digest}, its descriptor says {size}"
                ))));
            }
        }
        Ok(response)
    }

    /// Fetches a small blob (the config) whole, retrying the whole download; its
    /// descriptor's size is the read limit.
    async fn fetch_small_blob(
        &self,
        target: &Target<'_>,
        descriptor: &Descriptor,
    ) -> Result<Bytes, Status> {
        let what = format!("Blob {} from {}", descriptor.digest, target.host);
        let body = self
            .retry
            .run("config", || async {
                let response = self
                    .open_blob(target, &descriptor.digest, descriptor.size)
                    .await?;
                read_bounded(response, descriptor.size.max(0) as u64, &what).await
            })
            .await?;
        if body.len() as i64 != descriptor.size {
            return Err(Status::data_loss(format!(
                "{what} has {} bytes, its descriptor says {}",
                body.len(),
                descriptor.size
            )));
        }
        verify(&what, &descriptor.digest, &body)?;
        Ok(body)
    }

    async fn fetch_blob_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<ChunkStream, Status> {
        let target = endpoint.target(reference);
        let response = self
            .retry
            .run("blob", || {
                self.open_blob(&target, &layer.digest, layer.size)
            })
            .await?;
        let context = format!(
            "Failed to fetch layer {} of image {reference}",
            layer.digest
        );
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        // The layer ingester hashes the blob anyway and reports a mismatch (DATA_LOSS):
        // hashing it here too would cost a second pass over every layer.
        let verified = BlobStream::new(body, &layer.digest, layer.size)?.without_digest_check();
        let limited = LimitedStream::new(
            verified,
            self.transfer,
            format!("blob {} from {}", layer.digest, target.host),
        )
        .counting_refusals_for(target.host);
        Ok(limited
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
    fn check_allowed(&self, instance_name: &str, reference: &Reference) -> Result<(), Status> {
        self.endpoints(reference)?;
        let host = normalize_host(reference.registry());
        match self.configuration.entry_for(&host) {
            Some(entry)
                if !instance_name_prefixes::allows(
                    entry.instance_name_prefixes.as_deref(),
                    instance_name,
                ) =>
            {
                Err(instance_name_prefixes::refused(&host, instance_name))
            }
            _ => Ok(()),
        }
    }

    async fn resolve(&self, reference: &Reference) -> Result<String, Status> {
        let context = || format!("Failed to resolve image {reference}");
        if let Some(digest) = reference.digest() {
            self.endpoints(reference).context_with(context)?;
            return Ok(digest.to_owned());
        }
        let endpoints = self
            .with_credentials(reference)
            .await
            .context_with(context)?;
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
        let endpoints = self
            .with_credentials(reference)
            .await
            .context_with(context)?;
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
        let endpoints = self
            .with_credentials(reference)
            .await
            .context_with(context)?;
        self.first_success(&endpoints, |endpoint| {
            self.fetch_blob_at(endpoint, reference, layer)
        })
        .await
        .context_with(context)
    }
}

/// A blob body as it arrives: held to its descriptor's size and verified against its
/// digest when it ends; errors as `Status`.
struct BlobStream {
    inner: BoxStream<'static, std::io::Result<Bytes>>,
    digest: String,
    hasher: Option<OciHasher>,
    expected_digest: OciDigest,
    expected: u64,
    received: u64,
    finished: bool,
}

impl BlobStream {
    fn new(
        inner: BoxStream<'static, std::io::Result<Bytes>>,
        digest: &str,
        size: i64,
    ) -> Result<Self, Status> {
        let expected_digest = OciDigest::parse(digest)?;
        Ok(Self {
            inner,
            digest: digest.to_owned(),
            hasher: Some(expected_digest.hasher()),
            expected_digest,
            expected: size.max(0) as u64,
            received: 0,
            finished: false,
        })
    }

    /// Checks only the size: for a consumer that verifies the digest itself.
    fn without_digest_check(mut self) -> Self {
        self.hasher = None;
        self
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Bytes, Status>>> {
        self.finished = true;
        Poll::Ready(Some(Err(status)))
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
                    let status = Status::data_loss(format!(
                        "Blob {} is larger than the {} bytes its descriptor says",
                        this.digest, this.expected
                    ));
                    return this.fail(status);
                }
                if let Some(hasher) = this.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                let status = Status::unavailable(format!(
                    "Connection to the registry broke after {} of {} bytes of blob {}: {}",
                    this.received,
                    this.expected,
                    this.digest,
                    error_chain(&error)
                ));
                this.fail(status)
            }
            Poll::Ready(None) => {
                if this.received != this.expected {
                    let status = Status::unavailable(format!(
                        "Blob {} ended after {} of {} bytes",
                        this.digest, this.received, this.expected
                    ));
                    return this.fail(status);
                }
                this.finished = true;
                let Some(hasher) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                let actual = Some(hasher.finish());
                if actual.as_ref() != Some(&this.expected_digest) {
                    return Poll::Ready(Some(Err(Status::data_loss(format!(
                        "Blob {} does not match its digest: its content has digest {}",
                        this.digest,
                        actual.map(|d| d.to_string()).unwrap_or_default()
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
        assert!(registry.check_allowed("", &reference).is_err());
        assert!(registry
            .check_allowed("", &Reference::parse("allowed.example/x").unwrap())
            .is_ok());
    }

    /// instanceNamePrefixes limits an entry's hosts to instance names, by whole path
    /// components; entries without it, and hosts allowed by allowAnyRegistry, are not
    /// limited.
    #[test]
    fn entries_limited_to_instance_name_prefixes() {
        let registry = OciRegistry::new(configuration(
            r#"{"registries": [
                {"hosts": ["a.example", "a2.example"], "instanceNamePrefixes": ["team-a", "team-b/ci"]},
                {"hosts": ["open.example"]}
            ], "allowAnyRegistry": true}"#,
        ))
        .unwrap();
        let limited = Reference::parse("docker://A.example/x:y").unwrap();
        for allowed in ["team-a", "team-a/x", "team-b/ci", "team-b/ci/linux"] {
            registry.check_allowed(allowed, &limited).unwrap();
        }
        for refused in ["team-b", "team-ab", "", "team-b/cid"] {
            let err = registry.check_allowed(refused, &limited).unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{refused}");
            assert_eq!(
                err.message(),
                format!(
                    "Registry a.example is not allowed for instance name {refused:?}: its \
                     entry in the registries of the configuration is limited to other \
                     instance names (instanceNamePrefixes)"
                )
            );
        }
        let other_host = Reference::parse("a2.example/x").unwrap();
        assert!(registry.check_allowed("team-b", &other_host).is_err());
        for reference in ["open.example/x", "unlisted.example/x"] {
            let reference = Reference::parse(reference).unwrap();
            registry.check_allowed("team-b", &reference).unwrap();
        }
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
            instance_name_prefixes: None,
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
                    matches!(e.auth, RegistryAuth::Basic(..)),
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
        let debian = Reference::parse("debian").unwrap();
        let mirror = endpoints[0].target(&debian);
        assert_eq!(mirror.host, "127.0.0.1:5555");
        assert_eq!(mirror.namespace, Some("docker.io"));
        assert_eq!(mirror.repository, "library/debian");
        // Docker Hub itself is contacted at its API host.
        assert_eq!(endpoints[2].target(&debian).host, "registry-1.docker.io");
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

    /// Helper credentials are filled in per request; a mirror whose helper fails is
    /// skipped, the registry's own failure is the request's.
    #[tokio::test]
    async fn credential_helpers_fill_in_endpoints() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-ok");
        std::fs::write(
            &helper,
            "#!/bin/sh\necho '{\"Username\":\"u\",\"Secret\":\"from-helper\"}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"credHelpers": {"registry.example": "ok", "mirror.example": "absent",
                "broken.example": "absent"}}"#,
        )
        .unwrap();
        let c = configuration(&format!(
            r#"{{"registries": [
                {{"hosts": ["registry.example", "mirror.example", "broken.example"],
                  "mirrors": ["mirror.example"],
                  "credentials": {{"dockerConfigPath": {config:?}}}}}],
              "credentialHelpers": {{"searchDirectories": [{dir:?}]}}}}"#,
            config = config.to_str().unwrap(),
            dir = dir.path().to_str().unwrap(),
        ));
        let registry = OciRegistry::new(c).unwrap();
        let endpoints = registry
            .with_credentials(&Reference::parse("registry.example/x").unwrap())
            .await
            .unwrap();
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        assert_eq!(endpoints[0].host, "registry.example");
        assert_eq!(
            endpoints[0].auth,
            RegistryAuth::Basic("u".into(), "from-helper".into())
        );
        let err = registry
            .resolve(&Reference::parse("broken.example/x:v1").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("docker-credential-absent")
                && err.message().contains("broken.example/x:v1"),
            "{err:?}"
        );
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

    fn sha256(data: &[u8]) -> String {
        let mut h = OciHasher::Sha256(Default::default());
        h.update(data);
        h.finish().to_string()
    }

    #[tokio::test]
    async fn blob_stream_checks_size_and_digest() {
        let abc = sha256(b"abc");
        let ok = BlobStream::new(chunks(vec![Ok(b"ab"), Ok(b"c")]), &abc, 3).unwrap();
        let data: Vec<Bytes> = ok.try_collect().await.unwrap();
        assert_eq!(data.concat(), b"abc");

        let long = BlobStream::new(chunks(vec![Ok(b"ab"), Ok(b"cd")]), &abc, 3).unwrap();
        let err = long.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);

        // Ending early is a broken transfer, worth another attempt.
        let short = BlobStream::new(chunks(vec![Ok(b"ab")]), &abc, 3).unwrap();
        let err = short.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("ended after 2 of 3 bytes"),
            "{}",
            err.message()
        );

        let broken = BlobStream::new(
            chunks(vec![
                Ok(b"a"),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset by peer",
                )),
            ]),
            &abc,
            3,
        )
        .unwrap();
        let err = broken.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("after 1 of 3 bytes"),
            "{}",
            err.message()
        );

        let corrupt = BlobStream::new(chunks(vec![Ok(b"abd")]), &abc, 3).unwrap();
        let err = corrupt.try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
        assert!(
            err.message().contains("does not match its digest"),
            "{}",
            err.message()
        );

        assert_eq!(
            BlobStream::new(chunks(vec![]), "md5:00", 0)
                .err()
                .map(|e| e.code()),
            Some(Code::InvalidArgument)
        );
    }
}
