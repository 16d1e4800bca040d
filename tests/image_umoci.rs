//! Differential check of the image engine against `umoci raw unpack` (Debian package
//! `umoci`): the same image is pushed to a real registry (`docker-registry` on 127.0.0.1)
//! and expanded by us, and written as an OCI image layout and unpacked by umoci. The two
//! trees must be equal in paths, file contents, exec bits (any x bit) and symlink targets,
//! except where docs/design/layers.md documents a DECISION; those differences are listed explicitly
//! in each test, with the rule.
//!
//! Two images: hand-made layers with every construct docs/design/layers.md#where-we-differ discusses, and a
//! realistic Debian userland built from this machine's own /etc, /usr/bin and
//! /usr/lib/x86_64-linux-gnu (usrmerge symlinks, hard links, thousands of files), plus an
//! "upgrade" layer with whiteouts and an opaque directory.

mod image_common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Instant;

use image_common::*;
use support::images::{
    dir, exe, file, link, symlink, tar_bytes, whiteout, Compression, Flavor, Image, ImageBuilder,
    Layer, TarEntry,
};
use support::registry_server::RegistryServer;

/// A difference between our tree and umoci's that docs/design/layers.md decides on purpose.
struct Expected {
    path: &'static str,
    ours: Option<Node>,
    umoci: Option<Node>,
    rule: &'static str,
}

