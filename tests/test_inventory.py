"""`recover inventory` against real MariaDB loaded with the real DDL of each generation."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import event, text, update

from recover.cli import cli
from recover.db.engine import open_database
from recover.demo import (
    CIRROS,
    HOST,
    INSTANCE,
    SECOND_VICTIM,
    SNAPSHOT,
    write_incident,
)
from recover.simulate import Flavor, Instance, archive_legacy_flavor, create_instance, purge_image
from tests import clouds
from tests.clouds import Cloud, MakeDb

INCIDENT_MD5 = "0a5a3e84558e8470946acb86a839dc02"


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def inventory_json(cloud: Cloud, *more: str) -> dict[str, Any]:
    result = run(cloud.args("inventory", "--format", "json", *more))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data.pop("scanned_at")
    return data


@pytest.fixture
def legacy(make_db: MakeDb, tmp_path: Path) -> Cloud:
    nova_url = make_db(clouds.LEGACY_NOVA, "l_nova")
    glance_url = make_db(clouds.LEGACY_GLANCE, "l_glance")
    store = tmp_path / "mfsclient/ucscontroller/glance/images"
    store.mkdir(parents=True)
    nova, glance = open_database(nova_url, "nova"), open_database(glance_url, "glance")
    write_incident(nova, glance, store, INCIDENT_MD5, 21299200)
    nova.dispose()
    glance.dispose()
    return Cloud(api_url=None, cell_urls={"l_nova": nova_url}, glance_url=glance_url, store=store)


@pytest.fixture
def modern(make_db: MakeDb, tmp_path: Path) -> Cloud:
    return clouds.modern_cloud(make_db, tmp_path)


def test_incident_on_legacy_nova_and_glance(legacy: Cloud) -> None:
    data = inventory_json(legacy)
    victims = [INSTANCE, SECOND_VICTIM]
    assert data == {
        "cells": [{"error": None, "name": "l_nova", "ok": True}],
        "flavor_store": "cell",
        "glance_schema": "legacy",
        "partial": False,
        "store_dir": str(legacy.store),
        "warnings": [],
        "flavors": [
            {
                "id": 7,
                "flavorid": "7",
                "name": "ucs.4c8g.swap",
                "state": "soft-deleted",
                "deleted_at": "2017-11-02 16:20:11",
                "instances": victims,
                "cells": ["l_nova"],
                "long_running": victims,
                "sources": {"instance_extra": 2, "row": "instance_types", "system_metadata": 0},
                "conflicting_instances": [],
                "differ_in": [],
                "variants": [],
                "revert_resize_instances": [],
                "live_flavor": None,
                "at_risk": ["flavor show", "server list --flavor"],
                "recover": "recover flavor 7",
                "note": None,
                "recreate": None,
            }
        ],
        "images": [
            {
                "id": SNAPSHOT,
                "name": "ucs-app-golden-snap",
                "status": "deleted",
                "deleted_at": "2017-09-21 11:03:57",
                "disk_format": "qcow2",
                "size": 21299200,
                "snapshot": True,
                "instances": victims,
                "shelved_instances": [],
                "cells": ["l_nova"],
                "long_running": victims,
                "hosts": [HOST],
                "base_file": "141ce390743531b7da2db335d2159fa550f460c8",
                "store_file": False,
                "deleted_children": {"locations": 1, "members": 0, "properties": 4, "tags": 0},
                "at_risk": ["rebuild", "evacuate"],
                "recover": f"recover image {SNAPSHOT} --from-host {HOST}",
                "note": "_base/141ce390743531b7da2db335d2159fa550f460c8 on a compute node that runs it",
            }
        ],
    }


def test_modern_two_cells_discovered_through_cell_mappings(modern: Cloud) -> None:
    data = inventory_json(modern)
    assert data["cells"] == [
        {"error": None, "name": name, "ok": True} for name in ("cell0", "cell1", "cell2")
    ]
    assert (data["flavor_store"], data["glance_schema"], data["partial"]) == (
        "api",
        "modern",
        False,
    )
    assert data["flavors"] == [
        {
            "id": 2,
            "flavorid": "gold-large-1",
            "name": "gold.large",
            "state": "missing",
            "deleted_at": None,
            "instances": [clouds.VM_GONE_FLAVOR, clouds.VM_GONE_FLAVOR_2],
            "cells": ["cell1", "cell2"],
            "long_running": [clouds.VM_GONE_FLAVOR],
            "sources": {"instance_extra": 2, "row": None, "system_metadata": 0},
            "conflicting_instances": [],
            "differ_in": [],
            "variants": [],
            "revert_resize_instances": [],
            "live_flavor": None,
            "at_risk": ["flavor show", "server list --flavor"],
            "recover": "recover flavor gold-large-1",
            "note": None,
            "recreate": None,
        }
    ]
    images = {i["id"]: i for i in data["images"]}
    assert sorted(images) == [clouds.DELETED_IMAGE, clouds.PENDING_IMAGE, clouds.SHELVE_SNAPSHOT]
    assert [i["id"] for i in data["images"]] == sorted(images)
    deleted = images[clouds.DELETED_IMAGE]
    assert (deleted["status"], deleted["instances"], deleted["hosts"], deleted["cells"]) == (
        "deleted",
        [clouds.VM_DELETED_IMAGE],
        ["compute-1"],
        ["cell1"],
    )
    assert deleted["store_file"] is False
    assert deleted["recover"] == f"recover image {clouds.DELETED_IMAGE} --from-host compute-1"
    pending = images[clouds.PENDING_IMAGE]
    assert (pending["status"], pending["store_file"], pending["hosts"]) == (
        "pending_delete",
        True,
        ["compute-3"],
    )
    assert pending["recover"] == f"recover image {clouds.PENDING_IMAGE}"
    assert pending["long_running"] == [clouds.VM_PENDING]
    assert pending["deleted_children"] == {"locations": 1, "members": 0, "properties": 0, "tags": 0}
    shelved = images[clouds.SHELVE_SNAPSHOT]
    assert (shelved["status"], shelved["instances"], shelved["shelved_instances"]) == (
        "deleted",
        [clouds.VM_SHELVED],
        [clouds.VM_SHELVED],
    )
    assert (shelved["hosts"], shelved["snapshot"], shelved["at_risk"]) == ([], True, ["unshelve"])
    assert shelved["recover"] == f"recover image {clouds.SHELVE_SNAPSHOT} --base-file PATH"
    every_instance = {u for i in data["images"] for u in i["instances"]}
    assert clouds.VM_VOLUME not in every_instance  # boot from volume is no orphan
    assert clouds.VM_HEALTHY not in every_instance


def test_modern_nova_with_middle_glance(make_db: MakeDb, tmp_path: Path) -> None:
    cloud = clouds.modern_cloud(make_db, tmp_path, glance_schema=clouds.MIDDLE_GLANCE)
    data = inventory_json(cloud)
    assert data["glance_schema"] == "middle"
    assert [(i["id"], i["status"]) for i in data["images"]] == [
        (clouds.DELETED_IMAGE, "deleted"),
        (clouds.PENDING_IMAGE, "pending_delete"),
        (clouds.SHELVE_SNAPSHOT, "deleted"),
    ]
    assert [f["id"] for f in data["flavors"]] == [2]


def test_explicit_nova_db_overrides_discovery(modern: Cloud) -> None:
    args = ["--nova-api-db", str(modern.api_url), "--nova-db", modern.cell_urls["cell2"]]
    args += ["--glance-db", modern.glance_url, "inventory", "--format", "json"]
    result = run(args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [c["name"] for c in data["cells"]] == ["m_cell2"]
    assert data["flavors"][0]["instances"] == [clouds.VM_GONE_FLAVOR_2]


def test_clean_cloud_exits_0_even_with_fail_on_orphans(make_db: MakeDb, tmp_path: Path) -> None:
    api_url = make_db(clouds.MODERN_API, "c_api")
    cell = make_db(clouds.MODERN_NOVA, "c_cell1")
    glance_url = make_db(clouds.MODERN_GLANCE, "c_glance")
    api = open_database(api_url, "api")
    with api.engine.begin() as conn:
        clouds.map_cell(conn, api, clouds.CELL1_UUID, "cell1", cell)
    api.dispose()
    cloud = Cloud(api_url=api_url, cell_urls={"cell1": cell}, glance_url=glance_url, store=tmp_path)
    data = inventory_json(cloud, "--fail-on-orphans")
    assert (data["flavors"], data["images"], data["warnings"]) == ([], [], [])
    table = run(cloud.args("inventory"))
    assert table.exit_code == 0
    assert "Summary: 0 flavor(s), 0 image(s), 0 instance(s) affected" in table.stdout


def test_fail_on_orphans_exits_3(modern: Cloud) -> None:
    result = run(modern.args("inventory", "--fail-on-orphans"))
    assert result.exit_code == 3
    assert "Summary: 1 flavor(s), 3 image(s), 5 instance(s) affected" in result.stdout
    assert result.stderr == ""


def test_table_fits_80_columns(modern: Cloud, legacy: Cloud) -> None:
    for cloud in (modern, legacy):
        result = run(cloud.args("inventory"))
        assert result.exit_code == 0
        too_wide = [line for line in result.stdout.splitlines() if len(line) > 80]
        # Only a suggested command may run longer: it must stay copy-pasteable on one line.
        assert all(line.lstrip().startswith("recover: recover ") for line in too_wide), too_wide


def test_csv_has_one_row_per_orphan_and_instance(modern: Cloud) -> None:
    result = run(modern.args("inventory", "--format", "csv"))
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["kind"], r["id"], r["instance"]) for r in rows] == [
        ("flavor", "2", clouds.VM_GONE_FLAVOR),
        ("flavor", "2", clouds.VM_GONE_FLAVOR_2),
        ("image", clouds.DELETED_IMAGE, clouds.VM_DELETED_IMAGE),
        ("image", clouds.PENDING_IMAGE, clouds.VM_PENDING),
        ("image", clouds.SHELVE_SNAPSHOT, clouds.VM_SHELVED),
    ]
    assert rows[0]["long_running"] == "yes" and rows[1]["long_running"] == "no"


def test_killed_and_purged_images_and_archived_flavor(legacy: Cloud) -> None:
    nova = open_database(legacy.cell_urls["l_nova"], "nova")
    glance = open_database(legacy.glance_url, "glance")
    with nova.engine.begin() as conn:
        archive_legacy_flavor(conn, nova, 7)
    with glance.engine.begin() as conn:
        purge_image(conn, glance, SNAPSHOT)
        images = glance.table("images")
        conn.execute(update(images).values(status="killed"))  # the cirros image
    nova.dispose()
    glance.dispose()
    data = inventory_json(legacy)
    assert [(f["id"], f["state"], f["sources"]["row"]) for f in data["flavors"]] == [
        (7, "archived", "shadow_instance_types")
    ]
    assert [(i["id"], i["status"], i["recover"]) for i in data["images"]] == [
        (CIRROS, "killed", f"recover image {CIRROS} --from-host compute-07"),
        (SNAPSHOT, "missing", None),
    ]


def test_malformed_flavor_json_is_skipped_with_a_warning(modern: Cloud) -> None:
    cell1 = open_database(modern.cell_urls["cell1"], "cell1")
    broken = "60000000-0000-4000-8000-000000000001"
    with cell1.engine.begin() as conn:
        create_instance(conn, cell1, Instance(
            uuid=broken, flavor=clouds.GOLD, flavor_id=2, image_ref=clouds.LIVE_IMAGE,
            host="compute-1", flavor_text='{"cur": {"nova_object.data": ',
        ))  # fmt: skip
    cell1.dispose()
    result = run(modern.args("inventory", "--format", "json"))
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"Warning: instance {broken} in cell cell1: instance_extra.flavor is not valid JSON "
        "(Expecting value); skipped"
    ]
    flavor = json.loads(result.stdout)["flavors"][0]
    assert broken in flavor["instances"]
    assert flavor["sources"]["instance_extra"] == 2


def test_instances_disagreeing_about_a_flavor_are_listed(modern: Cloud) -> None:
    cell1 = open_database(modern.cell_urls["cell1"], "cell1")
    other = "70000000-0000-4000-8000-000000000001"
    changed = Flavor(**{**clouds.GOLD.__dict__, "vcpus": 16})
    with cell1.engine.begin() as conn:
        create_instance(conn, cell1, Instance(
            uuid=other, flavor=changed, flavor_id=2, image_ref=clouds.LIVE_IMAGE, host="compute-1",
        ))  # fmt: skip
    cell1.dispose()
    flavor = inventory_json(modern)["flavors"][0]
    assert flavor["conflicting_instances"] == [clouds.VM_GONE_FLAVOR, other]
    # No instance is picked for the operator: the variants name one each (issue 10, item 8).
    assert flavor["recover"] is None
    assert flavor["variants"] == [
        {"instances": 2, "example": clouds.VM_GONE_FLAVOR, "values": {"vcpus": 8}},
        {"instances": 1, "example": other, "values": {"vcpus": 16}},
    ]


def test_unreachable_cell_gives_partial_report_and_exit_1(modern: Cloud, make_db: MakeDb) -> None:
    api = open_database(str(modern.api_url), "api")
    with api.engine.begin() as conn:
        clouds.map_cell(conn, api, "ab000000-0000-4000-8000-000000000001", "cell9",
                        "mysql+pymysql://nova:Sup3rSecret@127.0.0.1:9/nova_cell9")  # fmt: skip
    api.dispose()
    result = run(modern.args("inventory", "--format", "json"))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["partial"] is True
    assert [(c["name"], c["ok"]) for c in data["cells"]] == [
        ("cell0", True), ("cell1", True), ("cell2", True), ("cell9", False),
    ]  # fmt: skip
    assert len(data["images"]) == 3  # the other cells were still scanned
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: report is partial, not every cell was scanned (cell9: ")
    assert "Sup3rSecret" not in result.stderr + result.stdout
    assert "nova:***@127.0.0.1:9" in result.stderr


def test_query_count_is_independent_of_instance_count(modern: Cloud) -> None:
    """Set-based SQL: adding instances (orphaned or not) adds no statements."""
    from recover.config import resolve
    from recover.inventory import scan

    settings = resolve(
        {
            "nova_api_db": modern.api_url,
            "glance_db": modern.glance_url,
            "store_dir": str(modern.store),
        },
        environ={},
    )
    counts: list[int] = []

    def count_statements() -> int:
        seen: list[str] = []

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", before)
        try:
            scan(settings)
        finally:
            event.remove(Engine, "before_cursor_execute", before)
        return len([s for s in seen if not s.lstrip().upper().startswith(("SHOW", "DESCRIBE"))])

    counts.append(count_statements())
    cell1 = open_database(modern.cell_urls["cell1"], "cell1")
    with cell1.engine.begin() as conn:
        for n in range(40):
            image = clouds.DELETED_IMAGE if n % 2 else clouds.LIVE_IMAGE
            create_instance(conn, cell1, Instance(
                uuid=f"80000000-0000-4000-8000-{n:012d}", flavor=clouds.GOLD, flavor_id=2,
                image_ref=image, host=f"compute-{n}",
            ))  # fmt: skip
    cell1.dispose()
    counts.append(count_statements())
    assert counts[0] == counts[1]


def test_rows_look_like_nova_and_glance_wrote_them(legacy: Cloud, modern: Cloud) -> None:
    nova = open_database(legacy.cell_urls["l_nova"], "nova")
    with nova.engine.connect() as conn:
        flavor = conn.execute(
            text("SELECT id, deleted, deleted_at FROM instance_types WHERE id = 7")
        ).one()
        specs = conn.execute(
            text("SELECT id, deleted FROM instance_type_extra_specs WHERE instance_type_id = 7")
        ).all()
    assert flavor.deleted == flavor.id == 7 and flavor.deleted_at is not None
    assert specs and all(s.deleted == s.id for s in specs)  # each row: its own id
    glance = open_database(modern.glance_url, "glance")
    with glance.engine.connect() as conn:
        image = conn.execute(
            text("SELECT status, deleted, deleted_at FROM images WHERE id = :i"),
            {"i": clouds.DELETED_IMAGE},
        ).one()
        loc = conn.execute(
            text("SELECT status, deleted FROM image_locations WHERE image_id = :i"),
            {"i": clouds.PENDING_IMAGE},
        ).one()
    assert (image.status, image.deleted, image.deleted_at) == ("deleted", 1, clouds.DELETED_AT)
    assert (loc.status, loc.deleted) == ("pending_delete", 1)
    nova.dispose()
    glance.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nova-db", "mysql+pymysql://nova:Pa55word@127.0.0.1:9/nova"],
         "Error: cannot connect to nova cell 'nova' database mysql+pymysql://nova:***@127.0.0.1:9/nova: "),
        (["--nova-db", "not a url"], "Error: nova cell '#1' database: 'not a url' is not a database URL"),
        (["--nova-db", "postgresql+nosuchdriver://x/y"],
         "Error: nova cell 'y' database postgresql+nosuchdriver://x/y: unsupported driver"),
        ([], "Error: no Nova database given; pass --nova-api-db"),
    ],
)  # fmt: skip
def test_bad_nova_database(modern: Cloud, args: list[str], message: str) -> None:
    result = run([*args, "--glance-db", modern.glance_url, "inventory"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Pa55word" not in result.stderr


def test_wrong_password_is_masked(modern: Cloud, mariadb_server: Any) -> None:
    mariadb_server.query("CREATE USER IF NOT EXISTS 'nova_ro'@'127.0.0.1' IDENTIFIED BY 'right-pw'")
    url = modern.cell_urls["cell1"].replace("root@", "nova_ro:Wr0ngPassw0rd@")
    result = run(["--nova-db", url, "--glance-db", modern.glance_url, "inventory"])
    assert result.exit_code == 1
    assert "Wr0ngPassw0rd" not in result.stderr
    assert "nova_ro:***@" in result.stderr
    assert "Access denied for user 'nova_ro'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_database_of_the_wrong_kind(modern: Cloud) -> None:
    # Glance's database passed as a Nova cell, and a Nova cell as Glance.
    result = run(["--nova-db", modern.glance_url, "--glance-db", modern.glance_url, "inventory"])
    assert result.exit_code == 1
    assert "does not look like a Nova cell database: it has no 'instances' table" in result.stderr
    result = run(["--nova-db", modern.cell_urls["cell1"], "--glance-db", modern.cell_urls["cell1"],
                  "inventory"])  # fmt: skip
    assert result.exit_code == 1
    assert "does not look like a Glance database: it has no 'images' table" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_missing_a_column(modern: Cloud, mariadb_server: Any) -> None:
    mariadb_server.query("ALTER TABLE m_glance.images DROP COLUMN status")
    try:
        result = run(modern.args("inventory"))
        assert result.exit_code == 1
        assert result.stderr.endswith(
            "table 'images' lacks column 'status'; this is not a Glance schema recover knows\n"
        )
    finally:
        mariadb_server.query("DROP DATABASE m_glance")


def test_unknown_format_is_a_usage_error(modern: Cloud) -> None:
    result = run(modern.args("inventory", "--format", "yaml"))
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.stderr


def test_inventory_changes_nothing(modern: Cloud, mariadb_server: Any) -> None:
    names = ["m_api", "m_cell0", "m_cell1", "m_cell2", "m_glance"]
    before = {n: mariadb_server.checksum(n) for n in names}
    assert run(modern.args("inventory")).exit_code == 0
    assert {n: mariadb_server.checksum(n) for n in names} == before


def test_templated_cell_mapping_urls_are_filled_from_the_api_url(modern: Cloud) -> None:
    """Since Rocky a cell mapping may say mysql+pymysql://{username}:{password}@{hostname}/..."""
    api = open_database(str(modern.api_url), "api")
    with api.engine.begin() as conn:
        conn.execute(text("DELETE FROM cell_mappings"))
        port = api.url.port
        for name in ("cell1", "cell2"):
            template = f"mysql+pymysql://{{username}}@{{hostname}}:{port}/m_{name}?charset=utf8"
            clouds.map_cell(conn, api, f"{name}-uuid", name, template)
    api.dispose()
    data = inventory_json(modern)
    assert [c["name"] for c in data["cells"]] == ["cell1", "cell2"]
    assert data["flavors"][0]["instances"] == [clouds.VM_GONE_FLAVOR, clouds.VM_GONE_FLAVOR_2]
