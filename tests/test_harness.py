"""Tests of the test harness itself: the MariaDB server, make_db, checksum and dump_rows."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import (
    LOCK_WAIT_TIMEOUT,
    MARIADB_DEFAULT_SQL_MODE,
    DatabaseFactory,
    MariaDBServer,
)
from tests.helpers import SCHEMA_DIR, dump_rows, require_binary

ALL_SCHEMAS = sorted(p.stem for p in SCHEMA_DIR.glob("*.sql"))

FLAVOR_COLUMNS = "name, memory_mb, vcpus, swap, flavorid, rxtx_factor, root_gb, is_public, deleted"


def _execute(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` in its own committed transaction; return rows if any."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _insert_flavor(url: str, name: str, flavorid: str) -> None:
    _execute(
        url,
        f"INSERT INTO instance_types ({FLAVOR_COLUMNS})"
        " VALUES (:name, 512, 1, 0, :flavorid, 1.0, 1, 1, 0)",
        name=name,
        flavorid=flavorid,
    )


def _create_table_count(schema: str) -> int:
    text = (SCHEMA_DIR / f"{schema}.sql").read_text()
    return len(re.findall(r"^CREATE TABLE `", text, flags=re.MULTILINE))


def test_schema_files_present() -> None:
    """All 13 dumps of the README are there (a bad copy would silently shrink the matrix)."""
    assert len(ALL_SCHEMAS) == 13
    assert "nova-legacy-mitaka" in ALL_SCHEMAS
    assert "glance-2024_1_contract01" in ALL_SCHEMAS


def test_server_settings(mariadb_server: MariaDBServer) -> None:
    """The private server runs MariaDB with the default sql_mode and the speed options."""
    assert mariadb_server.host == "127.0.0.1"
    assert mariadb_server.port != 3306
    rows = mariadb_server.query(
        "SELECT @@version, @@sql_mode, @@log_bin, @@innodb_flush_log_at_trx_commit,"
        " @@innodb_doublewrite, @@port"
    )
    version, sql_mode, log_bin, flush, doublewrite, port = rows[0]
    assert "MariaDB" in version
    assert sql_mode == MARIADB_DEFAULT_SQL_MODE
    assert (log_bin, flush, doublewrite, port) == (0, 0, 0, mariadb_server.port)


@pytest.mark.parametrize("schema", ALL_SCHEMAS)
def test_every_schema_loads(make_db: DatabaseFactory, schema: str) -> None:
    """Each dump loads completely: as many tables as CREATE TABLE statements, DB in utf8."""
    name = "harness_all_" + re.sub(r"\W", "_", schema)
    url = make_db(schema, name)
    server = make_db.server
    assert url == f"mysql+pymysql://root@127.0.0.1:{server.port}/{name}?charset=utf8"
    assert len(server.table_names(name)) == _create_table_count(schema)
    charset = server.query(
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s",
        (name,),
    )
    assert charset == [("utf8mb3",)]


def test_nova_legacy_mitaka_tables(make_db: DatabaseFactory) -> None:
    """nova-legacy-mitaka: 109 tables, instance_types has a deleted column, all empty."""
    url = make_db("nova-legacy-mitaka", "harness_nova")
    inspector = sa.inspect(sa.create_engine(url, poolclass=NullPool))
    tables = set(inspector.get_table_names())
    assert len(tables) == 109
    assert {"instance_types", "instances", "shadow_instance_types", "migrate_version"} <= tables
    columns = {c["name"]: c for c in inspector.get_columns("instance_types")}
    assert "deleted" in columns
    assert str(columns["deleted"]["type"]) == "INTEGER"
    rows = dump_rows(url)
    assert set(rows) == tables
    assert all(v == [] for v in rows.values())


def test_glance_2024_1_images_has_os_hash_value(make_db: DatabaseFactory) -> None:
    """glance-2024_1_contract01: 16 tables; images has os_hash_value and no is_public."""
    url = make_db("glance-2024_1_contract01", "harness_glance")
    inspector = sa.inspect(sa.create_engine(url, poolclass=NullPool))
    assert len(inspector.get_table_names()) == 16
    columns = {c["name"] for c in inspector.get_columns("images")}
    assert {"os_hash_value", "os_hash_algo", "visibility", "os_hidden"} <= columns
    assert "is_public" not in columns


def test_ocata_expand01_triggers_loaded_with_comments(make_db: DatabaseFactory) -> None:
    """The DELIMITER/trigger dump loads, and the trigger bodies keep their comments."""
    make_db("glance-ocata_expand01", "harness_triggers")
    rows = make_db.server.query(
        "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS"
        " WHERE TRIGGER_SCHEMA = 'harness_triggers' ORDER BY TRIGGER_NAME"
    )
    assert [r[0] for r in rows] == ["insert_visibility", "update_visibility"]
    assert "-- NOTE(abashmak):" in rows[0][1]


def test_rerequest_empties_tables_and_resets_auto_increment(make_db: DatabaseFactory) -> None:
    """A row left behind is gone on the next request, and ids start at 1 again."""
    url = make_db("nova-legacy-mitaka", "harness_reset")
    _insert_flavor(url, "m1.a", "a")
    _insert_flavor(url, "m1.b", "b")
    assert _execute(url, "SELECT id, name FROM instance_types ORDER BY id") == [
        (1, "m1.a"),
        (2, "m1.b"),
    ]

    url2 = make_db("nova-legacy-mitaka", "harness_reset")

    assert url2 == url
    assert make_db.last_truncated == ["instance_types"]
    assert _execute(url, "SELECT COUNT(*) FROM instance_types") == [(0,)]
    _insert_flavor(url, "m1.c", "c")
    assert _execute(url, "SELECT id, name FROM instance_types") == [(1, "m1.c")]


def test_rerequest_resets_auto_increment_of_emptied_table(make_db: DatabaseFactory) -> None:
    """A table a test filled and emptied again (AUTO_INCREMENT left at 2) is reset too."""
    url = make_db("nova-legacy-mitaka", "harness_reset_deleted")
    _insert_flavor(url, "m1.a", "a")
    _execute(url, "DELETE FROM instance_types")

    make_db("nova-legacy-mitaka", "harness_reset_deleted")

    assert make_db.last_truncated == ["instance_types"]
    _insert_flavor(url, "m1.b", "b")
    assert _execute(url, "SELECT id FROM instance_types") == [(1,)]


def test_rerequest_truncates_tables_linked_by_foreign_keys(make_db: DatabaseFactory) -> None:
    """Parent and child rows of a FOREIGN KEY are both removed (FOREIGN_KEY_CHECKS=0)."""
    url = make_db("nova-legacy-mitaka", "harness_fk")
    _execute(url, "INSERT INTO instances (uuid, deleted) VALUES ('u-1', 0)")
    _execute(url, "INSERT INTO instance_extra (instance_uuid, deleted) VALUES ('u-1', 0)")

    make_db("nova-legacy-mitaka", "harness_fk")

    assert make_db.last_truncated == ["instance_extra", "instances"]
    assert all(rows == [] for rows in dump_rows(url).values())


def test_checksum_changes_when_a_row_is_inserted(make_db: DatabaseFactory) -> None:
    """checksum() covers every table; inserting one row changes exactly that table's value."""
    url = make_db("nova-legacy-mitaka", "harness_checksum")
    server = make_db.server
    before = server.checksum("harness_checksum")
    assert sorted(before) == server.table_names("harness_checksum")
    assert set(before.values()) == {0}

    _insert_flavor(url, "m1.a", "a")
    after = server.checksum("harness_checksum")

    assert {t for t in after if after[t] != before[t]} == {"instance_types"}
    assert after["instance_types"] not in (None, 0)
    assert server.checksum("harness_checksum") == after

    make_db("nova-legacy-mitaka", "harness_checksum")
    assert server.checksum("harness_checksum") == before


