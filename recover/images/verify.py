"""``recover verify``: does the Glance row agree with the bytes, and does Glance serve them?

The same checks glanceclient makes on every download (``os_hash_value`` with
``os_hash_algo``, else ``checksum``; the length from ``size``), plus what the
API needs to serve the image at all (real-glance.md §4: ``status`` active,
``deleted`` 0, a location with ``status`` active and ``deleted`` 0) and that
the data is in the format the row claims (nova's format inspection refuses
a mismatch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import select

from recover.config import Settings
from recover.db.cloud import open_glance
from recover.errors import NotFoundError
from recover.images import api, qemu
from recover.images.ceph import CephNameError, CephNotFoundError, parse_location
from recover.images.digest import DEFAULT_ALGO, Digests, hash_file
from recover.images.recovery import WRITABLE, validate_uuid
from recover.images.rows import meta_store, restored_status
from recover.images.store import is_store_file
from recover.images.stores.rbd import client as rbd_client
from recover.text import printable


@dataclass
class Verification:
    image_id: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    #: What the API should say: ``deactivated`` for an image recovered as such (rows.py).
    api_status: str = "active"

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.image_id,
            "ok": self.ok,
            "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
        }


def _path_of(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", "filesystem"):
        return None
    return Path(unquote(parsed.path))


def verify_image(settings: Settings, image_id: str) -> Verification:
    image_id = validate_uuid(image_id)
    use_api = api.configured(settings)
    glance = open_glance(settings)
    try:
        with glance.db.engine.connect() as conn:
            images = glance.images
            row = conn.execute(select(images).where(images.c.id == image_id)).mappings().first()
            if row is None:
                raise NotFoundError(f"image {image_id} has no images row")
            locations = glance.db.table("image_locations")
            live = (
                conn.execute(
                    select(locations)
                    .where(
                        locations.c.image_id == image_id,
                        locations.c.deleted == 0,
                        locations.c.status == "active",
                    )
                    .order_by(locations.c.id)
                )
                .mappings()
                .all()
            )
    finally:
        glance.db.dispose()
    result = Verification(image_id, api_status=restored_status(row))
    # deactivated: served to admins only, as the admin who deactivated it wanted (rows.py).
    result.add("status", row["status"] in ("active", "deactivated") and not row["deleted"],
               f"status={row['status']} deleted={int(row['deleted'])}")  # fmt: skip
    result.add("location", bool(live), f"{len(live)} active location(s)")
    if not live:
        return _with_api(result, settings, None) if use_api else result
    # The newest filesystem location (an image may also keep an http or rbd one).
    location = next((r for r in reversed(live) if _path_of(r["value"]) is not None), live[-1])
    if str(location["value"] or "").startswith("rbd://"):
        digests = _verify_rbd(result, settings, dict(row), str(location["value"]))
        return _with_api(result, settings, digests) if use_api else result
    path = _path_of(location["value"])
    if path is None:
        result.add("file", False, f"{printable(location['value'])} is not a filesystem location")
        return result
    dirs = [Path(d).resolve() for d in settings.image_dirs()]
    if not any(is_store_file(path, d, image_id) for d in dirs):
        where = " or ".join(f"{d}/{image_id}" for d in dirs)
        result.add("file", False, f"location {printable(path)} is not {where}")
        return result
    if settings.glance_file_stores:
        _check_store_id(result, settings, dict(location), path)
    if not path.is_file():
        if use_api:
            result.add("file", True, f"{path} is not on this machine: checked through the API")
            return _with_api(result, settings, None)
        result.add("file", False, f"{path} does not exist")
        return result
    algo = row.get("os_hash_algo") or settings.hashing_algorithm or DEFAULT_ALGO
    digests = hash_file(str(path), algo)
    result.add("size", row["size"] == digests.size, f"row {row['size']}, file {digests.size}")
    if row.get("os_hash_value"):
        result.add(algo, row["os_hash_value"] == digests.value,
                   f"row {row['os_hash_value'][:16]}..., file {digests.value[:16]}...")  # fmt: skip
    result.add(
        "checksum", row["checksum"] == digests.md5, f"row {row['checksum']}, file {digests.md5}"
    )
    expected = WRITABLE.get(row["disk_format"] or "")
    if expected is not None:
        found = qemu.info(path).format
        result.add("disk_format", found == expected, f"row {row['disk_format']}, data {found}")
    return _with_api(result, settings, digests) if use_api else result


def _verify_rbd(
    result: Verification, settings: Settings, row: dict[str, Any], uri: str
) -> Digests | None:
    """An image in an RBD store (PRODUCT.md "Ceph RBD stores"): its location names this
    cluster (never the all-zero fsid), ``<pool>/<id>@snap`` exists and is protected (Nova
    clones it, glance_store deletes it by unprotecting), and its bytes are the row's."""
    try:
        location = parse_location(uri)
    except CephNameError as exc:
        # No data to check at all: the same failure as any location that names no file.
        result.add("file", False, f"{printable(uri)} is not a filesystem location, nor an "
                   f"RBD one Glance can read ({exc.message})")  # fmt: skip
        return None
    if location.pool is None or location.fsid is None or location.snapshot is None:
        result.add("location", False, f"{printable(uri)} has no fsid/pool/snapshot: Nova "
                   "cannot clone it (nova/storage/rbd_utils.py parse_url)")  # fmt: skip
        return None
    ceph = rbd_client(settings)
    fsid = ceph.fsid()
    result.add("fsid", location.fsid == fsid,
               f"location {location.fsid}, cluster {fsid}")  # fmt: skip
    spec = f"{location.pool}/{location.image}@{location.snapshot}"
    try:
        snaps = ceph.snaps(location.pool, location.image)
    except CephNotFoundError:
        result.add("snap", False, f"{location.pool}/{location.image} does not exist")
        return None
    ours = [s for s in snaps if s.namespace == "user" and s.name == location.snapshot]
    protected = bool(ours and ours[0].protected)
    state = "protected" if protected else ("not protected" if ours else "missing")
    result.add("snap", protected, f"{spec} {state}")
    if not ours:
        return None
    algo = row.get("os_hash_algo") or settings.hashing_algorithm or DEFAULT_ALGO
    digests = ceph.export_digests(location.pool, location.image, location.snapshot, algo)
    result.add("size", row["size"] == digests.size, f"row {row['size']}, {spec} {digests.size}")
    if row.get("os_hash_value"):
        shown = f"row {row['os_hash_value'][:16]}..., {spec} {digests.value[:16]}..."
        result.add(algo, row["os_hash_value"] == digests.value, shown)
    result.add(
        "checksum", row["checksum"] == digests.md5, f"row {row['checksum']}, {spec} {digests.md5}"
    )
    return digests


