//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz) and the seeds they start
//! from. Not an API: each function runs one parser on arbitrary bytes and panics only
//! where the code under test has a bug (a panic of its own, or an invariant that does
//! not hold, such as a parsed reference that does not parse again).

use crate::blobstore::{ContentAddressableStorage, Instance, MemoryContentAddressableStorage};
use crate::digest::DigestFunction;
use crate::layer::{IngestOptions, LayerDescriptor, LayerIngester, MetadataLimits};
use crate::registry::manifest::{check_config_descriptor, parse_config, parse_manifest, Manifest};
use crate::registry::{platform, Platform, Reference};
use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest as _;
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// An image reference; a parsed one prints as a reference that parses to itself.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = Reference::parse(text) {
        let printed = parsed.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e:?}"));
        assert_eq!(again.to_string(), printed);
    }
}

/// A manifest or index, then platform selection or the config check; the input is the
/// manifest, a 0xff byte, and the config.
pub fn manifest(data: &[u8]) {
    let (body, config) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    match parse_manifest(body, None) {
        Ok(Manifest::Index(_, index)) => {
            for wanted in [
                Platform::default(),
                Platform::new("linux", "arm64", "v8"),
                Platform::new("linux", "arm", "v7"),
            ] {
                let _ = platform::select_manifest(&index, &wanted);
            }
        }
        Ok(Manifest::Image(_, manifest)) => {
            if check_config_descriptor(&manifest).is_ok() {
                if let Ok((_, layers)) = parse_config(&manifest, config) {
                    assert_eq!(layers.len(), manifest.layers.len());
                }
            }
        }
        Err(_) => {}
    }
}

/// A configuration file: Jsonnet (or JSON) evaluated, decoded and validated.
pub fn configuration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value,
        Err(_) => match crate::config::jsonnet::evaluate_snippet("fuzz.jsonnet", text) {
            Ok(value) => value,
            Err(_) => return,
        },
    };
    if let Ok(config) =
        crate::config::jsonnet::decode::<crate::config::ApplicationConfiguration>(value)
    {
        let _ = config.validate();
    }
}

/// How the layer target turns its input into a blob: the first byte of the input.
#[derive(Clone, Copy, Debug)]
pub enum LayerEncoding {
    /// The rest is the tar stream, uncompressed.
    Plain,
    /// The rest is a tar stream, gzip-compressed here.
    Gzip,
    /// The rest is a tar stream, zstd-compressed here.
    Zstd,
    /// The rest is the blob as it is, of a media type whose compression is sniffed.
    Raw,
}

impl LayerEncoding {
    fn from_byte(b: u8) -> Self {
        match b % 4 {
            0 => Self::Plain,
            1 => Self::Gzip,
            2 => Self::Zstd,
            _ => Self::Raw,
        }
    }

    fn byte(self) -> u8 {
        self as u8
    }
}

