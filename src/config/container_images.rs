//! `containerImages`: where images may come from and how they are expanded and cached.
//!
//! Serde types only. Every setting is defined here once, with its default: a field left
//! unset takes the `DEFAULT_…` constant next to it, and the modules that are configured
//! turn this into their options (`registry::configuration`, `image::configuration`,
//! `action::configuration`). `configs/bb_container_expander.jsonnet` documents the same
//! defaults.

use super::protojson;
use serde::Deserialize;
use std::time::Duration;

/// `requestTimeout` when unset.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `maximumRetries` when unset.
pub const DEFAULT_MAXIMUM_RETRIES: u32 = 4;
/// `initialRetryDelay` when unset.
pub const DEFAULT_INITIAL_RETRY_DELAY: Duration = Duration::from_millis(500);
/// `tagTtl` when unset.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);
/// `completenessCheckInterval` when unset.
pub const DEFAULT_COMPLETENESS_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// `maximumImageSizeBytes` when unset: 16 GiB.
pub const DEFAULT_MAXIMUM_IMAGE_SIZE_BYTES: u64 = 16 << 30;
/// `maximumLayerSizeBytes` when unset: 16 GiB.
pub const DEFAULT_MAXIMUM_LAYER_SIZE_BYTES: u64 = 16 << 30;
/// `maximumLayerEntries` when unset.
pub const DEFAULT_MAXIMUM_LAYER_ENTRIES: u64 = 1_000_000;
/// `maximumLayerNameBytes` when unset: 128 MiB.
pub const DEFAULT_MAXIMUM_LAYER_NAME_BYTES: u64 = 128 << 20;
/// `maximumImageEntries` when unset.
pub const DEFAULT_MAXIMUM_IMAGE_ENTRIES: u64 = 4_000_000;
/// `maximumImageNameBytes` when unset: 512 MiB.
pub const DEFAULT_MAXIMUM_IMAGE_NAME_BYTES: u64 = 512 << 20;
/// `maximumConcurrentLayerIngests` when unset.
pub const DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS: usize = 4;
/// `maximumConcurrentLayerIngestsPerRegistry` when unset.
pub const DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS_PER_REGISTRY: usize = 2;
/// `blobTransferTimeout` when unset: a 1 GiB layer at 300 KiB/s still passes.
pub const DEFAULT_BLOB_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// `minimumTransferBytesPerSecond` when unset: 16 KiB/s.
pub const DEFAULT_MINIMUM_TRANSFER_BYTES_PER_SECOND: u64 = 16 << 10;
/// `transferRateWindow` when unset.
pub const DEFAULT_TRANSFER_RATE_WINDOW: Duration = Duration::from_secs(60);
/// `maximumRetryAfter` when unset.
pub const DEFAULT_MAXIMUM_RETRY_AFTER: Duration = Duration::from_secs(60);
/// `abandonGracePeriod` when unset.
pub const DEFAULT_ABANDON_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// `staleTagGrace` when unset: off.
pub const DEFAULT_STALE_TAG_GRACE: Duration = Duration::ZERO;
/// `directoryCacheSizeBytes` when unset: 256 MiB.
pub const DEFAULT_DIRECTORY_CACHE_SIZE_BYTES: u64 = 256 << 20;
/// `platformPropertyName` when unset.
pub const DEFAULT_PLATFORM_PROPERTY_NAME: &str = "container-image";
/// `keepaliveInterval` when unset.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// `requiredDirectories` when unset: what chroot runners mount over, and `/tmp`.
pub const DEFAULT_REQUIRED_DIRECTORIES: &[&str] = &["/dev", "/proc", "/sys", "/tmp"];
/// `credentialHelpers.timeout` when unset.
pub const DEFAULT_CREDENTIAL_HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// `credentialHelpers.cacheTtl` when unset.
pub const DEFAULT_CREDENTIAL_HELPER_CACHE_TTL: Duration = Duration::from_secs(300);
/// `prewarm.interval` when unset.
pub const DEFAULT_PREWARM_INTERVAL: Duration = Duration::from_secs(300);
/// `defaultPlatform.os` when `defaultPlatform` is unset.
pub const DEFAULT_PLATFORM_OS: &str = "linux";
/// `defaultPlatform.architecture` when `defaultPlatform` is unset.
pub const DEFAULT_PLATFORM_ARCHITECTURE: &str = "amd64";

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerImagesConfiguration {
    /// Registries that may be contacted, with their credentials and mirrors. Images on
    /// any other host are refused (PERMISSION_DENIED) unless `allowAnyRegistry`.
    /// Recommended: list every registry your images come from, with pull-only
    /// credentials.
    #[serde(default)]
    pub registries: Vec<RegistryHostsConfiguration>,
    /// Contact registries that are not listed (anonymously, TLS except loopback).
    /// Default: false: a service must not fetch from arbitrary hosts a client names.
    /// Recommended: false. The `expand` command without `--config` sets it.
    #[serde(default)]
    pub allow_any_registry: bool,
    /// Platform chosen from multi-platform images when an action has no `ISA`.
    /// Default: linux/amd64 ([`DEFAULT_PLATFORM_OS`], [`DEFAULT_PLATFORM_ARCHITECTURE`]).
    #[serde(default)]
    pub default_platform: PlatformConfiguration,
    /// Deadline of one registry request: a manifest or config fetch, or opening a blob
    /// stream (and, while a blob streams, the longest wait for more bytes).
    /// Default: [`DEFAULT_REQUEST_TIMEOUT`] ('30s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub request_timeout: Option<Duration>,
    /// Retries of a failed registry request (5xx, 429, connection errors, timeouts), with
    /// exponential backoff. A blob stream that breaks after it started is not retried
    /// here: the whole layer is. Default: [`DEFAULT_MAXIMUM_RETRIES`] (4).
    #[serde(default)]
    pub maximum_retries: Option<u32>,
    /// Delay before the first retry; each further one waits twice as long (with jitter),
    /// at most 30 s. Default: [`DEFAULT_INITIAL_RETRY_DELAY`] ('0.5s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub initial_retry_delay: Option<Duration>,
    /// How the Docker credential helpers that a `dockerConfigPath` file names
    /// (`credHelpers`, `credsStore`) are run and their answers cached.
    /// Default: see [`CredentialHelpersConfiguration`].
    #[serde(default)]
    pub credential_helpers: CredentialHelpersConfiguration,

    /// How long a tag keeps resolving to the same digest, fleet-wide (the record is in
    /// the Action Cache). Digest-pinned references never expire.
    /// Default: [`DEFAULT_TAG_TTL`] ('300s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub tag_ttl: Option<Duration>,
    /// Refuse references without a digest. Default: false.
    #[serde(default)]
    pub reject_tags: bool,
    /// How long a process trusts that a cached tree is complete in the CAS before it
    /// checks again with FindMissingBlobs. Keep it well below the time your CAS keeps
    /// blobs. Default: [`DEFAULT_COMPLETENESS_CHECK_INTERVAL`] ('3600s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub completeness_check_interval: Option<Duration>,
    /// Limit on the compressed size of all layers of one image.
    /// Default: [`DEFAULT_MAXIMUM_IMAGE_SIZE_BYTES`] (16 GiB).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_image_size_bytes: Option<u64>,
    /// Limit on one layer, compressed and decompressed.
    /// Default: [`DEFAULT_MAXIMUM_LAYER_SIZE_BYTES`] (16 GiB).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_layer_size_bytes: Option<u64>,
    /// Limit on the tar entries of one layer (FAILED_PRECONDITION beyond).
    /// Default: [`DEFAULT_MAXIMUM_LAYER_ENTRIES`] (1,000,000).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_layer_entries: Option<u64>,
    /// Limit on the bytes of entry names and link targets of one layer.
    /// Default: [`DEFAULT_MAXIMUM_LAYER_NAME_BYTES`] (128 MiB).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_layer_name_bytes: Option<u64>,
    /// Limit on the entries of all layers of one image.
    /// Default: [`DEFAULT_MAXIMUM_IMAGE_ENTRIES`] (4,000,000).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_image_entries: Option<u64>,
    /// Limit on the bytes of entry names and link targets of all layers of one image.
    /// Default: [`DEFAULT_MAXIMUM_IMAGE_NAME_BYTES`] (512 MiB).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_image_name_bytes: Option<u64>,
    /// Layers downloaded and ingested at the same time, across all registries (ingestion
    /// is CPU bound: about two per core). Default:
    /// [`DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS`] (4).
    #[serde(default)]
    pub maximum_concurrent_layer_ingests: Option<usize>,
    /// Layers downloaded and ingested at the same time from one registry (the
    /// reference's registry, whichever mirror serves it). Below
    /// `maximumConcurrentLayerIngests`, so that one slow or hostile registry cannot take
    /// every slot from the others. Default:
    /// [`DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS_PER_REGISTRY`] (2).
    #[serde(default)]
    pub maximum_concurrent_layer_ingests_per_registry: Option<usize>,
    /// Deadline of a whole blob transfer (a layer or config download), however fast
    /// bytes arrive; beyond it the layer fails with UNAVAILABLE. Default:
    /// [`DEFAULT_BLOB_TRANSFER_TIMEOUT`] ('3600s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub blob_transfer_timeout: Option<Duration>,
    /// A blob transfer that averages less than this over `transferRateWindow` fails
    /// with UNAVAILABLE (a trickling registry). 0 disables the check. Default:
    /// [`DEFAULT_MINIMUM_TRANSFER_BYTES_PER_SECOND`] (16384).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub minimum_transfer_bytes_per_second: Option<u64>,
    /// The window `minimumTransferBytesPerSecond` is averaged over (the first window
    /// starts when the response headers arrive). Default:
    /// [`DEFAULT_TRANSFER_RATE_WINDOW`] ('60s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub transfer_rate_window: Option<Duration>,
    /// Longest `Retry-After` of a 429 or 503 answer that is honoured; a longer one makes
    /// the request fail at once with UNAVAILABLE. Default:
    /// [`DEFAULT_MAXIMUM_RETRY_AFTER`] ('60s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub maximum_retry_after: Option<Duration>,
    /// How long an image expansion or layer ingestion goes on after every caller waiting
    /// for it has gone (cancelled, deadline passed); then it is abandoned, its slot freed
    /// and nothing is recorded. Default: [`DEFAULT_ABANDON_GRACE_PERIOD`] ('10s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub abandon_grace_period: Option<Duration>,
    /// How long a tag resolved before keeps serving its last digest when the registry is
    /// unreachable or answers 5xx/429 (logged, counted in
    /// `tag_resolutions_served_stale_total`). '0s' turns it off. Default:
    /// [`DEFAULT_STALE_TAG_GRACE`] (off).
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub stale_tag_grace: Option<Duration>,
    /// Allow connections to loopback, link-local and private addresses that no
    /// `registries[]` entry lists (by a reference with `allowAnyRegistry`, or by a
    /// redirect). Default: false. The `expand` command without `--config` sets it.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// HTTP(S) proxy every registry request goes through ('http://proxy:3128'). The
    /// `HTTP_PROXY`/`HTTPS_PROXY` environment variables are ignored: a proxy resolves
    /// names itself, out of reach of the address rule of `allowPrivateAddresses`, so it
    /// must be chosen in the configuration. Default: none (direct connections).
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Directory where large files of a layer are spooled while they are hashed.
    /// Default: the system's temporary directory.
    #[serde(default)]
    pub spool_directory: Option<String>,
    /// Size of the local cache of decoded Directory messages.
    /// Default: [`DEFAULT_DIRECTORY_CACHE_SIZE_BYTES`] (256 MiB).
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub directory_cache_size_bytes: Option<u64>,

    /// Platform property whose values are image references: a name, or a list of
    /// names. Default: [`DEFAULT_PLATFORM_PROPERTY_NAME`] ('container-image').
    #[serde(default, deserialize_with = "one_or_many")]
    pub platform_property_name: Option<Vec<String>>,
    /// Where the client's input root goes inside the image: '' (the image root) or a
    /// relative path such as 'bazel_exec_root', which the working directory is then
    /// prefixed with. Default: ''. Recommended: a path the images do not use, which
    /// avoids every clash between inputs and image content.
    #[serde(default)]
    pub input_root_directory: String,
    /// What a clash between an input and the image at one path does: 'STRICT' (an
    /// error naming the path; identical files are accepted) or 'INPUT_WINS' (the input
    /// replaces the image's node). Directories always merge. Default: 'STRICT'.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// Properties added to rewritten actions, e.g. a marker that the chroot workers
    /// advertise. The result is sorted as bb_scheduler requires. Default: none.
    #[serde(default)]
    pub add_platform_properties: Vec<PlatformProperty>,
    /// Refuse images without an executable /usr/bin/env, which bb_runner's
    /// chrootIntoInputRoot mode executes commands through. Default: true.
    #[serde(default = "default_true")]
    pub require_usr_bin_env: bool,
    /// What happens to the platform properties of rewritten actions other than the
    /// image properties, in order: each rule matches `name` (and `value`, if given) and
    /// drops, renames, sets when absent or rejects. Properties added by
    /// `addPlatformProperties` are not subject to them. Default: none.
    #[serde(default)]
    pub platform_property_rules: Vec<PlatformPropertyRule>,
    /// Give actions the images' `Env` as the base of their environment: variables the
    /// Command does not set are added from the images (a later image overriding an
    /// earlier one), the Command's values win. Default: true.
    #[serde(default = "default_true")]
    pub image_environment: bool,
    /// Refuse (FAILED_PRECONDITION) actions whose program, `arguments[0]`, is not an
    /// executable file of the merged input root: an absolute path, a relative path from
    /// the working directory, or a bare name on the action's `PATH` (after
    /// `imageEnvironment`). Default: true.
    #[serde(default = "default_true")]
    pub check_program_exists: bool,
    /// Directories added, empty, to merged input roots that lack them (chroot runners
    /// mount /dev, /proc and /sys over them; tools expect /tmp). '[]' adds none.
    /// Default: [`DEFAULT_REQUIRED_DIRECTORIES`] (['/dev', '/proc', '/sys', '/tmp']).
    #[serde(default)]
    pub required_directories: Option<Vec<String>>,
    /// Write successful results of rewritten actions to the Action Cache under the
    /// client's action digest too, so the client's next GetActionResult hits.
    /// Default: true.
    #[serde(default = "default_true")]
    pub write_back_results: bool,
    /// Interval of the operation updates sent to a client while its image is being
    /// expanded. Default: [`DEFAULT_KEEPALIVE_INTERVAL`] ('5s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub keepalive_interval: Option<Duration>,
    /// Images kept expanded before any action asks for them: each tag is resolved
    /// again (HEAD) every `interval`, and a new digest is expanded at once.
    /// Default: none.
    #[serde(default)]
    pub prewarm: Option<PrewarmConfiguration>,
}

