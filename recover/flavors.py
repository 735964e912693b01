"""Build the plan that brings a deleted flavor back under its original internal id and flavorid.

* Pre-Newton (flavors in the cell's ``instance_types``, soft-deleted): un-delete
  the row and the extra specs and projects deleted together with it; a row
  archived into ``shadow_*`` is moved back.
* Newton+ (``nova_api.flavors``, hard-deleted): re-insert the flavor and its
  extra specs from the live instances' ``instance_extra.flavor``; projects of a
  private flavor from the instances that use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from recover.config import Settings
from recover.db.cloud import NovaCloud, open_nova
from recover.errors import NotFoundError, RefusedError
from recover.inventory import flavor_store
from recover.nova import CellReader, FlavorBlobError, FlavorDef, parse_flavor_blob
from recover.plan import ConcurrentChangeError, Plan, Row, RowChange

#: Mitaka's flavor_destroy soft-deletes the children right after the flavor, in
#: one transaction, so they share its deleted_at give or take the clock tick.
CHILD_TOLERANCE = timedelta(seconds=5)
PREFIXES = ("id", "flavorid", "name")


@dataclass
class Candidate:
    """A deleted flavor that matches what the operator typed."""

    id: int
    flavorid: str | None
    name: str | None
    cell: CellReader
    #: ``instance_types`` / ``shadow_instance_types`` row (pre-Newton), else None.
    table: str | None = None
    row: Row | None = None
    #: instance uuid -> its embedded definition (Newton+).
    definitions: dict[str, FlavorDef] = field(default_factory=dict)
    #: instance uuid -> project id, of live instances using it.
    users: dict[str, str | None] = field(default_factory=dict)

    def describe(self) -> str:
        where = self.table or "instance_extra.flavor"
        return f"id {self.id} (flavorid {self.flavorid!r}, name {self.name!r}, from {where})"


def _utf8(token: str) -> bool:
    """False for arguments that were not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_token(token: str) -> tuple[str | None, str]:
    """``id:7`` / ``flavorid:7`` / ``name:m1.small`` pin the kind; plain text matches any."""
    kind, sep, rest = token.partition(":")
    if sep and kind in PREFIXES:
        return kind, rest
    return None, token


def _is_id(token: str) -> bool:
    # str.isdigit() also accepts "²" and "١", which int() rejects or reads as 1.
    return token.isascii() and token.isdigit()


def _matches(
    token: str, kind: str | None, cid: int, flavorid: str | None, name: str | None
) -> bool:
    if kind in (None, "id") and _is_id(token) and int(token) == cid:
        return True
    if kind in (None, "flavorid") and flavorid == token:
        return True
    return kind in (None, "name") and name == token


def _users(
    conn: Connection, cell: CellReader, ids: Iterable[int]
) -> dict[int, dict[str, str | None]]:
    i = cell.instances
    wanted = sorted(set(ids))
    found: dict[int, dict[str, str | None]] = {}
    if not wanted:
        return found
    rows = conn.execute(
        select(i.c.instance_type_id, i.c.uuid, i.c.project_id).where(
            i.c.deleted == 0, i.c.instance_type_id.in_(wanted)
        )
    )
    for flavor_id, uuid, project in rows:
        found.setdefault(int(flavor_id), {})[uuid] = project
    return found


