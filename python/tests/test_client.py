"""The Python API of shm_snapshot, against a private region."""

import array
import os
import tempfile
import unittest

import shm_snapshot
from shm_snapshot import ArenaError, Client, CommitError, NotHandedOverError, RegionError, ShmSnapshotError

SIZE = 4 << 20


class CommitAndRecover(unittest.TestCase):
    def setUp(self):
        self.client = Client.anonymous(SIZE)

    def test_units_come_back_oldest_first_with_their_bytes(self):
        self.assertEqual(self.client.commit(b"one"), 1)
        self.assertEqual(self.client.commit(b""), 2)
        self.assertEqual(self.client.commit(bytearray(b"three")), 3)
        units = self.client.recover()
        self.assertEqual([(u.seq, u.data) for u in units], [(1, b"one"), (2, b""), (3, b"three")])
        self.assertIsInstance(units[0].data, bytes)
        self.assertEqual(repr(units[0]), "Unit(seq=1, data=<3 bytes>)")

    def test_any_contiguous_buffer_is_taken_as_bytes(self):
        words = array.array("Q", [1, 2])
        self.client.commit(memoryview(b"xxview")[2:], arena=[(0, words), (16, memoryview(bytearray(b"ab")))])
        self.assertEqual(self.client.recover()[-1].data, b"view")
        self.assertEqual(self.client.arena_read(0, 18), words.tobytes() + b"ab")
        with self.assertRaises(TypeError):
            self.client.commit("text is not bytes")
        with self.assertRaises(BufferError):
            self.client.commit(memoryview(b"abcdef")[::2])

    def test_arena_reads_fill_a_buffer_in_place(self):
        self.client.arena_write(100, b"hello")
        out = bytearray(5)
        self.client.arena_read_into(100, out)
        self.assertEqual(out, b"hello")
        view = memoryview(bytearray(8))
        self.client.arena_read_into(98, view[1:6])
        self.assertEqual(bytes(view), b"\x00\x00\x00hel\x00\x00")
        with self.assertRaises(TypeError):
            self.client.arena_read_into(0, b"read-only")

    def test_a_restarted_client_recovers_what_was_committed(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "region")
            with open(path, "wb") as f:
                f.truncate(SIZE)
            first = Client.from_file(path)
            first.commit(b"kept", arena=[(8, b"arena")])
            del first
            again = Client.from_file(path)
            self.assertEqual([u.data for u in again.recover()], [b"kept"])
            self.assertEqual(again.arena_read(8, 5), b"arena")
            self.assertEqual(again.commit(b"next"), 2)

    def test_sizes_are_reported(self):
        self.assertEqual(self.client.region_len, SIZE)
        self.assertEqual(self.client.chunk_bytes, 64 << 10)
        self.assertGreater(self.client.arena_len, 0)
        self.client.heartbeat()


class CommitWith(unittest.TestCase):
    def setUp(self):
        self.client = Client.anonymous(SIZE)

    def test_work_writes_the_arena_and_patches_the_unit_before_it_is_published(self):
        def work(tx):
            self.assertEqual(tx.seq, 1)
            tx.arena_write(0, b"table")
            self.assertEqual(tx.arena_read(0, 5), b"table")
            tx.patch(4, b"!")

        self.assertEqual(self.client.commit_with(b"unit?", work), 1)
        self.assertEqual(self.client.recover()[0].data, b"unit!")

    def test_an_exception_in_the_work_aborts_and_propagates(self):
        class Stop(Exception):
            pass

        def work(tx):
            tx.arena_write(0, b"x")
            raise Stop("no")

        with self.assertRaises(Stop):
            self.client.commit_with(b"never", work)
        self.assertEqual(self.client.recover(), [])
        self.assertEqual(self.client.commit(b"next"), 1, "the aborted commit's number is reused")

    def test_a_transaction_kept_past_its_work_refuses_to_act(self):
        kept = []
        self.client.commit_with(b"u", kept.append)
        with self.assertRaises(RuntimeError):
            kept[0].arena_write(0, b"late")
        with self.assertRaises(RuntimeError):
            kept[0].seq

    def test_the_work_cannot_call_its_client(self):
        with self.assertRaises(RuntimeError):
            self.client.commit_with(b"u", lambda tx: self.client.commit(b"inner"))
        self.assertEqual(self.client.recover(), [])

    def test_a_patch_outside_the_unit_is_a_commit_error(self):
        with self.assertRaises(CommitError):
            self.client.commit_with(b"abc", lambda tx: tx.patch(2, b"xy"))


class Errors(unittest.TestCase):
    def test_errors_are_named_for_the_client_error_kinds(self):
        client = Client.anonymous(SIZE)
        with self.assertRaises(CommitError) as raised:
            client.commit(bytes((1 << 20) + 1))
        self.assertIn("larger than the ring", str(raised.exception))
        with self.assertRaises(ArenaError):
            client.arena_write(client.arena_len - 2, b"four")
        with self.assertRaises(ArenaError):
            client.commit(b"u", arena=[(client.arena_len, b"x")])
        self.assertEqual(client.recover(), [], "nothing published")
        for kind in (RegionError, CommitError, ArenaError):
            self.assertTrue(issubclass(kind, ShmSnapshotError))

    def test_a_process_not_started_by_the_supervisor_is_told_so(self):
        self.assertNotIn("LISTEN_FDS", os.environ)
        with self.assertRaises(NotHandedOverError) as raised:
            Client.from_env()
        self.assertIsInstance(raised.exception, RegionError)

    def test_a_region_of_another_format_is_refused_and_left_alone(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "foreign")
            with open(path, "wb") as f:
                f.write(b"\xab" * (2 << 20))
            with self.assertRaises(RegionError) as raised:
                Client.from_file(path)
            self.assertIn("foreign magic", str(raised.exception))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"\xab" * (2 << 20))

    def test_a_bad_layout_is_refused(self):
        with self.assertRaises(RegionError):
            Client.anonymous(SIZE, ring_bytes=3000)


if __name__ == "__main__":
    unittest.main()
