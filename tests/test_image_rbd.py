"""`recover image`/`verify`/`undo` on Glance's RBD store (issue 11), all real: a single-node
Ceph, a Glance API on RBD (glance_store's own driver writes and deletes the images), Nova-style
clones made with `rbd clone` in format 1 and 2, MariaDB, glanceclient's verified download.

The four paths of PRODUCT.md "Ceph RBD stores": intact (clone v1: Glance's delete fails
409, so the deletion is the operator's DB-only one), trash (clone v2: Glance's delete
trashes the RBD image), snapshot missing, gone (rebuilt from --base-file).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from glanceclient import exc as glance_exc

from recover.cli import cli
from recover.config import ENV_VARS
from recover.images.ceph import SNAP_NAME, CephClient
from recover.images.digest import Digests
from tests.ceph import CephCluster, hashes, nova_clone
from tests.glance_api import GlanceApi, create_image

pytestmark = pytest.mark.slow

EIGHT_MIB = 8 * 1024 * 1024


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


def run(api: GlanceApi, *args: str, endpoint: bool = False) -> Result:
    """recover with glance-api.conf of the RBD Glance: database, ceph.conf, user, pool from it."""
    extra = ["--glance-endpoint", api.endpoint] if endpoint else []
    return CliRunner().invoke(cli, ["--glance-conf", str(api.conf_path), *extra, *args])


def image_bytes(size: int, seed: int) -> bytes:
    block = uuid.UUID(int=seed).bytes * 4096
    data = bytearray((block * (size // len(block) + 1))[:size])
    data[EIGHT_MIB // 2 : EIGHT_MIB // 2 + 65536] = bytes(65536)  # a hole, as real disks have
    return bytes(data)


def ceph(cluster: CephCluster) -> CephClient:
    return CephClient(conf=str(cluster.conf_path), user="admin")


def rows(api: GlanceApi, image_id: str) -> dict[str, Any]:
    return {
        "image": api.query(
            "SELECT status, deleted, checksum, size, os_hash_value FROM images WHERE id = %s",
            (image_id,),
        ),
        "locations": api.query(
            "SELECT value, status, deleted, meta_data FROM image_locations "
            "WHERE image_id = %s ORDER BY id",
            (image_id,),
        ),
        "tags": api.query("SELECT value, deleted FROM image_tags WHERE image_id = %s", (image_id,)),
    }


def db_only_delete(api: GlanceApi, image_id: str) -> None:
    """What an operator does when Glance's delete answers 409 (clone v1, ceph-rbd.md §1), and
    what Glance's own image_destroy does: every row soft-deleted, the RBD image untouched."""
    api.query(
        "UPDATE images SET status = 'deleted', deleted = 1, deleted_at = UTC_TIMESTAMP() "
        "WHERE id = %s",
        (image_id,),
    )
    for table in ("image_locations", "image_tags", "image_properties"):
        status = ", status = 'deleted'" if table == "image_locations" else ""
        api.query(
            f"UPDATE {table} SET deleted = 1, deleted_at = UTC_TIMESTAMP(){status} "
            "WHERE image_id = %s",
            (image_id,),
        )


def user_snaps(client: CephClient, image_id: str) -> list[tuple[str, bool]]:
    return [
        (s.name, s.protected) for s in client.snaps("images", image_id) if s.namespace == "user"
    ]


def assert_back(api: GlanceApi, cluster: CephCluster, image_id: str, data: bytes) -> None:
    """Rows live with the ORIGINAL hashes, location with the cluster's fsid, snap protected,
    and glanceclient's download (integrity check included) gives the bytes."""
    md5, sha512 = hashes(data)
    uri = f"rbd://{cluster.fsid}/images/{image_id}/snap"
    assert rows(api, image_id)["image"] == [
        {"status": "active", "deleted": 0, "checksum": md5, "size": len(data),
         "os_hash_value": sha512}
    ]  # fmt: skip
    assert [(r["value"], r["status"], r["deleted"]) for r in rows(api, image_id)["locations"]] == [
        (uri, "active", 0)
    ]
    assert user_snaps(ceph(cluster), image_id) == [(SNAP_NAME, True)]
    got = b"".join(api.client().images.data(image_id))  # glanceclient verifies os_hash_value
    assert got == data


