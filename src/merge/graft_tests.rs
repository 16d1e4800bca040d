//! Tests of `merger.rs`, `graft.rs` and `stack.rs`, on trees stored in an in-memory CAS
//! and read through a source that records what it reads.

use super::directory_source::DirectorySource;
use super::graft::graft;
use super::load::load_from;
use super::merger::{MergeOptions, MergePolicy, MergedTree};
use super::stack::stack_images;
use super::test_support::*;
use crate::proto::reapi;
use crate::tree::test_support::*;
use crate::tree::{encode, error_name};
use tonic::Status;

/// Merges `upper` over `lower` at the root: a graft at the empty mount path.
async fn merge(
    source: &dyn DirectorySource,
    lower: &reapi::Digest,
    upper: &reapi::Digest,
    options: &MergeOptions,
) -> Result<MergedTree, Status> {
    graft(source, lower, upper, "", options).await
}

#[tokio::test]
async fn graft_at_the_root_merges_and_keeps_untouched_subtrees() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let input_root = s
        .store(vec![
            file("src/main.c", "int main"),
            file("etc/app.conf", "x"),
        ])
        .await;
    s.forget_reads();
    let merged = graft(&s, &image_root, &input_root, "", &strict())
        .await
        .unwrap();
    // usr/ is only in the image: it is neither read nor written again.
    let usr = subtree_digest(image(), "usr");
    assert!(!s.was_read(&usr));
    assert!(merged.directories.iter().all(|(d, _)| *d != usr));
    // Written: the root and etc/ (the only directory both trees have).
    assert_eq!(merged.directories.len(), 2);
    assert_eq!(merged.directories.last().unwrap().0, merged.root);
    let got = s.listing_of(&merged).await;
    assert_eq!(
        got,
        lines(&[
            "bin -> usr/bin",
            "etc/",
            "etc/app.conf=x",
            "etc/passwd=root",
            "src/",
            "src/main.c=int main",
            "usr/",
            "usr/bin/",
            "usr/bin/env*=env",
            "usr/lib/",
            "usr/lib/libc.so=libc",
            "workspace/",
        ])
    );
    // Same digest as building the merged tree in memory.
    let mut all = image();
    all.extend([file("src/main.c", "int main"), file("etc/app.conf", "x")]);
    let expected = encode(&apply_all(vec![all]).unwrap(), F, MAX).unwrap().root;
    assert_eq!(merged.root, expected);
}

#[tokio::test]
async fn graft_under_a_missing_mount_path_creates_it_and_reads_only_the_root() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let input_root = s
        .store(vec![file("BUILD", "b"), file("pkg/a.c", "a")])
        .await;
    s.forget_reads();
    let merged = graft(&s, &image_root, &input_root, "b/work", &strict())
        .await
        .unwrap();
    assert_eq!(*s.reads.lock(), vec![image_root.clone()]);
    // The input root is placed as it is; the root, b/ are new.
    assert_eq!(merged.directories.len(), 2);
    s.upload(merged.directories.clone()).await;
    let merged_tree = load_from(&s, &merged.root).await.unwrap();
    let placed = merged_tree.directory_at(&["b", "work"]).unwrap();
    assert_eq!(encode(placed, F, MAX).unwrap().root, input_root);
}

#[tokio::test]
async fn graft_into_an_existing_empty_directory() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let input_root = s.store(vec![file("a", "1")]).await;
    let merged = graft(&s, &image_root, &input_root, "workspace", &strict())
        .await
        .unwrap();
    let got = s.listing_of(&merged).await;
    assert!(got.contains(&"workspace/a=1".to_string()));
    // The empty image directory is replaced by the input root itself.
    assert_eq!(merged.directories.len(), 1);
}

#[tokio::test]
async fn strict_accepts_identical_leaves_and_rejects_other_clashes() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let same = s
        .store(vec![file("etc/passwd", "root"), symlink("bin", "usr/bin")])
        .await;
    let merged = graft(&s, &image_root, &same, "", &strict()).await.unwrap();
    assert_eq!(merged.root, image_root);

    let cases = [
        (
            vec![dir("bin/tool")],
            "InputRootConflict: \"bin\": the image has a symlink and the input root has a directory",
        ),
        (
            vec![file("etc/passwd", "other")],
            "InputRootConflict: \"etc/passwd\": the image has a regular file and the input root has a different regular file",
        ),
        (
            vec![exe("etc/passwd", "root")],
            "InputRootConflict: \"etc/passwd\": the image has a regular file and the input root has a different regular file",
        ),
        (
            vec![file("usr", "x")],
            "InputRootConflict: \"usr\": the image has a directory and the input root has a regular file",
        ),
        (
            vec![symlink("workspace", "/tmp")],
            "InputRootConflict: \"workspace\": the image has a directory and the input root has a symlink",
        ),
    ];
    for (input, message) in cases {
        let input_root = s.store(input).await;
        let err = graft(&s, &image_root, &input_root, "", &strict())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), message);
    }
}

#[tokio::test]
async fn input_wins_replaces_image_nodes() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let input_root = s
        .store(vec![
            file("bin/tool", "t"),
            file("usr", "x"),
            file("etc/passwd", "mine"),
        ])
        .await;
    let merged = graft(&s, &image_root, &input_root, "", &input_wins())
        .await
        .unwrap();
    assert_eq!(
        s.listing_of(&merged).await,
        lines(&[
            "bin/",
            "bin/tool=t",
            "etc/",
            "etc/passwd=mine",
            "usr=x",
            "workspace/",
        ])
    );
}