class FlavorFinder:
    """Find the deleted flavor FLAVOR names, in every cell."""

    def __init__(self, nova: NovaCloud) -> None:
        self.nova = nova
        self.store = flavor_store(nova)
        self.warnings: list[str] = []

    def find(self, token: str) -> Candidate:
        if not token or "\x00" in token or len(token) > 255 or not _utf8(token):
            raise NotFoundError(f"{token[:40]!r} is not a flavor id, flavorid or name")
        kind, value = parse_token(token)
        candidates = (
            self._legacy(kind, value) if self.store == "cell" else self._modern(kind, value)
        )
        ids = {c.id for c in candidates}
        if len(ids) > 1:
            listing = "; ".join(c.describe() for c in sorted(candidates, key=lambda c: c.id))
            raise RefusedError(
                f"{token!r} matches {len(ids)} deleted flavors: {listing}",
                hint=f"name one by its internal id, e.g. `recover flavor id:{min(ids)}`",
            )
        if candidates:
            return candidates[0]
        live = self._live(kind, value)
        if live:
            raise RefusedError(f"flavor {token!r} is live ({live}): nothing to recover")
        raise NotFoundError(f"no deleted flavor matches {token!r}", hint=self._searched())

    def _searched(self) -> str:
        cells = ", ".join(c.name for c in self.nova.cells)
        if self.store == "cell":
            return f"searched instance_types and shadow_instance_types in cells {cells}"
        return (
            "searched the instance_extra.flavor of live instances whose flavor is missing from "
            f"nova_api.flavors, in cells {cells}"
        )

    def _legacy(self, kind: str | None, value: str) -> list[Candidate]:
        found: list[Candidate] = []
        for cell in self.nova.cells:
            with cell.connect() as conn:
                referenced = cell.referenced_flavor_ids(conn)
                rows: list[tuple[str, Row]] = []
                for table_name in ("instance_types", "shadow_instance_types"):
                    if not cell.db.has_table(table_name):
                        continue
                    t = cell.db.table(table_name)
                    clauses = [t.c.flavorid == value, t.c.name == value]
                    if _is_id(value):
                        clauses.append(t.c.id == int(value))
                    query = select(t).where(t.c.deleted != 0, or_(*clauses))
                    rows += [(table_name, dict(r)) for r in conn.execute(query).mappings()]
                users = _users(conn, cell, [r["id"] for _, r in rows])
            for table_name, row in rows:
                if _matches(value, kind, row["id"], row["flavorid"], row["name"]):
                    found.append(Candidate(
                        id=row["id"], flavorid=row["flavorid"], name=row["name"], cell=cell,
                        table=table_name, row=row, users=users.get(row["id"], {}),
                    ))  # fmt: skip
            # A row live instances still use beats deleted copies nobody uses.
            used = [c for c in found if c.id in referenced]
            if used:
                found = used
        return found

    def _modern(self, kind: str | None, value: str) -> list[Candidate]:
        api = self.nova.api
        assert api is not None
        by_id: dict[int, Candidate] = {}
        referenced: dict[str, set[int]] = {}
        for cell in self.nova.cells:
            with cell.connect() as conn:
                referenced[cell.name] = cell.referenced_flavor_ids(conn)
        with api.db.engine.connect() as conn:
            live = api.live_flavor_ids(conn, set().union(*referenced.values()))
        for cell in self.nova.cells:
            missing = referenced[cell.name] - live
            if not missing:
                continue
            with cell.connect() as conn:
                blobs = cell.flavor_blobs(conn, missing)
                users = _users(conn, cell, missing)
            for uuid, flavor_id, text in blobs:
                try:
                    blob = parse_flavor_blob(text)
                except FlavorBlobError as exc:
                    self.warnings.append(f"instance {uuid} in cell {cell.name}: {exc}; skipped")
                    continue
                definition = next((d for d in blob.values() if d and d.id == flavor_id), None)
                if definition is None:
                    continue
                candidate = by_id.get(flavor_id)
                if candidate is None:
                    candidate = by_id[flavor_id] = Candidate(
                        id=flavor_id, flavorid=definition.flavorid, name=definition.name, cell=cell
                    )
                candidate.definitions[uuid] = definition
                candidate.users[uuid] = users.get(flavor_id, {}).get(uuid)
            for flavor_id, owners in users.items():
                if flavor_id in by_id:
                    by_id[flavor_id].users.update(owners)
        return [
            c
            for c in by_id.values()
            if any(_matches(value, kind, c.id, d.flavorid, d.name) for d in c.definitions.values())
        ]

    def _live(self, kind: str | None, value: str) -> str | None:
        tables: list[tuple[Any, str, str | None]] = []
        if self.store == "api" and self.nova.api is not None:
            tables.append((self.nova.api.db, "flavors", None))
        for cell in self.nova.cells:
            if cell.db.has_table("instance_types"):
                tables.append((cell.db, "instance_types", "deleted"))
        for db, name, deleted in tables:
            t = db.table(name)
            with db.engine.connect() as conn:
                query = select(t.c.id, t.c.flavorid, t.c.name)
                if deleted:
                    query = query.where(t.c.deleted == 0)
                for row in conn.execute(query):
                    if _matches(value, kind, row.id, row.flavorid, row.name):
                        return f"id {row.id}, flavorid {row.flavorid!r}, name {row.name!r}"
        return None


# --- pre-Newton: un-delete -----------------------------------------------------------------


def _deleted_children(
    conn: Connection, cell: CellReader, child: str, column: str, parent: Row
) -> list[tuple[str, Row]]:
    """Rows of ``child`` (live or archived) deleted together with ``parent``; per key the newest."""
    found: list[tuple[str, Row]] = []
    for table_name in (child, f"shadow_{child}"):
        if not cell.db.has_table(table_name):
            continue
        t = cell.db.table(table_name)
        query = select(t).where(t.c.instance_type_id == parent["id"], t.c.deleted != 0)
        found += [
            (table_name, dict(r))
            for r in conn.execute(query).mappings()
            if _deleted_with(r["deleted_at"], parent["deleted_at"])
        ]
    newest: dict[Any, tuple[str, Row]] = {}
    for pair in sorted(found, key=lambda p: (p[1]["deleted_at"], p[1]["id"])):
        newest[pair[1][column]] = pair
    return sorted(newest.values(), key=lambda p: p[1]["id"])


