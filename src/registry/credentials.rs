//! Credentials for one registry host, from the configuration: anonymous, inline basic
//! credentials, or the `auths` section of a Docker `config.json`.
//!
//! A `config.json` `auths` entry is keyed by host, possibly written as a URL
//! (`https://index.docker.io/v1/`); it holds `auth` (base64 of `user:password`) or separate
//! `username` and `password`, or a `registrytoken` (used as a bearer token). Credential
//! helpers (`credsStore`, `credHelpers`) and OAuth2 `identitytoken`s are not supported: a host
//! that only has those is a configuration error, reported at startup.
//!
//! Secrets never appear in `Debug` output or error messages; [`Secrets`] lets error paths
//! scrub them from text that came from elsewhere (a registry's error body).

use std::collections::HashMap;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::configuration::{normalize_host, Credentials};

/// The subset of Docker's `config.json` we read.
#[derive(Deserialize, Default)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/v2/` → `host:5000`.
fn host_of_auths_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or("");
    normalize_host(host)
}

/// Reads the credentials for `host` from the Docker config file at `path`.
pub(crate) fn from_docker_config(path: &str, host: &str) -> Result<RegistryAuth, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("Failed to read Docker config file {path:?}: {e}"))?;
    from_docker_config_bytes(&text, host).map_err(|e| format!("Docker config file {path:?}: {e}"))
}

fn from_docker_config_bytes(text: &[u8], host: &str) -> Result<RegistryAuth, String> {
    // Errors of serde_json name a position, never the content, so no secret leaks here.
    let file: DockerConfigFile =
        serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let host = normalize_host(host);
    let entry = file
        .auths
        .iter()
        .find(|(key, _)| host_of_auths_key(key) == host)
        .map(|(_, entry)| entry);
    let Some(entry) = entry else {
        let helper = file.cred_helpers.contains_key(&host) || file.creds_store.is_some();
        return Err(if helper {
            format!(
                "host {host:?} has no \"auths\" entry; credential helpers (credsStore, \
                 credHelpers) are not supported"
            )
        } else {
            format!("host {host:?} has no \"auths\" entry")
        });
    };
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.to_owned()));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("the \"auth\" field for host {host:?} is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("the \"auth\" field for host {host:?} is not UTF-8"))?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            format!("the \"auth\" field for host {host:?} is not of the form user:password")
        })?;
        return Ok(RegistryAuth::Basic(
            username.to_owned(),
            password.to_owned(),
        ));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(RegistryAuth::Basic(u.clone(), p.clone())),
        _ if entry.identitytoken.is_some() => Err(format!(
            "host {host:?} only has an identitytoken, which is not supported"
        )),
        _ => Err(format!(
            "the \"auths\" entry for host {host:?} has no credentials"
        )),
    }
}

/// The credentials configured for `host`.
pub fn resolve(credentials: Option<&Credentials>, host: &str) -> Result<RegistryAuth, String> {
    match credentials {
        None | Some(Credentials::Anonymous {}) => Ok(RegistryAuth::Anonymous),
        Some(Credentials::Basic(b)) => {
            Ok(RegistryAuth::Basic(b.username.clone(), b.password.clone()))
        }
        Some(Credentials::DockerConfigPath(path)) => from_docker_config(path, host),
    }
}

/// Secret strings to scrub from messages: passwords, tokens and their base64 forms.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// Adds the secrets of `auth`.
    pub fn add(&mut self, auth: &RegistryAuth) {
        let engine = base64::engine::general_purpose::STANDARD;
        match auth {
            RegistryAuth::Anonymous => {}
            RegistryAuth::Basic(user, password) => {
                if !password.is_empty() {
                    self.0.push(password.clone());
                }
                self.0.push(engine.encode(format!("{user}:{password}")));
            }
            RegistryAuth::Bearer(token) => {
                if !token.is_empty() {
                    self.0.push(token.clone());
                }
            }
        }
        // Longest first, so that a secret containing another is replaced whole.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.0.dedup();
    }

    /// `text` with every secret replaced by `<redacted>`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::configuration::BasicCredentials;

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    #[test]
    fn docker_config_auth_field() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "registry.example.com:5000": {{"username": "bob", "password": "pw"}},
                "http://127.0.0.1:5001/v2/": {{"auth": "{auth}", "email": "x@y"}},
                "token.example.com": {{"registrytoken": "tok"}},
                "oauth.example.com": {{"identitytoken": "refresh"}}
            }}, "credHelpers": {{"helper.example.com": "ecr-login"}}}}"#
        );
        let get = |host: &str| from_docker_config_bytes(json.as_bytes(), host);
        assert_eq!(get("docker.io").unwrap(), basic("alice", "pa:ss"));
        assert_eq!(
            get("registry-1.docker.io").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(
            get("Registry.Example.com:5000").unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(get("127.0.0.1:5001").unwrap(), basic("alice", "pa:ss"));
        assert_eq!(
            get("token.example.com").unwrap(),
            RegistryAuth::Bearer("tok".into())
        );
        assert!(get("oauth.example.com")
            .unwrap_err()
            .contains("identitytoken"));
        assert!(get("helper.example.com")
            .unwrap_err()
            .contains("credential helpers"));
        assert!(get("other.example.com")
            .unwrap_err()
            .contains("no \"auths\" entry"));
    }

    #[test]
    fn bad_auth_field_does_not_echo_content() {
        let json = r#"{"auths": {"a.example": {"auth": "!!not-base64-secret!!"}}}"#;
        let err = from_docker_config_bytes(json.as_bytes(), "a.example").unwrap_err();
        assert!(
            err.contains("not valid base64") && !err.contains("secret"),
            "{err}"
        );
        let no_colon = base64::engine::general_purpose::STANDARD.encode("justasecret");
        let json = format!(r#"{{"auths": {{"a.example": {{"auth": "{no_colon}"}}}}}}"#);
        let err = from_docker_config_bytes(json.as_bytes(), "a.example").unwrap_err();
        assert!(!err.contains("justasecret"), "{err}");
    }

    #[test]
    fn docker_config_file_errors_name_the_path() {
        let err = from_docker_config("/nonexistent/config.json", "a.example").unwrap_err();
        assert!(err.contains("/nonexistent/config.json"), "{err}");
    }

    #[test]
    fn resolve_inline() {
        assert_eq!(resolve(None, "h").unwrap(), RegistryAuth::Anonymous);
        assert_eq!(
            resolve(Some(&Credentials::Anonymous {}), "h").unwrap(),
            RegistryAuth::Anonymous
        );
        let b = Credentials::Basic(BasicCredentials {
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(resolve(Some(&b), "h").unwrap(), basic("u", "p"));
    }

    #[test]
    fn scrubbing() {
        let mut secrets = Secrets::default();
        secrets.add(&basic("user", "s3cret"));
        secrets.add(&RegistryAuth::Bearer("tok3n".into()));
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:s3cret");
        let text = format!("bad s3cret, header Basic {b64}, token tok3n");
        let scrubbed = secrets.scrub(&text);
        assert!(
            !scrubbed.contains("s3cret") && !scrubbed.contains(&b64) && !scrubbed.contains("tok3n")
        );
        assert_eq!(format!("{secrets:?}"), "Secrets(3 redacted)");
    }
}
