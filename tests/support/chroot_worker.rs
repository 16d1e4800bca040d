//! A minimal scheduler + worker for end-to-end tests: an in-process REAPI `Execution`
//! and `Capabilities` server on 127.0.0.1 that runs each action the way bb_worker with
//! bb_runner's `chrootIntoInputRoot` does.
//!
//! It is the scheduler fake of `bb_container_expander::testutil::scheduler` (instance
//! names served, operations kept by name, Capabilities) with a [`ChrootRunner`]: for
//! every Execute it reads the Action and Command from the shared CAS, materialises the
//! input root in a temporary directory (files 0555 or 0444, symlinks verbatim), creates
//! the parents of the output paths, and runs `/usr/bin/env -- <arguments>` chrooted into
//! the input root, with the working directory resolved inside the chroot and only the
//! Command's environment variables. Outputs, stdout and stderr go to the CAS; a
//! successful cacheable result goes to the Action Cache under the digest the worker
//! received. Operations are streamed as QUEUED, EXECUTING, then a done operation with the
//! ExecuteResponse; WaitExecution follows the live operation by name.
//!
//! chroot(2) needs root (CI runs as root). Every action run is recorded, so tests can
//! check what reached the worker.
//!
//! Executables are written by this very process, and a process forked while one of them
//! is still open for writing holds that descriptor until it execs; running the file in
//! that window fails with ETXTBSY ("Text file busy"). Bazel runs actions in parallel, so
//! one action's fork can catch another's materialisation. Two measures keep that out:
//! files are written under a shared [`FORK_GUARD`] that `spawn` takes exclusively (no
//! fork of this worker overlaps an open input file), and an action whose launcher
//! reports ETXTBSY before the command started (exit 126, "Text file busy") is started
//! again, a few times, for forks of other code in the test process.
//!
//! ```ignore
//! let storage = BlobstoreServer::start_in_memory().await;
//! let worker = ChrootWorker::start(storage.cas(), storage.ac(), &[""]).await;
//! // scheduler address for the expander: worker.address()
//! ```

use bb_container_expander::blobstore::{
    get_message, ActionCache, ContentAddressableStorage, Instance,
};
use bb_container_expander::digest::{encode_message, DigestFunction};
use bb_container_expander::proto::{reapi, rpc};
use bb_container_expander::testutil::scheduler::{
    Connections, Delivery, Job, Runner, SchedulerFake,
};
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

/// Name reported in `ExecutedActionMetadata.worker`.
pub const WORKER_NAME: &str = "bb-container-expander-test-chroot-worker";
/// Timeout of actions that set none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One action the worker ran (or tried to run).
#[derive(Clone, Debug)]
pub struct ExecutedAction {
    pub instance_name: String,
    /// The digest the worker received (the rewritten action's, behind the expander).
    pub action_digest: reapi::Digest,
    pub action: reapi::Action,
    pub command: reapi::Command,
    /// Exit code, or the error that kept the action from running.
    pub outcome: Result<i32, String>,
}

struct State {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    build_directory: tempfile::TempDir,
    next_id: AtomicU64,
    executed: Mutex<Vec<ExecutedAction>>,
}

/// The runner: each action in a task of its own, followed live by Execute and
/// WaitExecution.
pub struct ChrootRunner(Arc<State>);

#[tonic::async_trait]
impl Runner for ChrootRunner {
    fn name(&self) -> &'static str {
        "chroot-worker"
    }

    async fn execute(&self, job: Job) -> Result<Delivery, Status> {
        let Job {
            request,
            action_digest,
            operation,
            ..
        } = job;
        let function = DigestFunction::from_request(request.digest_function, &action_digest.hash)?;
        function.validate(&action_digest)?;
        let instance = Instance::new(request.instance_name, function);
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        operation.stage(reapi::execution_stage::Value::Queued);
        let state = self.0.clone();
        tokio::spawn(async move {
            operation.stage(reapi::execution_stage::Value::Executing);
            let response = state.run(&instance, &action_digest, id).await;
            operation.complete(response);
        });
        Ok(Delivery::Follow)
    }
}

/// A running worker (the scheduler fake of `testutil::scheduler` with a [`ChrootRunner`]);
/// stops serving when dropped.
pub struct ChrootWorker(SchedulerFake<ChrootRunner>);