fn oci_sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A layer ingested (with the DiffID of the tar stream, so that parsing goes to the end),
/// applied to an empty tree and encoded. Limits are small, so that inputs stay cheap:
/// 16 MiB decompressed, 10,000 entries.
pub fn layer(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let encoding = LayerEncoding::from_byte(first);
    let (media_type, blob, tar) = match encoding {
        LayerEncoding::Plain => (
            "application/vnd.oci.image.layer.v1.tar",
            rest.to_vec(),
            None,
        ),
        LayerEncoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(rest).expect("gzip to memory");
            let blob = encoder.finish().expect("gzip to memory");
            ("application/vnd.oci.image.layer.v1.tar+gzip", blob, None)
        }
        LayerEncoding::Zstd => (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            zstd::stream::encode_all(rest, 1).expect("zstd to memory"),
            None,
        ),
        LayerEncoding::Raw => (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            rest.to_vec(),
            Some(rest),
        ),
    };
    let diff_id = oci_sha256(tar.unwrap_or(rest));
    let layer = LayerDescriptor {
        media_type: media_type.into(),
        digest: oci_sha256(&blob),
        size: blob.len() as i64,
        diff_id,
    };
    let cas: Arc<dyn ContentAddressableStorage> =
        Arc::new(MemoryContentAddressableStorage::new(1 << 30));
    let limits = MetadataLimits {
        maximum_layer_entries: 10_000,
        maximum_image_entries: 10_000,
        ..Default::default()
    };
    let ingester = LayerIngester::new(
        cas,
        IngestOptions {
            maximum_layer_size_bytes: 16 << 20,
            metadata_limits: limits.clone(),
            ..Default::default()
        },
    );
    let instance = Instance::new("", DigestFunction::Sha256);
    let chunks: Vec<Result<Bytes, tonic::Status>> = blob
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let result = runtime().block_on(ingester.ingest(
        &instance,
        &layer,
        futures::stream::iter(chunks).boxed(),
    ));
    let Ok(changeset) = result else {
        return;
    };
    for entry in &changeset.entries {
        assert!(entry.path.len() <= crate::layer::limits::MAXIMUM_PATH_BYTES);
    }
    let changesets = [Arc::new(changeset)];
    if crate::layer::limits::check_image_totals(&changesets, &[layer.digest], &limits).is_err() {
        return;
    }
    let mut tree = crate::tree::Directory::new();
    if crate::tree::apply_layer(&mut tree, &changesets[0]).is_ok() {
        let _ = crate::tree::encode(&tree, DigestFunction::Sha256, 2 << 20);
    }
}

/// Seed inputs of each target, by target name: small valid inputs of every kind the
/// target distinguishes, and a few near misses.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let hex = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
    for (i, text) in [
        "docker://docker.io/library/debian:bookworm-slim",
        "ghcr.io/org/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "localhost:5000/a/b/c:tag@sha512:00",
        "docker://[::1]:5000/x:1",
        "busybox",
        "registry.example.com/team/img:v1.2.3",
    ]
    .iter()
    .enumerate()
    {
        seeds.push(("reference", format!("seed-{i}"), text.as_bytes().to_vec()));
    }

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": hex(1),
             "size": 100, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": hex(2),
             "size": 100, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": hex(3),
             "size": 100},
        ],
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": hex(9), "size": 100},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": hex(4),
             "size": 10},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": hex(5),
             "size": 20},
        ],
    });
    let config = serde_json::json!({
        "os": "linux", "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": [hex(6), hex(7)]},
    });
    seeds.push(("manifest", "index".into(), index.to_string().into_bytes()));
    let mut with_config = manifest.to_string().into_bytes();
    with_config.push(0xff);
    with_config.extend_from_slice(config.to_string().as_bytes());
    seeds.push(("manifest", "manifest-and-config".into(), with_config));
    let docker = manifest
        .to_string()
        .replace(
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .into_bytes();
    seeds.push(("manifest", "docker-manifest".into(), docker));

    for (i, config) in [
        "{}",
        "{ containerImages: { allowAnyRegistry: true, maximumLayerEntries: 10 } }",
        "local x = 3; { maximumMessageSizeBytes: 2 * 1024 * 1024, global: { logPaths: [] } }",
        r#"{"containerImages": {"registries": [{"hosts": ["ghcr.io"]}], "tagTtl": "30s"}}"#,
    ]
    .iter()
    .enumerate()
    {
        seeds.push((
            "configuration",
            format!("seed-{i}"),
            config.as_bytes().to_vec(),
        ));
    }
    if let Ok(shipped) = std::fs::read_to_string("configs/local.jsonnet") {
        if !shipped.contains("import") {
            seeds.push(("configuration", "local".into(), shipped.into_bytes()));
        }
    }

    for (name, tar) in sample_tars() {
        for encoding in [
            LayerEncoding::Plain,
            LayerEncoding::Gzip,
            LayerEncoding::Zstd,
        ] {
            let mut input = vec![encoding.byte()];
            input.extend_from_slice(&tar);
            seeds.push(("layer", format!("{name}-{encoding:?}"), input));
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).expect("gzip to memory");
        let mut input = vec![LayerEncoding::Raw.byte()];
        input.extend(encoder.finish().expect("gzip to memory"));
        seeds.push(("layer", format!("{name}-Raw"), input));
    }
    seeds
}

