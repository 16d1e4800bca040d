// Reference configuration of bb-container-expander in proxy mode.
//
// Buildbarn's frontend (bb_storage with `schedulers`) sends Execute, WaitExecution and
// GetCapabilities here instead of to bb_scheduler. Actions whose platform names a
// container image are rewritten (the image's file system becomes the input root, the
// client's inputs are grafted into it, `container-image` is dropped from the
// platform) and forwarded to bb_scheduler; every other action is forwarded unchanged.
// The router-mode reference, where bb_scheduler calls the expander instead, is
// bb_container_expander_router.jsonnet.
//
// Conventions are Buildbarn's (bb-storage util.UnmarshalConfigurationFromFile):
// field names are lowerCamelCase, unknown fields are errors that name the field,
// durations are strings ('30s'), int64 values may be numbers or strings, a oneof is
// an object with exactly one key, imports resolve relative to this file, and every
// environment variable of the process is available as std.extVar('NAME').
//
// Check a configuration without starting anything:
//   bb-container-expander check-config bb_container_expander.jsonnet
local common = import 'common.libsonnet';

{
  // Process-wide settings.
  //
  // diagnosticsHttpServer: an HTTP server with /-/healthy (200 once serving, 503
  // before and while stopping) and, when enablePrometheus is true, /metrics.
  //   httpServers[].listenAddresses: e.g. [':9980'].
  //   httpServers[].authenticationPolicy: { allow: {} } | { deny: 'message' } |
  //     { any: { policies: [...] } } | { all: { policies: [...] } }.
  //   enablePrometheus: serve /metrics: the process_* series (CPU, memory, file
  //     descriptors, start time) from the first scrape on, the expander's own once
  //     used. Default: false. Recommended value: true.
  //   enablePprof, enableActiveSpans: accepted so that a Buildbarn
  //     common.libsonnet can be reused; they have no effect here.
  //   Default: no diagnostics server.
  //
  // logPaths: files that logs are appended to, besides standard error; created if
  // missing, and the service does not start if one cannot be opened. They never get
  // ANSI colour codes; standard error gets them only when it is a terminal. Set
  // RUST_LOG (e.g. RUST_LOG=debug) to change the level. Default: none.
  global: common.global,

  // Servers on which the expander accepts calls. In proxy mode each one serves
  // build.bazel.remote.execution.v2.Execution, ...Capabilities,
  // buildbarn.remoteactionrouter.ActionRouter and grpc.health.v1.Health.
  //
  //   listenAddresses: TCP addresses; ':8985' listens on every interface.
  //   listenPaths: UNIX socket paths. A stale socket file is removed first.
  //   authenticationPolicy (required): who may call, as for the diagnostics server.
  //     The frontend does not forward clients' credentials, so this authenticates
  //     the frontend, not the user.
  //   maximumReceivedMessageSizeBytes: largest request accepted. Default: 0, which
  //     means gRPC's 4 MiB. Execute requests are small; the default suffices.
  //   healthCheckService: a service name that grpc.health.v1.Health reports as
  //     SERVING, besides ''. Default: ''.
  //
  // Recommended value: one server on ':8985', reachable only by the frontend.
  grpcServers: [{
    listenAddresses: [':8985'],
    authenticationPolicy: { allow: {} },
  }],

  // Largest message read from or written to the CAS. A merged Directory that would
  // be larger is an error (DirectoryTooLarge) rather than a Directory the workers
  // cannot read. At least 65536. Default: 2 MiB.
  // Recommended value: the workers' maximumMessageSizeBytes (2 MiB in Buildbarn's
  // deployments).
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,

  // The CAS and Action Cache. The CAS must be the one bb_scheduler and bb_worker use:
  // the rewritten Action, Command and Directories and every file of the images are
  // uploaded there. The Action Cache holds the expander's own records (resolved tags,
  // layer changesets, image trees, rewritten-to-original action mappings) and the
  // results written back under clients' action digests.
  //
  // Backends (a oneof):
  //   { grpc: { client: ClientConfiguration, enableCompression: false } }: a
  //     bb_storage server, normally the frontend (see common.libsonnet for why).
  //     enableCompression is accepted and ignored.
  //   { memory: { maximumSizeBytes: N } }: in this process, least recently used
  //     blobs evicted beyond N bytes. Default N (unset or 0, so `memory: {}` works):
  //     4 GiB, a quarter of a typical 16 GiB machine, taken only as blobs arrive.
  //     Only for trying the expander out and for the `expand` command: the
  //     scheduler and workers cannot see it.
  //   { readCaching: { slow: backend, fast: backend } } (CAS only): reads try `fast`
  //     first and copy what `slow` returns into it; writes go to `slow`.
  //   { existenceCaching: { backend: backend, existenceCache: { cacheSize: N,
  //     cacheDuration: '60s', cacheReplacementPolicy: 'LEAST_RECENTLY_USED' } } }
  //     (CAS only): remembers for cacheDuration which blobs exist, so that repeated
  //     FindMissingBlobs calls for image content are answered locally.
  //     cacheReplacementPolicy is accepted; eviction is least recently used.
  //
  // Recommended value: grpc to the frontend, the CAS wrapped in existenceCaching
  // with a cacheDuration well below the time the CAS keeps blobs.
  blobstore: {
    contentAddressableStorage: {
      existenceCaching: {
        backend: common.blobstore.contentAddressableStorage,
        existenceCache: {
          cacheSize: 1000 * 1000,
          cacheDuration: '60s',
        },
      },
    },
    actionCache: common.blobstore.actionCache,
  },

  // Proxy mode: bb_scheduler's client endpoint (its clientGrpcServers), to which
  // rewritten and passed-through actions are forwarded. Leave it out to run in
  // router mode only.
  //
  // A ClientConfiguration, as in Buildbarn:
  //   address: 'host:port', 'dns:///host:port' or 'unix:///path'.
  //   tls: { serverCertificateAuthorities: PEM, clientKeyPair: { inline: {
  //     certificate, privateKey } } | { files: { certificatePath, privateKeyPath,
  //     refreshInterval } }, serverName }. Default: plaintext. Files are read once.
  //   keepalive: { time: '30s', timeout: '10s', permitWithoutStream: false }: HTTP/2
  //     pings; the scheduler must permit them. Default: none.
  //   addMetadata: [{ header: 'x-name', values: ['v'] }]: static headers (lowercase
  //     names). Default: none.
  //   addMetadataJmespathExpression: { expression: '...' }: headers computed per
  //     call from { incomingGRPCMetadata, authenticationMetadata }. Default: none.
  //
  // The expander starts even if the scheduler is unreachable; calls fail with
  // UNAVAILABLE until it is back, and a scheduler that dies mid-stream yields
  // UNAVAILABLE, which Bazel retries.
  //
  // Recommended value: the scheduler's client port with the RequestMetadata
  // forwarded, as below, so that bb_scheduler's invocation keys keep working.
  scheduler: {
    address: 'scheduler:8982',
    addMetadataJmespathExpression: common.forwardRequestMetadata,
  },

  // Serve build.bazel.remote.asset.v1.Fetch on every gRPC server: FetchDirectory of a
  // docker:// URI (qualifier 'platform' = 'linux/arm64', ...) expands the image into
  // the CAS of the request's instance and answers its root Directory digest, for
  // tools and CI that prewarm or inspect images; other URI schemes and FetchBlob
  // answer NOT_FOUND (docs/remote-asset.md). Default: false.
  // Recommended value: true where clients may pull images anyway (it pulls only
  // from the registries allowed below, as Execute does).
  serveRemoteAsset: true,

  // Several replicas as one (docs/design/fleet.md): each image expansion and each
  // layer ingestion that misses the caches is done by one replica of the fleet, its
  // owner by rendezvous hashing of its cache key, which the others ask over gRPC
  // (bb_container_expander.fleet.Fleet, served on every gRPC server above). When the
  // owner cannot be reached, the next owner is asked, down to the asking replica
  // itself: no request fails because a replica went away. Unset (the default): the
  // process works alone, and replicas only share what the Action Cache holds, so a
  // new image asked for on N replicas at once is pulled up to N times.
  //   selfAddress: 'host:port' at which the other replicas reach this one, spelled
  //     as in peers, or as peersDnsName resolves to it (Kubernetes:
  //     std.extVar('POD_IP') + ':8985' with POD_IP from status.podIP). Required.
  //   peers: every replica's 'host:port', this one included.
  //   peersDnsName: 'host:port' whose name resolves to every replica (a headless
  //     Service), resolved at start and every peersRefreshInterval; the replicas
  //     found are added to peers. At least one of peers and peersDnsName is needed.
  //   peersRefreshInterval: Default: '10s'.
  //   unreachablePeerBackoff: how long a replica that could not be reached is left
  //     out of the owner choice. Default: '10s'.
  //   connectTimeout: limit on connecting to a replica. Default: '2s'.
  //   peerClient: { tls, keepalive, addMetadata } of calls to the other replicas,
  //     as in a gRPC client. Default: plaintext, with keepalive { time: '10s',
  //     timeout: '10s' }, so that an owner that stops answering (frozen, or behind a
  //     path that drops packets) is given up on and its work done by the next one.
  //   grpcServers: gRPC servers (as the top-level ones) that serve the other
  //     replicas' calls, and then only they do: clients' servers answer
  //     UNIMPLEMENTED for them. selfAddress and peers name their port. Default: none,
  //     the top-level grpcServers serve them beside Execution.
  // The replicas must share the CAS and Action Cache and have the same
  // containerImages settings. Example:
  //   fleet: {
  //     selfAddress: std.extVar('POD_IP') + ':8985',
  //     peersDnsName: 'expander-peers.buildbarn.svc.cluster.local:8985',
  //   },
  // Default: unset. Recommended value: set whenever more than one replica runs.

  // Image expansion: where images may come from and how they become input roots.
  containerImages: {
    // Registries that may be contacted. An image on any other host is refused with
    // PERMISSION_DENIED "Registry ... is not allowed", because a client must not be
    // able to make the service fetch arbitrary URLs. Each entry:
    //   hosts: host names, with the port if not the default ('registry:5000' is not
    //     'registry'). Compared case-insensitively; Docker Hub is 'docker.io'
    //     (index.docker.io and registry-1.docker.io mean the same).
    //   insecure: speak plain HTTP. Default: false. Loopback hosts (localhost,
    //     127.0.0.0/8, [::1]) always use plain HTTP.
    //   credentials (a oneof): { anonymous: {} } (the default) |
    //     { basic: { username, password } } (also used to obtain bearer tokens) |
    //     { dockerConfigPath: '/path/config.json' }: read at start-up; for the host,
    //     as Docker does, its "credHelpers" entry, else "credsStore", else its
    //     "auths" entry (auth, or username and password, or registrytoken). A
    //     credential helper (docker-credential-NAME get) runs when credentials are
    //     first needed, as credentialHelpers below says. Credentials come only
    //     from here, never from an action, so they never enter an action digest.
    //   mirrors: hosts tried, in order, before the registry itself. A mirror uses
    //     the settings of its own entry if it is listed, else anonymous access.
    //   instanceNamePrefixes: the instance names that may use these hosts and their
    //     credentials, as prefixes matched by whole path components: ['team-a',
    //     'team-b/ci'] allows team-a, team-a/x and team-b/ci/y, not team-ab or
    //     team-b; '' allows every instance name. Any other instance name is refused
    //     with PERMISSION_DENIED naming image, registry and instance name, before any
    //     cache is consulted, so no cached image reaches a team that could not pull
    //     it (docs/design/tenants.md). A listed mirror's entry must allow at least
    //     the same instance names. Hosts allowed only by allowAnyRegistry are not
    //     limited. Default: not set (every instance name).
    //
    // Recommended value: every registry your images come from, with pull-only
    // credentials taken from the environment or a mounted file, e.g.
    //   { hosts: ['ghcr.io'], credentials: { basic: {
    //       username: std.extVar('GHCR_USERNAME'), password: std.extVar('GHCR_TOKEN') } } }
    registries: [
      { hosts: ['docker.io'], credentials: { anonymous: {} } },
      { hosts: ['ghcr.io', 'quay.io'] },
    ],

    // How the Docker credential helpers that a dockerConfigPath file names
    // (credHelpers, credsStore) are run: 'docker-credential-NAME get' with the
    // registry host on standard input, answering {"Username", "Secret"}. A Username
    // of '<token>' (an OAuth2 identity token) is refused. Failures name the helper
    // and the registry, never the helper's output.
    //   timeout: longest run; the helper is then killed (UNAVAILABLE). Default: '10s'.
    //   cacheTtl: how long an answer is used. After three quarters of it the helper
    //     runs again in the background while requests keep the cached answer; after
    //     all of it requests wait for a new run. Concurrent requests share one run.
    //     Default: '300s'. Recommended value: well below the lifetime of the tokens
    //     the helper hands out (ECR: 12 h).
    //   searchDirectories: absolute directories searched, in order, for the helper.
    //     Default: [] (the directories of the process's PATH, as Docker does).
    credentialHelpers: { timeout: '10s', cacheTtl: '300s', searchDirectories: [] },

    // Contact hosts that are not listed (anonymously; TLS except on loopback). Their
    // metrics share the label registry="other", so that clients cannot grow the number
    // of series. Default: false. Recommended value: false.
    allowAnyRegistry: false,

    // The platform chosen from a multi-platform image (an index) when the action has
    // no ISA property. OSFamily and ISA properties of the action override it
    // (ISA=x86-64 is amd64, arm-a64 is arm64, ...). Only Linux images are supported.
    // Default: { os: 'linux', architecture: 'amd64' }.
    // Recommended value: the architecture of your workers.
    defaultPlatform: { os: 'linux', architecture: 'amd64' },

    // Deadline of one registry request (a manifest or config fetch, opening a blob,
    // and the longest wait for more bytes of a blob). Default: '30s'.
    requestTimeout: '30s',

    // Retries of a failed registry request (HTTP 5xx and 429, connection errors,
    // timeouts), with exponential backoff and jitter, at most 30s apart. At most 20.
    // Default: 4.
    maximumRetries: 4,

    // Delay before the first retry; each further retry waits twice as long.
    // Default: '0.5s'.
    initialRetryDelay: '0.5s',

    // Deadline of a whole blob transfer (a layer or config download), however fast
    // bytes arrive; beyond it the layer fails with UNAVAILABLE naming image, layer and
    // registry. Default: '3600s' (a 1 GiB layer passes at 300 KiB/s).
    blobTransferTimeout: '3600s',

    // A blob transfer averaging less than this many bytes per second over a window of
    // transferRateWindow fails with UNAVAILABLE (a trickling registry). 0 turns the
    // check off. Default: 16384.
    minimumTransferBytesPerSecond: 16384,

    // The window minimumTransferBytesPerSecond is averaged over. Default: '60s'.
    transferRateWindow: '60s',

    // Longest Retry-After (on HTTP 429 or 503) that is waited for; a longer one fails
    // the request at once with UNAVAILABLE. Default: '60s'.
    maximumRetryAfter: '60s',

    // Connect to loopback, link-local (169.254.169.254: cloud metadata) and private
    // addresses that no registries[] entry lists, when a reference, a redirect or a
    // token server names them. Default: false. Recommended value: false; list
    // in-cluster registries instead.
    allowPrivateAddresses: false,

    // The HTTP(S) proxy every registry request goes through, e.g.
    // 'http://proxy.example.com:3128'. The HTTP_PROXY and HTTPS_PROXY environment
    // variables are ignored: a proxy resolves registry names itself, where the
    // private-address rule above cannot check them, so the proxy must be trusted to
    // refuse internal addresses. Default: null (direct connections). Example:
    // 'http://proxy.example.com:3128'.
    httpProxy: null,

    // How long an image expansion or layer ingestion goes on once every action waiting
    // for it has gone (cancelled, deadline passed); then it is abandoned, its slot
    // freed, and nothing is recorded. Default: '10s'.
    abandonGracePeriod: '10s',

    // How long a tag resolved before keeps serving its last digest while its registry
    // is unreachable or answers 5xx/429 (logged, and counted in
    // tag_resolutions_served_stale_total). '0s' turns it off. Default: '0s'.
    // Recommended value: '3600s' if builds must go on through registry outages.
    staleTagGrace: '0s',

    // How long a tag (image:1.2) keeps resolving to the digest it resolved to, for
    // the whole fleet: the resolution is recorded in the Action Cache. References
    // pinned by digest never expire. Default: '300s'.
    // Recommended value: '300s'; pin images by digest wherever you can.
    tagTtl: '300s',

    // Refuse references without a digest (INVALID_ARGUMENT), so that the same action
    // digest always runs in the same image. Default: false.
    // Recommended value: true once every client pins its images.
    rejectTags: false,

    // How long a process trusts that a cached tree (a layer changeset or an image) is
    // still complete in the CAS before it checks again with FindMissingBlobs. An
    // incomplete tree is rebuilt, never forwarded. Default: '3600s'.
    // Recommended value: well below the time your CAS keeps unused blobs.
    completenessCheckInterval: '3600s',

    // Limit on the total compressed size of an image's layers; a larger image is
    // RESOURCE_EXHAUSTED. Default: 16 GiB.
    maximumImageSizeBytes: 16 * 1024 * 1024 * 1024,

    // Limit on one layer, compressed and decompressed. Default: 16 GiB.
    maximumLayerSizeBytes: 16 * 1024 * 1024 * 1024,

    // Limits on layer metadata, checked while a layer is parsed; beyond them an image
    // is FAILED_PRECONDITION. Fixed limits: a path component 255 bytes, a path or
    // link target 4096 bytes, a PAX or GNU long-name record 1 MiB.
    // Tar entries of one layer. Default: 1000000.
    maximumLayerEntries: 1000000,
    // Bytes of entry names and link targets of one layer. Default: 128 MiB.
    maximumLayerNameBytes: 128 * 1024 * 1024,
    // Entries of all layers of one image. Default: 4000000.
    maximumImageEntries: 4000000,
    // Bytes of entry names and link targets of all layers of one image.
    // Default: 512 MiB. Recommended value: the defaults, which real images do not reach.
    maximumImageNameBytes: 512 * 1024 * 1024,

    // Layers downloaded and ingested at the same time, across all registries.
    // Ingestion (decompression and hashing) is CPU bound. Default: 4.
    // Recommended value: about twice the number of cores.
    maximumConcurrentLayerIngests: 4,

    // Layers downloaded and ingested at the same time from one registry: below
    // maximumConcurrentLayerIngests, so that slow layers from one registry leave slots
    // for the others. Default: 2.
    maximumConcurrentLayerIngestsPerRegistry: 2,

    // Directory where large files of a layer are spooled while they are hashed.
    // Default: the system's temporary directory ($TMPDIR or /tmp).
    // Recommended value: a local disk with room for the largest file of any image.
    spoolDirectory: '/tmp',

    // Size of the in-memory cache of Directory messages of image trees, which keeps
    // the per-action merge from reading the CAS. Default: 256 MiB.
    directoryCacheSizeBytes: 256 * 1024 * 1024,

    // Platform property whose values are image references: a name or a list of
    // names. Every occurrence is expanded; several images are stacked in order.
    // References look like 'docker://registry.example.com/team/img@sha256:...'
    // (the docker:// prefix is optional). Default: 'container-image'.
    platformPropertyName: 'container-image',

    // Where the client's input root goes inside the image: '' (the image root) or a
    // relative path such as 'execroot', which the working directory is then
    // prefixed with. Output paths are relative to the working directory and stay
    // valid. Default: ''.
    // Recommended value: a directory the images do not use, which avoids every
    // clash between inputs and image content.
    inputRootDirectory: 'execroot',

    // What a clash between an input and the image at one path does: 'STRICT' (an
    // INVALID_ARGUMENT error naming the path; identical files are accepted) or
    // 'INPUT_WINS' (the input replaces the image's file or symlink). Directories
    // always merge. Default: 'STRICT'. Recommended value: 'STRICT'.
    conflictPolicy: 'STRICT',

    // Properties added to rewritten actions, in place of container-image. The
    // result is sorted by name and value and deduplicated, as bb_scheduler requires,
    // and must equal the platform a chroot worker advertises. Default: none.
    // Recommended value: a marker that only the chroot workers advertise, so that
    // expanded actions never land on a worker that would not chroot.
    addPlatformProperties: [{ name: 'runner', value: 'chroot' }],

    // Refuse (FAILED_PRECONDITION "MissingUsrBinEnv") images without an executable
    // /usr/bin/env: bb_runner with chrootIntoInputRoot runs every command as
    // `/usr/bin/env -- argv...` inside the input root. Default: true.
    // Recommended value: true.
    requireUsrBinEnv: true,

    // What happens to the platform properties of rewritten actions other than the
    // image properties, applied in order, each to what the earlier ones left; in
    // router mode too. Clients set up for other services send keys bb_scheduler's
    // workers do not advertise, and bb_scheduler matches properties exactly, so such
    // an action would wait for a worker forever. A rule matches `name`, and `value`
    // if given (default: any value), and its `action` is one of:
    //   'DROP'            the matching properties are removed;
    //   'RENAME'          they get `newName` and/or `newValue`;
    //   'SET_WHEN_ABSENT' `name=newValue` is added when no property is named `name`
    //                     (matches by name only);
    //   'REJECT'          the action fails with FAILED_PRECONDITION naming the
    //                     property and the rule, with `message` for the user.
    // Properties added by addPlatformProperties are not subject to the rules; rules
    // for an image property are refused. Actions that name no image are forwarded
    // untouched. Default: none. Rules for keys of other services could read:
    //   platformPropertyRules: [
    //     // Remote Build Execution / BuildBuddy docker options: workers here chroot.
    //     { name: 'dockerNetwork', action: 'DROP' },
    //     { name: 'dockerRunAsRoot', action: 'DROP' },
    //     { name: 'dockerPrivileged', value: 'true', action: 'REJECT',
    //       message: 'privileged containers are not offered; use an image that needs none' },
    //     { name: 'dockerPrivileged', action: 'DROP' },
    //     // RBE's worker pool key, as the scheduler's lower-case 'pool'.
    //     { name: 'Pool', action: 'RENAME', newName: 'pool' },
    //     { name: 'pool', action: 'SET_WHEN_ABSENT', newValue: 'default' },
    //   ],
    platformPropertyRules: [],

    // Make the images' config `Env` the base of the action's environment, as a
    // container runtime does: each variable the Command does not set is added from
    // the images (a later image overriding an earlier one), the Command's own values
    // win, and the result is sorted by name, as REAPI requires. What was added is
    // listed in the provenance of the result. The config's `WorkingDir` and `User`
    // cannot be honoured by a chroot runner (the action runs in its Command's working
    // directory, as the worker's user); they are reported in the provenance.
    // Default: true. Recommended value: true.
    imageEnvironment: true,

    // Refuse (FAILED_PRECONDITION naming the image and the path) actions whose
    // program, Command.arguments[0], is not an executable file of the merged input
    // root, symlinks inside the tree followed: an absolute path; a relative path with
    // a '/', from the working directory; or a bare name, searched on the action's
    // PATH after imageEnvironment ('/bin:/usr/bin' when it has none, as execvp).
    // The action then never reaches a worker. Default: true.
    // Recommended value: true.
    checkProgramExists: true,

    // Directories added, empty, to merged input roots that lack them: chroot runners
    // mount /dev, /proc and /sys over them, and tools expect /tmp. A path whose place
    // a file takes fails the action with FAILED_PRECONDITION naming the image. Paths
    // added are listed in the provenance. '[]' adds none.
    // Default: ['/dev', '/proc', '/sys', '/tmp'].
    requiredDirectories: ['/dev', '/proc', '/sys', '/tmp'],

    // After a rewritten action succeeds (exit code 0, do_not_cache unset), write its
    // ActionResult to the Action Cache under the client's action digest too. The
    // worker stores it only under the rewritten digest, so without this the client's
    // next GetActionResult misses. Default: true. Recommended value: true.
    writeBackResults: true,

    // Interval of the operation updates sent to a client while its image is being
    // expanded, so that no client or proxy gives up on a silent stream during a cold
    // pull. Default: '5s'.
    keepaliveInterval: '5s',

    // Images kept expanded before any action asks for them (docs/operations.md,
    // "Prewarming images"). From start-up on, every interval, each tag is resolved at
    // its registry (one HEAD request, past tagTtl and every cache), its digest is
    // expanded under instanceName and platform, and the digest becomes the tag's
    // fresh resolution in this process and in the Action Cache. A reference pinned by
    // digest is only kept expanded. Each image is checked at start-up (its registry
    // must be listed and allow instanceName); at run time a failure is logged, counted
    // in prewarm_failures_total and retried after the interval, never fatal.
    //   interval: how often. Default: '300s'.
    //   images[]: { reference: 'docker://host/repository:tag' (required),
    //     instanceName: the instance name of the actions that use it (default ''),
    //     platform: { os, architecture, variant } (default: defaultPlatform) }.
    //     Default: [].
    // Default: not set (nothing prewarmed). Recommended value: the toolchain images
    // your builds name by tag, e.g.
    //   images: [{ reference: 'docker://ghcr.io/org/toolchain:stable', instanceName: '' }]
    prewarm: { interval: '300s', images: [] },
  },
}