/// `prewarm`: images the service keeps expanded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrewarmConfiguration {
    /// How often each image's tag is resolved at its registry (a HEAD request) and its
    /// tree checked; a failure is logged, counted and retried after the next interval.
    /// Default: [`DEFAULT_PREWARM_INTERVAL`] ('300s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub interval: Option<Duration>,
    /// The images. Default: none.
    #[serde(default)]
    pub images: Vec<PrewarmImageConfiguration>,
}

/// `prewarm.images[]`: one image, for one instance name and platform.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrewarmImageConfiguration {
    /// The reference, as a `container-image` property names it
    /// ('docker://ghcr.io/org/img:tag'); a reference pinned by digest is kept
    /// expanded but never moves.
    pub reference: String,
    /// The instance name the image is expanded under (the one the actions that use it
    /// send); its registry must allow it (`instanceNamePrefixes`). Default: ''.
    #[serde(default)]
    pub instance_name: String,
    /// The platform chosen from a multi-platform image. Default: `defaultPlatform`.
    #[serde(default)]
    pub platform: Option<PlatformConfiguration>,
}

fn default_true() -> bool {
    true
}

/// `{ name, value }`, as in REAPI's Platform.Property.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformProperty {
    pub name: String,
    pub value: String,
}

/// `platformPropertyRules[]`: which properties a rule matches, and what it does.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformPropertyRule {
    /// The property name matched.
    pub name: String,
    /// The value matched. Default: any value. Not allowed with `SET_WHEN_ABSENT`.
    #[serde(default)]
    pub value: Option<String>,
    pub action: PropertyRuleAction,
    /// `RENAME`: the new name. Default: the name is kept.
    #[serde(default)]
    pub new_name: Option<String>,
    /// `RENAME`: the new value (default: the value is kept); `SET_WHEN_ABSENT`: the
    /// value set (required).
    #[serde(default)]
    pub new_value: Option<String>,
    /// `REJECT`: the explanation given to the user in the error. Default: none.
    #[serde(default)]
    pub message: Option<String>,
}

