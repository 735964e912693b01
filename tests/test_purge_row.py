"""A purged ``images`` row re-created under its own id (issue 12 item 3, glance-purge.md (b)).

Everything is the real thing: the image is created, uploaded and deleted through the real
Glance API (``glance_purge``, a database of its own), purged by the real ``glance-manage db
purge`` and ``purge_images_table`` (tests/purge.py), and booted by the real nova object
layer (tests/nova_layer.py: ``get_system_metadata_from_image`` and ``RequestSpec.create()``),
so the copies recover reads are Nova's own. The re-created image must then be served by
the same Glance API and pass glanceclient's verified download, as Nova's download does.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.config import ENV_VARS
from recover.db.engine import open_database
from recover.demo import PROJECT, SNAPSHOT, write_incident
from recover.inventory import base_file_name
from recover.simulate import purge_image
from tests import clouds
from tests.glance_api import GlanceApi, create_image
from tests.helpers import process_env
from tests.images import digests, make_disks
from tests.nova_layer import nova_databases, run_nova
from tests.purge import purge_all, surviving
from tests.test_faults import stopped, wait_until
from tests.test_glance_api import assert_served, download, make_raw, to_qcow2
from tests.test_hostile import RECOVER

if TYPE_CHECKING:
    from tests.sshd import SshdServer

pytestmark = pytest.mark.slow

OWNER, OTHER = "p-owner", "p-other"
PROPS = {"hw_disk_bus": "scsi", "hw_scsi_model": "virtio-scsi", "os_distro": "cirros",
         "app_role": "db"}  # fmt: skip
FLAVOR = {"name": "m1.pr", "flavorid": "pr1", "memory_mb": 512, "vcpus": 1, "root_gb": 1}
TABLES = ("images", "image_properties", "image_members", "image_tags", "image_locations")


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def nova_urls(db_factory: Any, mariadb_server: Any) -> tuple[str, str]:
    return nova_databases(db_factory, mariadb_server, "pr_api", "pr_cell1")


@dataclass
class Purged:
    image_id: str
    original: bytes
    raw: Path
    shown: dict[str, Any]
    instances: list[str]


def purged_image(
    api: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path, seed: int,
    users: list[tuple[str, str]], *, boot: bool = True, disk_format: str = "qcow2",
    copies: bool = True, edits: dict[str, dict[str, str]] | None = None,
) -> Purged:  # fmt: skip
    """An image created and deleted through the API, booted by ``users`` ((uuid, project))
    through the nova object layer, then purged whole by the real glance-manage. ``raw`` is
    the _base file Nova made of it (a raw image's _base is the upload itself). ``copies``
    False: the instances name it (image_ref) but hold no copy of its metadata (no image_*
    system metadata, no request spec), like instances from before Nova kept them. ``edits``:
    uuid -> sysmeta set on that instance after the boot (``nova-manage image_property set``)."""
    raw = make_raw(tmp_path / f"guest-{seed}.raw", seed)
    original = (
        to_qcow2(raw, tmp_path / f"guest-{seed}.qcow2").read_bytes()
        if disk_format == "qcow2"
        else raw.read_bytes()
    )
    client = api.client()
    image_id = create_image(client, original, disk_format, name=f"purge-row-{seed}", **PROPS)
    client.images.update(image_id, owner=OWNER, visibility="shared", min_disk=1, min_ram=128)
    shown = dict(client.images.get(image_id))
    if boot:
        schema = client.schemas.get("image").raw()
        spec = {
            "flavors": [FLAVOR], "image_schema": schema,
            "instances": [{"uuid": u, "project_id": p, "flavorid": FLAVOR["flavorid"],
                           "host": "compute-1",
                           **({"image": shown} if copies else {"image_ref": image_id}),
                           **({"sysmeta_set": (edits or {})[u]} if u in (edits or {}) else {})}
                          for u, p in users],
        }  # fmt: skip
        run_nova(nova_python, "create", *nova_urls, "--spec", json.dumps(spec, default=str))
    client.images.delete(image_id)
    purge_all(api, images=[image_id])
    assert all(rows == [] for rows in surviving(api, image_id).values())
    return Purged(image_id, original, raw, shown, [u for u, _ in users])


def recover(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def args(
    api: GlanceApi, nova_urls: tuple[str, str], *more: str, endpoint: bool = True
) -> list[str]:
    found = ["--glance-db", api.db_url, "--store-dir", str(api.store_dir),
             "--nova-api-db", nova_urls[0]]  # fmt: skip
    if endpoint:
        found += ["--glance-endpoint", api.endpoint]
    return [*found, *more]


def rows_of(api: GlanceApi, image_id: str) -> list[dict[str, Any]]:
    """The image's images row(s)."""
    return surviving(api, image_id)["images"]


def live_properties(api: GlanceApi, image_id: str) -> dict[str, str]:
    rows = api.query(
        "SELECT name, value FROM image_properties WHERE image_id = %s AND deleted = 0", (image_id,)
    )
    return {r["name"]: r["value"] for r in rows}


def checksum_tables(api: GlanceApi) -> dict[str, Any]:
    rows = api.query(f"CHECKSUM TABLE {', '.join(TABLES)}")
    return {r["Table"]: r["Checksum"] for r in rows}


def store_listing(api: GlanceApi) -> list[str]:
    return sorted(p.name for p in api.store_dir.iterdir())


USERS = [("7a000000-0000-4000-8000-000000000001", OWNER),
         ("7a000000-0000-4000-8000-000000000002", OTHER)]  # fmt: skip


def expect_recreated(api: GlanceApi, image: Purged) -> dict[str, Any]:
    """The row, its properties and members as the re-creation must leave them."""
    (row,) = surviving(api, image.image_id)["images"]
    assert {k: row[k] for k in ("id", "name", "owner", "disk_format", "container_format",
                                "min_ram", "min_disk", "visibility", "status", "deleted",
                                "deleted_at", "protected", "os_hidden")} == {
        "id": image.image_id, "name": image.shown["name"], "owner": OWNER,
        "disk_format": "qcow2", "container_format": "bare", "min_ram": 128, "min_disk": 1,
        "visibility": "shared", "status": "active", "deleted": 0, "deleted_at": None,
        "protected": 0, "os_hidden": 0,
    }  # fmt: skip
    # The same qemu-img made the same qcow2 from the same _base: the original bytes.
    assert (row["checksum"], row["size"]) == (image.shown["checksum"], image.shown["size"])
    assert row["checksum"] == hashlib.md5(image.original).hexdigest()
    assert live_properties(api, image.image_id) == PROPS
    members = api.query(
        "SELECT member, status, deleted, deleted_at FROM image_members WHERE image_id = %s",
        (image.image_id,),
    )
    assert members == [{"member": OTHER, "status": "accepted", "deleted": 0, "deleted_at": None}]
    return row


# --- the database path ----------------------------------------------------------------------


def test_purged_row_recreated_from_the_base_file_and_served(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 31, USERS)

    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--yes", "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["title"] == f"re-create purged image {image.image_id} ({image.shown['name']})"
    assert report["changes"] == ["insert 1 row(s) in images", "insert 1 row(s) in image_locations",
                                 "insert 4 row(s) in image_properties",
                                 "insert 1 row(s) in image_members"]  # fmt: skip
    made = report["recreated"]
    assert made["instances"] == image.instances
    assert made["guessed"] == ["visibility"]
    assert {n: f["source"].split(" of ")[0] for n, f in made["fields"].items()
            if n != "visibility"} == dict.fromkeys(
        ("name", "owner", "disk_format", "container_format", "min_ram", "min_disk", "checksum",
         "size", "created_at"), "request_spec")  # fmt: skip
    # Nova's boot image has no virtual_size (nova/image/glance.py _extract_attributes_v2
    # omits it): the re-created row takes the new bytes' own.
    assert made["members"] == [OTHER]
    # Each property with its source: the instances' system metadata (nova_copies.py).
    assert {k: v["value"] for k, v in report["properties"].items()} == PROPS
    assert {v["source"] for v in report["properties"].values()} == {
        "instance_system_metadata of 2 instances"
    }
    assert report["dropped_properties"]["base_image_ref"].startswith("Nova's own")
    assert report["bytes"]["identical"] is True
    assert report["bytes"]["compared_with"].startswith("request_spec of ")
    assert all(c["ok"] for c in report["verify"]), report["verify"]

    row = expect_recreated(api, image)
    assert row["created_at"].isoformat() == image.shown["created_at"].removesuffix("Z")
    assert_served(api, image.image_id, image.original)
    # The journal names every guessed field too.
    journal = json.loads(Path(report["journal"]).read_text())
    assert journal["subject"]["recreated"]["guessed"] == ["visibility"]
    assert any(n.startswith("GUESSED: visibility=shared") for n in journal["notes"])

    # A later purge run (the cron of the next night) deletes none of it.
    purge_all(api, images=[image.image_id])
    expect_recreated(api, image)
    assert download(api.client(), image.image_id) == image.original


def test_purged_row_recreated_through_the_api(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 32, USERS)

    dry = recover(*args(api, nova_urls, "image", image.image_id, "--base-file", str(image.raw),
                        "--via-api", "--dry-run"))  # fmt: skip
    assert dry.exit_code == 0, dry.stdout + dry.stderr
    post = next(
        line for line in dry.stdout.splitlines() if line.startswith("-- API: POST /v2/images ")
    )
    body = json.loads(post.removeprefix("-- API: POST /v2/images "))
    assert body == {"id": image.image_id, "name": image.shown["name"], "owner": OWNER,
                    "disk_format": "qcow2", "container_format": "bare", "min_ram": 128,
                    "min_disk": 1, "visibility": "shared", **PROPS}  # fmt: skip
    assert all(rows == [] for rows in surviving(api, image.image_id).values())

    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--via-api", "--yes", "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["uploaded"] == {"md5": hashlib.md5(image.original).hexdigest(),
                                  "size": len(image.original)}  # fmt: skip
    assert all(c["ok"] for c in report["verify"]), report["verify"]
    row = expect_recreated(api, image)
    assert row["os_hash_value"] == hashlib.sha512(image.original).hexdigest()
    assert_served(api, image.image_id, image.original)
    (location,) = surviving(api, image.image_id)["image_locations"]
    assert location["value"] == f"file://{api.store_dir / image.image_id}"

    # undo: the rows Glance wrote and its file go; the id has no row again, as before.
    undone = recover(*args(api, nova_urls, "undo", report["journal"], "--yes"))
    assert undone.exit_code == 0, undone.stdout + undone.stderr
    assert all(rows == [] for rows in surviving(api, image.image_id).values())
    assert not (api.store_dir / image.image_id).exists()


def test_undo_of_a_recreated_row_restores_no_row(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 33, USERS)
    before, listing = checksum_tables(api), store_listing(api)
    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--yes", "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    journal = json.loads(result.stdout)["journal"]
    assert (api.store_dir / image.image_id).is_file()

    dry = recover(*args(api, nova_urls, "undo", journal, "--dry-run"))
    assert dry.exit_code == 0, dry.stderr
    assert f"DELETE FROM images WHERE images.id = '{image.image_id}';" in dry.stdout
    assert (api.store_dir / image.image_id).is_file()

    undone = recover(*args(api, nova_urls, "undo", journal, "--yes", "--format", "json"))
    assert undone.exit_code == 0, undone.stdout + undone.stderr
    assert json.loads(undone.stdout)["removed_files"] == [str(api.store_dir / image.image_id)]
    assert all(rows == [] for rows in surviving(api, image.image_id).values())
    assert (checksum_tables(api), store_listing(api)) == (before, listing)


def test_new_bytes_for_a_raw_image_need_accept_new_bytes(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    """The request spec's size and checksum stand in for the purged row's: a raw image's
    _base must be its upload byte for byte, as for a deleted row (recover/images/rules.py);
    --accept-new-bytes re-creates it with the new bytes' own checksum, said loudly."""
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 38, USERS, disk_format="raw")
    other = make_raw(tmp_path / "other.raw", 99)  # same size, other data
    before, listing = checksum_tables(api), store_listing(api)
    refused = recover(*args(api, nova_urls, "image", image.image_id, "--base-file", str(other),
                            "--yes"))  # fmt: skip
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        f"Error: the bytes from {other} on local are not image {image.image_id}'s raw upload "
        f"(md5 {hashlib.md5(other.read_bytes()).hexdigest()} where the row says "
        f"{image.shown['checksum']})"
    ), refused.stderr
    assert (checksum_tables(api), store_listing(api)) == (before, listing)

    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file", str(other),
                           "--accept-new-bytes", "--yes", "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    new = hashlib.md5(other.read_bytes()).hexdigest()
    assert report["bytes"]["identical"] is False
    assert report["bytes"]["original"]["checksum"] == image.shown["checksum"]
    assert report["bytes"]["new"]["checksum"] == new
    (row,) = surviving(api, image.image_id)["images"]
    assert (row["checksum"], row["size"], row["disk_format"]) == (new, len(image.original), "raw")
    assert_served(api, image.image_id, other.read_bytes())


