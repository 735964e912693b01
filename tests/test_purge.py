"""Images whose Glance metadata was purged: real purges, Nova's own copies, the rebuild.

Everything is made by the real components (issue 12):

* the images by the real Glance API (``glance_purge``: a Glance 33 of its own, so a
  purge touches no other test's rows), created with properties, booted, then deleted
  through the API;
* the instances that booted them by the real Nova object layer (nova 34 in its venv,
  tests/nova_tier/nova_objects.py): ``Instance.create()`` with the system metadata
  ``get_system_metadata_from_image`` makes, ``RequestSpec.create()`` with the boot image,
  the libvirt driver's defaults written afterwards;
* the purges by the real ``glance-manage db purge`` / ``purge_images_table``
  (tests/purge.py), whole or one table at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from recover.config import Settings, Value
from recover.errors import RefusedError
from recover.images.nova_copies import (
    TRUNCATED_NOTE,
    NovaCopies,
    read_copies,
)
from tests.nova_layer import nova_databases, run_nova
from tests.purge import CHILD_TABLES, purge, purge_images_table, surviving

if TYPE_CHECKING:
    from glanceclient.v2.client import Client

    from tests.conftest import DatabaseFactory, MariaDBServer
    from tests.glance_api import GlanceApi

pytestmark = pytest.mark.slow

P_ALPHA, P_BETA = "p-alpha", "p-beta"
FLAVOR = {
    "path": "object", "name": "pp.small", "flavorid": "pp-small", "memory_mb": 512,
    "vcpus": 1, "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "rxtx_factor": 1.0,
    "is_public": True, "extra_specs": {},
}  # fmt: skip
#: What the libvirt driver registers after spawn for the properties an image lacks
#: (nova 34 _register_undefined_instance_details; values as a q35 KVM host finds them).
LIBVIRT_DEFAULTS = {
    "hw_machine_type": "q35", "hw_cdrom_bus": "sata", "hw_disk_bus": "virtio",
    "hw_input_bus": "usb", "hw_pointer_model": "usbtablet", "hw_video_model": "virtio",
    "hw_vif_model": "virtio",
}  # fmt: skip
#: os_command_line is an ImageMetaProps field: the request spec keeps it whole, the sysmeta
#: cuts it at 255 bytes. build_note is a custom key: only the cut sysmeta copy is left.
LONG_CMDLINE = "console=ttyS0 " + " ".join(f"opt{i}=value{i}" for i in range(40))
LONG_NOTE = "é" + "n" * 299  # 301 bytes: safe_truncate keeps 255
FULL_PROPS = {
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "hw_vif_model": "e1000",
    "os_distro": "ubuntu",
    "os_admin_user": "ubuntu",
    "os_command_line": LONG_CMDLINE,
    "build_note": LONG_NOTE,
}
SMALL_PROPS = {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi", "os_distro": "debian"}


def _uuid(prefix: int, n: int) -> str:
    return f"{prefix:08x}-0000-4000-8000-{n:012x}"


@dataclass
class Booted:
    """One image: what Glance showed before the delete, and the instances of it."""

    id: str
    data: bytes
    props: dict[str, str]
    shown: dict[str, Any]
    instances: list[dict[str, Any]] = field(default_factory=list)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


@dataclass
class World:
    glance: GlanceApi
    api_url: str
    cell_url: str
    images: dict[str, Booted]

    def settings(self) -> Settings:
        return Settings(
            nova_api_db=Value(self.api_url, "test"), glance_db=Value(self.glance.db_url, "test")
        )

    def copies(self, name: str, from_instance: str | None = None) -> NovaCopies:
        return read_copies(self.settings(), self.images[name].id, from_instance=from_instance)


def _image(client: Client, name: str, props: dict[str, str], seed: int) -> Booted:
    data = random.Random(seed).randbytes(256 << 10)
    image = client.images.create(
        name=name, disk_format="raw", container_format="bare", owner=P_ALPHA
    )
    image_id = str(image["id"])
    client.images.upload(image_id, io.BytesIO(data), image_size=len(data))
    client.image_tags.update(image_id, "pp-tag")
    client.images.update(image_id, visibility="shared", **props)
    client.image_members.create(image_id, P_BETA)
    shown = json.loads(json.dumps(dict(client.images.get(image_id))))
    return Booted(image_id, data, props, shown)


#: name -> (properties, instances as (project, extra sysmeta edit or None))
SCENARIOS: dict[str, tuple[dict[str, str], list[tuple[str, dict[str, str] | None]]]] = {
    "full": (FULL_PROPS, [(P_ALPHA, None), (P_BETA, None)]),
    "conflict": (SMALL_PROPS, [(P_ALPHA, None), (P_BETA, {"image_hw_disk_bus": "ide"})]),
    "row": (SMALL_PROPS, [(P_ALPHA, None), (P_BETA, None)]),
    "max_rows": (SMALL_PROPS, [(P_ALPHA, None)]),
    **{f"only_{t}": (SMALL_PROPS, [(P_ALPHA, None)]) for t in CHILD_TABLES},
}


@pytest.fixture(scope="module")
def world(
    glance_purge: GlanceApi,
    nova_python: str,
    db_factory: DatabaseFactory,
    mariadb_server: MariaDBServer,
) -> World:
    """Every scenario's image created, booted by Nova, deleted, then purged as named."""
    client = glance_purge.client()
    schema = client.schemas.get("image").raw()
    images: dict[str, Booted] = {}
    instances: list[dict[str, Any]] = []
    for n, (name, (props, users)) in enumerate(SCENARIOS.items(), start=1):
        booted = images[name] = _image(client, f"pp-{name}", props, n)
        for m, (project, edit) in enumerate(users, start=1):
            vm = {
                "uuid": _uuid(0x70000000 + n, m), "flavorid": FLAVOR["flavorid"],
                "project_id": project, "image": booted.shown,
                "libvirt_defaults": LIBVIRT_DEFAULTS, **({"sysmeta_set": edit} if edit else {}),
            }  # fmt: skip
            booted.instances.append(vm)
            instances.append(vm)
    api_url, cell_url = nova_databases(db_factory, mariadb_server, "pp_api", "pp_cell1")
    spec = {"flavors": [FLAVOR], "instances": instances, "image_schema": schema}
    run_nova(nova_python, "create", api_url, cell_url, "--spec", json.dumps(spec))
    for booted in images.values():
        client.images.delete(booted.id)
    ids = lambda *names: [images[n].id for n in names]  # noqa: E731
    purge(glance_purge, images=ids("full", "conflict", "row"))
    purge_images_table(glance_purge, images=ids("row"))
    purge(glance_purge, tables=["image_properties"], images=ids("max_rows"), max_rows=2)
    for table in CHILD_TABLES:
        purge(glance_purge, tables=[table], images=ids(f"only_{table}"))
    return World(glance_purge, api_url, cell_url, images)


