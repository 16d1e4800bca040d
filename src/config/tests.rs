//! Tests of the loader's Buildbarn semantics and of the typed configuration.

use super::*;
use std::io::Write;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.to_str().unwrap().to_string()
}

const MINIMAL: &str = r#"{
  grpcServers: [{ listenAddresses: [':8985'], authenticationPolicy: { allow: {} } }],
  blobstore: {
    contentAddressableStorage: { memory: { maximumSizeBytes: 1024 * 1024 } },
    actionCache: { memory: { maximumSizeBytes: '1048576' } },
  },
  scheduler: { address: 'scheduler:8982' },
}"#;

#[test]
fn loads_minimal_configuration_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.jsonnet", MINIMAL);
    let c = load(&path).unwrap();
    assert_eq!(c.maximum_message_size_bytes, 2 * 1024 * 1024);
    assert_eq!(c.grpc_servers[0].listen_addresses, vec![":8985"]);
    assert!(matches!(
        c.blobstore.action_cache,
        blobstore::BlobAccessConfiguration::Memory(ref m) if m.maximum_size_bytes == 1 << 20
    ));
}

#[test]
fn environment_variables_are_external_variables() {
    // Cargo sets CARGO_PKG_NAME for test binaries; no need to mutate the environment.
    let v =
        jsonnet::evaluate_snippet("x.jsonnet", "{ name: std.extVar('CARGO_PKG_NAME') }").unwrap();
    assert_eq!(v["name"], "bb-container-expander");
    let err = jsonnet::evaluate_snippet("x.jsonnet", "std.extVar('SURELY_NOT_SET_VARIABLE')")
        .unwrap_err();
    assert!(err.contains("SURELY_NOT_SET_VARIABLE"), "{err}");
}

#[test]
fn imports_resolve_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(
        &dir.path().join("sub"),
        "common.libsonnet",
        "{ scheduler: { address: 'from-import:8982' } }",
    );
    let path = write(
        &dir.path().join("sub"),
        "c.jsonnet",
        &format!("local common = import 'common.libsonnet'; {MINIMAL} + common"),
    );
    // Evaluate from another working directory than the file's.
    let c = load(&path).unwrap();
    assert_eq!(c.scheduler.unwrap().address, "from-import:8982");
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("listenAddresses", "listenAdresses");
    let path = write(dir.path(), "c.jsonnet", &text);
    let err = load(&path).unwrap_err();
    assert!(
        err.starts_with(&format!("Failed to read configuration from {path}: Failed to unmarshal configuration: grpcServers[0].listenAdresses: unknown field `listenAdresses`")),
        "{err}"
    );
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("maximumSizeBytes: 1024 * 1024", "maximumSizeBytes: 'lots'");
    let path = write(dir.path(), "c.jsonnet", &text);
    let err = load(&path).unwrap_err();
    assert!(
        err.contains("blobstore.contentAddressableStorage.memory.maximumSizeBytes"),
        "{err}"
    );
}

#[test]
fn oneof_requires_exactly_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "authenticationPolicy: { allow: {} }",
        "authenticationPolicy: { allow: {}, deny: 'no' }",
    );
    let path = write(dir.path(), "c.jsonnet", &text);
    assert!(load(&path).is_err());
}

#[test]
fn jsonnet_errors_carry_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.jsonnet", "{\n  a: 1 +,\n}");
    let err = load(&path).unwrap_err();
    assert!(err.contains("Failed to evaluate configuration"), "{err}");
    assert!(err.contains(":2:"), "line number missing: {err}");
}

#[test]
fn missing_file_is_reported() {
    let err = load("/nonexistent/config.jsonnet").unwrap_err();
    assert!(
        err.starts_with("Failed to read configuration from /nonexistent/config.jsonnet: "),
        "{err}"
    );
}

