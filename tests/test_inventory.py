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
                "never_ran": [],
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
                "base_files": ["141ce390743531b7da2db335d2159fa550f460c8"],
                "store_file": False,
                "deleted_children": {"locations": 1, "members": 0, "properties": 4, "tags": 0},
                "metadata": {
                    "row": True,
                    "locations": 1,
                    "members": 0,
                    "properties": 4,
                    "tags": 0,
                    "none_left": ["members", "tags"],
                    "nova": {"request_spec": 0, "system_metadata": 2},
                },
                "at_risk": ["rebuild", "evacuate"],
                "recover": f"recover image {SNAPSHOT} --from-host {HOST}",
                "note": "_base/141ce390743531b7da2db335d2159fa550f460c8 on a compute node that runs it",
                "never_ran": [],
                "row_status": "deleted",
            }
        ],
        "never_ran": {"flavors": [], "images": []},
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
            "never_ran": [],
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
        (SNAPSHOT, "missing", f"recover image {SNAPSHOT} --from-host {HOST}"),
    ]
    missing = data["images"][1]
    assert missing["note"] == (
        "the images row was purged: recover re-creates it under its own id from Nova's copies; "
        "_base/141ce390743531b7da2db335d2159fa550f460c8 on a compute node that runs it"
    )
    assert missing["metadata"] == {
        "row": False,
        "locations": 0,
        "members": 0,
        "properties": 0,
        "tags": 0,
        "none_left": ["locations", "members", "properties", "tags"],
        "nova": {"request_spec": 0, "system_metadata": 2},
    }


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


# --- issue 10 item 6: Nova keeps image_ref as the client sent it, Glance ignores case ---------

UPPER_ONLY_IMAGE = "c0000000-0000-4000-8000-00000000000c"
VM_UPPER_DELETED = "21000000-0000-4000-8000-000000000001"
VM_UPPER_ONLY = "21000000-0000-4000-8000-000000000002"
VM_UPPER_LIVE = "21000000-0000-4000-8000-000000000003"


def _boot(url: str, uuid: str, image_ref: str, host: str | None, *, flavor: Flavor = clouds.SMALL,
          flavor_id: int = 1, **more: Any) -> None:  # fmt: skip
    cell = open_database(url, "cell")
    with cell.engine.begin() as conn:
        create_instance(conn, cell, Instance(
            uuid=uuid, flavor=flavor, flavor_id=flavor_id, image_ref=image_ref, host=host, **more,
        ))  # fmt: skip
    cell.dispose()


def test_upper_case_image_refs_are_the_same_images(modern: Cloud) -> None:
    """An upper-case image_ref of a deleted image used to crash the inventory (KeyError); one of
    a live image made it a purged orphan. Both spellings now name one image, as in Glance."""
    from recover.inventory import base_file_name
    from recover.simulate import Image, create_image, delete_image

    glance = open_database(modern.glance_url, "glance")
    with glance.engine.begin() as conn:
        create_image(
            conn,
            glance,
            Image(
                id=UPPER_ONLY_IMAGE,
                name="win-2019",
                size=2048,
                location=f"file://{modern.store}/{UPPER_ONLY_IMAGE}",
            ),
        )
        delete_image(conn, glance, UPPER_ONLY_IMAGE, clouds.DELETED_AT)
    glance.dispose()
    cell1, cell2 = modern.cell_urls["cell1"], modern.cell_urls["cell2"]
    _boot(cell1, VM_UPPER_DELETED, clouds.DELETED_IMAGE.upper(), "compute-5")
    _boot(cell2, VM_UPPER_ONLY, UPPER_ONLY_IMAGE.upper(), "compute-6")
    _boot(cell2, VM_UPPER_LIVE, clouds.LIVE_IMAGE.upper(), "compute-2")
    data = inventory_json(modern)
    images = {i["id"]: i for i in data["images"]}
    # Glance's (lower-case) ids; the live image is no orphan whatever the spelling.
    assert sorted(images) == [UPPER_ONLY_IMAGE, clouds.DELETED_IMAGE, clouds.PENDING_IMAGE,
                              clouds.SHELVE_SNAPSHOT]  # fmt: skip
    both = images[clouds.DELETED_IMAGE]
    assert (both["status"], both["instances"], both["hosts"], both["cells"]) == (
        "deleted", [clouds.VM_DELETED_IMAGE, VM_UPPER_DELETED], ["compute-1", "compute-5"],
        ["cell1"],
    )  # fmt: skip
    # nova names _base after image_ref as spelled: one name per spelling in use.
    assert both["base_file"] == base_file_name(clouds.DELETED_IMAGE)
    assert both["base_files"] == sorted(
        [base_file_name(clouds.DELETED_IMAGE), base_file_name(clouds.DELETED_IMAGE.upper())]
    )
    upper = images[UPPER_ONLY_IMAGE]
    assert (upper["status"], upper["name"], upper["instances"], upper["hosts"]) == (
        "deleted", "win-2019", [VM_UPPER_ONLY], ["compute-6"],
    )  # fmt: skip
    assert upper["base_file"] == base_file_name(UPPER_ONLY_IMAGE.upper())
    assert upper["base_files"] == [base_file_name(UPPER_ONLY_IMAGE.upper())]
    assert upper["recover"] == f"recover image {UPPER_ONLY_IMAGE} --from-host compute-6"
    assert upper["deleted_children"] == {"locations": 1, "members": 0, "properties": 0, "tags": 0}
    csv_rows = list(
        csv.DictReader(io.StringIO(run(modern.args("inventory", "--format", "csv")).stdout))
    )
    assert [r["instance"] for r in csv_rows if r["id"] == clouds.DELETED_IMAGE] == [
        clouds.VM_DELETED_IMAGE, VM_UPPER_DELETED,
    ]  # fmt: skip


