/*
 * shm_snapshot.h: the C interface of the shm-snapshot client.
 *
 * A program keeps its state in a shared memory region that shm-restore
 * hands it, commits units (records made visible atomically), and after a
 * crash recovers them; shm-restore snapshots the region to disk and
 * restores it. The region format is specified in shm-snapshot/FORMAT.md.
 *
 * Link with -lshm_snapshot (pkg-config: shm_snapshot). From C++, include
 * this header as it is: its declarations are extern "C".
 *
 * Errors: every function that can fail returns a shm_snapshot_status;
 * shm_snapshot_last_error() says why, for the calling thread. No Rust
 * panic crosses into the caller: it becomes SHM_SNAPSHOT_E_PANIC.
 *
 * Handles: a shm_snapshot_client is used by one thread at a time (calls
 * must not overlap) and released with shm_snapshot_close; a
 * shm_snapshot_units is immutable and released with
 * shm_snapshot_units_free; a shm_snapshot_tx lives only during the work
 * function it is passed to.
 */

#ifndef SHM_SNAPSHOT_H
#define SHM_SNAPSHOT_H

/* Generated from shm-snapshot-c/src by cbindgen (shm-snapshot-c/cbindgen.toml); do not edit. */

#include <stddef.h>
#include <stdint.h>

/**
 * What a call did. Every function that can fail returns one;
 * `shm_snapshot_last_error` then says more, in a sentence.
 */
typedef enum shm_snapshot_status {
    /**
     * Success.
     */
    SHM_SNAPSHOT_OK = 0,
    /**
     * A required pointer argument was NULL.
     */
    SHM_SNAPSHOT_E_NULL = 1,
    /**
     * No region was handed to this process (`LISTEN_FDS` or
     * `LISTEN_FDNAMES` is not set): it was not started by shm-restore. A
     * program may then run on a private region
     * (`shm_snapshot_open_anonymous`).
     */
    SHM_SNAPSHOT_E_NOT_HANDED_OVER = 2,
    /**
     * A region was handed over but cannot be taken: malformed `LISTEN_*`
     * variables, `LISTEN_PID` naming another process, a descriptor that
     * is not a file, or a region this process already took.
     */
    SHM_SNAPSHOT_E_HANDOVER = 3,
    /**
     * A system call failed (creating, sizing, mapping a region; opening a
     * file).
     */
    SHM_SNAPSHOT_E_IO = 4,
    /**
     * The region was refused, and nothing was written to it: foreign
     * magic, a newer format version, an impossible or inconsistent
     * header, a region too small for the configuration, a region without
     * magic that is not blank, or a corrupt unit table.
     */
    SHM_SNAPSHOT_E_REGION = 5,
    /**
     * The unit is larger than the ring; nothing was published.
     */
    SHM_SNAPSHOT_E_UNIT_TOO_LARGE = 6,
    /**
     * The region has used every sequence number or stream offset a unit
     * can have (2^62 of them); nothing was published.
     */
    SHM_SNAPSHOT_E_EXHAUSTED = 7,
    /**
     * An arena range or a patch lies outside the arena or the unit.
     */
    SHM_SNAPSHOT_E_OUT_OF_BOUNDS = 8,
    /**
     * The work function of `shm_snapshot_commit_with` returned non-zero,
     * or an arena write of `shm_snapshot_commit_arena` was out of bounds:
     * nothing was published. Older units the reservation overwrote stay
     * invalid, as after a kill during the commit.
     */
    SHM_SNAPSHOT_E_ABORTED = 9,
    /**
     * An internal error (a bug of this library) was caught at the
     * boundary. A client that reported it refuses every later call but
     * `shm_snapshot_close`.
     */
    SHM_SNAPSHOT_E_PANIC = 10,
    /**
     * An argument is out of range (e.g. a path that is not a valid C
     * string, a length that does not fit the address space).
     */
    SHM_SNAPSHOT_E_INVALID = 11,
} shm_snapshot_status;

/**
 * A client of a region: the only writer of its unit table, ring and
 * arena. Opaque. Made by an `shm_snapshot_open_*` function and released
 * by `shm_snapshot_close`. Not thread-safe: calls on one client must not
 * overlap (one thread at a time, or the caller's own lock); it may move
 * between threads.
 */
