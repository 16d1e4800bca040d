// Reference configuration of bb-container-expander in proxy mode: Buildbarn's frontend
// sends Execute, WaitExecution and GetCapabilities here (its `schedulers['']` endpoint),
// and the expander forwards them to bb_scheduler.
//
// Conventions are Buildbarn's: lowerCamelCase field names, unknown fields are errors,
// durations are strings ('30s'), int64 values may be numbers or strings, a oneof is an
// object with exactly one key, and every environment variable is available as
// std.extVar('NAME'). Check a file with:
//   bb-container-expander check-config bb_container_expander.jsonnet
local common = import 'common.libsonnet';

{
  // global: process-wide settings.
  //   diagnosticsHttpServer.httpServers[].listenAddresses: where /-/healthy and /metrics
  //     are served. Default: no diagnostics server.
  //   diagnosticsHttpServer.httpServers[].authenticationPolicy: allow, deny, any or all.
  //   diagnosticsHttpServer.enablePrometheus: serve /metrics. Default: false.
  //     Recommended value: true.
  //   diagnosticsHttpServer.enablePprof, enableActiveSpans: accepted so that Buildbarn's
  //     common.libsonnet can be reused; no effect.
  //   logPaths: files that logs are written to besides standard error. Default: none.
  global: common.global,

  // grpcServers: where the expander serves Execution, Capabilities and
  // grpc.health.v1.Health. Each entry:
  //   listenAddresses: TCP addresses, ':8985' for every interface.
  //   listenPaths: UNIX sockets; a stale socket file is removed first.
  //   authenticationPolicy (required): { allow: {} } | { deny: 'message' } |
  //     { any: { policies: [...] } } | { all: { policies: [...] } }.
  //   maximumReceivedMessageSizeBytes: largest request. Default: 0, meaning 4 MiB.
  //   healthCheckService: a service name reported SERVING besides ''. Default: ''.
  grpcServers: [{
    listenAddresses: [':8985'],
    authenticationPolicy: { allow: {} },
  }],

  // maximumMessageSizeBytes: largest message read from or written to the CAS. Must
  // match bb_worker. Default: 2 MiB. Recommended value: 2 MiB.
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,

  // blobstore: the CAS and Action Cache the scheduler and workers use. Backends:
  //   { grpc: { client: ClientConfiguration } }: a bb_storage (frontend) server.
  //   { memory: { maximumSizeBytes: N } }: embedded, least recently used blobs are
  //     evicted beyond N bytes. For local use and tests only: the scheduler and
  //     workers cannot see it.
  //   { readCaching: { slow: backend, fast: backend } } (CAS only): reads try `fast`
  //     first and copy what `slow` returns into it; writes go to `slow`.
  //   { existenceCaching: { backend: backend, existenceCache: { cacheSize: N,
  //     cacheDuration: '60s' } } } (CAS only): remembers which blobs exist, to skip
  //     FindMissingBlobs calls.
  blobstore: common.blobstore,

  // scheduler: bb_scheduler's client endpoint (its clientGrpcServers). A
  // ClientConfiguration:
  //   address: 'host:port', 'dns:///host:port' or 'unix:///path'.
  //   tls: { serverCertificateAuthorities: PEM, clientKeyPair: { inline: {
  //     certificate, privateKey } } | { files: { certificatePath, privateKeyPath } },
  //     serverName }. Default: plaintext.
  //   keepalive: { time: '30s', timeout: '10s', permitWithoutStream: false }.
  //   addMetadata: [{ header: 'x-name', values: ['v'] }]: static headers.
  //   addMetadataJmespathExpression: { expression: '...' }: headers computed from the
  //     incoming call's metadata. The expression below forwards the client's
  //     RequestMetadata, which bb_scheduler uses for invocation keys (as bb-deployments'
  //     frontend does). Recommended value: as below.
  // The expander starts even if the scheduler is unreachable; calls then fail with
  // UNAVAILABLE until it is back.
  scheduler: {
    address: 'scheduler:8982',
    addMetadataJmespathExpression: {
      expression: |||
        {
          "build.bazel.remote.execution.v2.requestmetadata-bin": incomingGRPCMetadata."build.bazel.remote.execution.v2.requestmetadata-bin"
        }
      |||,
    },
  },
}
