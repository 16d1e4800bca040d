//! The benchmark's own layer blobs, built here (nothing outside the repository is
//! needed) as gzip tar files streamed to disk, and kept between runs under
//! `$CARGO_TARGET_TMPDIR/bench-images` (or `$BB_BENCH_CACHE`): a layer is rebuilt only
//! when its recipe, or the host files it copies, changed.
//!
//! - [`huge_files`]: 2 x 256 MiB incompressible (deterministic PRNG) + 512 MiB of zeros
//!   + 1 byte, a ~1 GiB tar;
//! - [`host_tree`]: files, directories and symlinks of the host (e.g. `/usr`), read as
//!   they are, optionally several copies side by side;
//! - [`synthetic`]: many small text-like files plus one incompressible file, distinct
//!   per seed (the layers of the multi-layer image).

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bump to rebuild every cached layer.
const RECIPE_VERSION: &str = "bench-layers-v1";

pub const GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A layer blob on disk.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub path: PathBuf,
    /// `sha256:…` of the blob.
    pub digest: String,
    /// `sha256:…` of the tar.
    pub diff_id: String,
    pub size: u64,
    pub tar_size: u64,
    pub entries: u64,
}

pub fn cache_directory() -> PathBuf {
    std::env::var_os("BB_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-images"))
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type TarWriter = tar::Builder<
    HashingWriter<flate2::write::GzEncoder<HashingWriter<io::BufWriter<std::fs::File>>>>,
>;

/// Writes entries into a tar stream, counting them.
pub struct LayerWriter {
    builder: TarWriter,
    entries: u64,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl LayerWriter {
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.entries += 1;
        self.builder.append_data(&mut h, path, io::empty())
    }

    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        contents: impl Read,
    ) -> io::Result<()> {
        let mut h = header(tar::EntryType::Regular, mode, size);
        self.entries += 1;
        self.builder.append_data(&mut h, path, contents.take(size))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.entries += 1;
        self.builder.append_link(&mut h, path, target)
    }
}

/// Returns the cached layer `name` if it was built from `fingerprint`, else builds it
/// with `fill` and gzip level `level`.
fn cached_layer(
    name: &str,
    fingerprint: &str,
    level: u32,
    fill: impl FnOnce(&mut LayerWriter) -> io::Result<()>,
) -> io::Result<BuiltLayer> {
    let directory = cache_directory();
    std::fs::create_dir_all(&directory)?;
    let blob_path = directory.join(format!("{name}.tar.gz"));
    let meta_path = directory.join(format!("{name}.json"));
    let fingerprint = format!("{RECIPE_VERSION} level={level} {fingerprint}");
    if let Ok(text) = std::fs::read_to_string(&meta_path) {
        if let Ok(meta) = serde_json::from_str::<serde_json::Value>(&text) {
            let size = meta["size"].as_u64().unwrap_or(u64::MAX);
            let on_disk = std::fs::metadata(&blob_path).map(|m| m.len()).ok();
            if meta["fingerprint"] == fingerprint.as_str() && on_disk == Some(size) {
                return Ok(BuiltLayer {
                    path: blob_path,
                    digest: meta["digest"].as_str().unwrap_or_default().to_owned(),
                    diff_id: meta["diffId"].as_str().unwrap_or_default().to_owned(),
                    size,
                    tar_size: meta["tarSize"].as_u64().unwrap_or(0),
                    entries: meta["entries"].as_u64().unwrap_or(0),
                });
            }
        }
    }
    let started = std::time::Instant::now();
    eprintln!("building layer {name} (cached in {})", directory.display());
    let partial = directory.join(format!("{name}.tar.gz.partial"));
    let file = std::fs::File::create(&partial)?;
    let blob = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let gzip = flate2::write::GzEncoder::new(blob, flate2::Compression::new(level));
    let tar_stream = HashingWriter {
        inner: gzip,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut builder = tar::Builder::new(tar_stream);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut writer = LayerWriter {
        builder,
        entries: 0,
    };
    fill(&mut writer)?;
    let entries = writer.entries;
    let tar_stream = writer.builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(tar_stream.hasher.finalize()));
    let tar_size = tar_stream.bytes;
    let mut blob = tar_stream.inner.finish()?;
    blob.flush()?;
    let digest = format!("sha256:{}", hex::encode(blob.hasher.finalize()));
    let size = blob.bytes;
    blob.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&partial, &blob_path)?;
    let meta = serde_json::json!({
        "fingerprint": fingerprint, "digest": digest, "diffId": diff_id,
        "size": size, "tarSize": tar_size, "entries": entries,
    });
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
    eprintln!(
        "  {name}: {entries} entries, tar {} MiB, gzip {} MiB, built in {:.1}s",
        tar_size >> 20,
        size >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(BuiltLayer {
        path: blob_path,
        digest,
        diff_id,
        size,
        tar_size,
        entries,
    })
}

