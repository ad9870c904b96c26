#!/bin/sh
# Installs the C library built by `cargo build --release -p shm-snapshot-c`:
#
#   shm-snapshot-c/install.sh PREFIX [BUILD_DIR]
#
# copies libshm_snapshot.so and libshm_snapshot.a from BUILD_DIR (default:
# target/release of this repository) to PREFIX/lib, shm_snapshot.h to
# PREFIX/include, and writes PREFIX/lib/pkgconfig/shm_snapshot.pc.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
    echo "usage: $0 PREFIX [BUILD_DIR]" >&2
    exit 2
fi
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
build=${2:-$here/../target/release}
for lib in libshm_snapshot.so libshm_snapshot.a; do
    if [ ! -f "$build/$lib" ]; then
        echo "$0: $build/$lib is missing: run cargo build --release -p shm-snapshot-c first" >&2
        exit 1
    fi
done
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -n 1)
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0644 "$build/libshm_snapshot.a" "$prefix/lib/"
install -m 0755 "$build/libshm_snapshot.so" "$prefix/lib/"
install -m 0644 "$here/include/shm_snapshot.h" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$here/shm_snapshot.pc.in" >"$prefix/lib/pkgconfig/shm_snapshot.pc"
echo "installed shm_snapshot $version in $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
