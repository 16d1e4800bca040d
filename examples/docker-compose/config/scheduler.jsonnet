// bb_scheduler. In proxy mode its clients are the expander (port 8982), not the
// frontend; the workers synchronize on port 8983. It reads each rewritten Action from
// the CAS the expander uploaded it to.
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  browserUrl: common.browserUrl,
  contentAddressableStorage: common.blobstore.contentAddressableStorage,
  adminHttpServers: [{
    listenAddresses: [':7982'],
    authenticationPolicy: { allow: {} },
  }],
  clientGrpcServers: [{
    listenAddresses: [':8982'],
    authenticationPolicy: { allow: {} },
  }],
  workerGrpcServers: [{
    listenAddresses: [':8983'],
    authenticationPolicy: { allow: {} },
  }],
  buildQueueStateGrpcServers: [{
    listenAddresses: [':8984'],
    authenticationPolicy: { allow: {} },
  }],
  executeAuthorizer: { allow: {} },
  modifyDrainsAuthorizer: { allow: {} },
  killOperationsAuthorizer: { allow: {} },
  synchronizeAuthorizer: { allow: {} },
  // Actions are queued by their own platform, which for rewritten actions is
  // common.chrootPlatform. Builds are scheduled fairly by their invocation IDs, which
  // arrive in the RequestMetadata the frontend and the expander forward.
  actionRouter: {
    simple: {
      platformKeyExtractor: { action: {} },
      invocationKeyExtractors: [
        { correlatedInvocationsId: {} },
        { toolInvocationId: {} },
      ],
      initialSizeClassAnalyzer: {
        defaultExecutionTimeout: '1800s',
        maximumExecutionTimeout: '7200s',
      },
    },
  },
  // Until the worker has connected after a restart, Execute answers UNAVAILABLE
  // (which Bazel retries) rather than "No workers exist".
  platformQueueWithNoWorkersTimeout: '900s',
}
