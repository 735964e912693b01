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

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.config import ENV_VARS, Settings, Value
from recover.errors import RefusedError
from recover.images.nova_copies import (
    TRUNCATED_NOTE,
    NovaCopies,
    Sourced,
    read_copies,
)
from tests.nova_layer import nova_databases, run_nova
from tests.purge import CHILD_TABLES, purge, purge_images_table, surviving
from tests.test_glance_api import download

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


Users = list[tuple[str, "dict[str, str] | None"]]
TWO: Users = [(P_ALPHA, None), (P_BETA, None)]
ONE: Users = [(P_ALPHA, None)]
DISAGREE: Users = [(P_ALPHA, None), (P_BETA, {"image_hw_disk_bus": "ide"})]
#: name -> (properties, instances as (project, later sysmeta edit), how it is purged):
#: "all" (db purge), "row" (db purge + purge_images_table), "max_rows" (--max_rows 2 on
#: image_properties alone), one child table alone, or "none". rec_* are recovered by the tests.
SCENARIOS: dict[str, tuple[dict[str, str], Users, str]] = {
    "full": (FULL_PROPS, TWO, "all"),
    "conflict": (SMALL_PROPS, DISAGREE, "all"),
    "row": (SMALL_PROPS, TWO, "row"),
    "max_rows": (SMALL_PROPS, ONE, "max_rows"),
    **{f"only_{t}": (SMALL_PROPS, ONE, t) for t in CHILD_TABLES},
    "rec_full": (FULL_PROPS, TWO, "all"),
    "rec_conflict": (SMALL_PROPS, DISAGREE, "all"),
    "rec_max_rows": (SMALL_PROPS, ONE, "max_rows"),
    "rec_control": (SMALL_PROPS, ONE, "all"),
    "rec_stale": (SMALL_PROPS, ONE, "none"),
    "rec_new": (SMALL_PROPS, ONE, "all"),
    "rec_removed": ({**SMALL_PROPS, "os_version": "12"}, ONE, "image_tags"),
    **{f"rec_only_{t}": (SMALL_PROPS, ONE, t) for t in CHILD_TABLES},
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
    for n, (name, (props, users, _purge)) in enumerate(SCENARIOS.items(), start=1):
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
    # After the boot, a property removed from the image (PATCH remove: its row soft-deleted).
    client.images.update(images["rec_removed"].id, remove_props=["os_version"])
    for booted in images.values():
        client.images.delete(booted.id)
    # Glance 33's delete re-stamps that row too (ImageRepo.remove -> image_update(purge_props=
    # True): _set_properties_for_image deletes every row not in the new set, deleted ones
    # included); a row that kept the date of its removal, 40 days before, is what older
    # releases and hand cleanups leave.
    glance_purge.query(
        "UPDATE image_properties SET deleted_at = deleted_at - INTERVAL 40 DAY "
        "WHERE image_id = %s AND name = 'os_version'",
        (images["rec_removed"].id,),
    )
    kinds: dict[str, list[str]] = {}
    for name, (_props, _users, kind) in SCENARIOS.items():
        kinds.setdefault(kind, []).append(images[name].id)
    purge(glance_purge, images=kinds["all"] + kinds["row"])
    purge_images_table(glance_purge, images=kinds["row"])
    for image_id in kinds["max_rows"]:  # max_rows counts rows per table, not per image
        purge(glance_purge, tables=["image_properties"], images=[image_id], max_rows=2)
    for table in CHILD_TABLES:
        purge(glance_purge, tables=[table], images=kinds[table])
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
        "os_command_line": (
            f"request_spec of {vms[0]} (the sysmeta copy is cut at 255 bytes)",
            False,
            None,
        ),
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


# --- recover inventory: what survives, per table, and Nova's copies ---------------------------------


def inventory(world: World, fmt: str = "json") -> str:
    glance = world.glance
    result = CliRunner().invoke(cli, [
        "--nova-api-db", world.api_url, "--glance-db", glance.db_url,
        "--store-dir", str(glance.store_dir), "inventory", "--format", fmt,
    ])  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def test_inventory_reports_what_survives_and_a_command_for_every_orphan(world: World) -> None:
    images = {i["id"]: i for i in json.loads(inventory(world))["images"]}
    tables = ("locations", "members", "properties", "tags")

    def metadata(row: bool, nova: int, **left: int) -> dict[str, Any]:
        counts = {t: left.get(t, 0) for t in tables}
        return {
            "row": row, **counts, "none_left": [t for t in tables if not counts[t]],
            "nova": {"request_spec": nova, "system_metadata": nova},
        }  # fmt: skip

    one = {"locations": 1, "members": 1, "properties": 3, "tags": 1}
    expected = {
        "full": ("deleted", metadata(True, 2)),
        "conflict": ("deleted", metadata(True, 2)),
        "row": ("missing", metadata(False, 2)),
        "max_rows": ("deleted", metadata(True, 1, **{**one, "properties": 1})),
        **{
            f"only_{t}": ("deleted", metadata(True, 1, **{**one, t.removeprefix("image_"): 0}))
            for t in CHILD_TABLES
        },
    }
    for name, (status, meta) in expected.items():
        booted = world.images[name]
        got = images[booted.id]
        assert (got["status"], got["metadata"]) == (status, meta), name
        # A runnable command for every orphan, the purged row included (compute-1 runs it).
        assert got["recover"] == f"recover image {booted.id} --from-host compute-1", name
    assert images[world.images["row"].id]["note"].startswith(
        "the images row was purged: recover re-creates it under its own id from Nova's copies; "
    )
    assert images[world.images["full"].id]["note"].endswith(
        "; no property row left (purged, or it had none): rebuilt from the system metadata of "
        "2 instance(s)"
    )
    table = inventory(world, "table")
    assert (
        f"  image {world.images['max_rows'].id}  [deleted]\n" in table
        and "    metadata: row, properties 1, locations 1, tags 1, members 1; Nova: request\n"
        "              spec 1, system_metadata 1\n"
        in table
    )
    rows = list(csv.DictReader(io.StringIO(inventory(world, "csv"))))
    (row,) = [r for r in rows if r["id"] == world.images["row"].id and r["instance"].endswith("1")]
    assert row["metadata"] == (
        "no row, properties 0, locations 0, tags 0, members 0; Nova: request spec 2, "
        "system_metadata 2"
    )


# --- recover image: the properties rebuilt, the rows safe from the next purge -------------------


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the flags count: no RECOVER_* from the developer's shell; journals in tmp.
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


def recover(world: World, name: str, *args: str, api: bool = True) -> Result:
    glance = world.glance
    base = ["--nova-api-db", world.api_url, "--glance-db", glance.db_url,
            "--store-dir", str(glance.store_dir)]  # fmt: skip
    if api:
        base += ["--glance-endpoint", glance.endpoint]
    return CliRunner().invoke(cli, [*base, "image", world.images[name].id, *args])


def base_file(tmp_path: Path, booted: Booted) -> str:
    """The compute node's ``_base`` copy: a raw image's _base is its upload, byte for byte."""
    path = tmp_path / "base"
    path.write_bytes(booted.data)
    return str(path)


def applied(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["status"] == "applied"
    return report


def nova_source(booted: Booted) -> str:
    if len(booted.instances) == 1:
        return f"instance_system_metadata of {booted.instances[0]['uuid']}"
    return f"instance_system_metadata of {len(booted.instances)} instances"


def sourced(value: str, source: str, guessed: bool = False, note: str | None = None) -> Any:
    return {"value": value, "source": source, "guessed": guessed, "note": note}


def live_rows(world: World, image_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's rows of the image as (deleted, deleted_at, what the row holds)."""
    found = surviving(world.glance, image_id)
    telling = {"images": "status", "image_properties": "name", "image_tags": "value",
               "image_locations": "value", "image_members": "member"}  # fmt: skip
    return {
        t: sorted((r["deleted"], r["deleted_at"], r[telling[t]]) for r in rows)
        for t, rows in found.items()
    }


def test_full_purge_recovered_with_the_properties_nova_booted_with(
    world: World, tmp_path: Path
) -> None:
    booted = world.images["rec_full"]
    vms = [vm["uuid"] for vm in booted.instances]
    result = recover(
        world, "rec_full", "--base-file", base_file(tmp_path, booted), "--yes", "--format", "json"
    )
    report = applied(result)
    both = nova_source(booted)
    cut = LONG_NOTE.encode()[:255].decode()
    assert report["properties"] == {
        **{k: sourced(v, both) for k, v in FULL_PROPS.items()},
        "os_command_line": sourced(
            LONG_CMDLINE, f"request_spec of {vms[0]} (the sysmeta copy is cut at 255 bytes)"
        ),
        "build_note": sourced(cut, both, True, TRUNCATED_NOTE),
    }
    assert sorted(report["dropped_properties"]) == [
        "base_image_ref", "container_format", "disk_format", "hw_cdrom_bus", "hw_input_bus",
        "hw_machine_type", "hw_pointer_model", "hw_video_model", "min_disk", "min_ram",
    ]  # fmt: skip
    assert (report["bytes"]["identical"], report["bytes"]["compared_with"]) == (
        True, "images.checksum",
    )  # fmt: skip
    assert all(check["ok"] for check in report["verify"]), report["verify"]
    notes = report["notes"]
    assert "7 purged properties rebuilt from Nova's copies (glance-manage db purge removed the " \
        "rows):" in notes  # fmt: skip
    assert f"property build_note = {cut} from {both} (GUESSED: {TRUNCATED_NOTE})" in notes
    assert "the new file is the original upload, byte for byte (md5 = the row's checksum)" in notes
    assert (
        "left out as Nova's own, not the image's: base_image_ref, hw_cdrom_bus, hw_input_bus, "
        "hw_machine_type, hw_pointer_model, hw_video_model (--format json: dropped_properties, "
        "with the reason for each)"
    ) in notes
    for what in ("tags", "members"):
        assert (
            f"{what}: no row left in Glance (purged, or there were none) and Nova keeps no copy "
            f"of {what}: none restored"
        ) in notes
    # The journal records every property's source.
    journal = json.loads(Path(report["journal"]).read_text())
    assert journal["subject"]["properties"] == report["properties"]
    # The real Glance API serves it with the properties Nova booted it with, no more.
    client = world.glance.client()
    show = dict(client.images.get(booted.id))
    assert {k: show.get(k) for k in FULL_PROPS} == {**FULL_PROPS, "build_note": cut}
    assert not {"hw_machine_type", "hw_video_model", "base_image_ref"} & show.keys()
    assert (show["status"], show["checksum"], show["tags"]) == ("active", booted.md5, [])
    assert download(client, booted.id) == booted.data  # glanceclient's verified download
    # Every row it revived or wrote is live with deleted_at NULL ...
    rows = live_rows(world, booted.id)
    assert rows["images"] == [(0, None, "active")]
    assert rows["image_properties"] == sorted((0, None, k) for k in FULL_PROPS)
    assert [r[:2] for r in rows["image_locations"]] == [(0, None)]
    # ... so the cron's next purge, both commands, deletes none of them.
    purge(world.glance, images=[booted.id])
    purge_images_table(world.glance, images=[booted.id])
    assert live_rows(world, booted.id) == rows
    assert download(client, booted.id) == booted.data


def test_a_row_revived_with_its_deleted_at_is_purged(world: World, tmp_path: Path) -> None:
    """The control: what the purge would do to a revived row that kept its deleted_at (as
    glance's own _image_property_update and image_restore leave them)."""
    booted = world.images["rec_control"]
    applied(recover(world, "rec_control", "--base-file", base_file(tmp_path, booted), "--yes",
                    "--format", "json"))  # fmt: skip
    world.glance.query(
        "UPDATE image_properties SET deleted_at = UTC_TIMESTAMP() - INTERVAL 40 DAY "
        "WHERE image_id = %s AND name = 'os_distro'",
        (booted.id,),
    )
    purge(world.glance, images=[booted.id])
    names = [r[2] for r in live_rows(world, booted.id)["image_properties"]]
    assert names == ["hw_disk_bus", "hw_scsi_model"]  # os_distro: gone, though live


def test_a_live_row_that_kept_its_deleted_at_is_cleared(world: World, tmp_path: Path) -> None:
    """A live child row with a deleted_at (what glance's _image_property_update leaves when a
    property is re-added, and image_restore on the images row) would go with the next purge:
    the recovery clears it too."""
    booted = world.images["rec_stale"]
    world.glance.query(
        "UPDATE image_tags SET deleted = 0 WHERE image_id = %s", (booted.id,)
    )  # deleted_at kept, as Glance's revivals keep it
    report = applied(recover(world, "rec_stale", "--base-file", base_file(tmp_path, booted),
                             "--yes", "--format", "json"))  # fmt: skip
    assert "update 1 row(s) in image_tags" in report["changes"]
    rows = live_rows(world, booted.id)
    assert rows["image_tags"] == [(0, None, "pp-tag")]
    assert all(r[:2] == (0, None) for t in rows.values() for r in t), rows
    purge(world.glance, images=[booted.id])
    purge_images_table(world.glance, images=[booted.id])
    assert live_rows(world, booted.id) == rows


def test_new_bytes_said_new_against_the_request_specs_checksum(
    world: World, tmp_path: Path
) -> None:
    """Bytes that are not the upload are reported NEW, compared with the md5 the request spec
    kept when the row has none (what a re-created row starts from)."""
    booted = world.images["rec_new"]
    spec = f"request_spec of {booted.instances[0]['uuid']}"
    world.glance.query("UPDATE images SET checksum = NULL WHERE id = %s", (booted.id,))
    other = tmp_path / "other"
    other.write_bytes(random.Random(999).randbytes(len(booted.data)))
    new_md5 = hashlib.md5(other.read_bytes()).hexdigest()
    report = applied(recover(world, "rec_new", "--base-file", str(other), "--accept-new-bytes",
                             "--yes", "--format", "json"))  # fmt: skip
    assert (report["bytes"]["identical"], report["bytes"]["compared_with"]) == (False, spec)
    assert report["bytes"]["new"]["checksum"] == new_md5
    assert (
        f"the new file's bytes are NEW, not the original upload's: md5 {new_md5} (was "
        f"{booted.md5} in the {spec}), size {len(booted.data)} (was {len(booted.data)})"
    ) in report["notes"]
    show = dict(world.glance.client().images.get(booted.id))
    assert (show["checksum"], show["os_distro"]) == (new_md5, "debian")
    assert download(world.glance.client(), booted.id) == other.read_bytes()


def test_a_property_removed_before_the_delete_stays_removed(world: World, tmp_path: Path) -> None:
    """Nova's copy is from boot time; Glance's soft-deleted row says it was removed since."""
    booted = world.images["rec_removed"]
    (row,) = [
        r for r in surviving(world.glance, booted.id)["image_properties"]
        if r["name"] == "os_version"
    ]  # fmt: skip
    copies = world.copies("rec_removed")
    assert copies.properties["os_version"].value == "12"
    report = applied(recover(world, "rec_removed", "--base-file", base_file(tmp_path, booted),
                             "--yes", "--format", "json"))  # fmt: skip
    assert sorted(report["properties"]) == sorted(SMALL_PROPS)
    assert (
        f"property os_version: Nova's copy 12 not restored: Glance's row {row['id']} was deleted "
        f"at {row['deleted_at']}, before the image (removed from it)"
    ) in report["notes"]
    show = dict(world.glance.client().images.get(booted.id))
    assert "os_version" not in show
    assert {k: show[k] for k in SMALL_PROPS} == SMALL_PROPS


def test_disagreeing_instances_refused_then_from_instance(
    world: World, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    booted = world.images["rec_conflict"]
    first, second = (vm["uuid"] for vm in booted.instances)
    before = mariadb_server.checksum(world.glance.db_name)
    files = sorted(world.glance.store_dir.iterdir())
    base = base_file(tmp_path, booted)
    for extra in ((), ("--dry-run",)):
        result = recover(world, "rec_conflict", "--base-file", base, "--yes", *extra)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        assert result.stderr == (
            f"Error: the instances of image {booted.id} disagree about property 'hw_disk_bus': "
            f"'scsi' on {first}; 'ide' on {second}; pick the instance whose copy to trust: "
            f"--from-instance {first}\n"
        )
    assert mariadb_server.checksum(world.glance.db_name) == before
    assert sorted(world.glance.store_dir.iterdir()) == files
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.json"))
    # An instance that is not one of the image's: refused the same way.
    other = world.images["rec_full"].instances[0]["uuid"]
    result = recover(world, "rec_conflict", "--base-file", base, "--from-instance", other)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: --from-instance '{other}' is not a live instance")
    assert mariadb_server.checksum(world.glance.db_name) == before

    report = applied(recover(world, "rec_conflict", "--base-file", base, "--from-instance",
                             second.upper(), "--yes", "--format", "json"))  # fmt: skip
    picked = f"instance_system_metadata of {second}"
    assert report["properties"] == {
        "hw_disk_bus": sourced("ide", picked),
        "hw_scsi_model": sourced("virtio-scsi", picked),
        "os_distro": sourced("debian", picked),
    }
    show = dict(world.glance.client().images.get(booted.id))
    assert (show["hw_disk_bus"], show["os_distro"]) == ("ide", "debian")


def test_dry_run_shows_the_sql_and_changes_nothing(
    world: World, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    booted = world.images["rec_max_rows"]
    (kept,) = surviving(world.glance, booted.id)["image_properties"]
    before = mariadb_server.checksum(world.glance.db_name)
    files = sorted(world.glance.store_dir.iterdir())
    base = base_file(tmp_path, booted)
    result = recover(world, "rec_max_rows", "--base-file", base, "--dry-run")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    sql = result.stdout
    one = nova_source(booted)
    rebuilt = sorted(set(SMALL_PROPS) - {kept["name"]})
    for name in rebuilt:
        assert f"-- property {name} = {SMALL_PROPS[name]} from {one}\n" in sql
        assert f"'{booted.id}', '{name}', '{SMALL_PROPS[name]}'" in sql
    assert sql.count("INSERT INTO image_properties") == 2
    assert "-- 2 purged properties rebuilt from Nova's copies" in sql
    assert mariadb_server.checksum(world.glance.db_name) == before
    assert sorted(world.glance.store_dir.iterdir()) == files
    # Applied: the surviving row revived (Glance's own), the two purged ones from Nova.
    report = applied(recover(world, "rec_max_rows", "--base-file", base, "--yes",
                             "--format", "json"))  # fmt: skip
    assert report["properties"] == {
        kept["name"]: sourced(
            kept["value"], f"glance image_properties row {kept['id']} (deleted with it)"
        ),
        **{name: sourced(SMALL_PROPS[name], one) for name in rebuilt},
    }
    show = dict(world.glance.client().images.get(booted.id))
    assert {k: show.get(k) for k in SMALL_PROPS} == SMALL_PROPS
    assert (show["tags"], show["visibility"]) == (["pp-tag"], "shared")
    # undo: the inserted property rows go, the revived ones are deleted again, the file too.
    undone = CliRunner().invoke(cli, ["--glance-db", world.glance.db_url, "--store-dir",
                                      str(world.glance.store_dir), "undo", report["journal"],
                                      "--yes"])  # fmt: skip
    assert undone.exit_code == 0, (undone.stdout, undone.stderr)
    assert mariadb_server.checksum(world.glance.db_name) == before
    assert sorted(world.glance.store_dir.iterdir()) == files


@pytest.mark.parametrize("table", CHILD_TABLES)
def test_one_table_purged_recovered(world: World, tmp_path: Path, table: str) -> None:
    name = f"rec_only_{table}"
    booted = world.images[name]
    props = {r["name"]: r for r in surviving(world.glance, booted.id)["image_properties"]}
    report = applied(recover(world, name, "--base-file", base_file(tmp_path, booted), "--yes",
                             "--format", "json"))  # fmt: skip
    if table == "image_properties":
        expected = {k: sourced(v, nova_source(booted)) for k, v in SMALL_PROPS.items()}
    else:
        expected = {
            k: sourced(v, f"glance image_properties row {props[k]['id']} (deleted with it)")
            for k, v in SMALL_PROPS.items()
        }
    assert report["properties"] == expected
    said = {
        what
        for what in ("tags", "members")
        if f"{what}: no row left in Glance (purged, or there were none) and Nova keeps no copy "
        f"of {what}: none restored" in report["notes"]
    }
    assert said == {"image_tags": {"tags"}, "image_members": {"members"}}.get(table, set())
    client = world.glance.client()
    show = dict(client.images.get(booted.id))
    assert {k: show.get(k) for k in SMALL_PROPS} == SMALL_PROPS
    assert show["tags"] == ([] if table == "image_tags" else ["pp-tag"])
    members = [m["member_id"] for m in client.image_members.list(booted.id)]
    assert members == ([] if table == "image_members" else [P_BETA])
    assert download(client, booted.id) == booted.data
    rows = live_rows(world, booted.id)
    assert all(r[:2] == (0, None) for t in rows.values() for r in t), rows
    purge(world.glance, images=[booted.id])
    purge_images_table(world.glance, images=[booted.id])
    assert live_rows(world, booted.id) == rows


# --- the reader on older schemas: no request spec, legacy DDL ------------------------------------

LEGACY_IMAGE = "b3986e99-1988-43bb-b47c-0b34438bc189"
LEGACY_VMS = ("21000000-0000-4000-8000-000000000001", "21000000-0000-4000-8000-000000000002")
#: What Mitaka's get_system_metadata_from_image copied (no libvirt defaults before Yoga;
#: hw_machine_type here is the image's own, but no request spec can tell).
LEGACY_SYSMETA = {
    "hw_disk_bus": "ide", "hw_machine_type": "pc", "os_type": "linux", "kernel_id": "",
    "min_disk": "40", "min_ram": "512", "disk_format": "qcow2", "container_format": "bare",
}  # fmt: skip


def _legacy_cloud(make_db: Any, api_schema: str | None, spec: str | None) -> Settings:
    from recover.db.engine import open_database
    from recover.simulate import Flavor, Instance, create_instance, map_cell

    cell_url = make_db("nova-legacy-mitaka", "pl_nova")
    cell = open_database(cell_url, "cell")
    small = Flavor(name="m1.small", flavorid="2", memory_mb=2048, vcpus=1, root_gb=20)
    with cell.engine.begin() as conn:
        for uuid in LEGACY_VMS:
            create_instance(conn, cell, Instance(
                uuid=uuid, flavor=small, flavor_id=2, image_ref=LEGACY_IMAGE, host="compute-7",
                image_properties=LEGACY_SYSMETA, project_id="p-legacy",
            ))  # fmt: skip
    cell.dispose()
    if api_schema is None:
        return Settings(nova_dbs=(Value(cell_url, "test"),))
    api_url = make_db(api_schema, "pl_api")
    api = open_database(api_url, "api")
    with api.engine.begin() as conn:
        map_cell(conn, api, "8a1b7c3e-2f4d-4e6a-9b5c-1d2e3f4a5b6c", "cell1", cell_url)
        if spec is not None:
            api.table("request_specs")
            conn.execute(
                api.table("request_specs").insert(),
                {"instance_uuid": LEGACY_VMS[0], "spec": spec},
            )
    api.dispose()
    return Settings(nova_api_db=Value(api_url, "test"))


@pytest.mark.parametrize(
    ("api_schema", "spec"),
    [
        (None, None),  # pre-Newton, cells given alone: no nova_api at all
        ("nova_api-legacy-mitaka", None),  # request_specs exists, no row for these instances
        ("nova_api-legacy-mitaka", "{not json"),  # a spec recover cannot read
        ("nova_api-cdeec0c85668", '{"nova_object.data": {"image": null}}'),  # boot from volume
    ],
)
def test_reader_without_a_request_spec_on_legacy_schemas(
    make_db: Any, api_schema: str | None, spec: str | None
) -> None:
    settings = _legacy_cloud(make_db, api_schema, spec)
    copies = read_copies(settings, LEGACY_IMAGE.upper())
    both = "instance_system_metadata of 2 instances"
    assert (copies.instances, copies.projects) == (list(LEGACY_VMS), ["p-legacy"])
    assert (copies.has_request_spec, copies.has_sysmeta, copies.conflicts) == (False, True, {})
    # Without a request spec a libvirt default cannot be told apart: kept, flagged.
    maybe = "no request spec: may be Nova's libvirt default rather than a Glance property"
    assert copies.properties == {
        "hw_disk_bus": Sourced("ide", both, True, maybe),
        "hw_machine_type": Sourced("pc", both, True, maybe),
        "os_type": Sourced("linux", both),
    }
    assert sorted(copies.dropped) == [
        "base_image_ref", "container_format", "disk_format", "kernel_id", "min_disk", "min_ram",
    ]  # fmt: skip
    assert copies.core == {
        "disk_format": Sourced("qcow2", both),
        "container_format": Sourced("bare", both),
        "min_ram": Sourced(512, both),
        # image_min_disk 40 > root_gb 20: max(min_disk, root_gb) was the image's own.
        "min_disk": Sourced(40, both),
        "owner": Sourced(
            "p-legacy", "project of the instances (p-legacy)", True,
            "no request spec: the project of an instance using it",
        ),
    }  # fmt: skip


def test_from_instance_without_nova_is_refused(
    world: World, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    booted = world.images["conflict"]
    before = mariadb_server.checksum(world.glance.db_name)
    result = CliRunner().invoke(cli, [
        "--glance-db", world.glance.db_url, "--store-dir", str(world.glance.store_dir),
        "image", booted.id, "--base-file", base_file(tmp_path, booted),
        "--from-instance", booted.instances[0]["uuid"], "--yes",
    ])  # fmt: skip
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: --from-instance reads Nova's copies of the image, and no Nova database is "
        "given; pass --nova-api-db URL (or --nova-db URL, or --nova-conf)\n"
    )
    assert mariadb_server.checksum(world.glance.db_name) == before
    # Without --from-instance a dry-run goes on and says what it cannot rebuild.
    result = CliRunner().invoke(cli, [
        "--glance-db", world.glance.db_url, "--store-dir", str(world.glance.store_dir),
        "image", booted.id, "--base-file", base_file(tmp_path, booted), "--dry-run",
    ])  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert (
        "-- no property row left in Glance (purged, or there were none); with the Nova "
        "databases (--nova-api-db or --nova-db) recover rebuilds purged properties from Nova's "
        "copies\n"
    ) in result.stdout
    assert "INSERT INTO image_properties" not in result.stdout
    assert mariadb_server.checksum(world.glance.db_name) == before
