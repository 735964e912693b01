"""The Glance rows of an image recovery, as one plan.

What a delete changed (glance 33 ``image_destroy``; openstack-facts.md §1,
real-glance.md §3-4) is what we put back: the image row, its newest location,
and the properties, tags and members deleted with it. Integrity columns come
from the file actually placed in the store; glanceclient checks them on every
download (``os_hash_value`` first, else ``checksum``; ``size`` sets the length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from recover.glance import GlanceReader
from recover.images.digest import Digests
from recover.plan import Pending, Plan, Row, RowChange

#: image_update(purge_props=True) deletes properties in an earlier transaction than
#: image_destroy, so their deleted_at is a little before the image's.
PROPERTY_WINDOW = timedelta(seconds=5)
SAME_TIME = timedelta(seconds=1)


@dataclass(frozen=True)
class NewData:
    """The bytes now in the store, or None when the original file is reused as it is."""

    digests: Digests
    virtual_size: int | None
    disk_format: str


@dataclass(frozen=True)
class PendingData:
    """The bytes a rebuild will make, seen from a dry-run: their format and hash algorithm are
    known, their hashes and sizes are not (the file does not exist yet)."""

    disk_format: str
    algo: str


#: The columns only the new file can fill; a dry-run shows them as placeholders.
PENDING_COLUMNS = ("checksum", "size", "virtual_size", "os_hash_value")


def _within(value: datetime | None, anchor: datetime | None, before: timedelta) -> bool:
    if value is None or anchor is None:
        return False
    return anchor - before <= value <= anchor + SAME_TIME


def image_plan(
    glance: GlanceReader,
    image: Row,
    *,
    location_uri: str,
    new_data: NewData | PendingData | None,
    store_id: str | None,
    now: datetime,
    action: str,
    queued_for_upload: bool = False,
) -> Plan:
    """The rows back to live. ``queued_for_upload``: status ``queued`` with the integrity
    columns NULL, so Glance accepts an API upload of new bytes (real-glance.md §5, Q1/Q3),
    and the locations left alone: Glance writes a new one when the upload succeeds."""
    db = glance.db
    images = db.table("images")
    columns = set(images.c.keys())
    status = "queued" if queued_for_upload else "active"
    after = {**image, "status": status, "deleted": 0, "deleted_at": None, "updated_at": now}
    if queued_for_upload:
        integrity = ("checksum", "size", "virtual_size", "os_hash_algo", "os_hash_value")
        after.update({c: None for c in integrity if c in columns})
        if new_data is not None:
            after["disk_format"] = new_data.disk_format
    elif isinstance(new_data, PendingData):
        # Not the old values: replayed by hand, they would make the image active with stale
        # integrity columns (glanceclient then refuses every download) and no file.
        after.update({c: Pending(f"new_{c}") for c in PENDING_COLUMNS if c in columns})
        after["disk_format"] = new_data.disk_format
        if "os_hash_algo" in columns:
            after["os_hash_algo"] = new_data.algo
    elif new_data is not None:
        after["checksum"] = new_data.digests.md5
        after["size"] = new_data.digests.size
        after["disk_format"] = new_data.disk_format
        if new_data.virtual_size is not None:
            after["virtual_size"] = new_data.virtual_size
        if {"os_hash_algo", "os_hash_value"} <= columns:  # Rocky+; older schemas have neither
            after["os_hash_algo"] = new_data.digests.algo
            after["os_hash_value"] = new_data.digests.value
    changes = [RowChange("images", {"id": image["id"]}, before=image, after=after)]
    anchor = image["deleted_at"]
    counts: dict[str, int] = {}
    with db.engine.connect() as conn:
        if not queued_for_upload:
            changes.append(_location(conn, glance, image, location_uri, store_id, now))
        for table_name, window in (
            ("image_properties", PROPERTY_WINDOW),
            ("image_tags", SAME_TIME),
            ("image_members", SAME_TIME),
        ):
            if not db.has_table(table_name):
                continue
            t = db.table(table_name)
            query = select(t).where(t.c.image_id == image["id"], t.c.deleted != 0).order_by(t.c.id)
            revived = [
                dict(r)
                for r in conn.execute(query).mappings()
                if _within(r["deleted_at"], anchor, window)
            ]
            counts[table_name] = len(revived)
            changes += [
                RowChange(
                    table_name,
                    {"id": r["id"]},
                    before=r,
                    after={**r, "deleted": 0, "deleted_at": None},
                )
                for r in revived
            ]
    notes = [
        f"{action}; image row back to {status}",
        "restore the properties, tags and members deleted with it: "
        + ", ".join(f"{n} {t.removeprefix('image_')}" for t, n in counts.items()),
    ]
    if isinstance(new_data, PendingData) and not queued_for_upload:
        shown = ", ".join(Pending(f"new_{c}").sql for c in PENDING_COLUMNS if c in columns)
        notes.append(
            f"{shown} are computed from the new file, which a dry-run does not make: "
            "placeholders, not values, so this SQL replayed by hand fails at them and ends in "
            "ROLLBACK: it changes nothing; apply with the same command and --yes"
        )
    elif isinstance(new_data, NewData) and not queued_for_upload:
        notes.append(
            f"new data: {new_data.disk_format}, {new_data.digests.size} bytes, md5 "
            f"{new_data.digests.md5}, {new_data.digests.algo} {new_data.digests.value[:16]}..."
        )
    return Plan(
        title=f"recover image {image['id']} ({image['name']})",
        db=db,
        target="glance",
        changes=changes,
        notes=notes,
        subject={"kind": "image", "id": image["id"]},
    )


def _location(
    conn: Any, glance: GlanceReader, image: Row, uri: str, store_id: str | None, now: datetime
) -> RowChange:
    """The newest location row back to active at ``uri``, or a new one."""
    t = glance.db.table("image_locations")
    newest = (
        conn.execute(select(t).where(t.c.image_id == image["id"]).order_by(t.c.id.desc()).limit(1))
        .mappings()
        .first()
    )
    meta = json.dumps({"store": store_id}) if store_id else "{}"
    if newest is None:
        next_id = int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one()) + 1
        row = {
            "id": next_id,
            "image_id": image["id"],
            "value": uri,
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
            "deleted": 0,
            "meta_data": meta,
            "status": "active",
        }
        return RowChange("image_locations", {"id": next_id}, before=None, after=row)
    before = dict(newest)
    after = {
        **before,
        "value": uri,
        "status": "active",
        "deleted": 0,
        "deleted_at": None,
        "updated_at": now,
    }
    if store_id and "store" not in _meta(before.get("meta_data")):
        after["meta_data"] = json.dumps({**_meta(before.get("meta_data")), "store": store_id})
    return RowChange("image_locations", {"id": before["id"]}, before=before, after=after)


def _meta(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
