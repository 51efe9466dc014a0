#!/usr/bin/env bash
# What `npm test` runs, in order, stopping at the first failure:
#   0. the Rust formatter and linter: `cargo fmt --check` (workspace, the
#      fuzz crate and the bench's latency generator) and `cargo clippy
#      --all-targets -- -D warnings`; the latency generator's own tests; the
#      fuzz crate's clippy and its smoke test (every fuzz target's checks on
#      a fixed corpus of seeds, mutations and seeded random bytes, stable
#      Rust, release: fuzz/tests/smoke.rs), then 30 s of coverage-guided
#      libFuzzer per target from those seeds (fuzz/guided.sh),
#   1. the Rust engine's tests (`cargo test --workspace`, debug profile: it
#      compiles much faster than the thin-LTO release profile; the release
#      addon used by the Node tests is built by `npm install` /
#      `npm run build:native`),
#   2. the generated boundary types are current (ts/engine/boundary.ts, from
#      the Rust types),
#   2b. the TypeScript compile (`tsc -p tsconfig.json`, strict; a type error
#      fails the run),
#   3. the lint (`npm run lint`: typescript-eslint with type information over
#      ts/, test/ and bench/, eslint.config.js; an error or warning fails the run),
#   4. the node:test suites in dist/test/ against the real CLI and addon.
#
# Node test files run one at a time (--test-concurrency=1): several suites
# start proxies, move 64 MiB or open 1,000 connections, and measure delays;
# on a 2-core machine running them side by side makes timings flaky.
# Extra arguments are passed to `node --test` (e.g. --test-name-pattern=drain).
set -euo pipefail

cd "$(dirname "$0")/.."

SECONDS=0
step() {
  printf '\n=== %s (t+%ss) ===\n' "$1" "$SECONDS"
}

if [[ ! -f native/meshpipe.linux-x64-gnu.node ]]; then
  step "native addon missing: building it (npm run build:native)"
  npm run build:native
fi

step "cargo fmt --check"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
(cd bench/latgen && cargo fmt --check)

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "bench/latgen: clippy and tests (the latency section's generator)"
cargo clippy -q --manifest-path bench/latgen/Cargo.toml --all-targets -- -D warnings
cargo test -q --manifest-path bench/latgen/Cargo.toml

step "fuzz/: clippy and the smoke test (the fuzz targets' checks on a fixed corpus)"
# Release for both: the checks run millions of inputs, and clippy then
# reuses the release build scripts (aws-lc-sys's C build) instead of
# building them again for the dev profile.
cargo clippy -q --release --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
cargo test -q --release --manifest-path fuzz/Cargo.toml

step "fuzz/: coverage-guided, 30 s per target (libFuzzer, fuzz/guided.sh)"
bash fuzz/guided.sh 30

step "cargo test --workspace"
cargo test --workspace

step "boundary types are current (ts/engine/boundary.ts)"
# Generated from the Rust types by the boundary_types example. (The addon's
# own native/native.d.ts is written by every `napi build`; .ci/run checks
# that the committed one matches the build.)
generated="$(mktemp)"
cargo run -q -p meshpipe-core --features ts --example boundary_types > "$generated"
if ! diff -u ts/engine/boundary.ts "$generated"; then
  echo "ts/engine/boundary.ts is stale: run 'npm run gen:types' and commit it" >&2
  exit 1
fi
rm -f "$generated"

step "tsc -p tsconfig.json"
rm -rf dist/test
npx tsc -p tsconfig.json

step "npm run lint"
npm run lint

step "node --test dist/test/"
# The test files, sorted for a stable order; fail loudly if there are none.
mapfile -t files < <(find dist/test -name '*.test.js' | sort)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "no test files in dist/test/ (did tsc emit them?)" >&2
  exit 1
fi
node --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec "$@" "${files[@]}"

step "all tests passed"