/// A deterministic, fast, incompressible byte stream (SplitMix64).
pub struct Prng {
    state: u64,
    remaining: u64,
}

impl Prng {
    pub fn new(seed: u64, length: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03,
            remaining: length,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Read for Prng {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Text-like bytes (compressible about 2:1), distinct per seed.
struct PrngText(Prng);

impl Read for PrngText {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const ALPHABET: &[u8; 32] = b"etaoinshrdlucmfwyp \n_=;(){}.,-/0";
        let n = self.0.read(buf)?;
        for b in &mut buf[..n] {
            *b = ALPHABET[(*b & 31) as usize];
        }
        Ok(n)
    }
}

/// `huge/`: two 256 MiB incompressible files, 512 MiB of zeros and a 1-byte file.
pub fn huge_files() -> io::Result<BuiltLayer> {
    cached_layer(
        "huge-files",
        "2x256MiB prng + 512MiB zeros + 1 byte",
        1,
        |w| {
            w.dir("huge", 0o755)?;
            w.file("huge/one-byte", 0o644, 1, &b"x"[..])?;
            w.file(
                "huge/random-a.bin",
                0o644,
                256 << 20,
                Prng::new(1, 256 << 20),
            )?;
            w.file(
                "huge/random-b.bin",
                0o644,
                256 << 20,
                Prng::new(2, 256 << 20),
            )?;
            w.file("huge/zeros.bin", 0o644, 512 << 20, io::repeat(0))?;
            Ok(())
        },
    )
}

/// `layerN/`: `files` text-like files of 128 B … 64 KiB and one incompressible file of
/// `blob_mib` MiB, all distinct per `seed`.
pub fn synthetic(name: &str, seed: u64, files: u64, blob_mib: u64) -> io::Result<BuiltLayer> {
    let recipe = format!("synthetic seed={seed} files={files} blob={blob_mib}MiB");
    cached_layer(name, &recipe, 6, |w| {
        let root = format!("layer{seed}");
        w.dir(&root, 0o755)?;
        w.file(
            &format!("{root}/blob.bin"),
            0o644,
            blob_mib << 20,
            Prng::new(1000 + seed, blob_mib << 20),
        )?;
        let mut sizes = Prng::new(2000 + seed, u64::MAX);
        for i in 0..files {
            if i % 100 == 0 {
                w.dir(&format!("{root}/d{:03}", i / 100), 0o755)?;
            }
            // Log-uniform between 2^7 and 2^16 bytes.
            let exponent = 7.0 + (sizes.next_u64() % 9000) as f64 / 1000.0;
            let size = 2f64.powf(exponent) as u64;
            let contents = PrngText(Prng::new(seed << 32 | i, size));
            w.file(
                &format!("{root}/d{:03}/f{i:05}.txt", i / 100),
                0o644,
                size,
                contents,
            )?;
        }
        Ok(())
    })
}

/// One entry of the host's file system, as selected by [`HostSelection::scan`].
#[derive(Clone, Debug)]
enum HostEntry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, size: u64 },
    Symlink { path: String, target: String },
}

/// Limits of a host-tree selection.
#[derive(Clone, Debug)]
pub struct HostSelection {
    /// Absolute directories walked in this order, each depth-first in name order.
    pub roots: Vec<&'static str>,
    pub maximum_entries: usize,
    /// Larger files are left out.
    pub maximum_file_bytes: u64,
    /// The walk stops when the files selected reach this many bytes.
    pub maximum_total_bytes: u64,
}