typedef struct shm_snapshot_client shm_snapshot_client;

/**
 * A commit in progress, lent to the work function of
 * `shm_snapshot_commit_with` for the duration of that call, on that
 * thread. Opaque.
 */
typedef struct shm_snapshot_tx shm_snapshot_tx;

/**
 * The valid units of a region, oldest first, with copies of their bytes.
 * Opaque; made by `shm_snapshot_recover`, released by
 * `shm_snapshot_units_free`; immutable, so any thread may read it.
 */
typedef struct shm_snapshot_units shm_snapshot_units;

/**
 * How a blank region is laid out (a region already laid out keeps its
 * own layout). Pass NULL where a function takes one for the defaults,
 * or start from `shm_snapshot_config_default()`.
 */
typedef struct shm_snapshot_config {
    /**
     * Unit-table slots, a power of two up to 65536. Default 256.
     */
    uint64_t slots;
    /**
     * Ring bytes, a power of two of at least 4096: the largest unit.
     * Default 1 MiB.
     */
    uint64_t ring_bytes;
    /**
     * Arena chunk bytes, a power of two of at least 4096: the
     * granularity at which the supervisor learns what changed. Default
     * 64 KiB.
     */
    uint64_t chunk_bytes;
} shm_snapshot_config;

/**
 * The work of `shm_snapshot_commit_with`, run after the unit's room is
 * reserved and its bytes are copied, before it is published: it may write
 * the arena data the unit describes (`shm_snapshot_tx_arena_write`) and
 * patch the unit's bytes (`shm_snapshot_tx_patch`). Return 0 to publish
 * the unit, anything else to abort (nothing is published). It must not
 * call other functions on the same client, and must not unwind out (a C++
 * exception must be caught inside it).
 */
typedef int (*shm_snapshot_work)(struct shm_snapshot_tx *tx, void *context);

/**
 * One recovered unit, as `shm_snapshot_units_get` describes it.
 */
typedef struct shm_snapshot_unit {
    /**
     * The unit's sequence number: unique and increasing over the
     * region's life.
     */
    uint64_t seq;
    /**
     * Its bytes, exactly as committed; owned by the units handle, valid
     * until `shm_snapshot_units_free`. Not NULL, even for 0 bytes.
     */
    const uint8_t *bytes;
    /**
     * Its length in bytes.
     */
    size_t len;
} shm_snapshot_unit;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The default configuration.
 */
struct shm_snapshot_config shm_snapshot_config_default(void);

/**
 * Opens the region shm-restore handed to this process (the descriptor
 * named `SHM_SHARED_FD` in `LISTEN_FDNAMES`, by systemd's `LISTEN_FDS`
 * convention), lays it out from `config` (NULL: defaults) if it is blank,
 * and checks it otherwise. On success `*out` holds a client to release
 * with `shm_snapshot_close`; on failure `*out` is unchanged.
 *
 * Returns `SHM_SNAPSHOT_E_NOT_HANDED_OVER` when the process was not
 * started by shm-restore. Takes the descriptor: call it once per process,
 * and do not use or close that descriptor otherwise (a second call fails
 * with `SHM_SNAPSHOT_E_HANDOVER`). The descriptor is made close-on-exec,
 * so programs this one starts do not inherit the region.
 *
 * # Safety
 *
 * `config` is NULL or points to a config; `out` points to writable
 * storage for a pointer.
 */
enum shm_snapshot_status shm_snapshot_open_env(const struct shm_snapshot_config *config,
                                               struct shm_snapshot_client **out);

/**
 * Opens a fresh private region of `len` bytes (a multiple of 4096, large
 * enough for the configuration: 1 MiB and 4 pages with the defaults), for
 * a program running without a supervisor and for tests. Its state ends
 * with the process. As `shm_snapshot_open_env` for `config` and `out`.
 *
 * # Safety
 *
 * As `shm_snapshot_open_env`.
 */
enum shm_snapshot_status shm_snapshot_open_anonymous(uint64_t len,
                                                     const struct shm_snapshot_config *config,
                                                     struct shm_snapshot_client **out);

