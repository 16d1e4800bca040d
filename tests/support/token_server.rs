//! A Docker-style bearer token issuer ("token authentication" of the Distribution registry),
//! enough for the real registry to accept its tokens.
//!
//! `GET /token?service=S&scope=repository:NAME:pull,push` with HTTP basic credentials answers
//! `{"token": JWT, "access_token": JWT, "expires_in": 300}`. The JWT is RS256-signed; its
//! header carries the self-signed certificate (`x5c`) that the registry trusts through
//! `auth.token.rootcertbundle`. The key and certificate are made with the `openssl` command,
//! which also signs (no crypto crate is needed). Wrong credentials get 401; no credentials
//! get a token without any access (so the registry refuses the request), unless anonymous
//! pull is enabled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::fake_http::{FakeHttpServer, Request, Response};

/// `service` of the tokens, and of the registry configuration.
pub const SERVICE: &str = "bb-test-registry";
/// `iss` of the tokens, and of the registry configuration.
pub const ISSUER: &str = "bb-test-token-issuer";

/// A running token issuer; stops on drop.
pub struct TokenServer {
    server: FakeHttpServer,
    certificate_path: PathBuf,
    issued: Arc<AtomicUsize>,
    _directory: tempfile::TempDir,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn openssl(args: &[&str]) {
    super::require_program("openssl", "openssl");
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sign(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl dgst failed");
    output.stdout
}

fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request.headers.get("authorization")?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn json_response(status: u16, body: serde_json::Value) -> Response {
    Response::new(status, body.to_string()).header("Content-Type", "application/json")
}

impl TokenServer {
    /// Starts an issuer that accepts `username`/`password` for pull and push, and gives
    /// anonymous callers pull access if `anonymous_pull`.
    pub fn start(username: &str, password: &str, anonymous_pull: bool) -> Self {
        let directory = tempfile::tempdir().expect("tempdir");
        let key_path = directory.path().join("token-key.pem");
        let certificate_path = directory.path().join("token-cert.pem");
        let der_path = directory.path().join("token-cert.der");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ISSUER}"),
            "-keyout",
            key_path.to_str().unwrap(),
            "-out",
            certificate_path.to_str().unwrap(),
        ]);
        openssl(&[
            "x509",
            "-in",
            certificate_path.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der_path.to_str().unwrap(),
        ]);
        let x5c =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der_path).unwrap());
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        let (username, password) = (username.to_owned(), password.to_owned());
        let server = FakeHttpServer::start(move |request| {
            if request.path != "/token" {
                return json_response(404, serde_json::json!({}));
            }
            let authenticated = match basic_credentials(request) {
                Some((u, p)) if u == username && p == password => true,
                Some(_) => {
                    return json_response(
                        401,
                        serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}),
                    )
                    .header("WWW-Authenticate", "Basic realm=\"token\"")
                }
                None => false,
            };
            let access: Vec<serde_json::Value> = request
                .query
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .filter_map(|scope| {
                    // repository:name/with/slashes:pull,push
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let actions: Vec<&str> = actions
                        .split(',')
                        .filter(|a| authenticated || (anonymous_pull && *a == "pull"))
                        .collect();
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
                })
                .collect();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
            let claims = serde_json::json!({
                "iss": ISSUER,
                "sub": if authenticated { username.as_str() } else { "" },
                "aud": SERVICE,
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": format!("{now}-{}", counter.fetch_add(1, Ordering::SeqCst)),
                "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            );
            let signature = sign(&key_path, signing_input.as_bytes());
            let token = format!("{signing_input}.{}", b64url(&signature));
            json_response(
                200,
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300}),
            )
        });
        Self {
            server,
            certificate_path,
            issued,
            _directory: directory,
        }
    }

    /// The realm URL to configure in the registry.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.host())
    }

    /// The certificate the registry must trust (`rootcertbundle`).
    pub fn certificate_path(&self) -> &Path {
        &self.certificate_path
    }

    /// How many tokens were issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}
