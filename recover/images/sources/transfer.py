"""A copy of ``_base`` reached through a :class:`~recover.images.transport.Transport`.

Shared by :mod:`.base_file` (local) and :mod:`.compute` (SSH): the file is
checked with qemu-img where it is, converted on the node when it has
qemu-img (only the compact image crosses the network), else brought once and
checked and converted here.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from recover import faults
from recover.errors import RecoverError, RefusedError
from recover.images import qemu
from recover.images.digest import Digests, copy_hashing, hash_file
from recover.images.rows import NewData
from recover.images.rules import ImageRules
from recover.images.store import Staged
from recover.images.transport import LocalTransport, Transport
from recover.progress import Display

#: Glance disk_format -> the qemu-img format that writes it (qemu calls VHD "vpc").
WRITABLE = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vdi": "vdi",
    "vhd": "vpc",
    "vhdx": "vhdx",
}
#: nova's fetch_to_raw writes these names while downloading/converting (nova/virt/images.py).
IN_PROGRESS_SUFFIXES = (".part", ".converted")


class TransportSource:
    """``path`` on ``transport``: a whole, finished copy of the image, checked on creation."""

    def __init__(self, transport: Transport, path: str, rules: ImageRules, image_id: str) -> None:
        self.transport = transport
        self.path = path
        self.rules = rules
        self.image_id = image_id
        self.label = f"{path} on {transport.label}"
        self.info = self._check()

    def _check(self) -> qemu.ImageInfo | None:
        """Refuse a source that is not a whole, finished copy of this image.

        None when the node has no qemu-img: the bytes are then checked here on arrival.
        """
        if self.path.endswith(IN_PROGRESS_SUFFIXES):
            raise RefusedError(
                f"{self.path} is a file nova is still writing; use the finished _base file"
            )
        transport = self.transport
        if not isinstance(transport, LocalTransport) and not transport.has_qemu_img():
            return None
        return self.rules.check_info(transport.qemu_img_info(self.path), self.label)

    def close(self) -> None:
        self.transport.close()

    def describe(self, target_format: str) -> str:
        shown = self.info.format if self.info is not None else "format checked on arrival"
        return f"rebuild from {self.label} ({shown} -> {target_format})"

    def produce(self, staged: Staged, target_format: str, algo: str, display: Display) -> NewData:
        target = WRITABLE[target_format]
        transport, path, info = self.transport, self.path, self.info
        if info is None:
            digests = self._arrive_unchecked(staged, target, algo, display)
        elif (
            info.format == target and staged.by_reference and isinstance(transport, LocalTransport)
        ):
            # A store that only reads the bytes (rbd import): hash the local file where it
            # is rather than copying it first (one pass over the data, no disk write). The
            # store reads back what it then holds and compares it with these hashes before
            # COMMIT, so a file that changes after this pass is caught there.
            digests = _hash(path, algo, display)
            staged.refer(Path(path))
        elif info.format == target:
            digests = self._copy(path, staged, algo, display)
        elif isinstance(transport, LocalTransport):
            staged.close()
            faults.point("convert")
            display.phase(f"converting to {target}")
            qemu.convert(path, info.format, staged.path, target)
            digests = _hash(str(staged.path), algo, display)
        else:
            digests = self._convert_remotely(staged, info, target, algo, display)
        display.close()
        checked = qemu.info(staged.data_path, target)
        if checked.format != target:
            raise RecoverError(f"the converted file is {checked.format}, not {target}")
        return NewData(digests=digests, virtual_size=checked.virtual_size,
                       disk_format=target_format)  # fmt: skip

    def _copy(self, path: str, staged: Staged, algo: str, display: Display) -> Digests:
        """Bring ``path`` here once; every byte is hashed (md5 + ``algo``) as it arrives."""
        digests = self._bring(path, staged, algo, display, None)
        assert digests is not None  # hashed: no target to convert to
        return digests

    def _bring(
        self, path: str, staged: Staged, algo: str, display: Display, target: str | None
    ) -> Digests | None:
        """:meth:`_copy`; with ``target`` (checked here: no qemu-img there), None and no
        hashing when the first bytes already show they will be converted to ``target``
        (those digests would be thrown away: for a sparse raw _base, gigabytes of zeros)."""
        # The size for the bar only on a terminal: one more (multiplexed) stat otherwise saved.
        total = self.transport.stat_size(path) if display.enabled else None
        display.phase(f"copying from {self.transport.label}", total)
        with self.transport.open_read(path) as stream:
            head = stream.peek(4)[:4]  # type: ignore[attr-defined]  # a BufferedReader
            hashing = target is None or not _will_convert(head, target)
            digests = copy_hashing(stream, staged.fd, algo, display, hashing=hashing)
        return digests if hashing else None

    def _convert_remotely(
        self, staged: Staged, info: qemu.ImageInfo, target: str, algo: str, display: Display
    ) -> Digests:
        """Convert next to _base on the compute node: only the compact image crosses the network."""
        transport, path = self.transport, self.path
        directory = posixpath.dirname(path)
        size = transport.stat_size(path) or info.virtual_size
        if transport.free_bytes(directory) < size:
            raise RecoverError(
                f"not enough free space in {directory} on {transport.label} to convert "
                f"({size} bytes needed)"
            )
        remote_tmp = posixpath.join(directory, f".recover-tmp-{self.image_id}.{target}")
        try:
            faults.point("convert")
            display.phase(f"converting to {target} on {transport.label}")
            transport.convert(path, info.format, remote_tmp, target)
            return self._copy(remote_tmp, staged, algo, display)
        finally:
            transport.remove(remote_tmp)

    def _arrive_unchecked(
        self, staged: Staged, target: str, algo: str, display: Display
    ) -> Digests:
        """No qemu-img on the node: bring the bytes once, check them here, convert here."""
        digests = self._bring(self.path, staged, algo, display, target)
        where = f"{self.path} from {self.transport.label}"
        info = self.rules.check_info(qemu.info(staged.path), where)
        if info.format == target:
            # Not hashed on arrival only if the first bytes said otherwise (qemu-img probes
            # more than them): hash what arrived, once.
            return digests if digests is not None else _hash(str(staged.path), algo, display)
        source = Staged(staged.store, f"{self.image_id}-src")
        try:
            source.close()
            staged.close()
            os.replace(staged.path, source.path)
            # qemu-img keeps the mode of a file it overwrites: never world-readable meanwhile.
            os.close(os.open(staged.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            display.phase(f"converting to {target}")
            qemu.convert(source.path, info.format, staged.path, target)
        finally:
            source.discard()
        return _hash(str(staged.path), algo, display)


#: The first bytes of a qcow2 file (qemu block/qcow2.h QCOW_MAGIC: "QFI" then 0xfb), which
#: qemu-img's format probe looks for; a raw image is whatever does not match a format.
QCOW2_MAGIC = b"QFI\xfb"


def _will_convert(head: bytes, target: str) -> bool:
    """Whether bytes starting with ``head`` are surely not ``target`` already (only the
    raw/qcow2 pair is told apart; for any other target: no, hash them)."""
    if target == "qcow2":
        return head != QCOW2_MAGIC
    if target == "raw":
        return head == QCOW2_MAGIC
    return False


def _hash(path: str, algo: str, display: Display) -> Digests:
    """Hash a local file (one read of it), its progress on ``display``."""
    display.phase("hashing", os.path.getsize(path))
    return hash_file(path, algo, display)
