"""`recover flavor` and `recover undo` on real MariaDB with the real DDL of each generation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from recover.cli import cli
from recover.config import resolve
from recover.db.engine import Database, open_database
from recover.flavors import plan_flavor
from recover.plan import ConcurrentChangeError, apply
from recover.simulate import (
    Flavor,
    Instance,
    archive_legacy_flavor,
    create_api_flavor,
    create_instance,
    create_legacy_flavor,
    destroy_api_flavor,
    destroy_legacy_flavor,
    map_cell,
)
from tests import clouds
from tests.clouds import MakeDb
from tests.helpers import REPO_ROOT, dump_rows

DELETED_AT = datetime(2024, 3, 1, 10, 0, 0)
LEGACY_TABLES = ("instance_types", "instance_type_extra_specs", "instance_type_projects")
SHADOW_TABLES = tuple(f"shadow_{t}" for t in LEGACY_TABLES)
API_TABLES = ("flavors", "flavor_extra_specs", "flavor_projects")
VM1 = "11111111-1111-4111-8111-111111111111"
VM2 = "22222222-2222-4222-8222-222222222222"
PROJECT_A, PROJECT_B = "aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa", "bbbbbbbbbbbb4bbb8bbbbbbbbbbbbbbb"

PRIVATE = Flavor(
    name="db.xlarge",
    flavorid="f0e1d2c3",
    memory_mb=32768,
    vcpus=8,
    root_gb=100,
    ephemeral_gb=20,
    swap=4096,
    rxtx_factor=2.0,
    is_public=False,
    extra_specs={"hw:cpu_policy": "dedicated", "quota:disk_read_iops_sec": "5000"},
    projects=(PROJECT_A, PROJECT_B),
    created_at=datetime(2020, 5, 6, 7, 8, 9),
)


@pytest.fixture(autouse=True)
def _journal_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("RECOVER_STATE_DIR", str(state))
    return state / "journal"


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def rows(url: str, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    dump = dump_rows(url)
    return {t: dump[t] for t in tables}


def client(mariadb_server: Any, db: str, sql: str) -> None:
    done = subprocess.run(
        mariadb_server.client_argv(db), input=sql, text=True, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json")) if directory.exists() else []


# --- pre-Newton -------------------------------------------------------------------------------


class Legacy:
    """A Mitaka cell: flavor 1 (private, 2 specs, 2 projects) used by two VMs, then deleted."""

    def __init__(self, make_db: MakeDb, name: str = "f_nova") -> None:
        self.name = name
        self.url = make_db(clouds.LEGACY_NOVA, name)
        self.db = open_database(self.url, "nova")
        with self.db.engine.begin() as conn:
            self.id = create_legacy_flavor(conn, self.db, PRIVATE)
            specs = self.db.table("instance_type_extra_specs")
            # A spec an operator removed long before the flavor went: it must stay removed.
            conn.execute(text(
                "INSERT INTO instance_type_extra_specs (instance_type_id, `key`, value, deleted, "
                "created_at, deleted_at) VALUES (:f, 'hw:watchdog_action', 'reset', 0, :c, NULL)"
            ), {"f": self.id, "c": PRIVATE.created_at})  # fmt: skip
            conn.execute(
                specs.update()
                .where(specs.c.key == "hw:watchdog_action")
                .values(deleted=specs.c.id, deleted_at=datetime(2022, 1, 1))
            )
            for uuid, project in ((VM1, PROJECT_A), (VM2, PROJECT_B)):
                create_instance(conn, self.db, Instance(
                    uuid=uuid, flavor=PRIVATE, flavor_id=self.id, image_ref=clouds.LIVE_IMAGE,
                    host="compute-1", project_id=project, flavor_version="1.1",
                ))  # fmt: skip
        self.before_delete = rows(self.url, LEGACY_TABLES)
        with self.db.engine.begin() as conn:
            destroy_legacy_flavor(conn, self.db, self.id, DELETED_AT)
        self.after_delete = rows(self.url, (*LEGACY_TABLES, *SHADOW_TABLES))

    def args(self, *more: str) -> list[str]:
        return ["--nova-db", self.url, *more]


@pytest.fixture
def legacy(make_db: MakeDb) -> Legacy:
    return Legacy(make_db)


def test_legacy_undelete_restores_exactly_the_rows_nova_had(
    legacy: Legacy, _journal_dir: Path
) -> None:
    result = run(legacy.args("flavor", PRIVATE.flavorid, "--yes"))
    assert result.exit_code == 0, result.stderr
    assert rows(legacy.url, LEGACY_TABLES) == legacy.before_delete
    lines = result.stdout.splitlines()
    assert lines[0] == f"Done: recover flavor f0e1d2c3 (id {legacy.id}, db.xlarge)"
    assert "  with 2 extra spec(s) and 2 project(s) deleted together with it" in lines
    (journal,) = journal_files(_journal_dir)
    assert lines[-1] == f"Undo:    recover undo {journal}"
    assert journal.stat().st_mode & 0o777 == 0o600
    document = json.loads(journal.read_text())
    assert document["status"] == "committed"
    assert [
        (c["table"], c["before"]["deleted"], c["after"]["deleted"]) for c in document["changes"]
    ] == [
        ("instance_types", 1, 0),
        ("instance_type_extra_specs", 1, 0),
        ("instance_type_extra_specs", 2, 0),
        ("instance_type_projects", 1, 0),
        ("instance_type_projects", 2, 0),
    ]
    assert "mysql+pymysql://root@127.0.0.1" in document["database"]["url"]


def test_flavor_can_be_named_by_id_name_or_flavorid(legacy: Legacy) -> None:
    for token in (str(legacy.id), "db.xlarge", "id:1", "name:db.xlarge", "flavorid:f0e1d2c3"):
        result = run(legacy.args("flavor", token, "--dry-run"))
        assert result.exit_code == 0, (token, result.stderr)
        assert result.stdout.startswith(f"-- recover flavor f0e1d2c3 (id {legacy.id}, db.xlarge)\n")


def test_legacy_archived_flavor_moves_back_from_shadow(legacy: Legacy) -> None:
    with legacy.db.engine.begin() as conn:
        archive_legacy_flavor(conn, legacy.db, legacy.id)
    archived = rows(legacy.url, SHADOW_TABLES)
    assert len(archived["shadow_instance_types"]) == 1
    assert len(archived["shadow_instance_type_extra_specs"]) == 3
    result = run(legacy.args("flavor", "db.xlarge", "--yes"))
    assert result.exit_code == 0, result.stderr
    after = rows(legacy.url, (*LEGACY_TABLES, *SHADOW_TABLES))
    # Live tables as before the delete, minus the spec removed earlier (it stays archived).
    expected_specs = [
        r for r in legacy.before_delete["instance_type_extra_specs"] if r[5] != "hw:watchdog_action"
    ]
    assert after["instance_types"] == legacy.before_delete["instance_types"]
    assert after["instance_type_extra_specs"] == expected_specs
    assert after["instance_type_projects"] == legacy.before_delete["instance_type_projects"]
    assert after["shadow_instance_types"] == []
    assert [r[5] for r in after["shadow_instance_type_extra_specs"]] == ["hw:watchdog_action"]


def test_dry_run_changes_nothing_and_its_sql_does_what_the_real_run_does(
    make_db: MakeDb, mariadb_server: Any
) -> None:
    first, second = Legacy(make_db, "f_dry"), Legacy(make_db, "f_real")
    before = mariadb_server.checksum("f_dry")
    result = run(first.args("flavor", "f0e1d2c3", "--dry-run"))
    assert result.exit_code == 0, result.stderr
    assert mariadb_server.checksum("f_dry") == before
    sql = result.stdout
    assert sql.splitlines()[4] == "BEGIN;" and sql.endswith("COMMIT;\n")
    assert (
        "UPDATE instance_types SET deleted_at=NULL, deleted=0 WHERE instance_types.id = 1;" in sql
    )
    client(mariadb_server, "f_dry", sql)
    assert run(second.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    assert dump_rows(first.url) == dump_rows(second.url)


def test_undo_restores_the_exact_before_state(legacy: Legacy, _journal_dir: Path) -> None:
    assert run(legacy.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    (journal,) = journal_files(_journal_dir)
    dry = run(legacy.args("undo", str(journal), "--dry-run"))
    assert dry.exit_code == 0
    assert (
        "UPDATE instance_types SET deleted_at='2024-03-01 10:00:00', deleted=1 WHERE instance_types.id = 1;"
        in dry.stdout
    )
    result = run(legacy.args("undo", str(journal), "--yes"))
    assert result.exit_code == 0, result.stderr
    assert rows(legacy.url, (*LEGACY_TABLES, *SHADOW_TABLES)) == legacy.after_delete
    assert json.loads(journal.read_text())["status"] == "undone"
    again = run(legacy.args("undo", str(journal), "--yes"))
    assert (again.exit_code, again.stderr) == (1, f"Error: journal {journal} was already undone\n")


def test_undo_refuses_when_rows_changed_since(
    legacy: Legacy, _journal_dir: Path, mariadb_server: Any
) -> None:
    assert run(legacy.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    (journal,) = journal_files(_journal_dir)
    mariadb_server.query("UPDATE f_nova.instance_type_extra_specs SET value = '9999' WHERE id = 2")
    before = mariadb_server.checksum("f_nova")
    result = run(legacy.args("undo", str(journal), "--yes"))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: instance_type_extra_specs id=2 changed since the plan was made (value: planned "
        "'5000', now '9999'); nothing was changed; look again with `recover inventory` and re-run\n"
    )
    assert mariadb_server.checksum("f_nova") == before


def test_undo_against_another_database_refuses(
    legacy: Legacy, make_db: MakeDb, _journal_dir: Path
) -> None:
    assert run(legacy.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    (journal,) = journal_files(_journal_dir)
    other = Legacy(make_db, "f_other")
    result = run(["--nova-db", other.url, "undo", str(journal), "--yes"])
    assert result.exit_code == 1
    assert "the journal is for cell 'f_nova', which is not configured (f_other)" in result.stderr


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            "m1.nothing",
            "Error: no deleted flavor matches 'm1.nothing'; searched instance_types and shadow_instance_types in cells f_nova\n",
        ),
        (
            "x'; DROP TABLE instance_types; --",
            'Error: no deleted flavor matches "x\'; DROP TABLE instance_types; --"; searched',
        ),
        ("100%", "Error: no deleted flavor matches '100%'"),
        ("m1.\u00e9t\u00e9\u2603", "Error: no deleted flavor matches 'm1.\u00e9t\u00e9\u2603'"),
        ("a\x00b", "Error: 'a\\x00b' is not a flavor id, flavorid or name"),
        ("x" * 300, "Error: 'xxxxxxxx"),
    ],
)
def test_bad_flavor_strings_change_nothing(
    legacy: Legacy, mariadb_server: Any, token: str, message: str
) -> None:
    before = mariadb_server.checksum("f_nova")
    result = run(legacy.args("flavor", token, "--yes"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message)
    assert mariadb_server.checksum("f_nova") == before


def test_live_flavor_and_name_conflict_are_refused(legacy: Legacy, mariadb_server: Any) -> None:
    with legacy.db.engine.begin() as conn:
        live_id = create_legacy_flavor(conn, legacy.db, Flavor(
            name="db.xlarge", flavorid="new-db-xlarge", memory_mb=1, vcpus=1, root_gb=1,
        ))  # fmt: skip
    before = mariadb_server.checksum("f_nova")
    live = run(legacy.args("flavor", "new-db-xlarge", "--yes"))
    assert (live.exit_code, live.stderr) == (
        1,
        f"Error: flavor 'new-db-xlarge' is live (id {live_id}, flavorid 'new-db-xlarge', name 'db.xlarge'): nothing to recover\n",
    )
    clash = run(legacy.args("flavor", "f0e1d2c3", "--yes"))
    assert clash.exit_code == 1
    # Nova's API cannot rename a flavor: the hint names a step that works (issue 10, item 13).
    assert clash.stderr == (
        f"Error: a live flavor already has name 'db.xlarge' (id {live_id}); names are unique and "
        "nova's API cannot rename a flavor: recover this one under its ids with another name, "
        "`recover flavor id:1 --new-name NAME`, or delete the live one first if no instance uses "
        "it\n"
    )
    assert mariadb_server.checksum("f_nova") == before
    renamed = run(legacy.args("flavor", "id:1", "--new-name", "db.xlarge-2017", "--yes"))
    assert renamed.exit_code == 0, renamed.stderr
    assert renamed.stdout.splitlines()[:2] == [
        "Done: recover flavor f0e1d2c3 (id 1, db.xlarge-2017)",
        "  un-delete: flavor id 1 flavorid 'f0e1d2c3' name 'db.xlarge', deleted at 2024-03-01 "
        "10:00:00",
    ]
    assert (
        "  named 'db.xlarge-2017' instead of 'db.xlarge' (--new-name): instances keep showing "
        "'db.xlarge', the name in their embedded copy" in renamed.stdout.splitlines()
    )
    restored = rows(legacy.url, LEGACY_TABLES)
    expected = [
        tuple("db.xlarge-2017" if v == "db.xlarge" else v for v in r)
        for r in legacy.before_delete["instance_types"]
    ]
    assert [r for r in restored["instance_types"] if r[4] == 1] == expected
    assert (
        restored["instance_type_extra_specs"] == legacy.before_delete["instance_type_extra_specs"]
    )


def test_ambiguous_name_lists_candidates(legacy: Legacy) -> None:
    with legacy.db.engine.begin() as conn:
        twin = create_legacy_flavor(conn, legacy.db, Flavor(
            name="db.xlarge", flavorid="twin", memory_mb=1, vcpus=1, root_gb=1,
        ))  # fmt: skip
        create_instance(conn, legacy.db, Instance(
            uuid="33333333-3333-4333-8333-333333333333", flavor=PRIVATE, flavor_id=twin,
            image_ref="", host="compute-2",
        ))  # fmt: skip
        destroy_legacy_flavor(conn, legacy.db, twin, datetime(2024, 5, 1))
    result = run(legacy.args("flavor", "db.xlarge", "--yes"))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: 'db.xlarge' matches 2 deleted flavors: id 1 (flavorid 'f0e1d2c3', name 'db.xlarge', "
        f"from instance_types); id {twin} (flavorid 'twin', name 'db.xlarge', from instance_types); "
        "name one by its internal id, e.g. `recover flavor id:1`\n"
    )
    assert run(legacy.args("flavor", f"id:{twin}", "--dry-run")).exit_code == 0


def test_no_terminal_and_no_yes_refuses(
    legacy: Legacy, mariadb_server: Any, _journal_dir: Path
) -> None:
    before = mariadb_server.checksum("f_nova")
    result = run(legacy.args("flavor", "f0e1d2c3"))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: refusing to change the database without confirmation; pass --yes, or run on a "
        "terminal; --dry-run shows the exact SQL\n"
    )
    assert mariadb_server.checksum("f_nova") == before
    assert journal_files(_journal_dir) == []


def test_journal_that_cannot_be_written_stops_the_run(
    legacy: Legacy, mariadb_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("RECOVER_STATE_DIR", str(blocker))
    before = mariadb_server.checksum("f_nova")
    result = run(legacy.args("flavor", "f0e1d2c3", "--yes"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert mariadb_server.checksum("f_nova") == before


def test_plan_made_stale_by_another_run_is_refused(legacy: Legacy, mariadb_server: Any) -> None:
    settings = resolve({"nova_db": (legacy.url,)}, environ={})
    first = plan_flavor(settings, "f0e1d2c3", None)
    second = plan_flavor(settings, "f0e1d2c3", None)
    apply(first.plan)
    after_first = mariadb_server.checksum("f_nova")
    with pytest.raises(
        ConcurrentChangeError, match="instance_types id=1 changed since the plan was made"
    ):
        apply(second.plan)
    assert mariadb_server.checksum("f_nova") == after_first
    for recovery in (first, second):
        recovery.nova.dispose()


def test_apply_waits_for_a_row_lock_then_refuses(legacy: Legacy, mariadb_server: Any) -> None:
    """Another session holds the flavor row FOR UPDATE and changes it: we wait, then refuse."""
    settings = resolve({"nova_db": (legacy.url,)}, environ={})
    recovery = plan_flavor(settings, "f0e1d2c3", None)
    holder = mariadb_server.connect("f_nova", autocommit=False)
    outcome: list[BaseException | None] = []
    with holder.cursor() as cur:
        cur.execute("SELECT * FROM instance_types WHERE id = 1 FOR UPDATE")

        def attempt() -> None:
            try:
                apply(recovery.plan)
                outcome.append(None)
            except BaseException as exc:  # handed to the main thread
                outcome.append(exc)

        worker = threading.Thread(target=attempt)
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # blocked on our lock
        cur.execute("UPDATE instance_types SET deleted = 0, deleted_at = NULL WHERE id = 1")
    holder.commit()
    worker.join(30)
    holder.close()
    recovery.nova.dispose()
    assert len(outcome) == 1 and isinstance(outcome[0], ConcurrentChangeError)


def test_two_processes_at_once_exactly_one_wins(legacy: Legacy, tmp_path: Path) -> None:
    recover = str(Path(sys.executable).with_name("recover"))
    env = {
        "RECOVER_STATE_DIR": str(tmp_path / "race"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    procs = [
        subprocess.Popen(
            [recover, "--nova-db", legacy.url, "flavor", "f0e1d2c3", "--yes"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for _ in range(4)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1, 1, 1]
    for code, _, err in results:
        if code == 1:
            assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert rows(legacy.url, LEGACY_TABLES) == legacy.before_delete
    assert len(list((tmp_path / "race" / "journal").glob("*.json"))) == 1


# --- Newton+ ----------------------------------------------------------------------------------

MODERN_PAIRS = [
    pytest.param((clouds.MODERN_API, clouds.MODERN_NOVA), id="head"),
    pytest.param(("nova_api-d67eeaabee36", "nova-8f2f1571d55b"), id="base"),
]


class Modern:
    """nova_api + one cell; PRIVATE used by two VMs of two projects, then hard-deleted."""

    def __init__(self, make_db: MakeDb, schemas: tuple[str, str]) -> None:
        self.api_url = make_db(schemas[0], "fm_api")
        self.cell_url = make_db(schemas[1], "fm_cell1")
        self.api = open_database(self.api_url, "api")
        self.cell: Database = open_database(self.cell_url, "cell")
        with self.api.engine.begin() as conn:
            map_cell(conn, self.api, clouds.CELL1_UUID, "cell1", self.cell_url)
            create_api_flavor(conn, self.api, clouds.SMALL)
            self.id = create_api_flavor(conn, self.api, PRIVATE)
        with self.cell.engine.begin() as conn:
            for uuid, project in ((VM1, PROJECT_A), (VM2, PROJECT_B)):
                create_instance(conn, self.cell, Instance(
                    uuid=uuid, flavor=PRIVATE, flavor_id=self.id, image_ref=clouds.LIVE_IMAGE,
                    host="compute-1", project_id=project,
                ))  # fmt: skip
        self.before_delete = rows(self.api_url, API_TABLES)
        with self.api.engine.begin() as conn:
            destroy_api_flavor(conn, self.api, self.id)

    def args(self, *more: str) -> list[str]:
        return ["--nova-api-db", self.api_url, *more]


def _without_child_ids(dump: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    # Child rows get fresh ids (nova never reads them); every other column must match.
    return {
        table: sorted(r[:2] + r[3:] for r in found) if table != "flavors" else found
        for table, found in dump.items()
    }


@pytest.mark.parametrize("schemas", MODERN_PAIRS)
def test_modern_reinsert_restores_the_rows_nova_had(
    make_db: MakeDb, schemas: tuple[str, str]
) -> None:
    cloud = Modern(make_db, schemas)
    result = run(cloud.args("flavor", "db.xlarge", "--yes", "--format", "json"))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "applied"
    assert report["changes"] == [
        "insert 1 row(s) in flavors",
        "insert 2 row(s) in flavor_extra_specs",
        "insert 2 row(s) in flavor_projects",
    ]
    assert (
        "description stays NULL: nova never embeds it in instance_extra.flavor" in report["notes"]
    )
    assert _without_child_ids(rows(cloud.api_url, API_TABLES)) == _without_child_ids(
        cloud.before_delete
    )


def test_modern_dry_run_sql_matches_real_run(make_db: MakeDb, mariadb_server: Any) -> None:
    cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
    before = mariadb_server.checksum("fm_api")
    dry = run(cloud.args("flavor", "f0e1d2c3", "--dry-run"))
    assert dry.exit_code == 0, dry.stderr
    assert mariadb_server.checksum("fm_api") == before
    assert (
        "INSERT INTO flavors (created_at, updated_at, name, id, memory_mb, vcpus, swap, vcpu_weight, "
        "flavorid, rxtx_factor, root_gb, ephemeral_gb, disabled, is_public, description) VALUES "
        "('2020-05-06 07:08:09', NULL, 'db.xlarge', 2, 32768, 8, 4096, NULL, 'f0e1d2c3', 2.0, 100, "
        "20, 0, 0, NULL);"
    ) in dry.stdout
    client(mariadb_server, "fm_api", dry.stdout)
    by_client = dump_rows(cloud.api_url)
    mariadb_server.query("DELETE FROM fm_api.flavor_projects WHERE flavor_id = 2")
    mariadb_server.query("DELETE FROM fm_api.flavor_extra_specs WHERE flavor_id = 2")
    mariadb_server.query("DELETE FROM fm_api.flavors WHERE id = 2")
    assert run(cloud.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    assert dump_rows(cloud.api_url) == by_client


def test_modern_undo_deletes_what_it_inserted(make_db: MakeDb, _journal_dir: Path) -> None:
    cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
    deleted = rows(cloud.api_url, API_TABLES)
    assert run(cloud.args("flavor", "f0e1d2c3", "--yes")).exit_code == 0
    (journal,) = journal_files(_journal_dir)
    result = run(cloud.args("undo", str(journal), "--yes"))
    assert result.exit_code == 0, result.stderr
    assert rows(cloud.api_url, API_TABLES) == deleted


def test_modern_disagreeing_instances_refuse_unless_told(
    make_db: MakeDb, mariadb_server: Any
) -> None:
    cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
    odd = "44444444-4444-4444-8444-444444444444"
    bigger = Flavor(**{**PRIVATE.__dict__, "vcpus": 16, "extra_specs": {"hw:cpu_policy": "shared"}})
    with cloud.cell.engine.begin() as conn:
        create_instance(conn, cloud.cell, Instance(
            uuid=odd, flavor=bigger, flavor_id=cloud.id, image_ref="", host="compute-9",
        ))  # fmt: skip
    before = mariadb_server.checksum("fm_api")
    refused = run(cloud.args("flavor", "f0e1d2c3", "--yes"))
    assert refused.exit_code == 1
    # Each variant with the values it holds, how many instances hold it and one of them.
    assert refused.stderr == (
        f"Error: instances disagree about flavor id {cloud.id} (differ in extra_specs, vcpus): "
        '2 instance(s) hold extra_specs={"hw:cpu_policy": "dedicated", '
        f'"quota:disk_read_iops_sec": "5000"}}, vcpus=8 (e.g. {VM1}); 1 instance(s) hold '
        f'extra_specs={{"hw:cpu_policy": "shared"}}, vcpus=16 (e.g. {odd}); name an instance '
        "whose copy to trust with --from-instance UUID\n"
    )
    assert mariadb_server.checksum("fm_api") == before
    chosen = run(cloud.args("flavor", "f0e1d2c3", "--from-instance", odd, "--yes"))
    assert chosen.exit_code == 0, chosen.stderr
    flavor = rows(cloud.api_url, ("flavors",))["flavors"]
    assert [(r[3], r[5]) for r in flavor] == [(1, 1), (cloud.id, 16)]  # (id, vcpus)
    stranger = run(
        cloud.args("flavor", "f0e1d2c3", "--from-instance", clouds.VM_HEALTHY, "--dry-run")
    )
    assert stranger.exit_code == 1


def test_modern_live_flavor_is_refused(make_db: MakeDb) -> None:
    cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
    result = run(cloud.args("flavor", "m1.small", "--yes"))
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: flavor 'm1.small' is live (id 1, flavorid '2', name 'm1.small'): nothing to recover\n",
    )
