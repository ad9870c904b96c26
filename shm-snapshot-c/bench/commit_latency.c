/*
 * Commit latency through the C library: the same loop as
 * examples/commit_latency.rs runs on the Rust client. Built and run by
 * bench/run.sh; figures in BENCHMARKS.md.
 *
 * One client commits units of a fixed size into a 1 MiB ring (256 slots)
 * of an 8 MiB private region, over and over; each size is timed in ROUNDS
 * rounds of COMMITS commits, and the fastest round is reported (the
 * others lost time to the machine, not to the code).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "shm_snapshot.h"

#define ROUNDS 30
#define COMMITS 200000

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int main(void) {
    shm_snapshot_client *client = NULL;
    if (shm_snapshot_open_anonymous(8u << 20, NULL, &client) != SHM_SNAPSHOT_OK) {
        fprintf(stderr, "open: %s\n", shm_snapshot_last_error());
        return 1;
    }
    const size_t sizes[] = {8, 4096, 65536};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t len = sizes[s];
        uint8_t *unit = malloc(len);
        for (size_t i = 0; i < len; i++) unit[i] = (uint8_t)i;
        /* Fewer commits for large units: each round stays near 10 ms. */
        long commits = len >= 65536 ? COMMITS / 100 : len >= 4096 ? COMMITS / 10 : COMMITS;
        double best = 1e30;
        for (int round = 0; round < ROUNDS; round++) {
            double start = now_ns();
            for (long k = 0; k < commits; k++) {
                if (shm_snapshot_commit(client, unit, len, NULL) != SHM_SNAPSHOT_OK) {
                    fprintf(stderr, "commit: %s\n", shm_snapshot_last_error());
                    return 1;
                }
            }
            double per = (now_ns() - start) / (double)commits;
            if (per < best) best = per;
        }
        printf("c commit %zu B: %.2f ns\n", len, best);
        free(unit);
    }
    shm_snapshot_close(client);
    return 0;
}