#[test]
fn durations_in_nested_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "contentAddressableStorage: { memory: { maximumSizeBytes: 1024 * 1024 } }",
        "contentAddressableStorage: { existenceCaching: { backend: { memory: { maximumSizeBytes: 1 } }, existenceCache: { cacheSize: 1000, cacheDuration: '1.5s' } } }",
    );
    let path = write(dir.path(), "c.jsonnet", &text);
    let c = load(&path).unwrap();
    match c.blobstore.content_addressable_storage {
        blobstore::BlobAccessConfiguration::ExistenceCaching(e) => {
            assert_eq!(
                e.existence_cache.cache_duration,
                std::time::Duration::from_millis(1500)
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let bad = write(dir.path(), "bad.jsonnet", &text.replace("'1.5s'", "'1.5'"));
    let err = load(&bad).unwrap_err();
    assert!(err.contains("cacheDuration"), "{err}");
}

#[test]
fn validation_requires_a_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("listenAddresses: [':8985'], ", "");
    let path = write(dir.path(), "c.jsonnet", &text);
    let err = load(&path).unwrap_err();
    assert!(
        err.contains("grpcServers[0]: no listenAddresses or listenPaths"),
        "{err}"
    );
}

#[test]
fn memory_backend_without_size_takes_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL
        .replace("{ maximumSizeBytes: 1024 * 1024 }", "{}")
        .replace("{ maximumSizeBytes: '1048576' }", "{ maximumSizeBytes: 0 }");
    let path = write(dir.path(), "c.jsonnet", &text);
    let c = load(&path).unwrap();
    for backend in [
        &c.blobstore.content_addressable_storage,
        &c.blobstore.action_cache,
    ] {
        match backend {
            blobstore::BlobAccessConfiguration::Memory(m) => {
                assert_eq!(
                    m.maximum_size_bytes,
                    blobstore::DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(blobstore::DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES, 4 << 30);
    assert_eq!(
        blobstore::MemoryBlobAccessConfiguration::default().maximum_size_bytes,
        blobstore::DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES
    );
}

#[test]
fn memory_backend_still_refuses_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace(
        "{ maximumSizeBytes: 1024 * 1024 }",
        "{ maximumSizeByte: 1024 }",
    );
    let path = write(dir.path(), "c.jsonnet", &text);
    let err = load(&path).unwrap_err();
    assert!(
        err.contains("blobstore.contentAddressableStorage.memory.maximumSizeByte: unknown field `maximumSizeByte`"),
        "{err}"
    );
    let text = MINIMAL.replace("{ maximumSizeBytes: 1024 * 1024 }", "{ evict: true }");
    let path = write(dir.path(), "c.jsonnet", &text);
    let err = load(&path).unwrap_err();
    assert!(err.contains("unknown field `evict`"), "{err}");
}

#[test]
fn shipped_local_configuration_uses_the_default_memory_size() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/local.jsonnet");
    let c = load(path).unwrap();
    assert!(matches!(
        c.blobstore.content_addressable_storage,
        blobstore::BlobAccessConfiguration::Memory(ref m)
            if m.maximum_size_bytes == blobstore::DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES
    ));
}

fn container_images(text: &str) -> container_images::ContainerImagesConfiguration {
    serde_json::from_str(text).unwrap()
}

#[test]
fn image_environment_checks_and_rules_have_their_defaults() {
    let c = container_images::ContainerImagesConfiguration::default();
    assert!(c.image_environment && c.check_program_exists);
    assert!(c.platform_property_rules.is_empty());
    assert_eq!(c.required_directories, None);
    let options = crate::action::configuration::new_rewrite_options_from_configuration(&c, 1 << 20);
    assert_eq!(
        options.required_directories,
        vec!["/dev", "/proc", "/sys", "/tmp"]
    );
    let off = container_images(
        r#"{"imageEnvironment": false, "checkProgramExists": false, "requiredDirectories": []}"#,
    );
    let options =
        crate::action::configuration::new_rewrite_options_from_configuration(&off, 1 << 20);
    assert!(!options.image_environment && !options.check_program_exists);
    assert!(options.required_directories.is_empty());
}

#[test]
fn platform_property_rules_are_validated_per_action() {
    let valid = container_images(
        r#"{"platformPropertyRules": [
            {"name": "dockerNetwork", "action": "DROP"},
            {"name": "Pool", "action": "RENAME", "newName": "pool"},
            {"name": "size", "value": "xl", "action": "RENAME", "newValue": "large"},
            {"name": "pool", "action": "SET_WHEN_ABSENT", "newValue": "default"},
            {"name": "dockerPrivileged", "value": "true", "action": "REJECT", "message": "no"}
        ]}"#,
    );
    valid.validate().unwrap();
    let cases = [
        (
            r#"{"name": "x", "action": "DROP", "newName": "y"}"#,
            "DROP takes no",
        ),
        (
            r#"{"name": "x", "action": "RENAME"}"#,
            "RENAME needs newName",
        ),
        (
            r#"{"name": "x", "action": "RENAME", "newName": ""}"#,
            "newName must not be empty",
        ),
        (
            r#"{"name": "x", "action": "SET_WHEN_ABSENT"}"#,
            "needs newValue",
        ),
        (
            r#"{"name": "x", "value": "1", "action": "SET_WHEN_ABSENT", "newValue": "2"}"#,
            "matches by name only",
        ),
        (
            r#"{"name": "x", "action": "REJECT", "newValue": "2"}"#,
            "REJECT takes no",
        ),
        (
            r#"{"name": "container-image", "action": "DROP"}"#,
            "is an image property",
        ),
        (
            r#"{"name": "", "action": "DROP"}"#,
            "name must not be empty",
        ),
    ];
    for (rule, reason) in cases {
        let c = container_images(&format!(r#"{{"platformPropertyRules": [{rule}]}}"#));
        let err = c.validate().unwrap_err();
        assert!(
            err.starts_with("platformPropertyRules[0]: ") && err.contains(reason),
            "{rule}: {err}"
        );
    }
    let unknown: Result<container_images::ContainerImagesConfiguration, _> =
        serde_json::from_str(r#"{"platformPropertyRules": [{"name": "x", "action": "DELETE"}]}"#);
    assert!(unknown.is_err());
    for path in ["/", "../etc", "/tmp/./x"] {
        let c = container_images(&format!(r#"{{"requiredDirectories": ["{path}"]}}"#));
        assert!(
            c.validate().unwrap_err().starts_with("requiredDirectories"),
            "{path}"
        );
    }
}

/// `MINIMAL` with `fleet` set to `fleet` (a Jsonnet object).
fn load_with_fleet(fleet: &str) -> Result<ApplicationConfiguration, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.jsonnet",
        &format!("{MINIMAL} + {{ fleet: {fleet} }}"),
    );
    load(&path).map_err(|e| e.replace(&path, "c.jsonnet"))
}

#[test]
fn fleet_settings_take_their_defaults_and_are_checked() {
    let c = load_with_fleet("{ selfAddress: '10.0.0.1:8985', peersDnsName: 'peers.example:8985' }")
        .unwrap();
    let fleet = c.fleet.unwrap();
    assert_eq!(fleet.self_address, "10.0.0.1:8985");
    assert!(fleet.peers.is_empty());
    assert_eq!(
        (
            fleet.peers_refresh_interval,
            fleet.unreachable_peer_backoff,
            fleet.connect_timeout
        ),
        (None, None, None)
    );
    assert!(load(&write(
        tempfile::tempdir().unwrap().path(),
        "c.jsonnet",
        MINIMAL
    ))
    .unwrap()
    .fleet
    .is_none());

    for (fleet, message) in [
        (
            "{ peers: ['a:1'] }",
            "missing field `selfAddress`",
        ),
        (
            "{ selfAddress: 'a:1' }",
            "Invalid configuration in c.jsonnet: fleet.peers, peersDnsName: at least one is required",
        ),
        (
            "{ selfAddress: 'a', peers: ['a:1'] }",
            "Invalid configuration in c.jsonnet: fleet.selfAddress: \"a\" is not host:port",
        ),
        (
            "{ selfAddress: 'a:1', peers: ['a:1', 'b:x'] }",
            "Invalid configuration in c.jsonnet: fleet.peers[1]: \"b:x\" is not host:port",
        ),
        (
            "{ selfAddress: 'a:1', peers: ['a:1'], peersRefreshInterval: '0s' }",
            "Invalid configuration in c.jsonnet: fleet.peersRefreshInterval: must be positive",
        ),
        (
            "{ selfAddress: 'a:1', peers: ['a:1'], peerClient: { address: 'x:1' } }",
            "unknown field `address`",
        ),
    ] {
        let err = load_with_fleet(fleet).unwrap_err();
        assert!(err.contains(message), "{fleet}: {err}");
    }
}