def test_ddl_loaded_once_per_schema_and_name(make_db: DatabaseFactory) -> None:
    """The second request of a (schema, name) pair resets instead of reloading the DDL."""
    key = ("nova-ab450ba04102", "harness_once")
    assert make_db.loads[key] == 0

    make_db(*key)
    assert (make_db.loads[key], make_db.resets[key]) == (1, 0)
    url = make_db(*key)
    assert (make_db.loads[key], make_db.resets[key]) == (1, 1)
    make_db(*key)
    assert (make_db.loads[key], make_db.resets[key]) == (1, 2)
    assert make_db.last_truncated == []
    inspector = sa.inspect(sa.create_engine(url, poolclass=NullPool))
    assert "compute_id" in {c["name"] for c in inspector.get_columns("instances")}


def test_same_name_other_schema_is_recreated(make_db: DatabaseFactory) -> None:
    """Asking for a name with another schema drops it and loads that schema instead."""
    make_db("glance-legacy-mitaka", "harness_switch")
    server = make_db.server
    assert "migrate_version" in server.table_names("harness_switch")

    make_db("glance-2024_1_contract01", "harness_switch")

    tables = server.table_names("harness_switch")
    assert "migrate_version" not in tables
    assert {"alembic_version", "node_reference", "cached_images"} <= set(tables)
    assert make_db.loads[("glance-2024_1_contract01", "harness_switch")] == 1
    make_db("glance-legacy-mitaka", "harness_switch")
    assert make_db.loads[("glance-legacy-mitaka", "harness_switch")] == 2
    assert "migrate_version" in server.table_names("harness_switch")


