// bb_runner, chrooting into each action's input root. The expanded input root is a
// whole Linux userland, so the runner's own container needs none: commands run as
// `/usr/bin/env -- argv...` inside the chroot, with /usr/bin/env from the image.
//
// Chroot needs root (or CAP_SYS_CHROOT). Not provided in the chroot: /proc, /sys and
// /tmp (nothing mounts them; tools that read /proc/self/exe fail), and /dev beyond the
// worker's inputRootCharacterDeviceNodes.
local common = import 'common.libsonnet';

{
  global: common.global,
  buildDirectoryPath: '/worker/build',
  grpcServers: [{
    listenPaths: ['/worker/runner'],
    authenticationPolicy: { allow: {} },
  }],
  chrootIntoInputRoot: true,
}
