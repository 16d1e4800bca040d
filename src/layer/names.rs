//! Entry names: cutting at NUL (docs/design/layers.md#names), UTF-8 (docs/design/layers.md#names), lexical normalisation of
//! entry paths and hard-link targets (docs/design/layers.md#path-normalisation), and recognising whiteouts, opaque
//! markers and legacy AUFS metadata (docs/design/layers.md#whiteouts).
//!
//! Errors are plain messages; the caller adds the entry name and the status code.

/// The part of a name before its first NUL byte.
pub(crate) fn cut_at_nul(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == 0) {
        Some(i) => &name[..i],
        None => name,
    }
}

/// The name as UTF-8, which REAPI requires (docs/design/layers.md#names).
pub(crate) fn to_utf8<'a>(name: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(name)
        .map_err(|_| format!("Unrepresentable name: {what} is not valid UTF-8"))
}

/// Splits a path into its parts: leading `/` removed, empty and `.` parts dropped, `..`
/// dropping the previous part. An empty result is the root. A `..` that would leave the
/// root is an error (docs/design/layers.md#path-normalisation). Purely lexical: nothing is resolved.
pub(crate) fn normalize(path: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("Path traversal".to_owned());
                }
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// Normalises a hard-link target (docs/design/layers.md#path-normalisation): like an entry path, but the root is not a
/// valid target.
pub(crate) fn normalize_link_target(target: &str) -> Result<String, String> {
    let parts = normalize(target).map_err(|e| format!("Hard link target {target:?}: {e}"))?;
    if parts.is_empty() {
        return Err(format!(
            "Hard link target {target:?} is empty or the image root"
        ));
    }
    if parts[0].starts_with(AUFS_PREFIX) {
        // docs/design/layers.md#whiteouts permits rejecting links into the ignored AUFS metadata.
        return Err(format!(
            "Hard link target {target:?} is legacy AUFS metadata, which is not supported"
        ));
    }
    Ok(parts.join("/"))
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const AUFS_PREFIX: &str = ".wh..wh.";

/// What a normalised entry name stands for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryName {
    /// The image root: the entry is skipped, whatever its type (docs/design/layers.md#path-normalisation).
    Root,
    /// Silently ignored: AUFS metadata at the root (docs/design/layers.md#whiteouts), or a whiteout of a name that
    /// cannot exist because it starts with `.wh.` itself (docs/design/layers.md#whiteouts).
    Ignored,
    /// A whiteout of this path (docs/design/layers.md#whiteouts).
    Whiteout(String),
    /// An opaque marker for this directory (docs/design/layers.md#opaque-directories); empty for the image root.
    Opaque(String),
    /// An ordinary entry at this path.
    Path(String),
}

/// Classifies a normalised path by its parts (docs/design/layers.md#whiteouts).
pub(crate) fn classify(parts: &[&str]) -> Result<EntryName, String> {
    let Some((last, parents)) = parts.split_last() else {
        return Ok(EntryName::Root);
    };
    if parts[0].starts_with(AUFS_PREFIX) && parts[0] != OPAQUE_MARKER {
        return Ok(EntryName::Ignored);
    }
    if let Some(part) = parents.iter().find(|p| p.starts_with(WHITEOUT_PREFIX)) {
        return Err(format!(
            "Invalid layer: whiteout name {part:?} is used as a parent directory"
        ));
    }
    let join = |name: Option<&str>| {
        let mut path = parents.join("/");
        if let Some(name) = name {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(name);
        }
        path
    };
    if *last == OPAQUE_MARKER {
        // At the root this is the empty path, the only entry path that may be empty.
        return Ok(EntryName::Opaque(join(None)));
    }
    if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX) {
        if matches!(name, "" | "." | "..") {
            return Err(format!(
                "Invalid whiteout {last:?}: it names nothing to remove"
            ));
        }
        if name.starts_with(WHITEOUT_PREFIX) {
            return Ok(EntryName::Ignored);
        }
        return Ok(EntryName::Whiteout(join(Some(name))));
    }
    Ok(EntryName::Path(join(Some(last))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_str(path: &str) -> Result<EntryName, String> {
        classify(&normalize(path)?)
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("/a//./b/").unwrap(), ["a", "b"]);
        assert_eq!(normalize("a/../b").unwrap(), ["b"]);
        assert_eq!(normalize("a\\b").unwrap(), ["a\\b"]);
        assert!(normalize("./").unwrap().is_empty());
        assert!(normalize("").unwrap().is_empty());
        assert_eq!(normalize("../x").unwrap_err(), "Path traversal");
        assert_eq!(normalize("etc/../../x").unwrap_err(), "Path traversal");
    }

    #[test]
    fn whiteouts() {
        assert_eq!(
            classify_str("dne/../.wh.etc").unwrap(),
            EntryName::Whiteout("etc".into())
        );
        assert_eq!(
            classify_str("a/b/.wh.c").unwrap(),
            EntryName::Whiteout("a/b/c".into())
        );
        assert_eq!(
            classify_str("./a/.wh..wh..opq").unwrap(),
            EntryName::Opaque("a".into())
        );
        assert_eq!(classify_str("../.wh.x").unwrap_err(), "Path traversal");
        assert_eq!(
            classify_str("a/.wh.").unwrap_err(),
            "Invalid whiteout \".wh.\": it names nothing to remove"
        );
        assert!(classify_str("a/.wh..").is_err());
        assert!(classify_str("a/.wh...").is_err());
        assert_eq!(
            classify_str(".wh.etc/somefile").unwrap_err(),
            "Invalid layer: whiteout name \".wh.etc\" is used as a parent directory"
        );
        assert_eq!(classify_str("d/.wh..wh.foo").unwrap(), EntryName::Ignored);
        assert_eq!(
            classify_str("/.wh..wh..opq").unwrap(),
            EntryName::Opaque(String::new())
        );
    }

    #[test]
    fn aufs_metadata_and_root() {
        assert_eq!(
            classify_str(".wh..wh.plnk/123.45").unwrap(),
            EntryName::Ignored
        );
        assert_eq!(classify_str("/.wh..wh.aufs").unwrap(), EntryName::Ignored);
        assert_eq!(classify_str(".wh..wh.orph/").unwrap(), EntryName::Ignored);
        assert_eq!(classify_str("./").unwrap(), EntryName::Root);
        assert_eq!(classify_str("/").unwrap(), EntryName::Root);
        assert_eq!(classify_str("a/b").unwrap(), EntryName::Path("a/b".into()));
    }

    #[test]
    fn link_targets() {
        assert_eq!(normalize_link_target("/usr/bin/x").unwrap(), "usr/bin/x");
        assert_eq!(
            normalize_link_target("../x").unwrap_err(),
            "Hard link target \"../x\": Path traversal"
        );
        assert!(normalize_link_target("/").is_err());
        assert!(normalize_link_target(".wh..wh.plnk/1").is_err());
    }

    #[test]
    fn nul_and_utf8() {
        assert_eq!(cut_at_nul(b"abc\0def\0"), b"abc");
        assert_eq!(
            to_utf8(b"\xff", "path").unwrap_err(),
            "Unrepresentable name: path is not valid UTF-8"
        );
    }
}
