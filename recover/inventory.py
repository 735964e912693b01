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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError

from recover.config import Settings
from recover.db.cloud import NovaCloud, open_glance, open_nova
from recover.db.engine import describe_db_error
from recover.db.scatter import CellTimeout
from recover.errors import DatabaseError
from recover.glance import ChildCounts, GlanceReader
from recover.images.rules import ImageRules
from recover.images.sources.rbd import inventory_facts
from recover.nova import (
    CellReader,
    FlavorBlobError,
    FlavorDef,
    InstanceRef,
    LiveFlavor,
    LiveRefs,
    Variant,
    image_key,
    parse_flavor_blob,
    variants,
)
from recover.probe import (
    DEFAULT_HOST_TIMEOUT_S,
    DEFAULT_SSH_WORKERS,
    BaseCopy,
    DiskChain,
    HostProbe,
    probe_hosts,
)

T = TypeVar("T")
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
    #: Resized instances whose ``old`` flavor this is: ``revert-resize`` gives it back.
    revert_instances: list[AffectedInstance] = field(default_factory=list)
    #: ``id-reused``: the live flavor that holds the internal id now.
    live: LiveFlavor | None = None
    #: instance uuid -> its embedded copy, from every cell.
    copies: dict[str, FlavorDef] = field(default_factory=dict)
    #: When the copies disagree: the fields, and each version with its holders.
    differ_in: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    note: str | None = None
    #: ``id-reused``: the nova API command that re-creates it under a new internal id.
    recreate: str | None = None

    @property
    def recoverable(self) -> bool:
        return bool(self.row_table or self.definitions_from_instance_extra)

    @property
    def at_risk(self) -> list[str]:
        risks = list(FLAVOR_RISKS) if self.instances else []
        if self.revert_instances:
            risks.append("revert-resize")
        return risks


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
    #: An image of an RBD store: ``{"pool", "state", "children"}`` (PRODUCT.md).
    rbd: dict[str, Any] | None = None
    #: ``--probe-hosts``: the ``_base`` files found on the probed hosts (None: not probed).
    copies: list[BaseCopy] | None = None
    #: The row's columns the size rules read (``recover.images.rules``).
    row_facts: dict[str, Any] = field(default_factory=dict)
    #: Every child row left in Glance (live or soft-deleted): what a purge has not removed.
    rows_left: ChildCounts = field(default_factory=ChildCounts)
    #: Instances using it that hold a ``request_specs`` row / ``image_*`` system metadata.
    request_specs: int = 0
    system_metadata: int = 0

    @property
    def metadata(self) -> dict[str, Any]:
        """What survives of the image in Glance, and whether Nova holds copies (PRODUCT.md
        "Images whose metadata was purged"): the ``metadata`` key of the report."""
        left = self.rows_left.as_dict()
        return {
            "row": self.status != "missing",
            **left,
            "none_left": sorted(k for k, n in left.items() if not n),
            "nova": {"request_spec": self.request_specs, "system_metadata": self.system_metadata},
        }

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


@dataclass(frozen=True)
class ProbeOptions:
    """``inventory --probe-hosts``: how the compute hosts are asked (recover.probe)."""

    instances_path: str
    workers: int = DEFAULT_SSH_WORKERS
    timeout: float = DEFAULT_HOST_TIMEOUT_S


@dataclass
class ProbedInstance:
    """An affected instance whose host was probed: which image really backs its disk."""

    uuid: str
    cell: str
    host: str
    image_ref: str | None
    chain: DiskChain | None
    #: The image whose ``_base`` file backs the disk (sha1 mapped back to an id); None
    #: when the disk has no backing file, or one no known id hashes to.
    backing_image: str | None = None

    @property
    def backing_file(self) -> str | None:
        return self.chain.backing_file if self.chain is not None else None

    @property
    def other_image(self) -> bool:
        """Backed by another image than ``image_ref`` (after an unshelve: the snapshot)."""
        return self.backing_image is not None and self.backing_image != image_key(self.image_ref)

    def as_dict(self) -> dict[str, Any]:
        chain = self.chain
        return {
            "uuid": self.uuid,
            "cell": self.cell,
            "host": self.host,
            "image_ref": self.image_ref,
            "backing_file": self.backing_file,
            "backing_image": self.backing_image,
            "backed_by_other_image": self.other_image,
            "backing_chain": (
                [{"path": p, "format": f} for p, f in chain.files] if chain is not None else []
            ),
            "error": chain.error if chain is not None else None,
        }


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
    #: ``--probe-hosts``: every host asked, and the affected instances found on them.
    hosts: list[HostProbe] | None = None
    instances: list[ProbedInstance] | None = None
    instances_path: str | None = None

    @property
    def partial(self) -> bool:
        return any(not c.ok for c in self.cells) or any(not h.ok for h in self.hosts or ())

    @property
    def has_orphans(self) -> bool:
        return bool(self.flavors or self.images)