impl HostSelection {
    fn scan(&self) -> (Vec<HostEntry>, String) {
        let mut entries = Vec::new();
        let mut total = 0u64;
        let mut fingerprint = Sha256::new();
        let mut seen_dirs = std::collections::HashSet::new();
        for root in &self.roots {
            // Parents of the root first (`usr` before `usr/bin`).
            let relative = root.trim_start_matches('/');
            let mut parent = String::new();
            for part in relative.split('/').filter(|p| !p.is_empty()) {
                parent = if parent.is_empty() {
                    part.to_owned()
                } else {
                    format!("{parent}/{part}")
                };
                if seen_dirs.insert(parent.clone()) {
                    entries.push(HostEntry::Dir {
                        path: parent.clone(),
                        mode: 0o755,
                    });
                }
            }
            let mut stack = vec![PathBuf::from(root)];
            while let Some(directory) = stack.pop() {
                let Ok(read) = std::fs::read_dir(&directory) else {
                    continue;
                };
                let mut children: Vec<PathBuf> =
                    read.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                let mut subdirectories = Vec::new();
                for child in children {
                    if entries.len() >= self.maximum_entries || total >= self.maximum_total_bytes {
                        break;
                    }
                    let Some(path) = child.to_str().map(|p| p.trim_start_matches('/').to_owned())
                    else {
                        continue;
                    };
                    let Ok(meta) = std::fs::symlink_metadata(&child) else {
                        continue;
                    };
                    let kind = meta.file_type();
                    let mode = meta.permissions().mode() & 0o7777;
                    let entry = if kind.is_dir() {
                        if !seen_dirs.insert(path.clone()) {
                            continue;
                        }
                        subdirectories.push(child.clone());
                        HostEntry::Dir { path, mode }
                    } else if kind.is_file() {
                        if meta.len() > self.maximum_file_bytes
                            || std::fs::File::open(&child).is_err()
                        {
                            continue;
                        }
                        total += meta.len();
                        HostEntry::File {
                            path,
                            mode,
                            size: meta.len(),
                        }
                    } else if kind.is_symlink() {
                        let Ok(target) = std::fs::read_link(&child) else {
                            continue;
                        };
                        let Some(target) = target.to_str().map(str::to_owned) else {
                            continue;
                        };
                        HostEntry::Symlink { path, target }
                    } else {
                        continue;
                    };
                    let line = format!("{entry:?} {} {}\n", meta.mtime(), meta.ino());
                    fingerprint.update(line.as_bytes());
                    entries.push(entry);
                }
                // Depth-first in name order: push in reverse.
                stack.extend(subdirectories.into_iter().rev());
            }
        }
        let summary = format!(
            "{self:?} entries={} bytes={total} listing={}",
            entries.len(),
            hex::encode(fingerprint.finalize())
        );
        (entries, summary)
    }
}

fn write_host_entry(w: &mut LayerWriter, prefix: &str, entry: &HostEntry) -> io::Result<()> {
    match entry {
        HostEntry::Dir { path, mode } => w.dir(&format!("{prefix}{path}"), *mode),
        HostEntry::File { path, mode, size } => {
            // A file that shrank since the scan is padded with zeros, one that grew is cut.
            let file = std::fs::File::open(Path::new("/").join(path))?;
            let contents = file.take(*size).chain(io::repeat(0));
            w.file(&format!("{prefix}{path}"), *mode, *size, contents)
        }
        HostEntry::Symlink { path, target } => w.symlink(&format!("{prefix}{path}"), target),
    }
}

/// The host files of `selection`; with `copies > 1`, each copy under `big/copyN/`.
/// With `root_filesystem`, the layer also has what makes it look like a Debian root:
/// merged-/usr symlinks, `/etc/os-release`, `/tmp`, …
pub fn host_tree(
    name: &str,
    selection: &HostSelection,
    copies: u32,
    root_filesystem: bool,
) -> io::Result<BuiltLayer> {
    let (entries, summary) = selection.scan();
    let recipe = format!("host-tree copies={copies} root={root_filesystem} {summary}");
    cached_layer(name, &recipe, 6, |w| {
        if root_filesystem {
            for (link, target) in [
                ("bin", "usr/bin"),
                ("sbin", "usr/sbin"),
                ("lib", "usr/lib"),
                ("lib64", "usr/lib64"),
            ] {
                w.symlink(link, target)?;
            }
            for dir in [
                "dev", "etc", "home", "proc", "root", "run", "sys", "tmp", "var", "var/tmp",
            ] {
                let mode = if dir.ends_with("tmp") { 0o1777 } else { 0o755 };
                w.dir(dir, mode)?;
            }
            let os_release = b"PRETTY_NAME=\"bb-container-expander bench image\"\nID=debian\n";
            w.file(
                "etc/os-release",
                0o644,
                os_release.len() as u64,
                &os_release[..],
            )?;
        }
        if copies <= 1 {
            for entry in &entries {
                write_host_entry(w, "", entry)?;
            }
        } else {
            w.dir("big", 0o755)?;
            for copy in 1..=copies {
                let prefix = format!("big/copy{copy}/");
                w.dir(prefix.trim_end_matches('/'), 0o755)?;
                for entry in &entries {
                    write_host_entry(w, &prefix, entry)?;
                }
            }
        }
        Ok(())
    })
}

/// A minimal root file system: `/usr/bin/env` (the host's) and little else.
pub fn tiny() -> io::Result<BuiltLayer> {
    let env = std::fs::read("/usr/bin/env")?;
    let recipe = format!("tiny env={}", hex::encode(Sha256::digest(&env)));
    cached_layer("tiny", &recipe, 6, |w| {
        w.symlink("bin", "usr/bin")?;
        for dir in ["etc", "tmp", "usr", "usr/bin"] {
            w.dir(dir, if dir == "tmp" { 0o1777 } else { 0o755 })?;
        }
        let os_release = b"PRETTY_NAME=\"bb-container-expander bench image (tiny)\"\n";
        w.file(
            "etc/os-release",
            0o644,
            os_release.len() as u64,
            &os_release[..],
        )?;
        w.file("usr/bin/env", 0o755, env.len() as u64, env.as_slice())
    })
}
