"""table: a Python program whose state survives kill -9 under shm-restore,
and proves at every start that what it restored is consistent.

The same table as the C example (shm-snapshot-c/examples/table.c): the
arena holds 64-bit entries, entry i = mix(i), appended in batches; each
commit publishes a 16-byte unit (entries, checksum) saying the first
`entries` entries are final and fold to `checksum`. At start the program
recovers the newest unit, reads the table back and checks every entry and
the checksum; anything off prints `inconsistent: <why>` on stderr and
exits with status 3.

Commits alternate between `commit(unit, arena=...)` and `commit_with`,
whose work function writes the entries and patches the checksum in.

    python table.py [--batch N] [--interval-ms MS] [--limit N] [--size BYTES]
    python table.py --dump FILE

Output, one line each on stdout, flushed: `restored entries=N` at start,
`committed entries=N seq=S` after each commit. `--dump FILE` prints
`unit <seq> <hex bytes>` per valid unit of the region image FILE.
"""

import argparse
import struct
import sys
import time

import shm_snapshot

EXIT_INCONSISTENT = 3
MASK = (1 << 64) - 1
FOLD_START = 0xCBF29CE484222325


def mix(i: int) -> int:
    """The entry at index i: splitmix64 of i."""
    z = (i + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def fold(h: int, entry: int) -> int:
    return ((h ^ entry) * 0x100000001B3) & MASK


def dump(path: str) -> int:
    client = shm_snapshot.Client.from_file(path)
    for unit in client.recover():
        print(f"unit {unit.seq} {unit.data.hex()}")
    return 0


def inconsistent(why: str) -> int:
    print(f"inconsistent: {why}", file=sys.stderr, flush=True)
    return EXIT_INCONSISTENT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--interval-ms", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--size", type=int, default=8 << 20)
    parser.add_argument("--dump", metavar="FILE")
    args = parser.parse_args()
    if args.dump:
        return dump(args.dump)

    try:
        client = shm_snapshot.Client.from_env()
    except shm_snapshot.NotHandedOverError:
        print("table: no supervisor; running on a private region (its state ends with this process)",
              file=sys.stderr, flush=True)
        client = shm_snapshot.Client.anonymous(args.size)

    units = client.recover()
    entries, checksum = 0, FOLD_START
    if units:
        newest = units[-1]
        if len(newest.data) != 16:
            return inconsistent(f"newest unit {newest.seq} has {len(newest.data)} bytes, expected 16")
        entries, checksum = struct.unpack("<QQ", newest.data)
    capacity = client.arena_len // 8
    if entries > capacity:
        return inconsistent(f"entries={entries} but the arena holds {capacity}")

    # Prove it: every entry, and the checksum over them. The table is read
    # straight into a buffer of our own, with no intermediate copy.
    table = bytearray(entries * 8)
    client.arena_read_into(0, table)
    h = FOLD_START
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", table)):
        if entry != mix(i):
            return inconsistent(f"entry {i} is {entry:016x}, expected {mix(i):016x}")
        h = fold(h, entry)
    if h != checksum:
        return inconsistent(f"the {entries} entries fold to {h:016x}, the unit says {checksum:016x}")
    print(f"restored entries={entries}", flush=True)

    limit = args.limit if args.limit is not None else capacity
    batch = max(args.batch, 1)
    round_ = 0
    while entries < limit:
        n = min(batch, limit - entries)
        if n > capacity - entries:
            print(f"table: the table is full ({entries} entries); stopping", file=sys.stderr)
            return 0
        fresh = [mix(entries + k) for k in range(n)]
        for entry in fresh:
            h = fold(h, entry)
        data = struct.pack(f"<{n}Q", *fresh)
        if round_ % 2 == 0:
            seq = client.commit(struct.pack("<QQ", entries + n, h), arena=[(entries * 8, data)])
        else:
            offset, checksum_now = entries * 8, h

            def work(tx: shm_snapshot.Transaction) -> None:
                tx.arena_write(offset, data)
                # The unit was copied with a zero checksum; the real one
                # goes in before it is published.
                tx.patch(8, struct.pack("<Q", checksum_now))

            seq = client.commit_with(struct.pack("<QQ", entries + n, 0), work)
        entries += n
        round_ += 1
        print(f"committed entries={entries} seq={seq}", flush=True)
        if args.interval_ms > 0:
            time.sleep(args.interval_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