#: Orphan kinds of flavors: the row is soft-deleted, archived, gone, or its id was taken.
ID_REUSED = "id-reused"


@dataclass
class _FlavorUse:
    """One instance's reference to a flavor: now (``uses``) or after ``revert-resize``."""

    cell: str
    ref: InstanceRef
    flavor_id: int
    revert: bool
    copy: FlavorDef | None


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


@dataclass
class _FirstPass:
    """What one cell answered in pass 1, and the connection pass 2 goes on with."""

    conn: Connection
    refs: LiveRefs
    #: instance_types/shadow_instance_types rows of the flavor ids its instances use.
    rows: dict[int, tuple[str, Row[Any]]]
    #: Whether its instance_types still has live rows (asked only when nova_api has none).
    legacy_live: bool


@dataclass
class _SecondPass:
    refs: list[InstanceRef]
    uses: list[_FlavorUse]
    sysmeta: set[str]
    #: Rows of the flavors a revert-resize gives back, read with the instances.
    rows: dict[int, tuple[str, Row[Any]]]
    warnings: list[str]
    #: Instances booted from an orphaned image that hold ``image_*`` system metadata.
    image_sysmeta: set[str] = field(default_factory=set)


class _Scan:
    """One inventory run: state shared by the per-cell passes.

    Each pass runs on every cell at once, on the cell's own thread and connection
    (``nova.workers``, recover.db.scatter); the steps between passes (nova_api, Glance)
    run here. A cell's steps only return values: what they found is merged here, in
    cell order, so the report does not depend on which cell answered first.
    """

    def __init__(
        self,
        settings: Settings,
        nova: NovaCloud,
        glance: GlanceReader,
        now: datetime,
        probe: ProbeOptions | None = None,
    ):
        assert nova.workers is not None, "open_nova(..., cell_timeout=...) opens the threads"
        self.settings = settings
        self.nova = nova
        self.workers = nova.workers
        self.glance = glance
        self.now = now
        self.store = "api"
        self.warnings: list[str] = []
        self.cells = [CellStatus(t.name, False, err) for t, err in nova.unreachable]
        #: Per cell: instance_types/shadow_instance_types rows read, by id.
        self.rows: dict[str, dict[int, tuple[str, Row[Any]]]] = {}
        #: nova_api.flavors rows of the ids instances use (Newton+).
        self.live_api: dict[int, LiveFlavor] = {}
        #: The connection each readable cell holds from pass 1 to pass 2.
        self.conns: dict[str, Connection] = {}
        self.probe = probe

    def run(self) -> Inventory:
        try:
            return self._run()
        finally:
            # An interrupted pass leaves connections with threads still reading on them:
            # closing one here would wait for its cell (a ROLLBACK), so only idle ones are.
            for name, conn in self.conns.items():
                if self.workers.idle(name):
                    conn.close()

    def _gather(self, cells: list[CellReader], step: Callable[[CellReader], T]) -> dict[str, T]:
        """``step`` on every cell at once; the cells that failed or timed out are reported
        (and left out of the result)."""
        outcomes = self.workers.gather(
            {str(c.worker): (lambda c=c: step(c)) for c in cells}  # type: ignore[misc]
        )
        answered: dict[str, T] = {}
        for cell in cells:
            outcome = outcomes[str(cell.worker)]
            if isinstance(outcome, CellTimeout):
                self._cell_unreachable(cell, f"cannot read {cell.db.label}: {outcome}")
            elif isinstance(outcome, SQLAlchemyError):
                self._cell_failed(cell, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answered[cell.name] = outcome
        return answered

    def _run(self) -> Inventory:
        api = self.nova.api
        api_flavors = False
        if api is not None and api.schema.has_flavors:
            with api.db.engine.connect() as conn:
                api_flavors = api.has_flavors(conn)

        def first(cell: CellReader) -> _FirstPass:
            # One scan per cell: what the live instances use, and which instances; with it
            # the flavor rows of those ids and (flavor_store) whether the cell serves flavors.
            conn = cell.connect()
            try:
                legacy_live = not api_flavors and cell.has_live_legacy_flavors(conn)
                refs = cell.live_references(conn)
                rows = (
                    cell.legacy_flavor_rows(conn, set(refs.flavors))
                    if cell.schema.has_legacy_flavors
                    else {}
                )
            except BaseException:
                conn.close()
                raise
            return _FirstPass(conn, refs, rows, legacy_live)

        passed = self._gather(self.nova.cells, first)
        readable = [c for c in self.nova.cells if c.name in passed]
        for cell in readable:
            self.conns[str(cell.worker)] = passed[cell.name].conn
        live = {name: p.refs for name, p in passed.items()}
        self.rows = {name: p.rows for name, p in passed.items()}
        # flavor_store(), from the answers: nova_api's flavors, else a cell that serves some.
        if not api_flavors and (
            any(p.legacy_live for p in passed.values()) or api is None or not api.schema.has_flavors
        ):
            self.store = "cell"
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

        # Pass 2: the instances that use an orphan, by primary key; with them the instances
        # whose live flavor row may be another flavor (id reused) and the resized ones.
        def second(cell: CellReader) -> _SecondPass:
            wanted = orphan_flavors.get(cell.name, {})
            scanned = live[cell.name]
            ids = sorted(
                {
                    *scanned.instance_ids(wanted, orphan_images),
                    *scanned.reuse_suspects(self._live_flavors(cell.name)),
                    *scanned.resized,
                }
            )
            warnings: list[str] = []
            with self.conns[str(cell.worker)] as conn:
                refs = cell.instances_by_id(conn, ids)
                uses, rows = self._flavor_uses(cell, conn, refs, warnings)
                users = [r.uuid for r in refs if r.flavor_id in wanted]
                sysmeta = cell.sysmeta_flavor_uuids(conn, users) if users else set()
                # Nova's copies of the orphaned images' metadata: one statement per batch.
                booted = [r.uuid for r in refs if r.image_id in orphan_images]
                image_sysmeta = cell.image_sysmeta_uuids(conn, booted)
            return _SecondPass(refs, uses, sysmeta, rows, warnings, image_sysmeta)

        uses: list[_FlavorUse] = []
        sysmeta: set[str] = set()
        instances_by_image: dict[str, list[InstanceRef]] = {i: [] for i in orphan_images}
        refs_by_uuid: dict[str, InstanceRef] = {}
        image_sysmeta: set[str] = set()
        found = self._gather(readable, second)
        self.conns.clear()  # closed by pass 2, or held by a thread that timed out
        for cell in readable:
            if cell.name not in found:
                continue
            answer = found[cell.name]
            self.warnings += answer.warnings
            self.rows.setdefault(cell.name, {}).update(answer.rows)
            uses += answer.uses
            sysmeta |= answer.sysmeta
            refs_by_uuid.update((ref.uuid, ref) for ref in answer.refs)
            image_sysmeta |= answer.image_sysmeta
            for ref in answer.refs:
                for image_id in {ref.image_id, ref.shelved_id} & orphan_images.keys():
                    instances_by_image[image_id].append(ref)
            self.cells.append(CellStatus(cell.name, True))

        specs = self._request_specs(instances_by_image)
        images = self._images(orphan_images, image_rows, instances_by_image, image_sysmeta, specs)
        flavors = self._flavors(uses, sysmeta)
        never_ran_flavors = never_ran_apart(flavors)
        flavors = [f for f in flavors if all(f is not n for n in never_ran_flavors)]
        never_ran_images = never_ran_apart(images)
        images = [i for i in images if all(i is not n for n in never_ran_images)]
        self._suggest(flavors)
        self.cells.sort(key=lambda c: c.name)
        probed: tuple[list[HostProbe], list[ProbedInstance]] | None = None
        if self.probe is not None:
            probed = self._probe_hosts(self.probe, images, flavors, refs_by_uuid)
        return Inventory(
            flavors=flavors,
            images=sorted(images, key=lambda i: i.id),
            never_ran_flavors=sorted(never_ran_flavors, key=lambda f: f.id),
            never_ran_images=sorted(never_ran_images, key=lambda i: i.id),
            cells=self.cells,
            flavor_store=self.store,
            glance_generation=self.glance.schema.generation,
            store_dir=self.settings.store_dir.value,
            scanned_at=self.now,
            warnings=self.warnings,
            hosts=probed[0] if probed else None,
            instances=probed[1] if probed else None,
            instances_path=self.probe.instances_path if self.probe else None,
        )

    def _probe_hosts(
        self,
        options: ProbeOptions,
        images: list[ImageOrphan],
        flavors: list[FlavorOrphan],
        refs: dict[str, InstanceRef],
    ) -> tuple[list[HostProbe], list[ProbedInstance]]:
        """Ask every host that runs an affected instance what it really holds (recover.probe).

        Fills ``images[].copies``; an image whose ``_base`` file backs an affected
        instance's disk although it is not its ``image_ref`` (an unshelve boots from the
        shelve snapshot, then puts ``image_ref`` back: nova 34 ``nova/compute/manager.py``
        ``_unshelve_instance``) counts as used: nova's cache manager keeps that file for
        the instance (``_list_backing_images``), and a missing one is added to ``images``.
        """
        users = [*(a for i in images for a in i.instances)]
        users += [a for f in flavors for a in (*f.instances, *f.revert_instances)]
        affected = {a.uuid: a for a in users if a.host and a.uuid in refs}
        names = sorted({n for image in images for n in _base_names(image)})
        by_host: dict[str, list[str]] = {}
        for uuid, instance in sorted(affected.items()):
            by_host.setdefault(str(instance.host), []).append(uuid)
        requests = {host: (names, uuids) for host, uuids in by_host.items()}
        probes = probe_hosts(requests, options.instances_path, options.workers, options.timeout)
        for probe in probes.values():
            self.warnings += probe.warnings
        known = self._sha1_table(refs.values())
        found: list[ProbedInstance] = []
        for uuid, instance in sorted(affected.items()):
            probe = probes[str(instance.host)]
            if not probe.ok:
                continue
            ref = refs[uuid]
            chain = probe.disks.get(uuid)
            entry = ProbedInstance(uuid, instance.cell, probe.host, ref.image_ref, chain)
            backing = entry.backing_file
            entry.backing_image = known.get(backing) if backing else None
            found.append(entry)
        images[:] = self._backing_orphans(images, found, refs)
        for image in images:
            rules = ImageRules(image.id, image.row_facts, False)
            image.copies = sorted(
                (
                    copy
                    for probe in probes.values()
                    if probe.ok
                    for name in _base_names(image, found)
                    if (copy := probe.copy(name, options.instances_path, rules)) is not None
                ),
                key=lambda c: (c.host, c.path),
            )
            _copy_suggestion(image)
        return list(probes.values()), found

    def _sha1_table(self, refs: Iterable[InstanceRef]) -> dict[str, str]:
        """sha1 -> image id (lower case) over every id known: every Glance row, deleted ones
        included, and every spelling the instances use (nova names ``_base`` after
        ``image_ref`` as the client spelled it)."""
        images = self.glance.images
        with self.glance.db.engine.connect() as conn:
            ids = [str(r[0]) for r in conn.execute(select(images.c.id))]
        spellings = [s for r in refs for s in (r.image_ref, r.shelved_image_id) if s]
        table: dict[str, str] = {}
        for value in (*ids, *spellings):
            for spelling in (value, value.lower(), value.upper()):
                table.setdefault(base_file_name(spelling), image_key(value))
        return table

    def _backing_orphans(
        self, images: list[ImageOrphan], found: list[ProbedInstance], refs: dict[str, InstanceRef]
    ) -> list[ImageOrphan]:
        """``images`` plus the orphaned images that back a disk without being its image_ref."""
        other = [p for p in found if p.other_image]
        if not other:
            return images
        by_id = {image_key(i.id): i for i in images}
        users: dict[str, list[ProbedInstance]] = {}
        for entry in other:
            users.setdefault(str(entry.backing_image), []).append(entry)
        with self.glance.db.engine.connect() as conn:
            states = self.glance.image_states(conn, users.keys() - by_id.keys())
            new = {
                i: status
                for i in sorted(users.keys() - by_id.keys())
                if (status := self.glance.orphan_status(states.get(i))) is not None
            }
            rows = self.glance.image_rows(conn, new)
        # Nova's copies describe each instance's image_ref, not the image backing its disk.
        using = {i: [refs[p.uuid] for p in users[i]] for i in new}
        added = self._images(new, rows, using, image_sysmeta=set(), specs=set())
        for image in [*images, *added]:
            key = image_key(image.id)
            if key not in users:
                continue
            known = {a.uuid for a in image.instances}
            image.instances = sorted(
                [*image.instances, *(_affected(refs[p.uuid], self.now) for p in users[key]
                                     if p.uuid not in known)],
                key=lambda a: a.uuid,
            )  # fmt: skip
            image.hosts = sorted({*image.hosts, *(p.host for p in users[key])})
            if image in added:
                image.recover, image.note = _image_suggestion(image)
        return sorted([*images, *added], key=lambda i: i.id)

    def _cell_failed(self, cell: CellReader, exc: SQLAlchemyError) -> None:
        self._cell_unreachable(cell, f"cannot read {cell.db.label}: {describe_db_error(exc)}")

    def _cell_unreachable(self, cell: CellReader, error: str) -> None:
        self.cells = [c for c in self.cells if c.name != cell.name]
        self.cells.append(CellStatus(cell.name, False, error))

    def _orphan_flavor_ids(
        self, cells: list[CellReader], refs: dict[str, set[int]]
    ) -> dict[str, dict[int, tuple[str, Row[Any]] | None]]:
        """Per cell: orphaned flavor id -> its soft-deleted/archived row, if one survives.

        From the rows pass 1 read (``self.rows``) and the live flavors (``_live_flavors``):
        an instance of a live flavor id may still embed another flavor (id reused).
        """
        orphans: dict[str, dict[int, tuple[str, Row[Any]] | None]] = {}
        if self.store == "api" and self.nova.api is not None:
            with self.nova.api.db.engine.connect() as conn:
                self.live_api = self.nova.api.live_flavors(conn, set().union(*refs.values()))
        for cell in cells:
            ids = refs.get(cell.name, set())
            rows = self.rows.get(cell.name, {})
            if self.store == "api":
                missing = ids - self.live_api.keys()
            else:
                missing = {i for i in ids if i not in self._live_flavors(cell.name)}
            orphans[cell.name] = {i: rows.get(i) for i in sorted(missing)}
        return orphans

    def _live_flavors(self, cell: str) -> dict[int, LiveFlavor]:
        """The live flavor rows known for ``cell``: nova_api's, or the cell's instance_types."""
        if self.store == "api":
            return self.live_api
        return {
            i: LiveFlavor.from_row(row)
            for i, (table, row) in self.rows.get(cell, {}).items()
            if table == "instance_types" and row.deleted == 0
        }

    def _flavor_uses(
        self, cell: CellReader, conn: Any, refs: list[InstanceRef], warnings: list[str]
    ) -> tuple[list[_FlavorUse], dict[int, tuple[str, Row[Any]]]]:
        """What each instance read embeds: its flavor now, and the flavor a revert gives back;
        with the rows of revert flavors not read yet (legacy clouds)."""
        blobs = cell.flavor_blobs_of(conn, [r.uuid for r in refs if r.flavor_id is not None])
        uses: list[_FlavorUse] = []
        for ref in refs:
            if ref.flavor_id is None:
                continue
            blob: dict[str, FlavorDef | None] = {}
            if ref.uuid in blobs:
                try:
                    blob = parse_flavor_blob(blobs[ref.uuid])
                except FlavorBlobError as exc:
                    warnings.append(f"instance {ref.uuid} in cell {cell.name}: {exc}; skipped")
            uses.append(_FlavorUse(cell.name, ref, ref.flavor_id, False, _copy_of(blob, ref)))
            old = blob.get("old")
            # nova 34 nova/compute/manager.py finish_revert_resize: _set_instance_info(instance,
            # instance.old_flavor) makes the old flavor the instance's flavor again.
            if ref.vm_state == "resized" and old is not None and old.id != ref.flavor_id:
                uses.append(_FlavorUse(cell.name, ref, old.id, True, old))
        unknown = {u.flavor_id for u in uses if u.revert} - self.rows.get(cell.name, {}).keys()
        if unknown and self.store == "cell" and cell.schema.has_legacy_flavors:
            return uses, cell.legacy_flavor_rows(conn, unknown)
        return uses, {}

    def _flavors(self, uses: list[_FlavorUse], sysmeta: set[str]) -> list[FlavorOrphan]:
        """The orphans among the flavors instances use (or get back on revert-resize)."""
        if self.store == "api" and self.nova.api is not None:
            unknown = {u.flavor_id for u in uses if u.revert} - self.live_api.keys()
            if unknown:
                with self.nova.api.db.engine.connect() as conn:
                    self.live_api.update(self.nova.api.live_flavors(conn, unknown))
        gone: dict[int, FlavorOrphan] = {}
        reused: dict[tuple[int, str], FlavorOrphan] = {}
        for use in uses:
            live_row = self._live_flavors(use.cell).get(use.flavor_id)
            if live_row is None:
                orphan = gone.get(use.flavor_id)
                if orphan is None:
                    orphan = gone[use.flavor_id] = FlavorOrphan(
                        id=use.flavor_id, flavorid=None, name=None, state="missing", instances=[]
                    )
                self._row_facts(orphan, self.rows.get(use.cell, {}).get(use.flavor_id))
                if not use.revert and use.ref.uuid in sysmeta:
                    orphan.definitions_from_system_metadata += 1
            elif use.copy is not None and live_row.contradicted_by(use.copy):
                key = (use.flavor_id, use.copy.flavorid)
                orphan = reused.get(key)
                if orphan is None:
                    orphan = reused[key] = FlavorOrphan(
                        id=use.flavor_id, flavorid=use.copy.flavorid, name=use.copy.name,
                        state=ID_REUSED, instances=[], live=live_row,
                    )  # fmt: skip
            else:
                continue
            affected = _affected(use.ref, self.now)
            (orphan.revert_instances if use.revert else orphan.instances).append(affected)
            if use.copy is not None:
                orphan.copies[use.ref.uuid] = use.copy
        orphans = [*gone.values(), *reused.values()]
        for orphan in orphans:
            orphan.instances.sort(key=lambda a: a.uuid)
            orphan.revert_instances.sort(key=lambda a: a.uuid)
            copies = orphan.copies
            orphan.definitions_from_instance_extra = len(copies)
            if not copies:
                continue
            first = copies[min(copies)]
            orphan.flavorid = orphan.flavorid or first.flavorid
            orphan.name = orphan.name or first.name
            orphan.differ_in, found = variants(copies)
            if len(found) > 1:
                orphan.variants = found
                orphan.conflicting_instances = sorted(
                    {min(copies), *(u for u, d in copies.items() if d != first)}
                )
        return sorted(orphans, key=lambda o: (o.id, o.state == ID_REUSED, o.flavorid or ""))

    def _row_facts(self, orphan: FlavorOrphan, found: tuple[str, Row[Any]] | None) -> None:
        if found is None:
            return
        table, row = found
        orphan.row_table = orphan.row_table or table
        if self.store == "cell":
            orphan.state = "archived" if table.startswith("shadow_") else "soft-deleted"
            orphan.deleted_at = row.deleted_at
        orphan.flavorid = orphan.flavorid or row.flavorid
        orphan.name = orphan.name or row.name

    def _store_file(self, image_id: str) -> bool | None:
        # Every datadir of the store (filesystem_store_datadirs): the file may be in any.
        stores = [Path(d) for d in self.settings.image_dirs()]
        readable = [s for s in stores if s.is_dir() and os.access(s, os.R_OK | os.X_OK)]
        if not UUID_RE.match(image_id) or len(readable) < len(stores):
            return None
        return any((store / image_id).is_file() for store in readable)

    def _request_specs(self, instances: dict[str, list[InstanceRef]]) -> set[str]:
        """The instances of orphaned images that have a request spec: one statement."""
        api = self.nova.api
        uuids = {r.uuid for refs in instances.values() for r in refs}
        if api is None or not uuids:
            return set()
        with api.db.engine.connect() as conn:
            return api.request_spec_uuids(conn, uuids)

    def _images(
        self,
        orphan_images: dict[str, str],
        rows: dict[str, Row[Any]],
        instances: dict[str, list[InstanceRef]],
        image_sysmeta: set[str],
        specs: set[str],
    ) -> list[ImageOrphan]:
        with self.glance.db.engine.connect() as conn:
            children = self.glance.child_counts(conn, orphan_images)
            snapshots = self.glance.snapshot_ids(conn, orphan_images)
            locations = self.glance.location_values(conn, orphan_images)
        rbd = inventory_facts(self.settings, locations, sorted(orphan_images))
        images = []
        for image_id, status in orphan_images.items():
            row = rows.get(image_id)
            every = sorted(instances[image_id], key=lambda r: r.uuid)
            refs = [r for r in every if not r.cell0]
            booted = [r for r in refs if r.host and r.image_id == image_id]
            booted_any = [r for r in refs if r.image_id == image_id]
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
                children=children.get(image_id, (ChildCounts(), ChildCounts()))[0],
                rbd=rbd.get(image_id),
                row_facts=(
                    {k: getattr(row, k, None) for k in ("virtual_size", "size", "disk_format")}
                    if row is not None
                    else {}
                ),
                rows_left=children.get(image_id, (ChildCounts(), ChildCounts()))[1],
                request_specs=sum(r.uuid in specs for r in booted_any),
                system_metadata=sum(r.uuid in image_sysmeta for r in booted_any),
            )
            image.recover, image.note = _image_suggestion(image)
            if image.recover and image.row_status == "deactivated":
                image.note = f"{image.note}; it comes back deactivated, as an admin left it"
            images.append(image)
        return images

    def _suggest(self, orphans: list[FlavorOrphan]) -> None:
        for orphan in orphans:
            token = shlex.quote(_flavor_token(orphan, orphans))
            if orphan.state == ID_REUSED:
                orphan.note, orphan.recreate = id_reused_note(orphan)
            elif not orphan.recoverable:
                continue
            elif self.store == "cell" and orphan.row_table is None:
                # Before Newton recover un-deletes rows; it re-creates flavors from the
                # instances' copies only in nova_api (flavors.py).
                orphan.note = (
                    "no instance_types or shadow_instance_types row is left to un-delete; "
                    "recover re-creates flavors from instance copies only in nova_api"
                )
            elif orphan.variants and self.store == "api":
                orphan.note = (
                    f"the copies disagree in {', '.join(orphan.differ_in)}: choose the one to "
                    f"trust, `recover flavor {token} --from-instance UUID` with an instance "
                    "that holds it"
                )
            else:
                orphan.recover = f"recover flavor {token}"


