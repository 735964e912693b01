"""`recover demo`: the sandbox reproduces the incident, and its tables cannot drift from the real DDL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from recover.cli import cli
from recover.demo import INSTANCE, SNAPSHOT
from recover.demo.schema import glance_metadata, nova_metadata
from recover.images import qemu
from tests import clouds
from tests.clouds import MakeDb
from tests.helpers import require_binary

BASE = "141ce390743531b7da2db335d2159fa550f460c8"


@pytest.fixture(autouse=True)
def _qemu_img() -> None:
    require_binary("qemu-img")


def test_demo_tells_the_incident(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    result = CliRunner().invoke(cli, ["demo", str(sandbox)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert f"  compute node compute-12: _base/{BASE} made by qemu-img" in out
    assert "  flavor 7  flavorid 7  ucs.4c8g.swap  [soft-deleted]" in out
    assert f"  image {SNAPSHOT}  [deleted]" in out
    assert f"    recover: recover image {SNAPSHOT} --from-host compute-12" in out
    assert "    running > 365 days: 2 of 2" in out
    # The story goes on: the flavor is recovered, and the second inventory no longer lists it.
    assert (
        "UPDATE instance_types SET deleted_at=NULL, deleted=0 WHERE instance_types.id = 7;" in out
    )
    assert "Done: recover flavor 7 (id 7, ucs.4c8g.swap)" in out
    summaries = [line for line in out.splitlines() if line.startswith("Summary: ")]
    assert summaries == [
        "Summary: 1 flavor(s), 1 image(s), 2 instance(s) affected",
        "Summary: 0 flavor(s), 0 image(s), 0 instance(s) affected",
    ]
    assert f"image {SNAPSHOT}: OK" in out
    assert "  md5 equals the checksum Glance had before the delete: qemu-img convert is" in out
    (journal,) = (sandbox / "journal").glob("*-flavor-7.json")
    assert json.loads(journal.read_text())["status"] == "committed"
    base = sandbox / "compute/compute-12/var/lib/nova/instances/_base" / BASE
    assert qemu.info(base).format == "raw"
    disk = qemu.info(base.parent.parent / INSTANCE / "disk")
    assert (disk.format, disk.backing_file) == ("qcow2", str(base))
    # The ini it writes drives every other command against the sandbox.
    again = CliRunner().invoke(
        cli, ["--config", str(sandbox / "recover.ini"), "inventory", "--format", "json"]
    )
    assert again.exit_code == 0
    data = json.loads(again.stdout)
    assert (data["flavors"], data["images"]) == ([], [])
    store = sandbox / "mfsclient/ucscontroller/glance/images"
    assert qemu.info(store / SNAPSHOT).format == "qcow2"


def test_demo_rebuilds_its_own_sandbox_but_never_foreign_dirs(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    assert CliRunner().invoke(cli, ["demo", str(sandbox)]).exit_code == 0
    assert CliRunner().invoke(cli, ["demo", str(sandbox)]).exit_code == 0
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("data")
    result = CliRunner().invoke(cli, ["demo", str(foreign)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {foreign} is not empty and is not a recover sandbox; "
        "name a new directory: recover demo DIR\n"
    )
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


def _affinity(column_type: Any) -> str:
    """What a value of this type is, regardless of dialect spelling (tinyint(1) is a Boolean)."""
    if isinstance(column_type, sa.Boolean) or getattr(column_type, "display_width", None) == 1:
        return "bool"
    for name, kinds in (
        ("int", (sa.Integer,)),
        ("float", (sa.Float,)),
        ("datetime", (sa.DateTime,)),
        ("text", (sa.String, sa.Text, sa.Enum)),
    ):
        if isinstance(column_type, kinds):
            return name
    return type(column_type).__name__


@pytest.mark.parametrize(
    ("schema", "metadata"),
    [(clouds.LEGACY_NOVA, nova_metadata), (clouds.LEGACY_GLANCE, glance_metadata)],
)
def test_sandbox_tables_match_the_real_ddl(make_db: MakeDb, schema: str, metadata: Any) -> None:
    url = make_db(schema, "drift")
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    try:
        for table in metadata().sorted_tables:
            real = {c["name"]: c for c in inspector.get_columns(table.name)}
            for column in table.columns:
                assert column.name in real, f"{table.name}.{column.name} is not in {schema}"
                want = real[column.name]
                assert _affinity(column.type) == _affinity(want["type"]), (
                    f"{table.name}.{column.name}"
                )
                assert column.nullable == want["nullable"] or column.primary_key, (
                    f"{table.name}.{column.name} nullability"
                )
                length = getattr(want["type"], "length", None)
                if length is not None and isinstance(column.type, sa.String):
                    assert column.type.length == length, f"{table.name}.{column.name} length"
            real_unique = {
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)
            }
            real_unique |= {
                tuple(i["column_names"]) for i in inspector.get_indexes(table.name) if i["unique"]
            }
            ours = {
                tuple(c.name for c in con.columns)
                for con in table.constraints
                if isinstance(con, sa.UniqueConstraint)
            } | {(c.name,) for c in table.columns if c.unique}
            assert ours <= real_unique, f"{table.name}: unique keys {ours - real_unique}"
            if not table.name.startswith("shadow_"):
                assert ours == real_unique, f"{table.name}: the real table has {real_unique - ours}"
    finally:
        engine.dispose()
