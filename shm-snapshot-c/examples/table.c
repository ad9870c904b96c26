/*
 * table: a C program whose state survives kill -9 under shm-restore, and
 * proves at every start that what it restored is consistent.
 *
 * The arena holds a table of 64-bit entries, entry i = mix(i), appended in
 * batches. Each commit publishes a 16-byte unit (entries, checksum): the
 * first `entries` entries are final and fold to `checksum`. At start the
 * program recovers the newest unit, reads the table back, and checks every
 * entry and the checksum; anything off prints `inconsistent: <why>` on
 * stderr and exits with status 3.
 *
 * Commits alternate between the two ways of writing the arena with a
 * unit: shm_snapshot_commit_arena, and shm_snapshot_commit_with whose work
 * function writes the entries and patches the checksum into the unit.
 *
 *   table [--batch N] [--interval-ms MS] [--limit N] [--size BYTES]
 *   table --dump FILE
 *
 * Output, one line each on stdout, flushed: `restored entries=N` at start,
 * `committed entries=N seq=S` after each commit. `--dump FILE` opens the
 * region image FILE (from `shm-restore export`) and prints `unit <seq>
 * <hex bytes>` per valid unit, oldest first.
 *
 * Without a supervisor it runs on a private region (--size, 8 MiB by
 * default), whose state ends with it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shm_snapshot.h"

#define EXIT_INCONSISTENT 3

static const uint64_t FOLD_START = 0xcbf29ce484222325u;

/* The entry at index i: splitmix64 of i, a value no stale or zeroed
 * memory holds by chance. */
static uint64_t mix(uint64_t i) {
    uint64_t z = i + 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t fold(uint64_t h, uint64_t entry) { return (h ^ entry) * 0x100000001b3u; }

static void put_u64(uint8_t *at, uint64_t v) {
    for (int i = 0; i < 8; i++) at[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *at) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)at[i] << (8 * i);
    return v;
}

static void die(const char *what, shm_snapshot_status status) {
    fprintf(stderr, "table: %s: %s (%s)\n", what, shm_snapshot_last_error(),
            shm_snapshot_status_str((int)status));
    exit(1);
}

static int dump(const char *path) {
    shm_snapshot_client *client = NULL;
    shm_snapshot_status s = shm_snapshot_open_file(path, NULL, &client);
    if (s != SHM_SNAPSHOT_OK) die("opening the image", s);
    shm_snapshot_units *units = NULL;
    s = shm_snapshot_recover(client, &units);
    if (s != SHM_SNAPSHOT_OK) die("recovering", s);
    for (size_t i = 0; i < shm_snapshot_units_count(units); i++) {
        shm_snapshot_unit unit;
        s = shm_snapshot_units_get(units, i, &unit);
        if (s != SHM_SNAPSHOT_OK) die("reading a unit", s);
        printf("unit %" PRIu64 " ", unit.seq);
        for (size_t k = 0; k < unit.len; k++) printf("%02x", unit.bytes[k]);
        printf("\n");
    }
    shm_snapshot_units_free(units);
    shm_snapshot_close(client);
    return 0;
}

/* What the work function of shm_snapshot_commit_with gets. */
struct batch {
    size_t offset;
    const uint8_t *entries;
    size_t len;
    uint64_t checksum;
};

static int write_batch(shm_snapshot_tx *tx, void *context) {
    const struct batch *b = context;
    if (shm_snapshot_tx_arena_write(tx, b->offset, b->entries, b->len) != SHM_SNAPSHOT_OK) return 1;
    uint8_t checksum[8];
    put_u64(checksum, b->checksum);
    /* The unit was copied with a zero checksum; the real one goes in now,
     * before it is published. */
    if (shm_snapshot_tx_patch(tx, 8, checksum, 8) != SHM_SNAPSHOT_OK) return 2;
    return 0;
}

static unsigned long long arg_number(const char *flag, const char *value) {
    char *end = NULL;
    if (value == NULL) {
        fprintf(stderr, "table: %s needs a value\n", flag);
        exit(2);
    }
    unsigned long long n = strtoull(value, &end, 10);
    if (*value == '\0' || *end != '\0') {
        fprintf(stderr, "table: %s: not a number: %s\n", flag, value);
        exit(2);
    }
    return n;
}

