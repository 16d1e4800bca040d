// Settings shared with the rest of a Buildbarn deployment on Kubernetes. Merge these
// into the deployment's own common.libsonnet if it has one.
{
  maximumMessageSizeBytes: 2 * 1024 * 1024,

  global: {
    diagnosticsHttpServer: {
      httpServers: [{
        listenAddresses: [':9980'],
        authenticationPolicy: { allow: {} },
      }],
      enablePrometheus: true,
      enablePprof: true,
      enableActiveSpans: true,
    },
  },

  // The expander reaches the deployment's storage through the frontend Service,
  // which shards as the scheduler and workers do.
  expanderBlobstore: {
    contentAddressableStorage: { grpc: { client: { address: 'frontend:8980' } } },
    actionCache: { grpc: { client: { address: 'frontend:8980' } } },
  },

  forwardRequestMetadata: {
    expression: |||
      {
        "build.bazel.remote.execution.v2.requestmetadata-bin": incomingGRPCMetadata."build.bazel.remote.execution.v2.requestmetadata-bin"
      }
    |||,
  },

  // Added to every rewritten action; the chroot workers advertise it beside the
  // client's other properties (e.g. OSFamily=linux), sorted.
  chrootMarker: { name: 'runner', value: 'chroot' },

  // What the chroot workers advertise (worker-chroot.jsonnet): the client's
  // properties without container-image, plus the marker, sorted by name, then value,
  // in byte order, as bb_scheduler requires.
  chrootPlatform: {
    properties: [
      { name: 'OSFamily', value: 'linux' },
      $.chrootMarker,
    ],
  },

  // Where bb_browser is reachable from the users' machines; workers link to it.
  browserUrl: 'https://bb-browser.example.com',

  // The largest blob the deployment promises to hold: the largest file of any image
  // and the largest output file of an action. Every 'local' CAS a blob passes
  // through must hold it in one block: the chroot workers' cache (checked by
  // tests/buildbarn_configs.rs) and your storage shards' (Buildbarn's Kubernetes
  // deployment gives them 32 GiB in 38 blocks, about 860 MiB per block: raise their
  // size or lower this).
  largestBlobSizeBytes: 1024 * 1024 * 1024,
}
