#!/usr/bin/env bash
# Installs libkeysmith for C and C++ under a prefix:
#   PREFIX/include/keysmith.h
#   PREFIX/lib/libkeysmith.so, PREFIX/lib/libkeysmith.a
#   PREFIX/lib/pkgconfig/keysmith.pc, keysmith-static.pc
#
# Usage: ffi/install.sh [PREFIX]        (default /usr/local)
# Builds the release library first, unless KEYSMITH_LIB_DIR names a
# directory that already holds libkeysmith.so and libkeysmith.a (e.g.
# target/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:-/usr/local}"
case "$prefix" in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac

lib_dir="${KEYSMITH_LIB_DIR:-}"
if [ -z "$lib_dir" ]; then
    (cd "$here/.." && cargo build --release -p keysmith-ffi)
    lib_dir="${CARGO_TARGET_DIR:-$here/../target}/release"
fi
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml")"

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 0644 "$here/include/keysmith.h" "$prefix/include/"
install -m 0755 "$lib_dir/libkeysmith.so" "$prefix/lib/"
install -m 0644 "$lib_dir/libkeysmith.a" "$prefix/lib/"
for pc in keysmith keysmith-static; do
    sed -e "s|@prefix@|$prefix|g" -e "s|@version@|$version|g" "$here/$pc.pc.in" \
        >"$prefix/lib/pkgconfig/$pc.pc"
done
echo "installed libkeysmith $version under $prefix"
