"""Read instances and flavor definitions from Nova cell and API databases.

Every query here is set-based: one statement per table per cell, with the
interesting ids passed as an expanding ``IN`` list, never one per instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, null, or_, select
from sqlalchemy.engine import Connection, Row

from recover.db.engine import Database
from recover.db.schema import NovaApiSchema, NovaCellSchema

#: Keys of a serialized Flavor that describe it (timestamps and ``deleted`` do not).
FLAVOR_FIELDS = (
    "id",
    "flavorid",
    "name",
    "memory_mb",
    "vcpus",
    "root_gb",
    "ephemeral_gb",
    "swap",
    "rxtx_factor",
    "vcpu_weight",
    "disabled",
    "is_public",
)
#: Legacy (Juno and older) ``instance_system_metadata`` keys naming the flavor.
SYSMETA_FLAVOR_KEYS = ("instance_type_id", "instance_type_flavorid", "instance_type_name")
SHELVED_IMAGE_KEY = "shelved_image_id"
#: nova 34 ``nova/utils.py`` ``SM_IMAGE_PROP_PREFIX``: sysmeta keys copied from the image.
IMAGE_PREFIX = "image_"
#: nova 34 ``nova/compute/api.py`` ``_populate_instance_for_create`` sets it on every boot.
BASE_IMAGE_REF_KEY = "image_base_image_ref"
#: The instances columns an InstanceRef is made of.
INSTANCE_COLUMNS = (
    "uuid", "host", "node", "vm_state", "project_id",
    "launched_at", "instance_type_id", "image_ref",
)  # fmt: skip
#: Values per ``IN (...)`` list. 50,000 uuids make a 2 MB statement, within every
#: server's max_allowed_packet (4 MB on MySQL 5.6): the inventory sends one statement
#: per query up to that many distinct flavors, images or affected instances.
IN_BATCH = 50_000
#: Rows fetched at a time when streaming a scan of the live instances.
STREAM_ROWS = 5_000


def chunks(values: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class FlavorDef:
    """A flavor definition, as Nova serializes it into ``instance_extra.flavor``."""

    id: int
    flavorid: str
    name: str
    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int
    swap: int
    rxtx_factor: float
    vcpu_weight: int | None
    disabled: bool
    is_public: bool
    extra_specs: tuple[tuple[str, str], ...] = ()
    created_at: str | None = field(default=None, compare=False)
    #: Set when the flavor row was updated (e.g. its description) before this copy was taken.
    updated_at: str | None = field(default=None, compare=False)

    def differences(self, other: FlavorDef) -> list[str]:
        names = [
            f for f in (*FLAVOR_FIELDS, "extra_specs") if getattr(self, f) != getattr(other, f)
        ]
        return names


#: Fields nova never changes once a flavor exists (its API updates only the description, the
#: extra specs and the access list: nova 34 nova/api/openstack/compute/flavor_manage.py
#: ``_update``): a copy that differs in one of them is a copy of another flavor.
IDENTITY_FIELDS = ("flavorid", "name", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "swap")


@dataclass(frozen=True)
class Variant:
    """One version of a flavor among the copies instances embed, and who holds it."""

    definition: FlavorDef
    count: int
    #: The smallest uuid of an instance holding it, to name with ``--from-instance``.
    example: str

    def values(self, fields: Sequence[str]) -> dict[str, Any]:
        return {
            f: dict(self.definition.extra_specs)
            if f == "extra_specs"
            else getattr(self.definition, f)
            for f in fields
        }

    def shown(self, fields: Sequence[str]) -> str:
        return ", ".join(
            f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, dict) else repr(v)}"
            for k, v in self.values(fields).items()
        )

    def describe(self, fields: Sequence[str]) -> str:
        return f"{self.count} instance(s) hold {self.shown(fields)} (e.g. {self.example})"


def variants(copies: dict[str, FlavorDef]) -> tuple[list[str], list[Variant]]:
    """The fields the copies differ in, and each distinct copy: most instances first."""
    groups: list[tuple[FlavorDef, list[str]]] = []
    for uuid in sorted(copies):
        definition = copies[uuid]
        for known, holders in groups:
            if known == definition:
                holders.append(uuid)
                break
        else:
            groups.append((definition, [uuid]))
    found = [Variant(d, len(holders), holders[0]) for d, holders in groups]
    found.sort(key=lambda v: (-v.count, v.example))
    if not found:
        return [], []
    first = found[0].definition
    return sorted({f for v in found[1:] for f in first.differences(v.definition)}), found


@dataclass(frozen=True)
class LiveFlavor:
    """A live flavor row (``nova_api.flavors`` or a live ``instance_types`` row)."""

    id: int
    flavorid: str
    name: str
    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int
    swap: int
    created_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> LiveFlavor:
        return cls(
            id=int(row.id), flavorid=str(row.flavorid), name=str(row.name),
            memory_mb=int(row.memory_mb or 0), vcpus=int(row.vcpus or 0),
            root_gb=int(row.root_gb or 0), ephemeral_gb=int(row.ephemeral_gb or 0),
            swap=int(row.swap or 0), created_at=row.created_at,
        )  # fmt: skip

    def contradicted_by(self, copy: FlavorDef) -> list[str]:
        """Whether an instance's copy is of another flavor: its flavorid or name differ.

        A copy with this flavorid and name but other sizes is this flavor with copies that
        disagree (edited by hand, or recovered from another variant), not a reused id.
        """
        return [f for f in ("flavorid", "name") if getattr(self, f) != getattr(copy, f)]

    def may_not_hold(self, sizes: tuple[int, int, int, int], created_at: datetime | None) -> bool:
        """Whether an instance with these ``instances`` columns may embed another flavor.

        nova 34 ``nova/compute/manager.py`` ``_set_instance_info`` copies memory_mb, vcpus,
        root_gb and ephemeral_gb with ``instance_type_id``, so an instance of this flavor
        has its sizes; and it cannot be older than the flavor unless resized to it later.
        Only instances for which this is True need their ``instance_extra.flavor`` read.
        """
        if created_at is None or self.created_at is None or created_at < self.created_at:
            return True
        return sizes != (self.memory_mb, self.vcpus, self.root_gb, self.ephemeral_gb)


class FlavorBlobError(ValueError):
    """``instance_extra.flavor`` is not what Nova writes."""


def _flavor_from_primitive(primitive: Any) -> FlavorDef | None:
    if primitive is None:
        return None
    if not isinstance(primitive, dict) or not isinstance(primitive.get("nova_object.data"), dict):
        raise FlavorBlobError("a flavor is not a serialized nova object")
    data = primitive["nova_object.data"]
    missing = [
        k for k in ("id", "flavorid", "name", "memory_mb", "vcpus", "root_gb") if k not in data
    ]
    if missing:
        raise FlavorBlobError(f"flavor lacks {missing[0]!r}")
    specs = data.get("extra_specs") or {}
    if not isinstance(specs, dict):
        raise FlavorBlobError("extra_specs is not an object")
    try:
        return FlavorDef(
            id=int(data["id"]),
            flavorid=str(data["flavorid"]),
            name=str(data["name"]),
            memory_mb=int(data["memory_mb"]),
            vcpus=int(data["vcpus"]),
            root_gb=int(data["root_gb"]),
            ephemeral_gb=int(data.get("ephemeral_gb") or 0),
            swap=int(data.get("swap") or 0),
            rxtx_factor=float(data.get("rxtx_factor", 1.0)),
            vcpu_weight=None if data.get("vcpu_weight") is None else int(data["vcpu_weight"]),
            # Very old instances lack these two; nova defaults them to False and True.
            disabled=bool(data.get("disabled", False)),
            is_public=bool(data.get("is_public", True)),
            extra_specs=tuple(sorted((str(k), str(v)) for k, v in specs.items())),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
        )
    except (TypeError, ValueError) as exc:
        raise FlavorBlobError(f"bad flavor field: {exc}") from None


def parse_flavor_blob(text: str | None) -> dict[str, FlavorDef | None]:
    """Parse ``instance_extra.flavor`` (``{"cur": ..., "old": ..., "new": ...}``).

    Shape: nova 34 ``nova/objects/instance.py`` ``_flavor_from_db``; unknown keys
    (``nova_object.changes``, fields newer than ours) are ignored.
    """
    if text is None or not text.strip():
        raise FlavorBlobError("instance_extra.flavor is empty")
    try:
        blob = json.loads(text)
    except ValueError as exc:
        reason = getattr(exc, "msg", str(exc))
        raise FlavorBlobError(f"instance_extra.flavor is not valid JSON ({reason})") from None
    if not isinstance(blob, dict) or "cur" not in blob:
        raise FlavorBlobError("instance_extra.flavor has no 'cur' flavor")
    return {key: _flavor_from_primitive(blob.get(key)) for key in ("cur", "old", "new")}


@dataclass(frozen=True)
class InstanceRef:
    """A live instance that uses something orphaned."""

    uuid: str
    cell: str
    host: str | None
    node: str | None
    vm_state: str | None
    project_id: str | None
    launched_at: datetime | None
    flavor_id: int | None
    image_ref: str | None
    shelved_image_id: str | None
    #: In cell0: a failed build that no compute node ever ran.
    cell0: bool = False

    @property
    def image_id(self) -> str:
        """``image_ref`` as Glance names it: Nova keeps the client's spelling (see image_key)."""
        return image_key(self.image_ref)

    @property
    def shelved_id(self) -> str:
        return image_key(self.shelved_image_id)