def test_no_copy_in_nova_every_field_guessed(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    """Instances that name the image but hold no copy of it: the inventory's command asks
    for the format; the row comes back with every other field guessed and named so."""
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 39, USERS[:1], copies=False)
    listed = recover(*args(api, nova_urls, "inventory", "--format", "json", endpoint=False))
    (orphan,) = [i for i in json.loads(listed.stdout)["images"] if i["id"] == image.image_id]
    assert orphan["recover"] == (
        f"recover image {image.image_id} --from-host compute-1 --disk-format FMT"
    )
    before = checksum_tables(api)
    refused = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                            str(image.raw), "--yes"))  # fmt: skip
    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        f"Error: image {image.image_id}: no copy kept its disk_format"
    ), refused.stderr
    assert checksum_tables(api) == before

    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--disk-format", "qcow2", "--yes", "--format",
                           "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    made = json.loads(result.stdout)["recreated"]
    assert made["guessed"] == ["owner", "container_format", "min_ram", "min_disk", "visibility",
                               "created_at", "name"]  # fmt: skip
    assert made["fields"]["disk_format"] == {
        "value": "qcow2", "source": "--disk-format", "guessed": False,
    }  # fmt: skip
    (row,) = surviving(api, image.image_id)["images"]
    assert {k: row[k] for k in ("name", "owner", "disk_format", "container_format", "min_ram",
                                "min_disk", "visibility", "status")} == {
        "name": None, "owner": OWNER, "disk_format": "qcow2", "container_format": "bare",
        "min_ram": 0, "min_disk": 0, "visibility": "private", "status": "active",
    }  # fmt: skip
    assert live_properties(api, image.image_id) == {}
    assert_served(api, image.image_id, image.original)