/**
 * Opens the region image in the file at `path`, read-write, e.g. one
 * written by `shm-restore export`: for tests and tools. Changes go to the
 * file. As `shm_snapshot_open_env` for `config` and `out`.
 *
 * # Safety
 *
 * `path` is a NUL-terminated string. Nothing may shrink the file while
 * the client is open (touching a page past its end raises SIGBUS). As
 * `shm_snapshot_open_env` for `config` and `out`.
 */
enum shm_snapshot_status shm_snapshot_open_file(const char *path,
                                                const struct shm_snapshot_config *config,
                                                struct shm_snapshot_client **out);

/**
 * Releases a client and unmaps its region. The region itself lives on
 * (it belongs to the supervisor). NULL is ignored.
 *
 * # Safety
 *
 * `client` is NULL or a live handle, not used again afterwards.
 */
void shm_snapshot_close(struct shm_snapshot_client *client);

/**
 * The arena's length in bytes: the region's pages after the ring, free
 * for the program. 0 for NULL.
 *
 * # Safety
 *
 * `client` is NULL or a live handle no other call uses meanwhile.
 */
size_t shm_snapshot_arena_len(const struct shm_snapshot_client *client);

/**
 * Copies `len` bytes from `data` into the arena at `offset`, and marks
 * the arena chunks they touch written, so the supervisor copies them.
 * Data a valid unit describes must not be changed (the arena contract);
 * write new data, then commit a unit that describes it, or use
 * `shm_snapshot_commit_arena` for both at once.
 *
 * # Safety
 *
 * `client` is a live handle no other call uses meanwhile; `data` points
 * to `len` readable bytes (NULL allowed when `len` is 0).
 */
enum shm_snapshot_status shm_snapshot_arena_write(struct shm_snapshot_client *client,
                                                  size_t offset,
                                                  const void *data,
                                                  size_t len);

/**
 * Copies `len` bytes of the arena at `offset` into `out`.
 *
 * # Safety
 *
 * `client` is a live handle no other call uses meanwhile; `out` points to
 * `len` writable bytes (NULL allowed when `len` is 0).
 */
enum shm_snapshot_status shm_snapshot_arena_read(struct shm_snapshot_client *client,
                                                 size_t offset,
                                                 void *out,
                                                 size_t len);

/**
 * Tells the supervisor the program is alive without committing (for
 * `shm-restore --hang-timeout`): one store into the region, no system
 * call. Every commit also does it.
 *
 * # Safety
 *
 * `client` is a live handle no other call uses meanwhile.
 */
enum shm_snapshot_status shm_snapshot_heartbeat(struct shm_snapshot_client *client);

/**
 * Commits the `len` bytes at `unit` as one unit, and stores its sequence
 * number in `*seq_out` (if not NULL). Wait-free: no lock, no system call
 * (but a wake-up of a sleeping supervisor), no allocation.
 *
 * # Safety
 *
 * `client` is a live handle no other call uses meanwhile; `unit` points
 * to `len` readable bytes (NULL allowed when `len` is 0); `seq_out` is
 * NULL or points to a writable `uint64_t`.
 */
enum shm_snapshot_status shm_snapshot_commit(struct shm_snapshot_client *client,
                                             const void *unit,
                                             size_t len,
                                             uint64_t *seq_out);

/**
 * Writes the `data_len` bytes at `data` into the arena at `arena_offset`
 * (marking them), then publishes the `unit_len` bytes at `unit` as one
 * unit: the unit is visible only with the data it describes. An arena
 * range outside the arena aborts the commit (`SHM_SNAPSHOT_E_ABORTED`,
 * nothing published, nothing written).
 *
 * # Safety
 *
 * As `shm_snapshot_commit`; `data` points to `data_len` readable bytes
 * (NULL allowed when `data_len` is 0).
 */
enum shm_snapshot_status shm_snapshot_commit_arena(struct shm_snapshot_client *client,
                                                   const void *unit,
                                                   size_t unit_len,
                                                   size_t arena_offset,
                                                   const void *data,
                                                   size_t data_len,
                                                   uint64_t *seq_out);

/**
 * Commits the `len` bytes at `unit` as one unit, running
 * `work(tx, context)` after its room is reserved and its bytes copied and
 * before it is published (see `shm_snapshot_work`). A non-zero return
 * aborts: `SHM_SNAPSHOT_E_ABORTED`, nothing published, the next commit
 * gets the same sequence number. Older units the reservation overwrote
 * stay invalid.
 *
 * # Safety
 *
 * As `shm_snapshot_commit`; `work` is a function that keeps the contract
 * of `shm_snapshot_work`; `context` is passed to it untouched.
 */
