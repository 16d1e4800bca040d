//! The image engine against a real CNCF Distribution registry (`docker-registry`
//! on 127.0.0.1): trees checked node by node against docs/design/layers.md, caching in the Action
//! Cache, completeness after eviction, in-flight deduplication, and faults that must
//! yield clear errors and leave nothing cached. Needs the Debian package `docker-registry`
//! (and `apache2-utils` for basic auth); without it the tests fail.

mod image_common;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bb_container_expander::blobstore::ActionCache;
use bb_container_expander::image::{ExpandedImage, ExpanderOptions, FakeAction, Step};
use bb_container_expander::registry::{OciRegistry, Platform};
use bytes::Bytes;
use serde_json::json;
use tonic::Code;

use image_common::*;
use support::fake_http::{FakeHttpServer, Response};
use support::images::{
    dir, exe, file, link, symlink, tar_bytes, whiteout, Compression, Flavor, Image, ImageBuilder,
    IndexBuilder, Layer, TarEntry,
};
use support::registry_server::RegistryServer;
use support::sha256;

// ---------------------------------------------------------------------------------------
// A three-layer image exercising the layer rules, and the tree docs/design/layers.md says it gives.
// ---------------------------------------------------------------------------------------

fn base_layer() -> Vec<TarEntry> {
    vec![
        dir("etc"),
        file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        file("etc/hosts", "127.0.0.1 localhost\n"),
        file("etc/group", "root:x:0:\n"),
        dir("usr"),
        dir("usr/bin"),
        exe("usr/bin/busybox", "BUSYBOX"),
        // A hard link inside the layer; the header mode is the target's (real producers).
        TarEntry::Link("usr/bin/sh".into(), "usr/bin/busybox".into(), 0o755),
        exe("usr/bin/ls", "LS"),
        symlink("bin", "usr/bin"),
        // Implied parent usr/lib (no directory entry).
        file("usr/lib/libc.so.6", "LIBC"),
        symlink("usr/lib/libc.so", "libc.so.6"),
        symlink("lib", "usr/lib"),
        file("opt/app/a.txt", "a"),
        file("opt/app/sub/b.txt", "b"),
        file("var/cache/apt/pkgcache.bin", "cache"),
        file("var/cache/debconf/config.dat", "debconf"),
        file("var/log/dpkg.log", "log"),
        dir("tmp"),
        file("home/user/.profile", "profile"),
        file("home/user/notes", "notes"),
    ]
}

fn middle_layer() -> Vec<TarEntry> {
    vec![
        // docs/design/layers.md#whiteouts: a file whiteout, and a whole directory whited out with its subtree.
        whiteout("etc/.wh.hosts"),
        whiteout("var/.wh.cache"),
        // docs/design/layers.md#two-passes, #opaque-directories: the same layer's entry survives its opaque marker, in either order.
        file("opt/app/new.txt", "new"),
        whiteout("opt/app/.wh..wh..opq"),
        // docs/design/layers.md#parent-resolution: the parent `lib` is a symlink to usr/lib and is followed.
        file("lib/libextra.so", "EXTRA"),
        file("etc/passwd", "root:x:0:0::/root:/bin/bash\n"),
        // docs/design/layers.md#hard-links: hard links to lower-layer files; docs/design/layers.md#hard-links: exec bit from the link's header.
        TarEntry::Link("sbin/ls".into(), "usr/bin/ls".into(), 0o755),
        link("etc/group.bak", "etc/group"),
        TarEntry::Link("usr/bin/ls-noexec".into(), "usr/bin/ls".into(), 0o644),
        // docs/design/layers.md#implied-parents: implied parents.
        file("deep/a/b/c/file", "deep"),
        // docs/design/layers.md#whiteouts: whiteout, then a re-add in the same layer holds only the new children.
        whiteout("home/.wh.user"),
        file("home/user/new", "fresh"),
        // docs/design/layers.md#implied-parents: a whiteout-only entry still creates its parent directories.
        whiteout("nowhere/x/.wh.y"),
    ]
}

fn top_layer() -> Vec<TarEntry> {
    vec![
        // docs/design/layers.md#hard-links: the earlier hard link keeps the old content.
        file("etc/group", "root:x:0:user\n"),
        // docs/design/layers.md#whiteouts: only the symlink goes, not its target.
        whiteout("usr/lib/.wh.libc.so"),
        // docs/design/layers.md#whiteouts: the whiteout's parent `bin` resolves through the symlink to usr/bin.
        whiteout("bin/.wh.ls"),
        file("tmp/.keep", ""),
        // docs/design/layers.md#devices-and-fifos: devices and FIFOs are omitted; their parent stays.
        TarEntry::CharDevice("dev/null".into()),
        TarEntry::Fifo("dev/initctl".into()),
        // docs/design/layers.md#hard-links: sh was a copy of busybox, so it keeps the old content.
        exe("usr/bin/busybox", "BUSYBOX2"),
        // docs/design/layers.md#executable-bit: exec if any x bit.
        TarEntry::File("usr/bin/group-exec".into(), b"G".to_vec(), 0o610),
        TarEntry::File("usr/bin/setuid".into(), b"S".to_vec(), 0o4755),
    ]
}

