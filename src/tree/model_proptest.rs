//! Property test of `apply.rs` against a deliberately naive reference model: a flat map
//! from path to node, with symlink resolution done by rewriting the path string and
//! scanning again from the start. Random small layers (files, directories, symlinks
//! relative, absolute and climbing, whiteouts, opaque markers, hard links, specials) are
//! applied to both; the final trees, or the names of the errors, must agree. The
//! canonical digest of the incrementally applied tree (with memos from earlier
//! encodings) must also equal that of a tree built from the model from scratch.

use super::apply::apply_layer;
use super::directory::{Directory, Node};
use super::encode::encode;
use super::error::error_name;
use super::test_support::*;
use crate::proto::cache::{layer_entry::Kind, LayerEntry};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq)]
enum M {
    Dir,
    File(String, bool),
    Link(String),
}

type Model = BTreeMap<Vec<String>, M>;

fn get<'a>(model: &'a Model, path: &[String]) -> Option<&'a M> {
    if path.is_empty() {
        return Some(&M::Dir);
    }
    model.get(path)
}

fn is_dir(model: &Model, path: &[String]) -> bool {
    get(model, path) == Some(&M::Dir)
}

/// Removes `path` and everything below it.
fn remove_tree(model: &mut Model, path: &[String]) {
    model.retain(|k, _| !k.starts_with(path));
}

fn mkdirs(model: &mut Model, path: &[String]) {
    for i in 1..=path.len() {
        model.entry(path[..i].to_vec()).or_insert(M::Dir);
    }
}

/// Resolves a directory path: find the first symlink, splice its target in, start
/// again. Missing parts count as directories.
fn resolve(model: &Model, parts: &[String]) -> Result<Vec<String>, &'static str> {
    let mut path = parts.to_vec();
    let mut hops = 0;
    'again: loop {
        for i in 0..path.len() {
            match path[i].as_str() {
                "" | "." => {
                    path.remove(i);
                    continue 'again;
                }
                ".." => {
                    path.remove(i);
                    if i > 0 {
                        path.remove(i - 1);
                    }
                    continue 'again;
                }
                _ => {}
            }
            match get(model, &path[..=i]) {
                Some(M::Link(target)) => {
                    hops += 1;
                    if hops > 255 {
                        return Err("TooManySymlinks");
                    }
                    let mut new: Vec<String> = if target.starts_with('/') {
                        Vec::new()
                    } else {
                        path[..i].to_vec()
                    };
                    new.extend(target.split('/').map(str::to_owned));
                    new.extend(path[i + 1..].iter().cloned());
                    path = new;
                    continue 'again;
                }
                Some(M::File(..)) => return Err("NotADirectory"),
                _ => {}
            }
        }
        return Ok(path);
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn child(parent: &[String], name: &str) -> Vec<String> {
    let mut p = parent.to_vec();
    p.push(name.to_owned());
    p
}

fn content_of(entry: &LayerEntry) -> String {
    match &entry.kind {
        Some(Kind::File(f)) => CONTENTS
            .iter()
            .find(|c| Some(content_digest(c)) == f.digest)
            .expect("generated content")
            .to_string(),
        _ => unreachable!(),
    }
}

fn model_apply(model: &mut Model, entries: &[LayerEntry]) -> Result<(), &'static str> {
    let snapshot = model.clone();
    let mut work = model.clone();
    let mut removals = Vec::new();
    let mut implied = Vec::new();
    for e in entries {
        let parts = split(&e.path);
        let (dir, name) = match &e.kind {
            Some(Kind::Whiteout(_)) => {
                let (name, dir) = parts.split_last().ok_or("InvalidWhiteout")?;
                (dir.to_vec(), Some(name.clone()))
            }
            Some(Kind::Opaque(_)) => (parts, None),
            _ => continue,
        };
        match resolve(&snapshot, &dir) {
            Ok(real) => {
                if is_dir(&snapshot, &real) {
                    removals.push((real.clone(), name));
                }
                implied.push(real);
            }
            Err("NotADirectory") => {}
            Err(e) => return Err(e),
        }
    }
    for (dir, name) in removals {
        if !is_dir(&work, &dir) {
            continue;
        }
        match name {
            Some(name) => remove_tree(&mut work, &child(&dir, &name)),
            None => work.retain(|k, _| !(k.len() > dir.len() && k.starts_with(&dir))),
        }
    }
    for p in implied {
        mkdirs(&mut work, &p);
    }
    let mut specials: HashSet<Vec<String>> = HashSet::new();
    for e in entries {
        let kind = e.kind.as_ref().unwrap();
        if matches!(kind, Kind::Whiteout(_) | Kind::Opaque(_)) {
            continue;
        }
        let parts = split(&e.path);
        let Some((name, parent)) = parts.split_last() else {
            continue;
        };
        let parent = resolve(&work, parent)?;
        let full = child(&parent, name);
        specials.remove(&full);
        let node = match kind {
            Kind::Directory(_) => {
                if is_dir(&work, &full) {
                    continue;
                }
                M::Dir
            }
            Kind::File(f) => M::File(content_of(e), f.is_executable),
            Kind::Symlink(s) => M::Link(s.target.clone()),
            Kind::Special(_) => {
                mkdirs(&mut work, &parent);
                remove_tree(&mut work, &full);
                specials.insert(full);
                continue;
            }
            Kind::HardLink(h) => {
                remove_tree(&mut work, &full);
                let target = split(&h.target);
                let (tname, tparent) = target.split_last().ok_or("DanglingHardlink")?;
                let tparent = match resolve(&work, tparent) {
                    Ok(p) => p,
                    Err("NotADirectory") => return Err("DanglingHardlink"),
                    Err(e) => return Err(e),
                };
                let tfull = child(&tparent, tname);
                match get(&work, &tfull) {
                    Some(M::File(c, _)) => M::File(c.clone(), h.is_executable),
                    Some(M::Link(t)) => M::Link(t.clone()),
                    Some(M::Dir) => return Err("HardlinkToDirectory"),
                    None if specials.contains(&tfull) => {
                        mkdirs(&mut work, &parent);
                        continue;
                    }
                    None => return Err("DanglingHardlink"),
                }
            }
            Kind::Whiteout(_) | Kind::Opaque(_) => unreachable!(),
        };
        mkdirs(&mut work, &parent);
        remove_tree(&mut work, &full);
        work.insert(full, node);
    }
    *model = work;
    Ok(())
}