/// `platformPropertyRules[].action`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PropertyRuleAction {
    /// The matching properties are removed.
    Drop,
    /// The matching properties get `newName` and/or `newValue`.
    Rename,
    /// `name=newValue` is added when no property is named `name`.
    SetWhenAbsent,
    /// An action with a matching property fails with FAILED_PRECONDITION.
    Reject,
}

/// `conflictPolicy`. Default: `STRICT`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConflictPolicy {
    #[default]
    Strict,
    InputWins,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

impl Default for ContainerImagesConfiguration {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// `defaultPlatform`: an OCI platform.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformConfiguration {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7` for `arm`, …; empty when none is wanted.
    #[serde(default)]
    pub variant: String,
}

impl Default for PlatformConfiguration {
    /// linux/amd64.
    fn default() -> Self {
        Self {
            os: DEFAULT_PLATFORM_OS.to_owned(),
            architecture: DEFAULT_PLATFORM_ARCHITECTURE.to_owned(),
            variant: String::new(),
        }
    }
}

/// `registries[]`: settings shared by a group of registry hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryHostsConfiguration {
    /// Hosts (with port, if not the default) these settings apply to. Compared
    /// case-insensitively, with the port (`host:5000` is not `host`); Docker Hub is
    /// `docker.io` (`index.docker.io` and `registry-1.docker.io` mean the same).
    pub hosts: Vec<String>,
    /// Speak plain HTTP instead of HTTPS. Loopback hosts (`localhost`, `127.0.0.0/8`,
    /// `[::1]`) always use plain HTTP, as Docker does. Default: false.
    #[serde(default)]
    pub insecure: bool,
    /// How to authenticate. Default: anonymous.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Hosts tried, in order, before the registry itself. A mirror uses the settings of its
    /// own entry if it is listed in `hosts` of some entry, else anonymous access (plain HTTP
    /// on loopback). Mirrors need not be listed to be contacted. Default: none.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Hosts a redirect from these registries may lead to (blob downloads are often
    /// redirected to object storage or a CDN), besides the registry's own hosts. Default:
    /// any public host. Loopback, link-local and private addresses are followed only if
    /// listed somewhere in `registries[]`, whatever this says.
    #[serde(default)]
    pub redirect_hosts: Option<Vec<String>>,
    /// A request budget for these hosts, shared by all requests of this process (a token
    /// bucket): for a fleet sharing one pull quota. Default: none.
    #[serde(default)]
    pub request_budget: Option<RequestBudget>,
    /// The instance names that may use these hosts (and so their credentials), as
    /// prefixes matched by whole path components: 'team-a' allows 'team-a' and
    /// 'team-a/ci', not 'team-ab'; '' allows every instance name. A request of any
    /// other instance name is refused with PERMISSION_DENIED before any cache is
    /// consulted (docs/design/tenants.md). Hosts no entry lists, reached through
    /// `allowAnyRegistry`, are not limited. Default: none (every instance name).
    #[serde(default)]
    pub instance_name_prefixes: Option<Vec<String>>,
}

