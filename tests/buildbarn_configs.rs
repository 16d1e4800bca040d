//! The Buildbarn configurations of the examples, checked against what the Buildbarn
//! binaries that run them require, so that a configuration a binary would refuse, or
//! with which it would start and then fail every action, fails CI instead of a
//! deployment.
//!
//! Which binary runs which file, and with which image, is read from the deployments
//! themselves (the compose files, the Kubernetes manifests). Every Buildbarn `.jsonnet`
//! of `examples/` must be run by one of them, and is evaluated with the project's
//! Jsonnet loader, then checked:
//!
//! - against a schema of each binary's configuration: the field names (camelCase or
//!   snake_case, as protojson accepts both), whether a field is a message, a list, a
//!   map or a scalar, durations, enumerations and oneofs. The binaries refuse unknown
//!   fields and a oneof given twice. Messages the schema leaves `any` are not looked
//!   into;
//! - against the rules their start-up code enforces, and those without which every
//!   action fails (`RULES` lists them all);
//! - for the storage sizes the deployment promises (`largestBlobSizeBytes` in the
//!   deployment's `common.libsonnet`);
//! - for image tags: Buildbarn images on the release these rules were taken from,
//!   every other image on a real, fixed tag.
//!
//! The schema and the rules were written for the Buildbarn releases in `RELEASES`; an
//! example that moves to another release fails here until they are checked again.
//! Every failure names the file, the field and the reason. The tests at the end show
//! each rule firing on a broken sample.

use bb_container_expander::config::jsonnet;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

/// The Buildbarn images and the release tags the schema and rules below describe.
const RELEASES: &[(&str, &str)] = &[
    ("ghcr.io/buildbarn/bb-storage", "20260609T094425Z-10acc76"),
    ("ghcr.io/buildbarn/bb-scheduler", "20260527T162223Z-c48dcda"),
    ("ghcr.io/buildbarn/bb-worker", "20260527T162223Z-c48dcda"),
    (
        "ghcr.io/buildbarn/bb-runner-installer",
        "20260527T162223Z-c48dcda",
    ),
    ("ghcr.io/buildbarn/bb-browser", "20260415T065533Z-ee35c54"),
];

/// The image of the expander itself in the Kubernetes example, which users build from
/// the project's Dockerfile: it must carry the project's version.
const EXPANDER_IMAGE: &str = "registry.example.com/buildbarn/bb-container-expander";

/// Every rule, by name, with what it protects against. The tests at the end make each
/// of them fire at least once.
const RULES: &[(&str, &str)] = &[
    ("known-fields", "protojson refuses unknown fields: the binary does not start"),
    ("field-type", "a value of the wrong JSON type, or a malformed duration or enum, is refused by protojson"),
    ("oneof", "two choices of one oneof are refused by protojson; no choice where one is needed stops the binary"),
    ("required", "a message the binary's start-up code needs is missing: it does not start"),
    ("positive", "a number the binary's start-up code requires positive is zero or negative"),
    ("duration", "a duration the binary parses at start-up is missing"),
    ("eviction-policy", "a cache replacement policy is unset (UNKNOWN), which the binary refuses"),
    ("jmespath", "a JMESPath expression is empty or does not compile"),
    ("grpc-server", "a gRPC server without an authentication policy or without anywhere to listen"),
    ("http-server", "an HTTP server without an authentication policy"),
    ("grpc-client", "a gRPC client without an address"),
    ("serves-nothing", "a binary without the servers its role needs starts but cannot be reached"),
    ("instance-name", "an instance name with redundant slashes or a reserved keyword is refused"),
    ("platform-sorted", "bb_scheduler refuses a platform whose properties are not sorted by name, then value"),
    ("storage-backend", "a storage backend in a place the binary does not support it"),
    ("local-blocks", "a local store whose blocks are too many, too small, or cannot hold the blobs the deployment promises"),
    ("file-pool", "a worker whose runners cannot create a single file, or whose file pool is smaller than their quotas"),
    ("virtual-build-directory", "a virtual build directory missing what its reads and mounts need"),
    ("runner", "a bb_runner configuration the worker cannot use"),
    ("image-tag", "an image that cannot be pulled, or not of the release these rules describe"),
    ("deployment", "a file no binary runs, a binary nobody knows, a promise nobody made"),
];

// ---------------------------------------------------------------------------------
// Violations
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Violation {
    rule: &'static str,
    file: String,
    field: String,
    reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {} [{}]",
            self.file,
            if self.field.is_empty() {
                "(top level)"
            } else {
                &self.field
            },
            self.reason,
            self.rule
        )
    }
}

struct Report<'a> {
    file: &'a str,
    violations: Vec<Violation>,
}

impl<'a> Report<'a> {
    fn new(file: &'a str) -> Self {
        Report {
            file,
            violations: Vec::new(),
        }
    }

    fn fail(&mut self, rule: &'static str, field: &str, reason: impl Into<String>) {
        assert!(
            RULES.iter().any(|(name, _)| *name == rule),
            "rule {rule} is not in RULES"
        );
        self.violations.push(Violation {
            rule,
            file: self.file.to_owned(),
            field: field.to_owned(),
            reason: reason.into(),
        });
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn map_key(path: &str, key: &str) -> String {
    format!("{path}[{key:?}]")
}

// ---------------------------------------------------------------------------------
// Reading protojson values
// ---------------------------------------------------------------------------------

fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel_case(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A field of a message by its JSON (camelCase) name, also found under its proto
/// (snake_case) name, as protojson accepts either. `null` counts as absent.
fn field<'a>(message: &'a Value, camel: &str) -> Option<&'a Value> {
    let object = message.as_object()?;
    object
        .get(camel)
        .or_else(|| object.get(&snake_case(camel)))
        .filter(|v| !v.is_null())
}

/// An integer as protojson reads it: a JSON number, or a decimal string (int64).
fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e30)
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An integer field, 0 when absent (proto3 scalars default to zero).
fn integer_field(message: &Value, camel: &str) -> i128 {
    field(message, camel).and_then(integer).unwrap_or(0)
}

fn list<'a>(message: &'a Value, camel: &str) -> &'a [Value] {
    field(message, camel)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Seconds of a protojson Duration: digits, at most 9 decimals, an `s`.
fn duration_seconds(value: &Value) -> Option<f64> {
    let text = value.as_str()?.strip_suffix('s')?;
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    text.parse().ok()
}