/// Pushes `image`, expands it, materializes our tree, unpacks the layout with umoci, and
/// compares, allowing exactly the `expected` differences (and `umoci_specials`, paths
/// umoci creates as device nodes or FIFOs, which REAPI cannot express, docs/design/layers.md#devices-and-fifos).
async fn differential(
    image: &Image,
    repo: &str,
    expected: &[Expected],
    umoci_specials: &[&str],
) -> Tree {
    support::require_program("umoci", "umoci");
    let started = Instant::now();
    let server = RegistryServer::start();
    server.pusher().push_image(repo, Some("v1"), image).await;
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let expanded = env
        .expand(&expander, &format!("{}/{repo}:v1", server.host()))
        .await
        .unwrap();
    let expanded_at = started.elapsed();

    // Ours, as an operator (or a worker) sees it on disk.
    let scratch = tempfile::tempdir().unwrap();
    let ours_dir = scratch.path().join("ours");
    bb_container_expander::cli::materialize::materialize(
        &*env.cas,
        &env.instance,
        &expanded.root_directory_digest,
        &ours_dir,
    )
    .await
    .unwrap();
    let ours = read_directory(&ours_dir, None);
    // The materialized tree is the tree in the CAS.
    assert_trees_eq(&ours, &env.tree(&expanded).await);

    // umoci's, from an OCI layout holding the same blobs.
    let layout = OciLayout::write(image, "v1");
    let umoci_dir = scratch.path().join("umoci");
    let unpack_started = Instant::now();
    let (layout, umoci_dir) = tokio::task::spawn_blocking(move || {
        layout.umoci_unpack("v1", &umoci_dir);
        (layout, umoci_dir)
    })
    .await
    .unwrap();
    let unpacked_in = unpack_started.elapsed();
    drop(layout);
    let mut specials = Vec::new();
    let umoci = read_directory(&umoci_dir, Some(&mut specials));
    specials.sort();
    assert_eq!(specials, umoci_specials, "special files umoci created");

    let mut ours_rest = ours.clone();
    let mut umoci_rest = umoci.clone();
    for e in expected {
        assert_eq!(
            ours_rest.remove(e.path),
            e.ours,
            "{}: our side of the expected difference ({})",
            e.path,
            e.rule
        );
        assert_eq!(
            umoci_rest.remove(e.path),
            e.umoci,
            "{}: umoci's side of the expected difference ({})",
            e.path,
            e.rule
        );
    }
    let lines = diff_trees("ours", &ours_rest, "umoci", &umoci_rest);
    assert!(
        lines.is_empty(),
        "{} unexpected differences from umoci:\n  {}",
        lines.len(),
        lines.join("\n  ")
    );
    eprintln!(
        "{repo}: {} nodes; expanded in {:.2}s, umoci unpacked in {:.2}s, whole check {:.2}s",
        ours.len(),
        expanded_at.as_secs_f64(),
        unpacked_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    ours
}

#[tokio::test]
async fn hand_made_layers_match_umoci() {
    let flavor = Flavor::Oci;
    let base = vec![
        dir("etc"),
        file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        file("etc/hosts", "127.0.0.1 localhost\n"),
        file("etc/group", "root:x:0:\n"),
        dir("usr"),
        dir("usr/bin"),
        exe("usr/bin/busybox", "BUSYBOX"),
        TarEntry::Link("usr/bin/sh".into(), "usr/bin/busybox".into(), 0o755),
        exe("usr/bin/ls", "LS"),
        TarEntry::File("usr/bin/group-exec".into(), b"G".to_vec(), 0o610),
        TarEntry::File("usr/bin/setuid".into(), b"S".to_vec(), 0o4755),
        symlink("bin", "usr/bin"),
        file("usr/lib/libc.so.6", "LIBC"),
        symlink("usr/lib/libc.so", "libc.so.6"),
        symlink("lib", "usr/lib"),
        symlink("lib64", "/usr/lib"),
        symlink("escape", "../../.."),
        file("opt/app/a.txt", "a"),
        file("opt/app/sub/b.txt", "b"),
        file("var/cache/apt/pkgcache.bin", "cache"),
        file("var/log/dpkg.log", "log"),
        dir("tmp"),
        file("home/user/.profile", "profile"),
        dir("srv/www"),
        file("srv/www/index.html", "<html>"),
        symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        symlink("dangling", "/does/not/exist"),
        // A hard link to a symlink links the symlink itself (docs/design/layers.md#hard-links).
        TarEntry::Link(
            "usr/lib/libc-link.so".into(),
            "usr/lib/libc.so".into(),
            0o777,
        ),
        // The target's parent resolves through a symlink (docs/design/layers.md#hard-links, #parent-resolution).
        TarEntry::Link("etc/ls-via-bin".into(), "bin/ls".into(), 0o755),
        // A chain of symlinks with `..` (followed in the middle layer).
        symlink("hop1", "hop2/inner"),
        symlink("hop2", "real"),
        dir("real"),
        symlink("real/inner", "../target"),
    ];
    let middle = vec![
        whiteout("etc/.wh.hosts"),
        whiteout("var/.wh.cache"),
        file("opt/app/new.txt", "new"),
        whiteout("opt/app/.wh..wh..opq"),
        file("lib/libextra.so", "EXTRA"),
        file("hop1/x", "through three symlinks"),
        // An absolute symlink parent resolves inside the image (docs/design/layers.md#parent-resolution).
        file("lib64/libabs.so", "ABS"),
        // A relative symlink climbing above the root is clamped (docs/design/layers.md#parent-resolution).
        file("escape/etc/clamped", "CLAMPED"),
        file("etc/passwd", "root:x:0:0::/root:/bin/bash\n"),
        TarEntry::Link("sbin/ls".into(), "usr/bin/ls".into(), 0o755),
        link("etc/group.bak", "etc/group"),
        file("deep/a/b/c/file", "deep"),
        whiteout("home/.wh.user"),
        file("home/user/new", "fresh"),
        // A directory entry replaces a symlink (docs/design/layers.md#replacing-entries), a file a directory (docs/design/layers.md#replacing-entries).
        dir("lib"),
        file("lib/own.so", "OWN"),
        file("srv", "now a file"),
        // Whiteout of a same-layer path given earlier: the add survives (docs/design/layers.md#two-passes).
        file("etc/motd", "motd"),
        whiteout("etc/.wh.motd"),
        // Duplicate path: last wins (docs/design/layers.md#replacing-entries).
        file("etc/issue", "first"),
        file("etc/issue", "second"),
    ];
    let top = vec![
        file("etc/group", "root:x:0:user\n"),
        whiteout("usr/lib/.wh.libc.so"),
        whiteout("bin/.wh.ls"),
        file("tmp/.keep", ""),
        exe("usr/bin/busybox", "BUSYBOX2"),
        TarEntry::CharDevice("dev/null".into()),
        TarEntry::Fifo("run/initctl".into()),
        // The link header's mode gives the new name's exec bit (docs/design/layers.md#hard-links).
        TarEntry::Link(
            "usr/bin/busybox-noexec".into(),
            "usr/bin/busybox".into(),
            0o644,
        ),
        // A whiteout-only entry still creates its parents (docs/design/layers.md#implied-parents).
        whiteout("nowhere/x/.wh.y"),
    ];
    let image = ImageBuilder::new(flavor)
        .layer(Layer::new(tar_bytes(&base), Compression::Gzip, flavor))
        // umoci 0.4.7 refuses zstd layers ("blob is not correct mediatype"): gzip and
        // uncompressed only here; zstd is covered in image_expansion.rs.
        .layer(Layer::new(tar_bytes(&middle), Compression::None, flavor))
        .layer(Layer::new(tar_bytes(&top), Compression::Gzip, flavor))
        .build();
    let expected = [
        Expected {
            path: "dev/null",
            ours: None,
            umoci: Some(F("")),
            rule: "docs/design/layers.md#devices-and-fifos: devices are omitted; umoci --rootless writes an empty mode-0 file",
        },
        Expected {
            path: "usr/bin/busybox-noexec",
            ours: Some(F("BUSYBOX2")),
            umoci: Some(X("BUSYBOX2")),
            rule: "docs/design/layers.md#hard-links: the link header's mode applies to the new name only; umoci keeps \
                   the shared inode's mode",
        },
        Expected {
            path: "nowhere",
            ours: Some(D),
            umoci: None,
            rule: "docs/design/layers.md#implied-parents: implied parents of a whiteout-only entry are created, as docker \
                   and containerd do; umoci does not",
        },
        Expected {
            path: "nowhere/x",
            ours: Some(D),
            umoci: None,
            rule: "docs/design/layers.md#implied-parents (as above)",
        },
    ];
    let ours = differential(&image, "test/handmade", &expected, &["run/initctl"]).await;
    // Spot checks of the rules on our side.
    assert_eq!(ours.get("etc/motd"), Some(&F("motd")));
    assert_eq!(ours.get("etc/issue"), Some(&F("second")));
    assert_eq!(ours.get("etc/clamped"), Some(&F("CLAMPED")));
    assert_eq!(ours.get("usr/lib/libabs.so"), Some(&F("ABS")));
    assert_eq!(ours.get("usr/bin/sh"), Some(&X("BUSYBOX")));
    assert_eq!(ours.get("usr/bin/setuid"), Some(&X("S")));
    assert_eq!(ours.get("usr/bin/group-exec"), Some(&X("G")));
    assert_eq!(ours.get("lib"), Some(&D));
    assert_eq!(ours.get("usr/lib/libc-link.so"), Some(&L("libc.so.6")));
    assert_eq!(ours.get("etc/ls-via-bin"), Some(&X("LS")));
    assert_eq!(ours.get("target/x"), Some(&F("through three symlinks")));
    assert_eq!(ours.get("run"), Some(&D));
    assert!(!ours.contains_key("run/initctl"));
}

/// Entries for the host directory `host` (absolute) placed at `at` (relative): its
/// directories (recursively when `recursive`), files as they are (mode, hard links as
/// links), symlinks as symlinks. Files over `largest` bytes are left out, and files stop
/// being added once `budget` bytes are used, except those named in `always`.
fn host_entries(
    host: &str,
    recursive: bool,
    largest: u64,
    budget: u64,
    always: &[&str],
) -> Vec<TarEntry> {
    let mut entries = Vec::new();
    let mut used = 0;
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut pending = vec![host.to_string()];
    let relative = |path: &str| path.trim_start_matches('/').to_string();
    // Parents of `host` as explicit directories.
    let mut parent = String::new();
    for part in relative(host).split('/') {
        parent = if parent.is_empty() {
            part.to_string()
        } else {
            format!("{parent}/{part}")
        };
        entries.push(dir(&parent));
    }
    while let Some(directory) = pending.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&directory)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter_map(|n| n.into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let path = format!("{directory}/{name}");
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let kind = metadata.file_type();
            if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                if let Some(target) = target.to_str() {
                    entries.push(symlink(&relative(&path), target));
                }
            } else if kind.is_dir() {
                if recursive {
                    entries.push(dir(&relative(&path)));
                    pending.push(path);
                }
            } else if kind.is_file() {
                let mode = metadata.permissions().mode() & 0o7777;
                let inode = (metadata.dev(), metadata.ino());
                if let Some(first) = inodes.get(&inode) {
                    entries.push(TarEntry::Link(relative(&path), first.clone(), mode));
                    continue;
                }
                let wanted = always.contains(&name.as_str())
                    || (metadata.len() <= largest && used + metadata.len() <= budget);
                if !wanted {
                    continue;
                }
                used += metadata.len();
                if metadata.nlink() > 1 {
                    inodes.insert(inode, relative(&path));
                }
                entries.push(TarEntry::File(
                    relative(&path),
                    std::fs::read(&path).unwrap(),
                    mode,
                ));
            }
        }
    }
    entries
}