/// `registries[].requestBudget`: a token bucket.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBudget {
    /// Requests per second, sustained.
    pub requests_per_second: f64,
    /// Requests that may be made at once after a quiet period. Default: 1.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `credentialHelpers`: running `docker-credential-<name> get`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialHelpersConfiguration {
    /// Longest run of a helper; beyond it the helper is killed and the request fails
    /// with UNAVAILABLE. Default: [`DEFAULT_CREDENTIAL_HELPER_TIMEOUT`] ('10s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub timeout: Option<Duration>,
    /// How long a helper's answer is used. After three quarters of it a request still
    /// gets the cached answer while the helper runs again in the background; after all
    /// of it requests wait for a new run. Keep it below the lifetime of the tokens the
    /// helper hands out (ECR: 12 h). Default: [`DEFAULT_CREDENTIAL_HELPER_CACHE_TTL`]
    /// ('300s').
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub cache_ttl: Option<Duration>,
    /// Directories searched, in order, for `docker-credential-<name>`. Default: none,
    /// which means the directories of the process's `PATH`, as Docker does.
    #[serde(default)]
    pub search_directories: Vec<String>,
}

/// How to authenticate to a registry (a oneof: exactly one key).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Credentials {
    /// No credentials: `{ "anonymous": {} }`.
    Anonymous {},
    /// HTTP basic credentials, also used to obtain bearer tokens.
    Basic(BasicCredentials),
    /// A Docker `config.json`, read at startup. For a host, as Docker does: its
    /// `credHelpers` entry if any, else `credsStore` if set (both run a credential
    /// helper, see `credentialHelpers`), else its `auths` entry.
    DockerConfigPath(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous {} => f.write_str("Anonymous"),
            Credentials::Basic(b) => f
                .debug_struct("Basic")
                .field("username", &b.username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::DockerConfigPath(p) => f.debug_tuple("DockerConfigPath").field(p).finish(),
        }
    }
}