def image_key(value: str | None) -> str:
    """An image id as it compares: lower case, ``''`` for none.

    Nova stores ``image_ref`` as the client sent it, and Glance, whose ``images.id`` is
    varchar(36) in a case-insensitive collation on MySQL, serves ``GET /v2/images/<ID>``
    for any spelling (glance 33 ``glance/db/sqlalchemy/api.py`` ``_image_get`` compares
    ``id`` in SQL). Glance writes lower-case ids (``uuidutils.generate_uuid``).
    """
    return (value or "").lower()


@dataclass
class LiveRefs:
    """What the live instances of one cell reference, each value -> the instances' ids.

    Built in one pass over ``instances`` (:meth:`CellReader.live_references`), so the
    instances that use an orphan are found later by primary key, not by a second scan.
    """

    #: ``instance_type_id`` -> ids of the live instances with that flavor
    flavors: dict[int, list[int]] = field(default_factory=dict)
    #: ``image_ref`` (boot-from-volume ``''`` left out; lower case, :func:`image_key`) -> ids
    images: dict[str, list[int]] = field(default_factory=dict)
    #: ``shelved_image_id`` of shelved-offloaded instances (lower case) -> ids
    shelved: dict[str, list[int]] = field(default_factory=dict)
    #: (instance_type_id, memory_mb, vcpus, root_gb, ephemeral_gb) -> (id, created_at) of
    #: each instance: what :meth:`reuse_suspects` compares with the live flavor rows.
    sizes: dict[tuple[int, int, int, int, int], list[tuple[int, datetime | None]]] = field(
        default_factory=dict
    )
    #: ids of the instances in vm_state ``resized``: their ``instance_extra.flavor`` ``old``
    #: is the flavor ``revert-resize`` gives back (nova 34 ``finish_revert_resize``).
    resized: list[int] = field(default_factory=list)

    def image_ids(self) -> set[str]:
        return self.images.keys() | self.shelved.keys()

    def instance_ids(self, flavor_ids: Iterable[int], image_ids: Iterable[str]) -> list[int]:
        """Ids of the instances whose flavor, image or shelve snapshot is one of those given."""
        found: set[int] = set()
        for flavor_id in flavor_ids:
            found.update(self.flavors.get(flavor_id, ()))
        for image_id in image_ids:
            found.update(self.images.get(image_id, ()))
            found.update(self.shelved.get(image_id, ()))
        return sorted(found)

    def reuse_suspects(self, live: dict[int, LiveFlavor]) -> list[int]:
        """Ids of instances whose live flavor row may be another flavor than the one they embed.

        A deleted flavor's internal id can be taken by a new flavor (InnoDB resets
        AUTO_INCREMENT to max(id)+1 at restart before MariaDB 10.2.4 / MySQL 8.0).
        """
        found: list[int] = []
        for (flavor_id, *sizes), members in self.sizes.items():
            row = live.get(flavor_id)
            if row is None:
                continue
            key = (sizes[0], sizes[1], sizes[2], sizes[3])
            found += [i for i, created in members if row.may_not_hold(key, created)]
        return sorted(found)