impl ChrootWorker {
    /// Serves on a free 127.0.0.1 port, reading and writing blobs through `cas` and `ac`
    /// (typically those of a `BlobstoreServer` that the client and the expander use).
    /// Serves `instance_names` only: Execute and GetCapabilities for any other fail with
    /// INVALID_ARGUMENT, as from a real scheduler.
    pub async fn start(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
        instance_names: &[&str],
    ) -> Self {
        let runner = ChrootRunner(Arc::new(State {
            cas,
            ac,
            build_directory: tempfile::tempdir().expect("build directory"),
            next_id: AtomicU64::new(1),
            executed: Mutex::new(Vec::new()),
        }));
        Self(SchedulerFake::start(runner, instance_names, Connections::Direct).await)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.0.address()
    }

    /// Every action run so far, in the order they finished.
    pub fn executed(&self) -> Vec<ExecutedAction> {
        self.0.runner().0.executed.lock().clone()
    }
}

/// NOT_FOUND of an input blob becomes what bb_worker reports: FAILED_PRECONDITION with
/// a `PreconditionFailure` naming the blob, so that clients (and the expander) can upload
/// it again.
fn missing_input(what: &'static str, digest: &reapi::Digest) -> impl FnOnce(Status) -> Status {
    let digest = digest.clone();
    move |status| {
        if status.code() == Code::NotFound {
            bb_container_expander::status::missing_blobs(
                format!("Failed to obtain {what}: {}", status.message()),
                &[digest],
            )
        } else {
            status
        }
    }
}

/// The google.rpc.Status of an error, with its details.
fn to_rpc_status(status: &Status) -> rpc::Status {
    match rpc::Status::decode(status.details()) {
        Ok(decoded) if !status.details().is_empty() => decoded,
        _ => rpc::Status {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: vec![],
        },
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("Failed to {what} {}: {e}", path.display()))
}

/// `parent/name` for a valid single path component (REAPI, and Buildbarn's checks).
fn child(parent: &Path, name: &str, kind: &str) -> Result<PathBuf, Status> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{kind} {name:?} has an invalid name"
        )));
    }
    Ok(parent.join(name))
}

/// A relative path without `..`, `.` or root components, as output paths and the working
/// directory must be.
fn relative(path: &str, what: &str) -> Result<PathBuf, Status> {
    let p = Path::new(path);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p.to_path_buf())
    } else {
        Err(Status::invalid_argument(format!("Invalid {what} {path:?}")))
    }
}

/// Held shared while an input file is open for writing, exclusively while forking.
static FORK_GUARD: std::sync::RwLock<()> = std::sync::RwLock::new(());
/// How often an action whose launcher hit ETXTBSY is started again.
const TEXT_FILE_BUSY_ATTEMPTS: u32 = 5;

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Status> {
    let _no_fork = FORK_GUARD.read().unwrap_or_else(|e| e.into_inner());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error("create", path, e))?;
    file.write_all(data).map_err(|e| io_error("write", path, e))
}

