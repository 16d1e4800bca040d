#!/usr/bin/env bash
# Creates the directories the services keep their state in, then runs
# `docker compose up` with any arguments given, e.g. for router mode:
#   ./run.sh -f docker-compose.yml -f docker-compose.router.yml
# On exit, a FUSE mount the worker left behind is unmounted.
set -euo pipefail
cd "$(dirname "$0")"

mkdir -p volumes/bb volumes/registry volumes/worker
for shard in 0 1; do
  mkdir -p "volumes/storage-ac-$shard/persistent_state" "volumes/storage-cas-$shard/persistent_state"
done
mkdir -p volumes/worker/build volumes/worker/cas
chmod 0700 volumes/storage-*/persistent_state

cleanup() {
  if mountpoint -q volumes/worker/build 2>/dev/null; then
    fusermount -u volumes/worker/build 2>/dev/null || umount volumes/worker/build || true
  fi
}
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
