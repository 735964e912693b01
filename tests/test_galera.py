"""``recover`` on a real three-node MariaDB Galera cluster (``galera_cluster``, tests/galera.py).

On Galera ``SELECT ... FOR UPDATE`` locks rows on the node that runs it only; a conflicting
write through another node is not blocked, and the loser learns it at COMMIT (certification
failure, ER_LOCK_DEADLOCK 1213). These tests pin what the cluster does and what ``recover``
does on it: the loser of a race at COMMIT gets one refusal naming the object and
``recover inventory``; reads wait for the cluster (``wsrep_sync_wait``); a journal names its
Galera cluster, so undo runs through any node (issue 14).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

from recover.demo import SNAPSHOT
from recover.secrets import mask_url
from tests import clouds, galera
from tests.galera import GaleraCluster, GaleraNode
from tests.helpers import dump_rows, process_env
from tests.test_faults import assert_image_new, journals, stopped, wait_until
from tests.test_flavor import API_TABLES, LEGACY_TABLES, PRIVATE, SHADOW_TABLES, Legacy, Modern
from tests.test_flavor import _without_child_ids as without_child_ids
from tests.test_hostile import OTHER_IMAGE, build_world
from tests.test_races import finish_all, start_together

RECOVER = str(Path(sys.executable).with_name("recover"))
ROUNDS = 5
DEADLOCK = (1213, "Deadlock found when trying to get lock; try restarting transaction")


def committed_note(root: Path) -> str:
    """What a committing run prints on stderr when stdout is no terminal: its journal."""
    (journal,) = [
        p
        for p in (root / "state" / "journal").glob("*.json")
        if json.loads(p.read_text())["status"] == "committed"
    ]
    return f"Committed; journal {journal}; undo: recover undo {journal}\n"


def journal_statuses(root: Path) -> list[str]:
    return sorted(
        json.loads(p.read_text())["status"] for p in (root / "state" / "journal").glob("*.json")
    )


def connect(node: GaleraNode, db: str, *, sync_wait: bool = False) -> Any:
    """A PyMySQL connection to ``db`` through ``node`` with explicit transactions."""
    init = "SET SESSION innodb_lock_wait_timeout = 5"
    if sync_wait:
        init += ", wsrep_sync_wait = 1"
    return node.connect(db, autocommit=False, init_command=init)


def every_node_dump(cluster: GaleraCluster, db: str) -> list[dict[str, list[tuple[Any, ...]]]]:
    """All rows of ``db`` read through each node, with ``wsrep_sync_wait = 1``."""
    return [dump_rows(node.synced_url(db)) for node in cluster.nodes]


class Deleted:
    """Flavor f0e1d2c3 deleted the way Nova deletes it, built through node 1 of the cluster.

    ``legacy``: a Mitaka cell (``tests.test_flavor.Legacy``, soft-deleted rows);
    ``modern``: nova_api + one cell (``tests.test_flavor.Modern``, hard-deleted).
    """

    def __init__(self, cluster: GaleraCluster, kind: str) -> None:
        self.cluster = cluster
        self.kind = kind

        def make(schema: str, db: str) -> str:
            return cluster.make_db(schema, db)[0]

        if kind == "legacy":
            legacy = Legacy(make, "gal_race")
            legacy.db.engine.dispose()
            self.cloud: Legacy | Modern = legacy
            self.db, self.option = "gal_race", "--nova-db"
        else:
            modern = Modern(make, (clouds.MODERN_API, clouds.MODERN_NOVA))
            modern.api.engine.dispose()
            modern.cell.engine.dispose()
            self.cloud = modern
            self.db, self.option = "fm_api", "--nova-api-db"
        cluster.sync()

    def argv(self, node: GaleraNode, *more: str) -> list[str]:
        return [self.option, node.url(self.db), "flavor", PRIVATE.flavorid, *more]

    def assert_recovered_everywhere(self) -> None:
        """The flavor's rows as before the delete, the same on the three nodes."""
        dumps = every_node_dump(self.cluster, self.db)
        for node, dump in zip(self.cluster.nodes, dumps, strict=True):
            if isinstance(self.cloud, Legacy):
                assert {t: dump[t] for t in LEGACY_TABLES} == self.cloud.before_delete, node.name
                assert all(dump[t] == [] for t in SHADOW_TABLES), node.name
            else:
                now = {t: dump[t] for t in API_TABLES}
                # Child rows get fresh ids; exactly one copy of each: no loser inserted any.
                assert without_child_ids(now) == without_child_ids(self.cloud.before_delete)
                assert [len(now[t]) for t in API_TABLES] == [
                    len(self.cloud.before_delete[t]) for t in API_TABLES
                ], node.name
        assert dumps[1] == dumps[0] and dumps[2] == dumps[0]


