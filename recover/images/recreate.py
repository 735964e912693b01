"""An ``images`` row purged by ``glance-manage db purge_images_table``, re-created under its id.

Glance keeps nothing of such an image; Nova keeps copies (``nova_copies``): the boot-time
image of ``nova_api.request_specs`` (name, owner, formats, original min_ram/min_disk,
checksum, size, created_at) and the instances' ``image_*`` system metadata (the
properties). glance-purge.md "What a recover tool should do" (b) is the recipe:

* only for an id that live instances still reference: re-creating a purged id is the id
  reuse of OSSN-0075 (glance-specs rocky ``mitigate-ossn-0075``), safe only when the
  instances that name the id are the ones booted from it;
* ``deleted = 0`` and ``deleted_at = NULL``: ``purge_images_table`` selects on
  ``deleted_at`` alone (glance ``glance/db/sqlalchemy/api.py``
  ``purge_deleted_rows_from_images``);
* visibility is not in any copy: ``private``, or ``shared`` with the other projects that
  run it as accepted members (what Nova does for a snapshot taken by another project,
  ``nova/compute/utils.py`` ``create_image``); every field that is not a copy of the
  original is named as guessed, in the report and the journal.

The database path inserts the rows (with the store's location) in one transaction, like
every other recovery; ``--via-api`` creates the image through ``POST /v2/images`` with its
id instead (:mod:`recover.images.stores.glance_api`), which Glance allows once the row is
gone (glance ``ImageRepo.add``: a primary-key collision only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from recover.db.engine import Database
from recover.errors import RefusedError
from recover.glance import GlanceReader
from recover.images.nova_copies import NovaCopies, Sourced
from recover.plan import Plan, Row, RowChange

#: What nobody kept: said in the report, so nobody looks for them.
NOT_KEPT = ("tags", "protected", "os_hidden", "the original os_hash_value")
#: Core fields that go into the row (the order of the report).
CORE = ("name", "owner", "disk_format", "container_format", "min_ram", "min_disk",
        "checksum", "size", "virtual_size", "created_at")  # fmt: skip
#: Members of a re-created shared image: the projects that run it use it already, so they
#: are accepted (a ``pending`` member can boot it but does not list it, glance
#: ``glance/db/sqlalchemy/api.py`` ``_make_conditions_from_filters``).
MEMBER_STATUS = "accepted"


@dataclass
class Recreated:
    """The purged image as far as Nova's copies know it, and where each field comes from."""

    image_id: str
    copies: NovaCopies
    #: Shaped like the images row Glance had (every column of the table), for the rules and
    #: the plan: the original checksum/size/virtual_size (None when no copy kept them).
    row: Row
    #: Every field the new row takes from outside: the copies, or a guess.
    fields: dict[str, Sourced]
    #: Projects other than the owner that run it: accepted members of a ``shared`` image.
    members: list[str]

    @property
    def visibility(self) -> str:
        return "shared" if self.members else "private"

    def guessed(self) -> list[str]:
        """``field: why`` of every field that is a guess, for the notes and the journal."""
        return [
            f"{name}={_shown(s.value)} ({s.note or s.source})"
            for name, s in self.fields.items()
            if s.guessed
        ]

    def report(self) -> dict[str, Any]:
        return {
            "image": self.image_id,
            "instances": list(self.copies.instances),
            "fields": {
                name: {
                    "value": _jsonable(s.value),
                    "source": s.source,
                    "guessed": s.guessed,
                    **({"note": s.note} if s.note else {}),
                }
                for name, s in self.fields.items()
            },
            "guessed": [n for n, s in self.fields.items() if s.guessed],
            "members": list(self.members),
            "not_kept": list(NOT_KEPT),
        }