fn is_valid_instance_name(name: &str) -> Result<(), String> {
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(format!("{name:?} has redundant slashes"));
    }
    const RESERVED: &[&str] = &[
        "blobs",
        "uploads",
        "actions",
        "actionResults",
        "operations",
        "capabilities",
        "compressed-blobs",
    ];
    match name.split('/').find(|c| RESERVED.contains(c)) {
        Some(keyword) => Err(format!(
            "{name:?} contains the reserved keyword {keyword:?}"
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------

/// The configuration messages of the binaries, in a notation of this file: a line
/// without indentation names a message; each indented line below is one field,
/// `proto_name: [*|map ]type [| oneof[!]]`: `*` a repeated field, `map` a map from
/// strings, `| g` a member of the oneof `g`, `!` one of whose members the binary
/// requires. Types are `string`, `bool`, `int` (any integer type), `double`,
/// `duration`, `empty` (google.protobuf.Empty), `enum:Name` (see `ENUMS`), `any` (not
/// looked into) or another message. Only what the examples use, or may plausibly
/// use, is spelled out; the rest is `any`.
const SCHEMA: &str = r#"
bb_storage.Application
  grpc_servers: *grpc.Server
  schedulers: map builder.Scheduler
  maximum_message_size_bytes: int
  global: global.Configuration
  content_addressable_storage: bb_storage.ScannableStore
  action_cache: bb_storage.Store
  indirect_content_addressable_storage: bb_storage.ScannableStore
  initial_size_class_cache: bb_storage.Store
  file_system_access_cache: bb_storage.Store
  execute_authorizer: auth.Authorizer
  supported_compressors: *any
  zstd_pool: any

bb_storage.ScannableStore
  backend: blobstore.BlobAccess
  get_authorizer: auth.Authorizer
  put_authorizer: auth.Authorizer
  find_missing_authorizer: auth.Authorizer

bb_storage.Store
  backend: blobstore.BlobAccess
  get_authorizer: auth.Authorizer
  put_authorizer: auth.Authorizer

builder.Scheduler
  endpoint: grpc.Client
  add_instance_name_prefix: string

bb_scheduler.Application
  client_grpc_servers: *grpc.Server
  worker_grpc_servers: *grpc.Server
  build_queue_state_grpc_servers: *grpc.Server
  admin_http_servers: *http.Server
  admin_route_prefix: string
  browser_url: string
  content_addressable_storage: blobstore.BlobAccess
  initial_size_class_cache: blobstore.BlobAccess
  maximum_message_size_bytes: int
  global: global.Configuration
  predeclared_platform_queues: *bb_scheduler.PredeclaredPlatformQueue
  execute_authorizer: auth.Authorizer
  modify_drains_authorizer: auth.Authorizer
  kill_operations_authorizer: auth.Authorizer
  synchronize_authorizer: auth.Authorizer
  action_router: scheduler.ActionRouter
  platform_queue_with_no_workers_timeout: duration
  zstd_pool: any

bb_scheduler.PredeclaredPlatformQueue
  instance_name_prefix: string
  platform: Platform
  size_classes: *int
  worker_invocation_stickiness_limits: *duration
  maximum_queued_background_learning_operations: int
  background_learning_operation_priority: int

scheduler.ActionRouter
  simple: scheduler.SimpleActionRouter | kind!
  demultiplexing: scheduler.DemultiplexingActionRouter | kind!
  remote: scheduler.RemoteActionRouter | kind!

scheduler.SimpleActionRouter
  platform_key_extractor: scheduler.PlatformKeyExtractor
  invocation_key_extractors: *scheduler.InvocationKeyExtractor
  initial_size_class_analyzer: scheduler.InitialSizeClassAnalyzer

scheduler.DemultiplexingActionRouter
  platform_key_extractor: scheduler.PlatformKeyExtractor
  backends: *scheduler.DemultiplexingBackend
  default_action_router: scheduler.ActionRouter

scheduler.DemultiplexingBackend
  instance_name_prefix: string
  platform: Platform
  action_router: scheduler.ActionRouter

scheduler.RemoteActionRouter
  grpc_client: grpc.Client
  initial_size_class_analyzer: scheduler.InitialSizeClassAnalyzer

scheduler.PlatformKeyExtractor
  action: empty | kind!
  static: Platform | kind!

scheduler.InvocationKeyExtractor
  tool_invocation_id: empty | kind!
  correlated_invocations_id: empty | kind!
  authentication_metadata: empty | kind!

scheduler.InitialSizeClassAnalyzer
  default_execution_timeout: duration
  maximum_execution_timeout: duration
  feedback_driven: any

bb_worker.Application
  blobstore: blobstore.Blobstore
  browser_url: string
  maximum_message_size_bytes: int
  scheduler: grpc.Client
  global: global.Configuration
  build_directories: *bb_worker.BuildDirectory
  file_pool: filesystem.FilePool
  completed_action_loggers: *any
  output_upload_concurrency: int
  directory_cache: cas.CachingDirectoryFetcher
  prefetching: bb_worker.Prefetching
  force_upload_trees_and_directories: bool
  input_download_concurrency: int
  http_execution_timeout_compensators: *any
  zstd_pool: any

bb_worker.BuildDirectory
  native: bb_worker.NativeBuildDirectory | backend!
  virtual: bb_worker.VirtualBuildDirectory | backend!
  runners: *bb_worker.Runner

bb_worker.NativeBuildDirectory
  build_directory_path: string
  cache_directory_path: string
  maximum_cache_file_count: int
  maximum_cache_size_bytes: int
  cache_replacement_policy: enum:CacheReplacementPolicy

bb_worker.VirtualBuildDirectory
  mount: virtual.Mount
  maximum_execution_timeout_compensation: duration
  shuffle_directory_listings: bool
  hidden_files_pattern: string
  maximum_writable_file_upload_delay: duration
  case_insensitive: bool

bb_worker.Runner
  endpoint: grpc.Client
  concurrency: int
  instance_name_prefix: string
  platform: Platform
  size_class: int
  maximum_file_pool_file_count: int
  maximum_file_pool_size_bytes: int
  worker_id: map string
  input_root_character_device_nodes: *string
  costs_per_second: map any
  environment_variables: map string
  maximum_consecutive_test_infrastructure_failures: int
  build_directory_owner_user_id: int
  build_directory_owner_group_id: int

bb_worker.Prefetching
  file_system_access_cache: blobstore.BlobAccess
  bloom_filter_bits_per_path: int
  bloom_filter_maximum_size_bytes: int

filesystem.FilePool
  block_device: blockdevice.Configuration | backend!

virtual.Mount
  mount_path: string
  fuse: virtual.Fuse | backend!
  nfsv4: any | backend!
  winfsp: empty | backend!

virtual.Fuse
  directory_entry_validity: duration
  inode_attribute_validity: duration
  allow_other: bool
  in_header_authentication_metadata_jmespath_expression: jmespath.Expression
  linux_backing_dev_info_tunables: map string
  mount_method: enum:MountMethod
  maximum_background_tasks: int

cas.CachingDirectoryFetcher
  maximum_count: int
  maximum_size_bytes: int
  cache_replacement_policy: enum:CacheReplacementPolicy

bb_runner.Application
  build_directory_path: string
  grpc_servers: *grpc.Server
  clean_temporary_directories: *string
  global: global.Configuration
  set_tmpdir_environment_variable: bool
  temporary_directory_installer: grpc.Client
  chroot_into_input_root: bool
  clean_process_table: bool
  readiness_checking_pathnames: *string
  run_commands_as: any
  symlink_temporary_directories: *string
  run_command_cleaner: *string
  apple_xcode_developer_directories: map string

bb_browser.Application
  blobstore: blobstore.Blobstore
  maximum_message_size_bytes: int
  http_servers: *http.Server
  route_prefix: string
  global: global.Configuration
  bb_clientd_instance_name_prefix: string
  initial_size_class_cache: blobstore.BlobAccess
  file_system_access_cache: blobstore.BlobAccess
  authorizer: auth.Authorizer
  request_metadata_links_jmespath_expression: jmespath.Expression
  zstd_pool: any

global.Configuration
  tracing: any
  mutex_profile_fraction: int
  prometheus_pushgateway: any
  log_paths: *string
  diagnostics_http_server: global.DiagnosticsHttpServer
  set_umask: any
  grpc_forward_and_reuse_metadata: *string
  grpc_kubernetes_resolvers: map any
  set_resource_limits: map any

global.DiagnosticsHttpServer
  http_servers: *http.Server
  enable_pprof: bool
  enable_prometheus: bool
  enable_active_spans: bool

grpc.Server
  listen_addresses: *string
  listen_paths: *string
  authentication_policy: grpc.AuthenticationPolicy
  maximum_received_message_size_bytes: int
  keepalive_enforcement_policy: any
  health_check_service: string
  initial_window_size_bytes: int
  initial_conn_window_size_bytes: int
  tracing: map any
  keepalive_parameters: any
  stop_gracefully: bool
  tls: any | transport_security
  alts: empty | transport_security
  relays: *any

grpc.AuthenticationPolicy
  allow: any | policy!
  any: any | policy!
  all: any | policy!
  deny: string | policy!
  tls_client_certificate: any | policy!
  jwt: any | policy!
  peer_credentials_jmespath_expression: jmespath.Expression | policy!
  remote: any | policy!

grpc.Client
  address: string
  tls: any
  keepalive: any
  add_metadata: *any
  add_metadata_jmespath_expression: jmespath.Expression
  oauth2: any
  initial_window_size_bytes: int
  initial_conn_window_size_bytes: int
  proxy_url: string
  tracing: map any
  default_service_config: any

http.Server
  listen_addresses: *string
  authentication_policy: http.AuthenticationPolicy
  tls: any

http.AuthenticationPolicy
  allow: any | policy!
  any: any | policy!
  deny: string | policy!
  jwt: any | policy!
  oidc: any | policy!
  accept_header: any | policy!
  remote: any | policy!

auth.Authorizer
  allow: empty | policy!
  instance_name_prefix: any | policy!
  deny: empty | policy!
  jmespath_expression: jmespath.Expression | policy!
  remote: any | policy!

jmespath.Expression
  expression: string
  files: *any
  test_vectors: *any

blobstore.Blobstore
  content_addressable_storage: blobstore.BlobAccess
  action_cache: blobstore.BlobAccess

blobstore.BlobAccess
  read_caching: blobstore.ReadCaching | backend!
  grpc: blobstore.Grpc | backend!
  error: any | backend!
  sharding: blobstore.Sharding | backend!
  mirrored: blobstore.Mirrored | backend!
  local: blobstore.Local | backend!
  existence_caching: blobstore.ExistenceCaching | backend!
  completeness_checking: blobstore.CompletenessChecking | backend!
  read_fallback: blobstore.ReadFallback | backend!
  reference_expanding: any | backend!
  demultiplexing: blobstore.Demultiplexing | backend!
  hierarchical_instance_names: blobstore.BlobAccess | backend!
  action_result_expiring: any | backend!
  read_canarying: any | backend!
  zip_reading: any | backend!
  zip_writing: any | backend!
  with_labels: any | backend!
  label: string | backend!
  deadline_enforcing: any | backend!

blobstore.ReadCaching
  slow: blobstore.BlobAccess
  fast: blobstore.BlobAccess
  replicator: blobstore.Replicator

blobstore.Grpc
  client: grpc.Client
  enable_compression: bool

blobstore.Sharding
  shards: map blobstore.Shard

blobstore.Shard
  backend: blobstore.BlobAccess
  weight: int

blobstore.Mirrored
  backend_a: blobstore.BlobAccess
  backend_b: blobstore.BlobAccess
  replicator_a_to_b: blobstore.Replicator
  replicator_b_to_a: blobstore.Replicator

blobstore.Local
  key_location_map_in_memory: any | key_location_map_backend!
  key_location_map_on_block_device: blockdevice.Configuration | key_location_map_backend!
  key_location_map_maximum_get_attempts: int
  key_location_map_maximum_put_attempts: int
  old_blocks: int
  current_blocks: int
  new_blocks: int
  blocks_in_memory: blobstore.BlocksInMemory | blocks_backend!
  blocks_on_block_device: blobstore.BlocksOnBlockDevice | blocks_backend!
  persistent: blobstore.Persistent
  hierarchical_instance_names: bool

blobstore.BlocksInMemory
  block_size_bytes: int

blobstore.BlocksOnBlockDevice
  source: blockdevice.Configuration
  spare_blocks: int
  data_integrity_validation_cache: digest.ExistenceCache

blobstore.Persistent
  state_directory_path: string
  minimum_epoch_interval: duration

blobstore.ExistenceCaching
  backend: blobstore.BlobAccess
  existence_cache: digest.ExistenceCache

blobstore.CompletenessChecking
  backend: blobstore.BlobAccess
  maximum_total_tree_size_bytes: int

blobstore.ReadFallback
  primary: blobstore.BlobAccess
  secondary: blobstore.BlobAccess
  replicator: blobstore.Replicator

blobstore.Demultiplexing
  instance_name_prefixes: map blobstore.Demultiplexed

blobstore.Demultiplexed
  backend: blobstore.BlobAccess
  add_instance_name_prefix: string

blobstore.Replicator
  local: empty | mode!
  remote: grpc.Client | mode!
  queued: blobstore.QueuedReplicator | mode!
  noop: empty | mode!
  deduplicating: blobstore.Replicator | mode!
  concurrency_limiting: blobstore.ConcurrencyLimitingReplicator | mode!

blobstore.QueuedReplicator
  base: blobstore.Replicator
  existence_cache: digest.ExistenceCache

blobstore.ConcurrencyLimitingReplicator
  base: blobstore.Replicator
  maximum_concurrency: int

blockdevice.Configuration
  device_path: string | source!
  file: blockdevice.File | source!
  write_concurrency_limit: int

blockdevice.File
  path: string
  size_bytes: int

digest.ExistenceCache
  cache_size: int
  cache_duration: duration
  cache_replacement_policy: enum:CacheReplacementPolicy

Platform
  properties: *PlatformProperty

PlatformProperty
  name: string
  value: string
"#;

/// Enumerations by name: their value names, the zero value first.
const ENUMS: &[(&str, &[&str])] = &[
    (
        "CacheReplacementPolicy",
        &[
            "UNKNOWN",
            "FIRST_IN_FIRST_OUT",
            "LEAST_RECENTLY_USED",
            "RANDOM_REPLACEMENT",
        ],
    ),
    (
        "MountMethod",
        &["FUSERMOUNT", "DIRECT", "DIRECT_AND_FUSERMOUNT"],
    ),
];

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    String,
    Bool,
    Int,
    Double,
    Duration,
    Empty,
    Enum(&'static str),
    Any,
    Message(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Shape {
    Single,
    Repeated,
    Map,
}

#[derive(Clone, Debug)]
struct FieldSpec {
    proto_name: String,
    json_name: String,
    kind: Kind,
    shape: Shape,
    oneof: Option<(String, bool)>,
}

type Schema = HashMap<String, Vec<FieldSpec>>;

fn parse_kind(text: &str) -> Kind {
    match text {
        "string" => Kind::String,
        "bool" => Kind::Bool,
        "int" => Kind::Int,
        "double" => Kind::Double,
        "duration" => Kind::Duration,
        "empty" => Kind::Empty,
        "any" => Kind::Any,
        _ => match text.strip_prefix("enum:") {
            Some(name) => Kind::Enum(
                ENUMS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("unknown enum {name}"))
                    .0,
            ),
            None => Kind::Message(text.to_owned()),
        },
    }
}

fn schema() -> &'static Schema {
    static SCHEMA_CELL: OnceLock<Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| {
        let mut schema = Schema::new();
        let mut current: Option<String> = None;
        for line in SCHEMA.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if !line.starts_with(' ') {
                let name = line.trim().to_owned();
                assert!(
                    schema.insert(name.clone(), Vec::new()).is_none(),
                    "{name} twice"
                );
                current = Some(name);
                continue;
            }
            let (name, rest) = line.trim().split_once(':').expect(line);
            let (type_text, oneof) = match rest.split_once('|') {
                Some((t, group)) => {
                    let group = group.trim();
                    let required = group.ends_with('!');
                    (
                        t.trim(),
                        Some((group.trim_end_matches('!').to_owned(), required)),
                    )
                }
                None => (rest.trim(), None),
            };
            let (shape, type_text) = if let Some(t) = type_text.strip_prefix('*') {
                (Shape::Repeated, t)
            } else if let Some(t) = type_text.strip_prefix("map ") {
                (Shape::Map, t)
            } else {
                (Shape::Single, type_text)
            };
            let spec = FieldSpec {
                proto_name: name.trim().to_owned(),
                json_name: camel_case(name.trim()),
                kind: parse_kind(type_text.trim()),
                shape,
                oneof,
            };
            schema
                .get_mut(current.as_ref().expect("a field before any message"))
                .unwrap()
                .push(spec);
        }
        // Every message a field names is described.
        for fields in schema.values() {
            for f in fields {
                if let Kind::Message(m) = &f.kind {
                    assert!(schema.contains_key(m), "message {m} is not described");
                }
            }
        }
        schema
    })
}

/// A message of the configuration, where the schema walk met it.
struct Visited<'a> {
    message: String,
    path: String,
    value: &'a Value,
}

