#!/usr/bin/env bash
# Install what the build needs when it is missing: a C/C++ toolchain and libclang (for the
# rocksdb crate's bindgen). Debian/Ubuntu via apt-get; elsewhere, say what to install.
#
# libclang is looked for the way clang-sys looks for it: a file named `libclang.so` or
# `libclang-<version>.so[.N]` (never `libclang-cpp`, the C++ interface LLVM ships beside it,
# which bindgen cannot load), in LIBCLANG_PATH, the linker cache or LLVM's own lib folders.
#
# HEARTH_LIBCLANG_DIRS overrides the folders searched after LIBCLANG_PATH and the linker cache:
# space-separated, globs allowed (default below). ctl/tests/install_deps.rs uses it, with stub
# apt-get, ldconfig and id on PATH, to run this script against a made-up system.
set -euo pipefail

LIBCLANG_DIRS=${HEARTH_LIBCLANG_DIRS-"/usr/lib/llvm-*/lib /usr/lib/* /usr/lib64"}

# True when NAME (a file's base name) is one clang-sys would load.
is_libclang() {
  [[ "$1" =~ ^libclang(-[0-9][0-9.]*)?\.so(\.[0-9.]+)?$ ]]
}

have_libclang() {
  local f name
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    for f in "$LIBCLANG_PATH"/libclang*.so*; do
      [ -e "$f" ] && is_libclang "$(basename "$f")" && return 0
    done
  fi
  while read -r name; do
    is_libclang "$name" && return 0
  done < <(ldconfig -p 2>/dev/null | awk '{print $1}')
  local dir
  for dir in $LIBCLANG_DIRS; do
    for f in "$dir"/libclang*.so*; do
      [ -e "$f" ] && is_libclang "$(basename "$f")" && return 0
    done
  done
  return 1
}

missing=()
have_libclang || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v curl >/dev/null 2>&1 || missing+=(curl)

if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "installing: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install: ${missing[*]} (libclang is needed by the rocksdb crate)" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs (stable, 1.85 or newer)" >&2
  exit 1
fi