def _restore(cell: CellReader, table: str, row: Row) -> list[RowChange]:
    """Changes that make ``row`` (found in ``table``) live again in its live table."""
    live_table = table.removeprefix("shadow_")
    after = {**row, "deleted": 0, "deleted_at": None}
    if table == live_table:
        return [RowChange(table, {"id": row["id"]}, before=row, after=after)]
    columns = set(cell.db.table(live_table).c.keys())
    return [
        RowChange(
            live_table,
            {"id": row["id"]},
            before=None,
            after={k: v for k, v in after.items() if k in columns},
        ),
        RowChange(table, {"id": row["id"]}, before=row, after=None),
    ]


def legacy_plan(candidate: Candidate) -> Plan:
    cell, row = candidate.cell, candidate.row
    assert row is not None and candidate.table is not None
    db = cell.db
    types = db.table("instance_types")
    with db.engine.connect() as conn:
        clashes = conn.execute(
            select(types.c.id, types.c.name, types.c.flavorid).where(
                types.c.deleted == 0,
                or_(types.c.name == row["name"], types.c.flavorid == row["flavorid"]),
            )
        ).all()
        children = {
            child: _deleted_children(conn, cell, child, column, row)
            for child, column in (
                ("instance_type_extra_specs", "key"),
                ("instance_type_projects", "project_id"),
            )
        }
    for clash in clashes:
        if clash.id == row["id"]:
            raise ConcurrentChangeError(
                f"flavor id {row['id']} was recovered meanwhile, by another run",
                hint="nothing was changed by this one",
            )
        what = "name" if clash.name == row["name"] else "flavorid"
        raise RefusedError(
            f"a live flavor already has {what} {row[what]!r} (id {clash.id})",
            hint="un-deleting would break nova's unique key; rename or delete the live one first",
        )
    changes = _restore(cell, candidate.table, row)
    for rows in children.values():
        for table_name, child_row in rows:
            changes += _restore(cell, table_name, child_row)
    action = (
        "move back from shadow_instance_types"
        if candidate.table.startswith("shadow_")
        else "un-delete"
    )
    notes = [
        f"{action}: flavor id {row['id']} flavorid {row['flavorid']!r} name {row['name']!r}, "
        f"deleted at {row['deleted_at']}",
        f"with {len(children['instance_type_extra_specs'])} extra spec(s) and "
        f"{len(children['instance_type_projects'])} project(s) deleted together with it",
    ]
    return Plan(
        title=f"recover flavor {row['flavorid']} (id {row['id']}, {row['name']})",
        db=db,
        target=f"cell:{cell.name}",
        changes=changes,
        notes=notes,
        subject={"kind": "flavor", "id": row["id"]},
    )


def _deleted_with(child_at: datetime | None, parent_at: datetime | None) -> bool:
    if child_at is None or parent_at is None:
        return False
    return abs(child_at - parent_at) <= CHILD_TOLERANCE


# --- Newton+: re-insert from instance_extra.flavor ------------------------------------------