/// Checks `value` against the message `name`, recording every message it meets.
fn check_message<'a>(
    name: &str,
    value: &'a Value,
    path: &str,
    report: &mut Report,
    visited: &mut Vec<Visited<'a>>,
) {
    let fields = &schema()[name];
    let Some(object) = value.as_object() else {
        report.fail(
            "field-type",
            path,
            format!("expected an object ({name}), found {value}"),
        );
        return;
    };
    visited.push(Visited {
        message: name.to_owned(),
        path: path.to_owned(),
        value,
    });
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut oneofs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, child) in object {
        let child_path = join(path, key);
        let Some(spec) = fields
            .iter()
            .find(|f| f.json_name == *key || f.proto_name == *key)
        else {
            let known: Vec<&str> = fields.iter().map(|f| f.json_name.as_str()).collect();
            report.fail(
                "known-fields",
                &child_path,
                format!(
                    "unknown field {key:?} of {name}; the binary refuses it. Known: {}",
                    known.join(", ")
                ),
            );
            continue;
        };
        if let Some(other) = seen.insert(spec.proto_name.as_str(), key) {
            report.fail(
                "known-fields",
                &child_path,
                format!("{key:?} and {other:?} are the same field"),
            );
        }
        if child.is_null() {
            continue;
        }
        if let Some((group, _)) = &spec.oneof {
            oneofs.entry(group).or_default().push(key);
        }
        match spec.shape {
            Shape::Single => check_kind(&spec.kind, child, &child_path, report, visited),
            Shape::Repeated => match child.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check_kind(&spec.kind, item, &index(&child_path, i), report, visited);
                    }
                }
                None => report.fail(
                    "field-type",
                    &child_path,
                    format!("expected a list, found {child}"),
                ),
            },
            Shape::Map => match child.as_object() {
                Some(entries) => {
                    for (k, item) in entries {
                        check_kind(&spec.kind, item, &map_key(&child_path, k), report, visited);
                    }
                }
                None => report.fail(
                    "field-type",
                    &child_path,
                    format!("expected an object (a map), found {child}"),
                ),
            },
        }
    }
    for (group, members) in &oneofs {
        if members.len() > 1 {
            report.fail(
                "oneof",
                path,
                format!(
                    "{} are choices of the same oneof {group} of {name}: give only one",
                    members.join(" and ")
                ),
            );
        }
    }
    let mut required: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in fields {
        if let Some((group, true)) = &f.oneof {
            required.entry(group).or_default().push(&f.json_name);
        }
    }
    for (group, members) in required {
        if !oneofs.contains_key(group) {
            report.fail(
                "oneof",
                path,
                format!(
                    "{name} needs one of {} (its oneof {group}); the binary refuses it without",
                    members.join(", ")
                ),
            );
        }
    }
}

fn check_kind<'a>(
    kind: &Kind,
    value: &'a Value,
    path: &str,
    report: &mut Report,
    visited: &mut Vec<Visited<'a>>,
) {
    let ok = match kind {
        Kind::String => value.is_string(),
        Kind::Bool => value.is_boolean(),
        Kind::Int => integer(value).is_some(),
        Kind::Double => {
            value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok())
        }
        Kind::Duration => duration_seconds(value).is_some(),
        Kind::Empty => value.as_object().is_some_and(Map::is_empty),
        Kind::Enum(name) => {
            let values = ENUMS.iter().find(|(n, _)| n == name).unwrap().1;
            value.as_str().is_some_and(|s| values.contains(&s)) || integer(value).is_some()
        }
        Kind::Any => true,
        Kind::Message(name) => {
            check_message(name, value, path, report, visited);
            true
        }
    };
    if !ok {
        let expected = match kind {
            Kind::Duration => "a duration such as \"30s\" or \"1.5s\"".to_owned(),
            Kind::Empty => "{}".to_owned(),
            Kind::Enum(name) => format!(
                "one of {}",
                ENUMS.iter().find(|(n, _)| n == name).unwrap().1.join(", ")
            ),
            other => format!("{other:?}").to_lowercase(),
        };
        report.fail(
            "field-type",
            path,
            format!("expected {expected}, found {value}"),
        );
    }
}

// ---------------------------------------------------------------------------------
// The binaries and their rules
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Binary {
    Storage,
    Scheduler,
    Worker,
    Runner,
    Browser,
}

impl Binary {
    fn root_message(self) -> &'static str {
        match self {
            Binary::Storage => "bb_storage.Application",
            Binary::Scheduler => "bb_scheduler.Application",
            Binary::Worker => "bb_worker.Application",
            Binary::Runner => "bb_runner.Application",
            Binary::Browser => "bb_browser.Application",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Binary::Storage => "bb_storage",
            Binary::Scheduler => "bb_scheduler",
            Binary::Worker => "bb_worker",
            Binary::Runner => "bb_runner",
            Binary::Browser => "bb_browser",
        }
    }
}

/// What the deployment as a whole promises, which single configurations must honour.
#[derive(Clone, Copy, Debug)]
struct Promises {
    /// The largest blob (image file, action output) every CAS must hold.
    largest_blob_size_bytes: u64,
}

/// The kind of store a blob access configuration at `path` belongs to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Cas,
    ActionCache,
    Other,
}

fn store_of(path: &str) -> Store {
    for segment in path.split(['.', '[']) {
        match segment {
            "contentAddressableStorage" | "content_addressable_storage" => return Store::Cas,
            "actionCache" | "action_cache" => return Store::ActionCache,
            "initialSizeClassCache"
            | "initial_size_class_cache"
            | "fileSystemAccessCache"
            | "file_system_access_cache"
            | "indirectContentAddressableStorage"
            | "indirect_content_addressable_storage" => return Store::Other,
            _ => {}
        }
    }
    Store::Other
}

/// Every sector size a block-device file may get: the larger of the file system's
/// block size and the page size. The blocks must hold the promised blob with any.
const SECTOR_SIZES: &[u64] = &[4096, 16384, 65536];

/// The size of one block of a `local` store on a block device: its file of
/// `size_bytes` is `ceil(size_bytes / sector)` sectors, split evenly into `blocks`
/// blocks of whole sectors. A blob must fit in one block.
fn block_size(size_bytes: u64, blocks: u64, sector: u64) -> u64 {
    sector * (size_bytes.div_ceil(sector) / blocks)
}

/// The largest blob such a store holds whatever the sector size: the smallest block
/// over `SECTOR_SIZES`.
fn largest_blob_on_block_device(size_bytes: u64, blocks: u64) -> u64 {
    SECTOR_SIZES
        .iter()
        .map(|&sector| block_size(size_bytes, blocks, sector))
        .min()
        .unwrap()
}

fn check_configuration(
    binary: Binary,
    file: &str,
    config: &Value,
    promises: Option<Promises>,
) -> Vec<Violation> {
    let mut report = Report::new(file);
    let mut visited = Vec::new();
    check_message(binary.root_message(), config, "", &mut report, &mut visited);
    for v in &visited {
        check_by_type(binary, config, v, promises, &mut report);
    }
    check_binary(binary, config, promises, &mut report);
    report.violations
}

