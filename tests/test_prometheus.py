"""`recover inventory --format prometheus` (issue 13, item 4): the node_exporter textfile
collector format, read back by Prometheus' own parser, equal to the JSON report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from recover.cli import cli
from recover.db.engine import open_database
from tests import clouds, compute_nodes
from tests.clouds import Cloud, MakeDb
from tests.sshd import start_sshd

#: A cell name with every character the exposition format escapes in a label value.
AWKWARD = 'cell "9" \\ west\nrack'


@pytest.fixture
def modern(make_db: MakeDb, tmp_path: Path) -> Cloud:
    return clouds.modern_cloud(make_db, tmp_path)


def run(cloud: Cloud, fmt: str) -> Result:
    return CliRunner().invoke(cli, cloud.args("inventory", "--format", fmt))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in parsed, key
            parsed[key] = sample.value
    return parsed


def from_json(data: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    instances = {u for f in data["flavors"] for u in f["instances"]}
    instances |= {u for f in data["flavors"] for u in f["revert_resize_instances"]}
    instances |= {u for i in data["images"] for u in i["instances"]}
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        ("recover_orphaned_flavors", ()): len(data["flavors"]),
        ("recover_orphaned_images", ()): len(data["images"]),
        ("recover_affected_instances", ()): len(instances),
    }
    for cell in data["cells"]:
        expected[("recover_cell_up", (("cell", cell["name"]),))] = 1 if cell["ok"] else 0
    return expected


def test_metrics_are_the_json_reports_counts(modern: Cloud) -> None:
    prom, js = run(modern, "prometheus"), run(modern, "json")
    assert (prom.exit_code, js.exit_code) == (0, 0), prom.stderr + js.stderr
    assert prom.stderr == ""
    data = json.loads(js.stdout)
    assert samples(prom.stdout) == from_json(data)
    assert samples(prom.stdout) == {
        ("recover_orphaned_flavors", ()): 1,
        ("recover_orphaned_images", ()): 3,
        ("recover_affected_instances", ()): 5,
        ("recover_cell_up", (("cell", "cell0"),)): 1,
        ("recover_cell_up", (("cell", "cell1"),)): 1,
        ("recover_cell_up", (("cell", "cell2"),)): 1,
    }
    # Without a probe of the hosts no copy is known: the family is declared, with no sample.
    assert prom.stdout.endswith(
        "# HELP recover_image_copies Copies of an orphaned image's _base file found on compute "
        "hosts by inventory --probe-hosts; no sample for an image whose hosts were not probed.\n"
        "# TYPE recover_image_copies gauge\n"
    )
    assert prom.stdout.startswith(
        "# HELP recover_orphaned_flavors Deleted Nova flavors that live instances still use "
        "(recover inventory).\n"
        "# TYPE recover_orphaned_flavors gauge\n"
        "recover_orphaned_flavors 1\n"
    )


def test_an_unreachable_cell_is_down_and_its_name_escaped(modern: Cloud) -> None:
    api = open_database(str(modern.api_url), "api")
    with api.engine.begin() as conn:
        clouds.map_cell(conn, api, "ab000000-0000-4000-8000-000000000001", "cell9",
                        "mysql+pymysql://nova:Sup3rSecret@127.0.0.1:9/nova_cell9")  # fmt: skip
        mappings = api.table("cell_mappings")
        conn.execute(update(mappings).where(mappings.c.name == "cell9").values(name=AWKWARD))
    api.dispose()
    prom, js = run(modern, "prometheus"), run(modern, "json")
    # Partial: exit 1 and the one Error line, but the metrics are printed for the alert.
    assert (prom.exit_code, js.exit_code) == (1, 1)
    assert prom.stderr == js.stderr
    assert prom.stderr.startswith(
        "Error: report is partial, not every cell was scanned "
        '(cell "9" \\ west\\nrack: cannot connect to nova cell '
    )
    assert len(prom.stderr.splitlines()) == 1  # the line feed in the name is written \n
    assert 'recover_cell_up{cell="cell \\"9\\" \\\\ west\\nrack"} 0\n' in prom.stdout
    parsed = samples(prom.stdout)
    assert parsed == from_json(json.loads(js.stdout))
    assert parsed[("recover_cell_up", (("cell", AWKWARD),))] == 0
    assert "Sup3rSecret" not in prom.stdout + prom.stderr


# --- --probe-hosts: recover_image_copies{image=...} -----------------------------------------

IMAGE_D = "d0000000-0000-4000-8000-00000000000d"  # a copy on both hosts
IMAGE_E = "e0000000-0000-4000-8000-00000000000e"  # used on compute-1, no copy anywhere


@pytest.fixture
def probed(make_db: MakeDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """Two compute nodes (tests/compute_nodes.py): D's _base on both, E's on neither."""
    store = tmp_path / "store"
    store.mkdir()
    blob = compute_nodes.data(7, 65536)
    sha = compute_nodes.base_file_name(IMAGE_D)
    cloud = compute_nodes.small_cloud(
        make_db, store,
        images=[(compute_nodes.raw_image(IMAGE_D, "d", blob, store), datetime(2026, 10, 20)),
                (compute_nodes.raw_image(IMAGE_E, "e", blob, store), datetime(2026, 10, 20))],
        instances={"10000000-0000-4000-8000-000000000001": (IMAGE_D, "compute-1"),
                   "10000000-0000-4000-8000-000000000002": (IMAGE_E, "compute-1"),
                   "10000000-0000-4000-8000-000000000003": (IMAGE_D, "compute-2")},
        prefix="pp",
    )  # fmt: skip
    files = compute_nodes.NodeFiles(base={sha: (blob, 1_790_000_000)})
    (tmp_path / "sshd").mkdir()
    server = start_sshd(tmp_path / "sshd")
    try:
        nodes = compute_nodes.start_nodes(
            server, tmp_path / "nodes", {"compute-1": files, "compute-2": files}
        )
        monkeypatch.setenv("RECOVER_SSH_COMMAND", server.ssh_command)
        yield cloud
        compute_nodes.stop_nodes(server, nodes)
    finally:
        server.stop()


def test_image_copies_are_the_probes_counts(probed: Cloud) -> None:
    prom, js = (
        CliRunner().invoke(cli, probed.args("inventory", "--probe-hosts", "--format", fmt))
        for fmt in ("prometheus", "json")
    )
    assert (prom.exit_code, js.exit_code) == (0, 0), prom.stderr + js.stderr
    data = json.loads(js.stdout)
    expected = from_json(data)
    for image in data["images"]:
        expected[("recover_image_copies", (("image", image["id"]),))] = len(image["copies"])
    parsed = samples(prom.stdout)
    assert parsed == expected
    assert {k: v for k, v in parsed.items() if k[0] == "recover_image_copies"} == {
        ("recover_image_copies", (("image", IMAGE_D),)): 2,
        ("recover_image_copies", (("image", IMAGE_E),)): 0,
    }
    assert prom.stdout.endswith(
        "# TYPE recover_image_copies gauge\n"
        f'recover_image_copies{{image="{IMAGE_D}"}} 2\n'
        f'recover_image_copies{{image="{IMAGE_E}"}} 0\n'
    )