def _copy_of(blob: dict[str, FlavorDef | None], ref: InstanceRef) -> FlavorDef | None:
    """The embedded copy of the flavor ``instance_type_id`` names: ``cur``, else old/new."""
    copies = [blob.get(k) for k in ("cur", "new", "old")]
    return next((d for d in copies if d is not None and d.id == ref.flavor_id), None)


def recreate_command(definition: FlavorDef) -> str:
    """The nova API call that re-creates a flavor under its flavorid with a new internal id."""
    words = ["openstack", "flavor", "create", "--id", definition.flavorid]
    words += ["--ram", str(definition.memory_mb), "--vcpus", str(definition.vcpus)]
    words += ["--disk", str(definition.root_gb)]
    if definition.ephemeral_gb:
        words += ["--ephemeral", str(definition.ephemeral_gb)]
    if definition.swap:
        words += ["--swap", str(definition.swap)]
    if definition.rxtx_factor != 1.0:
        words += ["--rxtx-factor", f"{definition.rxtx_factor:g}"]
    if not definition.is_public:
        words.append("--private")
    for key, value in definition.extra_specs:
        words += ["--property", f"{key}={value}"]
    words.append(definition.name)
    return " ".join(shlex.quote(w) for w in words)


def id_reused_note(orphan: FlavorOrphan) -> tuple[str, str]:
    """What can and cannot be done for a flavor whose internal id a live flavor took.

    Returns the explanation and the nova API command that re-creates the flavor under
    its flavorid (nova assigns a new internal id; the instances keep the old one).
    """
    assert orphan.live is not None
    live = orphan.live
    copy = orphan.variants[0].definition if orphan.variants else orphan.copies[min(orphan.copies)]
    note = (
        f"its internal id {orphan.id} now belongs to live flavor {live.flavorid!r} "
        f"({live.name!r}), so it cannot come back under that id; nova runs the instances "
        "from their embedded copy; to make its flavorid resolvable again, recreate it under "
        "a new internal id"
    )
    return note, recreate_command(copy)


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
        # A resized instance gets the flavor back on revert-resize: that one ran.
        ran = orphan.instances or getattr(orphan, "revert_instances", [])
        if orphan.never_ran and not ran:
            orphan.recover = None
            apart.append(orphan)
    return apart