/// Rules that hold for a message wherever it appears.
fn check_by_type(
    binary: Binary,
    config: &Value,
    visited: &Visited,
    promises: Option<Promises>,
    report: &mut Report,
) {
    let (path, value) = (visited.path.as_str(), visited.value);
    let require = |report: &mut Report, camel: &str, what: &str| {
        if field(value, camel).is_none() {
            report.fail(
                "required",
                &join(path, camel),
                format!(
                    "missing: {what}; {} does not start without it",
                    binary.name()
                ),
            );
        }
    };
    match visited.message.as_str() {
        "jmespath.Expression" => {
            let expression = field(value, "expression")
                .and_then(Value::as_str)
                .unwrap_or("");
            if expression.trim().is_empty() {
                report.fail(
                    "jmespath",
                    &join(path, "expression"),
                    "empty JMESPath expression, which does not compile",
                );
            } else if let Err(e) = jmespath::compile(expression) {
                report.fail(
                    "jmespath",
                    &join(path, "expression"),
                    format!("JMESPath expression does not compile: {e}"),
                );
            }
        }
        "digest.ExistenceCache" => {
            if field(value, "cacheDuration").is_none() {
                report.fail(
                    "duration",
                    &join(path, "cacheDuration"),
                    "missing: an existence cache needs a cache duration",
                );
            }
            check_eviction_policy(value, path, report);
        }
        "cas.CachingDirectoryFetcher" | "bb_worker.NativeBuildDirectory" => {
            check_eviction_policy(value, path, report);
        }
        "grpc.Server" => {
            if field(value, "authenticationPolicy").is_none() {
                report.fail(
                    "grpc-server",
                    &join(path, "authenticationPolicy"),
                    "missing: a gRPC server needs an authentication policy (e.g. { allow: {} })",
                );
            }
            if list(value, "listenAddresses").is_empty() && list(value, "listenPaths").is_empty() {
                report.fail(
                    "grpc-server",
                    path,
                    "a gRPC server needs listenAddresses or listenPaths",
                );
            }
        }
        "http.Server" if field(value, "authenticationPolicy").is_none() => {
            report.fail(
                "http-server",
                &join(path, "authenticationPolicy"),
                "missing: an HTTP server needs an authentication policy (e.g. { allow: {} })",
            );
        }
        "grpc.Client"
            if field(value, "address")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            report.fail(
                "grpc-client",
                &join(path, "address"),
                "missing: a gRPC client needs an address",
            );
        }
        "Platform" => {
            let properties: Vec<(String, String)> = list(value, "properties")
                .iter()
                .map(|p| {
                    let text = |k| field(p, k).and_then(Value::as_str).unwrap_or("").to_owned();
                    (text("name"), text("value"))
                })
                .collect();
            for (i, pair) in properties.windows(2).enumerate() {
                let (a, b) = (&pair[0], &pair[1]);
                if (a.0.as_bytes(), a.1.as_bytes()) >= (b.0.as_bytes(), b.1.as_bytes()) {
                    report.fail(
                        "platform-sorted",
                        &index(&join(path, "properties"), i + 1),
                        format!(
                            "{}={} must come before {}={}: properties must be sorted by name, then value, in byte order, without duplicates",
                            b.0, b.1, a.0, a.1
                        ),
                    );
                }
            }
        }
        "blobstore.ReadCaching" => {
            for (f, what) in [
                ("slow", "the backend read from"),
                ("fast", "the cache"),
                ("replicator", "how blobs are copied into the cache"),
            ] {
                require(report, f, what);
            }
        }
        "blobstore.Mirrored" => {
            for f in ["backendA", "backendB", "replicatorAToB", "replicatorBToA"] {
                require(report, f, "every part of a mirrored backend");
            }
        }
        "blobstore.ReadFallback" => {
            for f in ["primary", "secondary", "replicator"] {
                require(report, f, "every part of a read fallback backend");
            }
        }
        "blobstore.ExistenceCaching" | "blobstore.CompletenessChecking" => {
            require(report, "backend", "the backend it decorates");
            if visited.message == "blobstore.ExistenceCaching" {
                require(report, "existenceCache", "the existence cache");
                if store_of(path) != Store::Cas {
                    report.fail(
                        "storage-backend",
                        path,
                        "existenceCaching is only supported in a Content Addressable Storage",
                    );
                }
            } else {
                if store_of(path) != Store::ActionCache {
                    report.fail(
                        "storage-backend",
                        path,
                        "completenessChecking is only supported in an Action Cache",
                    );
                }
                let has_cas = match binary {
                    Binary::Storage => field(config, "contentAddressableStorage").is_some(),
                    _ => field(config, "blobstore")
                        .and_then(|b| field(b, "contentAddressableStorage"))
                        .is_some(),
                };
                if !has_cas {
                    report.fail(
                        "storage-backend",
                        path,
                        "completenessChecking needs a Content Addressable Storage in the same configuration",
                    );
                }
            }
        }
        "blobstore.Grpc" => require(report, "client", "the gRPC client"),
        "blobstore.Sharding" => {
            let shards = field(value, "shards").and_then(Value::as_object);
            if shards.is_none_or(Map::is_empty) {
                report.fail(
                    "required",
                    &join(path, "shards"),
                    "a sharding backend needs at least one shard",
                );
            }
            for (key, shard) in shards.into_iter().flatten() {
                let shard_path = map_key(&join(path, "shards"), key);
                if integer_field(shard, "weight") <= 0 {
                    report.fail(
                        "positive",
                        &join(&shard_path, "weight"),
                        "shards must have positive weights",
                    );
                }
                if field(shard, "backend").is_none() {
                    report.fail(
                        "required",
                        &join(&shard_path, "backend"),
                        "missing: the shard's storage",
                    );
                }
            }
        }
        "blobstore.Demultiplexed" | "builder.Scheduler" => {
            let key = path.rsplit_once('[').map(|(_, k)| k).unwrap_or("");
            let key = key.trim_end_matches(']').trim_matches('"');
            for (name, field_path) in [
                (key.to_owned(), path.to_owned()),
                (
                    field(value, "addInstanceNamePrefix")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    join(path, "addInstanceNamePrefix"),
                ),
            ] {
                if let Err(e) = is_valid_instance_name(&name) {
                    report.fail(
                        "instance-name",
                        &field_path,
                        format!("invalid instance name: {e}"),
                    );
                }
            }
            let needed = if visited.message == "builder.Scheduler" {
                "endpoint"
            } else {
                "backend"
            };
            require(report, needed, "where requests for this instance name go");
        }
        "blobstore.Local" => check_local(binary, config, value, path, promises, report),
        "blobstore.Persistent" => {
            if field(value, "minimumEpochInterval").is_none() {
                report.fail(
                    "duration",
                    &join(path, "minimumEpochInterval"),
                    "missing: persistent local storage needs a minimum epoch interval",
                );
            }
            require(
                report,
                "stateDirectoryPath",
                "where the persistent state is kept",
            );
        }
        "blockdevice.Configuration" => {
            if let Some(file) = field(value, "file") {
                if integer_field(file, "sizeBytes") <= 0 {
                    report.fail(
                        "positive",
                        &join(&join(path, "file"), "sizeBytes"),
                        "a block device file needs a positive size",
                    );
                }
                if field(file, "path")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    report.fail(
                        "required",
                        &join(&join(path, "file"), "path"),
                        "missing: the block device file's path",
                    );
                }
            }
        }
        "virtual.Fuse" => {
            // The zero value, FUSERMOUNT, is what an absent field means.
            let methods = ENUMS.iter().find(|(n, _)| *n == "MountMethod").unwrap().1;
            let method = match field(value, "mountMethod") {
                Some(Value::String(s)) => s.as_str(),
                Some(v) => integer(v)
                    .and_then(|n| methods.get(usize::try_from(n).ok()?))
                    .copied()
                    .unwrap_or("?"),
                None => methods[0],
            };
            if method == "FUSERMOUNT" {
                report.fail(
                    "virtual-build-directory",
                    &join(path, "mountMethod"),
                    format!(
                        "mountMethod {method} mounts through the fusermount program, which the bb-worker image does not have: use DIRECT"
                    ),
                );
            }
        }
        "bb_worker.VirtualBuildDirectory" => {
            require(report, "mount", "where to mount the virtual file system");
            for f in [
                "maximumExecutionTimeoutCompensation",
                "maximumWritableFileUploadDelay",
            ] {
                if field(value, f).is_none() {
                    report.fail(
                        "duration",
                        &join(path, f),
                        "missing: bb_worker parses it at start-up for a virtual build directory",
                    );
                }
            }
        }
        "bb_worker.Runner" => {
            require(report, "endpoint", "how to reach bb_runner");
            if integer_field(value, "concurrency") < 1 {
                report.fail(
                    "positive",
                    &join(path, "concurrency"),
                    "runner concurrency must be positive",
                );
            }
            if let Some(prefix) = field(value, "instanceNamePrefix").and_then(Value::as_str) {
                if let Err(e) = is_valid_instance_name(prefix) {
                    report.fail(
                        "instance-name",
                        &join(path, "instanceNamePrefix"),
                        format!("invalid instance name: {e}"),
                    );
                }
            }
            for (i, node) in list(value, "inputRootCharacterDeviceNodes")
                .iter()
                .enumerate()
            {
                // bb_worker stats /dev/NAME at start-up and refuses anything but a
                // character device; these are the ones every container has.
                const CONTAINER_DEVICES: &[&str] =
                    &["full", "null", "ptmx", "random", "tty", "urandom", "zero"];
                let name = node.as_str().unwrap_or("");
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    report.fail(
                        "runner",
                        &index(&join(path, "inputRootCharacterDeviceNodes"), i),
                        format!("{name:?} is not the name of a device in /dev"),
                    );
                } else if !CONTAINER_DEVICES.contains(&name) {
                    report.fail(
                        "runner",
                        &index(&join(path, "inputRootCharacterDeviceNodes"), i),
                        format!(
                            "/dev/{name} is not a character device every container has, and \
                             bb_worker does not start without it"
                        ),
                    );
                }
            }
        }
        "scheduler.SimpleActionRouter" => {
            require(
                report,
                "platformKeyExtractor",
                "how platforms are extracted",
            );
            require(report, "initialSizeClassAnalyzer", "the execution timeouts");
            for (i, extractor) in list(value, "invocationKeyExtractors").iter().enumerate() {
                if extractor.as_object().is_some_and(Map::is_empty) {
                    report.fail(
                        "required",
                        &index(&join(path, "invocationKeyExtractors"), i),
                        "an invocation key extractor needs a kind",
                    );
                }
            }
        }
        "scheduler.RemoteActionRouter" => {
            require(report, "grpcClient", "the remote action router's endpoint");
            require(report, "initialSizeClassAnalyzer", "the execution timeouts");
        }
        "scheduler.DemultiplexingActionRouter" => {
            require(
                report,
                "platformKeyExtractor",
                "how platforms are extracted",
            );
            require(
                report,
                "defaultActionRouter",
                "the router of unmatched actions",
            );
        }
        "scheduler.InitialSizeClassAnalyzer" => {
            for f in ["defaultExecutionTimeout", "maximumExecutionTimeout"] {
                if field(value, f).is_none() {
                    report.fail(
                        "duration",
                        &join(path, f),
                        "missing: bb_scheduler parses it at start-up",
                    );
                }
            }
            if field(value, "feedbackDriven").is_some()
                && field(config, "initialSizeClassCache").is_none()
            {
                report.fail(
                    "required",
                    &join(path, "feedbackDriven"),
                    "feedback driven analysis needs an initialSizeClassCache",
                );
            }
        }
        "bb_scheduler.PredeclaredPlatformQueue" => {
            let prefix = field(value, "instanceNamePrefix")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Err(e) = is_valid_instance_name(prefix) {
                report.fail(
                    "instance-name",
                    &join(path, "instanceNamePrefix"),
                    format!("invalid instance name: {e}"),
                );
            }
        }
        _ => {}
    }
}

fn check_eviction_policy(value: &Value, path: &str, report: &mut Report) {
    let policy = field(value, "cacheReplacementPolicy");
    let known = match policy {
        Some(Value::String(s)) => s != "UNKNOWN",
        Some(v) => integer(v).is_some_and(|n| (1..=3).contains(&n)),
        None => false,
    };
    if !known {
        report.fail(
            "eviction-policy",
            &join(path, "cacheReplacementPolicy"),
            "missing or UNKNOWN: the cache is refused without a replacement policy \
             (FIRST_IN_FIRST_OUT, LEAST_RECENTLY_USED or RANDOM_REPLACEMENT)",
        );
    }
}

fn check_local(
    binary: Binary,
    config: &Value,
    local: &Value,
    path: &str,
    promises: Option<Promises>,
    report: &mut Report,
) {
    let store = store_of(path);
    let new_blocks = integer_field(local, "newBlocks");
    let blocks =
        integer_field(local, "oldBlocks") + integer_field(local, "currentBlocks") + new_blocks;
    if store != Store::Cas && new_blocks != 1 {
        report.fail(
            "local-blocks",
            &join(path, "newBlocks"),
            format!("{new_blocks}: only a Content Addressable Storage may have other than exactly 1 new block"),
        );
    }
    if store != Store::Cas && field(local, "hierarchicalInstanceNames") == Some(&Value::Bool(true))
    {
        report.fail(
            "storage-backend",
            &join(path, "hierarchicalInstanceNames"),
            "hierarchical instance names are only supported in a Content Addressable Storage",
        );
    }
    // What one block holds: the largest blob this store accepts.
    let mut block_size = None;
    if let Some(device) = field(local, "blocksOnBlockDevice") {
        let total = blocks + integer_field(device, "spareBlocks");
        if total > 100 {
            report.fail(
                "local-blocks",
                path,
                format!("{total} blocks in all (spare + old + current + new): at most 100 are supported"),
            );
        }
        if total <= 0 {
            report.fail(
                "local-blocks",
                path,
                "no blocks: spare + old + current + new must be positive",
            );
        }
        let size = field(device, "source")
            .and_then(|s| field(s, "file"))
            .map(|f| integer_field(f, "sizeBytes"));
        if let Some(size) = size.filter(|&s| s > 0 && total > 0) {
            let block = largest_blob_on_block_device(size as u64, total as u64);
            if block == 0 {
                report.fail(
                    "local-blocks",
                    &join(path, "blocksOnBlockDevice.source.file.sizeBytes"),
                    format!("{size} bytes in {total} blocks leaves no room for any blob"),
                );
            }
            block_size = Some((block, format!("{size} bytes in {total} blocks")));
        }
        // With a virtual build directory, files are read piecemeal from this cache,
        // and every read would verify the whole blob again.
        if binary == Binary::Worker
            && store == Store::Cas
            && has_virtual_build_directory(config)
            && field(device, "dataIntegrityValidationCache").is_none()
        {
            report.fail(
                "virtual-build-directory",
                &join(path, "blocksOnBlockDevice.dataIntegrityValidationCache"),
                "missing: a worker with a virtual build directory reads files piecemeal from \
                 this cache, and without it verifies the whole blob at each read",
            );
        }
    } else if let Some(memory) = field(local, "blocksInMemory") {
        let size = integer_field(memory, "blockSizeBytes").max(0) as u64;
        block_size = Some((size, format!("blocks of {size} bytes")));
    }
    let Some((block, how)) = block_size else {
        return;
    };
    let (needed, what) = match store {
        Store::Cas => match promises {
            Some(p) => (
                p.largest_blob_size_bytes,
                "the largest blob the deployment promises (largestBlobSizeBytes)",
            ),
            None => return,
        },
        Store::ActionCache => (
            integer_field(config, "maximumMessageSizeBytes").max(0) as u64,
            "the largest ActionResult the binaries read (maximumMessageSizeBytes)",
        ),
        Store::Other => return,
    };
    if block < needed {
        report.fail(
            "local-blocks",
            path,
            format!(
                "{how} hold blobs of at most {block} bytes ({:.1} MiB), less than {what}, {needed} bytes: \
                 a larger blob is refused. Make the blocks file at least blocks * (blob + 64 KiB)",
                block as f64 / 1048576.0
            ),
        );
    }
}

fn has_virtual_build_directory(config: &Value) -> bool {
    list(config, "buildDirectories")
        .iter()
        .any(|d| field(d, "virtual").is_some())
}