enum shm_snapshot_status shm_snapshot_commit_with(struct shm_snapshot_client *client,
                                                  const void *unit,
                                                  size_t len,
                                                  shm_snapshot_work work,
                                                  void *context,
                                                  uint64_t *seq_out);

/**
 * The sequence number the unit gets if it is published; 0 for NULL.
 *
 * # Safety
 *
 * `tx` is NULL or the handle lent to the running work function.
 */
uint64_t shm_snapshot_tx_seq(struct shm_snapshot_tx *tx);

/**
 * Writes the arena data the unit describes: `len` bytes from `data` at
 * arena `offset`, marked for the supervisor, and ordered before the unit
 * is published.
 *
 * # Safety
 *
 * `tx` is the handle lent to the running work function; `data` points to
 * `len` readable bytes (NULL allowed when `len` is 0).
 */
enum shm_snapshot_status shm_snapshot_tx_arena_write(struct shm_snapshot_tx *tx,
                                                     size_t offset,
                                                     const void *data,
                                                     size_t len);

/**
 * Reads `len` bytes of the arena at `offset` into `out`.
 *
 * # Safety
 *
 * `tx` is the handle lent to the running work function; `out` points to
 * `len` writable bytes (NULL allowed when `len` is 0).
 */
enum shm_snapshot_status shm_snapshot_tx_arena_read(struct shm_snapshot_tx *tx,
                                                    size_t offset,
                                                    void *out,
                                                    size_t len);

/**
 * Overwrites the unit's bytes at `offset` with the `len` bytes at
 * `data`, before it is published (e.g. a length or checksum known only
 * now). The range must lie inside the unit.
 *
 * # Safety
 *
 * `tx` is the handle lent to the running work function; `data` points to
 * `len` readable bytes (NULL allowed when `len` is 0).
 */
enum shm_snapshot_status shm_snapshot_tx_patch(struct shm_snapshot_tx *tx,
                                               size_t offset,
                                               const void *data,
                                               size_t len);

/**
 * Describes a status code in a few words (a static string, never NULL).
 * Takes an `int`, so any value is safe to pass.
 */
const char *shm_snapshot_status_str(int status);

/**
 * The message of the last call that failed on the calling thread, e.g.
 * `region has foreign magic 0x...: it was not laid out by shm-snapshot`;
 * an empty string if none has. Never NULL. The string belongs to the
 * library and stays valid until the next call that fails on this thread.
 */
const char *shm_snapshot_last_error(void);

/**
 * The valid units, oldest first: what a program rebuilds its state from
 * after a restart. Units newer ones overwrote are gone; the newest that
 * fit the ring and the unit table survive. On success `*out` holds a
 * handle to release with `shm_snapshot_units_free`.
 *
 * # Safety
 *
 * `client` is a live handle no other call uses meanwhile; `out` points to
 * writable storage for a pointer.
 */
enum shm_snapshot_status shm_snapshot_recover(struct shm_snapshot_client *client,
                                              struct shm_snapshot_units **out);

/**
 * How many units `units` holds; 0 for NULL.
 *
 * # Safety
 *
 * `units` is NULL or a live handle.
 */
size_t shm_snapshot_units_count(const struct shm_snapshot_units *units);

/**
 * Describes unit `index` (0 = the oldest) in `*out`.
 * `SHM_SNAPSHOT_E_OUT_OF_BOUNDS` when `index` is not below the count.
 *
 * # Safety
 *
 * `units` is a live handle; `out` points to a writable
 * `shm_snapshot_unit`.
 */
enum shm_snapshot_status shm_snapshot_units_get(const struct shm_snapshot_units *units,
                                                size_t index,
                                                struct shm_snapshot_unit *out);

/**
 * Releases units and their bytes. NULL is ignored.
 *
 * # Safety
 *
 * `units` is NULL or a live handle, not used again afterwards (nor the
 * bytes it lent).
 */
void shm_snapshot_units_free(struct shm_snapshot_units *units);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SHM_SNAPSHOT_H */
