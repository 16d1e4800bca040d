#!/usr/bin/env bash
# BuildGrid (a REAPI server from PyPI) as the real scheduler of tests/buildgrid_e2e.rs:
# its scheduler keeps its state in a private PostgreSQL cluster, and the chroot workers
# of scripts/buildgrid-worker.py take its leases. Everything listens on 127.0.0.1 only.
#
#   scripts/buildgrid.sh install     Python venv with buildgrid $BUILDGRID_VERSION (needs
#                                    Python >= 3.13 and PyPI), and Debian's postgresql
#                                    when it is missing (as root). Idempotent.
#   scripts/buildgrid.sh start DIR   PostgreSQL, BuildGrid (instance "main" only) and the
#                                    workers, on free ports, with state and logs in DIR
#                                    (created). Prints and writes DIR/address
#                                    (127.0.0.1:PORT of BuildGrid).
#   scripts/buildgrid.sh stop DIR    Stops what `start DIR` started. Safe to repeat.
#   scripts/buildgrid.sh venv        Prints the venv's directory.
#
# Environment:
#   BUILDGRID_VENV     the venv (default: ${CARGO_TARGET_DIR:-target}/buildgrid-venv, so
#                      that CI caches it with the build)
#   BUILDGRID_PYTHON   the Python used to create it (default: the first Python >= 3.13
#                      among python3.13, python3.14, pyenv's versions, python3)
#   BUILDGRID_WORKERS  number of workers `start` runs (default 1)
#   BUILDGRID_OWNER_PID  when set, `start` leaves a watchdog that runs `stop DIR` once
#                      that process is gone (a test killed before it could clean up)
#
# The workers advertise OSFamily=linux, ISA=<machine, x86-64> and runner=chroot. `runner`
# is a match key, so only chroot workers receive the actions bb-container-expander
# rewrote (its `addPlatformProperties`). `container-image` is deliberately not a known
# key: an action that reaches BuildGrid still naming an image is refused
# (FAILED_PRECONDITION, "Unregistered platform property"), never run on a worker's own
# userland.
#
# PostgreSQL refuses to run as root: as root (CI), it runs as the Debian user
# `postgres`. Every process started leads a process group of its own; stop signals the
# groups, then stops PostgreSQL with pg_ctl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILDGRID_VERSION=0.9.1
INSTANCE=main
VENV="${BUILDGRID_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/buildgrid-venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
STAMP="$VENV/.installed-buildgrid-$BUILDGRID_VERSION"

die() {
  echo "buildgrid.sh: $*" >&2
  exit 1
}

postgres_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$dir" && -x "$dir/initdb" ]] || return 1
  echo "$dir"
}

python_at_least_3_13() {
  "$1" -c 'import sys; raise SystemExit(sys.version_info < (3, 13))' 2>/dev/null
}

find_python() {
  local candidate pyenv_root
  pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in "${BUILDGRID_PYTHON:-}" python3.13 python3.14 \
    "$pyenv_root"/versions/3.13*/bin/python3 "$pyenv_root"/versions/3.14*/bin/python3 python3; do
    [[ -n "$candidate" ]] || continue
    candidate="$(command -v "$candidate" 2>/dev/null)" || continue
    if python_at_least_3_13 "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  die "buildgrid $BUILDGRID_VERSION needs Python >= 3.13; none found (set BUILDGRID_PYTHON)"
}

cmd_install() {
  if ! postgres_bin >/dev/null; then
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL is missing: apt-get install postgresql (as root)"
    echo "Installing the Debian package postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
  fi
  if [[ -f "$STAMP" && -x "$VENV/bin/bgd" ]]; then
    echo "buildgrid $BUILDGRID_VERSION: $VENV"
    return
  fi
  local python
  python="$(find_python)"
  echo "Installing buildgrid $BUILDGRID_VERSION into $VENV with $python"
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "buildgrid==$BUILDGRID_VERSION"
  touch "$STAMP"
  echo "buildgrid $BUILDGRID_VERSION: $VENV"
}

# A TCP port of 127.0.0.1 that nothing listened on a moment ago.
free_port() {
  "$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Runs a PostgreSQL server program as the user that owns the cluster.
as_postgres() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# setsid: the process leads a new process group, which stop signals as a whole.
spawn() { # name log command...
  local name="$1" log="$2"
  shift 2
  setsid "$@" </dev/null >"$log" 2>&1 &
  echo "$!" >"$DIR/$name.pid"
}

start_postgres() {
  local pgbin="$1" data="$DIR/postgres" attempt port
  mkdir -p "$data"
  : >"$DIR/postgres.log"
  if [[ "$(id -u)" == 0 ]]; then
    # The cluster and its log belong to `postgres`, which must be able to reach them.
    chmod 755 "$DIR"
    chown postgres: "$data" "$DIR/postgres.log"
  fi
  as_postgres "$pgbin/initdb" -D "$data" -U bgd --auth=trust -E UTF8 --no-sync \
    >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    die "initdb failed"
  }
  # A port found free may be taken before PostgreSQL binds it: try a few.
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    if as_postgres "$pgbin/pg_ctl" -D "$data" -l "$DIR/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null; then
      echo "$port" >"$DIR/postgres.port"
      return
    fi
    grep -q "could not bind" "$DIR/postgres.log" || break
  done
  tail -n 20 "$DIR/postgres.log" >&2
  die "PostgreSQL did not start"
}

