"""Hash image bytes while they flow: md5 (``checksum``), the multihash and the size, in one pass.

Glance computes the same three while it writes a file (glance_store 5.7.0
``_drivers/filesystem.py`` ``Store.add``; glance 33 ``glance/location.py``
``_upload_to_store``), and glanceclient checks them on every download.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from recover.errors import RecoverError

CHUNK = 4 * 1024 * 1024
DEFAULT_ALGO = "sha512"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Digests:
    md5: str
    algo: str
    value: str
    size: int


def check_algo(algo: str) -> str:
    if algo not in hashlib.algorithms_available:
        raise RecoverError(f"hashing algorithm {algo!r} is not available here")
    return algo


class Hasher:
    """md5 and the multihash, updated together."""

    def __init__(self, algo: str = DEFAULT_ALGO) -> None:
        self.algo = check_algo(algo)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._multi = hashlib.new(algo)
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._md5.update(chunk)
        self._multi.update(chunk)
        self.size += len(chunk)

    def result(self) -> Digests:
        return Digests(self._md5.hexdigest(), self.algo, self._multi.hexdigest(), self.size)


def copy_hashing(
    source: BinaryIO, dest_fd: int, algo: str = DEFAULT_ALGO, progress: Progress | None = None
) -> Digests:
    """Copy ``source`` to ``dest_fd`` once, hashing every byte; runs of zeros become holes."""
    hasher = Hasher(algo)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    zero = bytes(CHUNK)
    pending_hole = 0
    while True:
        n = source.readinto(buffer)  # type: ignore[attr-defined]
        if not n:
            break
        chunk = view[:n]
        hasher.update(chunk)
        if n == CHUNK and buffer == zero:
            pending_hole += n  # sparse, like `cp --sparse=always`: raw _base files are mostly holes
        else:
            if pending_hole:
                os.lseek(dest_fd, pending_hole, os.SEEK_CUR)
                pending_hole = 0
            _write_all(dest_fd, chunk)
        if progress is not None:
            progress(hasher.size)
    if pending_hole:
        os.lseek(dest_fd, pending_hole, os.SEEK_CUR)
    os.ftruncate(dest_fd, hasher.size)
    return hasher.result()


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def hash_file(path: str, algo: str = DEFAULT_ALGO, progress: Progress | None = None) -> Digests:
    """Hash a file in one read (for a file qemu-img just wrote, or one already in the store)."""
    hasher = Hasher(algo)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            hasher.update(view[:n])
            if progress is not None:
                progress(hasher.size)
    return hasher.result()