def test_changed_ddl_is_reloaded(make_db: DatabaseFactory) -> None:
    """A test that altered or dropped a table does not leak that into the next request."""
    key = ("nova_api-legacy-mitaka", "harness_drift")
    url = make_db(*key)
    server = make_db.server
    _execute(url, "ALTER TABLE flavors ADD COLUMN extra_col INT NULL")

    make_db(*key)

    assert make_db.drift_reloads[key] == 1
    assert "extra_col" not in {
        r[0]
        for r in server.query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = 'harness_drift' AND TABLE_NAME = 'flavors'"
        )
    }
    _execute(url, "DROP TABLE flavor_projects")

    make_db(*key)

    assert make_db.drift_reloads[key] == 2
    assert "flavor_projects" in server.table_names("harness_drift")
    server.query("DROP DATABASE harness_drift")

    make_db(*key)

    assert make_db.drift_reloads[key] == 3
    assert len(server.table_names("harness_drift")) == 9
    assert make_db.loads[key] == 4


def test_leaked_transaction_is_reported_not_waited_for(make_db: DatabaseFactory) -> None:
    """A transaction a test left open makes make_db fail with a clear error, not hang."""
    key = ("nova_api-legacy-mitaka", "harness_leak")
    make_db(*key)
    server = make_db.server
    leaked = server.connect("harness_leak", autocommit=False)
    try:
        with leaked.cursor() as cur:
            cur.execute(
                "INSERT INTO flavors (name, memory_mb, vcpus, swap, flavorid)"
                " VALUES ('a', 1, 1, 0, 'a')"
            )
        leaked.commit()
        with leaked.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM flavors")  # holds a metadata lock until rollback
        server.query("SET SESSION lock_wait_timeout = 1")
        with pytest.raises(RuntimeError, match="left a transaction open"):
            make_db(*key)
    finally:
        server.query(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
        leaked.close()

    make_db(*key)
    assert make_db.last_truncated == ["flavors"]
    assert server.query("SELECT COUNT(*) FROM harness_leak.flavors") == [(0,)]
    assert server.query("SELECT @@SESSION.FOREIGN_KEY_CHECKS") == [(1,)]


def test_dump_rows_is_exact_and_sorted(make_db: DatabaseFactory) -> None:
    """dump_rows returns every table (empty ones too) with its rows sorted, NULLs last."""
    url = make_db("nova_api-legacy-mitaka", "harness_dump")
    _execute(
        url,
        "INSERT INTO flavors (id, name, memory_mb, vcpus, swap, flavorid, vcpu_weight)"
        " VALUES (2, 'b', 2048, 2, 0, 'f2', NULL), (1, 'a', 512, 1, 0, 'f1', 5)",
    )
    rows = dump_rows(url)
    assert set(rows) == set(make_db.server.table_names("harness_dump"))
    assert len(rows) == 9
    assert rows["flavors"] == [
        (None, None, "a", 1, 512, 1, 0, 5, "f1", None, None, None, None, None),
        (None, None, "b", 2, 2048, 2, 0, None, "f2", None, None, None, None, None),
    ]
    assert all(v == [] for t, v in rows.items() if t != "flavors")
    assert dump_rows(url) == rows


def test_client_argv_runs_the_mariadb_client(make_db: DatabaseFactory) -> None:
    """client_argv(db) is a working ``mariadb`` command line bound to that database."""
    make_db("nova_api-legacy-mitaka", "harness_client")
    argv = make_db.server.client_argv("harness_client")
    result = subprocess.run(
        [*argv, "--batch", "--skip-column-names", "-e", "SELECT DATABASE(), COUNT(*) FROM flavors"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "harness_client\t0\n"


def test_make_db_rejects_bad_input(make_db: DatabaseFactory) -> None:
    """Unknown schemas and unsafe database names are refused before anything is run."""
    with pytest.raises(ValueError, match="unknown schema 'nova-folsom'"):
        make_db("nova-folsom", "harness_bad")
    with pytest.raises(ValueError, match="bad database name"):
        make_db("nova-legacy-mitaka", "cell-1")
    with pytest.raises(ValueError, match="bad database name"):
        make_db("nova-legacy-mitaka", "mysql")


@pytest.mark.filterwarnings("ignore:'passwd' is deprecated:DeprecationWarning")
def test_pytest_mysql_client_fixture_uses_our_server(
    mysql: Any, mariadb_server: MariaDBServer
) -> None:
    """pytest-mysql's own ``mysql`` fixture connects to the same private server."""
    with mysql.cursor() as cur:
        cur.execute("SELECT DATABASE(), @@port")
        assert cur.fetchall() == (("test", mariadb_server.port),)


def test_require_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """require_binary: a path when found; skip when missing; fail when missing under CI=true."""
    assert require_binary("sh").endswith("/sh")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-binary-xyz"):
        require_binary("no-such-binary-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-binary-xyz"):
        require_binary("no-such-binary-xyz")
