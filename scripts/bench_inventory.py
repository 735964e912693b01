"""The inventory benchmark: ``recover inventory --format json`` against the bare SQL.

Two floors, both run by the ``mariadb`` client against the same server:

* **step-wise** (the floor of the targets): the question asked the way recover has
  to ask it, with the databases kept apart as they are in a real cloud (cells,
  nova_api and Glance often on different servers): per cell the distinct
  flavors, images and shelve snapshots of live instances; then which of those
  are gone from nova_api and Glance; then, per cell, the live instances that use
  one. Three client runs; the id lists go from one to the next as SQL text.
* **join** (a reference): one cross-database join per cell, which only works
  because the benchmark keeps every database on one server.

Both must find exactly the orphans recover reports and the generator planted.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import synthetic
from bench_db import MariaDB
from bench_util import PYTHON, REPO, Run, measure
from synthetic import Planted, Size

MODERN_NOVA = "nova-ab450ba04102"
MODERN_API = "nova_api-cdeec0c85668"
MODERN_GLANCE = "glance-2024_1_contract01"
CELLS = ("cell1", "cell2")
QUICK = Size(
    live_per_cell=5_000,
    deleted_per_cell=50_000,
    flavors=1_000,
    deleted_flavors=800,
    images=10_000,
    deleted_images=8_000,
    orphans=50,
)
GONE = "('deleted', 'pending_delete', 'killed')"


@dataclass
class Cloud:
    prefix: str
    size: Size
    api: str
    glance: str
    planted: Planted

    @property
    def cells(self) -> list[str]:
        return [f"{self.prefix}_cell0", *(f"{self.prefix}_{c}" for c in CELLS)]

    def recover_args(self) -> list[str]:
        return [
            "--nova-api-db",
            self.api,
            "--glance-db",
            self.glance,
            "inventory",
            "--format",
            "json",
        ]


def build(db: MariaDB, prefix: str, size: Size, seed: int, workdir: Path) -> Cloud:
    api = db.create(f"{prefix}_api", MODERN_API)
    cell0 = db.create(f"{prefix}_cell0", MODERN_NOVA)
    cells = {c: db.create(f"{prefix}_{c}", MODERN_NOVA) for c in CELLS}
    glance = db.create(f"{prefix}_glance", MODERN_GLANCE)
    planted = synthetic.generate(
        synthetic.Target(api=api, cells=cells, glance=glance, cell0=cell0),
        size,
        seed=seed,
        workdir=workdir,
        progress=lambda message: print(f"    {prefix}: {message}", flush=True),
    )
    # Fresh statistics, as a server that has run for a while has them (not timed).
    for name in (*cells, "cell0"):
        db.sql(
            "ANALYZE TABLE instances, instance_extra, instance_system_metadata",
            db=f"{prefix}_{name}",
        )
    db.sql("ANALYZE TABLE images, image_locations, image_properties", db=f"{prefix}_glance")
    db.sql("ANALYZE TABLE flavors", db=f"{prefix}_api")
    return Cloud(prefix, size, api, glance, planted)


# --- normalised results ---------------------------------------------------------------------


def from_recover(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "flavors": {str(f["id"]): sorted(f["instances"]) for f in document["flavors"]},
        "images": {
            i["id"]: {
                "status": i["status"],
                "instances": sorted(i["instances"]),
                "shelved_instances": sorted(i["shelved_instances"]),
            }
            for i in document["images"]
        },
    }


def _normalise(
    flavor_users: dict[int, set[str]],
    image_status: dict[str, str],
    image_users: dict[str, set[str]],
    shelved_users: dict[str, set[str]],
) -> dict[str, Any]:
    return {
        "flavors": {str(f): sorted(u) for f, u in sorted(flavor_users.items())},
        "images": {
            i: {
                "status": image_status[i],
                "instances": sorted(image_users.get(i, set())),
                "shelved_instances": sorted(shelved_users.get(i, set())),
            }
            for i in sorted(image_status)
            if image_users.get(i)
        },
    }


def _status(status: str | None, deleted: str | None) -> str | None:
    """recover's rule (recover.glance.GlanceReader.orphan_status), on client output."""
    if status is None:
        return "missing"
    if status in ("pending_delete", "killed"):
        return status
    if deleted not in (None, "0") or status == "deleted":
        return "deleted"
    return None