fn expected_tree() -> Tree {
    tree(&[
        ("bin", L("usr/bin")),
        ("deep", D),
        ("deep/a", D),
        ("deep/a/b", D),
        ("deep/a/b/c", D),
        ("deep/a/b/c/file", F("deep")),
        ("dev", D),
        ("etc", D),
        ("etc/group", F("root:x:0:user\n")),
        ("etc/group.bak", F("root:x:0:\n")),
        ("etc/passwd", F("root:x:0:0::/root:/bin/bash\n")),
        ("home", D),
        ("home/user", D),
        ("home/user/new", F("fresh")),
        ("lib", L("usr/lib")),
        ("nowhere", D),
        ("nowhere/x", D),
        ("opt", D),
        ("opt/app", D),
        ("opt/app/new.txt", F("new")),
        ("sbin", D),
        ("sbin/ls", X("LS")),
        ("tmp", D),
        ("tmp/.keep", F("")),
        ("usr", D),
        ("usr/bin", D),
        ("usr/bin/busybox", X("BUSYBOX2")),
        ("usr/bin/group-exec", X("G")),
        ("usr/bin/ls-noexec", F("LS")),
        ("usr/bin/setuid", X("S")),
        ("usr/bin/sh", X("BUSYBOX")),
        ("usr/lib", D),
        ("usr/lib/libc.so.6", F("LIBC")),
        ("usr/lib/libextra.so", F("EXTRA")),
        ("var", D),
        ("var/log", D),
        ("var/log/dpkg.log", F("log")),
    ])
}

fn rules_image(flavor: Flavor, compressions: [Compression; 3]) -> Image {
    ImageBuilder::new(flavor)
        .layer(Layer::new(
            tar_bytes(&base_layer()),
            compressions[0],
            flavor,
        ))
        .layer(Layer::new(
            tar_bytes(&middle_layer()),
            compressions[1],
            flavor,
        ))
        .layer(Layer::new(tar_bytes(&top_layer()), compressions[2], flavor))
        .build()
}

fn count_nodes(tree: &Tree) -> (u64, u64, u64, u64) {
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0, 0, 0, 0);
    for node in tree.values() {
        match node {
            Node::Dir => dirs += 1,
            Node::File { data, .. } => {
                files += 1;
                bytes += data.len() as u64
            }
            Node::Symlink(_) => symlinks += 1,
        }
    }
    (files, dirs, symlinks, bytes)
}

fn assert_statistics(expanded: &ExpandedImage, tree: &Tree, layers: u64, skipped: u64) {
    let (files, dirs, symlinks, bytes) = count_nodes(tree);
    let s = &expanded.statistics;
    assert_eq!(
        (s.files, s.directories, s.symlinks, s.file_bytes, s.layers),
        (files, dirs, symlinks, bytes, layers),
        "statistics {s:?}"
    );
    assert_eq!(s.skipped_special_files, skipped);
}

#[tokio::test]
async fn multi_layer_image_tree_follows_the_layer_rules() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    let cases = [
        (
            "oci",
            Flavor::Oci,
            [Compression::Gzip, Compression::Zstd, Compression::None],
        ),
        (
            "docker",
            Flavor::Docker,
            [Compression::None, Compression::Gzip, Compression::Zstd],
        ),
        (
            "oci-plain",
            Flavor::Oci,
            [Compression::None, Compression::None, Compression::None],
        ),
    ];
    let mut roots = Vec::new();
    let mut env = Env::new();
    for (tag, flavor, compressions) in cases {
        // Fresh stores each time: identical layer blobs would otherwise come from the cache.
        env = Env::new();
        let expander = env.expander(registry_for(&server.host()), options());
        let image = rules_image(flavor, compressions);
        pusher.push_image("test/rules", Some(tag), &image).await;
        let reference = format!("docker://{}/test/rules:{tag}", server.host());
        let expanded = env.expand(&expander, &reference).await.unwrap();
        assert_eq!(expanded.manifest_digest, image.manifest_digest, "{tag}");
        assert_eq!(expanded.resolved_digest, image.manifest_digest, "{tag}");
        assert!(!expanded.from_cache, "{tag}");
        assert_eq!(expanded.layers_ingested, 3, "{tag}");
        let actual = env.tree(&expanded).await;
        assert_trees_eq(&actual, &expected_tree());
        assert_statistics(&expanded, &actual, 3, 2);
        roots.push(expanded.root_directory_digest.clone());
    }
    // Same content, whatever the manifest flavor and compression: the same tree.
    assert!(roots.windows(2).all(|w| w[0] == w[1]), "{roots:?}");

    // The root Directory itself, node by node.
    let root = directory(&*env.cas, &env.instance, &roots[0]).await;
    let names = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    assert!(root.files.is_empty());
    assert_eq!(
        root.directories
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
        names(vec![
            "deep", "dev", "etc", "home", "nowhere", "opt", "sbin", "tmp", "usr", "var"
        ])
    );
    assert_eq!(
        root.symlinks
            .iter()
            .map(|s| (s.name.as_str(), s.target.as_str()))
            .collect::<Vec<_>>(),
        vec![("bin", "usr/bin"), ("lib", "usr/lib")]
    );
    // Empty directories are the empty Directory (docs/design/directories.md#canonical-form).
    let dev = root.directories.iter().find(|d| d.name == "dev").unwrap();
    assert_eq!(
        dev.digest.as_ref().unwrap().hash,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test]