def test_disagreeing_instances_refused_unless_from_instance(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    edited = USERS[1][0]
    image = purged_image(api, nova_python, nova_urls, tmp_path, 61, USERS,
                         edits={edited: {"image_hw_disk_bus": "ide"}})  # fmt: skip
    before, listing = checksum_tables(api), store_listing(api)
    refused = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                            str(image.raw), "--yes"))  # fmt: skip
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: the instances of image {image.image_id} disagree about property "
        f"'hw_disk_bus': 'scsi' on {USERS[0][0]}; 'ide' on {edited}; pick the instance whose "
        f"copy to trust: --from-instance {USERS[0][0]}\n"
    )
    assert (checksum_tables(api), store_listing(api)) == (before, listing)

    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--from-instance", edited, "--yes"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    assert live_properties(api, image.image_id) == {**PROPS, "hw_disk_bus": "ide"}
    assert_served(api, image.image_id, image.original)


def test_purged_row_whose_file_the_store_still_holds(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    """The store still has the file (``delayed_delete`` and no scrubber run yet: the file is
    put back as the scrubber would have left it): no source is needed, the file is kept as
    it is, and the row takes its hashes (the request spec kept no multihash)."""
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 62, USERS)
    placed = api.store_dir / image.image_id
    placed.write_bytes(image.original)
    inode = placed.stat().st_ino
    result = recover(*args(api, nova_urls, "image", image.image_id, "--yes", "--format",
                           "json"))  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["notes"][0].startswith(f"the store still holds {placed}: un-delete only")
    assert report["bytes"]["identical"] is True
    assert placed.stat().st_ino == inode
    row = expect_recreated(api, image)
    assert (row["os_hash_algo"], row["os_hash_value"]) == (
        "sha512", hashlib.sha512(image.original).hexdigest(),
    )  # fmt: skip
    assert_served(api, image.image_id, image.original)


