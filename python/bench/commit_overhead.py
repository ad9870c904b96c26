"""Per-commit cost of the Python package, with the loop and timing of
shm-snapshot-c/bench (fastest of 30 rounds, 1 MiB ring, 8 MiB region),
so it reads against the Rust client's figures there. Figures in
BENCHMARKS.md.

    python python/bench/commit_overhead.py
"""

import time

import shm_snapshot

ROUNDS = 30


def best_ns(call, commits: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(commits):
            call()
        best = min(best, (time.perf_counter_ns() - start) / commits)
    return best


def main() -> None:
    client = shm_snapshot.Client.anonymous(8 << 20)
    empty_loop = best_ns(lambda: None, 100_000)
    print(f"python empty call in the loop: {empty_loop:.1f} ns")
    for size in (8, 4096, 65536):
        unit = bytes(i % 256 for i in range(size))
        commits = {8: 100_000, 4096: 20_000, 65536: 2_000}[size]
        commit = best_ns(lambda: client.commit(unit), commits)
        print(f"python commit {size} B: {commit:.1f} ns")
    unit = bytes(16)
    piece = bytes(64)
    arena = [(0, piece)]
    print(f"python commit 16 B with a 64 B arena piece: {best_ns(lambda: client.commit(unit, arena=arena), 50_000):.1f} ns")
    print(f"python commit_with 16 B, empty work: {best_ns(lambda: client.commit_with(unit, lambda tx: None), 50_000):.1f} ns")


if __name__ == "__main__":
    main()
