#!/usr/bin/env bash
# Builds the fuzz targets once and runs each for a few seconds from the seed corpora
# (CI). Skips, saying why, when no nightly toolchain or cargo-fuzz is available.
# Longer runs: cargo +nightly fuzz run <target> fuzz/corpus/<target> -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-5}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  if [[ ${FUZZ_INSTALL:-0} == 1 ]]; then
    cargo install --locked cargo-fuzz
  else
    echo "fuzz: skipped, cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
  fi
fi
# FUZZ_TARGET_DIR (default fuzz/target) may point outside the clone, so that CI on the
# same machine builds incrementally: a cold sanitizer build costs about 10 CPU-minutes.
target_dir=(--target-dir "${FUZZ_TARGET_DIR:-fuzz/target}")
start=$SECONDS
cargo run -q --example fuzz_seeds -- fuzz/corpus
cargo +nightly fuzz build -O "${target_dir[@]}"
echo "fuzz: built in $((SECONDS - start)) s"
for target in $(cargo +nightly fuzz list); do
  cargo +nightly fuzz run -O "${target_dir[@]}" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 2>&1 | tail -n 2
done
echo "fuzz: done in $((SECONDS - start)) s"