def test_without_galera_4_ci_fails_and_a_developer_machine_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(galera, "GALERA_LIBRARIES", ("/nonexistent/libgalera_smm.so",))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        galera.require_galera()
    assert "Debian: apt-get install galera-4" in str(failed.value)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        galera.require_galera()


def test_the_cluster_has_three_synced_nodes_and_replicates_ddl_and_rows(
    galera_cluster: GaleraCluster,
) -> None:
    cluster = galera_cluster
    cluster.make_db(clouds.LEGACY_NOVA, "gal_smoke")
    uuids = set()
    for node in cluster.nodes:
        assert node.status("wsrep_cluster_size") == "3", node.name
        assert node.status("wsrep_local_state_comment") == "Synced", node.name
        assert node.status("wsrep_cluster_status") == "Primary", node.name
        assert node.status("wsrep_ready") == "ON", node.name
        uuids.add(node.status("wsrep_cluster_state_uuid"))
    assert len(uuids) == 1
    ports = [n.port for n in cluster.nodes] + [n.gcomm_port for n in cluster.nodes]
    assert len(set(ports)) == 6
    tables = cluster.nodes[0].table_names("gal_smoke")
    assert "instance_types" in tables and len(tables) > 100
    assert [node.table_names("gal_smoke") for node in cluster.nodes[1:]] == [tables, tables]

    writer = connect(cluster.nodes[0], "gal_smoke")
    try:
        with writer.cursor() as cur:
            cur.execute(
                "INSERT INTO instance_types (name, flavorid, memory_mb, vcpus, swap,"
                " root_gb, deleted) VALUES ('m1.galera', 'g1', 512, 1, 0, 1, 0)"
            )
        writer.commit()
    finally:
        writer.close()
    # Read right after the commit, through the two other nodes: wsrep_sync_wait = 1 makes
    # each read wait until the node has applied every write-set committed before it.
    for node in cluster.nodes[1:]:
        reader = connect(node, "gal_smoke", sync_wait=True)
        try:
            with reader.cursor() as cur:
                cur.execute("SELECT id, name, flavorid, memory_mb, deleted FROM instance_types")
                assert cur.fetchall() == ((1, "m1.galera", "g1", 512, 0),), node.name
        finally:
            reader.close()


def test_for_update_locks_one_node_only_and_the_second_writer_fails_at_commit(
    galera_cluster: GaleraCluster,
) -> None:
    """The failure recover's write path must turn into a clean refusal (issue 14, item 1)."""
    cluster = galera_cluster
    cluster.make_db(clouds.LEGACY_NOVA, "gal_conflict")
    setup = connect(cluster.nodes[0], "gal_conflict")
    with setup.cursor() as cur:
        cur.execute(
            "INSERT INTO instance_types (id, name, flavorid, memory_mb, vcpus, swap, root_gb,"
            " deleted) VALUES (7, 'db.xlarge', 'f0e1d2c3', 32768, 8, 0, 100, 7)"
        )
    setup.commit()
    setup.close()
    cluster.sync()
    one = connect(cluster.nodes[0], "gal_conflict", sync_wait=True)
    two = connect(cluster.nodes[1], "gal_conflict", sync_wait=True)
    try:
        select = "SELECT id, deleted FROM instance_types WHERE id = 7 FOR UPDATE"
        with one.cursor() as cur:
            cur.execute(select)
            assert cur.fetchall() == ((7, 7),)
        # On one server this would wait for node 1's row lock (and time out after 5 s);
        # on Galera the lock is node 1's alone and node 2 takes its own at once.
        started = time.monotonic()
        with two.cursor() as cur:
            cur.execute(select)
            assert cur.fetchall() == ((7, 7),)
        assert time.monotonic() - started < 2
        with one.cursor() as cur:
            cur.execute("UPDATE instance_types SET deleted = 0 WHERE id = 7")
        with two.cursor() as cur:
            cur.execute("UPDATE instance_types SET deleted = 0, memory_mb = 1 WHERE id = 7")
        one.commit()
        with pytest.raises(pymysql.err.OperationalError) as lost:
            two.commit()
        assert lost.value.args == DEADLOCK
    finally:
        one.close()
        two.close()
    # Node 1's change everywhere (the admin connection reads with wsrep_sync_wait = 1).
    found = [
        node.query("SELECT id, name, memory_mb, deleted FROM gal_conflict.instance_types")
        for node in cluster.nodes
    ]
    assert found == [[(7, "db.xlarge", 32768, 0)]] * 3