def verify_ok(api: GlanceApi, image_id: str) -> dict[str, Any]:
    result = run(api, "verify", image_id, "--format", "json", endpoint=True)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    return {c["check"]: c["ok"] for c in report["checks"]}


def journal_of(result: Result) -> str:
    return str(json.loads(result.stdout)["journal"])


def test_clone_v2_trash_comes_back_with_its_original_checksum_then_undo(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster
) -> None:
    data = image_bytes(EIGHT_MIB + 4099, 41)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-trash")
    child = nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    glance_api_rbd.client().images.delete(image_id)  # glance_store >= 4.6.0: into the trash
    (entry,) = [t for t in ceph_cluster.trash("images") if t["name"] == image_id]
    deleted_rows, deleted_ceph = rows(glance_api_rbd, image_id), ceph_cluster.listing()

    dry = run(glance_api_rbd, "image", image_id, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert (
        f"-- RBD step 1: rbd trash restore --pool images --image-id {entry['id']} "
        f"(back as images/{image_id}; undo: rbd trash mv)" in dry.stdout
    )
    assert f"-- RBD step 2: rbd snap create images/{image_id}@snap" in dry.stdout
    assert f"-- RBD step 3: rbd snap protect images/{image_id}@snap" in dry.stdout
    assert "UPDATE image_locations SET " in dry.stdout  # back to active, value as it was
    assert (rows(glance_api_rbd, image_id), ceph_cluster.listing()) == (deleted_rows, deleted_ceph)

    done = run(glance_api_rbd, "image", image_id, "--yes", "--format", "json", endpoint=True)
    assert done.exit_code == 0, done.output
    assert {c["check"]: c["ok"] for c in json.loads(done.stdout)["verify"]}["api download"] is True
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)
    # The clone still hangs off the old (trashed) snapshot; the restored image is its parent.
    parent = ceph(ceph_cluster).info("vms", child).parent
    assert parent is not None and (parent.image, parent.trash) == (image_id, False)
    checks = verify_ok(glance_api_rbd, image_id)
    assert checks["snap"] and checks["fsid"] and checks["checksum"] and checks["sha512"]

    undo_dry = run(glance_api_rbd, "undo", journal_of(done), "--dry-run")
    assert undo_dry.exit_code == 0, undo_dry.output
    assert (
        f"-- after COMMIT, reverse RBD step restore on images/{image_id} if its effect is there"
        in undo_dry.stdout
    )
    undo = run(glance_api_rbd, "undo", journal_of(done), "--yes")
    assert undo.exit_code == 0, undo.output
    assert rows(glance_api_rbd, image_id) == deleted_rows
    assert ceph_cluster.listing() == deleted_ceph  # back in the trash under the same RBD id


def test_clone_v1_db_only_delete_is_intact_rows_only(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster
) -> None:
    data = image_bytes(EIGHT_MIB // 2 + 17, 42)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-v1")
    nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=1)
    with pytest.raises(glance_exc.HTTPConflict):
        glance_api_rbd.client().images.delete(image_id)
    db_only_delete(glance_api_rbd, image_id)
    listing = ceph_cluster.listing()

    dry = run(glance_api_rbd, "image", image_id, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert (
        f"images/{image_id}@snap is intact, its bytes the row's: un-delete the rows" in dry.stdout
    )
    assert "RBD step" not in dry.stdout
    done = run(glance_api_rbd, "image", image_id, "--yes")
    assert done.exit_code == 0, done.output
    assert ceph_cluster.listing() == listing  # nothing in Ceph changed
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)
    verify_ok(glance_api_rbd, image_id)


def test_snapshot_missing_is_recreated_and_protected(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster
) -> None:
    data = image_bytes(EIGHT_MIB + 1, 43)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-nosnap")
    db_only_delete(glance_api_rbd, image_id)
    admin = ceph(ceph_cluster)
    admin.snap_unprotect("images", image_id)
    admin.snap_remove("images", image_id)

    done = run(glance_api_rbd, "image", image_id, "--yes")
    assert done.exit_code == 0, done.output
    assert f"images/{image_id} has no snap: re-create and protect it" in done.stdout
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)


