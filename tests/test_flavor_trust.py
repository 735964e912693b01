"""Flavor answers an operator can trust (issue 10, items 7, 8, 11 and 13), on real MariaDB.

* copies that disagree across cells are found and shown as variants (item 8);
* a live flavor that took a deleted flavor's internal id hides nothing (item 7);
* the old flavor of a resized instance is at risk and recoverable (item 11);
* refusals name the real cause and a step that works (item 13).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from recover.cli import cli
from recover.config import resolve
from recover.db.engine import Database, open_database
from recover.errors import RefusedError
from recover.plan import ConcurrentChangeError, Plan, RowChange, apply
from recover.simulate import (
    Flavor,
    Instance,
    archive_legacy_flavor,
    create_api_flavor,
    create_instance,
    create_legacy_flavor,
    destroy_api_flavor,
    finish_resize,
    flavor_blob,
    flavor_primitive,
)
from recover.write import plan_undo
from tests import clouds
from tests.clouds import Cloud, MakeDb
from tests.helpers import dump_rows

VM_NEW = "60000000-0000-4000-8000-00000000000a"  # booted on the flavor that took id 2
VM_RESIZED = "60000000-0000-4000-8000-00000000000b"
VM_CASE = "60000000-0000-4000-8000-00000000000c"
NEW = Flavor(name="m1.new", flavorid="new-1", memory_mb=4096, vcpus=2, root_gb=40,
             created_at=datetime(2026, 11, 1), id=2)  # fmt: skip
OLD = Flavor(name="m1.old", flavorid="old-1", memory_mb=1024, vcpus=1, root_gb=10,
             extra_specs={"hw:cpu_policy": "shared"}, created_at=datetime(2018, 6, 1))  # fmt: skip
API_TABLES = ("flavors", "flavor_extra_specs", "flavor_projects")
ALL_DBS = ("m_api", "m_cell0", "m_cell1", "m_cell2", "m_glance")


@pytest.fixture(autouse=True)
def _journal_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state" / "journal"


@pytest.fixture
def modern(make_db: MakeDb, tmp_path: Path) -> Cloud:
    return clouds.modern_cloud(make_db, tmp_path)


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def inventory(cloud: Cloud, *more: str) -> dict[str, Any]:
    result = run(cloud.args("inventory", "--format", "json", *more))
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def checksums(server: Any) -> dict[str, Any]:
    return {name: server.checksum(name) for name in ALL_DBS}


def cell(cloud: Cloud, name: str) -> Database:
    return open_database(cloud.cell_urls[name], name)


# --- item 8: copies that disagree across cells -----------------------------------------------


def test_copies_that_disagree_across_cells_are_variants(modern: Cloud, mariadb_server: Any) -> None:
    # Each cell agrees with itself; cell2's copy says 16 vCPUs (the flavor was edited by hand
    # between the two boots): per cell nothing differs, across cells the copies do.
    cell2 = cell(modern, "cell2")
    changed = Flavor(**{**clouds.GOLD.__dict__, "vcpus": 16})
    with cell2.engine.begin() as conn:
        conn.execute(
            text("UPDATE instance_extra SET flavor = :f WHERE instance_uuid = :u"),
            {"f": flavor_blob(flavor_primitive(changed, 2)), "u": clouds.VM_GONE_FLAVOR_2},
        )
    cell2.dispose()
    (flavor,) = inventory(modern)["flavors"]
    assert flavor["differ_in"] == ["vcpus"]
    assert flavor["variants"] == [
        {"instances": 1, "example": clouds.VM_GONE_FLAVOR, "values": {"vcpus": 8}},
        {"instances": 1, "example": clouds.VM_GONE_FLAVOR_2, "values": {"vcpus": 16}},
    ]
    assert flavor["conflicting_instances"] == [clouds.VM_GONE_FLAVOR, clouds.VM_GONE_FLAVOR_2]
    # No command that refuses, and no instance picked for the operator.
    assert flavor["recover"] is None
    assert flavor["note"] == (
        "the copies disagree in vcpus: choose the one to trust, `recover flavor gold-large-1 "
        "--from-instance UUID` with an instance that holds it"
    )
    table = run(modern.args("inventory")).stdout.splitlines()
    start = table.index("  flavor 2  flavorid gold-large-1  gold.large  [missing]")
    assert table[start + 5 : start + 13] == [
        "    copies differ in: vcpus",
        f"    variant 1: 1 instance(s), e.g. {clouds.VM_GONE_FLAVOR}",
        "      vcpus=8",
        f"    variant 2: 1 instance(s), e.g. {clouds.VM_GONE_FLAVOR_2}",
        "      vcpus=16",
        "    recover: no (the copies disagree in vcpus: choose the one to trust, `recover",
        "      flavor gold-large-1 --from-instance UUID` with an instance that holds it)",
        "",
    ]
    before = checksums(mariadb_server)
    refused = run(modern.args("flavor", "gold-large-1", "--yes"))
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr == (
        "Error: instances disagree about flavor id 2 (differ in vcpus): 1 instance(s) hold "
        f"vcpus=8 (e.g. {clouds.VM_GONE_FLAVOR}); 1 instance(s) hold vcpus=16 (e.g. "
        f"{clouds.VM_GONE_FLAVOR_2}); name an instance whose copy to trust with "
        "--from-instance UUID\n"
    )
    assert checksums(mariadb_server) == before
    chosen = run(modern.args("flavor", "gold-large-1", "--from-instance", clouds.VM_GONE_FLAVOR_2,
                             "--yes"))  # fmt: skip
    assert chosen.exit_code == 0, chosen.stderr
    assert inventory(modern)["flavors"] == []


# --- item 7: a live flavor took the deleted flavor's internal id ------------------------------


def _take_id_2(cloud: Cloud) -> None:
    """gold.large (id 2, the highest) was deleted; after a restart InnoDB hands 2 out again."""
    api = open_database(str(cloud.api_url), "api")
    with api.engine.begin() as conn:
        assert create_api_flavor(conn, api, NEW) == 2
    api.dispose()
    cell1 = cell(cloud, "cell1")
    with cell1.engine.begin() as conn:
        create_instance(conn, cell1, Instance(
            uuid=VM_NEW, flavor=NEW, flavor_id=2, image_ref=clouds.LIVE_IMAGE, host="compute-1",
            launched_at=datetime(2026, 11, 10),
        ))  # fmt: skip
    cell1.dispose()


RECREATE_GOLD = (
    "openstack flavor create --id gold-large-1 --ram 16384 --vcpus 8 --disk 80 --ephemeral 10 "
    "--swap 2048 --property hw:cpu_policy=dedicated --property hw:mem_page_size=large gold.large"
)


def test_id_taken_by_a_live_flavor_is_an_orphan_of_its_own(modern: Cloud) -> None:
    _take_id_2(modern)
    (flavor,) = inventory(modern)["flavors"]
    assert {k: flavor[k] for k in ("id", "flavorid", "name", "state", "instances", "cells")} == {
        "id": 2,
        "flavorid": "gold-large-1",
        "name": "gold.large",
        "state": "id-reused",
        "instances": [clouds.VM_GONE_FLAVOR, clouds.VM_GONE_FLAVOR_2],  # not VM_NEW
        "cells": ["cell1", "cell2"],
    }
    assert flavor["live_flavor"] == {"id": 2, "flavorid": "new-1", "name": "m1.new"}
    assert flavor["recover"] is None
    assert flavor["note"] == (
        "its internal id 2 now belongs to live flavor 'new-1' ('m1.new'), so it cannot come back "
        "under that id; nova runs the instances from their embedded copy; to make its flavorid "
        "resolvable again, recreate it under a new internal id"
    )
    assert flavor["recreate"] == RECREATE_GOLD
    assert flavor["sources"] == {"instance_extra": 2, "row": None, "system_metadata": 0}
    failing = run(modern.args("inventory", "--fail-on-orphans"))
    assert failing.exit_code == 3
    lines = failing.stdout.splitlines()
    start = lines.index("  flavor 2  flavorid gold-large-1  gold.large  [id-reused]")
    assert lines[start + 1] == "    id now held by: live flavor 2 flavorid new-1 m1.new"
    assert f"    recreate: {RECREATE_GOLD}" in lines
    assert "Summary: 1 flavor(s), 3 image(s), 5 instance(s) affected" in lines


@pytest.mark.parametrize("token", ["gold-large-1", "gold.large", "id:2"])
def test_recover_flavor_explains_a_taken_id(modern: Cloud, mariadb_server: Any, token: str) -> None:
    _take_id_2(modern)
    before = checksums(mariadb_server)
    result = run(modern.args("flavor", token, "--dry-run"))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: flavor 'gold-large-1' ('gold.large') cannot come back under its internal id 2: "
        "live flavor 'new-1' ('m1.new') took that id after the deletion; 2 live instance(s) "
        f"still embed the deleted one (e.g. {clouds.VM_GONE_FLAVOR}) and nova runs them from "
        "that copy; to make flavorid 'gold-large-1' resolvable again, re-create it under a new "
        f"internal id through nova's API: `{RECREATE_GOLD}` (the instances keep "
        "instance_type_id 2)\n"
    )
    assert checksums(mariadb_server) == before
    live = run(modern.args("flavor", "new-1", "--dry-run"))
    assert live.stderr == (
        "Error: flavor 'new-1' is live (id 2, flavorid 'new-1', name 'm1.new'): nothing to recover\n"
    )


def test_legacy_archived_flavor_whose_id_was_taken(make_db: MakeDb, tmp_path: Path) -> None:
    """Mitaka: flavor 7 archived into shadow_instance_types, then a new flavor got id 7."""
    from recover.demo import INSTANCE, SECOND_VICTIM, write_incident

    nova_url = make_db(clouds.LEGACY_NOVA, "t_nova")
    glance_url = make_db(clouds.LEGACY_GLANCE, "t_glance")
    nova, glance = open_database(nova_url, "nova"), open_database(glance_url, "glance")
    write_incident(nova, glance, tmp_path, "0" * 32, 1024)
    with nova.engine.begin() as conn:
        archive_legacy_flavor(conn, nova, 7)
        create_legacy_flavor(conn, nova, Flavor(
            id=7, name="m1.seven", flavorid="new-7", memory_mb=1024, vcpus=1, root_gb=10,
            created_at=datetime(2019, 2, 1),
        ))  # fmt: skip
    nova.dispose()
    glance.dispose()
    cloud = Cloud(api_url=None, cell_urls={"t_nova": nova_url}, glance_url=glance_url,
                  store=tmp_path)  # fmt: skip
    (flavor,) = inventory(cloud)["flavors"]
    assert (flavor["id"], flavor["flavorid"], flavor["name"], flavor["state"]) == (
        7, "7", "ucs.4c8g.swap", "id-reused",
    )  # fmt: skip
    assert flavor["instances"] == [INSTANCE, SECOND_VICTIM]
    assert flavor["live_flavor"] == {"id": 7, "flavorid": "new-7", "name": "m1.seven"}
    recreate = (
        "openstack flavor create --id 7 --ram 8192 --vcpus 4 --disk 60 --swap 4096 --property "
        "hw:cpu_policy=shared --property quota:disk_total_iops_sec=2000 ucs.4c8g.swap"
    )
    assert flavor["recreate"] == recreate
    before = dump_rows(nova_url)
    for args in (["--dry-run"], ["--yes"]):
        result = run(cloud.args("flavor", "7", *args))
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr == (
            "Error: flavor '7' ('ucs.4c8g.swap') cannot come back under its internal id 7: live "
            "flavor 'new-7' ('m1.seven') took that id after the deletion; 2 live instance(s) "
            f"still embed the deleted one (e.g. {INSTANCE}) and nova runs them from that copy; to "
            "make flavorid '7' resolvable again, re-create it under a new internal id through "
            f"nova's API: `{recreate}` (the instances keep instance_type_id 7)\n"
        )
    assert dump_rows(nova_url) == before


# --- item 11: the old flavor of a resized instance --------------------------------------------


def _resize_off_a_flavor_then_delete_it(cloud: Cloud) -> int:
    api = open_database(str(cloud.api_url), "api")
    with api.engine.begin() as conn:
        old_id = create_api_flavor(conn, api, OLD)
    cell2 = cell(cloud, "cell2")
    with cell2.engine.begin() as conn:
        create_instance(conn, cell2, Instance(
            uuid=VM_RESIZED, flavor=OLD, flavor_id=old_id, image_ref=clouds.LIVE_IMAGE,
            host="compute-2", launched_at=datetime(2020, 1, 1), project_id="p-resized",
        ))  # fmt: skip
        finish_resize(conn, cell2, VM_RESIZED, (OLD, old_id), (clouds.SMALL, 1))
    cell2.dispose()
    with api.engine.begin() as conn:
        destroy_api_flavor(conn, api, old_id)
    api.dispose()
    return old_id


def test_old_flavor_of_a_resized_instance_is_at_risk_and_recoverable(
    modern: Cloud, mariadb_server: Any
) -> None:
    old_id = _resize_off_a_flavor_then_delete_it(modern)
    assert old_id == 3
    data = inventory(modern)
    assert [f["id"] for f in data["flavors"]] == [2, 3]
    old = data["flavors"][1]
    assert {k: old[k] for k in ("flavorid", "name", "state", "instances", "cells", "at_risk")} == {
        "flavorid": "old-1",
        "name": "m1.old",
        "state": "missing",
        "instances": [],
        "cells": ["cell2"],
        "at_risk": ["revert-resize"],
    }
    assert old["revert_resize_instances"] == [VM_RESIZED]
    assert old["sources"] == {"instance_extra": 1, "row": None, "system_metadata": 0}
    assert old["recover"] == "recover flavor old-1"
    table = run(modern.args("inventory", "--fail-on-orphans"))
    assert table.exit_code == 3
    lines = table.stdout.splitlines()
    start = lines.index("  flavor 3  flavorid old-1  m1.old  [missing]")
    assert lines[start + 1 : start + 4] == [
        f"    back on revert-resize (1): {VM_RESIZED}",
        "    definition from: instance_extra.flavor of 1",
        "    recover: recover flavor old-1",
    ]
    assert "Summary: 2 flavor(s), 3 image(s), 6 instance(s) affected" in lines
    csv = run(modern.args("inventory", "--format", "csv")).stdout.splitlines()
    assert (
        f"flavor,3,m1.old,missing (revert-resize),{VM_RESIZED},cell2,compute-2,resized,"
        in "\n".join(csv)
    )

    done = run(modern.args("flavor", "old-1", "--yes", "--format", "json"))
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["changes"] == [
        "insert 1 row(s) in flavors",
        "insert 1 row(s) in flavor_extra_specs",
    ]
    assert (
        "1 of the copies are the old flavor of resized instances, which revert-resize gives back"
        in report["notes"]
    )
    flavors = dump_rows(str(modern.api_url))["flavors"]
    assert [(r[2], r[3], r[4], r[5], r[8]) for r in flavors if r[3] == 3] == [
        ("m1.old", 3, 1024, 1, "old-1")  # name, id, memory_mb, vcpus, flavorid
    ]
    assert [f["id"] for f in inventory(modern)["flavors"]] == [2]


# --- item 13: refusals that name the real cause ----------------------------------------------

CASE = Flavor(name="m1.case", flavorid="case-1", memory_mb=512, vcpus=1, root_gb=5,
              extra_specs={"hw:cpu_policy": "dedicated", "HW:CPU_POLICY": "dedicated"},
              created_at=datetime(2016, 5, 1))  # fmt: skip


def test_extra_spec_keys_equal_under_nova_api_collation(modern: Cloud, mariadb_server: Any) -> None:
    """A flavor deleted before Newton: instance_type_extra_specs (utf8_bin) held both keys."""
    cell1 = cell(modern, "cell1")
    with cell1.engine.begin() as conn:
        create_instance(conn, cell1, Instance(
            uuid=VM_CASE, flavor=CASE, flavor_id=9, image_ref=clouds.LIVE_IMAGE, host="compute-1",
            launched_at=datetime(2016, 6, 1),
        ))  # fmt: skip
    cell1.dispose()
    before = checksums(mariadb_server)
    for mode in ("--dry-run", "--yes"):
        refused = run(modern.args("flavor", "case-1", mode))
        assert (refused.exit_code, refused.stdout) == (1, "")
        assert refused.stderr == (
            "Error: the copy of flavor id 9 has extra specs 'HW:CPU_POLICY' and 'hw:cpu_policy', "
            "which nova_api cannot hold together: flavor_extra_specs has a unique key on "
            "(flavor_id, key) and its collation compares the two as equal; nova itself could not "
            "have stored both there; recover the flavor without one of them, e.g. `recover "
            "flavor id:9 --drop-extra-spec HW:CPU_POLICY` (the instances keep both in their "
            "embedded copy)\n"
        )
    assert checksums(mariadb_server) == before
    unknown = run(modern.args("flavor", "case-1", "--drop-extra-spec", "hw:nope", "--dry-run"))
    assert unknown.stderr == (
        "Error: flavor id 9 has no extra spec 'hw:nope' to leave out; its extra specs: "
        "'HW:CPU_POLICY', 'hw:cpu_policy'\n"
    )
    done = run(modern.args("flavor", "id:9", "--drop-extra-spec", "HW:CPU_POLICY", "--yes"))
    assert done.exit_code == 0, done.stderr
    assert (
        "  extra spec(s) 'HW:CPU_POLICY' left out (--drop-extra-spec): the instances keep them in "
        "their embedded copy" in done.stdout.splitlines()
    )
    specs = dump_rows(str(modern.api_url))["flavor_extra_specs"]
    assert [(r[3], r[4], r[5]) for r in specs] == [(9, "hw:cpu_policy", "dedicated")]


def test_rows_of_one_plan_that_collide_are_no_race(modern: Cloud, mariadb_server: Any) -> None:
    """apply() itself: a duplicate key between two rows of the same plan is deterministic."""
    api = open_database(str(modern.api_url), "api")
    spec = {"created_at": None, "updated_at": None, "flavor_id": 1, "value": "x"}
    plan = Plan(
        title="two keys nova_api holds equal",
        db=api,
        target="nova_api",
        changes=[
            RowChange("flavor_extra_specs", {"id": 50}, None, {**spec, "id": 50, "key": "a:b"}),
            RowChange("flavor_extra_specs", {"id": 51}, None, {**spec, "id": 51, "key": "A:B"}),
        ],
    )
    before = mariadb_server.checksum("m_api")
    with pytest.raises(RefusedError) as refused:
        apply(plan)
    api.dispose()
    assert not isinstance(refused.value, ConcurrentChangeError)
    assert str(refused.value) == (
        "two rows of this plan collide in flavor_extra_specs: its unique key (flavor_id, key) "
        "holds [1, 'a:b'] and [1, 'A:B'] equal under the column's collation; nothing was "
        "changed; a re-run would fail the same way"
    )
    assert mariadb_server.checksum("m_api") == before


ADDED_SPEC = (
    "rows added since refer to a row this would delete: flavor_extra_specs id=7 "
    "key='hw:numa_nodes' value='1'; nothing was changed; they were not there when the plan "
    "was made, so it leaves them alone: remove them first (`openstack flavor unset --property "
    "KEY FLAVOR` or `--project PROJECT`), or keep what the plan would delete"
)


def test_undo_after_someone_added_an_extra_spec(
    modern: Cloud, mariadb_server: Any, _journal_dir: Path
) -> None:
    assert run(modern.args("flavor", "gold-large-1", "--yes")).exit_code == 0
    (journal,) = sorted(_journal_dir.glob("*.json"))
    settings = resolve({"nova_api_db": modern.api_url}, environ={})
    planned = plan_undo(settings, journal)  # before the extra spec exists
    # `openstack flavor set --property hw:numa_nodes=1 gold-large-1`, as nova-api writes it.
    mariadb_server.query(
        "INSERT INTO m_api.flavor_extra_specs (id, flavor_id, `key`, value) "
        "VALUES (7, 2, 'hw:numa_nodes', '1')"
    )
    before = checksums(mariadb_server)
    for mode in ("--dry-run", "--yes"):
        result = run(modern.args("undo", str(journal), mode))
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {ADDED_SPEC}\n")
    with pytest.raises(RefusedError) as refused:
        apply(planned)  # the plan was made before: the database's own refusal, explained
    planned.db.dispose()
    assert not isinstance(refused.value, ConcurrentChangeError)
    assert str(refused.value) == ADDED_SPEC
    assert checksums(mariadb_server) == before
    assert json.loads(journal.read_text())["status"] == "committed"


def test_recover_flavor_with_an_unreachable_cell_says_how_to_proceed(
    modern: Cloud, mariadb_server: Any
) -> None:
    api = open_database(str(modern.api_url), "api")
    with api.engine.begin() as conn:
        clouds.map_cell(conn, api, "ab000000-0000-4000-8000-000000000001", "cell9",
                        "mysql+pymysql://nova:Sup3rSecret@127.0.0.1:9/nova_cell9")  # fmt: skip
    api.dispose()
    before = checksums(mariadb_server)
    result = run(modern.args("flavor", "gold-large-1", "--yes"))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: cannot connect to nova cell 'cell9' database "
        "mysql+pymysql://nova:***@127.0.0.1:9/nova_cell9: Can't connect to MySQL server on "
        "'127.0.0.1' ([Errno 111] Connection refused); recover flavor reads every cell first: the "
        "flavor's copies and the instances that use it may be in cell9; fix the access to cell9, "
        "or, knowing its instances are left out, name the reachable cells with --nova-db URL "
        "(repeatable; it replaces the cell_mappings list)\n"
    )
    assert checksums(mariadb_server) == before
    reachable = [a for name in ("cell1", "cell2") for a in ("--nova-db", modern.cell_urls[name])]
    dry = run([*reachable, *modern.args("flavor", "gold-large-1", "--dry-run")])
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.startswith("-- recover flavor gold-large-1 (id 2, gold.large)\n")


def test_modern_name_taken_comes_back_under_its_ids_with_another_name(
    modern: Cloud, mariadb_server: Any
) -> None:
    api = open_database(str(modern.api_url), "api")
    with api.engine.begin() as conn:
        taken_by = create_api_flavor(conn, api, Flavor(
            name="gold.large", flavorid="gold-large-2", memory_mb=1, vcpus=1, root_gb=1,
        ))  # fmt: skip
    api.dispose()
    before = checksums(mariadb_server)
    clash = run(modern.args("flavor", "gold-large-1", "--yes"))
    assert (clash.exit_code, clash.stderr) == (
        1,
        f"Error: a live flavor already has name 'gold.large' (id {taken_by}); names are unique "
        "and nova's API cannot rename a flavor: recover this one under its ids with another "
        "name, `recover flavor id:2 --new-name NAME`, or delete the live one first if no "
        "instance uses it\n",
    )
    assert checksums(mariadb_server) == before
    done = run(modern.args("flavor", "id:2", "--new-name", "gold.large-2019", "--yes"))
    assert done.exit_code == 0, done.stderr
    assert (
        done.stdout.splitlines()[0] == "Done: recover flavor gold-large-1 (id 2, gold.large-2019)"
    )
    flavors = dump_rows(str(modern.api_url))["flavors"]
    assert [(r[2], r[3], r[8]) for r in flavors if r[3] == 2] == [
        ("gold.large-2019", 2, "gold-large-1")
    ]
    assert [f["id"] for f in inventory(modern)["flavors"]] == []
    bad = run(modern.args("flavor", "id:2", "--new-name", " ", "--dry-run"))
    assert bad.stderr == "Error: --new-name ' ' is not a flavor name nova accepts\n"


def test_legacy_old_flavor_of_a_resized_instance(make_db: MakeDb, tmp_path: Path) -> None:
    """Mitaka: the old flavor's row is soft-deleted; revert-resize would need it."""
    nova_url = make_db(clouds.LEGACY_NOVA, "r_nova")
    glance_url = make_db(clouds.LEGACY_GLANCE, "r_glance")
    nova = open_database(nova_url, "nova")
    with nova.engine.begin() as conn:
        small = create_legacy_flavor(conn, nova, clouds.SMALL)
        old = create_legacy_flavor(conn, nova, OLD)
        create_instance(conn, nova, Instance(
            uuid=VM_RESIZED, flavor=OLD, flavor_id=old, image_ref="", host="compute-2",
            launched_at=datetime(2020, 1, 1), flavor_version="1.1",
        ))  # fmt: skip
        finish_resize(conn, nova, VM_RESIZED, (OLD, old), (clouds.SMALL, small))
        conn.execute(
            text("UPDATE instance_types SET deleted = id, deleted_at = :at WHERE id = :id"),
            {"at": datetime(2021, 1, 1), "id": old},
        )
    nova.dispose()
    cloud = Cloud(api_url=None, cell_urls={"r_nova": nova_url}, glance_url=glance_url,
                  store=tmp_path)  # fmt: skip
    (flavor,) = inventory(cloud)["flavors"]
    assert (flavor["id"], flavor["state"], flavor["instances"]) == (old, "soft-deleted", [])
    assert (flavor["revert_resize_instances"], flavor["at_risk"]) == (
        [VM_RESIZED],
        ["revert-resize"],
    )
    assert flavor["recover"] == "recover flavor old-1"
    done = run(cloud.args("flavor", "old-1", "--yes"))
    assert done.exit_code == 0, done.stderr
    assert inventory(cloud)["flavors"] == []


def test_resized_off_a_flavor_whose_id_was_taken(modern: Cloud) -> None:
    """revert-resize would give back gold.large, whose id 2 a live flavor holds now."""
    cell1 = cell(modern, "cell1")
    with cell1.engine.begin() as conn:
        create_instance(conn, cell1, Instance(
            uuid=VM_RESIZED, flavor=clouds.GOLD, flavor_id=2, image_ref=clouds.LIVE_IMAGE,
            host="compute-1", launched_at=datetime(2020, 1, 1),
        ))  # fmt: skip
        finish_resize(conn, cell1, VM_RESIZED, (clouds.GOLD, 2), (clouds.SMALL, 1))
    cell1.dispose()
    _take_id_2(modern)
    (flavor,) = inventory(modern)["flavors"]
    assert (flavor["state"], flavor["revert_resize_instances"], flavor["at_risk"]) == (
        "id-reused",
        [VM_RESIZED],
        ["flavor show", "server list --flavor", "revert-resize"],
    )
    result = run(modern.args("flavor", "gold-large-1", "--dry-run"))
    assert result.exit_code == 1
    assert "took that id after the deletion; 3 live instance(s) still embed" in result.stderr