async fn a_directory_entry_replaces_a_symlink_and_a_file_replaces_a_directory() {
    // docs/design/layers.md#replacing-entries: `lib/` as a directory entry over `lib -> usr/lib` replaces the symlink;
    // docs/design/layers.md#replacing-entries: a file over a directory removes the subtree; docs/design/layers.md#replacing-entries: a symlink over a file.
    let server = RegistryServer::start();
    let flavor = Flavor::Oci;
    let image = ImageBuilder::new(flavor)
        .layer(Layer::new(
            tar_bytes(&[
                file("usr/lib/libc.so.6", "LIBC"),
                symlink("lib", "usr/lib"),
                file("srv/www/index.html", "hi"),
                file("etc/motd", "hello"),
            ]),
            Compression::Gzip,
            flavor,
        ))
        .layer(Layer::new(
            tar_bytes(&[
                dir("lib"),
                file("lib/own.so", "OWN"),
                file("srv", "now a file"),
                symlink("etc/motd", "/usr/share/motd"),
                // Duplicate path in one layer: last wins (docs/design/layers.md#replacing-entries).
                file("etc/issue", "first"),
                file("etc/issue", "second"),
            ]),
            Compression::Gzip,
            flavor,
        ))
        .build();
    server
        .pusher()
        .push_image("test/replace", Some("v1"), &image)
        .await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let expanded = env
        .expand(&expander, &format!("{}/test/replace:v1", server.host()))
        .await
        .unwrap();
    assert_trees_eq(
        &env.tree(&expanded).await,
        &tree(&[
            ("etc", D),
            ("etc/issue", F("second")),
            ("etc/motd", L("/usr/share/motd")),
            ("lib", D),
            ("lib/own.so", F("OWN")),
            ("srv", F("now a file")),
            ("usr", D),
            ("usr/lib", D),
            ("usr/lib/libc.so.6", F("LIBC")),
        ]),
    );
}

#[tokio::test]
async fn multi_arch_index_picks_the_platform() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let image_for = |arch: &str, variant: &str| {
            ImageBuilder::new(flavor)
                .platform("linux", arch, variant)
                .layer(Layer::new(
                    tar_bytes(&[
                        file("etc/arch", arch),
                        exe(&format!("usr/bin/tool-{arch}"), arch),
                    ]),
                    Compression::Gzip,
                    flavor,
                ))
                .build()
        };
        let amd64 = image_for("amd64", "");
        let arm64 = image_for("arm64", "v8");
        let index = IndexBuilder::new(flavor)
            .image(&amd64)
            .image(&arm64)
            .build();
        let tag = format!("{flavor:?}").to_lowercase();
        let index_digest = pusher
            .push_index("test/multi", Some(&tag), &index, &[&amd64, &arm64])
            .await;
        let env = Env::new();
        let expander = env.expander(registry_for(&server.host()), options());
        let reference = format!("docker://{}/test/multi:{tag}", server.host());
        for (platform, image, arch) in [
            (Platform::new("linux", "aarch64", ""), &arm64, "arm64"),
            (Platform::new("linux", "arm64", "v8"), &arm64, "arm64"),
            (Platform::new("linux", "x86_64", ""), &amd64, "amd64"),
            (amd64_platform(), &amd64, "amd64"),
        ] {
            let expanded = expander
                .expand(&env.instance, &reference, &platform)
                .await
                .unwrap();
            assert_eq!(expanded.resolved_digest, index_digest);
            assert_eq!(
                expanded.manifest_digest, image.manifest_digest,
                "{platform}"
            );
            assert_trees_eq(
                &env.tree(&expanded).await,
                &tree(&[
                    ("etc", D),
                    ("etc/arch", F(arch)),
                    ("usr", D),
                    ("usr/bin", D),
                    (&format!("usr/bin/tool-{arch}"), X(arch)),
                ]),
            );
        }
        let err = expander
            .expand(
                &env.instance,
                &reference,
                &Platform::new("linux", "s390x", ""),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(
            err.message().contains("linux/amd64") && err.message().contains("linux/arm64"),
            "{}",
            err.message()
        );
    }
}

fn amd64_platform() -> Platform {
    Platform::new("linux", "amd64", "")
}

// ---------------------------------------------------------------------------------------
// Caching
// ---------------------------------------------------------------------------------------

/// Requests in the registry's access log, e.g. `GET /v2/test/x/blobs/sha256:…`.
fn requests(server: &RegistryServer) -> Vec<String> {
    server
        .log()
        .lines()
        .filter_map(|line| {
            let start = line
                .find("\"GET /v2/")
                .or_else(|| line.find("\"HEAD /v2/"))?;
            let rest = &line[start + 1..];
            let end = rest.find(" HTTP/")?;
            Some(rest[..end].to_string())
        })
        .filter(|r| r != "GET /v2/" && r != "HEAD /v2/")
        .collect()
}

fn blob_gets(server: &RegistryServer, digest: &str) -> usize {
    let suffix = format!("/blobs/{digest}");
    requests(server)
        .iter()
        .filter(|r| r.starts_with("GET /v2/") && r.ends_with(&suffix))
        .count()
}

