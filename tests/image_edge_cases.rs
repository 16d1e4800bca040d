//! More of the image engine against a real registry (`docker-registry` on 127.0.0.1):
//! repeated layers, empty layers, large files, instance names and digest functions,
//! caches shared by images with the same layers, limits and options, and more bad layers
//! (corrupt zstd and tar, hard links leaving the root), each with nothing cached.

mod image_common;
mod support;

use std::sync::Arc;

use bb_container_expander::blobstore::Instance;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::ExpanderOptions;
use bb_container_expander::registry::OciRegistry;
use bytes::Bytes;
use serde_json::json;
use tonic::Code;

use image_common::*;
use support::images::{
    dir, exe, file, link, symlink, tar_bytes, whiteout, Compression, Flavor, Image, ImageBuilder,
    Layer, TarEntry,
};
use support::registry_server::RegistryServer;
use support::sha256;

fn layer(entries: &[TarEntry], compression: Compression) -> Layer {
    Layer::new(tar_bytes(entries), compression, Flavor::Oci)
}

fn image(layers: &[&Layer]) -> Image {
    let mut builder = ImageBuilder::new(Flavor::Oci);
    for l in layers {
        builder = builder.layer((*l).clone());
    }
    builder.build()
}

/// Incompressible bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn push(server: &RegistryServer, repo: &str, image: &Image) -> String {
    server.pusher().push_image(repo, Some("v1"), image).await;
    format!("{}/{repo}:v1", server.host())
}

#[tokio::test]
async fn repeated_layers_are_applied_at_every_position() {
    // docs/design/layers.md#repeated-layers: [A, B, A] ends with A's content, and A's whiteout applies again.
    let server = RegistryServer::start();
    let a = layer(
        &[file("etc/state", "A"), whiteout("etc/.wh.extra")],
        Compression::Gzip,
    );
    let b = layer(
        &[file("etc/state", "B"), file("etc/extra", "from B")],
        Compression::Gzip,
    );
    let reference = push(&server, "test/repeat", &image(&[&a, &b, &a])).await;
    let env = Env::new();
    let expanded = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap();
    assert_eq!(expanded.layers_ingested, 2, "each distinct layer once");
    assert_eq!(expanded.statistics.layers, 3);
    assert_trees_eq(
        &env.tree(&expanded).await,
        &tree(&[("etc", D), ("etc/state", F("A"))]),
    );
}

#[tokio::test]
async fn empty_layers_large_files_and_many_files() {
    let server = RegistryServer::start();
    // docs/design/layers.md#compression: a zero-byte blob is an empty layer, whatever its media type says.
    let empty = Layer {
        media_type: Flavor::Oci.layer_media_type(Compression::Gzip).into(),
        blob: Bytes::new(),
        digest: sha256(b""),
        diff_id: sha256(b""),
        tar: Vec::new(),
    };
    // An empty tar (only the end-of-archive blocks).
    let no_entries = layer(&[], Compression::Zstd);
    // Files above the small-file threshold take the spooled, streamed path.
    let big = noise(3 << 20, 7);
    let large = layer(
        &[
            TarEntry::File("data/big.bin".into(), big.clone(), 0o600),
            TarEntry::File("data/big-copy.bin".into(), big.clone(), 0o700),
            TarEntry::File("data/medium.bin".into(), noise(300_000, 9), 0o644),
        ],
        Compression::Gzip,
    );
    let many: Vec<TarEntry> = (0..3000)
        .map(|i| file(&format!("many/d{}/f{i}", i % 7), &format!("{i}")))
        .collect();
    let many = layer(&many, Compression::Zstd);
    let reference = push(
        &server,
        "test/shapes",
        &image(&[&empty, &no_entries, &large, &many]),
    )
    .await;
    let env = Env::new();
    let expanded = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap();
    let tree = env.tree(&expanded).await;
    assert_eq!(
        tree.get("data/big.bin"),
        Some(&Node::File {
            data: big.clone(),
            exec: false
        })
    );
    assert_eq!(
        tree.get("data/big-copy.bin"),
        Some(&Node::File {
            data: big,
            exec: true
        })
    );
    assert_eq!(
        tree.keys().filter(|p| p.starts_with("many/")).count(),
        3000 + 7
    );
    assert_eq!(tree.get("many/d3/f10"), Some(&F("10")));
    assert_eq!(expanded.statistics.files, 3003);
    assert_eq!(
        expanded.statistics.file_bytes,
        2 * (3 << 20) + 300_000 + (0..3000).map(|i| format!("{i}").len() as u64).sum::<u64>()
    );
}