def run_recover(
    root: Path, argv: list[str], extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECOVER, *argv], env={**process_env(root), **(extra or {})}, capture_output=True,
        text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_recover_flavor_through_node_1_reaches_every_node(
    galera_cluster: GaleraCluster, tmp_path: Path, kind: str
) -> None:
    deleted = Deleted(galera_cluster, kind)
    done = run_recover(tmp_path, deleted.argv(galera_cluster.nodes[0], "--yes"))
    assert (done.returncode, done.stderr) == (0, committed_note(tmp_path)), done.stderr
    assert done.stdout.splitlines()[0] == (
        f"Done: recover flavor f0e1d2c3 (id {deleted.cloud.id}, db.xlarge)"
    )
    deleted.assert_recovered_everywhere()
    assert journal_statuses(tmp_path) == ["committed"]


def one_winner(
    results: list[tuple[int, str, str]], flavor_id: int, title: str = "recover flavor"
) -> tuple[str, str]:
    """The winner's stdout and the loser's stderr; asserts the exit codes and stdout."""
    assert sorted(code for code, _, _ in results) == [0, 1], results
    (winner,) = [out for code, out, _ in results if code == 0]
    (loser_out, loser_err), *_ = [(out, err) for code, out, err in results if code == 1]
    first = f"Done: {title} f0e1d2c3 (id {flavor_id}, {PRIVATE.name})\n"
    assert winner.startswith(first), winner
    assert loser_out == "", loser_out
    assert len(loser_err.splitlines()) == 1 and loser_err.startswith("Error: "), loser_err
    assert "Traceback" not in loser_err and not loser_err.startswith("Error: unexpected")
    return winner, loser_err


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_same_flavor_started_through_two_nodes_at_once(
    galera_cluster: GaleraCluster, tmp_path: Path, kind: str
) -> None:
    """Started together, the two runs rarely overlap inside their transactions: the loser's
    plan or re-check already sees the winner's commit (replicated to its node)."""
    cluster = galera_cluster
    for round_ in range(ROUNDS):
        deleted = Deleted(cluster, kind)
        root = tmp_path / f"round{round_}"
        root.mkdir()
        argvs = [deleted.argv(node, "--yes") for node in cluster.nodes[:2]]
        one_winner(finish_all(start_together(argvs, process_env(root), root)), deleted.cloud.id)
        deleted.assert_recovered_everywhere()
        assert journal_statuses(root) in (["committed"], ["committed", "rolled-back"])


@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_same_flavor_committed_through_two_nodes_at_once(
    galera_cluster: GaleraCluster, tmp_path: Path, kind: str
) -> None:
    """Both runs inside their transactions at once (possible only on Galera: each holds
    row locks on its own node), then both COMMIT: exactly one certifies."""
    cluster = galera_cluster
    for round_ in range(ROUNDS):
        deleted = Deleted(cluster, kind)
        root = tmp_path / f"round{round_}"
        root.mkdir()
        argvs = [deleted.argv(node, "--yes") for node in cluster.nodes[:2]]
        procs = start_together(argvs, process_env(root), root, stop_at="in-transaction")
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
        _, loser = one_winner(finish_all(procs), deleted.cloud.id)
        deleted.assert_recovered_everywhere()
        assert journal_statuses(root) == ["committed", "rolled-back"]
        # Issue 14: a refusal like a lost race, naming the object and what to do.
        title = f"recover flavor f0e1d2c3 (id {deleted.cloud.id}, {PRIVATE.name})"
        assert loser == loser_line(title), loser


def recovered_journal(deleted: Deleted, root: Path) -> Path:
    """Recover the flavor through node 1; the journal an undo can name."""
    done = run_recover(root, deleted.argv(deleted.cluster.nodes[0], "--yes"))
    assert done.returncode == 0, done.stderr
    (journal,) = (root / "state" / "journal").glob("*.json")
    deleted.cluster.sync()
    return journal


