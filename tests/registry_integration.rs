//! `OciRegistry` against a real CNCF Distribution registry (`docker-registry`) on 127.0.0.1,
//! plus scripted HTTP servers for faults. Needs the Debian packages `docker-registry`,
//! `apache2-utils` and `openssl` (see `support::INSTALL_HINT`); without them the tests fail.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bb_container_expander::layer::LayerDescriptor;
use bb_container_expander::registry::configuration::new_registry_configuration_from_configuration;
use bb_container_expander::registry::{
    OciRegistry, Platform, Reference, Registry, RegistryConfiguration,
};
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::{json, Value};
use tonic::Code;

use support::fake_http::{FakeHttpServer, Response};
use support::images::{Compression, Flavor, Image, ImageBuilder, IndexBuilder, Layer, TarEntry};
use support::registry_server::RegistryServer;
use support::sha256;

/// A registry configuration with fast retries, listing `entries`.
fn configuration(entries: Value) -> RegistryConfiguration {
    new_registry_configuration_from_configuration(
        &serde_json::from_value(json!({
            "registries": entries,
            "requestTimeout": "5s",
            "maximumRetries": 2,
            "initialRetryDelay": "0.05s",
        }))
        .expect("valid configuration"),
    )
}

fn registry_for(host: &str) -> OciRegistry {
    OciRegistry::new(configuration(json!([{"hosts": [host]}]))).expect("registry")
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

fn linux(arch: &str) -> Platform {
    Platform::new("linux", arch, "")
}

async fn read_blob(registry: &dyn Registry, image: &Reference, layer: &LayerDescriptor) -> Vec<u8> {
    let stream = registry.fetch_blob(image, layer).await.expect("open blob");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read blob");
    chunks.concat()
}

/// Three layers (gzip, zstd, uncompressed) where the first repeats at the end (docs/design/layers.md#repeated-layers).
fn three_layer_image(flavor: Flavor, arch: &str, marker: &str) -> Image {
    let base = Layer::new(
        support::images::tar_bytes(&[
            TarEntry::Dir("etc".into(), 0o755),
            TarEntry::file("etc/os-release", format!("ID=test-{marker}\n").as_bytes()),
            TarEntry::Symlink("etc/alias".into(), "os-release".into()),
        ]),
        Compression::Gzip,
        flavor,
    );
    let app = Layer::from_files(
        &[("app/run.sh", b"#!/bin/sh\necho hi\n")],
        Compression::Zstd,
        flavor,
    );
    let data = Layer::from_files(&[("data/blob", &[7u8; 3000])], Compression::None, flavor);
    ImageBuilder::new(flavor)
        .platform("linux", arch, if arch == "arm64" { "v8" } else { "" })
        .layer(base.clone())
        .layer(app)
        .layer(data)
        .layer(base)
        .build()
}

#[tokio::test]
async fn push_fetch_metadata_and_blobs() {
    let server = RegistryServer::start();
    let image = three_layer_image(Flavor::Oci, "amd64", "plain");
    let pushed = server
        .pusher()
        .push_image("test/x", Some("v1"), &image)
        .await;
    assert_eq!(pushed, image.manifest_digest);

    let registry = registry_for(&server.host());
    let tagged = reference(&format!("docker://{}/test/x:v1", server.host()));
    assert_eq!(
        registry.resolve(&tagged).await.unwrap(),
        image.manifest_digest
    );

    let metadata = registry
        .fetch_image(&tagged, &linux("amd64"))
        .await
        .unwrap();
    assert_eq!(metadata.index_digest, None);
    assert_eq!(metadata.manifest_digest, image.manifest_digest);
    assert_eq!(
        metadata.manifest_media_type,
        Flavor::Oci.manifest_media_type()
    );
    assert_eq!(metadata.config_digest, image.config_digest);
    assert_eq!(metadata.config, image.config);
    assert_eq!(metadata.platform, linux("amd64"));
    assert_eq!(metadata.layers.len(), 4);
    for (got, want) in metadata.layers.iter().zip(&image.layers) {
        assert_eq!(got.digest, want.digest);
        assert_eq!(got.diff_id, want.diff_id);
        assert_eq!(got.media_type, want.media_type);
        assert_eq!(got.size as usize, want.blob.len());
    }
    assert_eq!(
        metadata.layers[0], metadata.layers[3],
        "repeated layers keep their position"
    );

    let pinned = tagged.with_digest(&metadata.manifest_digest).unwrap();
    for (layer, want) in metadata.layers.iter().zip(&image.layers) {
        let bytes = read_blob(&registry, &pinned, layer).await;
        assert_eq!(bytes, want.blob.as_ref());
        assert_eq!(sha256(&bytes), layer.digest);
    }

    // Fetching by digest gives the same result.
    let by_digest = registry
        .fetch_image(&pinned, &linux("amd64"))
        .await
        .unwrap();
    assert_eq!(by_digest.layers, metadata.layers);
}

#[tokio::test]
async fn docker_schema2_image() {
    let server = RegistryServer::start();
    let image = three_layer_image(Flavor::Docker, "amd64", "docker");
    server
        .pusher()
        .push_image("test/docker", Some("v2s2"), &image)
        .await;
    let registry = registry_for(&server.host());
    let r = reference(&format!("{}/test/docker:v2s2", server.host()));
    let metadata = registry.fetch_image(&r, &linux("amd64")).await.unwrap();
    assert_eq!(
        metadata.manifest_media_type,
        Flavor::Docker.manifest_media_type()
    );
    assert_eq!(
        metadata.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let bytes = read_blob(&registry, &r, &metadata.layers[1]).await;
    assert_eq!(bytes, image.layers[1].blob.as_ref());
}

#[tokio::test]
async fn multi_arch_oci_index_and_docker_manifest_list() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let amd64 = three_layer_image(flavor, "amd64", "amd64");
        let arm64 = three_layer_image(flavor, "arm64", "arm64");
        let attestation = ImageBuilder::new(flavor)
            .platform("unknown", "unknown", "")
            .layer(Layer::from_files(
                &[("provenance.json", b"{}")],
                Compression::None,
                flavor,
            ))
            .build();
        let mut builder = IndexBuilder::new(flavor)
            // An unknown media type first: skipped, although it claims linux/arm64.
            .entry(json!({
                "mediaType": "application/vnd.example.future.manifest+json",
                "digest": amd64.manifest_digest, "size": amd64.manifest.len(),
                "platform": {"os": "linux", "architecture": "arm64"},
            }))
            .image(&amd64);
        if flavor == Flavor::Oci {
            builder = builder.attestation(&attestation, &amd64);
        }
        let index = builder.image(&arm64).build();
        let tag = format!("multi-{flavor:?}").to_lowercase();
        let index_digest = pusher
            .push_index(
                "test/multi",
                Some(&tag),
                &index,
                &[&amd64, &arm64, &attestation],
            )
            .await;

        let registry = registry_for(&server.host());
        let r = reference(&format!("{}/test/multi:{tag}", server.host()));
        assert_eq!(registry.resolve(&r).await.unwrap(), index_digest);

        let arm = registry
            .fetch_image(&r, &Platform::new("linux", "aarch64", ""))
            .await
            .unwrap();
        assert_eq!(arm.index_digest.as_deref(), Some(index_digest.as_str()));
        assert_eq!(arm.manifest_digest, arm64.manifest_digest);
        assert_eq!(arm.platform, Platform::new("linux", "arm64", "v8"));
        let amd = registry.fetch_image(&r, &linux("amd64")).await.unwrap();
        assert_eq!(amd.manifest_digest, amd64.manifest_digest);
        assert_eq!(amd.layers[0].diff_id, amd64.layers[0].diff_id);
        let bytes = read_blob(&registry, &r, &arm.layers[0]).await;
        assert_eq!(bytes, arm64.layers[0].blob.as_ref());

        let err = registry.fetch_image(&r, &linux("s390x")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(
            err.message()
                .contains("platforms on offer: linux/amd64, linux/arm64/v8"),
            "{}",
            err.message()
        );
        assert!(err.message().starts_with(&format!(
            "Failed to fetch image docker://{}/test/multi:{tag}",
            server.host()
        )));
    }
}

#[tokio::test]
async fn nested_index_is_followed() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    let arm64 = three_layer_image(Flavor::Oci, "arm64", "nested");
    let inner = IndexBuilder::new(Flavor::Oci).image(&arm64).build();
    pusher
        .push_index("test/nested", None, &inner, &[&arm64])
        .await;
    let outer = IndexBuilder::new(Flavor::Oci).nested(&inner).build();
    let outer_digest = pusher
        .push_manifest("test/nested", Some("v1"), &outer.bytes, &outer.media_type)
        .await;
    let registry = registry_for(&server.host());
    let r = reference(&format!("{}/test/nested:v1", server.host()));
    let metadata = registry.fetch_image(&r, &linux("arm64")).await.unwrap();
    assert_eq!(metadata.index_digest, Some(outer_digest));
    assert_eq!(metadata.manifest_digest, arm64.manifest_digest);
}