/// A realistic Debian userland from this machine's own files: usrmerge symlinks, /etc,
/// a share of /usr/bin and /usr/lib/x86_64-linux-gnu (thousands of entries, hard links,
/// library symlink chains), and an "upgrade" layer with whiteouts, an opaque directory
/// and replaced files.
#[tokio::test]
async fn host_userland_matches_umoci() {
    let flavor = Flavor::Oci;
    let mut base = vec![
        symlink("bin", "usr/bin"),
        symlink("lib", "usr/lib"),
        symlink("lib64", "usr/lib64"),
        symlink("sbin", "usr/sbin"),
        dir("tmp"),
        dir("root"),
        dir("usr/lib64"),
        symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
    ];
    base.extend(host_entries("/etc", true, 1 << 20, 8 << 20, &[]));
    let binaries = host_entries("/usr/bin", false, 4 << 20, 24 << 20, &["dash", "ls"]);
    let libraries = host_entries(
        "/usr/lib/x86_64-linux-gnu",
        false,
        3 << 20,
        24 << 20,
        &["libc.so.6", "ld-linux-x86-64.so.2"],
    );
    let upgrade = vec![
        // A package removed, one replaced, a configuration directory reset.
        whiteout("usr/bin/.wh.ls"),
        TarEntry::File(
            "usr/bin/dash".into(),
            b"#!/replaced/by/upgrade\n".to_vec(),
            0o755,
        ),
        whiteout("etc/apt/.wh..wh..opq"),
        file(
            "etc/apt/sources.list",
            "deb http://deb.debian.org/debian bookworm main\n",
        ),
        file(
            "var/lib/dpkg/status",
            "Package: test\nStatus: install ok installed\n",
        ),
        // Through the usrmerge symlink: lands in usr/lib/x86_64-linux-gnu.
        file("lib/x86_64-linux-gnu/libupgrade.so.1", "UPGRADE"),
    ];
    let count = base.len() + binaries.len() + libraries.len();
    assert!(count > 1500, "only {count} entries");
    let build_started = Instant::now();
    let image = ImageBuilder::new(flavor)
        .layer(Layer::new(tar_bytes(&base), Compression::Gzip, flavor))
        .layer(Layer::new(tar_bytes(&binaries), Compression::Gzip, flavor))
        .layer(Layer::new(tar_bytes(&libraries), Compression::None, flavor))
        .layer(Layer::new(tar_bytes(&upgrade), Compression::Gzip, flavor))
        .build();
    let bytes: usize = image.layers.iter().map(|l| l.tar.len()).sum();
    eprintln!(
        "host image: {count} entries, {} MB of tar, built in {:.2}s",
        bytes >> 20,
        build_started.elapsed().as_secs_f64()
    );
    let ours = differential(&image, "test/host", &[], &[]).await;
    assert_eq!(
        ours.get("usr/bin/dash"),
        Some(&X("#!/replaced/by/upgrade\n"))
    );
    assert!(!ours.contains_key("usr/bin/ls"));
    assert_eq!(
        ours.get("usr/lib/x86_64-linux-gnu/libupgrade.so.1"),
        Some(&F("UPGRADE"))
    );
    let apt: BTreeMap<_, _> = ours
        .iter()
        .filter(|(p, _)| p.starts_with("etc/apt/"))
        .collect();
    assert_eq!(apt.len(), 1, "{apt:?}");
    // Taken from the host as it is: content and mode.
    let libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    assert_eq!(
        ours.get("usr/lib/x86_64-linux-gnu/libc.so.6"),
        Some(&Node::File {
            data: libc,
            exec: true
        })
    );
}
