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
  // Links bb_browser shows beside an action's RequestMetadata, computed from it by
  // this JMESPath expression: none here (a literal empty object). Required: bb_browser
  // does not start without an expression.
  requestMetadataLinksJmespathExpression: { expression: '`{}`' },
}
