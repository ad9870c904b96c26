#!/bin/sh
# Commit latency through the C library against the Rust client, same loop
# and timing (fastest of 30 rounds), release builds, alternating runs.
#
#   shm-snapshot-c/bench/run.sh [RUNS]
set -eu
cd "$(dirname "$0")/../.."
cargo build --quiet --release -p shm-snapshot-c --lib --example commit_latency
out=target/release/commit-latency-c
${CC:-cc} -std=c11 -O2 -Wall -Werror -I shm-snapshot-c/include shm-snapshot-c/bench/commit_latency.c \
    target/release/libshm_snapshot.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o "$out"
runs=${1:-3}
i=0
while [ "$i" -lt "$runs" ]; do
    target/release/examples/commit_latency
    "$out"
    i=$((i + 1))
done
