"""Hash image bytes while they flow: md5 (``checksum``), the multihash and the size, in one pass.

md5 and the multihash run on two cores at once (``Hasher``), so both cost about
what md5 alone costs: one read of the bytes, the price of one digest.

Glance computes the same three while it writes a file (glance_store 5.7.0
``_drivers/filesystem.py`` ``Store.add``; glance 33 ``glance/location.py``
``_upload_to_store``), and glanceclient checks them on every download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from recover.errors import RecoverError

#: copy_hashing's read size, and the granularity of the holes it leaves for zeros.
CHUNK = 4 * 1024 * 1024
#: hash_file's read size: fewer hand-overs between the two hashing threads.
HASH_CHUNK = 8 * 1024 * 1024
#: Chunks at least this big are hashed on two threads (md5 on a helper thread).
PARALLEL_MIN = 1024 * 1024
#: copy_hashing has what it wrote so far flushed to disk every this many bytes.
WRITE_BEHIND = 64 * 1024 * 1024
DEFAULT_ALGO = "sha512"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Digests:
    md5: str
    algo: str
    value: str
    size: int


def check_algo(algo: str) -> str:
    """``algo`` if hashlib has it with a fixed digest size (``images.os_hash_algo`` is data)."""
    if not isinstance(algo, str) or algo not in hashlib.algorithms_available:
        raise RecoverError(f"hashing algorithm {str(algo)[:40]!r} is not available here")
    if hashlib.new(algo).digest_size == 0:  # shake_128/256: hexdigest() needs a length
        raise RecoverError(
            f"hashing algorithm {algo!r} has no fixed digest size; Glance cannot use it"
        )
    return algo


class _Worker:
    """A helper thread that feeds chunks to one hash object, in order.

    hashlib releases the GIL while it hashes more than 2 KiB, so md5 here and the
    multihash on the caller's thread run on two cores at once: both digests cost
    about as much as the slower one alone (md5), not the sum of the two.
    """

    def __init__(self, digest: Any) -> None:
        self._digest = digest
        self._jobs: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="recover-md5", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._jobs.get()
            if chunk is None:
                return
            error: BaseException | None = None
            try:
                self._digest.update(chunk)
            except BaseException as exc:  # handed to the caller by wait()
                error = exc
            chunk = None  # hold no reference to the caller's buffer while idle
            self._done.put(error)

    def submit(self, chunk: bytes | memoryview) -> None:
        self._jobs.put(chunk)
        self._pending += 1

    def wait(self) -> None:
        while self._pending:
            error = self._done.get()
            self._pending -= 1
            if error is not None:
                raise error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._jobs.put(None)
            self._thread.join()


class Hasher:
    """md5 and the multihash, updated together: on two threads for chunks of 1 MiB or more.

    ``update(chunk)`` returns when both digests have taken the chunk. ``begin`` and
    ``end`` split it, so the caller can read the next chunk (into another buffer)
    while md5 finishes this one. Call ``close()`` (or ``result()``) when done.
    """

    def __init__(self, algo: str = DEFAULT_ALGO) -> None:
        self.algo = check_algo(algo)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._multi = hashlib.new(algo)
        self._worker: _Worker | None = None
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.begin(chunk)
        self.end()

    def begin(self, chunk: bytes | memoryview) -> None:
        """Hash ``chunk`` with the multihash; md5 may still be reading it on return."""
        if len(chunk) >= PARALLEL_MIN:
            if self._worker is None:
                self._worker = _Worker(self._md5)
            self._worker.submit(chunk)
        else:
            self.end()
            self._md5.update(chunk)
        self._multi.update(chunk)
        self.size += len(chunk)

    def end(self) -> None:
        """Wait until md5 has taken every chunk given so far (their buffers are free again)."""
        if self._worker is not None:
            self._worker.wait()

    def close(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.close()

    def result(self) -> Digests:
        self.close()
        return Digests(self._md5.hexdigest(), self.algo, self._multi.hexdigest(), self.size)


def copy_hashing(
    source: BinaryIO,
    dest_fd: int,
    algo: str = DEFAULT_ALGO,
    progress: Progress | None = None,
    *,
    hashing: bool = True,
) -> Digests:
    """Copy ``source`` to ``dest_fd`` once, hashing every byte; runs of zeros become holes.

    ``hashing=False`` copies without hashing (bytes that will be converted, whose digests
    nobody needs): the result then has the size only, ``md5`` and ``value`` empty.

    Three stages overlap: this thread reads a chunk and runs the multihash on it, md5 runs
    on a helper thread (``Hasher``), and a writer thread (:class:`_Writer`) writes it,
    over a ring of ``RING`` buffers. A write that waits for the disk (the kernel throttles
    a writer of many dirty pages, and every ``WRITE_BEHIND`` bytes the file is
    ``fdatasync``-ed meanwhile) then holds back neither the reading nor the hashing: for a
    stream from ssh, the sender keeps sending while the disk catches up.
    """
    hasher = Hasher(algo)
    ring = [bytearray(CHUNK) for _ in range(RING)]
    views = [memoryview(buffer) for buffer in ring]
    writer = _Writer(dest_fd)
    turn = 0
    completed = False
    try:
        writer.reusable(turn)
        n = source.readinto(ring[turn])  # type: ignore[attr-defined]
        copied = 0
        while n:
            chunk = views[turn][:n]
            copied += n
            if hashing:
                hasher.begin(chunk)
            # Sparse, like `cp --sparse=always`: raw _base files are mostly holes.
            writer.submit(turn, chunk, hole=n == CHUNK and ring[turn] == _ZERO)
            turn = (turn + 1) % RING
            writer.reusable(turn)
            n = source.readinto(ring[turn])  # type: ignore[attr-defined]
            hasher.end()  # md5 is done with the chunk before: at most one behind
            if progress is not None:
                progress(copied)
        completed = True
    finally:
        hasher.close()
        writer.close(raising=completed)
    os.ftruncate(dest_fd, copied)
    if not hashing:
        return Digests("", algo, "", copied)
    return hasher.result()


#: copy_hashing's buffers in flight (read, hashed, being written): 4 x CHUNK of memory.
RING = 4
_ZERO = bytes(CHUNK)


class _Writer:
    """Writes chunks to ``fd`` on a helper thread, in order, leaving holes for zero chunks.

    ``reusable(i)`` waits until buffer ``i``'s last chunk is written and raises the
    writer's error, if one happened; ``close`` waits for the rest and seeks over a final
    hole (the caller's ``ftruncate`` then gives the file its size).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.behind = _WriteBehind(fd)
        self.jobs: queue.SimpleQueue[tuple[int, memoryview, bool] | None] = queue.SimpleQueue()
        self.free = [threading.Event() for _ in range(RING)]
        for event in self.free:
            event.set()
        self.error: BaseException | None = None
        self.abort = False  # the copy failed: skip what is still queued
        self.hole = 0
        self.total = 0
        self.thread = threading.Thread(target=self._run, name="recover-write", daemon=True)
        self.thread.start()

    def submit(self, index: int, chunk: memoryview, *, hole: bool) -> None:
        self.free[index].clear()
        self.jobs.put((index, chunk, hole))

    def reusable(self, index: int) -> None:
        self.free[index].wait()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            index, chunk, hole = job
            try:
                if self.error is None and not self.abort:
                    self._write(chunk, hole)
            except BaseException as exc:  # handed to the reading thread by reusable/close
                self.error = exc
            finally:
                chunk = None  # type: ignore[assignment]  # no reference to a reused buffer
                self.free[index].set()

    def _write(self, chunk: memoryview, hole: bool) -> None:
        if hole:
            self.hole += len(chunk)
        else:
            if self.hole:
                os.lseek(self.fd, self.hole, os.SEEK_CUR)
                self.hole = 0
            _write_all(self.fd, chunk)
        self.total += len(chunk)
        self.behind.wrote(self.total)

    def close(self, *, raising: bool) -> None:
        """Finish the writes (``raising``: raise the writer's error), or skip them (not
        ``raising``: the copy failed anyway); stop the thread."""
        self.abort = not raising
        self.jobs.put(None)
        self.thread.join()
        self.behind.close()
        if raising and self.error is not None:
            raise self.error
        if raising and self.hole:
            os.lseek(self.fd, self.hole, os.SEEK_CUR)


class _WriteBehind:
    """``fdatasync`` a file being written on a helper thread, one at a time, every ``step`` bytes.

    The data reaches the disk while the copy goes on, and stays in the page cache
    (a caller may read it back, e.g. to convert it). Errors are left to the
    caller's own fsync.
    """

    def __init__(self, fd: int, step: int = WRITE_BEHIND) -> None:
        self.fd = fd
        self.step = step
        self.mark = 0
        self.thread: threading.Thread | None = None

    def wrote(self, total: int) -> None:
        if total - self.mark < self.step or (self.thread is not None and self.thread.is_alive()):
            return
        self.mark = total
        self.thread = threading.Thread(
            target=_sync_quietly, args=(self.fd,), name="recover-flush", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def hash_file(path: str, algo: str = DEFAULT_ALGO, progress: Progress | None = None) -> Digests:
    """Hash a file in one read (for a file qemu-img just wrote, or one already in the store).

    Two buffers take turns, as in :func:`copy_hashing`: the next chunk is read
    while md5 finishes the current one. Meanwhile a helper thread ``fdatasync``s
    the file: a file qemu-img just left in the page cache goes to disk while it is
    hashed, instead of during the caller's fsync afterwards (a clean file costs
    nothing). Its errors are left to that fsync.
    """
    hasher = Hasher(algo)
    buffers = (bytearray(HASH_CHUNK), bytearray(HASH_CHUNK))
    views = (memoryview(buffers[0]), memoryview(buffers[1]))
    turn = 0
    try:
        with open(path, "rb", buffering=0) as handle:
            flusher = threading.Thread(
                target=_sync_quietly, args=(handle.fileno(),), name="recover-flush", daemon=True
            )
            flusher.start()
            try:
                n = handle.readinto(buffers[0])
                while n:
                    hasher.begin(views[turn][:n])
                    turn = 1 - turn
                    n = handle.readinto(buffers[turn])
                    hasher.end()
                    if progress is not None:
                        progress(hasher.size)
            finally:
                flusher.join()
    finally:
        hasher.close()
    return hasher.result()


def _sync_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        getattr(os, "fdatasync", os.fsync)(fd)