#[tokio::test]
async fn mount_path_checks() {
    let s = Recording::new();
    let image_root = s
        .store(vec![
            symlink("w", "x"),
            dir("x"),
            file("f", "1"),
            dir("d/e"),
        ])
        .await;
    let input_root = s.store(vec![file("a", "1")]).await;
    let cases = [
        (
            "w/sub",
            "MountPathThroughSymlink: mount path \"w/sub\": \"w\" is a symlink in the image",
        ),
        (
            "w",
            "MountPathNotADirectory: mount path \"w\": \"w\" is a symlink in the image",
        ),
        (
            "f/x",
            "MountPathNotADirectory: mount path \"f/x\": \"f\" is a regular file in the image",
        ),
        (
            "d/e/../../..",
            "PathTraversal: mount path \"d/e/../../..\" climbs above the root",
        ),
    ];
    for (mount_path, message) in cases {
        let err = graft(&s, &image_root, &input_root, mount_path, &strict())
            .await
            .unwrap_err();
        assert_eq!(err.message(), message);
    }
    // Slashes and `.` parts are tolerated.
    let merged = graft(&s, &image_root, &input_root, "/d/./e/", &strict())
        .await
        .unwrap();
    assert!(s.listing_of(&merged).await.contains(&"d/e/a=1".to_string()));
}

#[tokio::test]
async fn identical_subtrees_are_not_read() {
    let s = Recording::new();
    let shared = vec![file("lib/x/y", "1"), file("lib/x/z", "2")];
    let mut a = shared.clone();
    a.push(file("lib/only_image", "3"));
    let mut b = shared.clone();
    b.push(file("lib/only_input", "4"));
    let image_root = s.store(a).await;
    let input_root = s.store(b).await;
    s.forget_reads();
    let merged = merge(&s, &image_root, &input_root, &strict())
        .await
        .unwrap();
    let x = subtree_digest(shared, "lib/x");
    assert!(!s.was_read(&x));
    assert!(s
        .listing_of(&merged)
        .await
        .contains(&"lib/only_input=4".to_string()));
}

#[tokio::test]
async fn input_node_properties_are_kept() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let properties = reapi::NodeProperties {
        unix_mode: Some(crate::proto::protobuf::UInt32Value { value: 0o755 }),
        ..Default::default()
    };
    let input = reapi::Directory {
        files: vec![reapi::FileNode {
            name: "tool".into(),
            digest: Some(content_digest("t")),
            is_executable: true,
            node_properties: Some(properties.clone()),
        }],
        ..Default::default()
    };
    let input_root = crate::blobstore::put_message(s.cas.as_ref(), &instance(), &input)
        .await
        .unwrap();
    let merged = graft(&s, &image_root, &input_root, "", &strict())
        .await
        .unwrap();
    s.upload(merged.directories).await;
    let root = s.get_directory(&merged.root).await.unwrap();
    let tool = root.files.iter().find(|f| f.name == "tool").unwrap();
    assert_eq!(tool.node_properties, Some(properties));
}

#[tokio::test]
async fn merged_directory_too_large() {
    let s = Recording::new();
    let image_root = s.store(image()).await;
    let many: Vec<_> = (0..50)
        .map(|i| file(&format!("etc/f{i:02}"), "x"))
        .collect();
    let input_root = s.store(many).await;
    let options = MergeOptions {
        policy: MergePolicy::Strict,
        max_message_size: 2000,
    };
    let err = graft(&s, &image_root, &input_root, "", &options)
        .await
        .unwrap_err();
    assert_eq!(error_name(&err), "DirectoryTooLarge");
    assert!(
        err.message()
            .starts_with("DirectoryTooLarge: merged directory \"etc\" with 51 children"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn stacking_images_later_wins_and_directories_merge() {
    let s = Recording::new();
    let base = s
        .store(vec![
            file("a/x", "1"),
            file("a/y", "2"),
            dir("lib/real"),
            file("keep", "k"),
        ])
        .await;
    let middle = s
        .store(vec![
            file("a/x", "3"),
            symlink("lib", "usr/lib"),
            file("m/z", "z"),
        ])
        .await;
    let top = s.store(vec![file("m", "file now"), file("a/w", "4")]).await;
    let stacked = stack_images(&s, &[base, middle, top], MAX).await.unwrap();
    // Only what the final tree uses is listed.
    let mut reachable = std::collections::HashSet::new();
    reachable.insert(stacked.root.clone());
    for (digest, bytes) in stacked.directories.iter().rev() {
        assert!(reachable.contains(digest), "unreachable directory listed");
        let message = <reapi::Directory as prost::Message>::decode(bytes.clone()).unwrap();
        reachable.extend(message.directories.into_iter().filter_map(|d| d.digest));
    }
    assert_eq!(
        s.listing_of(&stacked).await,
        lines(&[
            "a/",
            "a/w=4",
            "a/x=3",
            "a/y=2",
            "keep=k",
            "lib -> usr/lib",
            "m=file now",
        ])
    );
    let empty = stack_images(&s, &[], MAX).await.unwrap();
    assert_eq!(empty.root, F.empty_digest());
}

#[tokio::test]
async fn grafting_trees_of_the_deepest_allowed_depth() {
    let s = Recording::new();
    let deep = vec!["d"; crate::tree::MAX_DEPTH - 1].join("/");
    let image_root = s.store(vec![file(&format!("{deep}/image"), "1")]).await;
    let input_root = s.store(vec![file(&format!("{deep}/input"), "2")]).await;
    let merged = graft(&s, &image_root, &input_root, "", &strict())
        .await
        .unwrap();
    assert_eq!(merged.directories.len(), crate::tree::MAX_DEPTH);
}