write_config() { # port database-url
  cat >"$DIR/bgd.yml" <<EOF
description: BuildGrid for the tests of bb-container-expander, on loopback only.
server:
  - !channel
    address: "127.0.0.1:$1"
    insecure-mode: true
grpc-server-options:
  grpc.so_reuseport: 0
  grpc.max_receive_message_length: 67108864
  grpc.max_send_message_length: 67108864
authorization:
  method: none
monitoring:
  enabled: false
connections:
  - !sql-connection &database
    connection-string: $2
    pool-size: 5
    max-overflow: 10
storages:
  - !lru-storage &blobs
    size: 2G
caches:
  - !lru-action-cache &results
    storage: *blobs
    max-cached-refs: 10000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *database
    storage: *blobs
    action-cache: *results
    # The worker does not talk to BuildGrid while it runs an action: keep its session
    # for as long as an action may run.
    bot-session-keepalive-timeout: 600
    property-set: !dynamic-property-set
      match-property-keys: [runner]
instances:
  - name: $INSTANCE
    services:
      - !execution
        scheduler: *scheduler
      - !action-cache
        cache: *results
      - !cas
        storage: *blobs
      - !bytestream
        storage: *blobs
EOF
}

start_buildgrid() {
  local url="$1" attempt port pid i
  "$VENV/bin/bgd" migrate apply "$url" >"$DIR/migrate.log" 2>&1 || {
    tail -n 20 "$DIR/migrate.log" >&2
    die "bgd migrate apply failed"
  }
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    write_config "$port" "$url"
    spawn bgd "$DIR/bgd.log" "$VENV/bin/bgd" server start "$DIR/bgd.yml"
    pid="$(cat "$DIR/bgd.pid")"
    for ((i = 0; i < 600; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      if listening "$port"; then
        echo "127.0.0.1:$port" >"$DIR/address"
        return
      fi
      sleep 0.1
    done
    stop_group bgd
    grep -qi "address already in use\|failed to bind\|Failed to add port" "$DIR/bgd.log" || break
  done
  tail -n 30 "$DIR/bgd.log" >&2
  die "BuildGrid did not start"
}

cmd_start() {
  [[ $# == 1 ]] || die "usage: $0 start DIR"
  DIR="$(mkdir -p "$1" && cd "$1" && pwd)"
  [[ -f "$STAMP" ]] || die "buildgrid is not installed in $VENV: run $0 install"
  local pgbin workers="${BUILDGRID_WORKERS:-1}" url i
  pgbin="$(postgres_bin)" || die "PostgreSQL is missing: run $0 install (as root)"
  # From here on, a failure stops what was started.
  STARTED=no
  trap '[[ $STARTED == yes ]] || cmd_stop "$DIR" >/dev/null 2>&1' EXIT
  start_postgres "$pgbin"
  url="postgresql://bgd@127.0.0.1:$(cat "$DIR/postgres.port")/bgd"
  "$pgbin/createdb" -h 127.0.0.1 -p "$(cat "$DIR/postgres.port")" -U bgd bgd
  start_buildgrid "$url"
  for ((i = 1; i <= workers; i++)); do
    spawn "worker-$i" "$DIR/worker-$i.log" "$VENV/bin/python" "$ROOT/scripts/buildgrid-worker.py" \
      --server "$(cat "$DIR/address")" --instance "$INSTANCE" \
      --work-directory "$DIR/worker-$i" --record "$DIR/actions.jsonl" \
      --property OSFamily=linux --property "ISA=$(uname -m | tr _ -)" --property runner=chroot
  done
  if [[ -n "${BUILDGRID_OWNER_PID:-}" ]]; then
    spawn watchdog "$DIR/watchdog.log" bash -c \
      'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
      watchdog "$BUILDGRID_OWNER_PID" "$ROOT/scripts/buildgrid.sh" "$DIR"
  fi
  STARTED=yes
  echo "BuildGrid $BUILDGRID_VERSION: grpc://$(cat "$DIR/address") instance $INSTANCE," \
    "$workers chroot worker(s), PostgreSQL on 127.0.0.1:$(cat "$DIR/postgres.port"), logs in $DIR"
}

# Signals the process group of DIR/NAME.pid: TERM, then KILL after 5 s.
stop_group() {
  local file="$DIR/$1.pid" pid i
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  rm -f "$file"
  if kill -TERM -- "-$pid" 2>/dev/null; then
    for ((i = 0; i < 50; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || return 0
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
}

cmd_stop() {
  [[ $# == 1 ]] || die "usage: $0 stop DIR"
  [[ -d "$1" ]] || return 0
  DIR="$(cd "$1" && pwd)"
  local file pgbin
  for file in "$DIR"/worker-*.pid; do
    [[ -e "$file" ]] && stop_group "$(basename "$file" .pid)"
  done
  stop_group bgd
  if [[ -f "$DIR/postgres/postmaster.pid" ]] && pgbin="$(postgres_bin)"; then
    as_postgres "$pgbin/pg_ctl" -D "$DIR/postgres" -m immediate -w -t 30 stop >/dev/null || true
  fi
  # Last: this may be the watchdog itself.
  stop_group watchdog
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start "${@:2}" ;;
  stop) cmd_stop "${@:2}" ;;
  venv) echo "$VENV" ;;
  *) die "usage: $0 install | start DIR | stop DIR | venv" ;;
esac
