//! Credentials for one registry host, from the configuration: anonymous, inline basic
//! credentials, or the `auths` section of a Docker `config.json`.
//!
//! A `config.json` `auths` entry is keyed by host, possibly written as a URL
//! (`https://index.docker.io/v1/`); it holds `auth` (base64 of `user:password`) or separate
//! `username` and `password`, or a `registrytoken` (used as a bearer token). OAuth2
//! `identitytoken`s are not supported: a host that only has one is a configuration error,
//! reported at startup. A host named in `credHelpers`, or any host when `credsStore` is set,
//! gets its credentials from that credential helper instead, as Docker does
//! (`credential_helper.rs` runs it).
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

/// Where the credentials of a host come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Known now: anonymous, inline, or from a Docker config's `auths`.
    Static(RegistryAuth),
    /// From the credential helper `docker-credential-<name>`, run when needed.
    Helper(String),
}

/// Reads the credentials for `host` from the Docker config file at `path`.
pub(crate) fn from_docker_config(path: &str, host: &str) -> Result<Source, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("Failed to read Docker config file {path:?}: {e}"))?;
    from_docker_config_bytes(&text, host).map_err(|e| format!("Docker config file {path:?}: {e}"))
}

fn from_docker_config_bytes(text: &[u8], host: &str) -> Result<Source, String> {
    // Errors of serde_json name a position, never the content, so no secret leaks here.
    let file: DockerConfigFile =
        serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let host = normalize_host(host);
    // Docker's order: the host's helper, then the default store, then `auths`.
    let helper = file
        .cred_helpers
        .iter()
        .find(|(key, _)| host_of_auths_key(key) == host)
        .map(|(_, name)| name.clone())
        .or_else(|| file.creds_store.clone())
        .filter(|name| !name.is_empty());
    if let Some(name) = helper {
        if name.contains('/') || name.chars().any(char::is_whitespace) {
            return Err(format!(
                "the credential helper named for host {host:?} ({name:?}) is not a plain name"
            ));
        }
        return Ok(Source::Helper(name));
    }
    let entry = file
        .auths
        .iter()
        .find(|(key, _)| host_of_auths_key(key) == host)
        .map(|(_, entry)| entry);
    let Some(entry) = entry else {
        return Err(format!("host {host:?} has no \"auths\" entry"));
    };
    auth_of_entry(entry, &host).map(Source::Static)
}

fn auth_of_entry(entry: &DockerAuthEntry, host: &str) -> Result<RegistryAuth, String> {
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

/// Where the credentials configured for `host` come from.
pub fn resolve(credentials: Option<&Credentials>, host: &str) -> Result<Source, String> {
    match credentials {
        None | Some(Credentials::Anonymous {}) => Ok(Source::Static(RegistryAuth::Anonymous)),
        Some(Credentials::Basic(b)) => Ok(Source::Static(RegistryAuth::Basic(
            b.username.clone(),
            b.password.clone(),
        ))),
        Some(Credentials::DockerConfigPath(path)) => from_docker_config(path, host),
    }
}

/// Secret strings to scrub from messages: passwords, tokens and their base64 forms. Clones
/// share one list, so that secrets a credential helper returns later are scrubbed too;
/// each is counted, so that a helper's replaced answer can be removed without
/// un-scrubbing an equal secret added elsewhere.
#[derive(Clone, Default)]
pub struct Secrets(std::sync::Arc<parking_lot::RwLock<Vec<(String, usize)>>>);

/// The strings of `auth` that are secret.
fn secret_strings(auth: &RegistryAuth) -> Vec<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    match auth {
        RegistryAuth::Anonymous => vec![],
        RegistryAuth::Basic(user, password) => {
            let mut strings = vec![engine.encode(format!("{user}:{password}"))];
            if !password.is_empty() {
                strings.push(password.clone());
            }
            strings
        }
        RegistryAuth::Bearer(token) if token.is_empty() => vec![],
        RegistryAuth::Bearer(token) => vec![token.clone()],
    }
}