#[tokio::test]
async fn basic_auth_success_and_wrong_password() {
    let server = RegistryServer::start_with_basic_auth("puller", "s3cret-basic");
    let image = three_layer_image(Flavor::Oci, "amd64", "basic");
    server
        .pusher()
        .push_image("private/app", Some("v1"), &image)
        .await;
    let r = reference(&format!("{}/private/app:v1", server.host()));

    let good = OciRegistry::new(configuration(json!([{
        "hosts": [server.host()],
        "credentials": {"basic": {"username": "puller", "password": "s3cret-basic"}},
    }])))
    .unwrap();
    let metadata = good.fetch_image(&r, &linux("amd64")).await.unwrap();
    assert_eq!(metadata.manifest_digest, image.manifest_digest);
    assert_eq!(
        read_blob(&good, &r, &metadata.layers[2]).await,
        image.layers[2].blob.as_ref()
    );

    let wrong = OciRegistry::new(configuration(json!([{
        "hosts": [server.host()],
        "credentials": {"basic": {"username": "puller", "password": "wrong-pa55word"}},
    }])))
    .unwrap();
    for err in [
        wrong.resolve(&r).await.unwrap_err(),
        wrong.fetch_image(&r, &linux("amd64")).await.unwrap_err(),
        wrong
            .fetch_blob(&r, &metadata.layers[0])
            .await
            .err()
            .unwrap(),
    ] {
        assert!(
            matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{err:?}"
        );
        assert!(
            !err.message().contains("wrong-pa55word"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("private/app"), "{}", err.message());
    }

    let anonymous = registry_for(&server.host());
    assert_eq!(
        anonymous.resolve(&r).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn docker_config_credentials() {
    let server = RegistryServer::start_with_basic_auth("cfguser", "cfg-pass");
    let image = three_layer_image(Flavor::Oci, "amd64", "cfg");
    server
        .pusher()
        .push_image("private/cfg", Some("v1"), &image)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("config.json");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("cfguser:cfg-pass");
    std::fs::write(
        &path,
        json!({"auths": {format!("http://{}", server.host()): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let registry = OciRegistry::new(configuration(json!([{
        "hosts": [server.host()],
        "credentials": {"dockerConfigPath": path.to_str().unwrap()},
    }])))
    .unwrap();
    let r = reference(&format!("{}/private/cfg:v1", server.host()));
    assert_eq!(registry.resolve(&r).await.unwrap(), image.manifest_digest);
}

/// A `credHelpers` entry runs the helper (a script written here), whose answer pulls through
/// basic auth; the answer is reused for the following requests.
#[tokio::test]
async fn credential_helper_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let server = RegistryServer::start_with_basic_auth("helperuser", "h3lper-pass");
    let image = three_layer_image(Flavor::Oci, "amd64", "helper");
    server
        .pusher()
        .push_image("private/helper", Some("v1"), &image)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let runs = directory.path().join("runs");
    for (name, password) in [("good", "h3lper-pass"), ("wrong", "wr0ng-helper-pass")] {
        let script = directory.path().join(format!("docker-credential-{name}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nread -r url || true\necho \"$url\" >> {}\n\
                 echo '{{\"ServerURL\":\"'\"$url\"'\",\"Username\":\"helperuser\",\"Secret\":\"{password}\"}}'\n",
                runs.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let registry_with = |helper: &str| {
        let config = directory.path().join(format!("{helper}.json"));
        std::fs::write(
            &config,
            json!({"credHelpers": {server.host(): helper}}).to_string(),
        )
        .unwrap();
        OciRegistry::new(new_registry_configuration_from_configuration(
            &serde_json::from_value(json!({
                "registries": [{
                    "hosts": [server.host()],
                    "credentials": {"dockerConfigPath": config.to_str().unwrap()},
                }],
                "credentialHelpers": {
                    "timeout": "5s",
                    "cacheTtl": "600s",
                    "searchDirectories": [directory.path().to_str().unwrap()],
                },
                "requestTimeout": "5s",
                "maximumRetries": 1,
                "initialRetryDelay": "0.05s",
            }))
            .unwrap(),
        ))
        .unwrap()
    };
    let r = reference(&format!("{}/private/helper:v1", server.host()));
    let good = registry_with("good");
    assert_eq!(good.resolve(&r).await.unwrap(), image.manifest_digest);
    let metadata = good.fetch_image(&r, &linux("amd64")).await.unwrap();
    assert_eq!(
        read_blob(&good, &r, &metadata.layers[1]).await,
        image.layers[1].blob.as_ref()
    );
    let log = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), vec![server.host()]);

    let wrong = registry_with("wrong");
    let err = wrong.resolve(&r).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{err:?}"
    );
    assert!(!err.message().contains("wr0ng-helper-pass"), "{err:?}");
}

#[tokio::test]
async fn token_auth_success_and_wrong_password() {
    let server = RegistryServer::start_with_token_auth("tokenuser", "t0ken-pass");
    let image = three_layer_image(Flavor::Oci, "amd64", "token");
    server
        .pusher()
        .push_image("private/tok", Some("v1"), &image)
        .await;
    let issued_by_push = server.token_server().unwrap().tokens_issued();
    assert!(issued_by_push > 0, "the push went through the token server");
    let r = reference(&format!("{}/private/tok:v1", server.host()));

    let good = OciRegistry::new(configuration(json!([{
        "hosts": [server.host()],
        "credentials": {"basic": {"username": "tokenuser", "password": "t0ken-pass"}},
    }])))
    .unwrap();
    let metadata = good.fetch_image(&r, &linux("amd64")).await.unwrap();
    assert_eq!(metadata.manifest_digest, image.manifest_digest);
    assert_eq!(
        read_blob(&good, &r, &metadata.layers[1]).await,
        image.layers[1].blob.as_ref()
    );
    assert!(server.token_server().unwrap().tokens_issued() > issued_by_push);

    let wrong = OciRegistry::new(configuration(json!([{
        "hosts": [server.host()],
        "credentials": {"basic": {"username": "tokenuser", "password": "bad-t0ken-pass"}},
    }])))
    .unwrap();
    let err = wrong.fetch_image(&r, &linux("amd64")).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{err:?}"
    );
    assert!(
        !err.message().contains("bad-t0ken-pass"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn host_not_allowed_is_refused_without_network() {
    let peer = FakeHttpServer::start(|_| Response::new(200, "{}"));
    let registry =
        OciRegistry::new(configuration(json!([{"hosts": ["allowed.example"]}]))).unwrap();
    let r = reference(&format!("docker://{}/test/x:v1", peer.host()));
    let err = registry.resolve(&r).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("is not allowed"),
        "{}",
        err.message()
    );
    let err = registry.fetch_image(&r, &linux("amd64")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let layer = LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: sha256(b""),
        size: 0,
        diff_id: sha256(b""),
    };
    assert_eq!(
        registry.fetch_blob(&r, &layer).await.err().unwrap().code(),
        Code::PermissionDenied
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        peer.connections(),
        0,
        "nothing may connect to a host that is not allowed"
    );
}

#[tokio::test]
async fn missing_tag_and_repository_are_not_found() {
    let server = RegistryServer::start();
    let image = three_layer_image(Flavor::Oci, "amd64", "nf");
    server
        .pusher()
        .push_image("test/present", Some("v1"), &image)
        .await;
    let registry = registry_for(&server.host());
    for text in ["test/present:nope", "test/absent:v1"] {
        let r = reference(&format!("{}/{text}", server.host()));
        let err = registry.resolve(&r).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{text}: {}", err.message());
        let err = registry.fetch_image(&r, &linux("amd64")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{text}: {}", err.message());
        assert!(err.message().contains(text), "{}", err.message());
    }
    let r = reference(&format!("{}/test/present:v1", server.host()));
    let missing = LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: sha256(b"not pushed"),
        size: 10,
        diff_id: sha256(b"not pushed"),
    };
    assert_eq!(
        registry
            .fetch_blob(&r, &missing)
            .await
            .err()
            .unwrap()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut server = RegistryServer::start();
    let host = server.host();
    server.stop();
    let registry = registry_for(&host);
    let r = reference(&format!("{host}/test/x:v1"));
    let err = registry.resolve(&r).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("after 3 attempts"),
        "{}",
        err.message()
    );
    let err = registry.fetch_image(&r, &linux("amd64")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
}

#[tokio::test]
async fn digest_pinned_resolve_needs_no_network() {
    let peer = FakeHttpServer::start(|_| Response::new(500, ""));
    let registry = registry_for(&peer.host());
    let digest = sha256(b"anything");
    let r = reference(&format!("{}/test/x:v1@{digest}", peer.host()));
    assert_eq!(registry.resolve(&r).await.unwrap(), digest);
    assert_eq!(peer.connections(), 0);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let digest = sha256(b"manifest");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let d = digest.clone();
    let peer = FakeHttpServer::start(move |request| {
        if request.path == "/v2/" {
            return Response::new(200, "{}");
        }
        if counted.fetch_add(1, Ordering::SeqCst) < 2 {
            Response::new(503, "busy")
        } else {
            Response::new(200, "").header("Docker-Content-Digest", &d)
        }
    });
    let registry = registry_for(&peer.host());
    let r = reference(&format!("{}/test/x:v1", peer.host()));
    assert_eq!(registry.resolve(&r).await.unwrap(), digest);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let always = FakeHttpServer::start(|request| {
        if request.path == "/v2/" {
            Response::new(200, "{}")
        } else {
            Response::new(
                429,
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            )
        }
    });
    let registry = OciRegistry::new({
        let mut c = configuration(json!([{"hosts": [always.host()]}]));
        c.maximum_retries = 1;
        c
    })
    .unwrap();
    let err = registry
        .resolve(&reference(&format!("{}/test/x:v1", always.host())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
}

#[tokio::test]
async fn connection_dropped_mid_blob_is_unavailable() {
    let body = vec![42u8; 64 * 1024];
    let digest = sha256(&body);
    let served = body.clone();
    let peer = FakeHttpServer::start(move |request| {
        if request.path == "/v2/" {
            return Response::new(200, "{}");
        }
        Response::new(200, served.clone())
            .header("Content-Type", "application/octet-stream")
            .truncated_at(served.len() / 2)
    });
    let registry = registry_for(&peer.host());
    let r = reference(&format!("{}/test/x:v1", peer.host()));
    let layer = LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: digest.clone(),
        size: body.len() as i64,
        diff_id: digest,
    };
    let stream = registry
        .fetch_blob(&r, &layer)
        .await
        .expect("the stream opens");
    let err = stream.try_collect::<Vec<Bytes>>().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().starts_with("Failed to fetch layer sha256:"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn mirror_without_the_image_falls_back_to_the_registry() {
    let origin = RegistryServer::start();
    let mirror = RegistryServer::start();
    let image = three_layer_image(Flavor::Oci, "amd64", "mirror");
    origin
        .pusher()
        .push_image("test/m", Some("v1"), &image)
        .await;
    let registry = OciRegistry::new(configuration(json!([{
        "hosts": [origin.host()],
        "mirrors": [mirror.host()],
    }])))
    .unwrap();
    let r = reference(&format!("{}/test/m:v1", origin.host()));
    let metadata = registry.fetch_image(&r, &linux("amd64")).await.unwrap();
    assert_eq!(metadata.manifest_digest, image.manifest_digest);
    assert!(
        mirror.log().contains("/v2/test/m/manifests/v1"),
        "the mirror was asked first"
    );

    // Once the mirror has the image, it serves it.
    mirror
        .pusher()
        .push_image("test/m", Some("v1"), &image)
        .await;
    let blob_gets = || {
        let request = format!("GET /v2/test/m/blobs/{}", metadata.layers[0].digest);
        mirror.log().matches(&request).count()
    };
    let before = blob_gets();
    let bytes = read_blob(&registry, &r, &metadata.layers[0]).await;
    assert_eq!(bytes, image.layers[0].blob.as_ref());
    // The access log line may follow the response by a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while blob_gets() == before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(blob_gets() > before, "the mirror served the layer");
}

#[tokio::test]
async fn artifacts_and_inconsistent_configs_are_refused() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    let layer = Layer::from_files(&[("a", b"a")], Compression::Gzip, Flavor::Oci);
    let artifact = ImageBuilder::new(Flavor::Oci)
        .layer(layer.clone())
        .config_media_type("application/vnd.cncf.helm.config.v1+json")
        .build();
    pusher
        .push_image("test/bad", Some("artifact"), &artifact)
        .await;
    let mismatched = ImageBuilder::new(Flavor::Oci)
        .layer(layer.clone())
        .layer(layer)
        .diff_ids(vec![sha256(b"one")])
        .build();
    pusher
        .push_image("test/bad", Some("mismatch"), &mismatched)
        .await;
    let registry = registry_for(&server.host());
    for (tag, needle) in [("artifact", "artifact"), ("mismatch", "don't match")] {
        let r = reference(&format!("{}/test/bad:{tag}", server.host()));
        let err = registry.fetch_image(&r, &linux("amd64")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().contains(needle), "{}", err.message());
    }
}