fn simple_image(marker: &str, shared_base: Option<&Layer>) -> Image {
    let flavor = Flavor::Oci;
    let base = shared_base.cloned().unwrap_or_else(|| {
        Layer::new(
            tar_bytes(&[
                file("etc/os-release", "ID=test\n"),
                exe("usr/bin/tool", "TOOL"),
                symlink("bin", "usr/bin"),
            ]),
            Compression::Gzip,
            flavor,
        )
    });
    ImageBuilder::new(flavor)
        .layer(base)
        .layer(Layer::new(
            tar_bytes(&[file(&format!("app/{marker}"), marker)]),
            Compression::Zstd,
            flavor,
        ))
        .layer(Layer::new(
            tar_bytes(&[file("data/blob", &marker.repeat(500))]),
            Compression::None,
            flavor,
        ))
        .build()
}

#[tokio::test]
async fn second_expansion_comes_from_the_caches_without_registry_access() {
    let mut server = RegistryServer::start();
    let image = simple_image("cached", None);
    server
        .pusher()
        .push_image("test/cache", Some("v1"), &image)
        .await;
    let tagged = format!("docker://{}/test/cache:v1", server.host());
    let pinned = format!(
        "docker://{}/test/cache@{}",
        server.host(),
        image.manifest_digest
    );
    let env = Env::new();
    let registry = registry_for(&server.host());
    let expander = env.expander(registry.clone(), options());
    let first = env.expand(&expander, &tagged).await.unwrap();
    assert!(!first.from_cache);
    assert_eq!(first.layers_ingested, 3);
    for layer in &image.layers {
        assert_eq!(blob_gets(&server, &layer.digest), 1, "{}", layer.digest);
    }
    let before = requests(&server);

    // Same process: tag, image and tree from the local caches; no request at all.
    let second = env.expand(&expander, &tagged).await.unwrap();
    assert!(second.from_cache);
    assert_eq!(second.layers_ingested, 0);
    assert_eq!(second.root_directory_digest, first.root_directory_digest);
    assert_eq!(second.manifest_digest, image.manifest_digest);
    assert_eq!(requests(&server), before, "the registry was contacted");

    // A fresh process sharing the CAS and AC: everything from the Action Cache.
    let fresh = env.expander(registry.clone(), options());
    let third = env.expand(&fresh, &pinned).await.unwrap();
    assert!(third.from_cache);
    assert_eq!(third.layers_ingested, 0);
    assert_eq!(third.root_directory_digest, first.root_directory_digest);
    assert_eq!(third.statistics, first.statistics);
    assert_eq!(requests(&server), before, "the registry was contacted");

    // With the registry gone: a pinned reference and, within the TTL, a tag still work
    // from the Action Cache alone.
    server.stop();
    for reference in [&pinned, &tagged] {
        let fresh = env.expander(registry.clone(), options());
        let again = env.expand(&fresh, reference).await.unwrap();
        assert!(again.from_cache, "{reference}");
        assert_eq!(again.root_directory_digest, first.root_directory_digest);
        assert_eq!(again.manifest_digest, image.manifest_digest);
    }
    // Beyond the TTL the tag must be resolved again, which now fails.
    let expired = env.expander(
        registry.clone(),
        ExpanderOptions {
            tag_ttl: Duration::ZERO,
            ..options()
        },
    );
    let err = env.expand(&expired, &tagged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
}

#[tokio::test]
async fn a_tag_ttl_expiry_picks_up_a_moved_tag() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    let one = simple_image("one", None);
    let two = simple_image("two", None);
    pusher.push_image("test/moving", Some("v1"), &one).await;
    let tagged = format!("{}/test/moving:v1", server.host());
    let env = Env::new();
    let registry = registry_for(&server.host());
    let long = env.expander(registry.clone(), options());
    assert_eq!(
        env.expand(&long, &tagged).await.unwrap().manifest_digest,
        one.manifest_digest
    );
    pusher.push_image("test/moving", Some("v1"), &two).await;
    // Within the TTL the old resolution stands, locally and from the Action Cache.
    assert_eq!(
        env.expand(&long, &tagged).await.unwrap().manifest_digest,
        one.manifest_digest
    );
    let fresh = env.expander(registry.clone(), options());
    assert_eq!(
        env.expand(&fresh, &tagged).await.unwrap().manifest_digest,
        one.manifest_digest
    );
    // A short TTL sees the new image.
    let short = env.expander(
        registry,
        ExpanderOptions {
            tag_ttl: Duration::from_millis(1),
            ..options()
        },
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let moved = env.expand(&short, &tagged).await.unwrap();
    assert_eq!(moved.manifest_digest, two.manifest_digest);
    // Base and data layers differ only in the app layer and data: shared base reused.
    assert_eq!(moved.layers_ingested, 2);
}

#[tokio::test]
async fn shared_base_layers_are_ingested_once() {
    let server = RegistryServer::start();
    let pusher = server.pusher();
    let first = simple_image("first", None);
    let second = simple_image("second", Some(&first.layers[0]));
    assert_eq!(first.layers[0].digest, second.layers[0].digest);
    pusher.push_image("test/one", Some("v1"), &first).await;
    pusher.push_image("test/two", Some("v1"), &second).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let a = env
        .expand(&expander, &format!("{}/test/one:v1", server.host()))
        .await
        .unwrap();
    assert_eq!(a.layers_ingested, 3);
    // Another process, other repository: the base layer comes from the Action Cache.
    let other = env.expander(registry_for(&server.host()), options());
    let b = env
        .expand(&other, &format!("{}/test/two:v1", server.host()))
        .await
        .unwrap();
    assert!(!b.from_cache);
    assert_eq!(b.layers_ingested, 2);
    let base = &first.layers[0].digest;
    assert_eq!(blob_gets(&server, base), 1, "base layer fetched once");
    let tree_b = env.tree(&b).await;
    assert_eq!(tree_b.get("usr/bin/tool"), Some(&X("TOOL")));
    assert_eq!(tree_b.get("app/second"), Some(&F("second")));
    assert!(!tree_b.contains_key("app/first"));
}

// ---------------------------------------------------------------------------------------
// Completeness after eviction
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn evicted_file_blob_is_noticed_and_the_layer_reingested() {
    let server = RegistryServer::start();
    let image = rules_image(
        Flavor::Oci,
        [Compression::Gzip, Compression::Gzip, Compression::Gzip],
    );
    server
        .pusher()
        .push_image("test/evict", Some("v1"), &image)
        .await;
    let reference = format!("{}/test/evict:v1", server.host());
    let env = Env::new();
    let registry = registry_for(&server.host());
    let first = env
        .expand(&env.expander(registry.clone(), options()), &reference)
        .await
        .unwrap();
    assert_eq!(first.layers_ingested, 3);

    // Evict the content of a file only the middle layer has.
    let evicted = env.instance.digest_function.digest_of(b"EXTRA");
    assert!(env.cas.remove(&env.instance, &evicted));
    let fresh = env.expander(registry.clone(), options());
    let second = env.expand(&fresh, &reference).await.unwrap();
    assert!(!second.from_cache, "an incomplete tree was handed out");
    assert_eq!(
        second.layers_ingested, 1,
        "only the middle layer is re-ingested"
    );
    assert_eq!(second.root_directory_digest, first.root_directory_digest);
    assert_trees_eq(&env.tree(&second).await, &expected_tree());

    // Evict a Directory: the tree is rebuilt from the cached changesets.
    let root = directory(&*env.cas, &env.instance, &first.root_directory_digest).await;
    let usr = root.directories.iter().find(|d| d.name == "usr").unwrap();
    assert!(env.cas.remove(&env.instance, usr.digest.as_ref().unwrap()));
    let fresh = env.expander(registry.clone(), options());
    let third = env.expand(&fresh, &reference).await.unwrap();
    assert!(!third.from_cache);
    assert_eq!(third.layers_ingested, 0);
    assert_trees_eq(&env.tree(&third).await, &expected_tree());

    // The same process notices too, once its completeness check is due.
    let checking = env.expander(
        registry,
        ExpanderOptions {
            completeness_check_interval: Duration::ZERO,
            ..options()
        },
    );
    env.expand(&checking, &reference).await.unwrap();
    assert!(env.cas.remove(&env.instance, &evicted));
    let fourth = env.expand(&checking, &reference).await.unwrap();
    assert_eq!(fourth.layers_ingested, 1);
    assert_trees_eq(&env.tree(&fourth).await, &expected_tree());
}

// ---------------------------------------------------------------------------------------
// In-flight deduplication
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_expansions_of_a_cold_image_ingest_each_layer_once() {
    let server = RegistryServer::start();
    let flavor = Flavor::Oci;
    let layers: Vec<Layer> = (0..4)
        .map(|i| {
            let entries: Vec<TarEntry> = (0..50)
                .map(|j| file(&format!("layer{i}/f{j}"), &format!("{i}-{j}").repeat(100)))
                .collect();
            Layer::new(tar_bytes(&entries), Compression::Gzip, flavor)
        })
        .collect();
    let mut builder = ImageBuilder::new(flavor);
    for layer in &layers {
        builder = builder.layer(layer.clone());
    }
    // The base repeated on top (docs/design/layers.md#repeated-layers): 5 positions, 4 distinct layers.
    let image = builder.layer(layers[0].clone()).build();
    server
        .pusher()
        .push_image("test/herd", Some("v1"), &image)
        .await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("docker://{}/test/herd:v1", server.host());
    let before = requests(&server);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let env = env.clone();
            let expander = expander.clone();
            let reference = reference.clone();
            tokio::spawn(async move { env.expand(&expander, &reference).await })
        })
        .collect();
    let mut results: Vec<ExpandedImage> = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    let ingested: u64 = results.iter().map(|r| r.layers_ingested).sum();
    assert_eq!(ingested, 4, "sum of layers_ingested over 100 callers");
    let roots: std::collections::HashSet<_> = results
        .iter()
        .map(|r| r.root_directory_digest.clone())
        .collect();
    assert_eq!(roots.len(), 1);
    for layer in &layers {
        assert_eq!(blob_gets(&server, &layer.digest), 1, "{}", layer.digest);
    }
    let tree = env.tree(&results[0]).await;
    assert_eq!(tree.len(), 4 * 51);
    // One tag resolution and one manifest fetch for all 100 callers.
    let expansion_requests = &requests(&server)[before.len()..];
    let count = |prefix: &str| {
        expansion_requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    };
    assert_eq!(
        count("HEAD /v2/test/herd/manifests/"),
        1,
        "{expansion_requests:#?}"
    );
    assert_eq!(
        count("GET /v2/test/herd/manifests/"),
        1,
        "{expansion_requests:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Faults: a clear error, and nothing cached
// ---------------------------------------------------------------------------------------

/// Asserts the error's code and that its message contains every needle.
fn assert_error(err: &tonic::Status, code: Code, needles: &[&str]) {
    assert_eq!(err.code(), code, "{}", err.message());
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "{needle:?} missing from: {}",
            err.message()
        );
    }
}

