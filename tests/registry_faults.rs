//! Issue 10, "a slow, failing or hostile registry cannot hurt the service": `OciRegistry`
//! against a real docker-registry behind `support::fault_proxy::FaultProxy`, one test per
//! behaviour: trickled and slow blobs, huge manifests, 429 with Retry-After, redirects to
//! hosts that are not allowed, one `/v2/` handshake per registry, and the request budget.
//!
//! Assertions count requests and bytes in the proxy's log. Times appear only as lower
//! bounds read from that log (a retry came at least 2 s later) or as generous upper bounds
//! on detecting a failure (`WITHIN`), never as tight expectations.

mod support;

use std::time::Duration;

use bb_container_expander::layer::LayerDescriptor;
use bb_container_expander::registry::configuration::new_registry_configuration_from_configuration;
use bb_container_expander::registry::{OciRegistry, Platform, Reference, Registry};
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::{json, Value};
use tonic::{Code, Status};

use support::fake_http::{FakeHttpServer, Response};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::images::{Compression, Flavor, Image, ImageBuilder, Layer, TarEntry};
use support::registry_server::RegistryServer;
use support::sha256;

/// Upper bound on how long detecting a fault may take (the faults are detected within
/// a few seconds; the bound only keeps a broken build from hanging).
const WITHIN: Duration = Duration::from_secs(30);

/// A registry for `entries` with fast retries, plus the top-level settings of `extra`.
fn registry_with(entries: Value, extra: Value) -> OciRegistry {
    let mut settings = json!({
        "registries": entries,
        "requestTimeout": "5s",
        "maximumRetries": 2,
        "initialRetryDelay": "0.05s",
    });
    for (key, value) in extra.as_object().expect("an object") {
        settings[key.as_str()] = value.clone();
    }
    let configuration = new_registry_configuration_from_configuration(
        &serde_json::from_value(settings).expect("valid configuration"),
    );
    OciRegistry::new(configuration).expect("registry")
}

/// A registry allowed to contact `host` only, with the settings of `extra`.
fn registry_for(host: &str, extra: Value) -> OciRegistry {
    registry_with(json!([{ "hosts": [host] }]), extra)
}

fn reference(host: &str, name: &str) -> Reference {
    Reference::parse(&format!("docker://{host}/{name}")).expect("reference")
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", "")
}

/// Bytes that do not compress: a layer of them is as large as they are.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// An uncompressed layer with one file of `len` bytes.
fn layer_of(name: &str, len: usize, seed: u64) -> Layer {
    Layer::new(
        support::images::tar_bytes(&[TarEntry::file(name, &noise(len, seed))]),
        Compression::None,
        Flavor::Oci,
    )
}

/// An image with one layer per entry of `sizes`.
fn image_with_layers(sizes: &[usize], seed: u64) -> Image {
    let mut builder = ImageBuilder::new(Flavor::Oci);
    for (i, size) in sizes.iter().enumerate() {
        builder = builder.layer(layer_of(&format!("data/{i}"), *size, seed + i as u64));
    }
    builder.build()
}

/// A registry holding `image` as `test/faults:v1`, and a proxy in front of it.
async fn registry_and_proxy(image: &Image) -> (RegistryServer, FaultProxy) {
    let server = tokio::task::spawn_blocking(RegistryServer::start)
        .await
        .expect("registry start-up");
    server
        .pusher()
        .push_image("test/faults", Some("v1"), image)
        .await;
    let proxy = FaultProxy::start(&server.host());
    (server, proxy)
}

/// The whole blob of `layer`, or the error it ended with.
async fn read_blob(
    registry: &dyn Registry,
    image: &Reference,
    layer: &LayerDescriptor,
) -> Result<Vec<u8>, Status> {
    let stream = registry.fetch_blob(image, layer).await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

/// [`read_blob`], failing the test if neither result comes within [`WITHIN`].
async fn read_blob_within(
    registry: &dyn Registry,
    image: &Reference,
    layer: &LayerDescriptor,
) -> Result<Vec<u8>, Status> {
    tokio::time::timeout(WITHIN, read_blob(registry, image, layer))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "blob {} neither read nor failed in {WITHIN:?}",
                layer.digest
            )
        })
}