class CellReader:
    """Read-only queries against one Nova cell database."""

    def __init__(
        self, name: str, db: Database, schema: NovaCellSchema, *, cell0: bool = False
    ) -> None:
        self.name = name
        self.db = db
        self.schema = schema
        #: cell0: failed builds only, never run on any compute node (recover.db.cells).
        self.cell0 = cell0
        self.instances = db.table("instances")
        #: Its thread in ``NovaCloud.workers`` when cells are scanned at once.
        self.worker: str | None = None

    def connect(self) -> Connection:
        return self.db.engine.connect()

    def has_live_legacy_flavors(self, conn: Connection) -> bool:
        """True when ``instance_types`` still holds live rows: the cloud is pre-Ocata.

        Nova's own main-DB migration 345 refuses to run while any exist, so a live
        row means flavors are still served from this table.
        """
        if not self.schema.has_legacy_flavors:
            return False
        types = self.db.table("instance_types")
        return (
            conn.execute(select(types.c.id).where(types.c.deleted == 0).limit(1)).first()
            is not None
        )

    def referenced_flavor_ids(self, conn: Connection) -> set[int]:
        i = self.instances
        rows = conn.execute(
            select(i.c.instance_type_id)
            .where(i.c.deleted == 0, i.c.instance_type_id.is_not(None))
            .group_by(i.c.instance_type_id)
        )
        return {int(r[0]) for r in rows}

    def referenced_image_ids(self, conn: Connection) -> set[str]:
        """Boot images (``image_ref``; ``''`` is boot-from-volume) and shelve snapshots."""
        i = self.instances
        refs = {
            r[0]
            for r in conn.execute(
                select(i.c.image_ref)
                .where(i.c.deleted == 0, i.c.image_ref.is_not(None), i.c.image_ref != "")
                .group_by(i.c.image_ref)
            )
        }
        if self.db.has_table("instance_system_metadata"):
            sm = self.db.table("instance_system_metadata")
            refs |= {
                r[0]
                for r in conn.execute(
                    select(sm.c.value)
                    .join(i, i.c.uuid == sm.c.instance_uuid)
                    .where(
                        i.c.deleted == 0,
                        i.c.vm_state == "shelved_offloaded",
                        sm.c.key == SHELVED_IMAGE_KEY,
                        sm.c.deleted == 0,
                        sm.c.value.is_not(None),
                        sm.c.value != "",
                    )
                    .group_by(sm.c.value)
                )
            }
        return refs

    def live_references(self, conn: Connection) -> LiveRefs:
        """One scan of the live instances: the flavors, images and shelve snapshots they use.

        The same references as :meth:`referenced_flavor_ids` and
        :meth:`referenced_image_ids` together, from one statement instead of three
        scans of ``instances``, streamed, and with the ids of the instances that use
        each one (for :meth:`instances_by_id`).
        """
        i = self.instances
        columns = [i.c.id, i.c.instance_type_id, i.c.image_ref, i.c.vm_state, i.c.created_at]
        columns += [i.c.memory_mb, i.c.vcpus, i.c.root_gb, i.c.ephemeral_gb]
        query = self._with_shelved(columns).where(i.c.deleted == 0)
        refs = LiveRefs()
        result = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(query)
        for row in result:
            instance_id, flavor_id, image_ref, vm_state, created_at = row[:5]
            shelved_image_id = row[-1]
            if flavor_id is not None:
                refs.flavors.setdefault(int(flavor_id), []).append(instance_id)
                sizes = (int(flavor_id), *(int(v or 0) for v in row[5:9]))
                refs.sizes.setdefault(sizes, []).append((instance_id, created_at))  # type: ignore[arg-type]
            if vm_state == "resized":
                refs.resized.append(instance_id)
            if image_ref:
                refs.images.setdefault(image_key(image_ref), []).append(instance_id)
            if shelved_image_id:
                refs.shelved.setdefault(image_key(shelved_image_id), []).append(instance_id)
        return refs

    def instances_by_id(self, conn: Connection, instance_ids: Sequence[int]) -> list[InstanceRef]:
        """The live instances among ``instance_ids`` (primary keys), sorted by uuid."""
        if not instance_ids:
            return []
        i = self.instances
        columns = [i.c[name] for name in INSTANCE_COLUMNS]
        found: list[InstanceRef] = []
        for batch in chunks(instance_ids):
            query = self._with_shelved(columns).where(i.c.deleted == 0, i.c.id.in_(batch))
            found += [self._instance(r) for r in conn.execute(query)]
        return sorted(found, key=lambda r: r.uuid)

    def _with_shelved(self, columns: list[Any]) -> Any:
        """SELECT ``columns`` of instances plus ``shelved_image_id`` of shelved-offloaded ones."""
        i = self.instances
        if not self.db.has_table("instance_system_metadata"):
            return select(*columns, null().label("shelved_image_id"))
        shelved = self.db.table("instance_system_metadata").alias("shelved")
        return select(*columns, shelved.c.value.label("shelved_image_id")).select_from(
            i.outerjoin(
                shelved,
                and_(
                    shelved.c.instance_uuid == i.c.uuid,
                    shelved.c.key == SHELVED_IMAGE_KEY,
                    shelved.c.deleted == 0,
                    i.c.vm_state == "shelved_offloaded",
                ),
            )
        )

    def flavor_blobs_of(self, conn: Connection, uuids: Iterable[str]) -> dict[str, str]:
        """``instance uuid -> instance_extra.flavor`` (live rows), by the indexed uuid.

        For instances already known to be live (:meth:`instances_by_id`), this is
        :meth:`flavor_blobs` without a scan of ``instances``.
        """
        wanted = sorted(set(uuids))
        if not wanted or not self.schema.has_instance_extra:
            return {}
        ie = self.db.table("instance_extra")
        found: dict[str, str] = {}
        for batch in chunks(wanted):
            rows = conn.execute(
                select(ie.c.instance_uuid, ie.c.flavor).where(
                    ie.c.instance_uuid.in_(batch), ie.c.deleted == 0, ie.c.flavor.is_not(None)
                )
            )
            found.update((r[0], r[1]) for r in rows)
        return dict(sorted(found.items()))

    def image_sysmeta(
        self, conn: Connection, uuids: Iterable[str]
    ) -> dict[str, tuple[int, dict[str, str | None]]]:
        """``uuid -> (instances.root_gb, {image_* key: value})``: the live ``image_*``
        ``instance_system_metadata`` rows of the live instances among ``uuids``.

        nova 34 ``nova/utils.py`` ``get_system_metadata_from_image`` wrote them at boot;
        ``root_gb`` tells an exact ``image_min_disk`` (``max(min_disk, root_gb)``) apart.
        """
        wanted = sorted(set(uuids))
        if not wanted or not self.db.has_table("instance_system_metadata"):
            return {}
        i, sm = self.instances, self.db.table("instance_system_metadata")
        found: dict[str, tuple[int, dict[str, str | None]]] = {}
        for batch in chunks(wanted):
            rows = conn.execute(
                select(i.c.uuid, i.c.root_gb, sm.c.key, sm.c.value)
                .join(sm, sm.c.instance_uuid == i.c.uuid)
                .where(
                    i.c.uuid.in_(batch),
                    i.c.deleted == 0,
                    sm.c.deleted == 0,
                    sm.c.key.startswith(IMAGE_PREFIX, autoescape=True),
                )
                .order_by(i.c.uuid, sm.c.id)
            )
            for uuid, root_gb, key, value in rows:
                found.setdefault(uuid, (int(root_gb or 0), {}))[1][key] = value
        return found

    def image_sysmeta_uuids(self, conn: Connection, uuids: Iterable[str]) -> set[str]:
        """Those of ``uuids`` with at least one live ``image_*`` sysmeta row besides the
        ``image_base_image_ref`` Nova adds itself: a copy of the image's metadata (the
        inventory: one statement per batch, whatever the number of images)."""
        return self._sysmeta_uuids(
            conn,
            uuids,
            lambda sm: (
                sm.c.deleted == 0,
                sm.c.key.startswith(IMAGE_PREFIX, autoescape=True),
                sm.c.key != BASE_IMAGE_REF_KEY,
            ),
        )

    def sysmeta_flavor_uuids(self, conn: Connection, uuids: Iterable[str]) -> set[str]:
        """Those of ``uuids`` with a legacy ``instance_type_id`` sysmeta row (deleted or not).

        :meth:`sysmeta_flavor_instances` for known instances, by the indexed uuid.
        """
        return self._sysmeta_uuids(conn, uuids, lambda sm: (sm.c.key == "instance_type_id",))

    def _sysmeta_uuids(
        self, conn: Connection, uuids: Iterable[str], where: Callable[[Any], tuple[Any, ...]]
    ) -> set[str]:
        """Those of ``uuids`` with an ``instance_system_metadata`` row matching ``where``."""
        wanted = sorted(set(uuids))
        if not wanted or not self.db.has_table("instance_system_metadata"):
            return set()
        sm = self.db.table("instance_system_metadata")
        found: set[str] = set()
        for batch in chunks(wanted):
            found |= {
                r[0]
                for r in conn.execute(
                    select(sm.c.instance_uuid)
                    .where(sm.c.instance_uuid.in_(batch), *where(sm))
                    .group_by(sm.c.instance_uuid)
                )
            }
        return found

    def instances_using(
        self, conn: Connection, flavor_ids: Iterable[int], image_ids: Iterable[str]
    ) -> list[InstanceRef]:
        flavor_list = sorted(set(flavor_ids))
        image_list = sorted({image_key(i) for i in image_ids})
        if not flavor_list and not image_list:
            return []
        i = self.instances
        has_sm = self.db.has_table("instance_system_metadata")
        conditions = []
        if flavor_list:
            conditions.append(i.c.instance_type_id.in_(flavor_list))
        if image_list:
            # LOWER(): Nova keeps the client's spelling of image_ref (image_key); a MySQL
            # collation would ignore case anyway, SQLite would not. No index on image_ref
            # (nova-ab450ba04102.sql): this was a scan of the live instances already.
            conditions.append(func.lower(i.c.image_ref).in_(image_list))
        columns = [i.c[name] for name in INSTANCE_COLUMNS]
        if has_sm and image_list:
            sm = self.db.table("instance_system_metadata")
            conditions.append(
                i.c.uuid.in_(
                    select(sm.c.instance_uuid).where(
                        sm.c.key == SHELVED_IMAGE_KEY,
                        sm.c.deleted == 0,
                        func.lower(sm.c.value).in_(image_list),
                    )
                )
            )
        query = self._with_shelved(columns)
        rows = conn.execute(query.where(i.c.deleted == 0, or_(*conditions)).order_by(i.c.uuid))
        return [self._instance(r) for r in rows]

    def _instance(self, row: Any) -> InstanceRef:
        return InstanceRef(
            uuid=row.uuid,
            cell=self.name,
            host=row.host,
            node=row.node,
            vm_state=row.vm_state,
            project_id=row.project_id,
            launched_at=row.launched_at,
            flavor_id=row.instance_type_id,
            image_ref=row.image_ref,
            shelved_image_id=row.shelved_image_id,
            cell0=self.cell0,
        )

    def flavor_blobs(
        self, conn: Connection, flavor_ids: Iterable[int]
    ) -> list[tuple[str, int, str]]:
        """``(instance uuid, instance_type_id, instance_extra.flavor)`` of live instances."""
        ids = sorted(set(flavor_ids))
        if not ids or not self.schema.has_instance_extra:
            return []
        i, ie = self.instances, self.db.table("instance_extra")
        rows = conn.execute(
            select(i.c.uuid, i.c.instance_type_id, ie.c.flavor)
            .join(ie, ie.c.instance_uuid == i.c.uuid)
            .where(
                i.c.deleted == 0,
                ie.c.deleted == 0,
                i.c.instance_type_id.in_(ids),
                ie.c.flavor.is_not(None),
            )
            .order_by(i.c.uuid)
        )
        return [(r[0], int(r[1]), r[2]) for r in rows]

    def resized_flavor_blobs(self, conn: Connection) -> list[tuple[str, int, str | None, str]]:
        """``(uuid, instance_type_id, project_id, instance_extra.flavor)`` of resized instances."""
        if not self.schema.has_instance_extra:
            return []
        i, ie = self.instances, self.db.table("instance_extra")
        rows = conn.execute(
            select(i.c.uuid, i.c.instance_type_id, i.c.project_id, ie.c.flavor)
            .join(ie, ie.c.instance_uuid == i.c.uuid)
            .where(
                i.c.deleted == 0,
                i.c.vm_state == "resized",
                ie.c.deleted == 0,
                ie.c.flavor.is_not(None),
            )
            .order_by(i.c.uuid)
        )
        return [(r[0], int(r[1] or 0), r[2], r[3]) for r in rows]

    def reuse_suspect_blobs(
        self, conn: Connection, live: dict[int, LiveFlavor]
    ) -> list[tuple[str, int, str | None, str]]:
        """``(uuid, instance_type_id, project_id, flavor)`` of :meth:`LiveRefs.reuse_suspects`.

        The same test as :meth:`LiveFlavor.may_not_hold`, in SQL, for ``recover flavor``
        (which does not scan every instance).
        """
        if not live or not self.schema.has_instance_extra:
            return []
        i, ie = self.instances, self.db.table("instance_extra")
        found: list[tuple[str, int, str | None, str]] = []
        flavors = sorted(live.values(), key=lambda f: f.id)
        for start in range(0, len(flavors), 500):
            conditions = []
            for f in flavors[start : start + 500]:
                if f.created_at is None:
                    conditions.append(i.c.instance_type_id == f.id)
                    continue
                conditions.append(
                    and_(
                        i.c.instance_type_id == f.id,
                        or_(
                            i.c.created_at.is_(None),
                            i.c.created_at < f.created_at,
                            func.coalesce(i.c.memory_mb, 0) != f.memory_mb,
                            func.coalesce(i.c.vcpus, 0) != f.vcpus,
                            func.coalesce(i.c.root_gb, 0) != f.root_gb,
                            func.coalesce(i.c.ephemeral_gb, 0) != f.ephemeral_gb,
                        ),
                    )
                )
            rows = conn.execute(
                select(i.c.uuid, i.c.instance_type_id, i.c.project_id, ie.c.flavor)
                .join(ie, ie.c.instance_uuid == i.c.uuid)
                .where(
                    i.c.deleted == 0, ie.c.deleted == 0, ie.c.flavor.is_not(None), or_(*conditions)
                )
                .order_by(i.c.uuid)
            )
            found += [(r[0], int(r[1]), r[2], r[3]) for r in rows]
        return found

    def sysmeta_flavor_instances(
        self, conn: Connection, flavor_ids: Iterable[int]
    ) -> dict[int, set[str]]:
        """Instances whose legacy ``instance_type_*`` sysmeta keys describe the flavor.

        Kilo's ``migrate_flavor_data`` soft-deleted these rows, so deleted ones count.
        """
        ids = sorted(set(flavor_ids))
        if not ids or not self.db.has_table("instance_system_metadata"):
            return {}
        i, sm = self.instances, self.db.table("instance_system_metadata")
        rows = conn.execute(
            select(i.c.instance_type_id, sm.c.instance_uuid)
            .join(i, i.c.uuid == sm.c.instance_uuid)
            .where(i.c.deleted == 0, i.c.instance_type_id.in_(ids), sm.c.key == "instance_type_id")
            .group_by(i.c.instance_type_id, sm.c.instance_uuid)
        )
        found: dict[int, set[str]] = {}
        for flavor_id, uuid in rows:
            found.setdefault(int(flavor_id), set()).add(uuid)
        return found

    def legacy_flavor_rows(
        self, conn: Connection, flavor_ids: Iterable[int]
    ) -> dict[int, tuple[str, Row[Any]]]:
        """``id -> (table, row)`` from ``instance_types``, then ``shadow_instance_types``."""
        ids = sorted(set(flavor_ids))
        found: dict[int, tuple[str, Row[Any]]] = {}
        for table_name in ("instance_types", "shadow_instance_types"):
            wanted = [x for x in ids if x not in found]
            if not wanted or not self.db.has_table(table_name):
                continue
            table = self.db.table(table_name)
            for row in conn.execute(select(table).where(table.c.id.in_(wanted))):
                found[int(row.id)] = (table_name, row)
        return found


