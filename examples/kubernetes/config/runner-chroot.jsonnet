// bb_runner for worker-chroot.jsonnet: chroots into each action's input root, which
// holds the image's whole userland. It runs as root (chroot needs CAP_SYS_CHROOT) in
// the worker's pod and sees the worker's FUSE mount through the shared volume.
local common = import 'common.libsonnet';

{
  // The worker in the same pod serves diagnostics on :9980 already; a pod's
  // containers share their ports.
  global: common.global {
    diagnosticsHttpServer+: {
      httpServers: [{
        listenAddresses: [':9981'],
        authenticationPolicy: { allow: {} },
      }],
    },
  },
  buildDirectoryPath: '/worker/build',
  grpcServers: [{
    listenPaths: ['/worker/runner'],
    authenticationPolicy: { allow: {} },
  }],
  chrootIntoInputRoot: true,
}
