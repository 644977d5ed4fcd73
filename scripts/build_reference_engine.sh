#!/usr/bin/env bash
# Build the C++ reference engine (engines/reference) into engines/build/tickcall-reference-engine.
#
#   bash scripts/build_reference_engine.sh          # installs libzmq3-dev + libmsgpack-cxx-dev if missing
#   bash scripts/build_reference_engine.sh --print  # only print the binary's path (build if needed)
#
# Debian/Ubuntu packages: g++ (build-essential), libzmq3-dev (libzmq + headers), libmsgpack-cxx-dev
# (msgpack-c's C++ headers). They are installed with apt-get when missing (as root, or with sudo).
# Rebuilds only when a source file is newer than the binary. Prints the binary's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
src=engines/reference
out=engines/build/tickcall-reference-engine
print_only=0
[[ "${1:-}" == "--print" ]] && print_only=1

log() { [[ $print_only == 1 ]] && echo "$@" >&2 || echo "$@"; }

need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
[[ -f /usr/include/zmq.h ]] || need+=(libzmq3-dev)
[[ -f /usr/include/msgpack.hpp ]] || need+=(libmsgpack-cxx-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if (( ${#need[@]} )); then
    sudo=""
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "missing ${need[*]} and not root: install them" >&2; exit 1; }
        sudo="sudo"
    fi
    log "installing ${need[*]} (apt-get)"
    $sudo apt-get update -qq >&2
    # older Debian/Ubuntu ship msgpack-c's C++ headers in libmsgpack-dev (no libmsgpack-cxx-dev yet)
    if [[ " ${need[*]} " == *" libmsgpack-cxx-dev "* ]] && ! apt-cache show libmsgpack-cxx-dev >/dev/null 2>&1; then
        need=("${need[@]/libmsgpack-cxx-dev/libmsgpack-dev}")
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

newest_src=$(ls -t "$src"/*.cpp "$src"/*.hpp | head -1)
if [[ ! -x $out || $newest_src -nt $out || $0 -nt $out ]]; then
    mkdir -p "$(dirname "$out")"
    log "building $out"
    # MSGPACK_NO_BOOST: msgpack-c's C++ headers without Boost (nothing here needs it).
    g++ -std=c++17 -O2 -Wall -Wextra -DMSGPACK_NO_BOOST \
        -o "$out.tmp" "$src"/main.cpp $(pkg-config --cflags --libs libzmq) -lpthread
    mv "$out.tmp" "$out"
fi
echo "$(pwd)/$out"