def _counts(api: GlanceApi, image_id: str) -> dict[str, int]:
    return {table: len(rows) for table, rows in surviving(api, image_id).items()}


# --- the harness: what the real purge leaves ---------------------------------------------------


def test_full_purge_leaves_only_the_images_row(world: World) -> None:
    # glance-manage db purge: every child table emptied, the images row kept as deleted.
    full = world.images["full"]
    assert _counts(world.glance, full.id) == {
        "images": 1, "image_properties": 0, "image_tags": 0, "image_locations": 0,
        "image_members": 0,
    }  # fmt: skip
    (row,) = surviving(world.glance, full.id)["images"]
    assert (row["status"], row["deleted"], row["checksum"]) == ("deleted", 1, full.md5)
    assert row["deleted_at"] is not None


def test_purge_images_table_removes_the_row(world: World) -> None:
    assert _counts(world.glance, world.images["row"].id) == dict.fromkeys(
        ("images", *CHILD_TABLES), 0
    )


@pytest.mark.parametrize("table", CHILD_TABLES)
def test_one_table_purged_alone(world: World, table: str) -> None:
    booted = world.images[f"only_{table}"]
    found = surviving(world.glance, booted.id)
    assert found[table] == []
    expected = {"image_properties": 3, "image_tags": 1, "image_locations": 1, "image_members": 1}
    for other in CHILD_TABLES:
        if other != table:
            assert len(found[other]) == expected[other], other
            assert all(r["deleted"] and r["deleted_at"] for r in found[other]), other
    assert found["images"][0]["deleted"] == 1


