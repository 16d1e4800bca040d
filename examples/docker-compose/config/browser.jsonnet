// bb_browser on http://localhost:7984: shows actions, their results, and the
// expander's own cache entries (fake actions whose command starts with
// bb-container-expander).
local common = import 'common.libsonnet';

{
  global: common.global,
  maximumMessageSizeBytes: common.maximumMessageSizeBytes,
  blobstore: common.blobstore,
  authorizer: { allow: {} },
  httpServers: [{
    listenAddresses: [':7984'],
    authenticationPolicy: { allow: {} },
  }],
}
