//! A real CNCF Distribution registry (`/usr/bin/docker-registry`, Debian package
//! `docker-registry`) on a free 127.0.0.1 port, with a temporary storage directory and a
//! configuration written here; killed on drop.
//!
//! ```ignore
//! let registry = RegistryServer::start();                      // no auth
//! let registry = RegistryServer::start_with_basic_auth("u", "p"); // htpasswd, bcrypt
//! let registry = RegistryServer::start_with_token_auth("u", "p"); // bearer tokens
//! registry.host()   // "127.0.0.1:PORT"
//! registry.pusher() // an images::Pusher with the right credentials
//! ```
//!
//! Set `BB_TEST_DOCKER_REGISTRY` to use another binary.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;

use super::images::Pusher;
use super::token_server::{TokenServer, ISSUER, SERVICE};
use super::{free_port, require_program};

/// The default binary of the Debian package.
pub const DEFAULT_BINARY: &str = "/usr/bin/docker-registry";

/// How clients authenticate to a [`RegistryServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication.
    None,
    /// HTTP basic authentication against an htpasswd file.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Bearer tokens from a [`TokenServer`], obtained with these basic credentials.
    Token {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

/// A running registry.
pub struct RegistryServer {
    port: u16,
    auth: Auth,
    child: Option<Child>,
    token_server: Option<TokenServer>,
    log_path: PathBuf,
    directory: tempfile::TempDir,
}

impl RegistryServer {
    /// A registry without authentication.
    pub fn start() -> Self {
        Self::start_with(Auth::None)
    }

    /// A registry with HTTP basic authentication (bcrypt htpasswd via `htpasswd -Bbc`).
    pub fn start_with_basic_auth(username: &str, password: &str) -> Self {
        Self::start_with(Auth::Basic {
            username: username.into(),
            password: password.into(),
        })
    }

    /// A registry with Docker-style token authentication; anonymous callers get no access.
    pub fn start_with_token_auth(username: &str, password: &str) -> Self {
        Self::start_with(Auth::Token {
            username: username.into(),
            password: password.into(),
        })
    }

    /// A registry with the given authentication.
    pub fn start_with(auth: Auth) -> Self {
        let binary =
            std::env::var("BB_TEST_DOCKER_REGISTRY").unwrap_or_else(|_| DEFAULT_BINARY.into());
        require_program(&binary, "docker-registry");
        let mut directory = tempfile::tempdir().expect("tempdir");
        let storage = directory.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut token_server = None;
        let auth_section = match &auth {
            Auth::None => String::new(),
            Auth::Basic { username, password } => {
                require_program("htpasswd", "apache2-utils");
                let htpasswd = directory.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&htpasswd)
                    .args([username, password])
                    .output()
                    .expect("run htpasswd");
                assert!(output.status.success(), "htpasswd failed");
                format!(
                    "auth:\n  htpasswd:\n    realm: bb-test-basic\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::Token { username, password } => {
                let server = TokenServer::start(username, password, false);
                let section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    server.certificate_path().display()
                );
                token_server = Some(server);
                section
            }
        };
        let log_path = directory.path().join("registry.log");
        // A port that was free a moment ago may be taken before the registry binds it:
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let config_path = directory.path().join("config.yml");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: bb-test-secret\n\
                 {auth_section}",
                storage = storage.display(),
            );
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("failed to start {binary}: {e}"));
            let mut server = Self {
                port,
                auth: auth.clone(),
                child: Some(child),
                token_server: None,
                log_path: log_path.clone(),
                directory,
            };
            if server.wait_ready(Duration::from_secs(30)) {
                server.token_server = token_server;
                return server;
            }
            server.stop();
            let log = server.log();
            if !log.contains("address already in use") {
                panic!("docker-registry did not become ready on 127.0.0.1:{port}; its log:\n{log}");
            }
            directory = std::mem::replace(&mut server.directory, tempfile::tempdir().unwrap());
        }
        panic!("docker-registry could not bind a free port after 5 attempts");
    }

    /// Polls `GET /v2/` until it answers 200 (no auth) or 401 (auth).
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if let Some(status) = http_status(self.port, "/v2/") {
                if status == 200 || status == 401 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The authentication this registry wants.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Credentials that may pull and push, for `oci-client`.
    pub fn registry_auth(&self) -> RegistryAuth {
        match &self.auth {
            Auth::None => RegistryAuth::Anonymous,
            Auth::Basic { username, password } | Auth::Token { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }

    /// A pusher for this registry.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(&self.host(), self.registry_auth())
    }

    /// The token issuer, for token auth.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// The registry's log so far (access log included).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The storage and config directory.
    pub fn directory(&self) -> &std::path::Path {
        self.directory.path()
    }

    /// Kills the registry (also done on drop). Its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` if nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
