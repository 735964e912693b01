"""Write rows the way Nova and Glance themselves write them.

The demo sandbox, the tests and the benchmarks build their clouds with these
functions, so every state recover meets in them is one that Nova or Glance
really produces (``openstack-facts.md`` §1-§2; sources cited per function).
Columns a schema generation lacks are left out, so one function serves all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recover.db.engine import Database


def _fit(db: Database, table: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the columns this schema generation has."""
    columns = db.table(table).c
    return {k: v for k, v in values.items() if k in columns}


def _insert(conn: Connection, db: Database, table: str, values: Mapping[str, Any]) -> int:
    result = conn.execute(insert(db.table(table)).values(**_fit(db, table, values)))
    key = result.inserted_primary_key
    return int(key[0]) if key and isinstance(key[0], int) else 0


def nova_time(value: datetime | None) -> str | None:
    """Datetimes as the nova object layer serializes them: ``2026-11-24T01:20:39Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


@dataclass(frozen=True)
class Flavor:
    """A flavor as an operator created it."""

    name: str
    flavorid: str
    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int = 0
    swap: int = 0
    rxtx_factor: float = 1.0
    vcpu_weight: int | None = None
    disabled: bool = False
    is_public: bool = True
    extra_specs: Mapping[str, str] = field(default_factory=dict)
    projects: tuple[str, ...] = ()
    description: str | None = None
    created_at: datetime | None = None
    #: The internal id; None lets the database assign it.
    id: int | None = None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "flavorid": self.flavorid,
            "memory_mb": self.memory_mb,
            "vcpus": self.vcpus,
            "root_gb": self.root_gb,
            "ephemeral_gb": self.ephemeral_gb,
            "swap": self.swap,
            "rxtx_factor": self.rxtx_factor,
            "vcpu_weight": self.vcpu_weight,
            "disabled": self.disabled,
            "is_public": self.is_public,
            "description": self.description,
            "created_at": self.created_at,
        }


def flavor_primitive(flavor: Flavor, flavor_id: int, version: str = "1.2") -> dict[str, Any]:
    """The serialized ``Flavor`` nova embeds in ``instance_extra.flavor``.

    Field order and values as nova 34 ``nova/objects/flavor.py`` writes them:
    ``vcpu_weight`` None becomes 0 (``_from_db_object``), ``description`` is
    always nulled (``_nullify_flavor_description``); version 1.1 (to Pike) has
    no ``description`` at all.
    """
    data: dict[str, Any] = {
        "id": flavor_id,
        "name": flavor.name,
        "memory_mb": flavor.memory_mb,
        "vcpus": flavor.vcpus,
        "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb,
        "flavorid": flavor.flavorid,
        "swap": flavor.swap,
        "rxtx_factor": float(flavor.rxtx_factor),
        "vcpu_weight": flavor.vcpu_weight or 0,
        "disabled": flavor.disabled,
        "is_public": flavor.is_public,
        "extra_specs": dict(flavor.extra_specs),
    }
    if version != "1.1":
        data["description"] = None
    data.update(
        created_at=nova_time(flavor.created_at),
        updated_at=None,
        deleted_at=None,
        deleted=False,
    )
    return {
        "nova_object.name": "Flavor",
        "nova_object.namespace": "nova",
        "nova_object.version": version,
        "nova_object.data": data,
    }


def flavor_blob(
    cur: dict[str, Any], old: dict[str, Any] | None = None, new: dict[str, Any] | None = None
) -> str:
    return json.dumps({"cur": cur, "old": old, "new": new})


# --- Nova flavors --------------------------------------------------------------------------


def create_legacy_flavor(conn: Connection, cell: Database, flavor: Flavor) -> int:
    """Mitaka ``flavor_create``: ``instance_types`` plus its extra specs and projects."""
    values = {**flavor.row(), "deleted": 0}
    flavor_id = _insert(conn, cell, "instance_types", values)
    for key, value in sorted(flavor.extra_specs.items()):
        _insert(
            conn,
            cell,
            "instance_type_extra_specs",
            {"instance_type_id": flavor_id, "key": key, "value": value, "deleted": 0,
             "created_at": flavor.created_at},
        )  # fmt: skip
    for project in flavor.projects:
        _insert(
            conn,
            cell,
            "instance_type_projects",
            {"instance_type_id": flavor_id, "project_id": project, "deleted": 0,
             "created_at": flavor.created_at},
        )  # fmt: skip
    return flavor_id


def destroy_legacy_flavor(conn: Connection, cell: Database, flavor_id: int, at: datetime) -> None:
    """Mitaka ``flavor_destroy``: soft-delete the flavor, then its live children.

    Each row gets ``deleted = its own id`` (oslo.db ``Query.soft_delete``).
    """
    for table, key in (
        ("instance_types", "id"),
        ("instance_type_extra_specs", "instance_type_id"),
        ("instance_type_projects", "instance_type_id"),
    ):
        t = cell.table(table)
        conn.execute(
            update(t)
            .where(t.c[key] == flavor_id, t.c.deleted == 0)
            .values(deleted=t.c.id, deleted_at=at, updated_at=t.c.updated_at)
        )


def archive_legacy_flavor(conn: Connection, cell: Database, flavor_id: int) -> None:
    """``nova-manage db archive_deleted_rows``: move soft-deleted rows to ``shadow_*``."""
    for table, key in (
        ("instance_type_extra_specs", "instance_type_id"),
        ("instance_type_projects", "instance_type_id"),
        ("instance_types", "id"),
    ):
        live, shadow = cell.table(table), cell.table(f"shadow_{table}")
        rows = conn.execute(select(live).where(live.c[key] == flavor_id, live.c.deleted != 0))
        for row in rows.mappings().all():
            conn.execute(insert(shadow).values(**row))
        conn.execute(delete(live).where(live.c[key] == flavor_id, live.c.deleted != 0))


def create_api_flavor(conn: Connection, api: Database, flavor: Flavor) -> int:
    """Newton+ ``Flavor.create`` into nova_api ``flavors`` (no deleted columns)."""
    flavor_id = _insert(conn, api, "flavors", flavor.row())
    for key, value in sorted(flavor.extra_specs.items()):
        _insert(
            conn,
            api,
            "flavor_extra_specs",
            {"flavor_id": flavor_id, "key": key, "value": value, "created_at": flavor.created_at},
        )
    for project in flavor.projects:
        _insert(
            conn,
            api,
            "flavor_projects",
            {"flavor_id": flavor_id, "project_id": project, "created_at": flavor.created_at},
        )
    return flavor_id


def destroy_api_flavor(conn: Connection, api: Database, flavor_id: int) -> None:
    """nova 34 ``nova/objects/flavor.py`` ``_flavor_destroy``: hard DELETEs."""
    for table, key in (("flavor_projects", "flavor_id"), ("flavor_extra_specs", "flavor_id")):
        t = api.table(table)
        conn.execute(delete(t).where(t.c[key] == flavor_id))
    flavors = api.table("flavors")
    conn.execute(delete(flavors).where(flavors.c.id == flavor_id))


# --- Nova instances ------------------------------------------------------------------------


@dataclass
class Instance:
    uuid: str
    flavor: Flavor
    flavor_id: int
    image_ref: str
    host: str | None
    project_id: str = "65ea11db9ebf49c69d3c05bc38925617"
    user_id: str = "d31b768e1dbf4a0dbf2571234b4e2f5a"
    vm_state: str = "active"
    display_name: str = "vm"
    launched_at: datetime | None = None
    created_at: datetime | None = None
    #: ``nova_object.version`` of the embedded flavor: 1.1 up to Pike, 1.2 after.
    flavor_version: str = "1.2"
    image_properties: Mapping[str, str] = field(default_factory=dict)
    #: Juno-era ``instance_type_*`` sysmeta copies (soft-deleted by Kilo's migration).
    legacy_sysmeta: bool = False
    #: Raw text for instance_extra.flavor, to store malformed data on purpose.
    flavor_text: str | None = None


def create_instance(conn: Connection, cell: Database, inst: Instance) -> int:
    """``Instance.create``: the instances row, instance_extra and system metadata."""
    created = inst.created_at or inst.launched_at
    f = inst.flavor
    instance_id = _insert(
        conn,
        cell,
        "instances",
        {
            "uuid": inst.uuid,
            "created_at": created,
            "deleted": 0,
            "user_id": inst.user_id,
            "project_id": inst.project_id,
            "image_ref": inst.image_ref,
            "host": inst.host,
            "node": inst.host,
            "launched_on": inst.host,
            "instance_type_id": inst.flavor_id,
            "memory_mb": f.memory_mb,
            "vcpus": f.vcpus,
            "root_gb": f.root_gb,
            "ephemeral_gb": f.ephemeral_gb,
            "vm_state": inst.vm_state,
            "power_state": 1 if inst.vm_state == "active" else 4,
            "display_name": inst.display_name,
            "hostname": inst.display_name,
            "launched_at": inst.launched_at,
            "cleaned": 0,
            "locked": 0,
            "ephemeral_key_uuid": None,
        },
    )
    text = inst.flavor_text
    if text is None:
        text = flavor_blob(flavor_primitive(f, inst.flavor_id, inst.flavor_version))
    _insert(
        conn,
        cell,
        "instance_extra",
        {"instance_uuid": inst.uuid, "flavor": text, "deleted": 0, "created_at": created},
    )
    # nova 34 nova/utils.py get_system_metadata_from_image: image_<prop> copies at boot.
    sysmeta = {f"image_{k}": v for k, v in inst.image_properties.items()}
    if inst.image_ref:
        sysmeta["image_base_image_ref"] = inst.image_ref
    for key, value in sorted(sysmeta.items()):
        set_sysmeta(conn, cell, inst.uuid, key, value, created)
    if inst.legacy_sysmeta:
        legacy = {
            "instance_type_id": str(inst.flavor_id),
            "instance_type_name": f.name,
            "instance_type_memory_mb": str(f.memory_mb),
            "instance_type_vcpus": str(f.vcpus),
            "instance_type_root_gb": str(f.root_gb),
            "instance_type_ephemeral_gb": str(f.ephemeral_gb),
            "instance_type_flavorid": f.flavorid,
            "instance_type_swap": str(f.swap),
            "instance_type_rxtx_factor": str(f.rxtx_factor),
            "instance_type_vcpu_weight": "" if f.vcpu_weight is None else str(f.vcpu_weight),
        }
        sm = cell.table("instance_system_metadata")
        for key, value in legacy.items():
            row_id = set_sysmeta(conn, cell, inst.uuid, key, value, created)
            # Kilo's migrate_flavor_data soft-deleted them after copying to instance_extra.
            conn.execute(
                update(sm).where(sm.c.id == row_id).values(deleted=row_id, deleted_at=created)
            )
    return instance_id


def finish_resize(
    conn: Connection, cell: Database, uuid: str, old: tuple[Flavor, int], new: tuple[Flavor, int]
) -> None:
    """A resize waiting to be confirmed or reverted (vm_state ``resized``).

    nova 34 ``nova/compute/api.py`` ``resize`` keeps the current flavor as ``old_flavor``;
    ``nova/compute/manager.py`` ``_finish_resize`` calls ``_set_instance_info`` with the
    new one (instance_type_id and the size columns) and saves cur=new, old, new.
    """
    (old_flavor, old_id), (new_flavor, new_id) = old, new
    current = flavor_primitive(new_flavor, new_id)
    instances, extra = cell.table("instances"), cell.table("instance_extra")
    conn.execute(
        update(instances)
        .where(instances.c.uuid == uuid)
        .values(
            instance_type_id=new_id, memory_mb=new_flavor.memory_mb, vcpus=new_flavor.vcpus,
            root_gb=new_flavor.root_gb, ephemeral_gb=new_flavor.ephemeral_gb, vm_state="resized",
        )
    )  # fmt: skip
    conn.execute(
        update(extra)
        .where(extra.c.instance_uuid == uuid)
        .values(flavor=flavor_blob(current, flavor_primitive(old_flavor, old_id), current))
    )


def set_sysmeta(
    conn: Connection, cell: Database, uuid: str, key: str, value: str, at: datetime | None
) -> int:
    return _insert(
        conn,
        cell,
        "instance_system_metadata",
        {"instance_uuid": uuid, "key": key, "value": value, "deleted": 0, "created_at": at},
    )


def shelve_offload(
    conn: Connection, cell: Database, uuid: str, snapshot_id: str, at: datetime
) -> None:
    """Shelve then offload: the snapshot id goes into sysmeta, the host is cleared.

    nova 34 ``nova/compute/manager.py`` ``_shelve_instance`` / ``shelve_offload_instance``.
    """
    instances = cell.table("instances")
    host = conn.execute(select(instances.c.host).where(instances.c.uuid == uuid)).scalar_one()
    for key, value in (
        ("shelved_at", at.isoformat()),
        ("shelved_image_id", snapshot_id),
        ("shelved_host", host or ""),
    ):
        set_sysmeta(conn, cell, uuid, key, value, at)
    conn.execute(
        update(instances)
        .where(instances.c.uuid == uuid)
        .values(vm_state="shelved_offloaded", host=None, node=None, power_state=4)
    )


def destroy_instance(conn: Connection, cell: Database, uuid: str, at: datetime) -> None:
    """``instance_destroy``: soft-delete the instance and its extra/sysmeta rows."""
    for table, key in (
        ("instances", "uuid"),
        ("instance_extra", "instance_uuid"),
        ("instance_system_metadata", "instance_uuid"),
    ):
        t = cell.table(table)
        conn.execute(
            update(t)
            .where(t.c[key] == uuid, t.c.deleted == 0)
            .values(deleted=t.c.id, deleted_at=at)
        )


def map_cell(conn: Connection, api: Database, uuid: str, name: str, url: str) -> None:
    _insert(
        conn,
        api,
        "cell_mappings",
        {"uuid": uuid, "name": name, "database_connection": url, "transport_url": "none:///"},
    )


# --- Glance --------------------------------------------------------------------------------


@dataclass
class Image:
    id: str
    name: str
    disk_format: str = "qcow2"
    container_format: str = "bare"
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    owner: str | None = "65ea11db9ebf49c69d3c05bc38925617"
    visibility: str = "private"
    min_disk: int = 0
    min_ram: int = 0
    protected: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)
    tags: Iterable[str] = ()
    members: Iterable[str] = ()
    location: str | None = None
    location_meta: str = "{}"
    created_at: datetime = datetime(2017, 1, 1)


def create_image(conn: Connection, glance: Database, image: Image) -> None:
    """An active image with its data uploaded (glance 33 ``image_create`` + upload)."""
    at = image.created_at
    _insert(
        conn,
        glance,
        "images",
        {
            "id": image.id,
            "name": image.name,
            "size": image.size,
            "virtual_size": image.virtual_size,
            "status": "active",
            # is_public on Liberty-Newton, visibility from Ocata on.
            "is_public": image.visibility == "public",
            "visibility": image.visibility,
            "created_at": at,
            "updated_at": at,
            "deleted": False,
            "disk_format": image.disk_format,
            "container_format": image.container_format,
            "checksum": image.checksum,
            "os_hash_algo": image.os_hash_algo,
            "os_hash_value": image.os_hash_value,
            "owner": image.owner,
            "min_disk": image.min_disk,
            "min_ram": image.min_ram,
            "protected": image.protected,
            "os_hidden": False,
        },
    )
    child = {"image_id": image.id, "created_at": at, "deleted": False}
    if image.location:
        _insert(
            conn,
            glance,
            "image_locations",
            {
                **child,
                "value": image.location,
                "meta_data": image.location_meta,
                "status": "active",
            },
        )
    for name, value in sorted(image.properties.items()):
        _insert(conn, glance, "image_properties", {**child, "name": name, "value": value})
    for tag in image.tags:
        _insert(conn, glance, "image_tags", {**child, "value": tag})
    for member in image.members:
        _insert(
            conn,
            glance,
            "image_members",
            {**child, "member": member, "can_share": False, "status": "accepted"},
        )


def delete_image(
    conn: Connection, glance: Database, image_id: str, at: datetime, *, delayed: bool = False
) -> None:
    """The API delete path of glance 33 (openstack-facts.md §1, real-glance.md §3).

    ``image_update(purge_props=True)`` soft-deletes every property, re-stamping
    ones removed earlier, in its own transaction (slightly earlier); then
    ``image_destroy`` stamps the image, its live locations, members and tags
    with one time. With
    ``delayed_delete`` the image and its locations say ``pending_delete``.
    """
    props = glance.table("image_properties")
    conn.execute(
        update(props)
        .where(props.c.image_id == image_id)
        .values(deleted=True, deleted_at=at - timedelta(seconds=1))
    )
    status = "pending_delete" if delayed else "deleted"
    images = glance.table("images")
    conn.execute(
        update(images)
        .where(images.c.id == image_id)
        .values(status=status, deleted=True, deleted_at=at, updated_at=at)
    )
    locations = glance.table("image_locations")
    conn.execute(
        update(locations)
        .where(locations.c.image_id == image_id, locations.c.deleted == False)  # noqa: E712
        .values(status=status, deleted=True, deleted_at=at, updated_at=at)
    )
    for table in ("image_properties", "image_members", "image_tags"):
        t = glance.table(table)
        conn.execute(
            update(t)
            .where(t.c.image_id == image_id, t.c.deleted == False)  # noqa: E712
            .values(deleted=True, deleted_at=at)
        )


def kill_image(conn: Connection, glance: Database, image_id: str, at: datetime) -> None:
    """An upload that failed: status ``killed``, row still live (``deleted = 0``)."""
    images = glance.table("images")
    conn.execute(
        update(images).where(images.c.id == image_id).values(status="killed", updated_at=at)
    )


def purge_image(conn: Connection, glance: Database, image_id: str) -> None:
    """``glance-manage db purge_images_table``: the rows are gone for good."""
    for table in ("image_locations", "image_properties", "image_members", "image_tags", "images"):
        t = glance.table(table)
        key = t.c.id if table == "images" else t.c.image_id
        conn.execute(delete(t).where(key == image_id))
