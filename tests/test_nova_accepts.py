"""Nova's own code accepts a flavor brought back by ``recover flavor`` (Newton+ schema).

The real ``nova`` package (34.x, in a venv of its own, see ``nova_python``) builds
the cloud through its object layer: ``Flavor.create`` / the REST API's calls,
``add_access``, ``Instance.create`` (so ``instance_extra.flavor`` is what Nova
writes) and then ``Flavor.destroy`` (the hard delete of DELETE /flavors/{id}).
``recover flavor --yes`` re-inserts the flavors; the nova_api rows must then be
the ones Nova wrote, and Nova must read the flavors back, list them, resolve the
instances' ``instance_type_id`` to them and grant access as before.

The Nova side runs as a subprocess (``tests/nova_tier/nova_objects.py``); the
databases are ``make_db``'s empty copies of what nova 34's ``db sync`` creates.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql
import pytest
from click.testing import CliRunner

from recover.cli import cli
from recover.config import ENV_VARS
from tests.nova_layer import nova_databases
from tests.nova_layer import run_nova as nova

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory, MariaDBServer

pytestmark = pytest.mark.slow

P_ALPHA, P_BETA, P_GAMMA = "p-alpha", "p-beta", "p-gamma"

# Created straight through the object layer, extra specs in the flavor's own
# transaction: objects.Flavor(..., extra_specs=...).create().
GOLD = {
    "path": "object",
    "name": "gold.large",
    "flavorid": "5b0c2a8e-7d41-4f53-9a0e-2c7d1b3e4f60",
    "memory_mb": 16384,
    "vcpus": 8,
    "root_gb": 80,
    "ephemeral_gb": 10,
    "swap": 2048,
    "rxtx_factor": 2.0,
    "is_public": True,
    "extra_specs": {"hw:cpu_policy": "dedicated", "hw:mem_page_size": "large"},
}
# Created call after call as nova-api does: POST /flavors (with a description,
# microversion 2.55), POST /flavors/{id}/os-extra_specs, then addTenantAccess for
# three projects, one of which (p-gamma) never boots an instance of it.
TEAM = {
    "path": "api",
    "name": "team.private",
    "flavorid": "team-private-1",
    "description": "pinned CPUs for team alpha and beta",
    "memory_mb": 4096,
    "vcpus": 2,
    "root_gb": 20,
    "ephemeral_gb": 0,
    "swap": 0,
    "rxtx_factor": 1.0,
    "is_public": False,
    "extra_specs": {"hw:cpu_policy": "dedicated", "quota:disk_read_iops_sec": "500"},
    "access": [P_ALPHA, P_BETA, P_GAMMA],
}
# Given a description by PUT /flavors/{id} (2.55) before its instance booted: Nova
# sets flavors.updated_at, and the instance embeds that updated_at.
SILVER = {
    "path": "object",
    "name": "silver.medium",
    "flavorid": "silver-medium-1",
    "memory_mb": 8192,
    "vcpus": 4,
    "root_gb": 40,
    "ephemeral_gb": 0,
    "swap": 0,
    "rxtx_factor": 1.0,
    "is_public": True,
    "extra_specs": {"hw:watchdog_action": "reset"},
    "update_description": "general purpose, 4 vCPU",
}
FLAVORS = (GOLD, TEAM, SILVER)
NO_SUCH_FLAVOR = "no-such-flavor"
VM_GOLD = "61000000-0000-4000-8000-000000000001"
VM_TEAM_ALPHA = "62000000-0000-4000-8000-000000000001"
VM_TEAM_BETA = "62000000-0000-4000-8000-000000000002"
VM_SILVER = "63000000-0000-4000-8000-000000000001"
INSTANCES = [
    {"uuid": VM_GOLD, "flavorid": GOLD["flavorid"], "project_id": P_ALPHA},
    {"uuid": VM_TEAM_ALPHA, "flavorid": TEAM["flavorid"], "project_id": P_ALPHA},
    {"uuid": VM_TEAM_BETA, "flavorid": TEAM["flavorid"], "project_id": P_BETA},
    {"uuid": VM_SILVER, "flavorid": SILVER["flavorid"], "project_id": P_BETA},
]
SIZES = ("name", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "swap", "rxtx_factor")
API_TABLES = ("flavors", "flavor_extra_specs", "flavor_projects")


# --- the scenario, run once for the module ----------------------------------------------------


def api_rows(server: MariaDBServer, db: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of the flavor tables of nova_api ``db``, as dicts, by id."""
    conn = server.connect(db, cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            found = {}
            for table in API_TABLES:
                cur.execute(f"SELECT * FROM `{table}` ORDER BY id")
                found[table] = list(cur.fetchall())
            return found
    finally:
        conn.close()


def recover(*args: str, state_dir: Path) -> dict[str, Any]:
    # Only the flags count: no RECOVER_* from the developer's shell, journals in tmp.
    env: dict[str, str | None] = dict.fromkeys(ENV_VARS.values())
    env["RECOVER_STATE_DIR"] = str(state_dir)
    result = CliRunner(env=env).invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


class Story:
    """What happened: rows and Nova's view before the deletion and after the recovery."""

    api_db = "nt_api"
    cell_db = "nt_cell1"

    def __init__(self) -> None:
        self.created: dict[str, Any] = {}
        self.before: dict[str, list[dict[str, Any]]] = {}
        self.deleted: dict[str, list[dict[str, Any]]] = {}
        self.after: dict[str, list[dict[str, Any]]] = {}
        self.nova_before: dict[str, Any] = {}
        self.nova_after: dict[str, Any] = {}
        self.reports: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def flavor_id(self, flavor: dict[str, Any]) -> int:
        return int(self.created["flavors"][flavor["flavorid"]])

    def rows(self, when: str, table: str, flavor: dict[str, Any]) -> list[dict[str, Any]]:
        key = "id" if table == "flavors" else "flavor_id"
        return [r for r in getattr(self, when)[table] if r[key] == self.flavor_id(flavor)]

    def children(self, when: str, table: str, flavor: dict[str, Any]) -> list[dict[str, Any]]:
        # A child row's own `id` is an AUTO_INCREMENT nothing refers to; recover
        # allocates fresh ones. Its `created_at` is Nova's utcnow() when that row was
        # inserted (the model's default, evaluated per row: a spec added later through
        # os-extra_specs, or a later addTenantAccess, gets the later time), and
        # nothing keeps it once the row is deleted: instance_extra.flavor carries only
        # the flavor's own created_at, which recover stamps on every child
        # (test_recovered_children_carry_the_flavors_created_at). All else must match.
        rows = [
            {k: v for k, v in r.items() if k not in ("id", "created_at")}
            for r in self.rows(when, table, flavor)
        ]
        return sorted(rows, key=lambda r: sorted(r.items()))


@pytest.fixture(scope="module")
def story(
    nova_python: str,
    db_factory: DatabaseFactory,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Story:
    """Nova creates FLAVORS and INSTANCES, destroys the flavors; recover brings them back.

    Rows and Nova's view (``check``) are taken after Nova's create, after its
    destroy (rows only) and after ``recover flavor FLAVORID --yes`` for each flavor.
    """
    s = Story()
    api, cell = nova_databases(db_factory, mariadb_server, s.api_db, s.cell_db)

    def timed(label: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            s.seconds[label] = time.perf_counter() - started

    flavorids = [f["flavorid"] for f in FLAVORS]
    check = [f"--flavorid={f}" for f in (*flavorids, NO_SUCH_FLAVOR)]
    check += [f"--instance={i['uuid']}" for i in INSTANCES]
    check += [f"--as-project={p}" for p in (P_ALPHA, P_BETA, P_GAMMA)]
    spec = json.dumps({"flavors": list(FLAVORS), "instances": INSTANCES})

    s.created = timed("nova create", nova, nova_python, "create", api, cell, "--spec", spec)
    s.before = api_rows(mariadb_server, s.api_db)
    s.nova_before = timed("nova check", nova, nova_python, "check", api, cell, *check)
    destroy = [f"--flavorid={f}" for f in flavorids]
    timed("nova destroy", nova, nova_python, "destroy", api, cell, *destroy)
    s.deleted = api_rows(mariadb_server, s.api_db)
    state = tmp_path_factory.mktemp("recover-state")
    for flavor in FLAVORS:
        s.reports[flavor["flavorid"]] = timed(
            f"recover flavor {flavor['name']}", recover,
            "--nova-api-db", api, "flavor", flavor["flavorid"], "--yes", state_dir=state,
        )  # fmt: skip
    s.after = api_rows(mariadb_server, s.api_db)
    s.nova_after = timed("nova check again", nova, nova_python, "check", api, cell, *check)
    sys.stderr.write("\n" + ", ".join(f"{k} {v:.2f} s" for k, v in s.seconds.items()) + "\n")
    return s


def _expected(flavor: dict[str, Any], flavor_id: int) -> dict[str, Any]:
    """What Nova's objects must show for ``flavor`` (a dict above) stored as ``flavor_id``."""
    return {
        "id": flavor_id,
        "flavorid": flavor["flavorid"],
        **{k: flavor[k] for k in SIZES},
        "vcpu_weight": 0,  # NULL in the row: Flavor._from_db_object loads it as 0
        "is_public": flavor["is_public"],
        "disabled": False,
        "extra_specs": flavor["extra_specs"],
    }


# --- the rows ----------------------------------------------------------------------------------


def test_nova_destroy_hard_deleted_everything(story: Story) -> None:
    assert [len(story.before[t]) for t in API_TABLES] == [3, 5, 3]
    assert story.deleted == {table: [] for table in API_TABLES}


def test_public_flavor_rows_are_what_nova_wrote(story: Story) -> None:
    assert story.rows("after", "flavors", GOLD) == story.rows("before", "flavors", GOLD)
    for table in ("flavor_extra_specs", "flavor_projects"):
        assert story.children("after", table, GOLD) == story.children("before", table, GOLD)
    assert len(story.rows("after", "flavor_extra_specs", GOLD)) == 2
    assert story.rows("after", "flavor_projects", GOLD) == []


def test_recovered_children_carry_the_flavors_created_at(story: Story) -> None:
    for flavor in FLAVORS:
        (row,) = story.rows("after", "flavors", flavor)
        for table in ("flavor_extra_specs", "flavor_projects"):
            for child in story.rows("after", table, flavor):
                assert child["created_at"] == row["created_at"], (table, child)


def test_private_flavor_rows(story: Story) -> None:
    (before,) = story.rows("before", "flavors", TEAM)
    (after,) = story.rows("after", "flavors", TEAM)
    # Nova nulls the description in instance_extra.flavor (_nullify_flavor_description),
    # so it is the one column of the flavor row that no source can give back.
    assert before["description"] == TEAM["description"]
    assert after == {**before, "description": None}
    specs = "flavor_extra_specs"
    assert story.children("after", specs, TEAM) == story.children("before", specs, TEAM)
    # Access: Nova had all three projects; recover grants the ones owning instances of it.
    access = "flavor_projects"
    assert story.children("before", access, TEAM) == [
        {"flavor_id": story.flavor_id(TEAM), "project_id": p, "updated_at": None}
        for p in (P_ALPHA, P_BETA, P_GAMMA)
    ]
    assert story.children("after", access, TEAM) == story.children("before", access, TEAM)[:2]


def test_flavor_updated_before_boot_keeps_updated_at(story: Story) -> None:
    (before,) = story.rows("before", "flavors", SILVER)
    (after,) = story.rows("after", "flavors", SILVER)
    assert before["updated_at"] is not None
    # The instance booted after the PUT: its embedded flavor has the row's updated_at.
    embedded = story.nova_before["instances"][VM_SILVER]["flavor"]
    assert embedded["updated_at"] == before["updated_at"].isoformat()
    assert after == {**before, "description": None}


# --- Nova's view -------------------------------------------------------------------------------


def test_nova_reads_the_recovered_flavors_back(story: Story) -> None:
    for flavor in FLAVORS:
        got = story.nova_after["flavors"][flavor["flavorid"]]
        by_flavorid = got["get_by_flavor_id"]
        expected = _expected(flavor, story.flavor_id(flavor))
        assert {k: by_flavorid[k] for k in expected} == expected
        assert got["get_by_id"] == by_flavorid
        assert story.nova_after["flavor_list"][flavor["flavorid"]] == by_flavorid
    # The public flavor: everything Nova sees is what it saw before the deletion.
    gold = GOLD["flavorid"]
    assert story.nova_after["flavors"][gold] == story.nova_before["flavors"][gold]
    assert story.nova_after["flavors"][gold]["get_by_flavor_id"]["projects"] == []
    # And the check does notice a flavor that is not there.
    missing = story.nova_after["flavors"][NO_SUCH_FLAVOR]["get_by_flavor_id"]
    assert missing == {"error": f"FlavorNotFound: Flavor {NO_SUCH_FLAVOR} could not be found."}
    assert sorted(story.nova_after["flavor_list"]) == sorted(f["flavorid"] for f in FLAVORS)


def test_nova_loads_the_instances_with_their_flavor(story: Story) -> None:
    for instance in INSTANCES:
        vm = instance["uuid"]
        flavor = next(f for f in FLAVORS if f["flavorid"] == instance["flavorid"])
        expected = _expected(flavor, story.flavor_id(flavor))
        got = story.nova_after["instances"][vm]
        assert got["instance_type_id"] == expected["id"]
        assert {k: got["flavor"][k] for k in expected} == expected, vm
        assert got["flavor"] == story.nova_before["instances"][vm]["flavor"]
        # The flavor the instance points at (instance_type_id) resolves in nova_api again,
        # to the definition embedded in the instance.
        api_flavor = got["api_flavor"]
        assert "error" not in api_flavor, api_flavor
        assert {k: api_flavor[k] for k in expected} == expected, vm


def test_nova_sees_the_private_flavors_access(story: Story) -> None:
    team = TEAM["flavorid"]
    got = story.nova_after["flavors"][team]["get_by_flavor_id"]
    was = story.nova_before["flavors"][team]["get_by_flavor_id"]
    assert was["projects"] == [P_ALPHA, P_BETA, P_GAMMA]
    assert was["description"] == TEAM["description"]
    assert got == {**was, "projects": [P_ALPHA, P_BETA], "description": None}
    # As the projects' own (non-admin) users: alpha and beta see it again; gamma, which
    # had no instance of it, has lost access (nothing recorded that grant).
    for project, sees in ((P_ALPHA, True), (P_BETA, True), (P_GAMMA, False)):
        before = story.nova_before["visible"][project]
        after = story.nova_after["visible"][project]
        public = {f["flavorid"]: True for f in FLAVORS if f["is_public"]}
        assert before["get_by_flavor_id"] == {**public, team: True, NO_SUCH_FLAVOR: False}
        assert after["get_by_flavor_id"] == {**public, team: sees, NO_SUCH_FLAVOR: False}
        assert after["flavor_list"] == sorted([*public, *([team] if sees else [])])
