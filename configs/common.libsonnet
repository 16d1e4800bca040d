// Settings shared by the processes of a deployment, in the style of bb-deployments'
// common.libsonnet. Import it from each process's configuration:
//   local common = import 'common.libsonnet';
{
  // Largest protobuf message (Directory, Action, …) exchanged with the CAS. Must be the
  // same as the workers' maximumMessageSizeBytes. Recommended value: 2 MiB.
  maximumMessageSizeBytes: 2 * 1024 * 1024,

  // Diagnostics: /-/healthy and /metrics on port 9980, as in bb-deployments.
  global: {
    diagnosticsHttpServer: {
      httpServers: [{
        listenAddresses: [':9980'],
        authenticationPolicy: { allow: {} },
      }],
      // Recommended value: true.
      enablePrometheus: true,
    },
  },

  // The CAS and Action Cache shared by the frontend, scheduler, workers and expander.
  // In a sharded deployment, point this at a bb_storage frontend, which shards with
  // Buildbarn's own algorithm (the expander has no sharding backend of its own).
  blobstore: {
    contentAddressableStorage: { grpc: { client: { address: 'frontend:8980' } } },
    actionCache: { grpc: { client: { address: 'frontend:8980' } } },
  },
}