RBD_NOTES = {
    "intact": "{pool}/<id>@snap is intact in Ceph: un-delete only",
    "trash": "in the RBD trash of pool {pool}: restored, snap re-created and protected",
    "snapshot-missing": "{pool}/<id> has no snap: re-created and protected",
}


def _base_names(image: ImageOrphan, found: Iterable[ProbedInstance] = ()) -> list[str]:
    """Every name the image's ``_base`` file may have on a host: its id in both cases, the
    spellings of the instances, and the backing files the probe saw mapped to it."""
    names = {base_file_name(image.id), base_file_name(image.id.upper()), *image.base_files}
    names |= {str(p.backing_file) for p in found if p.backing_image == image_key(image.id)}
    return sorted(names)


def _copy_suggestion(image: ImageOrphan) -> None:
    """With copies found, the command names the host of the freshest one (latest mtime:
    the one nova's cache manager keeps longest), unless the store still holds the data."""
    if not image.copies or image.store_file or image.status == "missing":
        return
    if image.rbd is not None and image.rbd.get("state") in RBD_NOTES:
        return
    best = max(image.copies, key=lambda c: (c.verified, c.mtime))
    quoted = shlex.quote(image.id)
    image.recover = f"recover image {quoted} --from-host {shlex.quote(best.host)}"
    image.note = (
        f"{best.path} on {best.host}: the freshest "
        + ("verified " if best.verified else "(none verified) ")
        + f"of {len(image.copies)} cop{'y' if len(image.copies) == 1 else 'ies'} "
        "found by --probe-hosts"
    )


