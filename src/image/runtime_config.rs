//! The image config's runtime settings (`config.Env`, `config.WorkingDir`,
//! `config.User` of OCI image-spec config.md), read from the config an image was
//! expanded with and kept in its `ImageRecord`, so that a rewrite can give the action
//! the image's environment without fetching the config again.

use crate::proto::cache::ImageRuntimeConfig;
use serde::Deserialize;
use tonic::Status;

#[derive(Deserialize, Default)]
struct ConfigDocument {
    #[serde(default)]
    config: Option<ProcessSettings>,
}

#[derive(Deserialize, Default)]
struct ProcessSettings {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// The runtime settings of the image config `config` (its bytes as fetched). A config
/// without a `config` object, or with null fields, has none; an empty document (an
/// image source that serves no config) too.
pub(crate) fn parse_runtime_config(config: &[u8]) -> Result<ImageRuntimeConfig, Status> {
    if config.is_empty() {
        return Ok(ImageRuntimeConfig::default());
    }
    let document: ConfigDocument = serde_json::from_slice(config)
        .map_err(|e| Status::failed_precondition(format!("Malformed image config: {e}")))?;
    let settings = document.config.unwrap_or_default();
    Ok(ImageRuntimeConfig {
        env: settings.env.unwrap_or_default(),
        working_dir: settings.working_dir.unwrap_or_default(),
        user: settings.user.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_working_dir_and_user_in_order() {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Env":["PATH=/usr/bin:/bin","LANG=C.UTF-8","EMPTY="],"WorkingDir":"/app","User":"1000:1000","Cmd":["sh"]}}"#;
        let runtime = parse_runtime_config(config).unwrap();
        assert_eq!(
            runtime.env,
            vec!["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "EMPTY="]
        );
        assert_eq!(runtime.working_dir, "/app");
        assert_eq!(runtime.user, "1000:1000");
    }

    #[test]
    fn a_config_without_settings_has_none() {
        for config in [
            &br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#[..],
            br#"{"config":null}"#,
            br#"{"config":{"Env":null,"WorkingDir":null}}"#,
            b"",
        ] {
            assert_eq!(
                parse_runtime_config(config).unwrap(),
                ImageRuntimeConfig::default()
            );
        }
        let err = parse_runtime_config(b"{not json").unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }
}
