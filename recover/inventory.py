"""Find every live instance that depends on a deleted flavor or image.

Read-only. A fixed number of queries per cell, whatever the number of
instances: one scan of the live instances for what they reference, then the
orphans' instances by primary key (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError

from recover.config import Settings
from recover.db.cloud import NovaCloud, open_glance, open_nova
from recover.db.engine import describe_db_error
from recover.errors import DatabaseError
from recover.glance import ChildCounts, GlanceReader
from recover.nova import (
    CellReader,
    FlavorBlobError,
    FlavorDef,
    InstanceRef,
    LiveRefs,
    parse_flavor_blob,
)

LONG_RUNNING = timedelta(days=365)
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)

#: What breaks for an instance whose image is gone (prior-art.md §0.15: no fallback).
IMAGE_RISKS = ("rebuild", "evacuate")
#: What breaks for an instance whose flavor is gone: API clients that look it up.
FLAVOR_RISKS = ("flavor show", "server list --flavor")


def base_file_name(image_id: str) -> str:
    """Name of the image's cache file in ``_base`` on compute nodes.

    nova 34 ``nova/virt/libvirt/imagecache.py`` ``get_cache_fname``: sha1 of the id.
    """
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AffectedInstance:
    uuid: str
    cell: str
    host: str | None
    vm_state: str | None
    project_id: str | None
    launched_at: datetime | None
    long_running: bool
    #: A failed build in cell0: no compute node ever ran it (``recover.db.cells``).
    never_ran: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "cell": self.cell,
            "host": self.host,
            "vm_state": self.vm_state,
            "project_id": self.project_id,
            "launched_at": self.launched_at.isoformat(sep=" ") if self.launched_at else None,
            "long_running": self.long_running,
        }


@dataclass
class FlavorOrphan:
    id: int
    flavorid: str | None
    name: str | None
    state: str
    instances: list[AffectedInstance]
    #: Where a definition can come from: the row's table, instance_extra copies, sysmeta copies.
    row_table: str | None = None
    deleted_at: datetime | None = None
    definitions_from_instance_extra: int = 0
    definitions_from_system_metadata: int = 0
    conflicting_instances: list[str] = field(default_factory=list)
    recover: str | None = None
    #: Failed builds in cell0 that use it: set apart from ``instances`` (never_ran_apart).
    never_ran: list[AffectedInstance] = field(default_factory=list)

    @property
    def recoverable(self) -> bool:
        return bool(self.row_table or self.definitions_from_instance_extra)


@dataclass
class ImageOrphan:
    id: str
    name: str | None
    status: str
    instances: list[AffectedInstance]
    shelved_instances: list[str]
    hosts: list[str]
    disk_format: str | None
    size: int | None
    deleted_at: datetime | None
    snapshot: bool
    store_file: bool | None
    children: ChildCounts
    recover: str | None = None
    note: str | None = None
    never_ran: list[AffectedInstance] = field(default_factory=list)
    #: The spellings of the id in the ``image_ref`` of the instances on ``hosts``.
    spellings: list[str] = field(default_factory=list)
    #: ``images.status`` as the row says it (``status`` is the contract's word for it).
    row_status: str | None = None

    @property
    def base_file(self) -> str:
        """The ``_base`` name on the hosts: sha1 of ``image_ref`` as the instances spell it.

        nova 34 ``nova/virt/libvirt/driver.py`` ``_create_and_inject_local_root`` names it
        ``get_cache_fname(instance.image_ref)``, the client's spelling, not Glance's.
        """
        if not self.spellings or self.id in self.spellings:
            return base_file_name(self.id)
        return base_file_name(self.spellings[0])

    @property
    def base_files(self) -> list[str]:
        """Every ``_base`` name in use, when instances spell the id in more than one way."""
        return sorted({base_file_name(s) for s in self.spellings} | {self.base_file})

    @property
    def at_risk(self) -> list[str]:
        risks = list(IMAGE_RISKS) if self.hosts else []
        if self.shelved_instances:
            risks.append("unshelve")
        return risks


@dataclass
class CellStatus:
    name: str
    ok: bool
    error: str | None = None


@dataclass
class Inventory:
    flavors: list[FlavorOrphan]
    images: list[ImageOrphan]
    cells: list[CellStatus]
    flavor_store: str
    glance_generation: str
    store_dir: str
    scanned_at: datetime
    warnings: list[str] = field(default_factory=list)
    #: Orphans that only failed builds in cell0 use: reported apart, not counted.
    never_ran_flavors: list[FlavorOrphan] = field(default_factory=list)
    never_ran_images: list[ImageOrphan] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return any(not c.ok for c in self.cells)

    @property
    def has_orphans(self) -> bool:
        return bool(self.flavors or self.images)


def _affected(ref: InstanceRef, now: datetime) -> AffectedInstance:
    return AffectedInstance(
        uuid=ref.uuid,
        cell=ref.cell,
        host=ref.host,
        vm_state=ref.vm_state,
        project_id=ref.project_id,
        launched_at=ref.launched_at,
        long_running=ref.launched_at is not None and now - ref.launched_at > LONG_RUNNING,
        never_ran=ref.cell0,
    )


def flavor_store(nova: NovaCloud) -> str:
    """Where flavors live: ``"cell"`` (``instance_types``, pre-Newton) or ``"api"``."""
    api = nova.api
    with_api_flavors = False
    if api is not None and api.schema.has_flavors:
        with api.db.engine.connect() as conn:
            with_api_flavors = api.has_flavors(conn)
    if with_api_flavors:
        return "api"
    for cell in nova.cells:
        with cell.connect() as conn:
            if cell.has_live_legacy_flavors(conn):
                return "cell"
    if api is not None and api.schema.has_flavors:
        return "api"
    return "cell"


class _Scan:
    """One inventory run: state shared by the per-cell passes."""

    def __init__(self, settings: Settings, nova: NovaCloud, glance: GlanceReader, now: datetime):
        self.settings = settings
        self.nova = nova
        self.glance = glance
        self.now = now
        self.store = flavor_store(nova)
        self.warnings: list[str] = []
        self.cells = [CellStatus(t.name, False, err) for t, err in nova.unreachable]

    def run(self) -> Inventory:
        # Pass 1, one scan per cell: what the live instances use, and which instances.
        live: dict[str, LiveRefs] = {}
        readable: list[CellReader] = []
        for cell in self.nova.cells:
            try:
                with cell.connect() as conn:
                    live[cell.name] = cell.live_references(conn)
                readable.append(cell)
            except SQLAlchemyError as exc:
                self._cell_failed(cell, exc)
        flavor_refs = {name: set(refs.flavors) for name, refs in live.items()}
        image_refs: set[str] = set().union(*(refs.image_ids() for refs in live.values()))

        orphan_flavors = self._orphan_flavor_ids(readable, flavor_refs)
        with self.glance.db.engine.connect() as conn:
            states = self.glance.image_states(conn, image_refs)
            orphan_images = {
                image_id: status
                for image_id in image_refs
                if (status := self.glance.orphan_status(states.get(image_id))) is not None
            }
            image_rows = self.glance.image_rows(conn, orphan_images)

        # Pass 2: the instances that use an orphan, by primary key.
        flavors: dict[int, FlavorOrphan] = {}
        instances_by_image: dict[str, list[InstanceRef]] = {i: [] for i in orphan_images}
        for cell in readable:
            wanted = orphan_flavors.get(cell.name, {})
            ids = live[cell.name].instance_ids(wanted, orphan_images)
            try:
                with cell.connect() as conn:
                    refs = cell.instances_by_id(conn, ids)
                    self._collect_flavors(cell, conn, wanted, refs, flavors)
            except SQLAlchemyError as exc:
                self._cell_failed(cell, exc)
                continue
            for ref in refs:
                for image_id in {ref.image_id, ref.shelved_id} & orphan_images.keys():
                    instances_by_image[image_id].append(ref)
            self.cells.append(CellStatus(cell.name, True))

        images = self._images(orphan_images, image_rows, instances_by_image)
        never_ran_flavors = never_ran_apart(flavors.values())
        for orphan in never_ran_flavors:
            del flavors[orphan.id]
        never_ran_images = never_ran_apart(images)
        images = [i for i in images if all(i is not n for n in never_ran_images)]
        self._suggest(flavors.values())
        self.cells.sort(key=lambda c: c.name)
        return Inventory(
            flavors=sorted(flavors.values(), key=lambda f: f.id),
            images=sorted(images, key=lambda i: i.id),
            never_ran_flavors=sorted(never_ran_flavors, key=lambda f: f.id),
            never_ran_images=sorted(never_ran_images, key=lambda i: i.id),
            cells=self.cells,
            flavor_store=self.store,
            glance_generation=self.glance.schema.generation,
            store_dir=self.settings.store_dir.value,
            scanned_at=self.now,
            warnings=self.warnings,
        )

    def _cell_failed(self, cell: CellReader, exc: SQLAlchemyError) -> None:
        self.cells = [c for c in self.cells if c.name != cell.name]
        self.cells.append(
            CellStatus(cell.name, False, f"cannot read {cell.db.label}: {describe_db_error(exc)}")
        )

    def _orphan_flavor_ids(
        self, cells: list[CellReader], refs: dict[str, set[int]]
    ) -> dict[str, dict[int, tuple[str, Row[Any]] | None]]:
        """Per cell: orphaned flavor id -> its soft-deleted/archived row, if one survives."""
        orphans: dict[str, dict[int, tuple[str, Row[Any]] | None]] = {}
        live_api: set[int] = set()
        if self.store == "api" and self.nova.api is not None:
            with self.nova.api.db.engine.connect() as conn:
                live_api = self.nova.api.live_flavor_ids(conn, set().union(*refs.values()))
        for cell in cells:
            ids = refs.get(cell.name, set())
            with cell.connect() as conn:
                rows = cell.legacy_flavor_rows(conn, ids) if cell.schema.has_legacy_flavors else {}
            if self.store == "api":
                missing = ids - live_api
            else:
                missing = {
                    i
                    for i in ids
                    if i not in rows or rows[i][0] != "instance_types" or rows[i][1].deleted != 0
                }
            orphans[cell.name] = {i: rows.get(i) for i in sorted(missing)}
        return orphans

    def _collect_flavors(
        self,
        cell: CellReader,
        conn: Any,
        wanted: dict[int, tuple[str, Row[Any]] | None],
        refs: list[InstanceRef],
        flavors: dict[int, FlavorOrphan],
    ) -> None:
        if not wanted:
            return
        definitions: dict[int, dict[str, FlavorDef]] = {}
        flavor_of = {r.uuid: r.flavor_id for r in refs if r.flavor_id in wanted}
        for uuid, text in cell.flavor_blobs_of(conn, flavor_of).items():
            flavor_id = int(flavor_of[uuid])
            try:
                blob = parse_flavor_blob(text)
            except FlavorBlobError as exc:
                self.warnings.append(f"instance {uuid} in cell {cell.name}: {exc}; skipped")
                continue
            match = next((d for d in blob.values() if d is not None and d.id == flavor_id), None)
            if match is not None:
                definitions.setdefault(flavor_id, {})[uuid] = match
        sysmeta: dict[int, set[str]] = {}
        for uuid in cell.sysmeta_flavor_uuids(conn, flavor_of):
            sysmeta.setdefault(int(flavor_of[uuid]), set()).add(uuid)
        for flavor_id, found in wanted.items():
            orphan = flavors.get(flavor_id)
            if orphan is None:
                orphan = flavors[flavor_id] = FlavorOrphan(
                    id=flavor_id, flavorid=None, name=None, state="missing", instances=[]
                )
            if found is not None:
                table, row = found
                orphan.row_table = orphan.row_table or table
                if self.store == "cell":
                    orphan.state = "archived" if table.startswith("shadow_") else "soft-deleted"
                    orphan.deleted_at = row.deleted_at
                orphan.flavorid = orphan.flavorid or row.flavorid
                orphan.name = orphan.name or row.name
            defs = definitions.get(flavor_id, {})
            orphan.definitions_from_instance_extra += len(defs)
            orphan.definitions_from_system_metadata += len(sysmeta.get(flavor_id, ()))
            if defs:
                first = defs[min(defs)]
                orphan.flavorid = orphan.flavorid or first.flavorid
                orphan.name = orphan.name or first.name
                conflicting = sorted(u for u, d in defs.items() if d != first)
                if conflicting:
                    orphan.conflicting_instances = sorted(
                        {*orphan.conflicting_instances, min(defs), *conflicting}
                    )
            orphan.instances.extend(
                _affected(r, self.now) for r in refs if r.flavor_id == flavor_id
            )
        for orphan in flavors.values():
            orphan.instances.sort(key=lambda a: a.uuid)

    def _store_file(self, image_id: str) -> bool | None:
        # Every datadir of the store (filesystem_store_datadirs): the file may be in any.
        stores = [Path(d) for d in self.settings.image_dirs()]
        readable = [s for s in stores if s.is_dir() and os.access(s, os.R_OK | os.X_OK)]
        if not UUID_RE.match(image_id) or len(readable) < len(stores):
            return None
        return any((store / image_id).is_file() for store in readable)

    def _images(
        self,
        orphan_images: dict[str, str],
        rows: dict[str, Row[Any]],
        instances: dict[str, list[InstanceRef]],
    ) -> list[ImageOrphan]:
        with self.glance.db.engine.connect() as conn:
            children = self.glance.deleted_children(conn, orphan_images)
            snapshots = self.glance.snapshot_ids(conn, orphan_images)
        images = []
        for image_id, status in orphan_images.items():
            row = rows.get(image_id)
            every = sorted(instances[image_id], key=lambda r: r.uuid)
            refs = [r for r in every if not r.cell0]
            booted = [r for r in refs if r.host and r.image_id == image_id]
            image = ImageOrphan(
                # As Glance has it; image_id is its lower-case key (nova.image_key).
                id=row.id if row is not None else image_id,
                name=row.name if row is not None else None,
                status=status,
                instances=[_affected(r, self.now) for r in refs],
                never_ran=[_affected(r, self.now) for r in every if r.cell0],
                shelved_instances=sorted(r.uuid for r in refs if r.shelved_id == image_id),
                hosts=sorted({str(r.host) for r in booted}),
                spellings=sorted({str(r.image_ref) for r in booted}),
                row_status=row.status if row is not None else None,
                disk_format=row.disk_format if row is not None else None,
                size=row.size if row is not None else None,
                deleted_at=row.deleted_at if row is not None else None,
                snapshot=image_id in snapshots,
                store_file=self._store_file(image_id),
                children=children.get(image_id, ChildCounts()),
            )
            image.recover, image.note = _image_suggestion(image)
            if image.recover and image.row_status == "deactivated":
                image.note = f"{image.note}; it comes back deactivated, as an admin left it"
            images.append(image)
        return images

    def _suggest(self, flavors: Any) -> None:
        orphans = list(flavors)
        for orphan in orphans:
            if not orphan.recoverable:
                continue
            command = f"recover flavor {shlex.quote(_flavor_token(orphan, orphans))}"
            if orphan.conflicting_instances:
                command += f" --from-instance {shlex.quote(orphan.conflicting_instances[0])}"
            orphan.recover = command


def _flavor_token(orphan: FlavorOrphan, orphans: list[FlavorOrphan]) -> str:
    """The flavorid operators know, unless another orphan's name, id or flavorid is the same."""
    fid = orphan.flavorid
    if fid and not any(o is not orphan and fid in (o.name, str(o.id), o.flavorid) for o in orphans):
        return fid
    return str(orphan.id)


