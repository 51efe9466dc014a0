#!/usr/bin/env bash
# The release build of the native addon: one stripped `.node` per platform
# package, placed into npm/<platform>/ by `napi artifacts` (README: "Install",
# "Releasing"). `npm run build:release` builds all four targets;
# `npm run build:release -- TARGET...` builds some (then only those are placed).
#
#   x86_64-unknown-linux-gnu.2.28    -> npm/linux-x64-gnu/meshpipe.linux-x64-gnu.node
#   aarch64-unknown-linux-gnu.2.28   -> npm/linux-arm64-gnu/meshpipe.linux-arm64-gnu.node
#   x86_64-unknown-linux-musl        -> npm/linux-x64-musl/meshpipe.linux-x64-musl.node
#   aarch64-unknown-linux-musl       -> npm/linux-arm64-musl/meshpipe.linux-arm64-musl.node
#
# Every target builds with cargo-zigbuild (`napi build -x`): zig is the C
# compiler (aws-lc-sys compiles C) and the linker for all four, so one x86_64
# Linux machine builds them all without a sysroot per target. The `.2.28`
# suffix links the glibc builds against glibc 2.28's symbols, the oldest glibc
# Node.js 20's own Linux binaries run on; a build on the host would need the
# host's glibc (bookworm: 2.36) at run time. napi adds
# `-C target-feature=-crt-static` for the musl targets (a Node addon is a
# shared library that must share the process's libc).
#
# Prerequisites (checked below, each with its install command):
#   rustup target add x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu \
#     x86_64-unknown-linux-musl aarch64-unknown-linux-musl
#   pip install ziglang==0.17.0 cargo-zigbuild==0.24.0   # zig and cargo-zigbuild, both from PyPI
#
# The stripping is the release profile's (`strip = "symbols"`, Cargo.toml).
# Afterwards the script prints each file with its size and the newest glibc
# symbol version it needs (readelf), and fails when a file still has a symbol
# table, needs a glibc newer than 2.28, or fails the load check below.
set -euo pipefail

cd "$(dirname "$0")/.."

ALL_TARGETS=(x86_64-unknown-linux-gnu.2.28 aarch64-unknown-linux-gnu.2.28 x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

missing=0
installed_targets="$(rustup target list --installed)"
for t in "${TARGETS[@]}"; do
  triple="${t%%.*}"
  if ! grep -qx "$triple" <<<"$installed_targets"; then
    echo "missing Rust target $triple: rustup target add $triple" >&2
    missing=1
  fi
done
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  echo "missing cargo-zigbuild: pip install cargo-zigbuild==0.24.0 (or cargo install cargo-zigbuild)" >&2
  missing=1
fi
if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
  echo "missing zig: pip install ziglang==0.17.0 (cargo-zigbuild finds it through python3 -m ziglang)" >&2
  missing=1
fi
[[ $missing -eq 0 ]] || exit 1

rm -rf artifacts
mkdir -p artifacts
for t in "${TARGETS[@]}"; do
  echo "=== napi build -x --target $t"
  npx napi build --platform --release -x --target "$t" \
    --manifest-path crates/meshpipe-node/Cargo.toml --output-dir artifacts --no-js --dts native.d.ts
done

# napi artifacts places the file of every configured target and refuses a
# partial set: a subset build gets a config that lists just its targets.
config=()
if [[ $# -gt 0 ]]; then
  node -e '
    const targets = process.argv.slice(1).map((t) => t.split(".")[0]);
    process.stdout.write(JSON.stringify({ binaryName: "meshpipe", targets }));
  ' "${TARGETS[@]}" > artifacts/napi-subset.json
  config=(-c artifacts/napi-subset.json)
fi
npx napi artifacts "${config[@]}" --output-dir artifacts --npm-dir npm
# napi artifacts also copies each file into the package root (for its own
# generated loader, which meshpipe does not use): not part of any package.
rm -f meshpipe.*.node

# The load check: a C program for the target that defines the N-API functions
# as stubs (Node provides them) and dlopen()s the addon with RTLD_NOW, so every
# other symbol must resolve against the target's C library. Run for the
# targets this machine can run: x86_64 glibc (gcc), x86_64 musl (musl-gcc, from
# Debian's musl-tools), arm64 glibc (gcc-aarch64-linux-gnu and qemu-user). The
# arm64 musl addon is only inspected (no arm64 musl loader in Debian).
load_check() {
  local file="$1" cc="$2" runner="$3" dir stubs
  if ! command -v "$cc" >/dev/null 2>&1 || { [[ -n "$runner" ]] && ! command -v "${runner%% *}" >/dev/null 2>&1; }; then
    echo "  load check skipped: $cc${runner:+ or ${runner%% *}} not installed"
    return 0
  fi
  dir="$(mktemp -d)"
  stubs="$(readelf --wide --dyn-syms "$file" | awk '$7 == "UND" { sub(/@.*/, "", $8); print $8 }' | grep '^napi_' | sort -u | sed 's/.*/int &(void) { return 1; }/')"
  cat > "$dir/load.c" <<C
#include <dlfcn.h>
#include <stdio.h>
$stubs
int main(int argc, char **argv) {
  void *h = dlopen(argv[1], RTLD_NOW);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  return dlsym(h, "napi_register_module_v1") ? 0 : 2;
}
C
  if "$cc" -rdynamic -o "$dir/load" "$dir/load.c" -ldl && $runner "$dir/load" "$(realpath "$file")"; then
    echo "  load check: dlopen(RTLD_NOW) with $cc${runner:+ under ${runner%% *}}: ok"
  else
    echo "  $file does not load for its target (dlopen above)" >&2
    status=1
  fi
  rm -rf "$dir"
}

echo "=== the platform packages"
status=0
for t in "${TARGETS[@]}"; do
  triple="${t%%.*}"
  case "$triple" in
    x86_64-unknown-linux-gnu) dir=linux-x64-gnu ;;
    aarch64-unknown-linux-gnu) dir=linux-arm64-gnu ;;
    x86_64-unknown-linux-musl) dir=linux-x64-musl ;;
    aarch64-unknown-linux-musl) dir=linux-arm64-musl ;;
    *) echo "unknown target $triple" >&2; exit 1 ;;
  esac
  file="npm/$dir/meshpipe.$dir.node"
  size="$(stat -c %s "$file")"
  glibc="$(readelf --wide --dyn-syms "$file" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)"
  machine="$(readelf --file-header "$file" | sed -n 's/^ *Machine: *//p')"
  printf '%-50s %10s bytes  %-40s %s\n' "$file" "$size" "$machine" "${glibc:-no glibc symbols}"
  if readelf --wide --section-headers "$file" | grep -q '\.symtab'; then
    echo "  $file is not stripped (it has a .symtab)" >&2
    status=1
  fi
  if [[ -n "$glibc" && "$(printf '%s\nGLIBC_2.28\n' "$glibc" | sort -V | tail -n 1)" != "GLIBC_2.28" ]]; then
    echo "  $file needs $glibc, newer than the 2.28 baseline" >&2
    status=1
  fi
  case "$dir" in
    linux-x64-gnu) load_check "$file" gcc "" ;;
    linux-x64-musl) load_check "$file" musl-gcc "" ;;
    linux-arm64-gnu) load_check "$file" aarch64-linux-gnu-gcc "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    linux-arm64-musl) echo "  load check: none (inspected only)" ;;
  esac
done
exit $status