# --- refusals and dry-runs change nothing ---------------------------------------------------


def test_refused_for_an_id_no_live_instance_references(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 34, [], boot=False)
    before, listing = checksum_tables(api), store_listing(api)
    for extra in ((), ("--via-api",)):
        result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                               str(image.raw), *extra, "--yes"))  # fmt: skip
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: image {image.image_id} has no images row (purged) and no live instance "
            "references it: recover re-creates a purged id only for the instances still "
            "booted from it; re-using a purged image id for other data is OSSN-0075; upload "
            "a new image\n"
        )
        assert (checksum_tables(api), store_listing(api)) == (before, listing)
    assert not list((tmp_path / "state").rglob("*.json"))


def test_dry_run_changes_nothing(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 35, USERS[:1])
    before, listing = checksum_tables(api), store_listing(api)
    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--dry-run"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "INSERT INTO images (id, name," in result.stdout
    assert result.stdout.splitlines()[2].endswith("; a new images row, active")
    assert "-- members: none (visibility private)\n" in result.stdout
    assert "GUESSED: visibility=private" in result.stdout  # one project runs it: no member
    assert result.stdout.rstrip().endswith("ROLLBACK;")
    assert (checksum_tables(api), store_listing(api)) == (before, listing)
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.json"))


def test_refused_when_the_id_was_taken_meanwhile(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    """Someone created an image under the id between inventory and recover: it is live, and
    recover leaves it alone (the re-creation is for a purged id only)."""
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 36, USERS[:1])
    api.client().images.create(id=image.image_id, name="squatter", disk_format="raw",
                               container_format="bare")  # fmt: skip
    before, listing = checksum_tables(api), store_listing(api)
    result = recover(*args(api, nova_urls, "image", image.image_id, "--base-file",
                           str(image.raw), "--yes"))  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: image {image.image_id} is 'queued', not deleted")
    assert (checksum_tables(api), store_listing(api)) == (before, listing)
    api.client().images.delete(image.image_id)  # the squatter goes: other tests share the db


# --- the inventory's command ----------------------------------------------------------------


def test_inventory_command_for_a_missing_image_runs(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path,
    ssh_env: SshdServer,
) -> None:  # fmt: skip
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 37, USERS)
    instances = tmp_path / "instances"
    (instances / "_base").mkdir(parents=True)
    image.raw.rename(instances / "_base" / base_file_name(image.image_id))
    listed = recover(*args(api, nova_urls, "inventory", "--format", "json", endpoint=False))
    assert listed.exit_code == 0, listed.stderr
    (orphan,) = [i for i in json.loads(listed.stdout)["images"] if i["id"] == image.image_id]
    assert orphan["status"] == "missing"
    assert orphan["recover"] == f"recover image {image.image_id} --from-host compute-1"

    # The command as printed, with the global options and this compute node's instances_path.
    words = shlex.split(orphan["recover"])[1:]
    result = recover(*args(api, nova_urls, *words, "--instances-path", str(instances), "--yes"))
    assert result.exit_code == 0, result.stdout + result.stderr
    expect_recreated(api, image)
    assert_served(api, image.image_id, image.original)
    after = recover(*args(api, nova_urls, "inventory", "--format", "json", endpoint=False))
    assert image.image_id not in {i["id"] for i in json.loads(after.stdout)["images"]}