#[tokio::test]
async fn instances_and_digest_functions_do_not_share_entries() {
    let server = RegistryServer::start();
    let l = layer(
        &[exe("usr/bin/tool", "TOOL"), symlink("bin", "usr/bin")],
        Compression::Gzip,
    );
    let reference = push(&server, "test/instances", &image(&[&l])).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let a = expander
        .expand(&env.instance, &reference, &amd64())
        .await
        .unwrap();
    assert_eq!(a.layers_ingested, 1);
    let other = Instance::new("other", DigestFunction::Sha256);
    let b = expander.expand(&other, &reference, &amd64()).await.unwrap();
    assert_eq!(b.layers_ingested, 1, "instance names partition the caches");
    assert_eq!(b.root_directory_digest, a.root_directory_digest);
    // The tree is built with the instance's digest function (docs/design/directories.md#canonical-form).
    let sha512 = Instance::new("", DigestFunction::Sha512);
    let c = expander
        .expand(&sha512, &reference, &amd64())
        .await
        .unwrap();
    assert_eq!(c.layers_ingested, 1);
    assert_eq!(c.root_directory_digest.hash.len(), 128);
    let tree = read_tree(&*env.cas, &sha512, &c.root_directory_digest).await;
    assert_trees_eq(
        &tree,
        &image_common::tree(&[
            ("bin", L("usr/bin")),
            ("usr", D),
            ("usr/bin", D),
            ("usr/bin/tool", X("TOOL")),
        ]),
    );
}

