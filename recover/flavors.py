"""Build the plan that brings a deleted flavor back under its original internal id and flavorid.

* Pre-Newton (flavors in the cell's ``instance_types``, soft-deleted): un-delete
  the row and the extra specs and projects deleted together with it; a row
  archived into ``shadow_*`` is moved back.
* Newton+ (``nova_api.flavors``, hard-deleted): re-insert the flavor and its
  extra specs from the live instances' ``instance_extra.flavor``; projects of a
  private flavor from the instances that use it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection

from recover.config import Settings
from recover.db.cloud import NovaCloud, open_nova
from recover.errors import NotFoundError, RefusedError
from recover.inventory import flavor_store, recreate_command
from recover.nova import (
    CellReader,
    FlavorBlobError,
    FlavorDef,
    LiveFlavor,
    parse_flavor_blob,
    variants,
)
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
    #: Resized instances whose copy is their ``old`` flavor (revert-resize gives it back).
    revert: set[str] = field(default_factory=set)
    #: Set when a live flavor took this one's internal id: that live flavor.
    live: LiveFlavor | None = None

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


def id_reused_error(candidate: Candidate, definition: FlavorDef | None = None) -> RefusedError:
    """A deleted flavor whose internal id a live flavor took: what can and cannot be done."""
    live = candidate.live
    assert live is not None
    if definition is None:
        found = variants(candidate.definitions)[1]
        definition = found[0].definition
    holders = sorted(candidate.definitions)
    held = (
        f"{len(holders)} live instance(s) still embed the deleted one (e.g. {holders[0]}) and "
        "nova runs them from that copy"
        if holders
        else "no live instance embeds it"
    )
    return RefusedError(
        f"flavor {definition.flavorid!r} ({definition.name!r}) cannot come back under its "
        f"internal id {candidate.id}: live flavor {live.flavorid!r} ({live.name!r}) took that "
        f"id after the deletion; {held}",
        hint=(
            f"to make flavorid {definition.flavorid!r} resolvable again, re-create it under a new "
            f"internal id through nova's API: `{recreate_command(definition)}` (the instances "
            f"keep instance_type_id {candidate.id})"
        ),
    )


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
        reused = self._reused(kind, value)
        taken = [c for c in candidates if c.id in {r.id for r in reused}]
        if taken or (reused and not candidates):
            raise id_reused_error(next(r for r in reused if not taken or r.id == taken[0].id))
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
                referenced |= set(self._revert_copies(cell, conn))
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
            with cell.connect() as conn:
                blobs = cell.flavor_blobs(conn, missing)
                users = _users(conn, cell, missing)
                reverts = self._revert_copies(cell, conn)
            with api.db.engine.connect() as conn:
                live_old = api.live_flavor_ids(conn, reverts)
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
            # The old flavor of a resized instance is as much a copy as a current one: nova
            # moved the instance's flavor into ``old`` when the resize began (nova 34
            # nova/compute/api.py resize), and revert-resize makes it current again.
            for flavor_id, copies in reverts.items():
                if flavor_id in live_old:
                    continue
                for uuid, (definition, project) in copies.items():
                    candidate = by_id.get(flavor_id)
                    if candidate is None:
                        candidate = by_id[flavor_id] = Candidate(
                            id=flavor_id, flavorid=definition.flavorid, name=definition.name,
                            cell=cell,
                        )  # fmt: skip
                    if uuid not in candidate.definitions:
                        candidate.definitions[uuid] = definition
                        candidate.revert.add(uuid)
                    candidate.users[uuid] = project
        return [
            c
            for c in by_id.values()
            if any(_matches(value, kind, c.id, d.flavorid, d.name) for d in c.definitions.values())
        ]

    def _revert_copies(
        self, cell: CellReader, conn: Connection
    ) -> dict[int, dict[str, tuple[FlavorDef, str | None]]]:
        """Old flavor id -> {uuid: (copy, project)} of the resized instances of ``cell``."""
        found: dict[int, dict[str, tuple[FlavorDef, str | None]]] = {}
        for uuid, flavor_id, project, text in cell.resized_flavor_blobs(conn):
            try:
                old = parse_flavor_blob(text)["old"]
            except FlavorBlobError:
                continue  # warned about where it matters: the instance's current flavor
            if old is not None and old.id != flavor_id:
                found.setdefault(old.id, {})[uuid] = (old, project)
        return found

    def _reused(self, kind: str | None, value: str) -> list[Candidate]:
        """Flavors whose internal id a live flavor took, that live instances still embed."""
        by_key: dict[tuple[int, str], Candidate] = {}
        referenced: dict[str, set[int]] = {}
        reverts: dict[str, dict[int, dict[str, tuple[FlavorDef, str | None]]]] = {}
        for cell in self.nova.cells:
            with cell.connect() as conn:
                referenced[cell.name] = cell.referenced_flavor_ids(conn)
                reverts[cell.name] = self._revert_copies(cell, conn)
        api_live: dict[int, LiveFlavor] = {}
        if self.store == "api" and self.nova.api is not None:
            wanted = set().union(*referenced.values(), *(set(r) for r in reverts.values()))
            with self.nova.api.db.engine.connect() as conn:
                api_live = self.nova.api.live_flavors(conn, wanted)
        for cell in self.nova.cells:
            with cell.connect() as conn:
                if self.store == "api":
                    live = api_live
                else:
                    ids = referenced[cell.name] | set(reverts[cell.name])
                    live = {
                        i: LiveFlavor.from_row(r)
                        for i, (t, r) in cell.legacy_flavor_rows(conn, ids).items()
                        if t == "instance_types" and r.deleted == 0
                    }
                current = {i: f for i, f in live.items() if i in referenced[cell.name]}
                found: list[tuple[str, str | None, FlavorDef, bool]] = []
                for uuid, flavor_id, project, text in cell.reuse_suspect_blobs(conn, current):
                    try:
                        blob = parse_flavor_blob(text)
                    except FlavorBlobError:
                        continue
                    copy = next((d for d in blob.values() if d and d.id == flavor_id), None)
                    if copy is not None:
                        found.append((uuid, project, copy, False))
            for copies in reverts[cell.name].values():
                found += [(u, project, old, True) for u, (old, project) in copies.items()]
            for uuid, project, copy, revert in found:
                row = live.get(copy.id)
                if row is None or not row.contradicted_by(copy):
                    continue
                key = (copy.id, copy.flavorid)
                candidate = by_key.get(key)
                if candidate is None:
                    candidate = by_key[key] = Candidate(
                        id=copy.id, flavorid=copy.flavorid, name=copy.name, cell=cell, live=row,
                    )  # fmt: skip
                candidate.definitions.setdefault(uuid, copy)
                candidate.users[uuid] = project
                if revert:
                    candidate.revert.add(uuid)
        return [
            c
            for c in by_key.values()
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


def clash_error(what: str, value: str, clash_id: int, flavor_id: int) -> RefusedError:
    """A live flavor has the name or flavorid: say what works (nova's API renames nothing)."""
    if what == "name":
        # nova 34 nova/api/openstack/compute/flavor_manage.py: PUT updates the description only.
        hint = (
            "names are unique and nova's API cannot rename a flavor: recover this one under its "
            f"ids with another name, `recover flavor id:{flavor_id} --new-name NAME`, or delete "
            "the live one first if no instance uses it"
        )
    else:
        hint = (
            "flavorids are unique and nova's API cannot change one: this flavor can come back "
            f"only after the live one is deleted (`openstack flavor delete {value}`), if no "
            f"instance uses it (`openstack server list --all-projects --flavor {value}`)"
        )
    return RefusedError(f"a live flavor already has {what} {value!r} (id {clash_id})", hint=hint)


def _row_definition(row: Row, specs: list[tuple[str, Row]]) -> FlavorDef:
    """A legacy row (and its deleted extra specs) as a definition, for the messages."""
    return FlavorDef(
        id=row["id"], flavorid=row["flavorid"], name=row["name"], memory_mb=row["memory_mb"],
        vcpus=row["vcpus"], root_gb=row["root_gb"] or 0, ephemeral_gb=row["ephemeral_gb"] or 0,
        swap=row["swap"] or 0, rxtx_factor=float(row["rxtx_factor"] or 1.0),
        vcpu_weight=row["vcpu_weight"], disabled=bool(row["disabled"]),
        is_public=bool(row["is_public"]),
        extra_specs=tuple(sorted((r["key"], r["value"]) for _, r in specs)),
    )  # fmt: skip


def legacy_plan(candidate: Candidate, new_name: str | None = None) -> Plan:
    cell, row = candidate.cell, candidate.row
    assert row is not None and candidate.table is not None
    db = cell.db
    types = db.table("instance_types")
    name = new_name if new_name is not None else row["name"]
    with db.engine.connect() as conn:
        clashes = conn.execute(
            select(types.c.id, types.c.name, types.c.flavorid).where(
                types.c.deleted == 0,
                or_(
                    types.c.name == name,
                    types.c.flavorid == row["flavorid"],
                    types.c.id == row["id"],
                ),
            )
        ).all()
        children = {
            child: _deleted_children(conn, cell, child, column, row)
            for child, column in (
                ("instance_type_extra_specs", "key"),
                ("instance_type_projects", "project_id"),
            )
        }
    for clash in sorted(clashes, key=lambda c: c.id != row["id"]):
        if clash.id == row["id"] and clash.flavorid == row["flavorid"]:
            raise ConcurrentChangeError(
                f"flavor id {row['id']} was recovered meanwhile, by another run",
                hint="nothing was changed by this one",
            )
        if clash.id == row["id"]:
            # Archived, then InnoDB handed its id to a new flavor (AUTO_INCREMENT reset).
            with db.engine.connect() as conn:
                live = conn.execute(select(types).where(types.c.id == row["id"])).first()
            assert live is not None
            taken = Candidate(
                id=row["id"], flavorid=row["flavorid"], name=row["name"], cell=cell,
                live=LiveFlavor.from_row(live),
            )  # fmt: skip
            specs = children["instance_type_extra_specs"]
            raise id_reused_error(taken, _row_definition(row, specs))
        if clash.flavorid == row["flavorid"]:
            raise clash_error("flavorid", row["flavorid"], clash.id, row["id"])
        raise clash_error("name", name, clash.id, row["id"])
    changes = _restore(cell, candidate.table, row)
    if new_name is not None:
        first = changes[0]
        assert first.after is not None
        changes[0] = RowChange(first.table, first.key, first.before, {**first.after, "name": name})
    for rows in children.values():
        for table_name, child_row in rows:
            changes += _restore(cell, table_name, child_row)
    action = (
        "move back from shadow_instance_types"
        if candidate.table.startswith("shadow_")
        else "un-delete"
    )
    title_name = name
    notes = [
        f"{action}: flavor id {row['id']} flavorid {row['flavorid']!r} name {row['name']!r}, "
        f"deleted at {row['deleted_at']}",
        f"with {len(children['instance_type_extra_specs'])} extra spec(s) and "
        f"{len(children['instance_type_projects'])} project(s) deleted together with it",
    ]
    if new_name is not None:
        notes.append(_renamed_note(row["name"], name))
    return Plan(
        title=f"recover flavor {row['flavorid']} (id {row['id']}, {title_name})",
        db=db,
        target=f"cell:{cell.name}",
        changes=changes,
        notes=notes,
        subject={"kind": "flavor", "id": row["id"]},
    )


def _renamed_note(old: str, new: str) -> str:
    return (
        f"named {new!r} instead of {old!r} (--new-name): instances keep showing {old!r}, "
        "the name in their embedded copy"
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
    fields, found = variants(defs)
    if len(found) > 1:
        listing = "; ".join(v.describe(fields) for v in found)
        raise RefusedError(
            f"instances disagree about flavor id {candidate.id} (differ in {', '.join(fields)}): "
            f"{listing}",
            hint="name an instance whose copy to trust with --from-instance UUID",
        )
    first_uuid = min(defs)
    return defs[first_uuid], first_uuid


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _next_id(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1


def _colliding_keys(conn: Connection, table: Any, keys: list[str]) -> list[tuple[str, str]]:
    """Pairs of extra-spec keys the column's collation holds equal (its unique key refuses both).

    nova_api.flavor_extra_specs.key is utf8_general_ci (openstack-facts.md §1), so
    'HW:CPU_POLICY' and 'hw:cpu_policy' collide there, though the utf8_bin
    instance_type_extra_specs of older clouds (and so the embedded copies) held both.
    """
    if conn.dialect.name != "mysql" or len(keys) < 2:
        return []
    found = conn.execute(
        sql_text(
            "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = 'key'"
        ),
        {"t": table.name},
    ).first()
    if found is None or not all(re.fullmatch(r"[A-Za-z0-9_]+", str(v or "")) for v in found):
        return []
    charset, collation = found
    weights = conn.execute(
        sql_text(
            "SELECT "
            + ", ".join(
                f"WEIGHT_STRING(CONVERT(:k{n} USING {charset}) COLLATE {collation})"
                for n in range(len(keys))
            )
        ),
        {f"k{n}": key for n, key in enumerate(keys)},
    ).one()
    first_of: dict[Any, str] = {}
    pairs = []
    for key, weight in zip(keys, weights, strict=True):
        if weight in first_of:
            pairs.append((first_of[weight], key))
        else:
            first_of[weight] = key
    return pairs


def modern_plan(
    nova: NovaCloud,
    candidate: Candidate,
    from_instance: str | None,
    new_name: str | None = None,
    drop_specs: tuple[str, ...] = (),
) -> Plan:
    api = nova.api
    assert api is not None
    definition, trusted = choose_definition(candidate, from_instance)
    name = new_name if new_name is not None else definition.name
    has = [k for k, _ in definition.extra_specs]
    unknown = [k for k in drop_specs if k not in has]
    if unknown:
        raise RefusedError(
            f"flavor id {definition.id} has no extra spec {unknown[0]!r} to leave out",
            hint=f"its extra specs: {', '.join(repr(k) for k in has) or 'none'}",
        )
    kept = tuple((k, v) for k, v in definition.extra_specs if k not in drop_specs)
    db = api.db
    flavors, specs, projects = (
        db.table(n) for n in ("flavors", "flavor_extra_specs", "flavor_projects")
    )
    with db.engine.connect() as conn:
        clashes = conn.execute(
            select(flavors).where(
                or_(
                    flavors.c.id == definition.id,
                    flavors.c.name == name,
                    flavors.c.flavorid == definition.flavorid,
                )
            )
        ).all()
        next_spec, next_project = _next_id(conn, specs), _next_id(conn, projects)
        collisions = _colliding_keys(conn, specs, [k for k, _ in kept])
    for clash in sorted(clashes, key=lambda c: c.id != definition.id):
        if clash.id == definition.id and clash.flavorid == definition.flavorid:
            raise ConcurrentChangeError(
                f"flavor id {definition.id} was recovered meanwhile, by another run",
                hint="nothing was changed by this one",
            )
        if clash.id == definition.id:
            taken = Candidate(
                id=definition.id, flavorid=definition.flavorid, name=definition.name,
                cell=candidate.cell, definitions=candidate.definitions,
                live=LiveFlavor.from_row(clash),
            )  # fmt: skip
            raise id_reused_error(taken, definition)
        if clash.flavorid == definition.flavorid:
            raise clash_error("flavorid", clash.flavorid, clash.id, definition.id)
        # Selected by its name, as the column's collation compares it.
        raise clash_error("name", name, clash.id, definition.id)
    if collisions:
        first, second = collisions[0]
        raise RefusedError(
            f"the copy of flavor id {definition.id} has extra specs {first!r} and {second!r}, "
            "which nova_api cannot hold together: flavor_extra_specs has a unique key on "
            "(flavor_id, key) and its collation compares the two as equal",
            hint=(
                "nova itself could not have stored both there; recover the flavor without one "
                f"of them, e.g. `recover flavor id:{definition.id} --drop-extra-spec "
                f"{shlex.quote(first)}` (the instances keep both in their embedded copy)"
            ),
        )
    created = _parse_time(definition.created_at)
    # Instances booted before a later update carry an older copy: the newest stamp is the row's.
    stamps = [
        d.updated_at for d in candidate.definitions.values() if d == definition and d.updated_at
    ]
    row: Row = {
        "created_at": created,
        "updated_at": _parse_time(max(stamps)) if stamps else None,
        "name": name,
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
    for offset, (key, value) in enumerate(kept):
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
    revert = sorted(u for u in candidate.revert if candidate.definitions[u] == definition)
    if revert:
        notes.append(
            f"{len(revert)} of the copies are the old flavor of resized instances, which "
            "revert-resize gives back"
        )
    if new_name is not None:
        notes.append(_renamed_note(definition.name, name))
    if drop_specs:
        notes.append(
            f"extra spec(s) {', '.join(repr(k) for k in drop_specs)} left out "
            "(--drop-extra-spec): the instances keep them in their embedded copy"
        )
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
        title=f"recover flavor {definition.flavorid} (id {definition.id}, {name})",
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


def _unreachable_error(nova: NovaCloud) -> RefusedError:
    names = ", ".join(target.name for target, _ in nova.unreachable)
    reasons = "; ".join(reason for _, reason in nova.unreachable)
    return RefusedError(
        f"{reasons}; recover flavor reads every cell first: the flavor's copies and the "
        f"instances that use it may be in {names}",
        hint=(
            f"fix the access to {names}, or, knowing its instances are left out, name the "
            "reachable cells with --nova-db URL (repeatable; it replaces the cell_mappings list)"
        ),
    )


def plan_flavor(
    settings: Settings,
    token: str,
    from_instance: str | None,
    new_name: str | None = None,
    drop_specs: tuple[str, ...] = (),
) -> FlavorRecovery:
    if new_name is not None and (
        not new_name.strip() or "\x00" in new_name or len(new_name) > 255 or not _utf8(new_name)
    ):
        raise RefusedError(f"--new-name {new_name[:40]!r} is not a flavor name nova accepts")
    nova = open_nova(settings, allow_unreachable_cells=True)
    try:
        if nova.unreachable:
            raise _unreachable_error(nova)
        finder = FlavorFinder(nova)
        candidate = finder.find(token)
        if finder.store == "cell":
            if from_instance is not None or drop_specs:
                option = "--from-instance" if from_instance is not None else "--drop-extra-spec"
                raise RefusedError(
                    f"{option} applies to Newton+ clouds, where flavors are rebuilt from "
                    "instances; this flavor has its own row to un-delete"
                )
            plan = legacy_plan(candidate, new_name)
        else:
            plan = modern_plan(nova, candidate, from_instance, new_name, drop_specs)
    except BaseException:
        nova.dispose()
        raise
    return FlavorRecovery(plan=plan, warnings=finder.warnings, nova=nova)