/// Pushes a one-layer image made of `layer` under `repo:v1`, expands it and returns
/// the error, checking that the Action Cache stayed empty.
async fn expand_failing(server: &RegistryServer, repo: &str, image: &Image) -> tonic::Status {
    server.pusher().push_image(repo, Some("v1"), image).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("docker://{}/{repo}:v1", server.host());
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert!(
        err.message()
            .starts_with(&format!("Failed to expand image {reference}")),
        "{}",
        err.message()
    );
    assert_eq!(env.ac_entries(), 0, "a failed expansion left AC entries");
    err
}

/// Incompressible bytes (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn one_layer(layer: Layer) -> Image {
    ImageBuilder::new(Flavor::Oci).layer(layer).build()
}

#[tokio::test]
async fn a_tag_fixed_after_a_failure_is_resolved_again() {
    // Nothing of a failed expansion is remembered, not even the tag's resolution in this
    // process: once the publisher fixes the tag, the next expansion picks it up.
    let server = RegistryServer::start();
    let broken = one_layer(Layer::new(
        tar_bytes(&[file("etc/ok", "ok"), link("etc/link", "etc/missing")]),
        Compression::Gzip,
        Flavor::Oci,
    ));
    let fixed = one_layer(Layer::new(
        tar_bytes(&[file("etc/ok", "ok"), link("etc/link", "etc/ok")]),
        Compression::Gzip,
        Flavor::Oci,
    ));
    let pusher = server.pusher();
    pusher.push_image("test/fixme", Some("v1"), &broken).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("{}/test/fixme:v1", server.host());
    env.expand(&expander, &reference).await.unwrap_err();
    pusher.push_image("test/fixme", Some("v1"), &fixed).await;
    let expanded = env.expand(&expander, &reference).await.unwrap();
    assert_eq!(expanded.manifest_digest, fixed.manifest_digest);
    assert_eq!(env.tree(&expanded).await.get("etc/link"), Some(&F("ok")));
}

