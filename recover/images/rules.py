"""What bytes may become a deleted image: the size and hash rules of issue 10.

One object per recovery, shared by every source and store: a source that
cannot be this image's data is refused (``--accept-new-bytes`` turns the
refusal into a loud warning, kept in :attr:`ImageRules.overridden`).
"""

from __future__ import annotations

from typing import Any

from recover.errors import RefusedError
from recover.images import qemu
from recover.images.digest import Digests
from recover.images.rows import NewData

#: Uploads qemu-img reads as raw, which nova keeps byte for byte as ``_base``: fetch_to_raw
#: converts only what qemu-img does not call raw (nova/virt/images.py fetch_to_raw), and
#: treats iso and the AMI formats as raw (do_image_deep_inspection, nova 2024.1+).
RAW_UPLOADS = ("raw", "iso", "ami", "ari", "aki")
#: qemu-img reports a raw file's virtual size rounded up to whole 512-byte sectors (qemu-img
#: info of a 1000-byte raw file: virtual-size 1024; a conversion keeps that size), while the row
#: holds an odd-sized raw upload's byte count.
SECTOR = 512
NEW_BYTES_HINT = (
    "use a complete copy of the _base file; --accept-new-bytes stores these bytes anyway, "
    "reported as NEW data"
)


class ImageRules:
    def __init__(self, image_id: str, row: dict[str, Any], accept_new_bytes: bool) -> None:
        self.image_id = image_id
        self.row = row
        self.accept_new_bytes = accept_new_bytes
        #: Refusals --accept-new-bytes turned into warnings.
        self.overridden: list[str] = []
        #: The original upload's md5 and where it comes from: the row's checksum, else the
        #: request spec's copy of it (recover.images.nova_copies); None when neither has one.
        self.original: tuple[str, str] | None = (
            (str(row["checksum"]), "images.checksum") if row.get("checksum") else None
        )

    def check_info(self, info: qemu.ImageInfo, where: str) -> qemu.ImageInfo:
        """Refuse data that is not a whole image of this image's virtual size."""
        if info.backing_file:
            raise RefusedError(
                f"{where} has a backing file ({info.backing_file}); it is not a whole image"
            )
        if info.corrupt:
            raise RefusedError(f"qemu-img reports {where} as corrupt")
        # min_disk is no size of the image: it is the root disk a flavor needs to boot it (GiB,
        # images are routinely smaller). The image's own size is the rule: converting between
        # formats keeps the virtual size exactly, so any other size is another disk.
        expected = self.expected_virtual_size()
        if expected is not None and info.virtual_size not in (
            expected[0],
            -(-expected[0] // SECTOR) * SECTOR,
        ):
            size, basis = expected
            what = (
                "a partial copy (an scp or a download still running?)"
                if info.virtual_size < size
                else "a different or resized disk"
            )
            self.refuse_or_accept(
                f"{where} has a virtual size of {info.virtual_size} bytes, but image "
                f"{self.image_id} had {size} ({basis}): {what}, not this image's data"
            )
        return info

    def expected_virtual_size(self) -> tuple[int, str] | None:
        """The virtual size the image had, and where that comes from; None when unknown."""
        row = self.row
        if row.get("virtual_size"):
            return int(row["virtual_size"]), "its row's virtual_size"
        if row.get("disk_format") in RAW_UPLOADS and row.get("size"):
            return int(row["size"]), f"the size of its {row['disk_format']} upload"
        return None

    def identical_upload(self, disk_format: str) -> bool:
        """True when the new file must be the upload itself: a raw upload stored as raw."""
        return self.row.get("disk_format") in RAW_UPLOADS and disk_format == "raw"

    def check_new_bytes(self, new_data: NewData, where: str) -> None:
        """A raw upload's ``_base`` is the upload, byte for byte: so must the new file be."""
        if not self.identical_upload(new_data.disk_format):
            return  # e.g. qcow2 from a raw _base: other bytes, by nature; the size rule applies
        row, found = self.row, new_data.digests
        wrong = []
        if row.get("size") is not None and row["size"] != found.size:
            wrong.append(f"size {found.size} bytes where the row says {row['size']}")
        if row.get("checksum") and row["checksum"] != found.md5:
            wrong.append(f"md5 {found.md5} where the row says {row['checksum']}")
        elif (
            row.get("os_hash_value")
            and row.get("os_hash_algo") == found.algo
            and row["os_hash_value"] != found.value
        ):
            wrong.append(f"another {found.algo} than the row's")
        if wrong:
            self.refuse_or_accept(
                f"the bytes from {where} are not image {self.image_id}'s {row['disk_format']} "
                f"upload ({'; '.join(wrong)}): nova keeps a raw upload byte for byte in _base, "
                "so this copy is partial or damaged"
            )

    def unchanged_report(self) -> dict[str, Any]:
        """:meth:`bytes_report` when the store still holds the original data (un-delete)."""
        row = self.row
        original = {k: row.get(k) for k in ("checksum", "size", "virtual_size")}
        return {
            "identical": True,
            "compared_with": "the data left in the store (un-deleted, hashes unchanged)",
            "new_bytes_accepted": False,
            "overridden": [],
            "original": original,
            "new": original,
        }

    def refuse_or_accept(self, message: str) -> None:
        if not self.accept_new_bytes:
            raise RefusedError(message, hint=NEW_BYTES_HINT)
        self.overridden.append(message)

    def matches_row(self, digests: Digests) -> bool:
        """Are these the bytes the row describes (size, multihash, md5; unset columns pass)?"""
        return not self.mismatches(digests)

    def mismatches(self, digests: Digests) -> list[str]:
        """How ``digests`` differ from the row (empty: they match), for an error message."""
        row, wrong = self.row, []
        if row.get("size") is not None and row["size"] != digests.size:
            wrong.append(f"size {digests.size} where the row says {row['size']}")
        if row.get("checksum") and row["checksum"] != digests.md5:
            wrong.append(f"md5 {digests.md5} where the row says {row['checksum']}")
        if row.get("os_hash_value") and row["os_hash_value"] != digests.value:
            wrong.append(f"another {digests.algo} than the row's")
        return wrong

    def bytes_report(self, new_data: NewData) -> dict[str, Any]:
        """Whether the new file is the original upload, with both sets of values (the report)."""
        row, found = self.row, new_data.digests
        return {
            # md5 equal to the original upload's: the bytes are the original, else NEW.
            "identical": None if self.original is None else self.original[0] == found.md5,
            "compared_with": None if self.original is None else self.original[1],
            "new_bytes_accepted": bool(self.overridden),
            "overridden": list(self.overridden),
            "original": {
                "checksum": row.get("checksum"),
                "size": row.get("size"),
                "virtual_size": row.get("virtual_size"),
            },
            "new": {
                "checksum": found.md5,
                "size": found.size,
                "virtual_size": new_data.virtual_size,
            },
        }
