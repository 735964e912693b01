"""Reading the text files an operator names (``--config``, nova.conf, glance-api.conf, journals)
without trusting their size or kind.

``/dev/zero``, ``/dev/urandom``, a FIFO whose writer never stops or a file of 1 GB would
otherwise be read whole into memory (or forever). :func:`read_bounded` opens the file
without blocking, refuses anything but a regular file (a symlink to one is fine), refuses
a file above ``limit`` bytes before reading it, and never reads more than ``limit + 1``
bytes even if the file grows meanwhile.

The limits, with their reason:

* :data:`CONFIG_LIMIT`, 16 MiB: nova.conf and glance-api.conf are tens of KB on real
  deployments; even the complete generated samples, every option with its help text, are
  far smaller (measured with ``oslo-config-generator``: 398 KB for nova 34.0.0 with the
  16 namespaces of ``etc/nova/nova-config-generator.conf`` installed, 132 KB for glance
  33.0.0's glance-api namespaces).
* :data:`JOURNAL_LIMIT`, 64 MiB: a journal holds the before- and after-image of every row
  it changes, about 740 bytes a row (measured: a deleted private Mitaka flavor with 500
  extra specs and access for 5000 projects gives a 4.06 MB journal for 5501 rows). Glance
  caps what an image carries (``image_property_quota``, ``image_member_quota`` and
  ``image_tag_quota`` 128, ``image_location_quota`` 10 by default), Nova's flavor access
  list is not capped: 64 MiB is room for about 90 000 rows, 16 times that flavor.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from recover.errors import RecoverError

CONFIG_LIMIT = 16 * 1024 * 1024
JOURNAL_LIMIT = 64 * 1024 * 1024

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def read_bounded(
    path: str | Path, what: str, limit: int, error: type[RecoverError] = RecoverError
) -> str:
    """The UTF-8 text of the regular file ``path``, if it holds at most ``limit`` bytes.

    Raises ``error("<what> <path> is not a regular file (a FIFO)")`` and the like,
    ``error("<what> <path> is larger than <limit> ...")``; the errors the caller already
    reports in its own words pass through unchanged: ``FileNotFoundError``,
    ``IsADirectoryError``, ``PermissionError`` and ``UnicodeDecodeError``.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # what open(2) says of a unix socket
            raise error(
                f"{what} {path} is not a regular file (a socket)",
                hint="give the path of the file itself",
            ) from None
        raise error(f"{what} {path} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # os.open opens a directory read-only without a word
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
            raise error(
                f"{what} {path} is not a regular file ({kind})",
                hint="give the path of the file itself",
            )
        if info.st_size > limit:
            raise error(
                f"{what} {path} is larger than {_mib(limit)} ({info.st_size} bytes): not read"
            )
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # it grew between fstat and read
            raise error(f"{what} {path} is larger than {_mib(limit)}: not read")
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise error(f"{what} {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return data.decode("utf-8")