def choose_definition(candidate: Candidate, from_instance: str | None) -> tuple[FlavorDef, str]:
    defs = candidate.definitions
    if not defs:
        raise NotFoundError(f"flavor id {candidate.id}: no live instance embeds its definition")
    if from_instance is not None:
        if from_instance not in defs:
            users = ", ".join(sorted(defs))
            raise RefusedError(
                f"instance {from_instance} does not use flavor id {candidate.id}",
                hint=f"instances that do: {users}",
            )
        return defs[from_instance], from_instance
    first_uuid = min(defs)
    first = defs[first_uuid]
    differing = {u: d for u, d in defs.items() if d != first}
    if differing:
        fields = sorted({f for d in differing.values() for f in first.differences(d)})
        raise RefusedError(
            f"instances disagree about flavor id {candidate.id} (differ in {', '.join(fields)}): "
            f"{first_uuid} vs {', '.join(sorted(differing))}",
            hint="name the instance to trust with --from-instance UUID",
        )
    return first, first_uuid


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _next_id(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1


def modern_plan(nova: NovaCloud, candidate: Candidate, from_instance: str | None) -> Plan:
    api = nova.api
    assert api is not None
    definition, trusted = choose_definition(candidate, from_instance)
    db = api.db
    flavors, specs, projects = (
        db.table(n) for n in ("flavors", "flavor_extra_specs", "flavor_projects")
    )
    with db.engine.connect() as conn:
        clash = conn.execute(
            select(flavors.c.id, flavors.c.name, flavors.c.flavorid).where(
                or_(
                    flavors.c.id == definition.id,
                    flavors.c.name == definition.name,
                    flavors.c.flavorid == definition.flavorid,
                )
            )
        ).first()
        next_spec, next_project = _next_id(conn, specs), _next_id(conn, projects)
    if clash is not None and (clash.id, clash.name, clash.flavorid) == (
        definition.id, definition.name, definition.flavorid,
    ):  # fmt: skip
        raise ConcurrentChangeError(
            f"flavor id {definition.id} was recovered meanwhile, by another run",
            hint="nothing was changed by this one",
        )
    if clash is not None:
        what = (
            "id"
            if clash.id == definition.id
            else "name"
            if clash.name == definition.name
            else "flavorid"
        )
        value = {"id": definition.id, "name": definition.name, "flavorid": definition.flavorid}[
            what
        ]
        raise RefusedError(
            f"a live flavor already has {what} {value!r} (id {clash.id})",
            hint="rename or delete the live one first: id, name and flavorid are unique",
        )
    created = _parse_time(definition.created_at)
    # Instances booted before a later update carry an older copy: the newest stamp is the row's.
    stamps = [
        d.updated_at for d in candidate.definitions.values() if d == definition and d.updated_at
    ]
    row: Row = {
        "created_at": created,
        "updated_at": _parse_time(max(stamps)) if stamps else None,
        "name": definition.name,
        "id": definition.id,
        "memory_mb": definition.memory_mb,
        "vcpus": definition.vcpus,
        "swap": definition.swap,
        # nova serializes a NULL vcpu_weight as 0 (Flavor._from_db_object); the API cannot set it.
        "vcpu_weight": definition.vcpu_weight or None,
        "flavorid": definition.flavorid,
        "rxtx_factor": definition.rxtx_factor,
        "root_gb": definition.root_gb,
        "ephemeral_gb": definition.ephemeral_gb,
        "disabled": definition.disabled,
        "is_public": definition.is_public,
    }
    if "description" in flavors.c:
        row["description"] = None
    changes = [RowChange("flavors", {"id": definition.id}, before=None, after=row)]
    for offset, (key, value) in enumerate(definition.extra_specs):
        spec = {"created_at": created, "updated_at": None, "id": next_spec + offset,
                "flavor_id": definition.id, "key": key, "value": value}  # fmt: skip
        changes.append(RowChange("flavor_extra_specs", {"id": spec["id"]}, before=None, after=spec))
    owners = sorted({p for p in candidate.users.values() if p})
    source = (
        f"--from-instance {trusted}"
        if from_instance is not None
        else f"{len(candidate.definitions)} instance(s) agree"
    )
    notes = [
        f"re-insert flavor id {definition.id} flavorid {definition.flavorid!r} "
        f"name {definition.name!r} into nova_api.flavors, from instance_extra.flavor ({source})",
        "description stays NULL: nova never embeds it in instance_extra.flavor",
    ]  # fmt: skip
    if not definition.is_public:
        for offset, project in enumerate(owners):
            access = {"created_at": created, "updated_at": None, "id": next_project + offset,
                      "flavor_id": definition.id, "project_id": project}  # fmt: skip
            changes.append(
                RowChange("flavor_projects", {"id": access["id"]}, before=None, after=access)
            )
        notes.append(
            "private flavor: access granted to the projects that own instances of it "
            f"({', '.join(owners) or 'none'}); others it had cannot be known"
        )
    return Plan(
        title=f"recover flavor {definition.flavorid} (id {definition.id}, {definition.name})",
        db=db,
        target="nova_api",
        changes=changes,
        notes=notes,
        subject={"kind": "flavor", "id": definition.id},
    )


@dataclass
class FlavorRecovery:
    plan: Plan
    warnings: list[str]
    nova: NovaCloud


def plan_flavor(settings: Settings, token: str, from_instance: str | None) -> FlavorRecovery:
    nova = open_nova(settings)
    try:
        finder = FlavorFinder(nova)
        candidate = finder.find(token)
        if finder.store == "cell":
            if from_instance is not None:
                raise RefusedError(
                    "--from-instance applies to Newton+ clouds, where flavors are rebuilt from "
                    "instances; this flavor has its own row to un-delete"
                )
            plan = legacy_plan(candidate)
        else:
            plan = modern_plan(nova, candidate, from_instance)
    except BaseException:
        nova.dispose()
        raise
    return FlavorRecovery(plan=plan, warnings=finder.warnings, nova=nova)