def test_gone_is_rebuilt_from_base_file_as_glance_store_lays_it_out_then_undo(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    data = image_bytes(2 * EIGHT_MIB + 512, 44)  # disks are whole sectors
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-gone")
    glance_api_rbd.client().images.delete(image_id)  # no clone: gone from Ceph
    assert image_id not in ceph_cluster.rbd_images("images")
    deleted_rows, deleted_ceph = rows(glance_api_rbd, image_id), ceph_cluster.listing()
    base = tmp_path / "base"
    base.write_bytes(data)  # nova's _base of a raw image: the upload, byte for byte

    refused = run(glance_api_rbd, "image", image_id, "--yes")
    assert (refused.exit_code, refused.stderr) == (1, (
        f"Error: no source for image {image_id}: the store has no file for it; pass --from-host "
        "HOST (a compute node running it), --from-host alone to try them all, or --base-file "
        "PATH\n"
    ))  # fmt: skip
    dry = run(glance_api_rbd, "image", image_id, "--base-file", str(base), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"-- RBD step 1: rbd import into images/{image_id}: 8 MiB objects" in dry.stdout
    assert (rows(glance_api_rbd, image_id), ceph_cluster.listing()) == (deleted_rows, deleted_ceph)

    done = run(glance_api_rbd, "image", image_id, "--base-file", str(base), "--yes",
               "--format", "json")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["bytes"]["identical"] is True
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)
    info = ceph(ceph_cluster).info("images", image_id)
    assert (info.size, info.order, info.object_size) == (len(data), 23, EIGHT_MIB)
    assert ceph(ceph_cluster).export_digests("images", image_id, SNAP_NAME) == Digests(
        *hashes(data)[:1], "sha512", hashes(data)[1], len(data)
    )
    verify_ok(glance_api_rbd, image_id)

    undo = run(glance_api_rbd, "undo", journal_of(done), "--yes")
    assert undo.exit_code == 0, undo.output
    assert rows(glance_api_rbd, image_id) == deleted_rows
    assert ceph_cluster.listing() == deleted_ceph  # the imported image is removed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "rbd://x/images/../y/snap",
            "RBD location 'rbd://x/images/../y/snap' must have exactly 1 or 4 components, not 5",
        ),
        (
            "rbd://{fsid}/images/$(touch pwned)/snap",
            "'$(touch pwned)' is not a Glance image id (a UUID)",
        ),
        (
            "rbd://{fsid}/-x;rm/{id}/snap",
            "RBD pool name '-x;rm' is not acceptable; a pool name is letters, digits, '_', '.', "
            "'-', not starting with '.' or '-'",
        ),
        (
            "rbd://8f1c2b3a-0000-4000-8000-000000000001/images/{id}/snap",
            "image {id}'s location names Ceph cluster 8f1c2b3a-0000-4000-8000-000000000001, but "
            "{conf} is cluster {fsid}; pass --ceph-conf of the cluster that holds Glance's images",
        ),
    ],
    ids=["dot-dot", "shell", "option-pool", "wrong-fsid"],
)
def test_hostile_locations_are_refused_and_change_nothing(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path, value: str,
    message: str,
) -> None:  # fmt: skip
    data = image_bytes(4096, 45)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-hostile")
    glance_api_rbd.client().images.delete(image_id)
    fields = {"fsid": ceph_cluster.fsid, "id": image_id, "conf": ceph_cluster.conf_path}
    glance_api_rbd.query(
        "UPDATE image_locations SET value = %s WHERE image_id = %s",
        (value.format(**fields), image_id),
    )
    base = tmp_path / "base"
    base.write_bytes(data)
    before, listing = rows(glance_api_rbd, image_id), ceph_cluster.listing()
    for extra in (["--dry-run"], ["--yes"]):
        result = run(glance_api_rbd, "image", image_id, "--base-file", str(base), *extra)
        assert (result.exit_code, result.stderr) == (1, f"Error: {message.format(**fields)}\n")
    assert (rows(glance_api_rbd, image_id), ceph_cluster.listing()) == (before, listing)
    assert not (Path.cwd() / "pwned").exists()