/// Rules of one binary as a whole.
fn check_binary(binary: Binary, config: &Value, promises: Option<Promises>, report: &mut Report) {
    let require = |report: &mut Report, camel: &str, why: &str| {
        if field(config, camel).is_none() {
            report.fail(
                "required",
                camel,
                format!(
                    "missing: {why}; {} does not start without it",
                    binary.name()
                ),
            );
        }
    };
    let serves = |report: &mut Report, camel: &str, why: &str| {
        if list(config, camel).is_empty() {
            report.fail("serves-nothing", camel, format!("no servers: {why}"));
        }
    };
    let message_size = |report: &mut Report| {
        if integer_field(config, "maximumMessageSizeBytes") <= 0 {
            report.fail(
                "positive",
                "maximumMessageSizeBytes",
                "every Directory or ActionResult read would be refused as too large",
            );
        }
    };
    match binary {
        Binary::Storage => {
            serves(report, "grpcServers", "clients could not reach the storage");
            let mut any_store = false;
            for (store, scannable) in [
                ("contentAddressableStorage", true),
                ("actionCache", false),
                ("indirectContentAddressableStorage", true),
                ("initialSizeClassCache", false),
                ("fileSystemAccessCache", false),
            ] {
                let Some(v) = field(config, store) else {
                    continue;
                };
                any_store = true;
                let mut needed = vec!["backend", "getAuthorizer", "putAuthorizer"];
                if scannable {
                    needed.push("findMissingAuthorizer");
                }
                for f in needed {
                    if field(v, f).is_none() {
                        report.fail(
                            "required",
                            &join(store, f),
                            format!("missing; bb_storage does not start without it for {store}"),
                        );
                    }
                }
            }
            let schedulers = field(config, "schedulers").and_then(Value::as_object);
            if schedulers.is_some_and(|s| !s.is_empty()) {
                require(
                    report,
                    "executeAuthorizer",
                    "it authorizes Execute for the schedulers",
                );
            }
            if any_store || schedulers.is_some_and(|s| !s.is_empty()) {
                message_size(report);
            }
        }
        Binary::Scheduler => {
            require(
                report,
                "contentAddressableStorage",
                "it reads Actions and Commands from the CAS",
            );
            require(report, "actionRouter", "it decides how actions are queued");
            for a in [
                "executeAuthorizer",
                "modifyDrainsAuthorizer",
                "killOperationsAuthorizer",
                "synchronizeAuthorizer",
            ] {
                require(report, a, "every authorizer is constructed at start-up");
            }
            if field(config, "platformQueueWithNoWorkersTimeout").is_none() {
                report.fail(
                    "duration",
                    "platformQueueWithNoWorkersTimeout",
                    "missing: bb_scheduler parses it at start-up",
                );
            }
            serves(
                report,
                "clientGrpcServers",
                "clients could not call Execute",
            );
            serves(report, "workerGrpcServers", "workers could not connect");
            message_size(report);
        }
        Binary::Worker => check_worker(config, promises, report),
        Binary::Runner => {
            let build = field(config, "buildDirectoryPath")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !build.starts_with('/') {
                report.fail(
                    "runner",
                    "buildDirectoryPath",
                    format!("{build:?}: bb_runner needs the absolute path of the worker's build directory"),
                );
            }
            serves(
                report,
                "grpcServers",
                "the worker could not reach the runner",
            );
            if field(config, "chrootIntoInputRoot") == Some(&Value::Bool(true))
                && field(config, "setTmpdirEnvironmentVariable") == Some(&Value::Bool(true))
            {
                report.fail(
                    "runner",
                    "setTmpdirEnvironmentVariable",
                    "with chrootIntoInputRoot the TMPDIR it sets is a path outside the chroot",
                );
            }
        }
        Binary::Browser => {
            let blobstore = field(config, "blobstore");
            for store in ["contentAddressableStorage", "actionCache"] {
                if blobstore.and_then(|b| field(b, store)).is_none() {
                    report.fail(
                        "required",
                        &join("blobstore", store),
                        "missing; bb_browser does not start without both stores",
                    );
                }
            }
            require(report, "authorizer", "it authorizes every read");
            require(
                report,
                "requestMetadataLinksJmespathExpression",
                "it is compiled at start-up (`{}` for no links)",
            );
            serves(report, "httpServers", "nobody could open the browser");
            message_size(report);
        }
    }
}

fn check_worker(config: &Value, promises: Option<Promises>, report: &mut Report) {
    let blobstore = field(config, "blobstore");
    for store in ["contentAddressableStorage", "actionCache"] {
        if blobstore.and_then(|b| field(b, store)).is_none() {
            report.fail(
                "required",
                &join("blobstore", store),
                "missing; bb_worker does not start without both stores",
            );
        }
    }
    if field(config, "scheduler").is_none() {
        report.fail(
            "required",
            "scheduler",
            "missing: the scheduler to synchronize with; bb_worker does not start without it",
        );
    }
    for (f, what) in [
        ("inputDownloadConcurrency", "input download concurrency"),
        ("outputUploadConcurrency", "output upload concurrency"),
    ] {
        let n = integer_field(config, f);
        if n <= 0 {
            report.fail(
                "positive",
                f,
                format!("{n}: bb_worker exits at start-up with a nonpositive {what}"),
            );
        }
    }
    if integer_field(config, "maximumMessageSizeBytes") <= 0 {
        report.fail(
            "positive",
            "maximumMessageSizeBytes",
            "every Directory read would be refused as too large",
        );
    }
    let directories = list(config, "buildDirectories");
    if directories.is_empty() {
        report.fail(
            "required",
            "buildDirectories",
            "bb_worker does not start without any build directory",
        );
    }
    let mut quota_total: i128 = 0;
    let mut needs_pool = false;
    for (i, directory) in directories.iter().enumerate() {
        let path = index("buildDirectories", i);
        let runners = list(directory, "runners");
        if runners.is_empty() {
            report.fail(
                "required",
                &join(&path, "runners"),
                "bb_worker does not start with a build directory without runners",
            );
        }
        let is_virtual = field(directory, "virtual").is_some();
        if let Some(native) = field(directory, "native") {
            for f in ["buildDirectoryPath", "cacheDirectoryPath"] {
                if field(native, f)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    report.fail(
                        "required",
                        &join(&join(&path, "native"), f),
                        "missing: bb_worker opens it at start-up",
                    );
                }
            }
        }
        for (j, runner) in runners.iter().enumerate() {
            let runner_path = index(&join(&path, "runners"), j);
            let count = integer_field(runner, "maximumFilePoolFileCount");
            let size = integer_field(runner, "maximumFilePoolSizeBytes");
            if is_virtual {
                needs_pool = true;
                for (f, n) in [
                    ("maximumFilePoolFileCount", count),
                    ("maximumFilePoolSizeBytes", size),
                ] {
                    if n <= 0 {
                        report.fail(
                            "file-pool",
                            &join(&runner_path, f),
                            format!(
                                "{n}: with a virtual build directory every file an action writes, \
                                 stdout and stderr included, comes from the file pool, and a quota \
                                 of 0 fails every action"
                            ),
                        );
                    }
                }
            }
            quota_total += integer_field(runner, "concurrency").max(0) * size.max(0);
            if let Some(p) = promises {
                if size > p.largest_blob_size_bytes as i128 {
                    report.fail(
                        "file-pool",
                        &join(&runner_path, "maximumFilePoolSizeBytes"),
                        format!(
                            "{size}: an action may write a file larger than the deployment's CAS \
                             holds (largestBlobSizeBytes, {}), and then fail to upload it",
                            p.largest_blob_size_bytes
                        ),
                    );
                }
            }
        }
    }
    let pool = field(config, "filePool");
    if needs_pool && pool.is_none() {
        report.fail(
            "file-pool",
            "filePool",
            "missing: with a virtual build directory, actions cannot create any file without a file pool",
        );
    }
    if let Some(size) = pool
        .and_then(|p| field(p, "blockDevice"))
        .and_then(|d| field(d, "file"))
        .map(|f| integer_field(f, "sizeBytes"))
    {
        if size < quota_total {
            report.fail(
                "file-pool",
                "filePool.blockDevice.file.sizeBytes",
                format!(
                    "{size} bytes, less than the runners' quotas together (concurrency * \
                     maximumFilePoolSizeBytes, {quota_total}): actions fail when it runs out"
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The deployments: which binary runs which file, with which image
// ---------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the Kubernetes example's pods set as external variables.
fn set_example_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, value) in [
            ("POD_NAME", "worker-chroot-6d5c9b7f4-q8x2z"),
            ("POD_IP", "10.0.0.5"),
            ("REGISTRY_USERNAME", "puller"),
            ("REGISTRY_PASSWORD", "example-password"),
        ] {
            std::env::set_var(name, value);
        }
    });
}

/// One container of a deployment: a compose service or a Kubernetes container.
#[derive(Clone, Debug, Default)]
struct Container {
    /// Where it is declared, for messages: `docker-compose.yml: worker`.
    origin: String,
    image: Option<String>,
    /// Whether compose builds the image itself (`build:`).
    built: bool,
    /// The command and arguments, as written.
    command: Vec<String>,
    /// Which pod (Kubernetes) or network namespace it shares ports with.
    group: String,
}

impl Container {
    /// `/config/<file>` paths in its command.
    fn configurations(&self) -> Vec<String> {
        self.command
            .iter()
            .flat_map(|c| c.split(|ch: char| ch.is_whitespace() || ch == ';'))
            .filter(|w| w.starts_with("/config/") && w.ends_with(".jsonnet"))
            .map(|w| w.trim_start_matches("/config/").to_owned())
            .collect()
    }

    fn binary(&self) -> Option<Binary> {
        if self.command.iter().any(|c| c.contains("bb_runner")) {
            return Some(Binary::Runner);
        }
        let (name, _) = split_image(self.image.as_deref()?);
        match name {
            "ghcr.io/buildbarn/bb-storage" => Some(Binary::Storage),
            "ghcr.io/buildbarn/bb-scheduler" => Some(Binary::Scheduler),
            "ghcr.io/buildbarn/bb-worker" => Some(Binary::Worker),
            "ghcr.io/buildbarn/bb-browser" => Some(Binary::Browser),
            _ => None,
        }
    }

    fn is_expander(&self) -> bool {
        self.image
            .as_deref()
            .is_some_and(|i| i.contains("bb-container-expander"))
    }
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn yaml_scalar(text: &str) -> String {
    let text = text.split(" #").next().unwrap_or(text).trim();
    text.trim_matches('"').trim_matches('\'').to_owned()
}

/// The items of a YAML value written inline: a flow list `[a, b]` or a scalar.
fn yaml_inline_list(text: &str) -> Vec<String> {
    let text = text.split(" #").next().unwrap_or(text).trim();
    match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(items) => items
            .split(',')
            .map(yaml_scalar)
            .filter(|i| !i.is_empty())
            .collect(),
        None if text.is_empty() => Vec::new(),
        None => vec![yaml_scalar(text)],
    }
}

/// An image reference's name and tag; the tag is empty when there is none, and the
/// digest (after `@`) when the image is pinned by digest.
fn split_image(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, ""),
    }
}

/// The services of a compose file (of the simple form this project writes): image,
/// build, and command as a block list.
fn compose_services(file: &str, text: &str) -> BTreeMap<String, Container> {
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    let mut in_command = false;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = indentation(line);
        let content = line.trim();
        if indent == 0 {
            in_services = content == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = content.trim_end_matches(':').to_owned();
            services.insert(
                name.clone(),
                Container {
                    origin: format!("{file}: {name}"),
                    group: format!("{file}: {name}"),
                    ..Default::default()
                },
            );
            current = Some(name);
            in_command = false;
            continue;
        }
        let Some(service) = current.as_ref().and_then(|n| services.get_mut(n)) else {
            continue;
        };
        if indent == 4 {
            in_command = content == "command:";
            if let Some(image) = content.strip_prefix("image:") {
                service.image = Some(yaml_scalar(image));
            } else if content.starts_with("build:") {
                service.built = true;
            } else if let Some(inline) = content.strip_prefix("command:") {
                service.command.extend(yaml_inline_list(inline));
            }
        } else if in_command {
            if let Some(item) = content.strip_prefix("- ") {
                service.command.push(yaml_scalar(item));
            }
        }
    }
    services
}

