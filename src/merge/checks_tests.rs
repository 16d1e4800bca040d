//! Tests of `checks.rs`, on merged trees stored in an in-memory CAS.

use super::checks::{
    check_output_paths, check_program, check_usr_bin_env, check_working_directory,
};
use super::graft::graft;
use super::load::load_from;
use super::required_directories::add_required_directories;
use super::test_support::*;
use crate::tree::test_support::*;
use tonic::Code;

#[tokio::test]
async fn working_directory_must_be_a_real_directory() {
    let s = Recording::new();
    let root = s
        .store(vec![dir("b/work/pkg"), symlink("l", "b"), file("f", "1")])
        .await;
    check_working_directory(&s, &root, "b/work/pkg")
        .await
        .unwrap();
    check_working_directory(&s, &root, "").await.unwrap();
    let cases = [
        (
            "b/missing/x",
            "WorkingDirectoryNotFound: working directory \"b/missing/x\": \"b/missing\" does not exist in the input root",
        ),
        (
            "l/work",
            "WorkingDirectoryNotADirectory: working directory \"l/work\": \"l\" is a symlink in the input root",
        ),
        (
            "f",
            "WorkingDirectoryNotADirectory: working directory \"f\": \"f\" is a regular file in the input root",
        ),
    ];
    for (wd, message) in cases {
        let err = check_working_directory(&s, &root, wd).await.unwrap_err();
        assert_eq!(err.message(), message);
    }
}

#[tokio::test]
async fn output_paths_must_not_be_blocked_by_or_be_image_content() {
    let s = Recording::new();
    let image_root = s
        .store(vec![
            dir("w"),
            symlink("w/out", "/tmp"),
            file("w/file", "1"),
            dir("w/existing"),
            file("lib/x", "1"),
        ])
        .await;
    let input_root = s.store(vec![file("from_input", "2"), dir("gen")]).await;
    let merged = graft(&s, &image_root, &input_root, "w", &strict())
        .await
        .unwrap();
    s.upload(merged.directories.clone()).await;
    let ok = ["new/deep/x", "gen/y", "from_input", "../lib/new"].map(String::from);
    check_output_paths(&s, &image_root, &merged.root, "w", &ok)
        .await
        .unwrap();
    let cases = [
        (
            "out/x",
            "OutputPathBlockedByImage: output path \"out/x\": \"w/out\" is a symlink in the merged input root, so the worker cannot create the output there",
        ),
        (
            "file/x",
            "OutputPathBlockedByImage: output path \"file/x\": \"w/file\" is a regular file in the merged input root, so the worker cannot create the output there",
        ),
        (
            "file",
            "OutputPathBlockedByImage: output path \"file\": \"w/file\" is a regular file in the image, so the worker cannot create the output there",
        ),
        (
            "existing",
            "OutputPathExistsInImage: output path \"existing\": \"w/existing\" is already a directory of the image",
        ),
        (
            "../lib/x",
            "OutputPathBlockedByImage: output path \"../lib/x\": \"lib/x\" is a regular file in the image, so the worker cannot create the output there",
        ),
    ];
    for (output, message) in cases {
        let err = check_output_paths(&s, &image_root, &merged.root, "w", &[output.to_string()])
            .await
            .unwrap_err();
        assert_eq!(err.message(), message);
    }
}

#[tokio::test]
async fn usr_bin_env_is_found_through_symlinks() {
    let s = Recording::new();
    let ok_images = [
        vec![exe("usr/bin/env", "env")],
        // usrmerge the other way round, and a busybox-style absolute symlink.
        vec![
            symlink("usr/bin", "../bin"),
            symlink("bin/env", "/bin/busybox"),
            exe("bin/busybox", "bb"),
        ],
        vec![symlink("usr", "/real/usr"), exe("real/usr/bin/env", "env")],
    ];
    for entries in ok_images {
        let root = s.store(entries).await;
        check_usr_bin_env(&s, &root).await.unwrap();
    }
    let bad_images = [
        (vec![file("etc/x", "1")], "does not exist"),
        (
            vec![file("usr/bin/env", "env")],
            "is a file that is not executable",
        ),
        (vec![dir("usr/bin/env")], "is a directory"),
        (
            vec![symlink("usr/bin/env", "env")],
            "resolves through too many symlinks",
        ),
        (vec![exe("usr/bin", "x")], "does not exist"),
    ];
    for (entries, problem) in bad_images {
        let root = s.store(entries).await;
        let err = check_usr_bin_env(&s, &root).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            format!(
                "MissingUsrBinEnv: \"usr/bin/env\" {problem} in the merged input root; bb_runner \
                 with chroot_into_input_root runs every command through /usr/bin/env (docs/design/directories.md#running-in-a-chroot)"
            )
        );
    }
}

/// A Debian-like tree: `bin -> usr/bin`, tools in usr/bin and usr/local/bin, inputs
/// under `exec/` with a tool in `exec/bazel-out/bin`.
fn debian_like() -> Vec<crate::proto::cache::LayerEntry> {
    vec![
        symlink("bin", "usr/bin"),
        exe("usr/bin/bash", "bash"),
        exe("usr/bin/env", "env"),
        file("usr/bin/not-executable", "x"),
        symlink("usr/bin/sh", "bash"),
        exe("usr/local/bin/tool", "tool"),
        dir("usr/lib/dir-on-path"),
        exe("exec/bazel-out/bin/gen", "gen"),
        exe("exec/pkg/local", "local"),
    ]
}