def test_inventory_says_for_each_deleted_image_what_ceph_still_holds(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, make_db: Any
) -> None:
    """Issue 11 item 4: ``rbd: {pool, state, children}`` and a runnable command per image;
    children is null for Glance's user (no read access to Nova's pool), a count for one that
    can read it."""
    from recover.db.engine import open_database
    from recover.simulate import Instance, create_instance
    from tests.clouds import MODERN_NOVA, SMALL

    glance = glance_api_rbd.client()
    ids = {}
    for state, seed in (("trash", 51), ("intact", 52), ("snapshot-missing", 53), ("gone", 54)):
        ids[state] = create_image(glance, image_bytes(4096 * seed, seed), "raw", name=state)
    nova_clone(ceph_cluster, ids["trash"], str(uuid.uuid4()), clone_format=2)
    nova_clone(ceph_cluster, ids["intact"], str(uuid.uuid4()), clone_format=1)
    glance.images.delete(ids["trash"])
    glance.images.delete(ids["gone"])
    db_only_delete(glance_api_rbd, ids["intact"])
    db_only_delete(glance_api_rbd, ids["snapshot-missing"])
    ceph(ceph_cluster).snap_unprotect("images", ids["snapshot-missing"])
    ceph(ceph_cluster).snap_remove("images", ids["snapshot-missing"])
    nova_url = make_db(MODERN_NOVA, "rbd_inventory_cell")
    cell = open_database(nova_url, "nova")
    with cell.engine.begin() as conn:
        for n, image_id in enumerate(ids.values()):
            create_instance(conn, cell, Instance(
                uuid=f"60000000-0000-4000-8000-00000000000{n}", flavor=SMALL, flavor_id=1,
                image_ref=image_id, host="compute-7",
            ))  # fmt: skip
    cell.dispose()
    listing = ceph_cluster.listing()

    def images(*user: str) -> dict[str, Any]:
        result = run(glance_api_rbd, *user, "--nova-db", nova_url, "inventory", "--format", "json")
        assert result.exit_code in (0, 3), result.output
        found = json.loads(result.stdout)["images"]
        return {i["id"]: (i.get("rbd"), i["recover"]) for i in found if i["id"] in ids.values()}

    as_glance = images()
    assert as_glance == {
        ids["trash"]: ({"pool": "images", "state": "trash", "children": None},
                       f"recover image {ids['trash']}"),
        ids["intact"]: ({"pool": "images", "state": "intact", "children": None},
                        f"recover image {ids['intact']}"),
        ids["snapshot-missing"]: ({"pool": "images", "state": "snapshot-missing",
                                   "children": None}, f"recover image {ids['snapshot-missing']}"),
        ids["gone"]: ({"pool": "images", "state": "gone", "children": None},
                      f"recover image {ids['gone']} --from-host compute-7"),
    }  # fmt: skip
    as_admin = images("--rbd-user", "admin")
    assert {i: facts["children"] for i, (facts, _) in as_admin.items()} == {
        ids["trash"]: 1,
        ids["intact"]: 1,
        ids["snapshot-missing"]: 0,
        ids["gone"]: 0,
    }
    assert ceph_cluster.listing() == listing  # the inventory only reads