class ApiReader:
    """Read-only queries against the nova_api database."""

    def __init__(self, db: Database, schema: NovaApiSchema) -> None:
        self.db = db
        self.schema = schema

    def has_flavors(self, conn: Connection) -> bool:
        if not self.schema.has_flavors:
            return False
        flavors = self.db.table("flavors")
        return conn.execute(select(flavors.c.id).limit(1)).first() is not None

    def live_flavors(self, conn: Connection, flavor_ids: Iterable[int]) -> dict[int, LiveFlavor]:
        """The live ``flavors`` rows among ``flavor_ids``."""
        flavors = self.db.table("flavors")
        columns = [flavors.c[f] for f in ("id", *IDENTITY_FIELDS, "created_at")]
        found: dict[int, LiveFlavor] = {}
        for batch in chunks(sorted(set(flavor_ids))):
            for row in conn.execute(select(*columns).where(flavors.c.id.in_(batch))):
                found[int(row.id)] = LiveFlavor.from_row(row)
        return found

    def request_specs(self, conn: Connection, uuids: Iterable[str]) -> dict[str, str]:
        """``instance uuid -> request_specs.spec`` (the JSON text) of ``uuids``.

        Empty when nova_api has no ``request_specs`` (pre-Mitaka) or it lacks ``spec``.
        """
        wanted = sorted(set(uuids))
        if not wanted or not self.schema.has_request_specs:
            return {}
        specs = self.db.table("request_specs")
        found: dict[str, str] = {}
        for batch in chunks(wanted):
            rows = conn.execute(
                select(specs.c.instance_uuid, specs.c.spec).where(specs.c.instance_uuid.in_(batch))
            )
            found.update((r[0], r[1]) for r in rows if r[1])
        return dict(sorted(found.items()))

    def request_spec_uuids(self, conn: Connection, uuids: Iterable[str]) -> set[str]:
        """Those of ``uuids`` with a ``request_specs`` row (the inventory: the ids only)."""
        wanted = sorted(set(uuids))
        if not wanted or not self.schema.has_request_specs:
            return set()
        specs = self.db.table("request_specs")
        found: set[str] = set()
        for batch in chunks(wanted):
            query = select(specs.c.instance_uuid).where(specs.c.instance_uuid.in_(batch))
            found |= {r[0] for r in conn.execute(query)}
        return found

    def live_flavor_ids(self, conn: Connection, flavor_ids: Iterable[int]) -> set[int]:
        flavors = self.db.table("flavors")
        ids = sorted(set(flavor_ids))
        live: set[int] = set()
        for batch in chunks(ids):
            live |= {
                int(r[0]) for r in conn.execute(select(flavors.c.id).where(flavors.c.id.in_(batch)))
            }
        return live
