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
}