def _check_store_id(
    result: Verification, settings: Settings, location: Mapping[str, Any], path: Path
) -> None:
    """Multi-store: Glance hands a location to the driver its ``meta_data["store"]`` names
    (glance_store ``multi_backend.get_from_backend``); a ``file://`` URL under another
    store's id (say an ``http`` one) is answered with HTTP 500 on download."""
    stored = meta_store(location.get("meta_data"))
    actual = settings.file_store_of(path.parent)
    if stored is None:
        result.add("location store", True,
                   f"no store id; Glance fills in {actual!r} from the URL")  # fmt: skip
        return
    result.add(
        "location store",
        stored == actual,
        f"meta_data store {printable(stored)!r}, file in store {actual!r}",
    )


def _with_api(result: Verification, settings: Settings, digests: Digests | None) -> Verification:
    """What Nova will see: the API's view of the image and a verified download."""
    for check in api.verify(api.client(settings), result.image_id, digests, result.api_status):
        result.add(check.name, check.ok, check.detail)
    return result


def render(result: Verification) -> str:
    lines = [f"image {result.image_id}: {'OK' if result.ok else 'FAILED'}"]
    lines += [f"  {'ok ' if ok else 'BAD'}  {name}: {detail}" for name, ok, detail in result.checks]
    return "\n".join(lines) + "\n"