def undo_argv(deleted: Deleted, node: GaleraNode, journal: Path) -> list[str]:
    return [deleted.option, node.url(deleted.db), "undo", str(journal), "--yes"]


def assert_deleted_everywhere(deleted: Deleted) -> None:
    """The rows exactly as Nova left them after the delete, the same on the three nodes."""
    assert isinstance(deleted.cloud, Legacy)
    tables = (*LEGACY_TABLES, *SHADOW_TABLES)
    dumps = every_node_dump(deleted.cluster, deleted.db)
    for node, dump in zip(deleted.cluster.nodes, dumps, strict=True):
        assert {t: dump[t] for t in tables} == deleted.cloud.after_delete, node.name
    assert dumps[1] == dumps[0] and dumps[2] == dumps[0]


def loser_line(title: str) -> str:
    """The exact refusal of the run whose COMMIT lost the certification (issue 14, item 1)."""
    return (
        f"Error: {title}: another session holds these rows or changed them at the same moment "
        f"(deadlock, or on Galera a certification failure at COMMIT, {DEADLOCK[0]}: "
        f"{DEADLOCK[1]}); nothing was changed; run `recover inventory` to see the result of the "
        "run that won, and re-run only if it is still needed\n"
    )


def test_undo_through_another_node_than_the_recovery(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    """Node 1 is gone or busy: the operator undoes through node 2, same cluster, same rows."""
    deleted = Deleted(galera_cluster, "legacy")
    journal = recovered_journal(deleted, tmp_path)
    recorded = json.loads(journal.read_text())["database"]
    # The journal names the cluster (its data history), not only node 1's address.
    assert recorded["galera"] == {
        "cluster_state_uuid": galera_cluster.nodes[0].status("wsrep_cluster_state_uuid"),
        "cluster_name": galera.CLUSTER_NAME,
    }
    assert recorded["port"] == galera_cluster.nodes[0].port
    # The same database name in another Galera cluster (another data history) is refused,
    # changing nothing: a copy of the journal naming another cluster state uuid.
    document = json.loads(journal.read_text())
    document["database"]["galera"]["cluster_state_uuid"] = "00000000-1111-2222-3333-444444444444"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(document))
    node2 = galera_cluster.nodes[1].url(deleted.db)
    refused = run_recover(tmp_path, ["--nova-db", node2, "undo", str(foreign), "--yes"])
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"Error: journal {foreign} is for {recorded['url']}, but the configured database is "
        f"{mask_url(make_url(node2))}; point recover at the database the journal was written "
        "for\n"
    )
    assert json.loads(journal.read_text())["status"] == "committed"
    deleted.assert_recovered_everywhere()
    # Through node 2, the same database: undone, the same rows on the three nodes.
    done = run_recover(tmp_path, undo_argv(deleted, galera_cluster.nodes[1], journal))
    assert done.returncode == 0, done.stderr
    assert_deleted_everywhere(deleted)
    assert json.loads(journal.read_text())["status"] == "undone"