/// What a worker does with an image: resolve, metadata, every blob (checked).
async fn fetch_everything(registry: &dyn Registry, image: &Reference) -> Result<(), Status> {
    let digest = registry.resolve(image).await?;
    let pinned = image.with_digest(&digest)?;
    let metadata = registry.fetch_image(&pinned, &amd64()).await?;
    for layer in &metadata.layers {
        let bytes = read_blob(registry, &pinned, layer).await?;
        assert_eq!(sha256(&bytes), layer.digest);
    }
    Ok(())
}

/// The error of `result`; panics with `what` (and the size of what was read, not the
/// bytes) if it succeeded.
fn failure(result: Result<Vec<u8>, Status>, what: &str) -> Status {
    match result {
        Ok(bytes) => panic!("{what}, but {} bytes were read", bytes.len()),
        Err(status) => status,
    }
}

fn assert_code(result: &Status, codes: &[Code]) {
    assert!(
        codes.contains(&result.code()),
        "expected one of {codes:?}, got {:?}: {}",
        result.code(),
        result.message()
    );
}

// ---------------------------------------------------------------------------------
// 1. Slow blobs.

#[tokio::test]
async fn trickled_layer_fails_unavailable_below_the_minimum_rate_and_a_healthy_one_passes() {
    let image = image_with_layers(&[8 << 10, 8 << 10], 1);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let slow = &image.layers[0];
    proxy.add_rule(Rule::get(
        &format!("/blobs/{}", slow.digest),
        Fault::trickle(1, Duration::from_millis(1500)),
    ));
    let registry = registry_for(
        &proxy.host(),
        json!({"minimumTransferBytesPerSecond": 1024, "transferRateWindow": "2s"}),
    );
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = registry.fetch_image(&r, &amd64()).await.expect("metadata");

    let error = failure(
        read_blob_within(&registry, &r, &metadata.layers[0]).await,
        "a layer trickled at 1 byte per 1.5 s must fail",
    );
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        error.message().contains(&slow.digest),
        "the message names the layer: {}",
        error.message()
    );
    assert!(
        error.message().contains(&proxy.host()),
        "the message names the registry host: {}",
        error.message()
    );

    // The other layer, through the same proxy, is fine.
    let healthy = read_blob_within(&registry, &r, &metadata.layers[1])
        .await
        .expect("a healthy layer passes");
    assert_eq!(healthy, image.layers[1].blob.as_ref());
}

#[tokio::test]
async fn steady_but_slow_blob_fails_unavailable_after_the_blob_transfer_timeout() {
    // 1 MiB at 64 KiB/s takes 16 s; the transfer may take 3 s. The rate check is off.
    let image = image_with_layers(&[1 << 20], 2);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let layer = &image.layers[0];
    proxy.add_rule(Rule::get(
        &format!("/blobs/{}", layer.digest),
        Fault::trickle(16 << 10, Duration::from_millis(250)),
    ));
    let registry = registry_for(
        &proxy.host(),
        json!({"blobTransferTimeout": "3s", "minimumTransferBytesPerSecond": 0}),
    );
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = registry.fetch_image(&r, &amd64()).await.expect("metadata");
    let error = failure(
        read_blob_within(&registry, &r, &metadata.layers[0]).await,
        "a 16 s transfer must not outlive a 3 s blobTransferTimeout",
    );
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        error.message().contains(&layer.digest),
        "{}",
        error.message()
    );
    let sent = proxy.requests("GET", |p| p.contains(&layer.digest))[0].body_bytes;
    assert!(
        sent < layer.blob.len() as u64,
        "the transfer was cut short, not completed ({sent} bytes sent)"
    );
}

#[tokio::test]
async fn blob_cut_mid_body_fails_unavailable_and_the_next_read_succeeds() {
    // The proxy's own check too: exactly `after_bytes` of the body go out, then the
    // connection closes.
    let image = image_with_layers(&[64 << 10], 14);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let layer = &image.layers[0];
    proxy.add_rule(
        Rule::get(
            &format!("/blobs/{}", layer.digest),
            Fault::DropConnection {
                probability: 1.0,
                after_bytes: Some(1000),
            },
        )
        .first(1),
    );
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = registry.fetch_image(&r, &amd64()).await.expect("metadata");
    let error = failure(
        read_blob_within(&registry, &r, &metadata.layers[0]).await,
        "a blob whose connection closes after 1000 bytes must fail",
    );
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        error.message().contains(&layer.digest),
        "{}",
        error.message()
    );
    let cut = proxy.requests("GET", |p| p.contains(&layer.digest));
    assert_eq!(cut.len(), 1, "a broken stream is not retried here: {cut:?}");
    assert_eq!(cut[0].body_bytes, 1000);
    // The caller retries the whole layer; the rule is spent.
    let bytes = read_blob_within(&registry, &r, &metadata.layers[0])
        .await
        .expect("the second read succeeds");
    assert_eq!(bytes, layer.blob.as_ref());
}

