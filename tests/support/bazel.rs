//! A Bazel client (Debian `bazel-bootstrap`, 4.2.3) for end-to-end tests: a copy of a
//! workspace in a temporary directory, an output user root of its own, every flag on
//! the command line; its server is shut down on drop.
//!
//! ```ignore
//! let bazel = BazelClient::new("tests/bazel-ws");
//! let (ok, output) = bazel.run(&["build".into(), "//:target".into()]).await;
//! let summary = process_summary(&output); // {"remote cache hit": 2, "internal": 1}
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous limit on one Bazel command (its first start loads a JVM on a busy machine).
pub const BAZEL_TIMEOUT: Duration = Duration::from_secs(900);

pub struct BazelClient {
    // Dropped after the server is shut down (fields drop after `drop`).
    scratch: tempfile::TempDir,
}

impl BazelClient {
    /// Copies the files of `workspace` (relative to the repository) to a temporary
    /// directory, so that Bazel's symlinks and outputs stay out of the tree.
    pub fn new(workspace: &str) -> Self {
        super::require_program("bazel", "bazel-bootstrap");
        let scratch = tempfile::tempdir().expect("tempdir");
        let copy = scratch.path().join("ws");
        std::fs::create_dir(&copy).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(workspace);
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
            }
        }
        Self { scratch }
    }

    /// The workspace copy.
    pub fn workspace(&self) -> PathBuf {
        self.scratch.path().join("ws")
    }

    /// `bazel-bin/<name>` of the workspace.
    pub fn output(&self, name: &str) -> PathBuf {
        self.workspace().join("bazel-bin").join(name)
    }

    fn command(&self, arguments: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new("bazel");
        command
            .current_dir(self.workspace())
            // The system bazelrc stays: Debian's points Bazel at its install base.
            .arg("--nohome_rc")
            .arg(format!(
                "--output_user_root={}",
                self.scratch.path().join("output-user-root").display()
            ))
            // A server left behind by a crashed test goes away by itself.
            .arg("--max_idle_secs=900")
            .args(arguments)
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs a Bazel command; returns whether it succeeded and its output (stdout, then
    /// stderr), which is also printed.
    pub async fn run(&self, arguments: &[String]) -> (bool, String) {
        let started = Instant::now();
        let mut command = tokio::process::Command::from(self.command(arguments));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(BAZEL_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("bazel {arguments:?} did not finish in {BAZEL_TIMEOUT:?}"))
            .expect("run bazel");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "--- bazel {} ({:.1} s, {}):\n{text}",
            arguments.first().map(String::as_str).unwrap_or(""),
            started.elapsed().as_secs_f64(),
            output.status
        );
        (output.status.success(), text)
    }
}

impl Drop for BazelClient {
    fn drop(&mut self) {
        let _ = self.command(&["shutdown".into()]).output();
    }
}

/// The counts of Bazel's last "N processes: A internal, B remote cache hit, …." line,
/// by kind ("internal", "remote", "remote cache hit", …).
pub fn process_summary(output: &str) -> HashMap<String, u32> {
    let Some((_, counts)) = output.lines().rev().find_map(|line| {
        line.split_once(" processes: ")
            .or_else(|| line.split_once(" process: "))
    }) else {
        panic!("no process summary in Bazel's output:\n{output}");
    };
    counts
        .trim_end_matches('.')
        .split(", ")
        .filter_map(|item| {
            let (count, kind) = item.trim().split_once(' ')?;
            Some((kind.to_owned(), count.parse().ok()?))
        })
        .collect()
}