/// A user name and password.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicCredentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl PlatformPropertyRule {
    /// The fields this rule's action needs are set, and no other.
    fn validate(&self, image_property_names: &[String]) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name must not be empty".into());
        }
        if image_property_names.contains(&self.name) {
            return Err(format!(
                "{:?} is an image property (platformPropertyName), which rules do not apply to",
                self.name
            ));
        }
        let (new_name, new_value, message) = (
            self.new_name.is_some(),
            self.new_value.is_some(),
            self.message.is_some(),
        );
        match self.action {
            PropertyRuleAction::Drop if new_name || new_value || message => {
                Err("DROP takes no newName, newValue or message".into())
            }
            PropertyRuleAction::Rename if message => Err("RENAME takes no message".into()),
            PropertyRuleAction::Rename if !new_name && !new_value => {
                Err("RENAME needs newName, newValue or both".into())
            }
            PropertyRuleAction::Rename if self.new_name.as_deref() == Some("") => {
                Err("newName must not be empty".into())
            }
            PropertyRuleAction::SetWhenAbsent if self.value.is_some() || new_name || message => {
                Err("SET_WHEN_ABSENT matches by name only and takes only newValue".into())
            }
            PropertyRuleAction::SetWhenAbsent if !new_value => {
                Err("SET_WHEN_ABSENT needs newValue".into())
            }
            PropertyRuleAction::Reject if new_name || new_value => {
                Err("REJECT takes no newName or newValue".into())
            }
            _ => Ok(()),
        }
    }
}