def test_same_undo_started_through_two_nodes_at_once(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    """One winner, one clean refusal, the same rows everywhere (the loser mostly finds the
    rows changed at its re-check, which waits for the winner's commit: ``wsrep_sync_wait``)."""
    for round_ in range(ROUNDS):
        deleted = Deleted(galera_cluster, "legacy")
        root = tmp_path / f"round{round_}"
        root.mkdir()
        journal = recovered_journal(deleted, root)
        argvs = [undo_argv(deleted, node, journal) for node in galera_cluster.nodes[:2]]
        results = finish_all(start_together(argvs, process_env(root), root))
        one_winner(results, deleted.cloud.id, "undo: recover flavor")
        assert_deleted_everywhere(deleted)
        assert json.loads(journal.read_text())["status"] == "undone"
        assert journal_statuses(root) in (
            ["committed", "undone"], ["committed", "rolled-back", "undone"]
        )  # fmt: skip


def test_same_undo_committed_through_two_nodes_at_once(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    for round_ in range(ROUNDS):
        deleted = Deleted(galera_cluster, "legacy")
        root = tmp_path / f"round{round_}"
        root.mkdir()
        journal = recovered_journal(deleted, root)
        argvs = [undo_argv(deleted, node, journal) for node in galera_cluster.nodes[:2]]
        procs = start_together(argvs, process_env(root), root, stop_at="in-transaction")
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
        _, loser = one_winner(finish_all(procs), deleted.cloud.id, "undo: recover flavor")
        assert_deleted_everywhere(deleted)
        assert json.loads(journal.read_text())["status"] == "undone"
        assert journal_statuses(root) == ["committed", "rolled-back", "undone"]
        title = f"undo: recover flavor f0e1d2c3 (id {deleted.cloud.id}, {PRIVATE.name})"
        assert loser == loser_line(f"{title} (journal {journal})"), loser


def test_inventory_through_another_node_right_after_a_recovery_sees_it(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    """Read-your-writes: node 2 applies node 1's commit late (its applier paused by
    FLUSH TABLES WITH READ LOCK for 3 s); a read through node 2 must wait for it."""
    cluster = galera_cluster
    one, two = cluster.nodes[0], cluster.nodes[1]
    deleted = Deleted(cluster, "legacy")
    cluster.make_db(clouds.LEGACY_GLANCE, "gal_glance")
    (tmp_path / "store").mkdir()
    inventory = [
        "--nova-db", two.url(deleted.db), "--glance-db", two.url("gal_glance"),
        "--store-dir", str(tmp_path / "store"), "inventory", "--format", "json",
    ]  # fmt: skip
    before = run_recover(tmp_path, inventory)
    assert before.returncode == 0, before.stderr
    assert [f["flavorid"] for f in json.loads(before.stdout)["flavors"]] == ["f0e1d2c3"]
    pause = two.connect()
    released = threading.Event()
    try:
        with pause.cursor() as cur:
            cur.execute("FLUSH TABLES WITH READ LOCK")  # node 2 stops applying write-sets
        done = run_recover(tmp_path, deleted.argv(one, "--yes"))
        assert done.returncode == 0, done.stderr
        applied = int(two.status("wsrep_last_committed") or 0)
        assert applied < int(one.status("wsrep_last_committed") or 0)  # node 2 is behind

        def release() -> None:
            with pause.cursor() as cur:
                cur.execute("UNLOCK TABLES")
            released.set()

        timer = threading.Timer(3, release)
        timer.start()
        after = run_recover(tmp_path, inventory)
        timer.join()
    finally:
        if not released.is_set():
            with pause.cursor() as cur:
                cur.execute("UNLOCK TABLES")
        pause.close()
        cluster.sync()
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["flavors"] == []


def assert_unchanged_on(deleted: Deleted, nodes: Sequence[GaleraNode]) -> None:
    """The pre-Newton flavor's tables on each of ``nodes`` exactly as after the delete."""
    tables = (*LEGACY_TABLES, *SHADOW_TABLES)
    for node in nodes:
        dump = dump_rows(node.synced_url(deleted.db))
        assert {t: dump[t] for t in tables} == deleted.cloud.after_delete, node.name


@contextlib.contextmanager
def stopped_through_node_3(
    cluster: GaleraCluster, root: Path, point: str
) -> Iterator[tuple[Deleted, subprocess.Popen[str]]]:
    """``recover flavor`` of a deleted pre-Newton flavor through node 3, stopped (SIGSTOP)
    at fault point ``point`` for the block's body; resumed (SIGCONT) when the block ends."""
    deleted = Deleted(cluster, "legacy")
    assert isinstance(deleted.cloud, Legacy)
    proc = subprocess.Popen(
        [RECOVER, *deleted.argv(cluster.nodes[2], "--yes")],
        env={**process_env(root), "RECOVER_FAULT_POINT": point},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: proc.poll() is not None or stopped(proc.pid)), "no stop"
        assert proc.poll() is None, proc.communicate()
        yield deleted, proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_node_killed_inside_a_recovery_and_a_rerun_through_another_node(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    """kill -9 of node 3 while a recovery through it is inside its transaction."""
    cluster = galera_cluster
    one, two, three = cluster.nodes
    try:
        with stopped_through_node_3(cluster, tmp_path, "in-transaction:stop") as (deleted, proc):
            three.kill()
        out, err = proc.communicate(timeout=120)
        # The survivors never saw the transaction: exactly the old state on both.
        assert wait_until(lambda: one.status("wsrep_cluster_size") == "2", timeout=60)
        assert_unchanged_on(deleted, (one, two))
        assert (proc.returncode, out) == (1, ""), err
        assert err == (
            "Error: the transaction failed and was rolled back:"
            " Lost connection to MySQL server during query\n"
        )
        assert journal_statuses(tmp_path) == ["rolled-back"]
        # A re-run through node 1 finishes; node 3 comes back (full state transfer) with it.
        again = run_recover(tmp_path, deleted.argv(one, "--yes"))
        assert (again.returncode, again.stderr) == (0, committed_note(tmp_path)), again.stderr
    finally:
        if not three.executor.running():  # the next tests need three nodes
            seconds = cluster.restart(three)
            sys.stderr.write(f"\nnode3 rejoined in {seconds:.1f} s\n")
    deleted.assert_recovered_everywhere()
    assert journal_statuses(tmp_path) == ["committed", "rolled-back"]


IMAGE_LOSERS = (
    f"another recover run is working on image {SNAPSHOT}",
    f"image {SNAPSHOT} is active: nothing to recover",
    # The loser read the row before the winner committed and took the store's lock after
    # the winner let it go: the re-check under FOR UPDATE refuses (as in test_races).
    f"images id='{SNAPSHOT}' changed since the plan was made",
)


def test_same_image_started_through_two_nodes_at_once(
    galera_cluster: GaleraCluster, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``image --base-file`` through nodes 1 and 2 at once, one store (as controllers share
    it): the per-image lock in the store lets one run in; the rows and the file end new
    on every node, no temporary or lock file is left."""
    cluster = galera_cluster
    for round_ in range(3):
        root = tmp_path / f"round{round_}"
        root.mkdir()
        world = build_world(
            lambda schema, db: cluster.make_db(schema, db)[0], root, tmp_path_factory,
            prefix="gal",
        )  # fmt: skip
        cluster.sync()
        argvs = [
            ["--nova-db", node.url(world.nova_db), "--glance-db", node.url(world.glance_db),
             "--store-dir", str(world.store), "image", SNAPSHOT, "--base-file", str(world.base),
             "--yes"]
            for node in cluster.nodes[:2]
        ]  # fmt: skip
        env = {**world.env, **{k: v for k, v in process_env(root).items() if k == "PYTHONPATH"}}
        results = finish_all(start_together(argvs, env, root))
        assert sorted(code for code, _, _ in results) == [0, 1], results
        for code, out, err in results:
            if code == 0:
                assert out.startswith(f"Done: recover image {SNAPSHOT}"), out
                continue
            assert out == "" and len(err.splitlines()) == 1, (out, err)
            assert any(err.startswith(f"Error: {text}") for text in IMAGE_LOSERS), err
        for node in cluster.nodes:
            assert_image_new(world, node)
        assert sorted(journals(world).values()) in (["committed"], ["committed", "rolled-back"])
        assert sorted(p.name for p in world.store.iterdir()) == sorted([SNAPSHOT, OTHER_IMAGE])


def test_node_that_stops_serving_inside_a_recovery_is_a_clean_refusal(
    galera_cluster: GaleraCluster, tmp_path: Path
) -> None:
    """Node 3 stops serving queries (``wsrep_reject_queries = ALL``: what a node outside the
    primary component answers, 1047) while a recovery through it holds its row locks: one
    line naming the flavor and what to do, nothing changed anywhere, journal rolled back; a
    re-run through node 1 finishes."""
    cluster = galera_cluster
    one, three = cluster.nodes[0], cluster.nodes[2]
    try:
        with stopped_through_node_3(cluster, tmp_path, "journaled:stop") as (deleted, proc):
            three.query("SET GLOBAL wsrep_reject_queries = ALL")
        out, err = proc.communicate(timeout=120)
    finally:
        three.query("SET GLOBAL wsrep_reject_queries = NONE")
    title = f"recover flavor f0e1d2c3 (id {deleted.cloud.id}, {PRIVATE.name})"
    assert (proc.returncode, out) == (1, ""), err
    assert err == (
        f"Error: {title}: the database node is not ready (1047: WSREP has not yet prepared node "
        "for application use): a Galera node outside the cluster's primary part; nothing was "
        "changed; run `recover inventory` through a node that is Synced, then re-run through "
        "it\n"
    )
    assert_unchanged_on(deleted, cluster.nodes)
    assert journal_statuses(tmp_path) == ["rolled-back"]
    again = run_recover(tmp_path, deleted.argv(one, "--yes"))
    assert (again.returncode, again.stderr) == (0, committed_note(tmp_path)), again.stderr
    deleted.assert_recovered_everywhere()
