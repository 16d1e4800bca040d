// bb_storage as the frontend: the only endpoint Bazel talks to. It serves the CAS and
// Action Cache from the two storage shards, and forwards Execute, WaitExecution and
// GetCapabilities to the expander, which passes them on to the scheduler.
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  grpcServers: [{
    listenAddresses: [':8980'],
    authenticationPolicy: { allow: {} },
  }],
  contentAddressableStorage: {
    backend: common.blobstore.contentAddressableStorage,
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
    findMissingAuthorizer: { allow: {} },
  },
  actionCache: {
    backend: common.blobstore.actionCache,
    getAuthorizer: { allow: {} },
    putAuthorizer: { allow: {} },
  },
  executeAuthorizer: { allow: {} },
  // Every instance name ('' is the prefix of all) goes to the expander instead of
  // straight to the scheduler. The expander serves Execution and Capabilities on the
  // same port and forwards the RequestMetadata onwards.
  schedulers: {
    '': {
      endpoint: {
        address: 'expander:8985',
        addMetadataJmespathExpression: common.forwardRequestMetadata,
      },
    },
  },
}