// ---------------------------------------------------------------------------------
// 2. Huge manifests.

/// The manifest size limit of the registry module.
const MANIFEST_LIMIT: u64 = 4 << 20;
const HUGE: usize = 256 << 20;

/// Manifest body bytes the proxy sent, once they stop changing.
async fn manifest_bytes_sent(proxy: &FaultProxy) -> u64 {
    let total = || -> u64 {
        proxy
            .requests("GET", |p| p.contains("/manifests/"))
            .iter()
            .map(|e| e.body_bytes)
            .sum()
    };
    let mut last = total();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn manifest_announcing_256_mib_is_refused_without_reading_the_body() {
    let image = image_with_layers(&[1 << 10], 3);
    let (_server, proxy) = registry_and_proxy(&image).await;
    proxy.add_rule(Rule::get(
        "/manifests/",
        Fault::OverrideBody {
            content_length_header: Some(HUGE as u64),
            body_size: HUGE,
        },
    ));
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let error = tokio::time::timeout(WITHIN, registry.fetch_image(&r, &amd64()))
        .await
        .expect("refused in time")
        .expect_err("a 256 MiB manifest is refused");
    // Socket buffers may hold a few MiB the client never read; 8 MiB bounds them.
    let sent = manifest_bytes_sent(&proxy).await;
    assert_eq!(
        error.code(),
        Code::FailedPrecondition,
        "{} ({sent} bytes sent)",
        error.message()
    );
    assert!(
        sent < 8 << 20,
        "the body must not be read when Content-Length is too large: {sent} bytes sent"
    );
}

#[tokio::test]
async fn chunked_manifest_of_256_mib_is_refused_after_at_most_the_limit() {
    let image = image_with_layers(&[1 << 10], 4);
    let (_server, proxy) = registry_and_proxy(&image).await;
    proxy.add_rule(Rule::get(
        "/manifests/",
        Fault::OverrideBody {
            content_length_header: None,
            body_size: HUGE,
        },
    ));
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let error = tokio::time::timeout(WITHIN, registry.fetch_image(&r, &amd64()))
        .await
        .expect("refused in time")
        .expect_err("a 256 MiB manifest is refused");
    // The client reads at most the limit plus a chunk; what sits in socket buffers
    // (loopback autotuning may grow the receive buffer to several MiB while the client
    // reads) is allowed for with 8 MiB more. Reading the whole body would send 256 MiB.
    let sent = manifest_bytes_sent(&proxy).await;
    assert_eq!(
        error.code(),
        Code::FailedPrecondition,
        "{} ({sent} bytes sent)",
        error.message()
    );
    assert!(
        sent <= MANIFEST_LIMIT + (8 << 20),
        "a chunked body must be cut at the limit: {sent} bytes sent"
    );
}

// ---------------------------------------------------------------------------------
// 3. Retry-After.

#[tokio::test]
async fn retry_after_of_429_is_honoured_before_the_next_attempt() {
    let image = image_with_layers(&[1 << 10], 5);
    let (_server, proxy) = registry_and_proxy(&image).await;
    proxy
        .add_rule(Rule::get("/manifests/", Fault::status(429).header("Retry-After", "2")).first(1));
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = tokio::time::timeout(WITHIN, registry.fetch_image(&r, &amd64()))
        .await
        .expect("in time")
        .expect("the fetch succeeds after the 429");
    assert_eq!(metadata.manifest_digest, image.manifest_digest);
    let attempts = proxy.requests("GET", |p| p.contains("/manifests/"));
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[0].status, Some(429));
    assert_eq!(attempts[1].status, Some(200));
    let waited = attempts[1].at.duration_since(attempts[0].at);
    assert!(
        waited >= Duration::from_secs(2),
        "the retry came {waited:?} after a 429 with Retry-After: 2"
    );
}

