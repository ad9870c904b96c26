"""Crash-safe state in a shared memory region: the shm-snapshot client.

A program keeps its state in a region that ``shm-restore`` hands it,
commits *units* (records made visible atomically, saying which of its
state is final), and after a crash recovers them: ``shm-restore`` copies
consistent states of the region to disk while the program runs and
restores the newest one when it dies. A commit never waits: no lock, no
system call, no allocation in the client.

Bytes are taken through the buffer protocol (``bytes``, ``bytearray``,
``memoryview``, ``array.array``, ...; C-contiguous) without a copy.

A ``Client`` is not safe to share between threads without a lock of the
program's own (its methods refuse to run while another of them runs on
the same client).
"""

import os
from typing import Callable, Iterable, Optional, Tuple, Union

try:
    from collections.abc import Buffer
except ImportError:  # Python < 3.12
    from typing_extensions import Buffer

__version__: str
FD_NAME: str
"""The name under which shm-restore hands the region over in ``LISTEN_FDNAMES``."""

class ShmSnapshotError(Exception):
    """Base of every error of this package."""

class RegionError(ShmSnapshotError):
    """The region cannot be used: not handed over properly, not this
    format, corrupt, or a system call failed. Nothing was written to it."""

class NotHandedOverError(RegionError):
    """No region was handed to this process (``LISTEN_FDS`` or
    ``LISTEN_FDNAMES`` is not set): it was not started by shm-restore."""

class CommitError(ShmSnapshotError):
    """A commit could not be made (the unit is larger than the ring, the
    region's numbers are used up, a patch falls outside the unit). Nothing
    was published."""

class ArenaError(ShmSnapshotError):
    """An arena range lies outside the arena."""

class Unit:
    """A unit found valid in the region."""

    seq: int
    """Its sequence number: unique and increasing over the region's life."""
    data: bytes
    """Its bytes, exactly as committed."""

class Transaction:
    """A commit in progress, passed to the work function of
    :meth:`Client.commit_with`; usable only during that call."""

    @property
    def seq(self) -> int:
        """The sequence number the unit gets if it is published."""
    def arena_write(self, offset: int, data: Buffer) -> None:
        """Writes arena data the unit describes: marked for the supervisor
        and ordered before the unit is published. Raises ArenaError outside
        the arena."""
    def arena_read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the arena at ``offset``."""
    def patch(self, offset: int, data: Buffer) -> None:
        """Overwrites the unit's bytes at ``offset`` before it is published
        (a length or checksum known only now). Raises CommitError outside
        the unit."""

class Client:
    """A client of a region: the only writer of its unit table, ring and
    arena.

    The keyword arguments lay out a blank region (a region already laid
    out keeps its own layout): ``slots`` unit-table slots (a power of two),
    ``ring_bytes`` (a power of two of at least 4096: the largest unit) and
    ``chunk_bytes`` (a power of two of at least 4096: the granularity at
    which the supervisor learns what changed in the arena).
    """

    @staticmethod
    def from_env(*, slots: int = 256, ring_bytes: int = 1 << 20, chunk_bytes: int = 64 << 10) -> "Client":
        """Opens the region shm-restore handed to this process (by the
        ``LISTEN_FDS`` convention), laying it out if it is blank. Raises
        NotHandedOverError when the process was not started by shm-restore,
        RegionError when the region is refused. Call it once per process;
        the descriptor is made close-on-exec and must not be used
        otherwise."""
    @staticmethod
    def anonymous(
        size: int, *, slots: int = 256, ring_bytes: int = 1 << 20, chunk_bytes: int = 64 << 10
    ) -> "Client":
        """A fresh private region of ``size`` bytes (a multiple of 4096, at
        least 1 MiB and 4 pages with the defaults), for running without a
        supervisor and for tests. Its state ends with the process."""
    @staticmethod
    def from_file(
        path: Union[str, "os.PathLike[str]"],
        *,
        slots: int = 256,
        ring_bytes: int = 1 << 20,
        chunk_bytes: int = 64 << 10,
    ) -> "Client":
        """Opens the region image in a file (e.g. from ``shm-restore
        export``), read-write, for tests and tools. Nothing may shrink the
        file while the client is open."""
    def recover(self) -> list[Unit]:
        """The valid units, oldest first: what the program rebuilds its
        state from after a restart."""
    def commit(self, unit: Buffer, arena: Optional[Iterable[Tuple[int, Buffer]]] = None) -> int:
        """Commits ``unit`` as one unit and returns its sequence number.
        ``arena``'s ``(offset, data)`` pieces are written into the arena
        first (marked), and the unit is visible only with them. Raises
        CommitError (nothing published) or ArenaError (a piece outside the
        arena: nothing published)."""
    def commit_with(self, unit: Buffer, work: Callable[[Transaction], object]) -> int:
        """Commits ``unit``, calling ``work(tx)`` after its room is
        reserved and its bytes copied, before it is published; returns its
        sequence number. An exception from ``work`` aborts the commit
        (nothing is published; older units the reservation overwrote stay
        invalid) and propagates. ``work`` must not call this client."""
    def arena_write(self, offset: int, data: Buffer) -> None:
        """Copies ``data`` into the arena at ``offset`` and marks it
        written. Data a valid unit describes must not change: write new
        data, then commit a unit that describes it."""
    def arena_read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the arena at ``offset``."""
    def arena_read_into(self, offset: int, out: Buffer) -> None:
        """Fills the writable buffer ``out`` (e.g. a ``bytearray`` or a
        ``memoryview`` of one) with the arena bytes at ``offset``, with no
        intermediate copy."""
    @property
    def arena_len(self) -> int:
        """The arena's length in bytes."""
    @property
    def chunk_bytes(self) -> int:
        """The arena's chunk size in bytes."""
    @property
    def region_len(self) -> int:
        """The region's length in bytes."""
    def heartbeat(self) -> None:
        """Shows the supervisor the program is alive without committing
        (``shm-restore --hang-timeout``); every commit does it too."""