def _image_suggestion(image: ImageOrphan) -> tuple[str | None, str | None]:
    quoted = shlex.quote(image.id)
    if image.never_ran and not image.instances:
        return None, (
            "only failed builds in cell0 use it: no compute node ever ran them; "
            "delete them (openstack server delete) rather than recover the image"
        )
    purged = _purged_note(image)
    if image.status == "missing" and not UUID_RE.match(image.id):
        # Glance accepts only a UUID as the id of an image it creates (glance 33 images
        # schema, id pattern): a reference that is none cannot come back under itself.
        return None, "the images row was purged, and the reference is no image UUID"
    if image.status == "missing":
        command, where = _image_suggestion_of_row(image, quoted)
        if not image.request_specs and not image.system_metadata:
            # No copy holds its disk_format: recover/images/recreate.py refuses without it.
            return f"{command} --disk-format FMT", (
                "the images row was purged and Nova holds no copy of it (no request spec, no "
                f"image_* system metadata): recover re-creates it with the format given; {where}"
            )
        return command, (
            f"the images row was purged: recover re-creates it under its own id from Nova's "
            f"copies; {where}"
        )
    if purged:
        command, note = _image_suggestion_of_row(image, quoted)
        return command, f"{note}; {purged}"
    return _image_suggestion_of_row(image, quoted)