# --- kill -9 at each phase (RECOVER_FAULT_POINT, as tests/test_faults.py) ----------------------


def run_process(
    api: GlanceApi, nova_urls: tuple[str, str], root: Path, argv: list[str], point: str | None
) -> subprocess.CompletedProcess[str]:
    env = process_env(root)
    if point is not None:
        env["RECOVER_FAULT_POINT"] = point
    return subprocess.run(
        [RECOVER, *args(api, nova_urls, *argv)], env=env, cwd=root, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


def journal_statuses(root: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in sorted((root / "state").rglob("*.json"))]


@pytest.mark.parametrize(
    ("via_api", "point", "state"),
    [
        pytest.param(False, "journaled", "old", id="db-journaled"),
        pytest.param(False, "placed", "old+file", id="db-placed"),
        pytest.param(False, "in-transaction", "old+file", id="db-in-transaction"),
        pytest.param(False, "committed", "new", id="db-committed"),
        pytest.param(True, "journaled", "old", id="api-journaled"),
        pytest.param(True, "api-created", "queued", id="api-created"),
        pytest.param(True, "committed", "new", id="api-committed"),
    ],
)
def test_kill_at_each_phase_then_undo_restores_no_row(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path,
    via_api: bool, point: str, state: str,
) -> None:  # fmt: skip
    """After a kill: the old state ("no row", at most the placed file the journal names), the
    new one, or (the API path between POST and upload) a queued image; ``recover undo`` of
    the killed run's journal then leaves exactly "no row" and no file, and a re-run works."""
    api = glance_purge
    seed = 40 + ["journaled", "placed", "in-transaction", "committed", "api-created"].index(point)
    seed += 10 * via_api
    image = purged_image(api, nova_python, nova_urls, tmp_path, seed, USERS)
    before, listing = checksum_tables(api), store_listing(api)
    argv = ["image", image.image_id, "--base-file", str(image.raw), "--yes",
            *(["--via-api"] if via_api else [])]  # fmt: skip
    killed = run_process(api, nova_urls, tmp_path, argv, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rows = surviving(api, image.image_id)
    placed = api.store_dir / image.image_id
    if state in ("old", "old+file"):
        assert checksum_tables(api) == before
        assert placed.exists() is (state == "old+file")
    elif state == "queued":
        assert [(r["status"], r["deleted"]) for r in rows["images"]] == [("queued", 0)]
        assert not placed.exists()
        # A re-run names the way out instead of touching the image the killed run created.
        rerun = run_process(api, nova_urls, tmp_path, argv, None)
        assert rerun.returncode == 1
        assert rerun.stderr.endswith(
            "a `recover image --via-api` killed before its upload leaves the image it created "
            "queued: `recover undo` that run's journal, then re-run\n"
        ), rerun.stderr
    else:
        assert [(r["status"], r["deleted"]) for r in rows["images"]] == [("active", 0)]
        assert download(api.client(), image.image_id) == image.original
    assert journal_statuses(tmp_path) == ["applying"]
    (journal,) = sorted((tmp_path / "state").rglob("*.json"))

    undone = run_process(api, nova_urls, tmp_path, ["undo", str(journal), "--yes"], None)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert all(r == [] for r in surviving(api, image.image_id).values())
    assert checksum_tables(api) == before
    # A killed run leaves its lock file and perhaps its staged temporary file, named by the
    # image (recover/images/store.py); the next run on the image removes them.
    ours = (f".recover-lock-{image.image_id}", f".recover-tmp-{image.image_id}-")
    assert [n for n in store_listing(api) if not n.startswith(ours)] == listing

    again = run_process(api, nova_urls, tmp_path, argv, None)
    assert again.returncode == 0, again.stdout + again.stderr
    expect_recreated(api, image)
    assert_served(api, image.image_id, image.original)
    assert store_listing(api) == sorted([*listing, image.image_id])


def test_sigterm_after_the_post_removes_what_glance_created(
    glance_purge: GlanceApi, nova_python: str, nova_urls: tuple[str, str], tmp_path: Path
) -> None:
    """SIGTERM between ``POST /v2/images`` and the upload: the run deletes the rows Glance
    wrote, exits 143, and the journal says rolled-back: the old state, "no row"."""
    api = glance_purge
    image = purged_image(api, nova_python, nova_urls, tmp_path, 60, USERS)
    before, listing = checksum_tables(api), store_listing(api)
    env = {**process_env(tmp_path), "RECOVER_FAULT_POINT": "api-created:stop"}
    argv = ["image", image.image_id, "--base-file", str(image.raw), "--via-api", "--yes"]
    proc = subprocess.Popen(
        [RECOVER, *args(api, nova_urls, *argv)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: stopped(proc.pid)), proc.poll()
        # Stopped after the POST: Glance holds a queued image of that id.
        ((status, deleted),) = [(r["status"], r["deleted"]) for r in rows_of(api, image.image_id)]
        assert (status, deleted) == ("queued", 0)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert all(r == [] for r in surviving(api, image.image_id).values())
    assert (checksum_tables(api), store_listing(api)) == (before, listing)
    assert journal_statuses(tmp_path) == ["rolled-back"]


def test_legacy_mitaka_schemas(make_db: Any, mariadb_server: Any, tmp_path: Path) -> None:
    """Mitaka Nova (no nova_api: the copies are the system metadata) and Mitaka Glance
    (``is_public``, no visibility, no multihash): the row comes back in that shape, and
    undo restores "no row" exactly."""
    nova_url = make_db(clouds.LEGACY_NOVA, "pr_l_nova")
    glance_url = make_db(clouds.LEGACY_GLANCE, "pr_l_glance")
    store = tmp_path / "store"
    store.mkdir()
    original, base = make_disks(tmp_path / "disks", tmp_path / "instances")
    md5, _sha, size = digests(original)
    nova, glance = open_database(nova_url, "nova"), open_database(glance_url, "glance")
    write_incident(nova, glance, store, md5, size)
    with glance.engine.begin() as conn:
        purge_image(conn, glance, SNAPSHOT)
    nova.dispose()
    glance.dispose()
    before = mariadb_server.checksum("pr_l_glance")
    where = ["--nova-db", nova_url, "--glance-db", glance_url, "--store-dir", str(store)]

    result = recover(*where, "image", SNAPSHOT, "--base-file", str(base), "--yes",
                     "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["recreated"]["guessed"]) == [
        "container_format", "created_at", "min_disk", "min_ram", "name", "owner", "visibility",
    ]  # fmt: skip
    assert report["recreated"]["fields"]["min_disk"]["note"].startswith("unknown: at most 60")
    assert report["bytes"]["identical"] is None  # no copy kept the original checksum
    (row,) = mariadb_server.query(
        "SELECT name, owner, is_public, disk_format, container_format, min_disk, min_ram,"
        " status, deleted, deleted_at, checksum, size FROM pr_l_glance.images WHERE id = %s",
        (SNAPSHOT,),
    )
    assert row == (None, PROJECT, 0, "qcow2", "bare", 0, 0, "active", 0, None, md5, size)
    assert (store / SNAPSHOT).is_file()

    undone = recover(*where, "undo", report["journal"], "--yes")
    assert undone.exit_code == 0, undone.stdout + undone.stderr
    assert mariadb_server.checksum("pr_l_glance") == before
    assert not (store / SNAPSHOT).exists()