#[tokio::test]
async fn nonexistent_tag_is_not_found() {
    let server = RegistryServer::start();
    let image = simple_image("present", None);
    server
        .pusher()
        .push_image("test/present", Some("v1"), &image)
        .await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    for missing in ["test/present:nope", "test/absent:v1"] {
        let reference = format!("{}/{missing}", server.host());
        let err = env.expand(&expander, &reference).await.unwrap_err();
        assert_error(&err, Code::NotFound, &[&reference]);
    }
    assert_eq!(env.ac_entries(), 0);
}

#[tokio::test]
async fn registry_not_allowed_is_refused_without_network() {
    let peer = FakeHttpServer::start(|_| Response::new(200, "{}"));
    let env = Env::new();
    let registry = Arc::new(
        OciRegistry::new(registry_configuration(
            json!([{"hosts": ["allowed.example"]}]),
        ))
        .unwrap(),
    );
    let expander = env.expander(registry, options());
    let reference = format!("docker://{}/test/x:v1", peer.host());
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, &[&peer.host(), "not allowed"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(peer.connections(), 0);
    assert_eq!(env.ac_entries(), 0);
}

/// Path of a blob in the registry's filesystem storage.
fn blob_path(server: &RegistryServer, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    server.directory().join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}

/// Pushes a one-layer image, flips a byte of the layer blob in the registry's storage
/// (same size, other bytes, as a broken disk or a malicious mirror would serve them),
/// and checks the error; then repairs the blob and checks that nothing was cached.
async fn corrupt_blob(compression: Compression, repo: &str) {
    let server = RegistryServer::start();
    let layer = Layer::new(
        tar_bytes(&[
            file("etc/motd", &"x".repeat(4000)),
            TarEntry::File("etc/noise".into(), noise(4000), 0o644),
        ]),
        compression,
        Flavor::Oci,
    );
    let image = one_layer(layer.clone());
    server.pusher().push_image(repo, Some("v1"), &image).await;
    let path = blob_path(&server, &layer.digest);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    // Inside the content of etc/motd, in the tar or the compressed stream.
    let at = if compression == Compression::None {
        1000
    } else {
        bad.len() / 3
    };
    bad[at] ^= 0x55;
    std::fs::write(&path, &bad).unwrap();

    let env = Env::new();
    let registry = registry_for(&server.host());
    let expander = env.expander(registry.clone(), options());
    let reference = format!("docker://{}/{repo}:v1", server.host());
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert_error(&err, Code::DataLoss, &[&reference, &layer.digest, "digest"]);
    assert_eq!(env.ac_entries(), 0, "a failed expansion left AC entries");

    // Repaired registry: the next expansion ingests (nothing was cached).
    std::fs::write(&path, &good).unwrap();
    let expanded = env.expand(&expander, &reference).await.unwrap();
    assert_eq!(expanded.layers_ingested, 1);
    assert!(!expanded.from_cache);
}

#[tokio::test]
async fn blob_not_matching_its_digest_is_refused_and_nothing_cached() {
    corrupt_blob(Compression::None, "test/corrupt-tar").await;
}

/// A corrupt gzip blob makes the decompressor or the tar parser fail before the end of
/// the blob; the cause to report is still the digest mismatch (DATA_LOSS), not whatever
/// garbage the corrupted bytes decode to.
#[tokio::test]
async fn corrupt_gzip_blob_is_reported_as_a_digest_mismatch() {
    corrupt_blob(Compression::Gzip, "test/corrupt-gzip").await;
}

#[tokio::test]
async fn wrong_diff_id_is_refused() {
    let server = RegistryServer::start();
    let layer = Layer::new(tar_bytes(&[file("a", "a")]), Compression::Gzip, Flavor::Oci);
    let wrong = sha256(b"not the tar");
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(layer.clone())
        .diff_ids(vec![wrong.clone()])
        .build();
    let err = expand_failing(&server, "test/diffid", &image).await;
    assert_error(
        &err,
        Code::InvalidArgument,
        &[&layer.digest, &wrong, &layer.diff_id],
    );
}

#[tokio::test]
async fn truncated_gzip_is_refused() {
    let server = RegistryServer::start();
    let full = Layer::new(
        tar_bytes(&[file("etc/data", &"0123456789".repeat(2000))]),
        Compression::Gzip,
        Flavor::Oci,
    );
    let cut = Bytes::copy_from_slice(&full.blob[..full.blob.len() - 20]);
    let layer = Layer {
        digest: sha256(&cut),
        blob: cut,
        ..full
    };
    let err = expand_failing(&server, "test/truncated", &one_layer(layer.clone())).await;
    assert_error(&err, Code::InvalidArgument, &[&layer.digest]);
    assert!(
        err.message().to_lowercase().contains("gzip")
            || err.message().contains("unexpected end")
            || err.message().contains("truncated"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn path_traversal_is_refused() {
    let server = RegistryServer::start();
    let layer = Layer::new(
        tar_bytes(&[
            file("etc/ok", "ok"),
            TarEntry::RawName(b"../x".to_vec(), b"escape".to_vec()),
        ]),
        Compression::Gzip,
        Flavor::Oci,
    );
    let err = expand_failing(&server, "test/traversal", &one_layer(layer.clone())).await;
    assert_error(
        &err,
        Code::InvalidArgument,
        &[&layer.digest, "../x", "traversal"],
    );
}

#[tokio::test]
async fn hard_link_to_a_missing_target_is_refused() {
    let server = RegistryServer::start();
    let layer = Layer::new(
        tar_bytes(&[file("etc/ok", "ok"), link("etc/link", "etc/missing")]),
        Compression::Gzip,
        Flavor::Oci,
    );
    let image = one_layer(layer.clone());
    server
        .pusher()
        .push_image("test/dangling", Some("v1"), &image)
        .await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("{}/test/dangling:v1", server.host());
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert_error(
        &err,
        Code::InvalidArgument,
        &[&reference, &layer.digest, "DanglingHardlink", "etc/missing"],
    );
    // The layer's changeset is valid on its own (over a lower layer holding the target
    // the link would work, docs/design/layers.md#hard-links), so at most its ingest-layer record may remain; nothing
    // for the image, its chain or its tag.
    let layer_key = FakeAction::new(
        &env.instance,
        Step::IngestLayer,
        &[&layer.digest, &layer.diff_id, &layer.media_type],
    );
    assert_eq!(
        env.ac_entries(),
        1,
        "only the layer's own record may remain"
    );
    env.ac
        .get_action_result(&env.instance, &layer_key.digest)
        .await
        .expect("the remaining entry is the layer's changeset");
    let again = env
        .expand(
            &env.expander(registry_for(&server.host()), options()),
            &reference,
        )
        .await
        .unwrap_err();
    assert_eq!(again.message(), err.message());
}

#[tokio::test]
async fn names_that_are_not_utf8_are_refused() {
    let server = RegistryServer::start();
    let layer = Layer::new(
        tar_bytes(&[TarEntry::RawName(
            b"etc/caf\xe9".to_vec(),
            b"latin1".to_vec(),
        )]),
        Compression::Gzip,
        Flavor::Oci,
    );
    let err = expand_failing(&server, "test/latin1", &one_layer(layer.clone())).await;
    assert_error(&err, Code::InvalidArgument, &[&layer.digest, "UTF-8"]);
}

#[tokio::test]
async fn layer_over_the_size_limit_is_refused() {
    let server = RegistryServer::start();
    // Incompressible: the blob itself is over the limit.
    let big_blob = Layer::new(
        tar_bytes(&[TarEntry::File("noise".into(), noise(20_000), 0o644)]),
        Compression::Gzip,
        Flavor::Oci,
    );
    // Compressible: a small blob that decompresses over the limit.
    let bomb = Layer::new(
        tar_bytes(&[file("zeros", &"\0".repeat(200_000))]),
        Compression::Gzip,
        Flavor::Oci,
    );
    assert!(big_blob.blob.len() > 16_384 && bomb.blob.len() < 16_384);
    let limited = ExpanderOptions {
        ingest: bb_container_expander::layer::IngestOptions {
            maximum_layer_size_bytes: 16_384,
            ..Default::default()
        },
        ..options()
    };
    for (repo, layer) in [("test/big", &big_blob), ("test/bomb", &bomb)] {
        let image = one_layer(layer.clone());
        server.pusher().push_image(repo, Some("v1"), &image).await;
        let env = Env::new();
        let expander = env.expander(registry_for(&server.host()), limited.clone());
        let reference = format!("{}/{repo}:v1", server.host());
        let err = env.expand(&expander, &reference).await.unwrap_err();
        assert_error(
            &err,
            Code::ResourceExhausted,
            &[&reference, &layer.digest, "16384"],
        );
        assert_eq!(env.ac_entries(), 0);
    }
}

#[tokio::test]
async fn registry_down_is_unavailable() {
    let mut server = RegistryServer::start();
    let host = server.host();
    server.stop();
    let env = Env::new();
    let expander = env.expander(registry_for(&host), options());
    for reference in [
        format!("{host}/test/x:v1"),
        format!("{host}/test/x@{}", sha256(b"pinned")),
    ] {
        let err = env.expand(&expander, &reference).await.unwrap_err();
        assert_error(&err, Code::Unavailable, &[&reference]);
    }
    assert_eq!(env.ac_entries(), 0);
}

#[tokio::test]
async fn wrong_credentials_are_refused_without_the_password() {
    let server = RegistryServer::start_with_basic_auth("puller", "s3cret-Pa55");
    let image = simple_image("private", None);
    server
        .pusher()
        .push_image("private/app", Some("v1"), &image)
        .await;
    let reference = format!("{}/private/app:v1", server.host());
    let with_password = |password: &str| {
        Arc::new(
            OciRegistry::new(registry_configuration(json!([{
                "hosts": [server.host()],
                "credentials": {"basic": {"username": "puller", "password": password}},
            }])))
            .unwrap(),
        )
    };
    let env = Env::new();
    let wrong = env.expander(with_password("wr0ng-Secret"), options());
    let err = env.expand(&wrong, &reference).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, &[&reference]);
    assert!(!err.message().contains("wr0ng-Secret"), "{}", err.message());
    assert!(!err.message().contains("s3cret-Pa55"), "{}", err.message());
    assert_eq!(env.ac_entries(), 0);

    let right = env.expander(with_password("s3cret-Pa55"), options());
    let expanded = env.expand(&right, &reference).await.unwrap();
    assert_eq!(expanded.layers_ingested, 3);
}

/// A registry API served by a scripted server: manifests and config as pushed, and the
/// layer blob cut short for the first `drops` requests.
fn flaky_registry(image: &Image, drops: usize) -> (FakeHttpServer, Arc<AtomicUsize>) {
    let mut blobs: BTreeMap<String, (Bytes, String)> = BTreeMap::new();
    blobs.insert(
        image.config_digest.clone(),
        (image.config.clone(), "application/octet-stream".into()),
    );
    for layer in &image.layers {
        blobs.insert(
            layer.digest.clone(),
            (layer.blob.clone(), "application/octet-stream".into()),
        );
    }
    let manifest = (image.manifest.clone(), image.media_type().to_string());
    let manifest_digest = image.manifest_digest.clone();
    let config_digest = image.config_digest.clone();
    let layer_requests = Arc::new(AtomicUsize::new(0));
    let counted = layer_requests.clone();
    let server = FakeHttpServer::start(move |request| {
        if request.path == "/v2/" {
            return Response::new(200, "{}");
        }
        if request
            .path
            .ends_with(&format!("/manifests/{manifest_digest}"))
        {
            return Response::new(200, manifest.0.to_vec())
                .header("Content-Type", &manifest.1)
                .header("Docker-Content-Digest", &manifest_digest);
        }
        for (digest, (data, media_type)) in &blobs {
            if request.path.ends_with(&format!("/blobs/{digest}")) {
                let response = Response::new(200, data.to_vec())
                    .header("Content-Type", media_type)
                    .header("Docker-Content-Digest", digest);
                if *digest != config_digest && counted.fetch_add(1, Ordering::SeqCst) < drops {
                    return response.truncated_at(data.len() / 2);
                }
                return response;
            }
        }
        Response::new(404, r#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#)
    });
    (server, layer_requests)
}

#[tokio::test]
async fn connection_dropped_mid_blob_is_retried_then_unavailable() {
    let layer = Layer::new(
        tar_bytes(&[TarEntry::File("noise".into(), noise(200_000), 0o644)]),
        Compression::Gzip,
        Flavor::Oci,
    );
    let image = one_layer(layer.clone());

    // Dropped once: the expander fetches the layer again and succeeds.
    let (server, layer_requests) = flaky_registry(&image, 1);
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("{}/test/flaky@{}", server.host(), image.manifest_digest);
    let expanded = env.expand(&expander, &reference).await.unwrap();
    assert_eq!(expanded.layers_ingested, 1);
    assert!(layer_requests.load(Ordering::SeqCst) >= 2);

    // Dropped every time: UNAVAILABLE (transient), naming the layer; nothing cached.
    let (server, _) = flaky_registry(&image, usize::MAX);
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let reference = format!("{}/test/flaky@{}", server.host(), image.manifest_digest);
    let err = env.expand(&expander, &reference).await.unwrap_err();
    assert_error(&err, Code::Unavailable, &[&reference, &layer.digest]);
    assert_eq!(env.ac_entries(), 0);
}