def _purged_note(image: ImageOrphan) -> str | None:
    """What the report says when the image's properties are gone from Glance."""
    if image.status == "missing" or image.rows_left.properties:
        return None
    if image.system_metadata:
        return (
            "no property row left (purged, or it had none): rebuilt from the system metadata "
            f"of {image.system_metadata} instance(s)"
        )
    return "no property row left (purged, or it had none) and no copy in Nova"


def _image_suggestion_of_row(image: ImageOrphan, quoted: str) -> tuple[str, str]:
    if image.store_file:
        return f"recover image {quoted}", "the store still holds the data: un-delete only"
    if image.rbd is not None and image.rbd.get("state") in RBD_NOTES:
        return f"recover image {quoted}", RBD_NOTES[image.rbd["state"]].format(**image.rbd)
    if image.hosts:
        return (
            f"recover image {quoted} --from-host {shlex.quote(image.hosts[0])}",
            f"_base/{image.base_file} on a compute node that runs it",
        )
    return (
        f"recover image {quoted} --base-file PATH",
        "no compute node runs it: find a copy of _base/" + image.base_file,
    )


def scan(
    settings: Settings, now: datetime | None = None, probe: ProbeOptions | None = None
) -> Inventory:
    """Run the inventory across every cell. Unreachable cells make it partial, not fatal;
    with ``probe``, so do unreachable compute hosts."""
    moment = now or datetime.now(timezone.utc).replace(tzinfo=None)
    nova = open_nova(settings, allow_unreachable_cells=True, cell_timeout=settings.cell_timeout)
    try:
        if not nova.cells:
            if len(nova.unreachable) == 1:
                raise DatabaseError(nova.unreachable[0][1])
            reasons = "; ".join(err for _, err in nova.unreachable)
            raise DatabaseError(f"no Nova cell database could be read: {reasons}")
        glance = open_glance(settings)
        try:
            return _Scan(settings, nova, glance, moment, probe).run()
        finally:
            glance.db.dispose()
    finally:
        nova.dispose()
