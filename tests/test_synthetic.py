"""`scripts/synthetic.py`: a bulk-loaded cloud whose orphans `recover inventory` finds exactly.

Tiny size, real MariaDB with the real DDL (the `make_db` fixture). The generator says
what it planted; the inventory must report exactly that, and the rows must have the
shapes Nova and Glance write (soft-deleted Nova rows `deleted = id`, the flavor JSON
parseable, Glance's delete path on images and their children).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from recover.cli import cli
from recover.db.engine import open_database
from recover.nova import parse_flavor_blob
from tests import clouds
from tests.clouds import MakeDb

# The generator is bench-only: it lives beside the benchmarks, outside the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from synthetic import FULL, KINDS, TINY, Planted, Size, Target, generate


def build(make_db: MakeDb, prefix: str, size: Size = TINY, seed: int = 7) -> tuple[Target, Planted]:
    target = Target(
        api=make_db(clouds.MODERN_API, f"{prefix}_api"),
        cells={c: make_db(clouds.MODERN_NOVA, f"{prefix}_{c}") for c in ("cell1", "cell2")},
        glance=make_db(clouds.MODERN_GLANCE, f"{prefix}_glance"),
        cell0=make_db(clouds.MODERN_NOVA, f"{prefix}_cell0"),
    )
    return target, generate(target, size, seed=seed)


@pytest.fixture
def cloud(make_db: MakeDb) -> tuple[Target, Planted]:
    return build(make_db, "syn")


def rows(url: str, sql: str) -> list[Any]:
    db = open_database(url, "test")
    try:
        with db.engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        db.dispose()


def inventory(target: Target, store: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli,
        ["--nova-api-db", target.api, "--glance-db", target.glance, "--store-dir", str(store),
         "inventory", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_inventory_finds_exactly_what_was_planted(
    cloud: tuple[Target, Planted], tmp_path: Path
) -> None:
    target, planted = cloud
    data = inventory(target, tmp_path)
    expected = planted.expected()
    assert {str(f["id"]): sorted(f["instances"]) for f in data["flavors"]} == expected["flavors"]
    found = {
        i["id"]: {
            "status": i["status"],
            "instances": sorted(i["instances"]),
            "shelved_instances": sorted(i["shelved_instances"]),
        }
        for i in data["images"]
    }
    assert found == expected["images"]
    # Exactly TINY.orphans of each kind; shelve snapshots are deleted images.
    assert len(data["flavors"]) == TINY.orphans
    statuses = Counter(i["status"] for i in data["images"])
    assert statuses == {
        "deleted": 2 * TINY.orphans,
        "pending_delete": TINY.orphans,
        "killed": TINY.orphans,
        "missing": TINY.orphans,
    }
    assert sum(1 for i in data["images"] if i["shelved_instances"]) == TINY.orphans
    assert {k: len(v) for k, v in planted.kinds.items()} == dict.fromkeys(KINDS, TINY.orphans)
    assert [c["name"] for c in data["cells"]] == ["cell0", "cell1", "cell2"]
    assert all(c["ok"] for c in data["cells"])
    # Every orphaned flavor's definition comes from instance_extra.
    assert all(f["sources"]["instance_extra"] == len(f["instances"]) for f in data["flavors"])


def test_rows_have_the_shapes_nova_and_glance_write(cloud: tuple[Target, Planted]) -> None:
    target, planted = cloud
    for name, url in target.cells.items():
        instances = rows(
            url, "SELECT id, uuid, deleted, deleted_at, vm_state, instance_type_id FROM instances"
        )
        assert len(instances) == TINY.live_per_cell + TINY.deleted_per_cell
        live = [r for r in instances if r.deleted == 0]
        gone = [r for r in instances if r.deleted != 0]
        assert len(live) == TINY.live_per_cell, name
        assert all(r.deleted == r.id and r.deleted_at and r.vm_state == "deleted" for r in gone)
        assert all(r.deleted_at is None and r.vm_state != "deleted" for r in live)
        extra = rows(url, "SELECT e.id, e.deleted, e.flavor, i.instance_type_id, i.deleted AS i_deleted"
                          " FROM instance_extra e JOIN instances i ON i.uuid = e.instance_uuid")  # fmt: skip
        assert len(extra) == len(instances)
        for row in extra:
            assert row.deleted == (row.id if row.i_deleted else 0)
            blob = parse_flavor_blob(row.flavor)
            assert blob["cur"] is not None and blob["cur"].id == row.instance_type_id
            assert blob["old"] is None and blob["new"] is None
            assert json.loads(row.flavor)["cur"]["nova_object.version"] == "1.2"
        sysmeta = rows(url, "SELECT s.id, s.deleted, i.deleted AS i_deleted FROM instance_system_metadata s"
                            " JOIN instances i ON i.uuid = s.instance_uuid")  # fmt: skip
        assert len(sysmeta) >= len(instances) * (TINY.sysmeta_per_instance - 1)
        assert all(r.deleted == (r.id if r.i_deleted else 0) for r in sysmeta)
        shelved = rows(url, "SELECT i.host, s.value FROM instances i JOIN instance_system_metadata s"
                            " ON s.instance_uuid = i.uuid AND s.`key` = 'shelved_image_id'"
                            " WHERE i.vm_state = 'shelved_offloaded' AND i.deleted = 0")  # fmt: skip
        assert shelved and all(r.host is None and r.value for r in shelved)
    cell0 = rows(target.cell0 or "", "SELECT COUNT(*) FROM instances")
    assert cell0[0][0] == 0

    # nova_api: hard-deleted flavors left no row; the live ones did, with their specs.
    api_ids = {r.id for r in rows(target.api, "SELECT id FROM flavors")}
    assert len(api_ids) == TINY.flavors - TINY.deleted_flavors
    assert not api_ids & set(planted.flavors)
    mappings = rows(target.api, "SELECT name, database_connection FROM cell_mappings ORDER BY id")
    assert [m.name for m in mappings] == ["cell0", "cell1", "cell2"]
    assert mappings[1].database_connection == target.cells["cell1"]

    # Glance: images deleted with their children, killed ones live, purged ones gone.
    images = {
        r.id: r for r in rows(target.glance, "SELECT id, status, deleted, deleted_at FROM images")
    }
    assert len(images) == TINY.images
    assert sum(1 for r in images.values() if r.deleted) == TINY.deleted_images
    assert all(
        (r.status in ("deleted", "pending_delete")) == bool(r.deleted) for r in images.values()
    )
    for image_id in planted.kinds["missing"]:
        assert image_id not in images
    for image_id in planted.kinds["killed"]:
        assert (images[image_id].status, images[image_id].deleted) == ("killed", 0)
    children = rows(target.glance,
                    "SELECT i.id, i.deleted, i.deleted_at, p.deleted AS p_deleted, p.deleted_at AS p_at"
                    " FROM images i JOIN image_properties p ON p.image_id = i.id")  # fmt: skip
    for r in children:
        assert r.p_deleted == r.deleted
        if r.deleted:
            assert r.p_at < r.deleted_at  # purge_props, a moment before image_destroy
    locations = rows(target.glance,
                     "SELECT i.status, i.deleted, l.status AS l_status, l.deleted AS l_deleted"
                     " FROM images i JOIN image_locations l ON l.image_id = i.id")  # fmt: skip
    assert all(r.l_deleted == r.deleted for r in locations)
    assert all(r.l_status == (r.status if r.deleted else "active") for r in locations)


def test_same_seed_same_cloud(make_db: MakeDb, cloud: tuple[Target, Planted]) -> None:
    _, first = cloud
    second_target, second = build(make_db, "syn2")
    assert second.expected() == first.expected()
    assert second.rows == first.rows
    _, other = build(make_db, "syn2", seed=8)
    assert other.expected() != first.expected()
    assert second_target.cells  # the databases stay for the next test's reset


def test_sizes() -> None:
    assert FULL.live_per_cell == 50_000 and FULL.deleted_per_cell == 500_000
    assert (FULL.flavors, FULL.deleted_flavors) == (5_000, 4_000)
    assert (FULL.images, FULL.deleted_images) == (100_000, 80_000)
    small = FULL.scaled(0.1)
    assert (small.live_per_cell, small.deleted_per_cell) == (5_400, 50_000)
    assert (small.flavors, small.images, small.orphans) == (FULL.flavors, FULL.images, FULL.orphans)
    with pytest.raises(ValueError, match="deleted flavors"):
        Size(orphans=5_000)
    with pytest.raises(ValueError, match="live and some deleted flavors"):
        Size(deleted_flavors=5_000)


def test_the_generator_is_not_in_the_installed_package() -> None:
    """Issue 13 item 7: bench-only code stays beside the benchmarks; the bench still starts."""
    import recover

    repo = Path(__file__).resolve().parent.parent
    assert not (Path(recover.__file__).parent / "synthetic.py").exists()
    assert (repo / "scripts" / "synthetic.py").is_file()
    started = subprocess.run(
        [sys.executable, str(repo / "scripts" / "bench_main.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("usage: scripts/bench [-h] [--quick]")