def _in(values: Iterable[Any]) -> str:
    items = sorted(set(values))
    if not items:
        return "(NULL)"
    if isinstance(items[0], int):
        return "(" + ",".join(str(v) for v in items) + ")"
    return "(" + ",".join("'" + str(v).replace("'", "''") + "'" for v in items) + ")"


# --- the floors ------------------------------------------------------------------------------


class Floor:
    """Runs a floor with the mariadb client and keeps the SQL it sent, for the report."""

    def __init__(self, db: MariaDB, cloud: Cloud, workdir: Path) -> None:
        self.db = db
        self.cloud = cloud
        self.workdir = workdir
        self.last_sql: list[str] = []

    def _client(self, sql: str, rss: list[int]) -> list[list[str]]:
        script = self.workdir / "floor.sql"
        out = self.workdir / "floor.out"
        script.write_text(sql)
        argv = [*self.db.client_argv(), "--batch", "--skip-column-names", "--raw"]
        run = measure(argv, stdin=script, stdout=out)
        rss.append(run.rss_kb)
        self.last_sql.append(sql)
        return [line.split("\t") for line in out.read_text().splitlines() if line]

    def stepwise(self) -> tuple[Run, dict[str, Any]]:
        cloud, p = self.cloud, self.cloud.prefix
        self.last_sql = []
        rss: list[int] = []
        started = time.perf_counter()
        # Step 1, per cell: what the live instances reference.
        step1 = []
        for cell in cloud.cells:
            step1 += [
                f"SELECT 'f', '{cell}', instance_type_id FROM {cell}.instances"
                " WHERE deleted = 0 AND instance_type_id IS NOT NULL GROUP BY instance_type_id;",
                f"SELECT 'i', '{cell}', image_ref FROM {cell}.instances"
                " WHERE deleted = 0 AND image_ref <> '' GROUP BY image_ref;",
                f"SELECT 's', '{cell}', sm.value FROM {cell}.instances i"
                f" JOIN {cell}.instance_system_metadata sm ON sm.instance_uuid = i.uuid"
                " WHERE i.deleted = 0 AND i.vm_state = 'shelved_offloaded'"
                " AND sm.`key` = 'shelved_image_id' AND sm.deleted = 0 AND sm.value <> ''"
                " GROUP BY sm.value;",
            ]
        flavors: dict[str, set[int]] = {c: set() for c in cloud.cells}
        images: set[str] = set()
        for kind, cell, value in self._client("\n".join(step1) + "\n", rss):
            if kind == "f":
                flavors[cell].add(int(value))
            else:
                images.add(value)
        # Step 2: which of them nova_api and Glance no longer have (or have deleted).
        all_flavors = set().union(*flavors.values())
        step2 = [
            f"SELECT 'f', id, NULL FROM {p}_api.flavors WHERE id IN {_in(all_flavors)};",
            f"SELECT 'i', id, status, deleted FROM {p}_glance.images WHERE id IN {_in(images)};",
        ]
        live_flavors: set[int] = set()
        found: dict[str, tuple[str, str]] = {}
        for row in self._client("\n".join(step2) + "\n", rss):
            if row[0] == "f":
                live_flavors.add(int(row[1]))
            else:
                found[row[1]] = (row[2], row[3])
        gone_images = {
            i: s for i in images if (s := _status(*(found.get(i) or (None, None)))) is not None
        }
        # Step 3, per cell: the live instances that use one of them.
        step3 = []
        for cell in cloud.cells:
            gone_flavors = flavors[cell] - live_flavors
            if not gone_flavors and not gone_images:
                continue
            step3.append(
                f"SELECT i.uuid, i.host, i.vm_state, i.project_id, i.launched_at,"
                f" i.instance_type_id, i.image_ref, s.value FROM {cell}.instances i"
                f" LEFT JOIN {cell}.instance_system_metadata s ON (s.instance_uuid = i.uuid"
                " AND i.vm_state = 'shelved_offloaded' AND s.`key` = 'shelved_image_id'"
                " AND s.deleted = 0)"
                f" WHERE i.deleted = 0 AND (i.instance_type_id IN {_in(gone_flavors)}"
                f" OR i.image_ref IN {_in(gone_images)} OR s.value IN {_in(gone_images)});"
            )
        flavor_users: dict[int, set[str]] = {}
        image_users: dict[str, set[str]] = {}
        shelved_users: dict[str, set[str]] = {}
        gone_flavor_ids = all_flavors - live_flavors
        rows = self._client("\n".join(step3) + "\n", rss) if step3 else []
        for uuid, _host, _state, _project, _launched, flavor, image, shelved in rows:
            if flavor != "NULL" and int(flavor) in gone_flavor_ids:
                flavor_users.setdefault(int(flavor), set()).add(uuid)
            if image in gone_images:
                image_users.setdefault(image, set()).add(uuid)
            if shelved in gone_images:
                image_users.setdefault(shelved, set()).add(uuid)
                shelved_users.setdefault(shelved, set()).add(uuid)
        seconds = time.perf_counter() - started
        return Run(seconds, max(rss)), _normalise(
            flavor_users, gone_images, image_users, shelved_users
        )

    def join(self) -> tuple[Run, dict[str, Any]]:
        p = self.cloud.prefix
        self.last_sql = []
        rss: list[int] = []

        def state(alias: str, value: str) -> str:
            return (
                f"CASE WHEN {alias}.id IS NULL THEN 'missing'"
                f" WHEN {alias}.status IN ('pending_delete', 'killed') THEN {alias}.status"
                f" WHEN {alias}.deleted <> 0 OR {alias}.status = 'deleted' THEN 'deleted' END"
                if value
                else ""
            )

        sql = []
        for cell in self.cloud.cells:
            sql.append(
                "SELECT i.uuid, i.instance_type_id, f.id IS NULL, i.image_ref,"
                f" IF(i.image_ref <> '', {state('g', 'x')}, NULL), s.value,"
                f" IF(s.value IS NOT NULL, {state('gs', 'x')}, NULL)"
                f" FROM {cell}.instances i"
                f" LEFT JOIN {p}_api.flavors f ON f.id = i.instance_type_id"
                f" LEFT JOIN {p}_glance.images g ON g.id = i.image_ref"
                f" LEFT JOIN {cell}.instance_system_metadata s ON (s.instance_uuid = i.uuid"
                " AND i.vm_state = 'shelved_offloaded' AND s.`key` = 'shelved_image_id'"
                " AND s.deleted = 0 AND s.value <> '')"
                f" LEFT JOIN {p}_glance.images gs ON gs.id = s.value"
                " WHERE i.deleted = 0 AND ("
                " (i.instance_type_id IS NOT NULL AND f.id IS NULL)"
                f" OR (i.image_ref <> '' AND (g.id IS NULL OR g.deleted <> 0"
                f" OR g.status IN {GONE}))"
                f" OR (s.value IS NOT NULL AND (gs.id IS NULL OR gs.deleted <> 0"
                f" OR gs.status IN {GONE})));"
            )
        started = time.perf_counter()
        rows = self._client("\n".join(sql) + "\n", rss)
        flavor_users: dict[int, set[str]] = {}
        image_status: dict[str, str] = {}
        image_users: dict[str, set[str]] = {}
        shelved_users: dict[str, set[str]] = {}
        for uuid, flavor, flavor_gone, image, image_state, shelved, shelved_state in rows:
            if flavor_gone == "1":
                flavor_users.setdefault(int(flavor), set()).add(uuid)
            if image_state != "NULL":
                image_status[image] = image_state
                image_users.setdefault(image, set()).add(uuid)
            if shelved_state != "NULL":
                image_status[shelved] = shelved_state
                image_users.setdefault(shelved, set()).add(uuid)
                shelved_users.setdefault(shelved, set()).add(uuid)
        seconds = time.perf_counter() - started
        return Run(seconds, max(rss)), _normalise(
            flavor_users, image_status, image_users, shelved_users
        )


# --- recover --------------------------------------------------------------------------------


def recover_run(argv_prefix: list[str], cloud: Cloud, env: dict[str, str], out: Path) -> Run:
    return measure([*argv_prefix, *cloud.recover_args()], env=env, stdout=out)


def count_statements(python_env: dict[str, str], cloud: Cloud, workdir: Path) -> dict[str, Any]:
    """SQL statements one inventory sends, per database (scripts/bench_count.py)."""
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".json", delete=False) as tmp:
        path = Path(tmp.name)
    measure(
        [PYTHON, str(REPO / "scripts" / "bench_count.py"), str(path), "--", *cloud.recover_args()],
        env=python_env,
    )
    result: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return result


def per_cell(counts: dict[str, Any], cloud: Cloud) -> dict[str, int]:
    """Queries per database, keyed by role (api, cell0, cell1, cell2, glance)."""
    found = {}
    for db, numbers in counts["by_database"].items():
        role = db[len(cloud.prefix) + 1 :] if db.startswith(cloud.prefix + "_") else db
        found[role] = int(numbers["queries"])
    return found