def test_upper_case_ref_of_a_live_image_is_no_orphan(make_db: MakeDb, tmp_path: Path) -> None:
    """--fail-on-orphans exited 3 forever for it ("missing": purged)."""
    from recover.simulate import Image, create_api_flavor, create_image

    api_url = make_db(clouds.MODERN_API, "u_api")
    cell = make_db(clouds.MODERN_NOVA, "u_cell1")
    glance_url = make_db(clouds.MODERN_GLANCE, "u_glance")
    api, glance = open_database(api_url, "api"), open_database(glance_url, "glance")
    with api.engine.begin() as conn:
        clouds.map_cell(conn, api, clouds.CELL1_UUID, "cell1", cell)
        create_api_flavor(conn, api, clouds.SMALL)
    with glance.engine.begin() as conn:
        create_image(conn, glance, Image(id=clouds.LIVE_IMAGE, name="ubuntu-24.04", size=1024))
    api.dispose()
    glance.dispose()
    _boot(cell, VM_UPPER_LIVE, clouds.LIVE_IMAGE.upper(), "compute-1")
    cloud = Cloud(api_url=api_url, cell_urls={"cell1": cell}, glance_url=glance_url, store=tmp_path)
    data = inventory_json(cloud, "--fail-on-orphans")
    assert (data["flavors"], data["images"], data["warnings"]) == ([], [], [])
    result = run(cloud.args("inventory", "--fail-on-orphans"))
    assert (result.exit_code, result.stderr) == (0, "")
    assert "Summary: 0 flavor(s), 0 image(s), 0 instance(s) affected\n" in result.stdout


# --- issue 10 item 10: failed builds in cell0 never ran -----------------------------------------

NEVER_IMAGE = "b0000000-0000-4000-8000-00000000000b"
NEVER_FLAVOR = Flavor(name="tiny.never", flavorid="never-1", memory_mb=512, vcpus=1, root_gb=1)
VM_CELL0_MIXED = "c0000000-0000-4000-8000-0000000000c1"  # gold + DELETED_IMAGE, like cell1's
VM_CELL0_ONLY = "c0000000-0000-4000-8000-0000000000c2"  # the only user of its flavor and image


def _failed_builds(cloud: Cloud) -> None:
    """What nova's conductor leaves in cell0 when scheduling fails (``_bury_in_cell0``):
    an instance in ERROR with no host, never launched."""
    from recover.simulate import (
        Image,
        create_api_flavor,
        create_image,
        delete_image,
        destroy_api_flavor,
    )

    api = open_database(str(cloud.api_url), "api")
    with api.engine.begin() as conn:
        never_id = create_api_flavor(conn, api, NEVER_FLAVOR)
        destroy_api_flavor(conn, api, never_id)
    api.dispose()
    assert never_id == 3
    glance = open_database(cloud.glance_url, "glance")
    with glance.engine.begin() as conn:
        create_image(conn, glance, Image(id=NEVER_IMAGE, name="typo", size=512))
        delete_image(conn, glance, NEVER_IMAGE, clouds.DELETED_AT)
    glance.dispose()
    cell0 = cloud.cell_urls["cell0"]
    _boot(cell0, VM_CELL0_MIXED, clouds.DELETED_IMAGE, None, flavor=clouds.GOLD, flavor_id=2,
          vm_state="error")  # fmt: skip
    _boot(cell0, VM_CELL0_ONLY, NEVER_IMAGE, None, flavor=NEVER_FLAVOR, flavor_id=3,
          vm_state="error")  # fmt: skip