/// The containers (and init containers) of Kubernetes manifests of the simple form
/// this project writes: list items with `name:` and `image:`, and `command:` or
/// `args:` as block lists.
fn kubernetes_containers(file: &str, text: &str) -> Vec<Container> {
    let lines: Vec<&str> = text.lines().collect();
    let mut containers = Vec::new();
    let mut pod = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "---" {
            pod += 1;
            continue;
        }
        let Some(name) = line.trim_start().strip_prefix("- name:") else {
            continue;
        };
        let indent = indentation(line);
        // The item: following lines indented deeper than its dash.
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indentation(l) > indent)
            .copied()
            .collect();
        let key_indent = indent + 2;
        let image = body
            .iter()
            .find(|l| indentation(l) == key_indent && l.trim_start().starts_with("image:"))
            .map(|l| yaml_scalar(l.trim_start().trim_start_matches("image:")));
        let Some(image) = image else {
            continue;
        };
        let mut command = Vec::new();
        let mut in_list = false;
        for l in &body {
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            if indentation(l) == key_indent {
                let key = l.trim_start();
                in_list = key == "command:" || key == "args:";
                for prefix in ["command:", "args:"] {
                    if let Some(inline) = key.strip_prefix(prefix) {
                        command.extend(yaml_inline_list(inline));
                    }
                }
            } else if in_list {
                if let Some(item) = l.trim_start().strip_prefix("- ") {
                    command.push(yaml_scalar(item));
                }
            }
        }
        containers.push(Container {
            origin: format!("{file}: {}", yaml_scalar(name)),
            image: Some(image),
            built: false,
            command,
            group: format!("{file}: pod {pod}"),
        });
    }
    containers
}

/// A deployment of the examples: its containers, where its configuration files are,
/// and what it promises.
struct Deployment {
    name: String,
    config_dir: PathBuf,
    containers: Vec<Container>,
}

fn deployments() -> Vec<Deployment> {
    let compose_dir = root().join("examples/docker-compose");
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let base = compose_services(
        "docker-compose.yml",
        &read(&compose_dir.join("docker-compose.yml")),
    );
    let overrides = compose_services(
        "docker-compose.router.yml",
        &read(&compose_dir.join("docker-compose.router.yml")),
    );
    // The router variant: the base file with the override's commands.
    let mut router = base.clone();
    for (name, o) in &overrides {
        let service = router.get_mut(name).unwrap_or_else(|| {
            panic!("docker-compose.router.yml: {name} is not in docker-compose.yml")
        });
        if !o.command.is_empty() {
            service.command = o.command.clone();
            service.origin = format!("{} (docker-compose.router.yml)", service.origin);
        }
        if o.image.is_some() {
            service.image = o.image.clone();
        }
    }
    let kubernetes_dir = root().join("examples/kubernetes");
    let mut kubernetes = Vec::new();
    for entry in std::fs::read_dir(&kubernetes_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            kubernetes.extend(kubernetes_containers(&name, &read(&path)));
        }
    }
    vec![
        Deployment {
            name: "docker-compose".into(),
            config_dir: compose_dir.join("config"),
            containers: base.into_values().collect(),
        },
        Deployment {
            name: "docker-compose (router mode)".into(),
            config_dir: compose_dir.join("config"),
            containers: router.into_values().collect(),
        },
        Deployment {
            name: "kubernetes".into(),
            config_dir: kubernetes_dir.join("config"),
            containers: kubernetes,
        },
    ]
}

fn evaluate(path: &Path) -> Value {
    set_example_environment();
    jsonnet::evaluate_file(path.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{} does not evaluate: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The promises of a deployment, from its `common.libsonnet`.
fn promises_of(config_dir: &Path, report: &mut Report) -> Option<Promises> {
    let common = config_dir.join("common.libsonnet");
    let value = evaluate(&common);
    match field(&value, "largestBlobSizeBytes").and_then(integer) {
        Some(n) if n > 0 => Some(Promises {
            largest_blob_size_bytes: n as u64,
        }),
        _ => {
            report.fail(
                "deployment",
                "largestBlobSizeBytes",
                format!(
                    "{}: the deployment must say how large a blob its storage holds",
                    relative(&common)
                ),
            );
            None
        }
    }
}

/// Tag rules for one image reference.
fn check_image(container: &Container, report: &mut Report) {
    let Some(image) = container.image.as_deref() else {
        report.fail("image-tag", &container.origin, "no image");
        return;
    };
    if container.built {
        return;
    }
    let (name, tag) = split_image(image);
    let by_digest = image.contains('@');
    let lowered = tag.to_ascii_lowercase();
    if tag.is_empty() || lowered == "latest" {
        report.fail(
            "image-tag",
            &container.origin,
            format!("{image}: no fixed tag (none or latest): pin a release"),
        );
        return;
    }
    if lowered.contains("pin-me") || lowered.contains("placeholder") || lowered.contains("todo") {
        report.fail(
            "image-tag",
            &container.origin,
            format!("{image}: {tag} is a placeholder, which cannot be pulled"),
        );
        return;
    }
    if let Some((_, release)) = RELEASES.iter().find(|(n, _)| *n == name) {
        if by_digest {
            report.fail(
                "image-tag",
                &container.origin,
                format!(
                    "{image}: pin Buildbarn images by their release tag ({release}), which \
                     says which release the configurations are checked against"
                ),
            );
        } else if tag != *release {
            report.fail(
                "image-tag",
                &container.origin,
                format!(
                    "{image}: the configurations are checked against {name}:{release}; \
                     use that release, or check them against {tag} and update RELEASES"
                ),
            );
        }
    } else if name.starts_with("ghcr.io/buildbarn/") {
        report.fail(
            "image-tag",
            &container.origin,
            format!("{image}: a Buildbarn image whose configuration rules are not known here"),
        );
    } else if name == EXPANDER_IMAGE && tag != env!("CARGO_PKG_VERSION") {
        report.fail(
            "image-tag",
            &container.origin,
            format!(
                "{image}: the expander's image is tagged with the project's version, {}",
                env!("CARGO_PKG_VERSION")
            ),
        );
    }
}

/// Every rule over every deployment of the examples: the violations, and the files
/// checked.
fn check_deployments(deployments: &[Deployment]) -> (Vec<Violation>, BTreeSet<PathBuf>) {
    let mut violations = Vec::new();
    let mut checked = BTreeSet::new();
    for deployment in deployments {
        let origin = format!("examples/{}", deployment.name);
        let mut report = Report::new(&origin);
        let promises = promises_of(&deployment.config_dir, &mut report);
        let mut ports: BTreeMap<(String, String), String> = BTreeMap::new();
        for container in &deployment.containers {
            check_image(container, &mut report);
            let files = container.configurations();
            let binary = container.binary();
            if container.is_expander() || files.is_empty() {
                continue;
            }
            let Some(binary) = binary else {
                report.fail(
                    "deployment",
                    &container.origin,
                    format!(
                        "runs {files:?} with an image whose Buildbarn binary is not known here"
                    ),
                );
                continue;
            };
            for file in files {
                let path = deployment.config_dir.join(&file);
                if !path.is_file() {
                    report.fail(
                        "deployment",
                        &container.origin,
                        format!(
                            "/config/{file} does not exist in {}",
                            relative(&deployment.config_dir)
                        ),
                    );
                    continue;
                }
                let config = evaluate(&path);
                violations.extend(check_configuration(
                    binary,
                    &format!("{} ({})", relative(&path), binary.name()),
                    &config,
                    promises,
                ));
                for port in tcp_ports(&config) {
                    let key = (container.group.clone(), port.clone());
                    if let Some(other) = ports.insert(key, relative(&path)) {
                        if other != relative(&path) {
                            report.fail(
                                "deployment",
                                &container.origin,
                                format!(
                                    "{} and {other} both listen on {port} in {}, which share their ports",
                                    relative(&path),
                                    container.group
                                ),
                            );
                        }
                    }
                }
                checked.insert(path);
            }
        }
        violations.extend(report.violations);
    }
    // A file several containers run (the two storage shards, the files both compose
    // variants share) is reported once.
    let mut seen = BTreeSet::new();
    violations.retain(|v| seen.insert(v.to_string()));
    (violations, checked)
}

/// The TCP ports a configuration listens on (`:9980`, `host:9980`).
fn tcp_ports(config: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "listenAddresses" || k == "listen_addresses" {
                        for a in v.as_array().into_iter().flatten() {
                            if let Some(port) = a.as_str().and_then(|a| a.rsplit_once(':')) {
                                out.push(format!(":{}", port.1));
                            }
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(config, &mut out);
    out
}

fn jsonnet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "volumes") {
                continue;
            }
            jsonnet_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonnet") {
            out.push(path);
        }
    }
}

fn show(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------

/// The main check: every Buildbarn configuration of the examples passes every rule.
#[test]
fn every_buildbarn_configuration_of_the_examples_passes_the_start_up_rules() {
    let (violations, checked) = check_deployments(&deployments());
    assert!(
        violations.is_empty(),
        "{} violation(s) of Buildbarn's start-up rules:\n{}",
        violations.len(),
        show(&violations)
    );
    // Every Buildbarn configuration of the examples is run by some container, and so
    // was checked: the expander's own are checked by deployment_configs.rs.
    let mut all = Vec::new();
    jsonnet_files(&root().join("examples"), &mut all);
    let unchecked: Vec<String> = all
        .iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("expander")
        })
        .filter(|p| !checked.contains(*p))
        .map(|p| relative(p))
        .collect();
    assert!(
        unchecked.is_empty(),
        "no container of the examples runs these Buildbarn configurations, so nothing \
         checks them: {unchecked:?}"
    );
    // And each binary was seen at least once.
    let names: BTreeSet<String> = checked
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "frontend.jsonnet",
        "storage.jsonnet",
        "scheduler.jsonnet",
        "worker.jsonnet",
        "runner.jsonnet",
        "browser.jsonnet",
        "worker-chroot.jsonnet",
        "runner-chroot.jsonnet",
    ] {
        assert!(
            names.contains(expected),
            "{expected} was not checked: {names:?}"
        );
    }
}

#[test]
fn the_deployments_are_read_as_written() {
    let deployments = deployments();
    let compose = &deployments[0];
    let find = |d: &Deployment, origin: &str| {
        d.containers
            .iter()
            .find(|c| c.origin.ends_with(origin))
            .unwrap_or_else(|| panic!("{origin} not found in {}", d.name))
            .clone()
    };
    let worker = find(compose, ": worker");
    assert_eq!(worker.binary(), Some(Binary::Worker));
    assert_eq!(worker.configurations(), ["worker.jsonnet"]);
    let runner = find(compose, ": runner");
    assert_eq!(runner.binary(), Some(Binary::Runner));
    assert_eq!(runner.configurations(), ["runner.jsonnet"]);
    assert!(find(compose, ": expander").built);
    let router = &deployments[1];
    assert_eq!(
        find(router, ": scheduler (docker-compose.router.yml)").configurations(),
        ["router/scheduler.jsonnet"]
    );
    let kubernetes = &deployments[2];
    let k8s_worker = find(kubernetes, "worker-chroot.yaml: worker");
    assert_eq!(k8s_worker.binary(), Some(Binary::Worker));
    assert_eq!(k8s_worker.configurations(), ["worker-chroot.jsonnet"]);
    let k8s_runner = find(kubernetes, "worker-chroot.yaml: runner");
    assert_eq!(k8s_runner.binary(), Some(Binary::Runner));
    assert_eq!(k8s_runner.group, k8s_worker.group, "one pod");
    assert!(find(kubernetes, "worker-chroot.yaml: bb-runner-installer")
        .configurations()
        .is_empty());
    assert!(find(kubernetes, "expander.yaml: expander").is_expander());
}

// ---------------------------------------------------------------------------------
// Each rule fires: broken samples
// ---------------------------------------------------------------------------------

fn example(relative_path: &str) -> Value {
    evaluate(&root().join(relative_path))
}

const COMPOSE: &str = "examples/docker-compose/config";

fn promises() -> Option<Promises> {
    Some(Promises {
        largest_blob_size_bytes: 1 << 30,
    })
}

