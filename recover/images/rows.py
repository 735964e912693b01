"""The Glance rows of an image recovery, as one plan.

What a delete changed (glance 33 ``image_destroy``; openstack-facts.md §1,
real-glance.md §3-4) is what we put back: the image row, its newest location,
and the properties, tags and members deleted with it. Integrity columns come
from the file actually placed in the store; glanceclient checks them on every
download (``os_hash_value`` first, else ``checksum``; ``size`` sets the length).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import func, select

from recover.glance import GlanceReader
from recover.images.digest import Digests
from recover.images.nova_copies import Sourced
from recover.plan import Pending, Plan, Row, RowChange
from recover.text import printable

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


def restored_status(image: Mapping[Any, Any]) -> str:
    """``active``, or ``deactivated`` for a row an admin had deactivated before it was deleted.

    Deactivation is an admin's decision to block downloads (glance 33
    ``glance/api/v2/image_data.py`` refuses non-admins); bringing the image back must not
    quietly undo it. ``openstack image set --activate`` (POST .../actions/reactivate) does,
    when the admin wants it.
    """
    return "deactivated" if image["status"] == "deactivated" else "active"


@dataclass(frozen=True)
class PendingData:
    """The bytes a rebuild will make, seen from a dry-run: their format and hash algorithm are
    known, their hashes and sizes are not (the file does not exist yet)."""

    disk_format: str
    algo: str


#: The columns only the new file can fill; a dry-run shows them as placeholders.
PENDING_COLUMNS = ("checksum", "size", "virtual_size", "os_hash_value")


def within(value: datetime | None, anchor: datetime | None, before: timedelta) -> bool:
    if value is None or anchor is None:
        return False
    return anchor - before <= value <= anchor + SAME_TIME


def image_plan(
    glance: GlanceReader,
    image: Row,
    *,
    location_uri: str,
    location_kind: str = "file",
    new_data: NewData | PendingData | None,
    store_id: str | None,
    now: datetime,
    action: str,
    queued_for_upload: bool = False,
    store_dirs: tuple[str, ...] = (),
    rebuilt: Mapping[str, Sourced] | None = None,
) -> Plan:
    """The rows back to live. ``queued_for_upload``: status ``queued`` with the integrity
    columns NULL, so Glance accepts an API upload of new bytes (real-glance.md §5, Q1/Q3),
    and the locations left alone: Glance writes a new one when the upload succeeds.

    ``rebuilt``: properties from Nova's copies (:mod:`recover.images.nova_copies`) for the
    names no row was revived for (a purge deleted them): each is UPSERTed per
    ``(image_id, name)``, the unique key ``ix_image_properties_image_id_name`` (which does
    not include ``deleted``, so a soft-deleted row of that name is reused, as Glance's own
    ``_set_properties_for_image`` does). Every row this revives, and every live child row of
    the image that kept a ``deleted_at``, gets ``deleted_at = NULL``: ``glance-manage db
    purge`` selects on ``deleted_at`` alone (glance 33 ``purge_deleted_rows``)."""
    db = glance.db
    images = db.table("images")
    columns = set(images.c.keys())
    status = "queued" if queued_for_upload else restored_status(image)
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
    sources: dict[str, Sourced] = {}
    property_notes: list[str] = []
    location_notes: list[str] = []
    with db.engine.connect() as conn:
        if not queued_for_upload:
            location, location_notes = _location(
                conn, glance, image, location_uri, store_id, store_dirs, now, location_kind
            )
            changes.append(location)
        for table_name, window in (
            ("image_properties", PROPERTY_WINDOW),
            ("image_tags", SAME_TIME),
            ("image_members", SAME_TIME),
        ):
            if not db.has_table(table_name):
                continue
            t = db.table(table_name)
            rows = child_rows(conn, glance, table_name, image["id"])
            revived = [r for r in rows if r["deleted"] and within(r["deleted_at"], anchor, window)]
            # A live row that kept a deleted_at (Glance revives a re-added property without
            # clearing it, glance 33 _image_property_update) is deleted by the next purge.
            stale = [r for r in rows if not r["deleted"] and r["deleted_at"] is not None]
            counts[table_name] = len(revived)
            changes += [
                RowChange(
                    table_name,
                    {"id": r["id"]},
                    before=r,
                    after={**r, "deleted": 0, "deleted_at": None},
                )
                for r in (*revived, *stale)
            ]
            if table_name == "image_properties":
                for r in revived:
                    sources[r["name"]] = Sourced(
                        r["value"], f"glance image_properties row {r['id']} (deleted with it)"
                    )
                for r in stale:
                    sources[r["name"]] = Sourced(
                        r["value"], f"glance image_properties row {r['id']}"
                    )
                filled, property_notes = _rebuilt_properties(
                    conn, t, image["id"], rows, rebuilt or {}, sources, now
                )
                changes += filled
    notes = [
        f"{action}; image row back to {status}",
        "restore the properties, tags and members deleted with it: "
        + ", ".join(f"{n} {t.removeprefix('image_')}" for t, n in counts.items()),
        *location_notes,
        *property_notes,
    ]
    if restored_status(image) == "deactivated":
        notes.append(
            "it was deactivated before it was deleted and stays deactivated (downloads for "
            "admins only); `openstack image set --activate` lifts that"
        )
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
    subject: dict[str, Any] = {"kind": "image", "id": image["id"]}
    if sources:
        subject["properties"] = {k: v.as_dict() for k, v in sorted(sources.items())}
    return Plan(
        title=f"recover image {image['id']} ({image['name']})",
        db=db,
        target="glance",
        changes=changes,
        notes=notes,
        subject=subject,
    )


def child_rows(conn: Any, glance: GlanceReader, table_name: str, image_id: str) -> list[Row]:
    """Every row of ``table_name`` of the image, live or soft-deleted, by id."""
    if not glance.db.has_table(table_name):
        return []
    t = glance.db.table(table_name)
    query = select(t).where(t.c.image_id == image_id).order_by(t.c.id)
    return [dict(r) for r in conn.execute(query).mappings()]


def _rebuilt_properties(
    conn: Any,
    table: Any,
    image_id: str,
    rows: list[Row],
    rebuilt: Mapping[str, Sourced],
    sources: dict[str, Sourced],
    now: datetime,
) -> tuple[list[RowChange], list[str]]:
    """The UPSERTs of the properties rebuilt from Nova that no revived row gives back.

    ``sources`` gets each one's source; the notes name every one (the dry-run's SQL
    comments, the table report and the journal carry them).
    """
    by_name = {r["name"]: r for r in rows}
    changes: list[RowChange] = []
    notes: list[str] = []
    next_id = None
    for name, copy in sorted(rebuilt.items()):
        if name in sources:
            continue  # Glance's own row, revived, wins over Nova's copy
        value = str(copy.value)
        existing = by_name.get(name)
        if existing is not None and not existing["deleted"]:
            continue  # a live row: Glance's current value
        if existing is not None:
            after = {**existing, "value": value, "deleted": 0, "deleted_at": None,
                     "updated_at": now}  # fmt: skip
            changes.append(RowChange(table.name, {"id": existing["id"]}, existing, after))
        else:
            if next_id is None:
                query = select(func.coalesce(func.max(table.c.id), 0))
                next_id = int(conn.execute(query).scalar_one()) + 1
            row = {"id": next_id, "image_id": image_id, "name": name, "value": value,
                   "created_at": now, "updated_at": now, "deleted_at": None,
                   "deleted": 0}  # fmt: skip
            changes.append(RowChange(table.name, {"id": next_id}, None, row))
            next_id += 1
        sources[name] = copy
        flag = (
            f" (GUESSED: {copy.note})" if copy.guessed else (f" ({copy.note})" if copy.note else "")
        )
        notes.append(f"property {printable(name)} = {printable(value)} from {copy.source}{flag}")
    if notes:
        notes.insert(
            0,
            f"{len(notes)} purged propert{'y' if len(notes) == 1 else 'ies'} rebuilt from "
            "Nova's copies (glance-manage db purge removed the rows):",
        )
    return changes, notes


def _location(
    conn: Any,
    glance: GlanceReader,
    image: Row,
    uri: str,
    store_id: str | None,
    store_dirs: tuple[str, ...],
    now: datetime,
    kind: str = "file",
) -> tuple[RowChange, list[str]]:
    """The newest location row of the store the file is placed in, back to active at
    ``uri`` with that store's id; a new row when the image had none in that store.

    Rows of other stores (an ``http`` or ``rbd`` location next to a ``file`` one) stay
    exactly as Glance left them: rewriting one to a ``file://`` URL while its
    ``meta_data`` still names its own store makes Glance hand the URL to that store's
    driver, and the download fails (glance 33 ``glance/location.py``; glance_store
    ``multi_backend.get_from_backend`` picks the driver by ``meta_data["store"]``).
    """
    t = glance.db.table("image_locations")
    rows = [
        dict(r)
        for r in conn.execute(
            select(t).where(t.c.image_id == image["id"]).order_by(t.c.id.desc())
        ).mappings()
    ]
    ours = [r for r in rows if _in_store(r, store_id, store_dirs, kind)]
    others = [r for r in rows if not _in_store(r, store_id, store_dirs, kind)]
    notes = []
    if others:
        described = ", ".join(
            f"{r['id']} ({_store_label(r)})" for r in sorted(others, key=lambda r: r["id"])
        )
        notes.append(f"location rows of other stores left as Glance left them: {described}")
    meta = json.dumps({"store": store_id}) if store_id else "{}"
    if not ours:
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
        where = (
            f" of store {store_id!r}"
            if store_id
            else (" in the RBD store" if kind == "rbd" else " in the filesystem store")
        )
        if rows:
            notes.append(f"the image had no location{where}: a new location row {next_id}")
        return RowChange("image_locations", {"id": next_id}, before=None, after=row), notes
    before = ours[0]
    after = {
        **before,
        "value": uri,
        "status": "active",
        "deleted": 0,
        "deleted_at": None,
        "updated_at": now,
    }
    if store_id:
        after["meta_data"] = json.dumps({**_meta(before.get("meta_data")), "store": store_id})
    if before["value"] != uri:
        notes.append(
            f"location {before['id']} was {printable(before['value'])}; the file is now placed at "
            f"{printable(uri)}"
        )
    return RowChange("image_locations", {"id": before["id"]}, before=before, after=after), notes


def _file_path(value: str | None) -> PurePosixPath | None:
    parsed = urlparse(value or "")
    if parsed.scheme not in ("file", "filesystem"):
        return None
    return PurePosixPath(unquote(parsed.path))


def _in_store(
    row: Row, store_id: str | None, store_dirs: tuple[str, ...], kind: str = "file"
) -> bool:
    """Is this location row one of the store the file goes to?

    Multi-store: its ``meta_data["store"]``; a row without one (written before
    ``enabled_backends``) by its URL, as Glance back-fills it (glance 33
    ``glance/common/store_utils.py`` ``update_store_in_locations``). Single store:
    any ``file://`` row, the only filesystem store there is. An RBD store: its
    ``rbd://`` rows, the same way.
    """
    if kind == "rbd":
        is_rbd = urlparse(row.get("value") or "").scheme == "rbd"
        stored = _meta(row.get("meta_data")).get("store") if store_id is not None else None
        return bool(stored == store_id) if stored is not None else is_rbd
    path = _file_path(row.get("value"))
    if store_id is None:
        return path is not None
    stored = _meta(row.get("meta_data")).get("store")
    if stored is not None:
        return bool(stored == store_id)
    return path is not None and any(str(path.parent) == str(PurePosixPath(d)) for d in store_dirs)


def _store_label(row: Row) -> str:
    stored = _meta(row.get("meta_data")).get("store")
    if stored is not None:
        return f"store {printable(str(stored))}"
    scheme = urlparse(row.get("value") or "").scheme
    return f"{printable(scheme) or 'unknown'} location"


def meta_store(text: str | None) -> str | None:
    """The multi-store backend id a location's ``meta_data`` JSON names (``{"store": id}``)."""
    stored = _meta(text).get("store")
    return None if stored is None else str(stored)


def _meta(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
