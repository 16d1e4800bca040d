//! Tests of `checks.rs`, on merged trees stored in an in-memory CAS.

use super::checks::{check_output_paths, check_usr_bin_env, check_working_directory};
use super::graft::graft;
use super::test_support::*;
use crate::tree::test_support::*;

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
