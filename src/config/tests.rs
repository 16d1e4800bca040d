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
