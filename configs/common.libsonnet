// Settings shared by the processes of one deployment, in the style of Buildbarn's
// deployments: every process's configuration starts with
//   local common = import 'common.libsonnet';
// and takes what it needs from here, so that values that must agree (the message size
// limit, where the CAS is) are written once.
{
  // Largest protobuf message (Directory, Action, Command, ActionResult) that is
  // read from or written to the CAS. The expander refuses to write a Directory larger
  // than this, so it must not be larger than the workers' own
  // maximumMessageSizeBytes, or they fail to read the input roots it builds.
  //
  // Recommended value: 2 MiB, as in Buildbarn's reference deployments.
  maximumMessageSizeBytes: 2 * 1024 * 1024,

  // Process-wide settings: the diagnostics HTTP server with /-/healthy (always) and
  // /metrics (with enablePrometheus). Buildbarn's own common.libsonnet files can be
  // reused as they are: enablePprof and enableActiveSpans are accepted and ignored.
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

  // The CAS and Action Cache as the expander sees them. They must be the storage the
  // scheduler and workers use: the scheduler reads the rewritten Action from the CAS
  // and the workers read its Command and input root Directories from it.
  //
  // The expander has no `sharding` backend. In a sharded deployment it talks to a
  // bb_storage frontend, which shards with Buildbarn's own algorithm and so places
  // every blob exactly where the scheduler and workers look for it.
  blobstore: {
    contentAddressableStorage: { grpc: { client: { address: 'frontend:8980' } } },
    actionCache: { grpc: { client: { address: 'frontend:8980' } } },
  },

  // Forwards the client's RequestMetadata (tool invocation and correlated invocations
  // IDs), which bb_scheduler turns into invocation keys for fair scheduling. Used on
  // every hop between the frontend and the scheduler.
  forwardRequestMetadata: {
    expression: |||
      {
        "build.bazel.remote.execution.v2.requestmetadata-bin": incomingGRPCMetadata."build.bazel.remote.execution.v2.requestmetadata-bin"
      }
    |||,
  },
}
