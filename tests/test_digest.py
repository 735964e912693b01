"""``recover.images.digest.copy_hashing``: bytes from a real pipe, hashed once as they arrive,
written by its writer thread with holes for zero chunks."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from recover.images.digest import CHUNK, RING, copy_hashing
from recover.images.transport import STREAM_BUFFER


def _expected(data: bytes) -> tuple[str, str, int]:
    return hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest(), len(data)


def _stream(path: Path) -> tuple[subprocess.Popen[bytes], BinaryIO]:
    """``cat path`` behind a pipe, buffered as ``SshTransport.open_read`` buffers ssh's."""
    proc = subprocess.Popen(["cat", "--", str(path)], stdout=subprocess.PIPE, bufsize=0)
    return proc, cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, proc.stdout), STREAM_BUFFER))


def test_copy_hashing_from_a_pipe_writes_the_same_bytes_sparsely(tmp_path: Path) -> None:
    # Data, then more zero chunks than the ring has buffers (a hole), data, a short tail,
    # and a zero chunk at the very end (the file still gets its full size).
    data = (
        os.urandom(CHUNK + 5)
        + bytes(CHUNK * (RING + 3) - 5)
        + os.urandom(3 * CHUNK)
        + os.urandom(12345)
        + bytes(CHUNK)
    )
    source = tmp_path / "source"
    source.write_bytes(data)
    target = tmp_path / "target"
    seen: list[int] = []
    threads = threading.active_count()
    proc, stream = _stream(source)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        digests = copy_hashing(stream, fd, "sha512", seen.append)
    finally:
        os.close(fd)
        stream.close()
        proc.wait()
    assert (digests.md5, digests.value, digests.size) == _expected(data)
    assert target.read_bytes() == data
    assert seen[-1] == len(data) and seen == sorted(seen)
    # The RING + 2 whole zero chunks in the middle are holes, not written blocks (one
    # chunk of slack for the file system's own allocation).
    assert target.stat().st_blocks * 512 <= len(data) - (RING + 1) * CHUNK
    assert threading.active_count() == threads  # md5 and writer threads ended


def test_a_write_error_is_raised_and_no_thread_is_left(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * CHUNK))
    target = tmp_path / "target"
    target.write_bytes(b"")
    threads = threading.active_count()
    proc, stream = _stream(source)
    fd = os.open(target, os.O_RDONLY)  # every write fails: EBADF
    try:
        with pytest.raises(OSError) as caught:
            copy_hashing(stream, fd, "sha512")
    finally:
        os.close(fd)
        stream.close()
        proc.wait()
    assert caught.value.errno == errno.EBADF
    assert threading.active_count() == threads
