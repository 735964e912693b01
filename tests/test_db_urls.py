"""Database URLs as real nova.conf / glance-api.conf files write them (issue 10, item 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from recover.cli import cli
from recover.db.engine import open_database
from tests import clouds
from tests.clouds import Cloud, MakeDb


def as_old_config_writes_it(url: str, devstack: bool) -> str:
    """``mysql+pymysql://...`` as an old nova.conf (``mysql://``) or devstack writes it."""
    url = url.replace("mysql+pymysql://", "mysql://", 1)
    return url.split("?")[0] + "?charset=utf8" + ("&plugin=dbcounter" if devstack else "")


@pytest.fixture
def modern(make_db: MakeDb, tmp_path: Path) -> Cloud:
    return clouds.modern_cloud(make_db, tmp_path)


def test_mysqldb_and_devstack_urls_from_service_configs_are_opened_with_pymysql(
    modern: Cloud, tmp_path: Path
) -> None:
    assert modern.api_url is not None
    # The cell mappings say mysql:// too, as `nova-manage cell_v2 map_cell0` copies nova.conf's.
    api = open_database(modern.api_url, "test")
    with api.engine.begin() as conn:
        for name, url in modern.cell_urls.items():
            conn.execute(
                text("UPDATE cell_mappings SET database_connection = :u WHERE name = :n"),
                {"u": as_old_config_writes_it(url, devstack=False), "n": name},
            )
    api.dispose()
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text(
        "[api_database]\nconnection = "
        + as_old_config_writes_it(modern.api_url, devstack=True)
        + "\n"
    )
    glance_conf = tmp_path / "glance-api.conf"
    glance_conf.write_text(
        "[database]\nconnection = "
        + as_old_config_writes_it(modern.glance_url, devstack=True)
        + f"\n[glance_store]\nfilesystem_store_datadir = {modern.store}\n"
    )
    result = CliRunner().invoke(
        cli,
        ["--nova-conf", str(nova_conf), "--glance-conf", str(glance_conf),
         "inventory", "--format", "json"],
        env={"RECOVER_CONFIG": None},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    expected = CliRunner().invoke(cli, modern.args("inventory", "--format", "json"))
    assert expected.exit_code == 0, expected.stderr
    got, want = json.loads(result.stdout), json.loads(expected.stdout)
    assert got["flavors"] == want["flavors"] and got["images"] == want["images"]
    mysqldb = "names the mysqldb driver; using PyMySQL (mysql+pymysql://) instead"
    plugin = "ignoring the SQLAlchemy plugin parameter (plugin=dbcounter) of the URL"
    assert result.stderr.splitlines() == [
        f"Note: nova_api database: mysql:// {mysqldb}",
        f"Note: nova_api database: {plugin}",
        f"Note: nova cell 'cell0' database: mysql:// {mysqldb}",
        f"Note: nova cell 'cell1' database: mysql:// {mysqldb}",
        f"Note: nova cell 'cell2' database: mysql:// {mysqldb}",
        f"Note: glance database: mysql:// {mysqldb}",
        f"Note: glance database: {plugin}",
    ]


def test_an_unknown_driver_is_still_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--glance-db", "postgresql+nosuchdriver://u:secret@x/y", "verify",
              "b3986e99-1988-43bb-b47c-0b34438bc189"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: glance database postgresql+nosuchdriver://u:***@x/y: "
        "unsupported driver 'postgresql+nosuchdriver'; use mysql+pymysql:// or sqlite://\n"
    )
