#!/usr/bin/env bash
# Coverage-guided fuzzing of every fuzz target with libFuzzer, on stable
# Rust: the targets are built with LLVM's SanitizerCoverage instrumentation
# (the flags cargo-fuzz passes, minus the address sanitizer, which needs
# nightly; the checks are safe Rust, where it finds little) plus debug
# assertions and overflow checks, then each runs for SECONDS (default 30)
# from the smoke test's seeds and dictionary (tests/smoke.rs,
# `seeds_export_for_libfuzzer`). A crash, a panic, a timeout or an
# out-of-memory fails the run; libFuzzer saves the input under
# artifacts/NAME/, and `fuzz/target-guided/<triple>/release/NAME FILE` replays
# it. The corpus grows under corpus/NAME/ (not committed) and is reused by
# the next run.
#
#   bash fuzz/guided.sh [SECONDS]
#
# CI runs it from test/run-all.sh; `cargo +nightly fuzz run NAME` (with
# cargo-fuzz) remains the way to fuzz for hours, with the address sanitizer.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-30}"
if [[ ! "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  # 0 would be libFuzzer's "no limit".
  echo "usage: bash fuzz/guided.sh [SECONDS]   (a whole number of seconds per target, at least 1; got '$seconds')" >&2
  exit 2
fi
targets=(classify transport_header http_headers identity addr h2_settings)
triple="$(rustc -vV | sed -n 's/^host: //p')"
# Its own target directory (other flags than the smoke test's build), for
# the instrumented build only: the seed export below reuses fuzz/target.
guided="$PWD/target-guided"

# An explicit --target keeps RUSTFLAGS off build scripts and proc macros,
# which must not be instrumented (as cargo-fuzz does).
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks" \
  cargo build -q --release --target "$triple" --target-dir "$guided" --bins

seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
if ! MESHPIPE_FUZZ_SEEDS="$seeds" cargo test -q --release --test smoke -- --exact seeds_export_for_libfuzzer > "$seeds/export.log" 2>&1; then
  echo "fuzz: exporting the seeds failed:" >&2
  cat "$seeds/export.log" >&2
  exit 1
fi

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  max_len=4096
  # Detection buffers up to DETECT_BUFFER_CAP (16 KiB); the oversized
  # ClientHello seed is larger, to reach the cap.
  [[ "$t" == classify ]] && max_len=20000
  log="$seeds/$t.log"
  status=0
  "$guided/$triple/release/$t" "corpus/$t" "$seeds/$t" \
    -dict="$seeds/$t.dict" -max_total_time="$seconds" -max_len="$max_len" \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" \
    -print_final_stats=1 > "$log" 2>&1 || status=$?
  if [[ "$status" -ne 0 ]]; then
    echo "fuzz/$t: libFuzzer failed (exit $status); the input is under fuzz/artifacts/$t/:" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  added="$(sed -n 's/^stat::new_units_added: *//p' "$log")"
  echo "fuzz/$t: ${seconds}s coverage-guided, ${runs} inputs, ${added} new corpus units"
done
