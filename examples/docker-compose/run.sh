#!/usr/bin/env bash
# Starts the example: `docker compose up` with any arguments given, e.g. for router
# mode:
#   ./run.sh -f docker-compose.yml -f docker-compose.router.yml
#
# Before it starts anything it clears what a previous run may have left behind:
# - the worker's FUSE mount on volumes/worker/build. A worker that was killed leaves
#   it mounted on the host (the mount propagates out of its container); every access
#   to it then fails with "Transport endpoint is not connected", and the new worker
#   cannot mount over it.
# - the worker's and the runner installer's state (volumes/worker, volumes/bb): the
#   worker's cache is not persistent anyway, and a stale volumes/bb/installed could
#   let the runner start an old bb_runner before the installer has replaced it.
# The storage shards and the registry keep their data (volumes/storage-*,
# volumes/registry). On exit, the worker's FUSE mount is unmounted again.
#
# The worker runs as root, so its files and mount belong to root: run this as root
# or with sudo available.
set -euo pipefail
cd "$(dirname "$0")"

sudo=()
if ((EUID != 0)); then
  sudo=(sudo)
fi

fuse_mount="$PWD/volumes/worker/build"

is_mounted() {
  # Field 5 of mountinfo is the mount point. A dead FUSE mount cannot be stat'ed, so
  # `mountpoint` is not reliable here.
  awk -v path="$1" '$5 == path { found = 1 } END { exit !found }' /proc/self/mountinfo 2>/dev/null
}

unmount_fuse() {
  # Mounts can be stacked on one directory: unmount until none is left.
  local attempts=0
  while is_mounted "$fuse_mount"; do
    if ((attempts++ >= 10)); then
      echo "run.sh: $fuse_mount is still mounted; is the worker still running?" \
        "Stop it (docker compose down) and unmount it by hand." >&2
      return 1
    fi
    "${sudo[@]}" fusermount -u "$fuse_mount" 2>/dev/null ||
      "${sudo[@]}" umount "$fuse_mount" 2>/dev/null ||
      "${sudo[@]}" umount -l "$fuse_mount" 2>/dev/null || true
    sleep 1
  done
}

setup() {
  unmount_fuse
  # --one-file-system: never descend into a mount that is still there.
  "${sudo[@]}" rm -rf --one-file-system volumes/worker volumes/bb
  mkdir -p volumes/bb volumes/registry volumes/worker/build volumes/worker/cas
  for shard in 0 1; do
    mkdir -p "volumes/storage-ac-$shard/persistent_state" "volumes/storage-cas-$shard/persistent_state"
  done
  chmod 0700 volumes/storage-*/persistent_state
}

cleanup() {
  local status=$?
  unmount_fuse || true
  exit "$status"
}

setup
trap cleanup EXIT

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
if (($# == 0)); then
  set -- -f docker-compose.yml
fi
"${compose[@]}" "$@" up --build
