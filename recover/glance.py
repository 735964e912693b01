"""Read Glance image rows across the schema generations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Row

from recover.db.engine import Database
from recover.db.schema import GlanceSchema
from recover.nova import chunks, image_key

#: ``images.status`` values that leave an instance without its image.
ORPHAN_STATUSES = ("deleted", "pending_delete", "killed")
#: Properties nova sets on a snapshot (nova 34 ``nova/compute/api.py`` ``_create_image``).
SNAPSHOT_PROPERTY = ("image_type", "snapshot")


@dataclass(frozen=True)
class ChildCounts:
    """Soft-deleted child rows of an image that a recovery would bring back."""

    locations: int = 0
    properties: int = 0
    tags: int = 0
    members: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "locations": self.locations,
            "members": self.members,
            "properties": self.properties,
            "tags": self.tags,
        }


#: (report key, table) of the child rows of an image.
CHILD_TABLES = (
    ("locations", "image_locations"),
    ("properties", "image_properties"),
    ("tags", "image_tags"),
    ("members", "image_members"),
)


class ImageState(NamedTuple):
    """The two columns of an images row that say whether it is usable."""

    status: str
    deleted: Any


class GlanceReader:
    """Read-only queries against the Glance database."""

    def __init__(self, db: Database, schema: GlanceSchema) -> None:
        self.db = db
        self.schema = schema
        self.images = db.table("images")

    def image_rows(self, conn: Connection, image_ids: Iterable[str]) -> dict[str, Row[Any]]:
        """``image_key(id) -> row``: the keys are lower case, the rows as Glance has them.

        The ``IN`` list by the primary key, not ``LOWER(id)``: MySQL's collation of
        ``images.id`` ignores case already, and a function of the key defeats its index.
        """
        ids = sorted({image_key(i) for i in image_ids})
        found: dict[str, Row[Any]] = {}
        for batch in chunks(ids):
            for row in conn.execute(select(self.images).where(self.images.c.id.in_(batch))):
                found[image_key(row.id)] = row
        return found

    def image_states(self, conn: Connection, image_ids: Iterable[str]) -> dict[str, ImageState]:
        """``id -> (status, deleted)`` of the rows among ``image_ids``: two narrow columns.

        Enough for :meth:`orphan_status`; the whole rows are then read for the few
        orphans only (:meth:`image_rows`), not for every image an instance uses.
        """
        ids = sorted({image_key(i) for i in image_ids})
        images = self.images
        found: dict[str, ImageState] = {}
        for batch in chunks(ids):
            rows = conn.execute(
                select(images.c.id, images.c.status, images.c.deleted).where(images.c.id.in_(batch))
            )
            found.update((image_key(r[0]), ImageState(r[1], r[2])) for r in rows)
        return found

    @staticmethod
    def orphan_status(row: Row[Any] | ImageState | None) -> str | None:
        """The contract's status for an image an instance needs, or None when it is usable."""
        if row is None:
            return "missing"
        if row.status in ("pending_delete", "killed"):
            return str(row.status)
        if row.deleted or row.status == "deleted":
            return "deleted"
        return None

    def deleted_children(
        self, conn: Connection, image_ids: Iterable[str]
    ) -> dict[str, ChildCounts]:
        """Soft-deleted child rows per image (what a recovery brings back)."""
        return {i: deleted for i, (deleted, _left) in self.child_counts(conn, image_ids).items()}

    def child_counts(
        self, conn: Connection, image_ids: Iterable[str]
    ) -> dict[str, tuple[ChildCounts, ChildCounts]]:
        """``id -> (soft-deleted, every row left)`` of each child table: one statement per
        table (and ``IN`` batch), whatever the number of images.

        ``glance-manage db purge`` hard-deletes child rows (glance 33
        ``purge_deleted_rows``, at most ``max_rows`` per table and run): a table with no
        row left for a deleted image was purged, or never had any.
        """
        ids = sorted({image_key(i) for i in image_ids})
        deleted: dict[str, dict[str, int]] = {i: {} for i in ids}
        left: dict[str, dict[str, int]] = {i: {} for i in ids}
        for key, table_name in CHILD_TABLES:
            if not self.db.has_table(table_name) or not ids:
                continue
            table = self.db.table(table_name)
            soft = func.sum(case((table.c.deleted != 0, 1), else_=0))
            for batch in chunks(ids):
                rows = conn.execute(
                    select(table.c.image_id, func.count(), soft)
                    .where(table.c.image_id.in_(batch))
                    .group_by(table.c.image_id)
                )
                for image_id, count, soft_count in rows:
                    left[image_key(image_id)][key] = int(count)
                    if soft_count:
                        deleted[image_key(image_id)][key] = int(soft_count)
        return {i: (ChildCounts(**deleted[i]), ChildCounts(**left[i])) for i in ids}

    def location_values(
        self, conn: Connection, image_ids: Iterable[str]
    ) -> dict[str, list[tuple[str, str | None]]]:
        """Each image's location rows (deleted ones too), newest first: ``(value, meta_data)``."""
        ids = sorted({image_key(i) for i in image_ids})
        found: dict[str, list[tuple[str, str | None]]] = {}
        if not ids or not self.db.has_table("image_locations"):
            return found
        table = self.db.table("image_locations")
        meta = table.c.meta_data if "meta_data" in table.c else None
        columns = [table.c.image_id, table.c.value, *([meta] if meta is not None else [])]
        for batch in chunks(ids):
            rows = conn.execute(
                select(*columns).where(table.c.image_id.in_(batch)).order_by(table.c.id.desc())
            )
            for row in rows:
                found.setdefault(image_key(row[0]), []).append(
                    (str(row[1] or ""), row[2] if meta is not None else None)
                )
        return found

    def snapshot_ids(self, conn: Connection, image_ids: Iterable[str]) -> set[str]:
        """Images nova made by snapshotting an instance (property ``image_type=snapshot``)."""
        ids = sorted({image_key(i) for i in image_ids})
        if not ids or not self.db.has_table("image_properties"):
            return set()
        props = self.db.table("image_properties")
        found: set[str] = set()
        for batch in chunks(ids):
            found |= {
                image_key(r[0])
                for r in conn.execute(
                    select(props.c.image_id).where(
                        props.c.image_id.in_(batch),
                        props.c.name == SNAPSHOT_PROPERTY[0],
                        props.c.value == SNAPSHOT_PROPERTY[1],
                    )
                )
            }
        return found