impl Secrets {
    /// Adds the secrets of `auth`.
    pub fn add(&self, auth: &RegistryAuth) {
        let mut secrets = self.0.write();
        for secret in secret_strings(auth) {
            match secrets.iter_mut().find(|(s, _)| *s == secret) {
                Some((_, count)) => *count += 1,
                None => secrets.push((secret, 1)),
            }
        }
        // Longest first, so that a secret containing another is replaced whole.
        secrets.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Removes the secrets of `auth`, added before (those also added by others stay).
    pub fn remove(&self, auth: &RegistryAuth) {
        let mut secrets = self.0.write();
        for secret in secret_strings(auth) {
            if let Some((_, count)) = secrets.iter_mut().find(|(s, _)| *s == secret) {
                *count -= 1;
            }
        }
        secrets.retain(|(_, count)| *count > 0);
    }

    /// `text` with every secret replaced by `<redacted>`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (secret, _) in self.0.read().iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.read().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::configuration::BasicCredentials;

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    fn static_basic(u: &str, p: &str) -> Source {
        Source::Static(basic(u, p))
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
        assert_eq!(get("docker.io").unwrap(), static_basic("alice", "pa:ss"));
        assert_eq!(
            get("registry-1.docker.io").unwrap(),
            static_basic("alice", "pa:ss")
        );
        assert_eq!(
            get("Registry.Example.com:5000").unwrap(),
            static_basic("bob", "pw")
        );
        assert_eq!(
            get("127.0.0.1:5001").unwrap(),
            static_basic("alice", "pa:ss")
        );
        assert_eq!(
            get("token.example.com").unwrap(),
            Source::Static(RegistryAuth::Bearer("tok".into()))
        );
        assert!(get("oauth.example.com")
            .unwrap_err()
            .contains("identitytoken"));
        assert_eq!(
            get("helper.example.com").unwrap(),
            Source::Helper("ecr-login".into())
        );
        assert!(get("other.example.com")
            .unwrap_err()
            .contains("no \"auths\" entry"));
    }

    #[test]
    fn helpers_come_first_as_in_docker() {
        let json = r#"{"auths": {"a.example": {"username": "u", "password": "p"}, "b.example": {}},
            "credHelpers": {"https://b.example/v2/": "pass"}, "credsStore": "desktop"}"#;
        let get = |host: &str| from_docker_config_bytes(json.as_bytes(), host);
        assert_eq!(get("b.example").unwrap(), Source::Helper("pass".into()));
        assert_eq!(get("a.example").unwrap(), Source::Helper("desktop".into()));
        assert_eq!(get("c.example").unwrap(), Source::Helper("desktop".into()));
        let bad = r#"{"credHelpers": {"a.example": "../../bin/sh"}}"#;
        assert!(from_docker_config_bytes(bad.as_bytes(), "a.example")
            .unwrap_err()
            .contains("not a plain name"));
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
        let anonymous = Source::Static(RegistryAuth::Anonymous);
        assert_eq!(resolve(None, "h").unwrap(), anonymous);
        assert_eq!(
            resolve(Some(&Credentials::Anonymous {}), "h").unwrap(),
            anonymous
        );
        let b = Credentials::Basic(BasicCredentials {
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(resolve(Some(&b), "h").unwrap(), static_basic("u", "p"));
    }

    #[test]
    fn scrubbing() {
        let secrets = Secrets::default();
        secrets.add(&basic("user", "s3cret"));
        secrets.add(&RegistryAuth::Bearer("tok3n".into()));
        let b64 = base64::engine::general_purpose::STANDARD.encode("user:s3cret");
        let text = format!("bad s3cret, header Basic {b64}, token tok3n");
        let scrubbed = secrets.scrub(&text);
        assert!(
            !scrubbed.contains("s3cret") && !scrubbed.contains(&b64) && !scrubbed.contains("tok3n")
        );
        assert_eq!(format!("{secrets:?}"), "Secrets(3 redacted)");
        // Counted: removing one of two equal additions keeps the secret.
        secrets.add(&RegistryAuth::Bearer("tok3n".into()));
        secrets.remove(&RegistryAuth::Bearer("tok3n".into()));
        assert!(!secrets.scrub("tok3n").contains("tok3n"));
        secrets.remove(&RegistryAuth::Bearer("tok3n".into()));
        assert_eq!(secrets.scrub("tok3n"), "tok3n");
        assert_eq!(format!("{secrets:?}"), "Secrets(2 redacted)");
    }
}