/// Small tar streams of each kind of entry the ingester distinguishes.
fn sample_tars() -> Vec<(&'static str, Vec<u8>)> {
    let mut tars = Vec::new();
    let mut builder = tar::Builder::new(Vec::new());
    let header = |path: &str, kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("short path");
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(size);
        h.set_cksum();
        h
    };
    let entries: [(&str, tar::EntryType, &[u8]); 7] = [
        ("usr/", tar::EntryType::Directory, b""),
        ("usr/bin/env", tar::EntryType::Regular, b"#!/bin/sh\n"),
        ("etc/.wh.passwd", tar::EntryType::Regular, b""),
        ("opt/.wh..wh..opq", tar::EntryType::Regular, b""),
        ("dev/null", tar::EntryType::Char, b""),
        ("etc/big", tar::EntryType::Regular, &[7u8; 3000]),
        ("usr/bin/envlink", tar::EntryType::Regular, b""),
    ];
    for (path, kind, data) in entries {
        let h = header(path, kind, data.len() as u64);
        builder.append(&h, data).expect("tar to memory");
    }
    let mut link = header("usr/bin/sh", tar::EntryType::Symlink, 0);
    link.set_link_name("env").expect("short link");
    link.set_cksum();
    builder.append(&link, &[][..]).expect("tar to memory");
    let mut hard = header("usr/bin/env2", tar::EntryType::Link, 0);
    hard.set_link_name("usr/bin/env").expect("short link");
    hard.set_cksum();
    builder.append(&hard, &[][..]).expect("tar to memory");
    tars.push(("ordinary", builder.into_inner().expect("tar to memory")));

    // Long names as GNU and PAX records.
    let mut builder = tar::Builder::new(Vec::new());
    let long = format!("{}/file", "d".repeat(200));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    builder
        .append_data(&mut h, &long, &b"x"[..])
        .expect("tar to memory");
    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([
        ("path", long.as_bytes()),
        ("linkpath", b"/target".as_slice()),
    ])
    .expect("tar to memory");
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_cksum();
    pax.append(&h, &[][..]).expect("tar to memory");
    tars.push((
        "gnu-long-name",
        builder.into_inner().expect("tar to memory"),
    ));
    tars.push(("pax", pax.into_inner().expect("tar to memory")));
    tars
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed runs through its target; so does every input that fuzzing once found
    /// to crash or blow up (below, by target).
    #[test]
    fn seeds_and_regressions_pass_their_targets() {
        let seeds = seeds();
        for target in ["reference", "manifest", "configuration", "layer"] {
            assert!(seeds.iter().any(|(t, _, _)| *t == target), "{target}");
        }
        for (target, _, data) in &seeds {
            run(target, data);
        }
    }

    fn run(target: &str, data: &[u8]) {
        match target {
            "reference" => reference(data),
            "manifest" => manifest(data),
            "configuration" => configuration(data),
            "layer" => layer(data),
            other => panic!("unknown target {other}"),
        }
    }

    /// The two metadata bombs of issue 12, as layer target inputs: refused early.
    #[test]
    fn metadata_bombs_run_through_the_layer_target() {
        let mut tar = Vec::new();
        let mut builder = tar::Builder::new(&mut tar);
        let long = "p".repeat(3 << 20);
        builder
            .append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_cksum();
        builder.append(&h, &[][..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        for encoding in [
            LayerEncoding::Plain,
            LayerEncoding::Gzip,
            LayerEncoding::Zstd,
        ] {
            let mut input = vec![encoding.byte()];
            input.extend_from_slice(&tar);
            layer(&input);
        }
    }
}