/// Removes or replaces the value at a `/`-separated path (array indices as numbers).
fn edit(mut config: Value, path: &str, new: Option<Value>) -> Value {
    let mut keys: Vec<&str> = path.split('/').collect();
    let last = keys.pop().unwrap();
    let mut current = &mut config;
    for key in keys {
        current = match current {
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            Value::Object(map) => map
                .get_mut(key)
                .unwrap_or_else(|| panic!("no {key} in {path}")),
            _ => panic!("{path}: {key} is in a scalar"),
        };
    }
    match (current, new) {
        (Value::Object(map), None) => {
            assert!(map.remove(last).is_some(), "{path}: nothing to remove");
        }
        (Value::Object(map), Some(v)) => {
            map.insert(last.to_owned(), v);
        }
        (Value::Array(items), Some(v)) => items[last.parse::<usize>().unwrap()] = v,
        (Value::Array(items), None) => {
            items.remove(last.parse::<usize>().unwrap());
        }
        _ => panic!("{path}: not in an object or array"),
    }
    config
}

struct Sample {
    /// What is broken.
    what: &'static str,
    binary: Binary,
    file: &'static str,
    /// Edits: a path, and its new value (`None` removes it).
    edits: Vec<(String, Option<Value>)>,
    rule: &'static str,
    /// The field the violation must name.
    field: &'static str,
    /// A piece of the reason.
    reason: &'static str,
}

fn sample(
    what: &'static str,
    binary: Binary,
    file: &'static str,
    edits: Vec<(&str, Option<Value>)>,
    rule: &'static str,
    field: &'static str,
    reason: &'static str,
) -> Sample {
    Sample {
        what,
        binary,
        file,
        edits: edits.into_iter().map(|(p, v)| (p.to_owned(), v)).collect(),
        rule,
        field,
        reason,
    }
}

fn samples() -> Vec<Sample> {
    use Binary::*;
    let fast = "blobstore/contentAddressableStorage/readCaching/fast/local";
    vec![
        sample("a misspelled top-level field", Worker, "worker.jsonnet",
            vec![("inputDownloadConcurency", Some(json!(10)))],
            "known-fields", "inputDownloadConcurency", "unknown field"),
        sample("a misspelled nested field", Storage, "storage.jsonnet",
            vec![("contentAddressableStorage/backend/local/oldBlock", Some(json!(8)))],
            "known-fields", "contentAddressableStorage.backend.local.oldBlock", "unknown field \"oldBlock\" of blobstore.Local"),
        sample("a field of another binary", Browser, "browser.jsonnet",
            vec![("schedulers", Some(json!({})))],
            "known-fields", "schedulers", "unknown field"),
        sample("one field under both of its names", Scheduler, "scheduler.jsonnet",
            vec![("browser_url", Some(json!("http://x")))],
            "known-fields", "browser_url", "same field"),
        sample("a duration without its unit", Scheduler, "scheduler.jsonnet",
            vec![("platformQueueWithNoWorkersTimeout", Some(json!(900)))],
            "field-type", "platformQueueWithNoWorkersTimeout", "duration"),
        sample("a list where an object is expected", Worker, "worker.jsonnet",
            vec![("scheduler", Some(json!(["scheduler:8983"])))],
            "field-type", "scheduler", "expected an object"),
        sample("an unknown enum value", Worker, "worker.jsonnet",
            vec![("directoryCache/cacheReplacementPolicy", Some(json!("LRU")))],
            "field-type", "directoryCache.cacheReplacementPolicy", "LEAST_RECENTLY_USED"),
        sample("two choices of one oneof", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/native", Some(json!({ "buildDirectoryPath": "/worker/build", "cacheDirectoryPath": "/worker/cache", "cacheReplacementPolicy": "LEAST_RECENTLY_USED" })))],
            "oneof", "buildDirectories[0]", "native and virtual"),
        sample("no choice of a required oneof", Storage, "frontend.jsonnet",
            vec![("executeAuthorizer", Some(json!({})))],
            "oneof", "executeAuthorizer", "needs one of allow"),
        sample("bb_worker without inputDownloadConcurrency", Worker, "worker.jsonnet",
            vec![("inputDownloadConcurrency", None)],
            "positive", "inputDownloadConcurrency", "nonpositive input download concurrency"),
        sample("bb_worker with outputUploadConcurrency 0", Worker, "worker.jsonnet",
            vec![("outputUploadConcurrency", Some(json!(0)))],
            "positive", "outputUploadConcurrency", "nonpositive output upload concurrency"),
        sample("a runner with concurrency 0", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/concurrency", Some(json!(0)))],
            "positive", "buildDirectories[0].runners[0].concurrency", "must be positive"),
        sample("a shard of weight 0", Storage, "frontend.jsonnet",
            vec![("contentAddressableStorage/backend/sharding/shards/1/weight", Some(json!(0)))],
            "positive", "contentAddressableStorage.backend.sharding.shards[\"1\"].weight", "positive weights"),
        sample("bb_storage without maximumMessageSizeBytes", Storage, "storage.jsonnet",
            vec![("maximumMessageSizeBytes", None)],
            "positive", "maximumMessageSizeBytes", "too large"),
        sample("a virtual runner without a file count quota", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/maximumFilePoolFileCount", None)],
            "file-pool", "buildDirectories[0].runners[0].maximumFilePoolFileCount", "fails every action"),
        sample("a virtual runner without a file size quota", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/maximumFilePoolSizeBytes", Some(json!("0")))],
            "file-pool", "buildDirectories[0].runners[0].maximumFilePoolSizeBytes", "fails every action"),
        sample("a virtual worker without a file pool", Worker, "worker.jsonnet",
            vec![("filePool", None)],
            "file-pool", "filePool", "cannot create any file"),
        sample("a file pool smaller than the quotas", Worker, "worker.jsonnet",
            vec![("filePool/blockDevice/file/sizeBytes", Some(json!(1 << 30)))],
            "file-pool", "filePool.blockDevice.file.sizeBytes", "less than the runners' quotas"),
        sample("a file quota above what the CAS holds", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/maximumFilePoolSizeBytes", Some(json!(2u64 << 30))),
                 ("filePool/blockDevice/file/sizeBytes", Some(json!(8u64 << 30)))],
            "file-pool", "buildDirectories[0].runners[0].maximumFilePoolSizeBytes", "fail to upload"),
        sample("bb_browser without requestMetadataLinksJmespathExpression", Browser, "browser.jsonnet",
            vec![("requestMetadataLinksJmespathExpression", None)],
            "required", "requestMetadataLinksJmespathExpression", "does not start"),
        sample("bb_browser without authorizer", Browser, "browser.jsonnet",
            vec![("authorizer", None)],
            "required", "authorizer", "does not start"),
        sample("bb_browser without an Action Cache", Browser, "browser.jsonnet",
            vec![("blobstore/actionCache", None)],
            "required", "blobstore.actionCache", "both stores"),
        sample("bb_scheduler without its synchronize authorizer", Scheduler, "scheduler.jsonnet",
            vec![("synchronizeAuthorizer", None)],
            "required", "synchronizeAuthorizer", "does not start"),
        sample("bb_scheduler without an action router", Scheduler, "router/scheduler.jsonnet",
            vec![("actionRouter", None)],
            "required", "actionRouter", "does not start"),
        sample("a remote action router without timeouts", Scheduler, "router/scheduler.jsonnet",
            vec![("actionRouter/remote/initialSizeClassAnalyzer", None)],
            "required", "actionRouter.remote.initialSizeClassAnalyzer", "does not start"),
        sample("a store without its find-missing authorizer", Storage, "storage.jsonnet",
            vec![("contentAddressableStorage/findMissingAuthorizer", None)],
            "required", "contentAddressableStorage.findMissingAuthorizer", "does not start"),
        sample("a frontend with schedulers but no execute authorizer", Storage, "frontend.jsonnet",
            vec![("executeAuthorizer", None)],
            "required", "executeAuthorizer", "does not start"),
        sample("read caching without a replicator", Worker, "worker.jsonnet",
            vec![("blobstore/contentAddressableStorage/readCaching/replicator", None)],
            "required", "blobstore.contentAddressableStorage.readCaching.replicator", "does not start"),
        sample("a worker without build directories", Worker, "worker.jsonnet",
            vec![("buildDirectories", Some(json!([])))],
            "required", "buildDirectories", "without any build directory"),
        sample("bb_scheduler without platformQueueWithNoWorkersTimeout", Scheduler, "scheduler.jsonnet",
            vec![("platformQueueWithNoWorkersTimeout", None)],
            "duration", "platformQueueWithNoWorkersTimeout", "start-up"),
        sample("a virtual build directory without its upload delay", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/virtual/maximumWritableFileUploadDelay", None)],
            "duration", "buildDirectories[0].virtual.maximumWritableFileUploadDelay", "start-up"),
        sample("persistent storage without its epoch interval", Storage, "storage.jsonnet",
            vec![("actionCache/backend/local/persistent/minimumEpochInterval", None)],
            "duration", "actionCache.backend.local.persistent.minimumEpochInterval", "epoch"),
        sample("a directory cache without a replacement policy", Worker, "worker.jsonnet",
            vec![("directoryCache/cacheReplacementPolicy", None)],
            "eviction-policy", "directoryCache.cacheReplacementPolicy", "replacement policy"),
        sample("an existence cache with the UNKNOWN policy", Worker, "worker.jsonnet",
            vec![(&*format!("{fast}/blocksOnBlockDevice/dataIntegrityValidationCache/cacheReplacementPolicy"), Some(json!("UNKNOWN")))],
            "eviction-policy", "dataIntegrityValidationCache.cacheReplacementPolicy", "UNKNOWN"),
        sample("browser links that do not compile", Browser, "browser.jsonnet",
            vec![("requestMetadataLinksJmespathExpression/expression", Some(json!("{ a: ")))],
            "jmespath", "requestMetadataLinksJmespathExpression.expression", "does not compile"),
        sample("an empty metadata expression", Storage, "frontend.jsonnet",
            vec![("schedulers//endpoint/addMetadataJmespathExpression/expression", Some(json!("")))],
            "jmespath", "schedulers[\"\"].endpoint.addMetadataJmespathExpression.expression", "empty"),
        sample("a gRPC server without an authentication policy", Storage, "storage.jsonnet",
            vec![("grpcServers/0/authenticationPolicy", None)],
            "grpc-server", "grpcServers[0].authenticationPolicy", "authentication policy"),
        sample("a gRPC server listening nowhere", Runner, "runner.jsonnet",
            vec![("grpcServers/0/listenPaths", Some(json!([])))],
            "grpc-server", "grpcServers[0]", "listenAddresses or listenPaths"),
        sample("a diagnostics server without an authentication policy", Browser, "browser.jsonnet",
            vec![("global/diagnosticsHttpServer/httpServers/0/authenticationPolicy", None)],
            "http-server", "global.diagnosticsHttpServer.httpServers[0].authenticationPolicy", "authentication policy"),
        sample("a gRPC client without an address", Worker, "worker.jsonnet",
            vec![("scheduler/address", Some(json!("")))],
            "grpc-client", "scheduler.address", "needs an address"),
        sample("a scheduler nobody can reach", Scheduler, "scheduler.jsonnet",
            vec![("clientGrpcServers", None)],
            "serves-nothing", "clientGrpcServers", "could not call Execute"),
        sample("a reserved instance name", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/instanceNamePrefix", Some(json!("main/blobs")))],
            "instance-name", "buildDirectories[0].runners[0].instanceNamePrefix", "reserved keyword"),
        sample("an instance name with a trailing slash", Storage, "frontend.jsonnet",
            vec![("schedulers//addInstanceNamePrefix", Some(json!("main/")))],
            "instance-name", "schedulers[\"\"].addInstanceNamePrefix", "redundant slashes"),
        sample("an unsorted worker platform", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/platform/properties", Some(json!([{ "name": "runner", "value": "chroot" }, { "name": "OSFamily", "value": "linux" }])))],
            "platform-sorted", "buildDirectories[0].runners[0].platform.properties[1]", "must come before"),
        sample("completeness checking in a CAS", Storage, "frontend.jsonnet",
            vec![("contentAddressableStorage/backend", Some(json!({ "completenessChecking": { "backend": { "grpc": { "client": { "address": "storage-0:8981" } } } } })))],
            "storage-backend", "contentAddressableStorage.backend.completenessChecking", "only supported in an Action Cache"),
        sample("an Action Cache with 3 new blocks", Storage, "storage.jsonnet",
            vec![("actionCache/backend/local/newBlocks", Some(json!(3)))],
            "local-blocks", "actionCache.backend.local.newBlocks", "exactly 1 new block"),
        sample("more than 100 blocks", Storage, "storage.jsonnet",
            vec![("contentAddressableStorage/backend/local/currentBlocks", Some(json!(120)))],
            "local-blocks", "contentAddressableStorage.backend.local", "at most 100"),
        sample("the worker's cache of the issue: 4 GiB in 36 blocks", Worker, "worker.jsonnet",
            vec![(&*format!("{fast}/blocksOnBlockDevice/source/file/sizeBytes"), Some(json!(4u64 << 30))),
                 (&*format!("{fast}/oldBlocks"), Some(json!(8))),
                 (&*format!("{fast}/currentBlocks"), Some(json!(24))),
                 (&*format!("{fast}/blocksOnBlockDevice/spareBlocks"), Some(json!(3)))],
            "local-blocks", "blobstore.contentAddressableStorage.readCaching.fast.local", "at most 119275520 bytes"),
        sample("storage shards too small for the promise", Storage, "storage.jsonnet",
            vec![("contentAddressableStorage/backend/local/blocksOnBlockDevice/source/file/sizeBytes", Some(json!(8u64 << 30)))],
            "local-blocks", "contentAddressableStorage.backend.local", "largestBlobSizeBytes"),
        sample("an Action Cache whose blocks cannot hold a large ActionResult", Storage, "storage.jsonnet",
            vec![("actionCache/backend/local/blocksOnBlockDevice/source/file/sizeBytes", Some(json!(32u64 << 20)))],
            "local-blocks", "actionCache.backend.local", "maximumMessageSizeBytes"),
        sample("a FUSE mount through fusermount", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/virtual/mount/fuse/mountMethod", None)],
            "virtual-build-directory", "buildDirectories[0].virtual.mount.fuse.mountMethod", "fusermount"),
        sample("a virtual worker's cache without an integrity cache", Worker, "worker.jsonnet",
            vec![(&*format!("{fast}/blocksOnBlockDevice/dataIntegrityValidationCache"), None)],
            "virtual-build-directory", "dataIntegrityValidationCache", "piecemeal"),
        sample("a relative build directory", Runner, "runner.jsonnet",
            vec![("buildDirectoryPath", Some(json!("worker/build")))],
            "runner", "buildDirectoryPath", "absolute"),
        sample("TMPDIR in a chroot", Runner, "runner.jsonnet",
            vec![("setTmpdirEnvironmentVariable", Some(json!(true)))],
            "runner", "setTmpdirEnvironmentVariable", "outside the chroot"),
        sample("a device node path", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/inputRootCharacterDeviceNodes/0", Some(json!("/dev/null")))],
            "runner", "buildDirectories[0].runners[0].inputRootCharacterDeviceNodes[0]", "not the name of a device"),
        sample("a device containers do not have", Worker, "worker.jsonnet",
            vec![("buildDirectories/0/runners/0/inputRootCharacterDeviceNodes/1", Some(json!("sda")))],
            "runner", "buildDirectories[0].runners[0].inputRootCharacterDeviceNodes[1]", "every container has"),
    ]
}