/// The in-memory tree as a flat map, for comparison with the model.
fn flatten(tree: &Directory) -> Model {
    let mut out = Model::new();
    let mut stack = vec![(tree, Vec::<String>::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for (name, node) in dir.children() {
            let path = child(&prefix, name);
            let m = match node {
                Node::Directory(d) => {
                    stack.push((d, path.clone()));
                    M::Dir
                }
                Node::File {
                    digest,
                    is_executable,
                } => M::File(
                    CONTENTS
                        .iter()
                        .find(|c| content_digest(c) == *digest)
                        .unwrap()
                        .to_string(),
                    *is_executable,
                ),
                Node::Symlink { target } => M::Link(target.clone()),
            };
            out.insert(path, m);
        }
    }
    out
}

/// A tree built from the model from scratch (no memos, no sharing).
fn build(model: &Model) -> Directory {
    let mut tree = Directory::new();
    for (path, m) in model {
        let (name, parent) = path.split_last().unwrap();
        let d = tree.make_directories(parent).unwrap();
        match m {
            M::Dir => {
                if d.get(name).is_none() {
                    d.insert(name.clone(), Node::empty_directory());
                }
            }
            M::File(c, x) => {
                d.insert(
                    name.clone(),
                    Node::File {
                        digest: content_digest(c),
                        is_executable: *x,
                    },
                );
            }
            M::Link(t) => {
                d.insert(name.clone(), Node::Symlink { target: t.clone() });
            }
        }
    }
    tree
}

const CONTENTS: [&str; 3] = ["0", "1", "2"];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(name(), 1..=3).prop_map(|p| p.join("/"))
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        name().prop_map(|n| format!("../{n}")),
        path().prop_map(|p| format!("/{p}")),
        path(),
        name().prop_map(|n| format!("../../{n}")),
        (path(), name()).prop_map(|(p, n)| format!("{p}/../{n}")),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("/".to_owned()),
    ]
}

fn entry() -> impl Strategy<Value = LayerEntry> {
    prop_oneof![
        4 => (path(), 0..CONTENTS.len(), any::<bool>()).prop_map(|(p, c, x)| if x {
            exe(&p, CONTENTS[c])
        } else {
            file(&p, CONTENTS[c])
        }),
        3 => path().prop_map(|p| dir(&p)),
        3 => (path(), target()).prop_map(|(p, t)| symlink(&p, &t)),
        2 => path().prop_map(|p| whiteout(&p)),
        1 => path().prop_map(|p| opaque(&p)),
        2 => (path(), path(), any::<bool>()).prop_map(|(p, t, x)| hardlink_with_mode(&p, &t, x)),
        1 => path().prop_map(|p| special(&p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn apply_layer_agrees_with_a_naive_model(
        layers in prop::collection::vec(prop::collection::vec(entry(), 0..8), 1..5)
    ) {
        let mut tree = Directory::new();
        let mut model = Model::new();
        for layer in &layers {
            let ours = apply_layer(&mut tree, &changeset(layer.clone()));
            let theirs = model_apply(&mut model, layer);
            match (ours, theirs) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(name)) => {
                    prop_assert_eq!(error_name(&e), name, "{}", e.message());
                    break;
                }
                (ours, theirs) => prop_assert!(
                    false,
                    "implementation gave {:?}, model gave {:?}",
                    ours.map_err(|e| e.message().to_owned()),
                    theirs
                ),
            }
            prop_assert_eq!(flatten(&tree), model.clone());
            // Fill the memos, so that a stale one would show up after the next layer.
            encode(&tree, F, 1 << 20).unwrap();
        }
        prop_assert_eq!(
            encode(&tree, F, 1 << 20).unwrap().root,
            encode(&build(&model), F, 1 << 20).unwrap().root
        );
    }
}
