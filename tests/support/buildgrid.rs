//! A real REAPI scheduler for tests: BuildGrid 0.9.1 (PyPI) serving only the instance
//! [`INSTANCE_NAME`], its scheduler on a private PostgreSQL cluster, and one chroot
//! worker of this repository (`scripts/buildgrid-worker.py`) taking its leases, all on
//! free 127.0.0.1 ports. `scripts/buildgrid.sh` does the work: `install` once (the
//! venv under `target/`, Debian's `postgresql`), then `start`/`stop` per test.
//!
//! BuildGrid serves Execution, Bots, CAS, ByteStream and ActionCache on
//! `127.0.0.1:PORT`; any other instance name gets INVALID_ARGUMENT. The worker
//! advertises `runner=chroot`, a property BuildGrid matches, as
//! `addPlatformProperties` of the expander adds it; `container-image` is not a known
//! property, so an action still naming an image is refused rather than run.
//!
//! ```ignore
//! let buildgrid = BuildGrid::start();
//! buildgrid.address() // "127.0.0.1:PORT": CAS, AC and scheduler
//! buildgrid.actions() // what the worker ran
//! ```
//!
//! Everything is stopped on drop, panics included; if the test process is killed, a
//! watchdog of the script stops it once the process is gone.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The only instance name BuildGrid serves.
pub const INSTANCE_NAME: &str = "main";

/// One lease the worker handled, as it recorded it.
#[derive(Clone, Debug, Deserialize)]
pub struct WorkerAction {
    /// `main/<job>`.
    pub lease: String,
    pub instance: String,
    /// The action's platform properties, `[name, value]`.
    #[serde(default)]
    pub platform: Vec<(String, String)>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub working_directory: String,
    /// The names at the top of the input root it chrooted into.
    #[serde(default)]
    pub input_root: Vec<String>,
    pub exit_code: Option<i32>,
    /// The lease's status code name (`OK`, `FAILED_PRECONDITION`, …).
    pub status: String,
    pub message: Option<String>,
}

/// A running BuildGrid with its PostgreSQL and worker.
pub struct BuildGrid {
    directory: tempfile::TempDir,
    address: String,
    stopped: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/buildgrid.sh")
}

impl BuildGrid {
    /// Starts everything; panics with the script's output (which names the install
    /// command when something is missing) if it cannot.
    pub fn start() -> Self {
        let directory = tempfile::Builder::new()
            .prefix("buildgrid-")
            .tempdir()
            .expect("tempdir");
        let output = Command::new(script())
            .arg("start")
            .arg(directory.path())
            .env("BUILDGRID_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("run scripts/buildgrid.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "scripts/buildgrid.sh start failed ({}); `scripts/buildgrid.sh install` \
             (as root: it installs postgresql) sets up what it needs:\n{text}",
            output.status
        );
        eprint!("{text}");
        let address = std::fs::read_to_string(directory.path().join("address"))
            .expect("BuildGrid's address")
            .trim()
            .to_owned();
        Self {
            directory,
            address,
            stopped: false,
        }
    }

    /// `127.0.0.1:PORT` of BuildGrid (CAS, AC, Execution, Bots).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Every lease the worker completed so far, in order.
    pub fn actions(&self) -> Vec<WorkerAction> {
        let path = self.directory.path().join("actions.jsonl");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad worker record {line:?}: {e}"))
            })
            .collect()
    }

    /// The worker's log (one line per lease, with its chroot) and the end of
    /// BuildGrid's, for failure messages and reports.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.directory.path().join(name)).unwrap_or_default()
        };
        let server = read("bgd.log");
        let lines: Vec<&str> = server.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "--- worker log:\n{}--- end of BuildGrid's log:\n{tail}\n",
            read("worker-1.log")
        )
    }

    /// Stops the worker, BuildGrid and PostgreSQL (also done on drop).
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        match Command::new(script())
            .arg("stop")
            .arg(self.directory.path())
            .output()
        {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "scripts/buildgrid.sh stop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot run scripts/buildgrid.sh stop: {e}"),
        }
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        self.stop();
    }
}