#[test]
fn each_rule_fires_on_a_broken_sample() {
    let mut fired: BTreeSet<&str> = BTreeSet::new();
    let mut failures = Vec::new();
    for s in samples() {
        let base = example(&format!("{COMPOSE}/{}", s.file));
        // The unbroken file passes: the violation is the edit's.
        let clean = check_configuration(s.binary, s.file, &base, promises());
        assert!(clean.is_empty(), "{}: {}", s.file, show(&clean));
        let mut broken = base;
        for (path, value) in &s.edits {
            broken = edit(broken, path, value.clone());
        }
        let violations = check_configuration(s.binary, s.file, &broken, promises());
        let hit = violations
            .iter()
            .find(|v| v.rule == s.rule && v.field.contains(s.field) && v.reason.contains(s.reason));
        match hit {
            Some(v) => {
                fired.insert(s.rule);
                // Every message names the file, the field and the reason.
                let text = v.to_string();
                assert!(text.starts_with(&format!("{}: ", s.file)), "{text}");
                assert!(text.contains(s.field), "{text}");
                eprintln!("{:<24} {}", s.rule, text);
            }
            None => failures.push(format!(
                "{} ({}): expected [{}] on {:?} saying {:?}, got:\n{}",
                s.what,
                s.file,
                s.rule,
                s.field,
                s.reason,
                show(&violations)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The deployment-level rules fire in the tests below.
    let untested: Vec<&str> = RULES
        .iter()
        .map(|(r, _)| *r)
        .filter(|r| !fired.contains(r) && !["image-tag", "deployment"].contains(r))
        .collect();
    assert!(
        untested.is_empty(),
        "rules no sample shows firing: {untested:?}"
    );
}

#[test]
fn the_image_tag_rules_fire() {
    let cases = [
        ("ghcr.io/buildbarn/bb-worker:PIN-ME-c48dcda", false, "placeholder"),
        ("ghcr.io/buildbarn/bb-browser:PIN-ME", false, "placeholder"),
        ("ghcr.io/buildbarn/bb-scheduler:latest", false, "no fixed tag"),
        ("ghcr.io/buildbarn/bb-scheduler", false, "no fixed tag"),
        ("debian", false, "no fixed tag"),
        ("registry:5000/debian", false, "no fixed tag"),
        (
            "ghcr.io/buildbarn/bb-storage:20250101T000000Z-0000000",
            false,
            "the configurations are checked against ghcr.io/buildbarn/bb-storage:20260609T094425Z-10acc76",
        ),
        ("ghcr.io/buildbarn/bb-clientd:20260101T000000Z-1234567", false, "not known here"),
        (
            "registry.example.com/buildbarn/bb-container-expander:PIN-ME",
            false,
            "placeholder",
        ),
        (
            "registry.example.com/buildbarn/bb-container-expander:9.9.9",
            false,
            "project's version",
        ),
    ];
    for (image, built, reason) in cases {
        let container = Container {
            origin: "docker-compose.yml: sample".into(),
            image: Some(image.into()),
            built,
            ..Default::default()
        };
        let mut report = Report::new("examples/sample");
        check_image(&container, &mut report);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.rule == "image-tag" && v.reason.contains(reason)),
            "{image}: expected {reason:?}, got:\n{}",
            show(&report.violations)
        );
        eprintln!("{}", report.violations[0]);
    }
    // What the examples use passes.
    for (image, built) in [
        (
            "ghcr.io/buildbarn/bb-worker:20260527T162223Z-c48dcda",
            false,
        ),
        ("registry:3.0.0", false),
        ("debian:bookworm-slim", false),
        ("bb-container-expander:local", true),
        (
            "registry.example.com/buildbarn/bb-container-expander:0.1.0",
            false,
        ),
    ] {
        let container = Container {
            origin: "sample".into(),
            image: Some(image.into()),
            built,
            ..Default::default()
        };
        let mut report = Report::new("examples/sample");
        check_image(&container, &mut report);
        assert!(report.violations.is_empty(), "{}", show(&report.violations));
    }
}

#[test]
fn the_deployment_rules_fire() {
    // A pod with a placeholder image, that runs a configuration no file holds, one
    // with a binary nobody knows, and two processes on one port; in a directory
    // whose common.libsonnet promises nothing.
    let dir = std::env::temp_dir().join(format!("buildbarn-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubernetes = root().join("examples/kubernetes/config");
    // The example's common.libsonnet, with the promise hidden from the output.
    std::fs::write(
        dir.join("common.libsonnet"),
        format!(
            "(import '{}') + {{ largestBlobSizeBytes:: 1073741824 }}",
            kubernetes.join("common.libsonnet").display()
        ),
    )
    .unwrap();
    for file in ["worker-chroot.jsonnet", "runner-chroot.jsonnet"] {
        std::fs::copy(kubernetes.join(file), dir.join(file)).unwrap();
    }
    // The runner's diagnostics on the worker's port.
    let runner = std::fs::read_to_string(dir.join("runner-chroot.jsonnet")).unwrap();
    std::fs::write(
        dir.join("runner-chroot.jsonnet"),
        runner.replace("':9981'", "':9980'"),
    )
    .unwrap();
    let pod = "\
spec:
  template:
    spec:
      containers:
        - name: worker
          image: ghcr.io/buildbarn/bb-worker:PIN-ME-c48dcda
          args:
            - /config/worker-chroot.jsonnet
        - name: runner
          image: debian:bookworm-slim
          command: [/bb/bb_runner, /config/runner-chroot.jsonnet]
        - name: scheduler
          image: ghcr.io/buildbarn/bb-scheduler:20260527T162223Z-c48dcda
          args:
            - /config/scheduler.jsonnet
        - name: mystery
          image: example.com/mystery:1.0
          args:
            - /config/mystery.jsonnet
";
    let deployment = Deployment {
        name: "sample".into(),
        config_dir: dir.clone(),
        containers: kubernetes_containers("sample.yaml", pod),
    };
    assert_eq!(deployment.containers.len(), 4);
    let (violations, _) = check_deployments(&[deployment]);
    std::fs::remove_dir_all(&dir).unwrap();
    for (rule, field, reason) in [
        (
            "deployment",
            "largestBlobSizeBytes",
            "must say how large a blob",
        ),
        ("image-tag", "sample.yaml: worker", "placeholder"),
        (
            "deployment",
            "sample.yaml: scheduler",
            "/config/scheduler.jsonnet does not exist",
        ),
        (
            "deployment",
            "sample.yaml: mystery",
            "binary is not known here",
        ),
        ("deployment", "sample.yaml: runner", "both listen on :9980"),
    ] {
        let hit = violations
            .iter()
            .find(|v| v.rule == rule && v.field == field && v.reason.contains(reason));
        match hit {
            Some(v) => eprintln!("{v}"),
            None => panic!(
                "expected [{rule}] {field}: {reason}; got:\n{}",
                show(&violations)
            ),
        }
    }
}

#[test]
fn block_sizes_follow_bb_storages_rule() {
    // 4 GiB in 36 blocks: the worker cache of the issue, about 113.8 MiB per block
    // with 4 KiB sectors, a little less with larger ones.
    assert_eq!(block_size(4 << 30, 36, 4096), 119_304_192);
    assert_eq!(largest_blob_on_block_device(4 << 30, 36), 119_275_520);
    // 16 GiB in 15 blocks: the examples' CAS stores, above 1 GiB even with 64 KiB
    // sectors.
    assert!(largest_blob_on_block_device(16 << 30, 15) >= 1 << 30);
    // Fewer sectors than blocks: nothing fits.
    assert_eq!(largest_blob_on_block_device(4096 * 10, 36), 0);
}

#[test]
fn the_schema_describes_every_message_it_names_and_the_rules_are_documented() {
    let schema = schema();
    for binary in [
        Binary::Storage,
        Binary::Scheduler,
        Binary::Worker,
        Binary::Runner,
        Binary::Browser,
    ] {
        assert!(schema.contains_key(binary.root_message()));
    }
    // The example README lists what the check covers.
    let readme = std::fs::read_to_string(root().join("examples/docker-compose/README.md")).unwrap();
    assert!(readme.contains("tests/buildbarn_configs.rs"));
    let names: BTreeSet<&str> = RULES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), RULES.len(), "rule names are unique");
}
