// Reference configuration of bb-container-expander in router mode.
//
// bb_scheduler calls the expander through its remote action router hook:
//   actionRouter: {
//     remote: {
//       grpcClient: { address: 'expander:8985' },
//       initialSizeClassAnalyzer: {
//         defaultExecutionTimeout: '1800s',
//         maximumExecutionTimeout: '7200s',
//       },
//     },
//   },
// For every Execute it sends buildbarn.remoteactionrouter.ActionRouter/RouteAction
// with the client's Action; the expander answers with the rewritten Action (or the
// same Action when it names no image) and the invocation keys (correlated
// invocations ID, then tool invocation ID, as Buildbarn's simple router). The
// scheduler keeps the client's action digest, so the worker stores the result under
// it: no result mapping and no write-back are needed, and the frontend talks to the
// scheduler directly.
//
// The differences from proxy mode (bb_container_expander.jsonnet, where every field
// is documented) are:
// - `scheduler` is not set: only ActionRouter and Health are served (and the Remote
//   Asset Fetch service, as serveRemoteAsset says).
// - containerImages.writeBackResults and keepaliveInterval have no effect; the
//   platformPropertyRules, imageEnvironment, checkProgramExists and
//   requiredDirectories apply as in proxy mode (a refused action fails RouteAction,
//   which bb_scheduler reports to the client).
// - the CAS must be the scheduler's: the rewritten Command and Directories are read
//   from it by the workers. The Action itself travels in the RouteAction reply.
local common = import 'common.libsonnet';
local proxy = import 'bb_container_expander.jsonnet';

{
  global: common.global,

  // The address bb_scheduler's actionRouter.remote.grpcClient points at. The
  // scheduler waits for RouteAction before it queues an action, so a cold image
  // (minutes to pull) holds that action in the scheduler; warm the caches with
  // `bb-container-expander expand --config FILE IMAGE...` when images change.
  grpcServers: [{
    listenAddresses: [':8985'],
    authenticationPolicy: { allow: {} },
  }],

  maximumMessageSizeBytes: common.maximumMessageSizeBytes,

  blobstore: proxy.blobstore,

  // Remote Asset FetchDirectory of docker:// URIs, as in proxy mode.
  serveRemoteAsset: proxy.serveRemoteAsset,

  // The same registries and expansion settings as in proxy mode.
  containerImages: proxy.containerImages,
}
