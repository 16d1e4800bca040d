//! A tiny userland for test images, taken from the host: the given programs, the shared
//! libraries and dynamic loader `ldd` lists for them, and every directory and symlink
//! on the way to each (`/lib64 -> usr/lib64` stays a symlink in the image), at the
//! same paths. Needs `ldd` (Debian package `libc-bin`); reads only the host.
//!
//! ```ignore
//! let mut entries = host_userland(&["/bin/bash", "/usr/bin/env"]);
//! entries.push(TarEntry::file("etc/marker", b"..."));
//! let layer = Layer::new(tar_bytes(&entries), Compression::Gzip, Flavor::Oci);
//! ```

use super::images::TarEntry;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Tar entries, parents before children, for `programs` and what they need to run.
pub fn host_userland(programs: &[&str]) -> Vec<TarEntry> {
    let mut entries = BTreeMap::new();
    for program in programs {
        let mut paths = vec![PathBuf::from(program)];
        paths.extend(shared_libraries(program));
        for path in paths {
            copy_path(&mut entries, &path);
        }
    }
    // BTreeMap order puts "a" before "a/b": parents come first in the tar.
    entries.into_values().collect()
}

/// The absolute paths of the libraries and loader `ldd` reports for `program`.
fn shared_libraries(program: &str) -> Vec<PathBuf> {
    let output = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ldd (Debian package libc-bin): {e}"));
    assert!(output.status.success(), "ldd {program} failed");
    // Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)",
    // "/lib64/ld-linux-x86-64.so.2 (0x…)" or "linux-vdso.so.1 (0x…)".
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let target = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            target.starts_with('/').then(|| PathBuf::from(target))
        })
        .collect()
}

/// Adds `path` to `entries` with each of its ancestors; a symlink met on the way is
/// recorded as such and followed, so its target is added too.
fn copy_path(entries: &mut BTreeMap<String, TarEntry>, path: &Path) {
    let mut pending = vec![path.to_path_buf()];
    let mut hops = 0;
    while let Some(path) = pending.pop() {
        hops += 1;
        assert!(hops < 64, "too many symlinks under {}", path.display());
        // `here` is the host path resolved so far, without symlinks.
        let mut here = PathBuf::from("/");
        let mut components = path.components();
        while let Some(component) = components.next() {
            match component {
                Component::Normal(name) => here.push(name),
                Component::ParentDir => {
                    here.pop();
                    continue;
                }
                _ => continue,
            }
            let name = here
                .strip_prefix("/")
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let metadata = std::fs::symlink_metadata(&here)
                .unwrap_or_else(|e| panic!("cannot inspect {}: {e}", here.display()));
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&here).unwrap();
                entries.insert(
                    name.clone(),
                    TarEntry::Symlink(name, target.to_string_lossy().into_owned()),
                );
                // Continue from the target, then with what remains of the path.
                here.pop();
                let mut next = here.join(target);
                next.extend(components);
                pending.push(next);
                break;
            }
            let mode = metadata.permissions().mode() & 0o7777;
            if metadata.is_dir() {
                entries
                    .entry(name.clone())
                    .or_insert(TarEntry::Dir(name, mode));
            } else {
                let contents = std::fs::read(&here)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", here.display()));
                entries.insert(name.clone(), TarEntry::File(name, contents, mode));
            }
        }
    }
}