int main(int argc, char **argv) {
    uint64_t batch = 64, limit = UINT64_MAX, size = 8u << 20;
    unsigned long long interval_ms = 5;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(flag, "--dump") == 0 && value != NULL) return dump(value);
        if (strcmp(flag, "--batch") == 0) batch = arg_number(flag, value);
        else if (strcmp(flag, "--interval-ms") == 0) interval_ms = arg_number(flag, value);
        else if (strcmp(flag, "--limit") == 0) limit = arg_number(flag, value);
        else if (strcmp(flag, "--size") == 0) size = arg_number(flag, value);
        else {
            fprintf(stderr, "table: unknown argument %s\n", flag);
            return 2;
        }
        i++;
    }
    if (batch == 0) batch = 1;

    shm_snapshot_client *client = NULL;
    shm_snapshot_status s = shm_snapshot_open_env(NULL, &client);
    if (s == SHM_SNAPSHOT_E_NOT_HANDED_OVER) {
        fprintf(stderr, "table: no supervisor; running on a private region (its state ends with this process)\n");
        s = shm_snapshot_open_anonymous(size, NULL, &client);
    }
    if (s != SHM_SNAPSHOT_OK) die("opening the region", s);

    /* Recover: the newest unit says how much of the table is final. */
    shm_snapshot_units *units = NULL;
    s = shm_snapshot_recover(client, &units);
    if (s != SHM_SNAPSHOT_OK) die("recovering", s);
    uint64_t entries = 0, checksum = FOLD_START;
    size_t count = shm_snapshot_units_count(units);
    if (count > 0) {
        shm_snapshot_unit newest;
        s = shm_snapshot_units_get(units, count - 1, &newest);
        if (s != SHM_SNAPSHOT_OK) die("reading the newest unit", s);
        if (newest.len != 16) {
            fprintf(stderr, "inconsistent: newest unit %" PRIu64 " has %zu bytes, expected 16\n", newest.seq,
                    newest.len);
            return EXIT_INCONSISTENT;
        }
        entries = get_u64(newest.bytes);
        checksum = get_u64(newest.bytes + 8);
    }
    shm_snapshot_units_free(units);

    uint64_t capacity = shm_snapshot_arena_len(client) / 8;
    if (entries > capacity) {
        fprintf(stderr, "inconsistent: entries=%" PRIu64 " but the arena holds %" PRIu64 "\n", entries, capacity);
        return EXIT_INCONSISTENT;
    }
    /* Prove it: every entry, and the checksum over them. */
    uint8_t *table = malloc(entries * 8 + 1);
    if (table == NULL) return 1;
    s = shm_snapshot_arena_read(client, 0, table, entries * 8);
    if (s != SHM_SNAPSHOT_OK) die("reading the table", s);
    uint64_t h = FOLD_START;
    for (uint64_t i = 0; i < entries; i++) {
        uint64_t e = get_u64(table + 8 * i);
        if (e != mix(i)) {
            fprintf(stderr, "inconsistent: entry %" PRIu64 " is %016" PRIx64 ", expected %016" PRIx64 "\n", i, e,
                    mix(i));
            return EXIT_INCONSISTENT;
        }
        h = fold(h, e);
    }
    if (h != checksum) {
        fprintf(stderr, "inconsistent: the %" PRIu64 " entries fold to %016" PRIx64 ", the unit says %016" PRIx64 "\n",
                entries, h, checksum);
        return EXIT_INCONSISTENT;
    }
    free(table);
    printf("restored entries=%" PRIu64 "\n", entries);
    fflush(stdout);

    uint8_t *fresh = malloc(batch * 8);
    if (fresh == NULL) return 1;
    for (uint64_t round = 0; entries < limit; round++) {
        uint64_t n = batch;
        if (n > limit - entries) n = limit - entries;
        if (n > capacity - entries) {
            fprintf(stderr, "table: the table is full (%" PRIu64 " entries); stopping\n", entries);
            return 0;
        }
        for (uint64_t k = 0; k < n; k++) {
            put_u64(fresh + 8 * k, mix(entries + k));
            h = fold(h, mix(entries + k));
        }
        uint8_t unit[16];
        put_u64(unit, entries + n);
        uint64_t seq = 0;
        if (round % 2 == 0) {
            put_u64(unit + 8, h);
            s = shm_snapshot_commit_arena(client, unit, sizeof unit, entries * 8, fresh, n * 8, &seq);
        } else {
            put_u64(unit + 8, 0);
            struct batch b = {.offset = entries * 8, .entries = fresh, .len = n * 8, .checksum = h};
            s = shm_snapshot_commit_with(client, unit, sizeof unit, write_batch, &b, &seq);
        }
        if (s != SHM_SNAPSHOT_OK) die("committing", s);
        entries += n;
        printf("committed entries=%" PRIu64 " seq=%" PRIu64 "\n", entries, seq);
        fflush(stdout);
        if (interval_ms > 0) {
            struct timespec pause = {.tv_sec = (time_t)(interval_ms / 1000),
                                     .tv_nsec = (long)(interval_ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    free(fresh);
    shm_snapshot_close(client);
    return 0;
}
