"""Eight ``recover`` processes at once on the same image, flavor or journal.

The eight processes import everything first, then wait at a barrier (a file) and start
together, so they really overlap: exactly one changes anything, the seven others exit 1 with
one clear ``Error:`` line, and the final state is checked exactly (rows, store file, journals).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recover.config import resolve
from recover.db.cloud import open_nova
from recover.demo import SNAPSHOT
from recover.errors import RefusedError
from recover.flavors import FlavorFinder, legacy_plan, modern_plan
from recover.images.store import image_lock
from tests import clouds
from tests.test_faults import (
    assert_image_new,
    base_stat,
    journals,
    stopped,
    store_tmp_files,
    wait_until,
)
from tests.test_flavor import API_TABLES, LEGACY_TABLES, SHADOW_TABLES, Legacy, Modern, rows
from tests.test_flavor import _without_child_ids as without_child_ids
from tests.test_hostile import OTHER_IMAGE, World, base_env, build_world, run_recover

RUNS = 8

LAUNCHER = """
import os, sys, time
import recover.cli, recover.flavors, recover.images.recovery, recover.write, recover.inventory
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
sys.argv = ["recover", *sys.argv[3:]]
recover.cli.main()
"""


def race(argv: list[str], env: dict[str, str], directory: Path) -> list[tuple[int, str, str]]:
    """Run ``recover <argv>`` RUNS times, started together; (exit code, stdout, stderr) each."""
    return finish_all(start_together([argv] * RUNS, env, directory))


def start_together(
    argvs: list[list[str]], env: dict[str, str], directory: Path, stop_at: str | None = None
) -> list[subprocess.Popen[str]]:
    """Start ``recover <argv>`` once per argv: imports done, then all released at once.

    With ``stop_at`` (a fault point) every process stops itself there (SIGSTOP) and this
    returns once all are stopped; the caller sends SIGCONT.
    """
    barrier = directory / "barrier"
    barrier.mkdir()
    go = barrier / "go"
    if stop_at is not None:
        env = {**env, "RECOVER_FAULT_POINT": f"{stop_at}:stop"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(barrier / f"ready-{n}"), str(go), *argv],
            env=env,
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, argv in enumerate(argvs)
    ]
    assert wait_until(
        lambda: (
            len(list(barrier.glob("ready-*"))) == len(argvs)
            or any(p.poll() is not None for p in procs)
        ),
        timeout=120,
    )
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    go.touch()
    if stop_at is not None:
        reached = wait_until(
            lambda: all(p.poll() is not None or stopped(p.pid) for p in procs), timeout=120
        )
        if not reached or any(p.poll() is not None for p in procs):
            for proc in procs:  # a stopped process never ends by itself: end ours
                if proc.poll() is None:
                    proc.kill()
            outputs = [proc.communicate() for proc in procs]
            raise AssertionError(f"not every run stopped at {stop_at}: {outputs}")
    return procs


def finish_all(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        results.append((proc.returncode, out, err))
    return results


def exactly_one_winner(results: list[tuple[int, str, str]], *allowed: str) -> None:
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [1] * (RUNS - 1), results
    for code, out, err in results:
        if code == 0:
            assert out.startswith("Done: "), out
            continue
        assert out == "", out
        assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
        assert "Traceback" not in err and not err.startswith("Error: unexpected"), err
        assert any(text in err for text in allowed), err


IMAGE_LOSERS = (
    f"another recover run is working on image {SNAPSHOT}",
    f"image {SNAPSHOT} is active: nothing to recover",
    "changed since the plan was made",
    "another session holds these rows",
)


@pytest.mark.parametrize("source", ["base-file", "store-still-holds-it"])
def test_eight_runs_on_one_image(
    make_db: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    mariadb_server: Any,
    source: str,
) -> None:
    world: World = build_world(make_db, tmp_path, tmp_path_factory, prefix="r",
                               delayed=source == "store-still-holds-it")  # fmt: skip
    if source == "store-still-holds-it":
        placed = world.store / SNAPSHOT
        inode = placed.stat().st_ino
        argv = world.args("image", SNAPSHOT, "--yes")
    else:
        argv = world.base_args("--yes")
    base_before = base_stat(world)
    results = race(argv, world.env, tmp_path)
    exactly_one_winner(results, *IMAGE_LOSERS)
    if source == "base-file":
        assert_image_new(world, mariadb_server)
    statuses = sorted(journals(world).values())
    assert statuses.count("committed") == 1, statuses
    assert set(statuses) <= {"committed", "rolled-back"}, statuses
    assert store_tmp_files(world) == []
    names = sorted(p.name for p in world.store.iterdir())
    if source == "store-still-holds-it":
        assert placed.stat().st_ino == inode  # the file Glance kept, untouched
        assert names == sorted([SNAPSHOT, OTHER_IMAGE])
        row = mariadb_server.query(
            f"SELECT status, deleted FROM {world.glance_db}.images WHERE id = %s", (SNAPSHOT,)
        )
        assert row == [("active", 0)]
    else:
        assert names == sorted([SNAPSHOT, OTHER_IMAGE])  # no lock file left by any of the 8
    assert (world.base.stat().st_size, world.base.stat().st_mtime_ns) == base_before
    verified = run_recover(
        world,
        ["--glance-db", world.glance_url, "--store-dir", str(world.store), "verify", SNAPSHOT],
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_image_lock_has_one_holder_and_leaves_no_file(tmp_path: Path) -> None:
    """Eight takers of one image's lock, a thousand times each: never two holders at once, and
    no lock file afterwards. Each holder removes the file before it lets go, which races with a
    taker that opened it just before (it then locks an inode no longer in the store, while
    another taker creates and locks a new file): the lock must see that and try again."""
    store = tmp_path / "store"
    store.mkdir()
    guard = threading.Lock()
    inside, most, wins, refusals = [0], [0], [0], [0]

    def taker() -> None:
        for _ in range(1000):
            try:
                with image_lock(store, SNAPSHOT):
                    with guard:
                        inside[0] += 1
                        most[0], wins[0] = max(most[0], inside[0]), wins[0] + 1
                    time.sleep(0.00001)
                    with guard:
                        inside[0] -= 1
            except RefusedError as exc:
                assert str(exc) == (
                    f"another recover run is working on image {SNAPSHOT}; "
                    "nothing was changed; wait for it to finish"
                )
                refusals[0] += 1

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert wins[0] + refusals[0] == 8000 and wins[0] > 0 and refusals[0] > 0
    assert list(store.iterdir()) == []


FLAVOR_LOSERS = (
    "is live (",
    "was recovered meanwhile, by another run",
    "changed since the plan was made",
    "another session holds these rows",
    "the database refused the change",
)


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_eight_runs_on_one_flavor(
    make_db: Any, tmp_path: Path, mariadb_server: Any, kind: str
) -> None:
    if kind == "legacy":
        cloud: Any = Legacy(make_db, "r_nova")
        url, args, tables = cloud.url, ["--nova-db", cloud.url], (*LEGACY_TABLES, *SHADOW_TABLES)
    else:
        cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
        url, args, tables = cloud.api_url, ["--nova-api-db", cloud.api_url], API_TABLES
    env = base_env(tmp_path)
    results = race([*args, "flavor", "f0e1d2c3", "--yes"], env, tmp_path)
    exactly_one_winner(results, *FLAVOR_LOSERS)
    now = rows(url, tables)
    if kind == "legacy":
        assert {t: now[t] for t in LEGACY_TABLES} == cloud.before_delete
        assert all(now[t] == [] for t in SHADOW_TABLES)
    else:
        assert without_child_ids(now) == without_child_ids(cloud.before_delete)
        # exactly one copy of each child row: no loser inserted anything
        assert [len(now[t]) for t in API_TABLES] == [
            len(cloud.before_delete[t]) for t in API_TABLES
        ]
    statuses = [
        json.loads(p.read_text())["status"] for p in (tmp_path / "state" / "journal").glob("*.json")
    ]
    assert statuses.count("committed") == 1, statuses
    assert set(statuses) <= {"committed", "rolled-back"}, statuses


def test_eight_undos_of_one_journal(make_db: Any, tmp_path: Path, mariadb_server: Any) -> None:
    legacy = Legacy(make_db, "r_nova")
    env = base_env(tmp_path)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("recover")), "--nova-db", legacy.url, "flavor",
         "f0e1d2c3", "--yes"], env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (journal,) = (tmp_path / "state" / "journal").glob("*.json")
    results = race(["--nova-db", legacy.url, "undo", str(journal), "--yes"], env, tmp_path)
    exactly_one_winner(
        results,
        f"journal {journal} was already undone",
        "changed since the plan was made",
        "another session holds these rows",
    )
    assert rows(legacy.url, (*LEGACY_TABLES, *SHADOW_TABLES)) == legacy.after_delete
    assert json.loads(journal.read_text())["status"] == "undone"


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_race_loser_is_not_told_to_delete_the_recovered_flavor(
    make_db: Any, tmp_path: Path, kind: str
) -> None:
    """The interleaving the 8-process race hits now and then, made deterministic."""
    if kind == "legacy":
        cloud: Any = Legacy(make_db, "r_nova")
        options = {"nova_db": (cloud.url,)}
        args = ["--nova-db", cloud.url]
    else:
        cloud = Modern(make_db, (clouds.MODERN_API, clouds.MODERN_NOVA))
        options = {"nova_api_db": cloud.api_url}
        args = ["--nova-api-db", cloud.api_url]
    nova = open_nova(resolve(options, environ={}))
    try:
        candidate = FlavorFinder(nova).find("f0e1d2c3")  # the loser has found the deleted flavor
        winner = subprocess.run(
            [str(Path(sys.executable).with_name("recover")), *args, "flavor", "f0e1d2c3", "--yes"],
            env=base_env(tmp_path), capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert winner.returncode == 0, winner.stderr
        with pytest.raises(RefusedError) as refused:
            if kind == "legacy":
                legacy_plan(candidate)
            else:
                modern_plan(nova, candidate, None)
    finally:
        nova.dispose()
    assert "rename or delete the live one" not in str(refused.value), str(refused.value)
