//! Row j (issue 12): peak RSS of a child process expanding layers whose metadata is
//! hostile, against a layer just under the metadata limits. The bombs must be refused
//! (FAILED_PRECONDITION) with a peak RSS under 160 MB; the control must expand.

use crate::layers::{cache_directory, BuiltLayer};
use crate::report::{Row, Table, Target, Unit};
use crate::Pushed;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::process::Command;

/// A tar header (ustar) of `typeflag` for `name` with `size` bytes of data.
fn header(name: &str, typeflag: u8, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_mode(if typeflag == b'2' { 0o777 } else { 0o644 });
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    let bytes = h.as_mut_bytes();
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    bytes[156] = typeflag;
    bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn append(tar: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// A PAX header with these records.
fn pax_records(tar: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (key, value) in records {
        let base = key.len() + value.len() + 3;
        let mut length = base + 1;
        while base + length.to_string().len() != length {
            length += 1;
        }
        data.extend_from_slice(format!("{length} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    append(
        tar,
        &header("PaxHeader", b'x', data.len() as u64, ""),
        &data,
    );
}

/// A PAX header with one record `key=value`.
fn pax(tar: &mut Vec<u8>, key: &str, value: &[u8]) {
    pax_records(tar, &[(key, value)]);
}

/// Writes `tar` gzip-compressed under the cache directory.
fn layer(name: &str, tar: Vec<u8>, entries: u64) -> io::Result<BuiltLayer> {
    let mut tar = tar;
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    gzip.write_all(&tar)?;
    let blob = gzip.finish()?;
    let directory = cache_directory();
    std::fs::create_dir_all(&directory)?;
    let path = directory.join(format!("{name}.tar.gz"));
    std::fs::write(&path, &blob)?;
    eprintln!(
        "  {name}: {entries} entries, tar {} KiB, gzip {} KiB",
        tar.len() >> 10,
        blob.len() >> 10
    );
    Ok(BuiltLayer {
        path,
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&blob))),
        diff_id: format!("sha256:{}", hex::encode(Sha256::digest(&tar))),
        size: blob.len() as u64,
        tar_size: tar.len() as u64,
        entries,
    })
}

/// 73 empty files, each named by a 3.5 MiB PAX `path` record (issue 12).
pub fn pax_path_bomb() -> io::Result<BuiltLayer> {
    let mut tar = Vec::new();
    for i in 0..73 {
        let mut name = format!("{i}/").into_bytes();
        name.resize(7 << 19, b'p');
        pax(&mut tar, "path", &name);
        append(&mut tar, &header("f", b'0', 0, ""), b"");
    }
    layer("bomb-pax-paths", tar, 73)
}

/// 64 symlinks with 3 MiB targets (PAX `linkpath`, issue 12).
pub fn symlink_bomb() -> io::Result<BuiltLayer> {
    let mut tar = Vec::new();
    let target = vec![b't'; 3 << 20];
    for i in 0..64 {
        pax(&mut tar, "linkpath", &target);
        append(&mut tar, &header(&format!("l{i}"), b'2', 0, ""), b"");
    }
    layer("bomb-symlink-targets", tar, 64)
}

/// Just under the limits: 73 entries each with a 4096-byte PAX path of 255-byte
/// components and, for symlinks, a 4096-byte target, in a PAX header of just under 1 MiB.
/// Plus `usr/bin/env`, so that the image is usable.
pub fn just_under() -> io::Result<BuiltLayer> {
    let mut tar = Vec::new();
    let component = "c".repeat(255);
    let mut entries = 0;
    for i in 0..73 {
        let mut path = format!("{i:02}");
        while path.len() + 256 <= 4096 {
            path.push('/');
            path.push_str(&component);
        }
        path.push('/');
        path.push_str(&"x".repeat(4096 - path.len()));
        // One PAX header of just under 1 MiB: the path, the target, and a comment.
        let target = "/".repeat(4096);
        let comment = vec![b'v'; (1 << 20) - 9000];
        let mut records: Vec<(&str, &[u8])> =
            vec![("comment", &comment), ("path", path.as_bytes())];
        if i % 2 == 1 {
            records.push(("linkpath", target.as_bytes()));
        }
        pax_records(&mut tar, &records);
        if i % 2 == 0 {
            append(&mut tar, &header("f", b'0', 0, ""), b"");
        } else {
            append(&mut tar, &header("l", b'2', 0, ""), b"");
        }
        entries += 1;
    }
    for dir in ["usr/", "usr/bin/"] {
        append(&mut tar, &header(dir, b'5', 0, ""), b"");
    }
    let env = std::fs::read("/usr/bin/env")?;
    let mut h = header("usr/bin/env", b'0', env.len() as u64, "");
    h.set_mode(0o755);
    h.set_cksum();
    append(&mut tar, &h, &env);
    layer("just-under-metadata-limits", tar, entries + 3)
}

/// Runs the ingest child on `reference`, which may fail: its peak RSS and result.
fn run_child(reference: &str) -> serde_json::Value {
    let output = Command::new(std::env::current_exe().unwrap())
        .env("BB_BENCH_CHILD", "ingest-any")
        .env("RUST_LOG", "error")
        .arg(reference)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or_else(|_| {
        panic!(
            "child JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Row j.
pub fn rows(table: &mut Table, bombs: &[(&str, &Pushed)], control: &Pushed) {
    let mib = |v: &serde_json::Value| v["vmHwmKiB"].as_f64().unwrap_or(f64::NAN) / 1024.0;
    let under = run_child(&control.reference);
    assert_eq!(under["code"], "Ok", "just-under layer: {under}");
    for (label, bomb) in bombs {
        let result = run_child(&bomb.reference);
        assert_eq!(result["code"], "FailedPrecondition", "{label}: {result}");
        let message = result["message"].as_str().unwrap_or_default();
        table.push(
            Row::new(
                format!("j peak RSS, {label} refused"),
                Unit::MiB,
                mib(&result),
                Some(mib(&under)),
                // 160 MB.
                Target::AtMost(160e6 / 1048576.0),
            )
            .note(format!(
                "VmHWM of a child (target: 160 MB); baseline = a layer just under the limits ({} KiB gzip), accepted; error: {}",
                control.layers[0].size >> 10,
                &message[..message.len().min(160)]
            )),
        );
    }
}

/// The child of row j: expands `reference` into a discarding CAS and prints its peak RSS
/// and the result's code and message.
pub fn child(reference: &str) {
    use bb_container_expander::blobstore::{
        DiscardingContentAddressableStorage, Instance, MemoryActionCache,
    };
    use bb_container_expander::digest::DigestFunction;
    use bb_container_expander::image::{new_image_expander, ExpanderOptions};
    use bb_container_expander::registry::configuration::RegistryConfiguration;
    use bb_container_expander::registry::{OciRegistry, Platform};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = OciRegistry::new(RegistryConfiguration {
        allow_any_registry: true,
        allow_private_addresses: true,
        ..RegistryConfiguration::default()
    })
    .expect("registry client");
    let result = runtime.block_on(async {
        let expander = new_image_expander(
            Arc::new(registry),
            Arc::new(DiscardingContentAddressableStorage::new()),
            Arc::new(MemoryActionCache::new(64 << 20)),
            ExpanderOptions::default(),
        );
        expander
            .expand(
                &Instance::new("", DigestFunction::Sha256),
                reference,
                &Platform::new("linux", "amd64", ""),
            )
            .await
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (code, message) = match &result {
        Ok(_) => ("Ok".to_owned(), String::new()),
        Err(status) => (format!("{:?}", status.code()), status.message().to_owned()),
    };
    println!(
        "{}",
        serde_json::json!({"vmHwmKiB": hwm, "code": code, "message": message})
    );
}
