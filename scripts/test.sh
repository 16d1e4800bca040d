#!/usr/bin/env bash
# The project's test command (README "Quick start"). Installs, when missing, the Debian
# packages whose programs the integration tests start on loopback ports (this step needs
# root, as on CI) and BuildGrid's venv, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
command -v bazel >/dev/null || need+=(bazel-bootstrap)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  echo "Installing test dependencies: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# BuildGrid, the real scheduler of tests/buildgrid_e2e.rs: a venv under target/ (PyPI,
# Python >= 3.13), once.
scripts/buildgrid.sh install

cargo test "$@"