def never_ran_apart(orphans: Iterable[Any]) -> list[Any]:
    """Move the failed builds of cell0 out of each orphan's ``instances``; return the
    orphans that only such builds use (the caller lists them apart).

    nova's conductor buries an instance it could not schedule in cell0 (nova
    ``nova/conductor/manager.py`` ``_bury_in_cell0``): it never ran on a compute node, so
    it has no ``_base`` file, nothing to rebuild or evacuate, and can only be deleted.
    """
    apart = []
    for orphan in orphans:
        orphan.never_ran = sorted(
            [*orphan.never_ran, *(a for a in orphan.instances if a.never_ran)],
            key=lambda a: a.uuid,
        )
        orphan.instances = [a for a in orphan.instances if not a.never_ran]
        if orphan.never_ran and not orphan.instances:
            orphan.recover = None
            apart.append(orphan)
    return apart


def _image_suggestion(image: ImageOrphan) -> tuple[str | None, str | None]:
    quoted = shlex.quote(image.id)
    if image.never_ran and not image.instances:
        return None, (
            "only failed builds in cell0 use it: no compute node ever ran them; "
            "delete them (openstack server delete) rather than recover the image"
        )
    if image.status == "missing":
        return None, "the images row was purged; recover cannot re-create it under the same id"
    if image.store_file:
        return f"recover image {quoted}", "the store still holds the data: un-delete only"
    if image.hosts:
        return (
            f"recover image {quoted} --from-host {shlex.quote(image.hosts[0])}",
            f"_base/{image.base_file} on a compute node that runs it",
        )
    return (
        f"recover image {quoted} --base-file PATH",
        "no compute node runs it: find a copy of _base/" + image.base_file,
    )


def scan(settings: Settings, now: datetime | None = None) -> Inventory:
    """Run the inventory across every cell. Unreachable cells make it partial, not fatal."""
    moment = now or datetime.now(timezone.utc).replace(tzinfo=None)
    nova = open_nova(settings, allow_unreachable_cells=True)
    try:
        if not nova.cells:
            if len(nova.unreachable) == 1:
                raise DatabaseError(nova.unreachable[0][1])
            reasons = "; ".join(err for _, err in nova.unreachable)
            raise DatabaseError(f"no Nova cell database could be read: {reasons}")
        glance = open_glance(settings)
        try:
            return _Scan(settings, nova, glance, moment).run()
        finally:
            glance.db.dispose()
    finally:
        nova.dispose()