def test_failed_builds_in_cell0_are_reported_apart(modern: Cloud) -> None:
    _failed_builds(modern)
    data = inventory_json(modern)
    gold = data["flavors"]
    assert [(f["id"], f["instances"], f["never_ran"], f["cells"]) for f in gold] == [
        (2, [clouds.VM_GONE_FLAVOR, clouds.VM_GONE_FLAVOR_2], [VM_CELL0_MIXED], ["cell1", "cell2"])
    ]
    assert gold[0]["recover"] == "recover flavor gold-large-1"
    images = {i["id"]: i for i in data["images"]}
    assert sorted(images) == [clouds.DELETED_IMAGE, clouds.PENDING_IMAGE, clouds.SHELVE_SNAPSHOT]
    deleted = images[clouds.DELETED_IMAGE]
    assert (deleted["instances"], deleted["never_ran"], deleted["hosts"], deleted["cells"]) == (
        [clouds.VM_DELETED_IMAGE], [VM_CELL0_MIXED], ["compute-1"], ["cell1"],
    )  # fmt: skip
    assert deleted["recover"] == f"recover image {clouds.DELETED_IMAGE} --from-host compute-1"
    never = data["never_ran"]
    assert [(f["id"], f["flavorid"], f["instances"], f["never_ran"], f["recover"])
            for f in never["flavors"]] == [(3, "never-1", [], [VM_CELL0_ONLY], None)]  # fmt: skip
    assert [(i["id"], i["instances"], i["never_ran"], i["hosts"], i["recover"], i["at_risk"])
            for i in never["images"]] == [(NEVER_IMAGE, [], [VM_CELL0_ONLY], [], None, [])]  # fmt: skip
    assert never["images"][0]["note"] == (
        "only failed builds in cell0 use it: no compute node ever ran them; "
        "delete them (openstack server delete) rather than recover the image"
    )
    # Still an exit 3 for the real orphans; the failed builds are counted apart.
    result = run(modern.args("inventory", "--fail-on-orphans"))
    assert result.exit_code == 3
    assert (
        "Summary: 1 flavor(s), 3 image(s), 5 instance(s) affected; "
        "2 failed build(s) in cell0 set apart\n"
    ) in result.stdout
    assert f"    never ran, cell0 (1): {VM_CELL0_MIXED}\n" in result.stdout
    rows = list(
        csv.DictReader(io.StringIO(run(modern.args("inventory", "--format", "csv")).stdout))
    )
    assert not {VM_CELL0_MIXED, VM_CELL0_ONLY} & {r["instance"] for r in rows}


def test_only_failed_builds_do_not_fail_on_orphans(modern: Cloud) -> None:
    """cell0 holds the only users of a deleted flavor and image: shown, but exit 0."""
    from recover.simulate import destroy_instance

    _failed_builds(modern)
    for name, vms in (
        ("cell1", (clouds.VM_GONE_FLAVOR, clouds.VM_DELETED_IMAGE)),
        ("cell2", (clouds.VM_GONE_FLAVOR_2, clouds.VM_PENDING, clouds.VM_SHELVED)),
    ):
        cell = open_database(modern.cell_urls[name], name)
        with cell.engine.begin() as conn:
            for vm in vms:
                destroy_instance(conn, cell, vm, clouds.DELETED_AT)
        cell.dispose()
    result = run(modern.args("inventory", "--fail-on-orphans"))
    assert (result.exit_code, result.stderr) == (0, "")
    table = result.stdout
    assert "Deleted flavors still used by live instances: 0\n" in table
    assert "Deleted images still used by live instances: 0\n" in table
    assert (
        "Deleted flavors and images used only by failed builds in cell0 (never ran): 4\n"
        "  flavor 2  flavorid gold-large-1  gold.large  [missing]\n"
        f"    never ran, cell0 (1): {VM_CELL0_MIXED}\n"
        "  flavor 3  flavorid never-1  tiny.never  [missing]\n"
        f"    never ran, cell0 (1): {VM_CELL0_ONLY}\n"
        f"  image {NEVER_IMAGE}  [deleted]\n"
        f"    never ran, cell0 (1): {VM_CELL0_ONLY}\n"
        f"  image {clouds.DELETED_IMAGE}  [deleted]\n"
        f"    never ran, cell0 (1): {VM_CELL0_MIXED}\n"
        "    delete these instances (openstack server delete): nothing to recover\n"
    ) in table
    assert "Summary: 0 flavor(s), 0 image(s), 0 instance(s) affected; 2 failed build(s)" in table
    # cell0 named by an explicit --nova-db: nova-manage's <main>_cell0 database name.
    args = ["--nova-api-db", str(modern.api_url), "--glance-db", modern.glance_url]
    for name in ("cell0", "cell1", "cell2"):
        args += ["--nova-db", modern.cell_urls[name]]
    data = json.loads(run([*args, "inventory", "--format", "json"]).stdout)
    assert (data["flavors"], data["images"]) == ([], [])
    assert [f["id"] for f in data["never_ran"]["flavors"]] == [2, 3]
    assert [i["id"] for i in data["never_ran"]["images"]] == [NEVER_IMAGE, clouds.DELETED_IMAGE]


def test_pending_delete_file_in_any_datadir_counts(modern: Cloud, tmp_path: Path) -> None:
    """Issue 10 item 16: with filesystem_store_datadirs the file of a pending_delete image may
    be in a lower-priority directory than the one glance_store writes new images into."""
    high = tmp_path / "high"
    high.mkdir()
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        f"[database]\nconnection = {modern.glance_url}\n[glance_store]\n"
        f"filesystem_store_datadirs = {modern.store}:100\nfilesystem_store_datadirs = {high}:200\n"
    )
    assert modern.api_url is not None
    result = run(["--nova-api-db", modern.api_url, "--glance-conf", str(conf),
                  "inventory", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    images = {i["id"]: i for i in json.loads(result.stdout)["images"]}
    assert images[clouds.PENDING_IMAGE]["store_file"] is True
    assert images[clouds.DELETED_IMAGE]["store_file"] is False