#[tokio::test]
async fn the_program_is_found_by_absolute_path_following_symlinks() {
    let s = Recording::new();
    let root = s.store(debian_like()).await;
    for program in [
        "/bin/bash",
        "/bin/sh",
        "/usr/bin/env",
        "/usr/local/bin/tool",
    ] {
        check_program(&s, &root, "exec", program, None)
            .await
            .unwrap();
    }
    let cases = [
        ("/bin/zsh", "program \"/bin/zsh\" does not exist"),
        (
            "/usr/bin/not-executable",
            "program \"/usr/bin/not-executable\" is a file that is not executable",
        ),
        ("/usr/lib", "program \"/usr/lib\" is a directory"),
    ];
    for (program, problem) in cases {
        let err = check_program(&s, &root, "exec", program, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            format!("ProgramNotFound: {problem} in the merged input root")
        );
    }
}

#[tokio::test]
async fn a_relative_program_is_found_from_the_working_directory() {
    let s = Recording::new();
    let root = s.store(debian_like()).await;
    check_program(&s, &root, "exec", "bazel-out/bin/gen", None)
        .await
        .unwrap();
    check_program(&s, &root, "exec/pkg", "./local", None)
        .await
        .unwrap();
    check_program(&s, &root, "exec/pkg", "../bazel-out/bin/gen", None)
        .await
        .unwrap();
    let err = check_program(&s, &root, "exec", "bazel-out/bin/missing", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "ProgramNotFound: program \"bazel-out/bin/missing\" (from working directory \"exec\") \
         does not exist in the merged input root"
    );
}

#[tokio::test]
async fn a_bare_program_is_searched_on_path() {
    let s = Recording::new();
    let root = s.store(debian_like()).await;
    // Through the image's PATH, the bin -> usr/bin symlink, and the default PATH.
    check_program(&s, &root, "exec", "tool", Some("/usr/local/bin:/usr/bin"))
        .await
        .unwrap();
    check_program(&s, &root, "exec", "sh", Some("/bin"))
        .await
        .unwrap();
    check_program(&s, &root, "exec", "bash", None)
        .await
        .unwrap();
    // A relative PATH entry is taken from the working directory; a non-executable or
    // a directory of that name is passed over.
    check_program(&s, &root, "exec", "gen", Some("bazel-out/bin"))
        .await
        .unwrap();
    let err = check_program(&s, &root, "exec", "tool", Some("/bin:/usr/sbin"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "ProgramNotFound: program \"tool\" is not an executable file in any directory of \
         PATH \"/bin:/usr/sbin\" in the merged input root"
    );
    let err = check_program(&s, &root, "exec", "not-executable", None)
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("the default PATH (the action sets none) \"/bin:/usr/bin\""),
        "{err:?}"
    );
    let err = check_program(&s, &root, "exec", "dir-on-path", Some("/usr/lib"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn required_directories_are_added_empty_where_missing() {
    let s = Recording::new();
    let root = s
        .store(vec![
            exe("usr/bin/env", "env"),
            dir("tmp"),
            file("tmp/keep", "1"),
            symlink("var/run", "../run"),
            dir("run"),
        ])
        .await;
    let paths = ["/dev", "/proc", "/tmp", "var/run", "/var/tmp/deep"].map(String::from);
    let added = add_required_directories(&s, &root, &paths).await.unwrap();
    assert_eq!(added.added, vec!["/dev", "/proc", "/var/tmp/deep"]);
    s.upload(added.directories.clone()).await;
    let listing = listing(&load_from(&s, &added.root).await.unwrap());
    for line in [
        "dev/",
        "proc/",
        "tmp/",
        "tmp/keep=1",
        "var/tmp/",
        "var/tmp/deep/",
        "usr/bin/env*=env",
    ] {
        assert!(
            listing.contains(&line.to_string()),
            "{line} not in {listing:?}"
        );
    }
    assert!(!listing.iter().any(|l| l.starts_with("dev/") && l != "dev/"));
    // Nothing to add: the same root, nothing written.
    let again = add_required_directories(&s, &added.root, &paths)
        .await
        .unwrap();
    assert_eq!(again.root, added.root);
    assert!(again.directories.is_empty() && again.added.is_empty());
}

#[tokio::test]
async fn a_required_directory_blocked_by_a_file_or_symlink_is_an_error() {
    let s = Recording::new();
    let cases = [
        (vec![file("tmp", "1")], "/tmp", "it is a regular file"),
        (
            vec![symlink("tmp", "nowhere")],
            "/tmp",
            "\"tmp\" is a symlink",
        ),
        (
            vec![file("var", "1")],
            "/var/tmp",
            "\"var\" is a regular file",
        ),
    ];
    for (entries, path, why) in cases {
        let root = s.store(entries).await;
        let err = add_required_directories(&s, &root, &[path.to_string()])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            format!("RequiredDirectoryBlocked: required directory {path:?} cannot be added: {why}")
        );
    }
}
