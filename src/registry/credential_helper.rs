//! [`CredentialHelper`]: credentials for one registry host from a Docker credential helper,
//! the `docker-credential-<name>` program that a `config.json` names in `credHelpers` (per
//! host) or `credsStore` (for every host).
//!
//! Docker's protocol: the helper runs as `docker-credential-<name> get` with the server URL
//! on standard input (the host, `https://index.docker.io/v1/` for Docker Hub) and prints
//! `{"ServerURL": …, "Username": …, "Secret": …}`. A `Username` of `<token>` means that
//! `Secret` is an OAuth2 identity (refresh) token; like `identitytoken` in `auths`, that is
//! refused (FAILED_PRECONDITION): the helper must give a user name and password or access
//! token, which the registry's token server takes as basic credentials.
//!
//! The helper is looked up in `credentialHelpers.searchDirectories`, or in the process's
//! `PATH` when none are configured; it runs with a timeout (killed beyond it). Answers are
//! cached for `cacheTtl`; after three quarters of it the helper runs again in the
//! background while callers keep the cached answer, and after all of it callers wait for a
//! new run. Callers arriving while a run is in flight share it (one run at a time per
//! host). Failures are not cached.
//!
//! Errors name the helper and the registry, never what the helper printed (it may hold
//! secrets): a missing helper or an unusable answer is FAILED_PRECONDITION, a helper that
//! fails or times out is UNAVAILABLE. Secrets obtained are added to [`Secrets`], so that
//! registry error bodies are scrubbed of them too.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::secrets::RegistryAuth;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tonic::Status;

use super::credentials::Secrets;

/// What a helper prints when it holds nothing for the server URL (docker-credential-helpers'
/// `credentials.errCredentialsNotFound`); not secret, so it may be recognised.
const NOT_FOUND_MESSAGE: &str = "credentials not found in native keychain";

/// How helpers are run (`containerImages.credentialHelpers` with defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialHelperOptions {
    /// Longest run of a helper.
    pub timeout: Duration,
    /// How long an answer is used.
    pub cache_ttl: Duration,
    /// Directories searched for the helper; empty: the process's `PATH`.
    pub search_directories: Vec<PathBuf>,
}

/// The answer of `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

type Run = Shared<BoxFuture<'static, Result<RegistryAuth, Status>>>;

#[derive(Default)]
struct State {
    /// The last answer and when its run started.
    cached: Option<(RegistryAuth, Instant)>,
    /// The run in flight, shared by its callers.
    running: Option<Run>,
    /// The answer `cached` replaced, still scrubbed from messages.
    previous: Option<RegistryAuth>,
}

/// Credentials of one registry host from one helper.
pub struct CredentialHelper {
    /// `<name>` of `docker-credential-<name>`.
    name: String,
    /// The registry host, normalised.
    host: String,
    options: CredentialHelperOptions,
    secrets: Secrets,
    state: Mutex<State>,
}