def test_multistore_image_without_a_location_goes_to_the_default_rbd_backend(
    glance_api_rbd_multistore: GlanceApi, ceph_cluster: CephCluster
) -> None:
    """Issue 11 item 1: no location row left -> Glance's default store (here ``ceph:rbd``);
    the location written carries the cluster's fsid and ``{"store": "ceph"}``."""
    api = glance_api_rbd_multistore
    data = image_bytes(EIGHT_MIB // 4 + 512, 46)
    image_id = create_image(api.client(), data, "raw", name="rbd-multi-trash")
    nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    api.client().images.delete(image_id)
    api.query("DELETE FROM image_locations WHERE image_id = %s", (image_id,))

    done = run(api, "image", image_id, "--yes", endpoint=True)
    assert done.exit_code == 0, done.output
    assert "the image had no location in the RBD store" not in done.stdout  # it had none at all
    assert api.query(
        "SELECT value, status, deleted, meta_data FROM image_locations WHERE image_id = %s",
        (image_id,),
    ) == [
        {"value": f"rbd://{ceph_cluster.fsid}/images/{image_id}/snap", "status": "active",
         "deleted": 0, "meta_data": '{"store": "ceph"}'}
    ]  # fmt: skip
    assert api.client().images.get(image_id)["stores"] == "ceph"
    assert b"".join(api.client().images.data(image_id)) == data
    verify_ok(api, image_id)


@pytest.mark.parametrize("point", ["rbd-restore", "rbd-snap-create", "rbd-snap-protect"])
def test_kill_during_the_rbd_steps_then_undo_puts_ceph_back(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path, point: str
) -> None:
    """kill -9 after each RBD step (journal written, nothing committed): the rows are as they
    were, and `recover undo` of the journal puts the image back into the trash exactly."""
    import os
    import signal
    import subprocess
    import sys

    data = image_bytes(EIGHT_MIB // 8, 47)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-kill")
    nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    glance_api_rbd.client().images.delete(image_id)
    deleted_rows, deleted_ceph = rows(glance_api_rbd, image_id), ceph_cluster.listing()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    env.update(RECOVER_STATE_DIR=str(tmp_path / "state"), RECOVER_FAULT_POINT=point)
    killed = subprocess.run(
        [str(Path(sys.executable).with_name("recover")), "--glance-conf", str(glance_api_rbd.conf_path),
         "image", image_id, "--yes"],
        capture_output=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert rows(glance_api_rbd, image_id) == deleted_rows
    assert ceph_cluster.listing() != deleted_ceph
    (journal_file,) = (tmp_path / "state" / "journal").iterdir()

    undo = run(glance_api_rbd, "undo", str(journal_file), "--yes")
    assert undo.exit_code == 0, undo.output
    assert "never committed" in undo.stdout
    assert rows(glance_api_rbd, image_id) == deleted_rows
    assert ceph_cluster.listing() == deleted_ceph
    # And the next run brings it back as if nothing had happened.
    again = run(glance_api_rbd, "image", image_id, "--yes")
    assert again.exit_code == 0, again.output
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)


def test_four_concurrent_runs_on_one_trashed_image_one_wins(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    """The rows are locked FOR UPDATE from before the first RBD step to COMMIT: the other
    runs wait, find the rows changed and refuse, having touched nothing in Ceph."""
    import os
    import subprocess
    import sys

    data = image_bytes(EIGHT_MIB // 8 + 512, 48)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-race")
    nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    glance_api_rbd.client().images.delete(image_id)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    procs = []
    for n in range(4):
        state = tmp_path / f"state{n}"
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("recover")), "--glance-conf",
             str(glance_api_rbd.conf_path), "image", image_id, "--yes"],
            env={**env, "RECOVER_STATE_DIR": str(state)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1], results
    for code, err in results:
        if code:
            assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)
    assert [t for t in ceph_cluster.trash("images") if t["name"] == image_id] == []


def test_an_all_zero_fsid_location_gets_the_clusters_fsid(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster
) -> None:
    """glance_store once stored ``rbd://00000000-.../...`` (librados answered get_fsid() too
    early, ceph-rbd.md §3 gotcha 4): Nova cannot clone from it; the recovered row has the
    cluster's real fsid."""
    data = image_bytes(EIGHT_MIB // 16, 49)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-zero")
    nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    glance_api_rbd.client().images.delete(image_id)
    zero = f"rbd://00000000-0000-0000-0000-000000000000/images/{image_id}/snap"
    glance_api_rbd.query(
        "UPDATE image_locations SET value = %s WHERE image_id = %s", (zero, image_id)
    )
    done = run(glance_api_rbd, "image", image_id, "--yes")
    assert done.exit_code == 0, done.output
    assert "the old location has the all-zero fsid" in done.stdout
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)


def test_kill_after_the_import_then_undo_removes_the_imported_image(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    data = image_bytes(EIGHT_MIB // 8 + 1024, 50)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-kill-import")
    glance_api_rbd.client().images.delete(image_id)
    deleted_rows, deleted_ceph = rows(glance_api_rbd, image_id), ceph_cluster.listing()
    base = tmp_path / "base"
    base.write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    env.update(RECOVER_STATE_DIR=str(tmp_path / "state"), RECOVER_FAULT_POINT="rbd-import")
    killed = subprocess.run(
        [str(Path(sys.executable).with_name("recover")), "--glance-conf",
         str(glance_api_rbd.conf_path), "image", image_id, "--base-file", str(base), "--yes"],
        capture_output=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert image_id in ceph_cluster.rbd_images("images")  # imported, no snap, not committed
    assert rows(glance_api_rbd, image_id) == deleted_rows
    (journal_file,) = (tmp_path / "state" / "journal").iterdir()

    undo = run(glance_api_rbd, "undo", str(journal_file), "--yes")
    assert undo.exit_code == 0, undo.output
    assert f"RBD: removed images/{image_id}, which the interrupted run had done." in undo.stdout
    assert (rows(glance_api_rbd, image_id), ceph_cluster.listing()) == (deleted_rows, deleted_ceph)


def test_via_api_still_lets_glance_write_its_rbd_store(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    """--via-api: Glance's own driver writes <pool>/<id>@snap; recover only queues the row."""
    data = image_bytes(EIGHT_MIB // 8 + 2048, 55)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-via-api")
    glance_api_rbd.client().images.delete(image_id)
    base = tmp_path / "base"
    base.write_bytes(data)
    done = run(glance_api_rbd, "image", image_id, "--base-file", str(base), "--via-api", "--yes",
               endpoint=True)  # fmt: skip
    assert done.exit_code == 0, done.output
    md5, sha512 = hashes(data)
    assert rows(glance_api_rbd, image_id)["image"] == [
        {"status": "active", "deleted": 0, "checksum": md5, "size": len(data),
         "os_hash_value": sha512}
    ]  # fmt: skip
    assert user_snaps(ceph(ceph_cluster), image_id) == [(SNAP_NAME, True)]
    checks = verify_ok(glance_api_rbd, image_id)
    assert checks["snap"] and checks["fsid"]


def test_a_raw_base_file_is_imported_where_it_is_and_a_change_after_hashing_is_caught(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    """A raw --base-file for a raw image is hashed where it is and `rbd import`ed from there:
    no copy under the state directory (one pass less, no disk write of the whole image). The
    read-back before COMMIT is what makes that safe: a file changed between the hashing and
    the import is refused and everything put back."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    data = image_bytes(EIGHT_MIB + 512, 56)
    image_id = create_image(glance_api_rbd.client(), data, "raw", name="rbd-in-place")
    glance_api_rbd.client().images.delete(image_id)  # gone from Ceph: a rebuild
    deleted_rows, deleted_ceph = rows(glance_api_rbd, image_id), ceph_cluster.listing()
    base = tmp_path / "base"
    base.write_bytes(data)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    env.update(RECOVER_STATE_DIR=str(state), RECOVER_FAULT_POINT="journaled:stop")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("recover")), "--glance-conf",
         str(glance_api_rbd.conf_path), "image", image_id, "--base-file", str(base), "--yes"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        # Hashed, journaled, nothing imported yet: no copy of the bytes was made.
        assert [p.stat().st_size for p in (state / "tmp").iterdir()] == [0]
        changed = bytearray(data)
        changed[EIGHT_MIB] ^= 0xFF
        with base.open("r+b") as handle:
            handle.seek(EIGHT_MIB)
            handle.write(changed[EIGHT_MIB : EIGHT_MIB + 1])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, err) == (1, (
        f"Error: the bytes read back from images/{image_id}@snap are not the ones written (md5 "
        f"{hashlib.md5(changed).hexdigest()}, {len(data)} bytes; wrote "
        f"{hashlib.md5(data).hexdigest()}, {len(data)} bytes); everything is put back\n"
    )), out  # fmt: skip
    assert (rows(glance_api_rbd, image_id), ceph_cluster.listing()) == (deleted_rows, deleted_ceph)
    assert [p.stat().st_size for p in (state / "tmp").iterdir()] == []

    base.write_bytes(data)
    done = run(glance_api_rbd, "image", image_id, "--base-file", str(base), "--yes")
    assert done.exit_code == 0, done.output
    assert_back(glance_api_rbd, ceph_cluster, image_id, data)