def test_max_rows_stops_the_purge_of_a_table(world: World) -> None:
    found = surviving(world.glance, world.images["max_rows"].id)
    # --max_rows 2: two of the three property rows went, the other tables were shielded.
    assert len(found["image_properties"]) == 1
    assert {r["name"] for r in found["image_properties"]} < set(SMALL_PROPS)
    assert [len(found[t]) for t in ("image_tags", "image_locations", "image_members")] == [1, 1, 1]


# --- the reader: Nova's copies -------------------------------------------------------------------


def test_nova_copies_rebuild_the_properties_nova_booted_with(world: World) -> None:
    full = world.images["full"]
    copies = world.copies("full")
    vms = [vm["uuid"] for vm in full.instances]
    assert copies.instances == vms
    assert copies.booted == vms
    assert copies.projects == [P_ALPHA, P_BETA]
    assert (copies.has_request_spec, copies.has_sysmeta, copies.conflicts) == (True, True, {})
    got = {k: v.value for k, v in copies.properties.items()}
    assert got == {**FULL_PROPS, "build_note": LONG_NOTE.encode()[:255].decode()}
    both = "instance_system_metadata of 2 instances"
    assert {k: (v.source, v.guessed, v.note) for k, v in copies.properties.items()} == {
        **{k: (both, False, None) for k in FULL_PROPS},
        "os_command_line": ("request_spec (the sysmeta copy is cut at 255 bytes)", False, None),
        "build_note": (both, True, TRUNCATED_NOTE),
    }
    # Nova's own keys are not the image's: its libvirt defaults for the properties the image
    # lacked (hw_disk_bus and hw_vif_model it had: those are in the request spec), its own
    # base_image_ref, and the four images-row columns.
    assert sorted(copies.dropped) == sorted(
        [
            "base_image_ref", "min_ram", "min_disk", "disk_format", "container_format",
            "hw_machine_type", "hw_cdrom_bus", "hw_input_bus", "hw_pointer_model",
            "hw_video_model",
        ]
    )  # fmt: skip


def test_nova_copies_core_fields_from_the_request_spec(world: World) -> None:
    full = world.images["full"]
    copies = world.copies("full")
    first = f"request_spec of {full.instances[0]['uuid']}"
    shown = full.shown
    assert {k: (v.value, v.source, v.guessed) for k, v in copies.core.items()} == {
        "name": ("pp-full", first, False),
        "owner": (P_ALPHA, first, False),
        "disk_format": ("raw", first, False),
        "container_format": ("bare", first, False),
        "min_ram": (0, first, False),
        "min_disk": (0, first, False),
        "checksum": (full.md5, first, False),
        "size": (len(full.data), first, False),
        "created_at": (shown["created_at"], first, False),
    }


def test_disagreeing_instances_are_conflicts_and_from_instance_picks(world: World) -> None:
    booted = world.images["conflict"]
    first, second = (vm["uuid"] for vm in booted.instances)
    copies = world.copies("conflict")
    assert copies.conflicts == {"hw_disk_bus": {"scsi": [first], "ide": [second]}}
    assert "hw_disk_bus" not in copies.properties
    error = copies.conflict_error()
    assert error is not None
    assert str(error) == (
        f"the instances of image {booted.id} disagree about property 'hw_disk_bus': "
        f"'scsi' on {first}; 'ide' on {second}; pick the instance whose copy to trust: "
        f"--from-instance {first}"
    )
    picked = world.copies("conflict", from_instance=second)
    assert picked.properties["hw_disk_bus"].value == "ide"
    assert picked.properties["hw_disk_bus"].source == f"instance_system_metadata of {second}"
    assert {k: v.value for k, v in picked.properties.items()} == {
        **SMALL_PROPS, "hw_disk_bus": "ide",
    }  # fmt: skip
    with pytest.raises(RefusedError, match="is not a live instance booted from image"):
        world.copies("conflict", from_instance=world.images["full"].instances[0]["uuid"])