#[tokio::test]
async fn images_with_the_same_layers_share_the_tree() {
    // Another config (Env) makes another manifest, but the chain of layers is the same:
    // the tree comes from the apply-layers record.
    let server = RegistryServer::start();
    let l = layer(&[file("etc/a", "a")], Compression::Gzip);
    let one = ImageBuilder::new(Flavor::Oci).layer(l.clone()).build();
    let two = ImageBuilder::new(Flavor::Oci)
        .layer(l)
        .config_field("config", json!({"Env": ["OTHER=1"]}))
        .build();
    assert_ne!(one.manifest_digest, two.manifest_digest);
    let r1 = push(&server, "test/one", &one).await;
    let r2 = push(&server, "test/two", &two).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let a = env.expand(&expander, &r1).await.unwrap();
    let b = env.expand(&expander, &r2).await.unwrap();
    assert!(b.from_cache);
    assert_eq!(b.layers_ingested, 0);
    assert_eq!(b.manifest_digest, two.manifest_digest);
    assert_eq!(b.root_directory_digest, a.root_directory_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_images_sharing_a_base_count_it_once() {
    let server = RegistryServer::start();
    let base = layer(
        &(0..200)
            .map(|i| file(&format!("base/f{i}"), &format!("{i}").repeat(50)))
            .collect::<Vec<_>>(),
        Compression::Gzip,
    );
    let mut references = Vec::new();
    for i in 0..4 {
        let top = layer(&[file("top", &format!("{i}"))], Compression::Gzip);
        references.push(push(&server, &format!("test/img{i}"), &image(&[&base, &top])).await);
    }
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let tasks: Vec<_> = references
        .iter()
        .flat_map(|r| [r.clone(), r.clone(), r.clone()])
        .map(|reference| {
            let env = env.clone();
            let expander = expander.clone();
            tokio::spawn(async move { env.expand(&expander, &reference).await })
        })
        .collect();
    let mut ingested = 0;
    for task in tasks {
        ingested += task.await.unwrap().unwrap().layers_ingested;
    }
    assert_eq!(ingested, 1 + 4, "the base once, each top once");
}

#[tokio::test]
async fn limits_and_options() {
    let server = RegistryServer::start();
    let wide = layer(
        &(0..400)
            .map(|i| file(&format!("wide/file-with-a-long-name-{i:05}"), "x"))
            .collect::<Vec<_>>(),
        Compression::Gzip,
    );
    let reference = push(&server, "test/wide", &image(&[&wide])).await;

    // docs/design/directories.md#message-size: a Directory over the message size limit is an error naming the directory.
    let env = Env::new();
    let small_messages = env.expander(
        registry_for(&server.host()),
        ExpanderOptions {
            maximum_message_size_bytes: 16 << 10,
            ..options()
        },
    );
    let err = env.expand(&small_messages, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("DirectoryTooLarge") && err.message().contains("wide"),
        "{}",
        err.message()
    );
    // The layer's changeset is fine and may stay; nothing for the image or its tag.
    assert_eq!(env.ac_entries(), 1);

    // Limit on the sum of the layer sizes.
    let env = Env::new();
    let small_images = env.expander(
        registry_for(&server.host()),
        ExpanderOptions {
            maximum_image_size_bytes: 100,
            ..options()
        },
    );
    let err = env.expand(&small_images, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains(&reference), "{}", err.message());
    assert_eq!(env.ac_entries(), 0);

    // Tags refused outright; digests accepted.
    let env = Env::new();
    let pinned_only = env.expander(
        registry_for(&server.host()),
        ExpanderOptions {
            reject_tags: true,
            ..options()
        },
    );
    let err = env.expand(&pinned_only, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let manifest = image(&[&wide]).manifest_digest;
    let pinned = format!("{}/test/wide@{manifest}", server.host());
    env.expand(&pinned_only, &pinned).await.unwrap();
    // A tag and a digest together: the digest wins.
    let both = format!("{}/test/wide:nonexistent@{manifest}", server.host());
    let expanded = env.expand(&pinned_only, &both).await.unwrap();
    assert_eq!(expanded.manifest_digest, manifest);
}

/// Expands a one-layer image made of `l`, expecting INVALID_ARGUMENT naming the layer
/// and `needles`, and no Action Cache entry.
async fn refused(server: &RegistryServer, repo: &str, l: &Layer, needles: &[&str]) {
    let reference = push(server, repo, &image(&[l])).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    for needle in [reference.as_str(), l.digest.as_str()]
        .iter()
        .chain(needles)
    {
        assert!(
            err.message().contains(needle),
            "{needle:?} missing from {}",
            err.message()
        );
    }
    assert_eq!(
        env.ac_entries(),
        0,
        "{repo}: a failed expansion left AC entries"
    );
}

#[tokio::test]
async fn more_bad_layers_are_refused() {
    let server = RegistryServer::start();

    // Truncated zstd.
    let full = layer(
        &[TarEntry::File("f".into(), noise(50_000, 3), 0o644)],
        Compression::Zstd,
    );
    let cut = Bytes::copy_from_slice(&full.blob[..full.blob.len() / 2]);
    let truncated = Layer {
        digest: sha256(&cut),
        blob: cut,
        ..full
    };
    refused(&server, "test/zstd", &truncated, &[]).await;

    // An uncompressed layer that is not a tar.
    let junk = noise(4096, 5);
    let not_tar = Layer {
        media_type: Flavor::Oci.layer_media_type(Compression::None).into(),
        digest: sha256(&junk),
        diff_id: sha256(&junk),
        blob: Bytes::from(junk.clone()),
        tar: junk,
    };
    refused(&server, "test/junk", &not_tar, &[]).await;

    // A hard link whose target leaves the root (docs/design/layers.md#path-normalisation).
    let outside = layer(
        &[file("etc/a", "a"), link("etc/b", "../../etc/a")],
        Compression::Gzip,
    );
    refused(&server, "test/outside", &outside, &["../../etc/a"]).await;

    // A `.wh.` name used as a parent directory (docs/design/layers.md#whiteouts), and an empty whiteout (docs/design/layers.md#whiteouts).
    let middle_whiteout = layer(&[file(".wh.etc/passwd", "x")], Compression::Gzip);
    refused(&server, "test/whparent", &middle_whiteout, &[".wh.etc"]).await;
    let empty_whiteout = layer(&[whiteout("etc/.wh.")], Compression::Gzip);
    refused(&server, "test/whempty", &empty_whiteout, &[".wh."]).await;

    // An unsupported layer media type (docs/design/layers.md#compression).
    let encrypted = layer(&[file("a", "a")], Compression::Gzip)
        .with_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted");
    let reference = push(&server, "test/encrypted", &image(&[&encrypted])).await;
    let env = Env::new();
    let err = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition),
        "{err:?}"
    );
    assert!(err.message().contains("+encrypted"), "{}", err.message());
    assert_eq!(env.ac_entries(), 0);
}

/// `umoci insert` (0.4.7, umoci#436) writes tars that end right after the last member's
/// data: no padding to 512 bytes, no end-of-archive blocks. Go's archive/tar (docker,
/// containerd, umoci) reads that as a normal end (`tryReadFull` of the padding hits EOF at
/// once), so such layers run everywhere; a stream that ends *inside* file data or a
/// header is still an error (docs/design/layers.md#tar-parsing).
#[tokio::test]
async fn tar_ending_right_after_the_last_file_data_is_accepted() {
    let server = RegistryServer::start();
    let full = tar_bytes(&[
        dir("opt/app/replaced"),
        whiteout("opt/app/replaced/.wh..wh..opq"),
        file("opt/app/replaced/fresh", "fresh\n"),
    ]);
    // Three 512-byte headers (the first two entries have no data) plus 6 bytes of data.
    let cut = full[..3 * 512 + 6].to_vec();
    assert_eq!(&cut[cut.len() - 6..], b"fresh\n");
    let quirk = Layer::new(cut, Compression::Gzip, Flavor::Oci);
    let reference = push(&server, "test/umoci-insert", &image(&[&quirk])).await;
    let env = Env::new();
    let expanded = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap();
    assert_trees_eq(
        &env.tree(&expanded).await,
        &tree(&[
            ("opt", D),
            ("opt/app", D),
            ("opt/app/replaced", D),
            ("opt/app/replaced/fresh", F("fresh\n")),
        ]),
    );

    // Cut inside the data: refused.
    let inside = Layer::new(full[..3 * 512 + 3].to_vec(), Compression::Gzip, Flavor::Oci);
    refused(&server, "test/cut-data", &inside, &[]).await;
}

#[tokio::test]
async fn token_auth_registry() {
    let server = RegistryServer::start_with_token_auth("tok-user", "tok-Pa55");
    let l = layer(&[file("etc/secret-app", "ok")], Compression::Gzip);
    let reference = push(&server, "private/tok", &image(&[&l])).await;
    let registry = Arc::new(
        OciRegistry::new(registry_configuration(json!([{
            "hosts": [server.host()],
            "credentials": {"basic": {"username": "tok-user", "password": "tok-Pa55"}},
        }])))
        .unwrap(),
    );
    let env = Env::new();
    let expanded = env
        .expand(&env.expander(registry, options()), &reference)
        .await
        .unwrap();
    assert_eq!(
        env.tree(&expanded).await.get("etc/secret-app"),
        Some(&F("ok"))
    );
    // Anonymous: refused.
    let env = Env::new();
    let err = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert_eq!(env.ac_entries(), 0);
}