def _shown(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _utc(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.replace(microsecond=0)


def recreated(
    glance: GlanceReader,
    image_id: str,
    copies: NovaCopies,
    now: datetime,
    disk_format: str | None = None,
) -> Recreated:
    """What the re-created row holds, or a refusal (no live user, copies that disagree)."""
    if not copies.instances:
        raise RefusedError(
            f"image {image_id} has no images row (purged) and no live instance references it: "
            "recover re-creates a purged id only for the instances still booted from it",
            hint="re-using a purged image id for other data is OSSN-0075; upload a new image",
        )
    conflict = copies.conflict_error()
    if conflict is not None:
        raise conflict
    core = dict(copies.core)
    fields: dict[str, Sourced] = {}
    for name in CORE:
        if name in core and core[name].value is not None:
            fields[name] = core[name]
    if "created_at" in fields and isinstance(fields["created_at"].value, str):
        # An oslo DateTimeField primitive ("2026-11-28T10:00:00Z"); the column is naive UTC.
        moment = _utc(fields["created_at"].value)
        fields["created_at"] = (
            Sourced(moment, fields["created_at"].source)
            if moment is not None
            else Sourced(now, "now", True, "the copy's created_at is not a date")
        )
    if disk_format and "disk_format" not in fields:
        fields["disk_format"] = Sourced(disk_format, "--disk-format")
    if "disk_format" not in fields:
        raise RefusedError(
            f"image {image_id}: no copy kept its disk_format (no request spec, no system metadata)",
            hint="pass --disk-format raw or qcow2 (the format of the bytes it should hold)",
        )
    if "container_format" not in fields:
        fields["container_format"] = Sourced(
            "bare", "default", True, "no copy kept it; bare is what Nova's images use"
        )
    for name in ("min_ram", "min_disk"):
        if name not in fields:
            # glance-purge.md (b)2: sysmeta image_min_disk is max(min_disk, root_gb), so
            # the true value is at most the smallest root disk: 0 boots it everywhere it ran.
            fields[name] = Sourced(0, "default", True, f"no copy kept {name}: 0")
    projects = sorted({p for p in copies.projects if p})
    if "owner" not in fields:
        if len(projects) != 1:
            raise RefusedError(
                f"image {image_id}: no copy kept its owner and its instances belong to "
                f"{len(projects)} projects ({', '.join(projects) or 'none'})",
                hint="nothing was changed; without the request specs the owner is unknown",
            )
        fields["owner"] = Sourced(
            projects[0], "instances.project_id", True, "the project of every instance using it"
        )
    owner = fields["owner"].value
    members = [p for p in projects if p != owner]
    fields["visibility"] = Sourced(
        "shared" if members else "private",
        "default",
        True,
        "no copy keeps visibility; "
        + (f"shared with {', '.join(members)}, the other projects that run it"
           if members else "only its owner's project runs it")
        + ": `openstack image set --public` (admin) if it was public",
    )  # fmt: skip
    if "created_at" not in fields:
        fields["created_at"] = Sourced(now, "now", True, "no copy kept it")
    if "name" not in fields:
        fields["name"] = Sourced(None, "none", True, "no copy kept its name")
    row = _row_shape(glance, image_id, fields)
    return Recreated(image_id, copies, row, fields, members)


def _row_shape(glance: GlanceReader, image_id: str, fields: dict[str, Sourced]) -> Row:
    """A row with every column of this Glance's ``images`` table, as a deleted image's would be."""
    columns = glance.images.c.keys()
    row: Row = dict.fromkeys(columns)
    for name in columns:
        if name in fields:
            row[name] = fields[name].value
    visibility = fields["visibility"].value
    row.update(id=image_id, status="deleted", deleted=1, deleted_at=None, updated_at=None)
    if "visibility" in columns:
        row["visibility"] = visibility
    if "is_public" in columns:  # Mitaka-Newton Glance: no visibility column (glance-legacy)
        row["is_public"] = 0
    for flag in ("protected", "os_hidden"):
        if flag in columns:
            row[flag] = 0
    return row


def finish_plan(plan: Plan, glance: GlanceReader, made: Recreated, now: datetime) -> Plan:
    """Turn :func:`recover.images.rows.image_plan`'s update of the (absent) row into an
    insert, before the inserts of its location and properties (the properties rebuilt from
    Nova's copies, ``image_plan``'s ``rebuilt``), and add the members: undo deletes them in
    the reverse order."""
    first = plan.changes[0]
    assert first.table == "images" and first.after is not None
    after = {**first.after, "deleted": 0, "deleted_at": None, "updated_at": now}
    changes = [RowChange("images", {"id": made.image_id}, before=None, after=after)]
    # No row of the image is left to revive: what follows are inserts (location, properties).
    assert all(c.before is None for c in plan.changes[1:]), plan.changes
    changes += plan.changes[1:]
    db = glance.db
    with db.engine.connect() as conn:
        if made.members and db.has_table("image_members"):
            members = [{"image_id": made.image_id, "member": project, "can_share": 0}
                       for project in made.members]  # fmt: skip
            if "status" in db.table("image_members").c:
                members = [{**m, "status": MEMBER_STATUS} for m in members]
            changes += _inserts(conn, glance, "image_members", members, now)
    plan.changes = changes
    plan.title = f"re-create purged image {made.image_id} ({_shown(after.get('name'))})"
    plan.subject = {**plan.subject, "recreated": made.report()}
    # image_plan's first line ends "; image row back to <status>": there was no row.
    action = plan.notes[0].rsplit("; image row back to ", 1)
    plan.notes = [
        f"{action[0]}; a new images row, {after['status']}",
        f"the images row was purged: a new row from Nova's copies of instances "
        f"{', '.join(made.copies.instances)}, deleted=0, deleted_at=NULL (a purge selects on "
        "deleted_at)",
        f"members: {', '.join(made.members) if made.members else 'none'} "
        f"(visibility {made.visibility})",
        *(f"GUESSED: {g}" for g in made.guessed()),
        f"not kept by any copy, not restored: {', '.join(NOT_KEPT)}",
        *plan.notes[2:],
    ]
    return plan


def _inserts(
    conn: Any, glance: GlanceReader, table_name: str, rows: list[Row], now: datetime
) -> list[RowChange]:
    """New rows with the next free ids (the ids are the key the journal and undo name)."""
    table = glance.db.table(table_name)
    first = int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1
    changes = []
    for n, values in enumerate(rows):
        row = {**values, "id": first + n, "created_at": now, "updated_at": now,
               "deleted_at": None, "deleted": 0}  # fmt: skip
        changes.append(RowChange(table_name, {"id": row["id"]}, before=None, after=row))
    return changes


#: The tables of an image's rows, parent first (deletes go in the reverse order).
IMAGE_TABLES = ("images", "image_properties", "image_members", "image_tags", "image_locations")


def rows_of(db: Database, image_id: str) -> list[RowChange]:
    """Every row of ``image_id`` now in Glance, as inserts (parent first): what Glance wrote
    for a re-created image, which the journal records and ``undo`` deletes."""
    found: list[RowChange] = []
    with db.engine.connect() as conn:
        for name in IMAGE_TABLES:
            if not db.has_table(name):
                continue
            table = db.table(name)
            column = table.c.id if name == "images" else table.c.image_id
            key = ["id"] if name == "images" else [c.name for c in table.primary_key.columns]
            for row in conn.execute(select(table).where(column == image_id)).mappings():
                values = dict(row)
                found.append(RowChange(name, {k: values[k] for k in key}, None, values))
    return found


def created_since(db: Database, image_id: str, since: datetime) -> list[RowChange]:
    """The rows of an image a run created through the API and did not record (it was killed):
    only when its images row is live and was created after ``since``; else none (an image
    someone else created under that id meanwhile is not ours to remove)."""
    rows = rows_of(db, image_id)
    image = next((c.after for c in rows if c.table == "images"), None)
    if image is None or image["deleted"] or image["created_at"] is None:
        return []
    if image["created_at"] < since.replace(microsecond=0) - timedelta(seconds=1):
        return []
    return rows