/// Runs `/usr/bin/env -- <arguments>` chrooted into `root`, in `working_directory`,
/// with only the Command's environment, and collects its output.
async fn run_chrooted(
    command: &reapi::Command,
    root: &Path,
    working_directory: &Path,
    timeout: Duration,
) -> Result<std::process::Output, Status> {
    let mut process = tokio::process::Command::new("/usr/bin/env");
    process
        .arg("--")
        .args(&command.arguments)
        .env_clear()
        .envs(
            command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let chroot = root.to_path_buf();
    let inner_working_directory = Path::new("/").join(working_directory);
    // SAFETY: runs between fork and exec; chroot and chdir with short paths use a
    // stack buffer in std and take no locks.
    unsafe {
        process.pre_exec(move || {
            std::os::unix::fs::chroot(&chroot)?;
            std::env::set_current_dir(&inner_working_directory)
        });
    }
    let child = {
        let _forking = FORK_GUARD.write().unwrap_or_else(|e| e.into_inner());
        process.spawn()
    }
    .map_err(|e| {
        Status::failed_precondition(format!(
            "Failed to start /usr/bin/env -- {:?} chrooted into the input root: {e}",
            command.arguments
        ))
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => {
            output.map_err(|e| Status::internal(format!("Failed to wait for the command: {e}")))
        }
        Err(_) => Err(Status::deadline_exceeded(format!(
            "Command did not finish within {timeout:?}"
        ))),
    }
}

/// Whether `env` failed to exec the command because the file was still open for
/// writing in some process (exit 126 with its ETXTBSY message, nothing else printed).
fn launcher_hit_text_file_busy(output: &std::process::Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    output.status.code() == Some(126)
        && output.stdout.is_empty()
        && stderr.starts_with("/usr/bin/env: ")
        && stderr.trim_end().ends_with("Text file busy")
        && stderr.lines().count() == 1
}

impl State {
    /// Runs one action and always returns an ExecuteResponse (errors in its status).
    async fn run(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        id: u64,
    ) -> reapi::ExecuteResponse {
        let directory = self.build_directory.path().join(id.to_string());
        let mut record = ExecutedAction {
            instance_name: instance.name.clone(),
            action_digest: action_digest.clone(),
            action: Default::default(),
            command: Default::default(),
            outcome: Err(String::new()),
        };
        let result = self
            .run_in(instance, action_digest, &directory, &mut record)
            .await;
        // The materialised files are read-only; as root, removal works all the same.
        let _ = std::fs::remove_dir_all(&directory);
        record.outcome = match &result {
            Ok(r) => Ok(r.exit_code),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        };
        self.executed.lock().push(record);
        match result {
            Ok(result) => reapi::ExecuteResponse {
                result: Some(result),
                status: Some(rpc::Status::default()),
                ..Default::default()
            },
            Err(status) => {
                eprintln!(
                    "chroot worker: action {} failed: {}",
                    action_digest.hash,
                    status.message()
                );
                reapi::ExecuteResponse {
                    status: Some(to_rpc_status(&status)),
                    ..Default::default()
                }
            }
        }
    }

    async fn run_in(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        directory: &Path,
        record: &mut ExecutedAction,
    ) -> Result<reapi::ActionResult, Status> {
        let cas = &*self.cas;
        let action: reapi::Action = get_message(cas, instance, action_digest)
            .await
            .map_err(missing_input("Action", action_digest))?;
        record.action = action.clone();
        let command_digest = action
            .command_digest
            .clone()
            .ok_or_else(|| Status::invalid_argument("Action has no command digest"))?;
        let command: reapi::Command = get_message(cas, instance, &command_digest)
            .await
            .map_err(missing_input("Command", &command_digest))?;
        record.command = command.clone();
        let input_root = action
            .input_root_digest
            .clone()
            .ok_or_else(|| Status::invalid_argument("Action has no input root digest"))?;
        if command.arguments.is_empty() {
            return Err(Status::invalid_argument("Command has no arguments"));
        }

        let root = directory.join("root");
        std::fs::create_dir_all(&root).map_err(|e| io_error("create", &root, e))?;
        self.materialise(instance, &input_root, &root).await?;

        let working_directory = relative(&command.working_directory, "working directory")?;
        let outputs: Vec<String> = if command.output_paths.is_empty() {
            #[allow(deprecated)]
            command
                .output_files
                .iter()
                .chain(command.output_directories.iter())
                .cloned()
                .collect()
        } else {
            command.output_paths.clone()
        };
        let host_working_directory = root.join(&working_directory);
        for output in &outputs {
            let path = host_working_directory.join(relative(output, "output path")?);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
            }
        }

        let timeout = action
            .timeout
            .as_ref()
            .filter(|t| t.seconds > 0 || t.nanos > 0)
            .map(|t| Duration::new(t.seconds as u64, t.nanos as u32))
            .unwrap_or(DEFAULT_TIMEOUT);
        let mut attempt = 1;
        let output = loop {
            let output = run_chrooted(&command, &root, &working_directory, timeout).await?;
            if attempt < TEXT_FILE_BUSY_ATTEMPTS && launcher_hit_text_file_busy(&output) {
                eprintln!(
                    "chroot worker: {:?} hit ETXTBSY (attempt {attempt}), starting it again",
                    command.arguments
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                continue;
            }
            break output;
        };
        let exit_code = match output.status.code() {
            Some(code) => code,
            None => {
                use std::os::unix::process::ExitStatusExt;
                128 + output.status.signal().unwrap_or(0)
            }
        };

        let mut result = reapi::ActionResult {
            exit_code,
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: WORKER_NAME.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut blobs: Vec<(reapi::Digest, Bytes)> = Vec::new();
        let mut store = |data: Bytes| {
            let digest = instance.digest_function.digest_of(&data);
            blobs.push((digest.clone(), data));
            digest
        };
        result.stdout_digest = Some(store(Bytes::from(output.stdout)));
        result.stderr_digest = Some(store(Bytes::from(output.stderr)));
        for output in &outputs {
            let path = host_working_directory.join(output);
            let metadata = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("inspect", &path, e)),
            };
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| io_error("read", &path, e))?;
                let symlink = reapi::OutputSymlink {
                    path: output.clone(),
                    target: target.to_string_lossy().into_owned(),
                    ..Default::default()
                };
                #[allow(deprecated)]
                result.output_file_symlinks.push(symlink.clone());
                result.output_symlinks.push(symlink);
            } else if metadata.is_dir() {
                let mut children = Vec::new();
                let root = tree_of(instance.digest_function, &path, &mut children, &mut store)?;
                let tree = reapi::Tree {
                    root: Some(root),
                    children,
                };
                let digest = store(Bytes::from(tree.encode_to_vec()));
                result.output_directories.push(reapi::OutputDirectory {
                    path: output.clone(),
                    tree_digest: Some(digest),
                    ..Default::default()
                });
            } else {
                let data = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
                result.output_files.push(reapi::OutputFile {
                    path: output.clone(),
                    digest: Some(store(Bytes::from(data))),
                    is_executable: metadata.permissions().mode() & 0o111 != 0,
                    ..Default::default()
                });
            }
        }
        for (digest, data) in blobs {
            cas.put(instance, &digest, data).await?;
        }
        if exit_code == 0 && !action.do_not_cache {
            self.ac
                .put_action_result(instance, action_digest, result.clone())
                .await?;
        }
        Ok(result)
    }

    /// Writes the tree of `digest` into the empty directory `path`.
    async fn materialise(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        path: &Path,
    ) -> Result<(), Status> {
        let mut pending = vec![(digest.clone(), path.to_path_buf())];
        while let Some((digest, path)) = pending.pop() {
            let directory: reapi::Directory = get_message(&*self.cas, instance, &digest)
                .await
                .map_err(missing_input("input directory", &digest))?;
            for file in &directory.files {
                let target = child(&path, &file.name, "File")?;
                let digest = file.digest.as_ref().ok_or_else(|| {
                    Status::invalid_argument(format!("File {:?} has no digest", file.name))
                })?;
                let data = if digest.size_bytes == 0 {
                    Bytes::new()
                } else {
                    self.cas
                        .get(instance, digest)
                        .await
                        .map_err(missing_input("input file", digest))?
                };
                write_file(
                    &target,
                    &data,
                    if file.is_executable { 0o555 } else { 0o444 },
                )?;
            }
            for symlink in &directory.symlinks {
                let target = child(&path, &symlink.name, "Symlink")?;
                std::os::unix::fs::symlink(&symlink.target, &target)
                    .map_err(|e| io_error("create symlink", &target, e))?;
            }
            for node in &directory.directories {
                let target = child(&path, &node.name, "Directory")?;
                std::fs::create_dir(&target).map_err(|e| io_error("create", &target, e))?;
                let digest = node.digest.clone().ok_or_else(|| {
                    Status::invalid_argument(format!("Directory {:?} has no digest", node.name))
                })?;
                pending.push((digest, target));
            }
        }
        Ok(())
    }
}