#[tokio::test]
async fn retry_after_of_503_is_honoured_before_the_next_attempt() {
    // 429 waits at least 2 s whatever the header says; 503 shows the header is read.
    let image = image_with_layers(&[1 << 10], 13);
    let (_server, proxy) = registry_and_proxy(&image).await;
    proxy
        .add_rule(Rule::get("/manifests/", Fault::status(503).header("Retry-After", "3")).first(1));
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    tokio::time::timeout(WITHIN, registry.fetch_image(&r, &amd64()))
        .await
        .expect("in time")
        .expect("the fetch succeeds after the 503");
    let attempts = proxy.requests("GET", |p| p.contains("/manifests/"));
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[0].status, Some(503));
    let waited = attempts[1].at.duration_since(attempts[0].at);
    assert!(
        waited >= Duration::from_secs(3),
        "the retry came {waited:?} after a 503 with Retry-After: 3"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_maximum_fails_unavailable_at_once() {
    let image = image_with_layers(&[1 << 10], 6);
    let (_server, proxy) = registry_and_proxy(&image).await;
    proxy.add_rule(Rule::get(
        "/manifests/",
        Fault::status(429).header("Retry-After", "30"),
    ));
    let registry = registry_for(&proxy.host(), json!({"maximumRetryAfter": "1s"}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let error = tokio::time::timeout(Duration::from_secs(20), registry.fetch_image(&r, &amd64()))
        .await
        .expect("fails well before the 30 s the registry asked for")
        .expect_err("a Retry-After of 30 s beyond maximumRetryAfter fails");
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        error.message().contains("Retry-After"),
        "the message says why: {}",
        error.message()
    );
    assert_eq!(
        proxy.count("GET", |p| p.contains("/manifests/")),
        1,
        "no retry when the registry asks for a longer wait than allowed"
    );
}

// ---------------------------------------------------------------------------------
// 4. Redirects.

/// A server answering every GET with `blob` (a CDN holding the blob).
fn blob_server(blob: Bytes) -> FakeHttpServer {
    FakeHttpServer::start(move |_| Response::new(200, blob.to_vec()))
}

/// Redirects GET of `layer`'s blob to `target`.
fn redirect_blob(proxy: &FaultProxy, layer: &Layer, target: &FakeHttpServer) {
    proxy.add_rule(Rule::get(
        &format!("/blobs/{}", layer.digest),
        Fault::redirect(
            307,
            &format!("http://{}/cdn/{}", target.host(), layer.digest),
        ),
    ));
}

fn assert_redirect_refused(error: &Status) {
    assert_code(error, &[Code::PermissionDenied, Code::FailedPrecondition]);
    let message = error.message().to_ascii_lowercase();
    assert!(
        message.contains("redirect") && message.contains("not allowed"),
        "the message says the redirect target is not allowed: {}",
        error.message()
    );
}

#[tokio::test]
async fn redirect_to_an_unlisted_loopback_host_is_refused_without_connecting() {
    let image = image_with_layers(&[4 << 10], 7);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let cdn = blob_server(image.layers[0].blob.clone());
    redirect_blob(&proxy, &image.layers[0], &cdn);
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = registry.fetch_image(&r, &amd64()).await.expect("metadata");
    let error = failure(
        read_blob_within(&registry, &r, &metadata.layers[0]).await,
        "a redirect to an unlisted loopback address is refused",
    );
    assert_redirect_refused(&error);
    assert_eq!(
        proxy.count("GET", |p| p.contains(&image.layers[0].digest)),
        1,
        "a refused redirect is not retried"
    );
    assert_eq!(cdn.connections(), 0, "the redirect target got a connection");
}

#[tokio::test]
async fn redirect_to_a_listed_host_is_followed() {
    let image = image_with_layers(&[4 << 10], 8);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let cdn = blob_server(image.layers[0].blob.clone());
    redirect_blob(&proxy, &image.layers[0], &cdn);
    let registry = registry_with(
        json!([{ "hosts": [proxy.host()] }, { "hosts": [cdn.host()] }]),
        json!({}),
    );
    let r = reference(&proxy.host(), "test/faults:v1");
    let metadata = registry.fetch_image(&r, &amd64()).await.expect("metadata");
    let bytes = read_blob_within(&registry, &r, &metadata.layers[0])
        .await
        .expect("the redirect to a listed host is followed");
    assert_eq!(bytes, image.layers[0].blob.as_ref());
    assert!(cdn.connections() >= 1);
}

#[tokio::test]
async fn redirect_hosts_restrict_where_redirects_may_lead() {
    let image = image_with_layers(&[4 << 10], 9);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let cdn = blob_server(image.layers[0].blob.clone());
    redirect_blob(&proxy, &image.layers[0], &cdn);
    let r = reference(&proxy.host(), "test/faults:v1");

    // The target is listed as a registry, but the entry allows redirects to
    // other.example only.
    let restricted = registry_with(
        json!([
            { "hosts": [proxy.host()], "redirectHosts": ["other.example"] },
            { "hosts": [cdn.host()] },
        ]),
        json!({}),
    );
    let metadata = restricted
        .fetch_image(&r, &amd64())
        .await
        .expect("metadata");
    let error = failure(
        read_blob_within(&restricted, &r, &metadata.layers[0]).await,
        "redirectHosts does not name the target",
    );
    assert_redirect_refused(&error);
    assert_eq!(cdn.connections(), 0, "the redirect target got a connection");

    // Naming it there lets the redirect through.
    let allowed = registry_with(
        json!([
            { "hosts": [proxy.host()], "redirectHosts": [cdn.host()] },
            { "hosts": [cdn.host()] },
        ]),
        json!({}),
    );
    let bytes = read_blob_within(&allowed, &r, &metadata.layers[0])
        .await
        .expect("redirectHosts names the target");
    assert_eq!(bytes, image.layers[0].blob.as_ref());
}

// ---------------------------------------------------------------------------------
// 5. The /v2/ handshake.

#[tokio::test]
async fn version_check_happens_once_per_registry() {
    let image = image_with_layers(&[2 << 10, 3 << 10], 10);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let registry = registry_for(&proxy.host(), json!({}));
    let r = reference(&proxy.host(), "test/faults:v1");
    for _ in 0..2 {
        fetch_everything(&registry, &r).await.expect("fetch");
    }
    let handshakes = proxy.count("GET", |p| p == "/v2/");
    assert!(
        handshakes <= 1,
        "GET /v2/ {handshakes} times for two fetches of one image; log: {:?}",
        proxy.log()
    );
}

#[tokio::test]
async fn version_check_happens_once_per_registry_with_token_auth() {
    let image = image_with_layers(&[2 << 10, 3 << 10], 11);
    let server = tokio::task::spawn_blocking(|| RegistryServer::start_with_token_auth("u", "p"))
        .await
        .expect("registry start-up");
    server
        .pusher()
        .push_image("test/faults", Some("v1"), &image)
        .await;
    let proxy = FaultProxy::start(&server.host());
    let registry = registry_with(
        json!([{
            "hosts": [proxy.host()],
            "credentials": { "basic": { "username": "u", "password": "p" } },
        }]),
        json!({}),
    );
    let r = reference(&proxy.host(), "test/faults:v1");
    for _ in 0..2 {
        fetch_everything(&registry, &r).await.expect("fetch");
    }
    // One repository, one pull scope: one handshake.
    let handshakes = proxy.count("GET", |p| p == "/v2/");
    assert!(
        handshakes <= 1,
        "GET /v2/ {handshakes} times for two fetches of one image; log: {:?}",
        proxy.log()
    );
}

// ---------------------------------------------------------------------------------
// 6. The request budget.

#[tokio::test]
async fn request_budget_spaces_requests_and_all_succeed() {
    // resolve + manifest + config + 4 layers: at least 7 requests.
    let image = image_with_layers(&[1 << 10, 1 << 10, 1 << 10, 1 << 10], 12);
    let (_server, proxy) = registry_and_proxy(&image).await;
    let registry = registry_with(
        json!([{
            "hosts": [proxy.host()],
            "requestBudget": { "requestsPerSecond": 2, "burst": 1 },
        }]),
        json!({}),
    );
    let r = reference(&proxy.host(), "test/faults:v1");
    tokio::time::timeout(Duration::from_secs(60), fetch_everything(&registry, &r))
        .await
        .expect("in time")
        .expect("every request succeeds, only later");
    let log = proxy.log();
    assert!(log.len() >= 6, "{log:?}");
    for entry in &log {
        assert!(
            entry.status.is_some_and(|s| s < 400),
            "a request failed: {entry:?}"
        );
    }
    // With a burst of 1 at 2 per second, the 6th request goes 2.5 s after the 1st at the
    // earliest (0.1 s allows for the first request's connection set-up).
    let span = log[5].at.duration_since(log[0].at);
    assert!(
        span >= Duration::from_millis(2400),
        "6 requests within {span:?} under a budget of 2 per second: {log:?}"
    );
}