impl ContainerImagesConfiguration {
    /// Checks what the types cannot express and needs no other module. The registry
    /// settings (host syntax, supported platforms) are checked by
    /// `registry::configuration`, where they are used.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(names) = &self.platform_property_name {
            if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                return Err("platformPropertyName: names must not be empty".into());
            }
        }
        let p = self.input_root_directory.trim_matches('/');
        if p.split('/').any(|part| part == ".." || part == ".") {
            return Err(format!(
                "inputRootDirectory: {:?} must be a plain relative path",
                self.input_root_directory
            ));
        }
        let image_names = self
            .platform_property_name
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_PLATFORM_PROPERTY_NAME.into()]);
        for (index, rule) in self.platform_property_rules.iter().enumerate() {
            rule.validate(&image_names)
                .map_err(|e| format!("platformPropertyRules[{index}]: {e}"))?;
        }
        for path in self.required_directories.iter().flatten() {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
                return Err(format!(
                    "requiredDirectories: {path:?} must name a directory below the root, \
                     without '.' or '..'"
                ));
            }
        }
        if self.maximum_concurrent_layer_ingests == Some(0) {
            return Err("maximumConcurrentLayerIngests: must be at least 1".into());
        }
        if self.maximum_concurrent_layer_ingests_per_registry == Some(0) {
            return Err("maximumConcurrentLayerIngestsPerRegistry: must be at least 1".into());
        }
        if let Some(prewarm) = &self.prewarm {
            if prewarm.interval.is_some_and(|i| i.is_zero()) {
                return Err("prewarm.interval: must be positive".into());
            }
        }
        Ok(())
    }
}