/// The Directory of `path`, with every subdirectory appended to `children` and every
/// file passed to `store`.
fn tree_of(
    function: DigestFunction,
    path: &Path,
    children: &mut Vec<reapi::Directory>,
    store: &mut impl FnMut(Bytes) -> reapi::Digest,
) -> Result<reapi::Directory, Status> {
    let mut entries = std::fs::read_dir(path)
        .map_err(|e| io_error("list", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_error("list", path, e))?;
    entries.sort_by_key(|e| e.file_name());
    let mut directory = reapi::Directory::default();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let entry_path = entry.path();
        let metadata = std::fs::symlink_metadata(&entry_path)
            .map_err(|e| io_error("inspect", &entry_path, e))?;
        if metadata.file_type().is_symlink() {
            let target =
                std::fs::read_link(&entry_path).map_err(|e| io_error("read", &entry_path, e))?;
            directory.symlinks.push(reapi::SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                ..Default::default()
            });
        } else if metadata.is_dir() {
            let sub = tree_of(function, &entry_path, children, store)?;
            let (digest, _) = encode_message(function, &sub);
            children.push(sub);
            directory.directories.push(reapi::DirectoryNode {
                name,
                digest: Some(digest),
            });
        } else {
            let data = std::fs::read(&entry_path).map_err(|e| io_error("read", &entry_path, e))?;
            directory.files.push(reapi::FileNode {
                name,
                digest: Some(store(Bytes::from(data))),
                is_executable: metadata.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
        }
    }
    Ok(directory)
}

/// Whether the current process may chroot (is root).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
