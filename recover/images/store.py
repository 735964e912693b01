"""Put a file into the Glance filesystem store atomically, never over an existing file.

A temporary name in the store directory (so the rename stays on one
filesystem), fsync, the owner/group/mode the store's files have, then
``link()`` to the final ``<image id>`` name, which fails instead of replacing a
file that appeared meanwhile (glance_store ``Store.add`` refuses to overwrite
too: ``Duplicate``). A per-image lock file serialises runs on one image and is removed
by its holder, so a finished run leaves nothing but the image file; a killed run leaves
only ``.recover-tmp-<id>-*`` files and its lock file, which the next run on the image removes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from recover.errors import RecoverError, RefusedError
from recover.fsutil import fsync_dir

TMP_PREFIX = ".recover-tmp-"
LOCK_PREFIX = ".recover-lock-"
DEFAULT_MODE = 0o640


def is_store_file(path: Path, store: Path, image_id: str) -> bool:
    """True when ``path`` is ``<store>/<image id>`` itself: paths from a database or a
    journal are untrusted, and recover never reads or removes anything else."""
    return (
        path.parent.resolve() == store.resolve() and path.name == image_id and not path.is_symlink()
    )


@dataclass(frozen=True)
class Ownership:
    uid: int
    gid: int
    mode: int


def store_ownership(store: Path) -> Ownership:
    """The owner, group and mode most of the store's image files have (else the dir's, 0640)."""
    seen: Counter[tuple[int, int, int]] = Counter()
    try:
        with os.scandir(store) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                seen[(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))] += 1
                if sum(seen.values()) >= 200:
                    break
    except OSError as exc:
        raise RecoverError(f"cannot read the store directory {store}: {exc.strerror}") from None
    if seen:
        uid, gid, mode = seen.most_common(1)[0][0]
        return Ownership(uid, gid, mode)
    st = store.stat()
    return Ownership(st.st_uid, st.st_gid, DEFAULT_MODE)


#: Attempts to take a lock that other runs keep releasing (and removing) under our feet.
LOCK_ATTEMPTS = 100


@contextmanager
def image_lock(store: Path, image_id: str) -> Iterator[None]:
    """Hold the store's lock for one image; a second run on the same image refuses at once.

    Why a file in the store, and why its holder removes it:

    * The store is what every run that could write ``<store>/<id>`` shares: two operators on
      one controller (each with their own ``$RECOVER_STATE_DIR``), or on two controllers that
      mount the same NFS store. A lock under the state directory would exclude neither.
    * ``flock`` on the store directory itself would serialise every recovery in the store (one
      conversion of hours blocks all others), and the Linux NFS client emulates ``flock`` with
      a POSIX write lock, which a directory (opened read-only) cannot take (EBADF).
    * So one file per image, removed *before* its ``flock`` is released (PRODUCT.md, safety
      model: a finished run leaves only the image and its journal). Removing a lock file races
      with a run that opened it just before: that run may lock the unlinked inode while a third
      run creates and locks a new file. Hence the classic check: once locked, the name must
      still be the inode we locked, else the lock is stale and we try again.

    A run killed while holding it leaves the file (the ``flock`` dies with the process); the
    next run on the image takes it over and removes it. On NFS, unlinking a file the client
    still has open renames it to ``.nfs*`` until the close just after: never left behind.
    """
    path = store / f"{LOCK_PREFIX}{image_id}"
    fd = -1
    for _ in range(LOCK_ATTEMPTS):
        fd = _open_lock(path, store)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked(image_id) from None
        except BaseException:
            os.close(fd)
            raise
        if _names(path, fd):
            break
        os.close(fd)  # a finished run removed it after we opened it: that lock is gone
        fd = -1
    if fd < 0:
        raise _locked(image_id)
    try:
        yield
    finally:
        try:
            if _names(path, fd):  # never remove a file another run made (say, after a person
                path.unlink()  # deleted ours while we held it)
        finally:
            os.close(fd)  # closing releases the flock, after the name is gone


def _open_lock(path: Path, store: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise RecoverError(f"cannot write to the store directory {store}: {exc.strerror}") from None


def _names(path: Path, fd: int) -> bool:
    """True when ``path`` is (still) the very file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _locked(image_id: str) -> RefusedError:
    return RefusedError(
        f"another recover run is working on image {image_id}",
        hint="nothing was changed; wait for it to finish",
    )


def remove_stale(store: Path, image_id: str) -> list[Path]:
    """Temporary files that killed runs left for this image (call with the image lock held)."""
    removed = []
    for leftover in store.glob(f"{TMP_PREFIX}{image_id}-*"):
        leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


class Staged:
    """A temporary file in the store, created 0600 so nobody reads a half-written image.

    ``by_reference``: the store only reads the bytes once (``rbd import``) and checks
    what it then holds against the hashes before COMMIT, so a local file that already
    is the image in the target format may be used where it is (:meth:`refer`) instead
    of being copied here first; :attr:`data_path` is where the bytes are.
    """

    def __init__(self, store: Path, image_id: str, *, by_reference: bool = False) -> None:
        self.store = store
        self.image_id = image_id
        self.by_reference = by_reference
        self.source: Path | None = None
        self.path = store / f"{TMP_PREFIX}{image_id}-{os.getpid()}"
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise RecoverError(
                f"cannot create a file in the store {store}: {exc.strerror}"
            ) from None

    @property
    def data_path(self) -> Path:
        """The file that holds the bytes: the one :meth:`refer` named, else :attr:`path`."""
        return self.source if self.source is not None else self.path

    def refer(self, source: Path) -> None:
        """The bytes are ``source`` itself (never removed by :meth:`discard`)."""
        if not self.by_reference:
            raise ValueError("this store needs its own copy of the bytes")
        self.source = source.absolute()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def finish(self, owner: Ownership) -> None:
        """fsync the data; give the file the store's owner and mode (still under its temp name)."""
        fd = self.fd if self.fd >= 0 else os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            if os.geteuid() == 0:
                os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, owner.mode)
        finally:
            if fd != self.fd:
                os.close(fd)
        self.close()

    def place(self, final: Path) -> None:
        """Give the file its final name, atomically and only if that name is free."""
        try:
            os.link(self.path, final)
        except FileExistsError:
            raise RefusedError(f"{final} appeared meanwhile; nothing was changed") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise RecoverError(f"the store {self.store} is full") from None
            raise RecoverError(f"cannot place {final}: {exc.strerror}") from None
        self.path.unlink(missing_ok=True)
        fsync_dir(self.store)