impl std::fmt::Debug for CredentialHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialHelper")
            .field("name", &self.name)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl CredentialHelper {
    /// A helper `docker-credential-<name>` for registry `host`; nothing runs yet.
    /// Secrets it returns are added to `secrets`.
    pub fn new(
        name: &str,
        host: &str,
        options: CredentialHelperOptions,
        secrets: Secrets,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            host: host.to_owned(),
            options,
            secrets,
            state: Mutex::default(),
        })
    }

    /// The program's file name.
    pub fn program(&self) -> String {
        format!("docker-credential-{}", self.name)
    }

    /// The credentials for the host: cached, or from a run of the helper.
    pub async fn get(self: &Arc<Self>) -> Result<RegistryAuth, Status> {
        let run = {
            let mut state = self.state.lock();
            if let Some((auth, at)) = state.cached.clone() {
                let age = at.elapsed();
                if age < self.options.cache_ttl {
                    if age >= self.options.cache_ttl / 4 * 3 && state.running.is_none() {
                        // Refreshed in the background, before it lapses.
                        state.running = Some(self.start());
                    }
                    return Ok(auth);
                }
            }
            match &state.running {
                Some(run) => run.clone(),
                None => {
                    let run = self.start();
                    state.running = Some(run.clone());
                    run
                }
            }
        };
        run.await
    }

    /// Starts a run as a task of its own (a caller that goes away does not cancel it for
    /// the others); it records its answer and clears `running` when it ends.
    fn start(self: &Arc<Self>) -> Run {
        let this = self.clone();
        let run = async move {
            let started = Instant::now();
            let result = this.run().await;
            let mut state = this.state.lock();
            state.running = None;
            if let Ok(auth) = &result {
                this.secrets.add(auth);
                // The answer before the one replaced now may still be in a request's
                // error; older ones are no longer scrubbed for.
                if let Some((replaced, _)) = state.cached.replace((auth.clone(), started)) {
                    if let Some(older) = state.previous.replace(replaced) {
                        this.secrets.remove(&older);
                    }
                }
            }
            result
        }
        .boxed()
        .shared();
        tokio::spawn(run.clone());
        run
    }

    /// The prefix of every error: which helper, for which registry.
    fn failure(&self) -> String {
        format!(
            "Credential helper {} for registry {}",
            self.program(),
            self.host
        )
    }

    /// Where the helper is: the first search directory that holds it.
    fn locate(&self) -> Result<PathBuf, Status> {
        let program = self.program();
        let directories: Vec<PathBuf> = if self.options.search_directories.is_empty() {
            std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect())
                .unwrap_or_default()
        } else {
            self.options.search_directories.clone()
        };
        directories
            .iter()
            .map(|d| d.join(&program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let searched = if self.options.search_directories.is_empty() {
                    "PATH".to_owned()
                } else {
                    format!("{:?}", self.options.search_directories)
                };
                Status::failed_precondition(format!("{}: not found in {searched}", self.failure()))
            })
    }

    /// The server URL sent on standard input, as Docker sends it.
    fn server_url(&self) -> &str {
        if self.host == "docker.io" {
            "https://index.docker.io/v1/"
        } else {
            &self.host
        }
    }

    /// One run of `<helper> get`.
    async fn run(&self) -> Result<RegistryAuth, Status> {
        let path = self.locate()?;
        let mut attempts = 0;
        let mut child = loop {
            let spawned = tokio::process::Command::new(&path)
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => break child,
                // ETXTBSY: the file was just written and another process forked while it
                // was open; it clears at once.
                Err(e) if e.raw_os_error() == Some(26) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(Status::failed_precondition(format!(
                        "{}: cannot run: {e}",
                        self.failure()
                    )))
                }
            }
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let server_url = self.server_url().to_owned();
        let output = tokio::time::timeout(self.options.timeout, async move {
            // A helper that exits without reading is reported by its exit status.
            let _ = stdin.write_all(server_url.as_bytes()).await;
            drop(stdin);
            child.wait_with_output().await
        })
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "{}: no answer within {:?}",
                self.failure(),
                self.options.timeout
            ))
        })?
        .map_err(|e| Status::unavailable(format!("{}: {e}", self.failure())))?;
        if !output.status.success() {
            if String::from_utf8_lossy(&output.stdout).trim() == NOT_FOUND_MESSAGE {
                return Err(Status::failed_precondition(format!(
                    "{}: the helper holds no credentials for this registry",
                    self.failure()
                )));
            }
            return Err(Status::unavailable(format!(
                "{}: failed ({})",
                self.failure(),
                output.status
            )));
        }
        // serde_json's errors name a position, never the content.
        let answer: HelperAnswer = serde_json::from_slice(&output.stdout).map_err(|e| {
            Status::failed_precondition(format!(
                "{}: the answer is not the expected JSON ({e})",
                self.failure()
            ))
        })?;
        match (answer.username.as_str(), answer.secret) {
            ("<token>", _) => Err(Status::failed_precondition(format!(
                "{}: the helper returned an identity token (Username \"<token>\"), which is \
                 not supported; it must return a user name and a password or access token",
                self.failure()
            ))),
            ("", secret) if secret.is_empty() => Ok(RegistryAuth::Anonymous),
            ("", _) => Err(Status::failed_precondition(format!(
                "{}: the answer has a Secret but no Username",
                self.failure()
            ))),
            (username, secret) => Ok(RegistryAuth::Basic(username.to_owned(), secret)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tonic::Code;

    /// Writes `docker-credential-<name>` with `body` (a shell script) into `dir`.
    fn write_helper(dir: &std::path::Path, name: &str, body: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn helper(dir: &std::path::Path, name: &str, ttl: Duration) -> Arc<CredentialHelper> {
        CredentialHelper::new(
            name,
            "registry.example:5000",
            CredentialHelperOptions {
                timeout: Duration::from_secs(5),
                cache_ttl: ttl,
                search_directories: vec![dir.to_owned()],
            },
            Secrets::default(),
        )
    }

    fn runs(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Logs each run and the standard input it got, then answers.
    fn counting(dir: &std::path::Path, answer: &str) -> String {
        let log = dir.join("runs");
        format!(
            "[ \"$1\" = get ] || exit 3\nread -r url || true\necho \"$url\" >> {}\necho '{answer}'",
            log.display()
        )
    }

    #[tokio::test]
    async fn answers_are_used_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let answer = r#"{"ServerURL":"registry.example:5000","Username":"u","Secret":"s3cret"}"#;
        write_helper(dir.path(), "test", &counting(dir.path(), answer));
        let h = helper(dir.path(), "test", Duration::from_secs(600));
        for _ in 0..3 {
            assert_eq!(
                h.get().await.unwrap(),
                RegistryAuth::Basic("u".into(), "s3cret".into())
            );
        }
        assert_eq!(runs(dir.path()), 1);
        // The host went to standard input.
        let log = std::fs::read_to_string(dir.path().join("runs")).unwrap();
        assert_eq!(log.trim(), "registry.example:5000");
        assert!(!h.secrets.scrub("x s3cret y").contains("s3cret"));
    }

    #[tokio::test]
    async fn answers_are_run_again_after_the_ttl_and_refreshed_before() {
        let dir = tempfile::tempdir().unwrap();
        let answer = r#"{"Username":"u","Secret":"p"}"#;
        write_helper(dir.path(), "test", &counting(dir.path(), answer));
        let h = helper(dir.path(), "test", Duration::from_millis(400));
        h.get().await.unwrap();
        assert_eq!(runs(dir.path()), 1);
        // Past three quarters: the cached answer, and a refresh in the background.
        tokio::time::sleep(Duration::from_millis(320)).await;
        h.get().await.unwrap();
        for _ in 0..100 {
            if runs(dir.path()) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs(dir.path()), 2);
        // Past the TTL: callers wait for a new run.
        tokio::time::sleep(Duration::from_millis(450)).await;
        h.get().await.unwrap();
        assert_eq!(runs(dir.path()), 3);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runs");
        write_helper(
            dir.path(),
            "slow",
            &format!(
                "echo run >> {}\nsleep 0.5\necho '{{\"Username\":\"u\",\"Secret\":\"p\"}}'",
                log.display()
            ),
        );
        let h = helper(dir.path(), "slow", Duration::from_secs(600));
        let results = futures::future::join_all((0..20).map(|_| h.get())).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(runs(dir.path()), 1);
    }

    #[tokio::test]
    async fn failures_name_helper_and_registry_but_not_the_output() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "fails", "echo 'leaked-s3cret'\nexit 2");
        write_helper(dir.path(), "garbage", "echo '{not json leaked-s3cret'");
        write_helper(
            dir.path(),
            "token",
            r#"echo '{"Username":"<token>","Secret":"leaked-s3cret"}'"#,
        );
        write_helper(
            dir.path(),
            "empty",
            &format!("echo '{NOT_FOUND_MESSAGE}'\nexit 1"),
        );
        for (name, code) in [
            ("fails", Code::Unavailable),
            ("garbage", Code::FailedPrecondition),
            ("token", Code::FailedPrecondition),
            ("empty", Code::FailedPrecondition),
            ("missing", Code::FailedPrecondition),
        ] {
            let err = helper(dir.path(), name, Duration::from_secs(60))
                .get()
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{name}: {err:?}");
            let message = err.message();
            assert!(
                message.contains(&format!("docker-credential-{name}"))
                    && message.contains("registry.example:5000"),
                "{message}"
            );
            assert!(!message.contains("leaked-s3cret"), "{message}");
        }
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "flaky", "exit 1");
        let h = helper(dir.path(), "flaky", Duration::from_secs(600));
        assert!(h.get().await.is_err());
        write_helper(
            dir.path(),
            "flaky",
            r#"echo '{"Username":"u","Secret":"p"}'"#,
        );
        assert!(h.get().await.is_ok());
    }

    #[tokio::test]
    async fn a_slow_helper_times_out() {
        let dir = tempfile::tempdir().unwrap();
        write_helper(dir.path(), "hangs", "exec sleep 30");
        let h = CredentialHelper::new(
            "hangs",
            "registry.example:5000",
            CredentialHelperOptions {
                timeout: Duration::from_millis(300),
                cache_ttl: Duration::from_secs(60),
                search_directories: vec![dir.path().to_owned()],
            },
            Secrets::default(),
        );
        let started = Instant::now();
        let err = h.get().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("docker-credential-hangs"), "{err:?}");
        assert!(err.message().contains("no answer within"), "{err:?}");
    }

    #[test]
    fn docker_hub_is_asked_for_by_its_index_url() {
        let options = CredentialHelperOptions {
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(1),
            search_directories: vec![],
        };
        let hub = CredentialHelper::new("x", "docker.io", options.clone(), Secrets::default());
        assert_eq!(hub.server_url(), "https://index.docker.io/v1/");
        let other = CredentialHelper::new("x", "ghcr.io", options, Secrets::default());
        assert_eq!(other.server_url(), "ghcr.io");
    }
}
