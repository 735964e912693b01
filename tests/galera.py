"""A real three-node MariaDB Galera cluster on 127.0.0.1, for the multi-writer tests.

Production control planes run MariaDB Galera (kolla-ansible, openstack-ansible and TripleO
all deploy it): ``SELECT ... FOR UPDATE`` locks rows on one node only and a conflicting
write through another node fails at COMMIT with a certification error (1213). These tests
need the real thing, so ``start_galera`` runs three ``mariadbd --no-defaults`` with the
Debian ``galera-4`` provider, each with its own ports and datadir under pytest's tmp dir:

* node 1 bootstraps the cluster (``--wsrep-new-cluster``), nodes 2 and 3 join it;
* every node has a client port, a group-communication port (``gmcast.listen_addr``) and
  an IST port (``ist.recv_addr``), all free ports of 127.0.0.1;
* state snapshot transfer (SST) by ``mysqldump``: for datadirs of a few MB it is as fast
  as ``rsync`` (about 2 s a node) and works as root under pytest's 0700 tmp dir, where
  ``rsync``'s daemon, which drops to ``nobody`` as root, cannot write, and it needs no
  extra package (``mariadb-backup`` sleeps 10 s before every transfer). The joiners
  start from a copy of node 1's freshly initialised datadir (``mariadb-install-db``
  runs once), so they come up as full servers that can receive the dump;
* the pieces of the single-server fixture are reused: ``MariaDBExecutor`` (pytest-mysql's
  executor running ``mariadbd --no-defaults``, root without a password over TCP, stop by
  SIGTERM to the process it started) and ``MariaDBServer`` (URLs, client argv, queries,
  ``CHECKSUM TABLE``); ``make_db`` loads ``sql/schemas/<schema>.sql`` through node 1 with
  the same ``DatabaseFactory`` and the DDL replicates to the two others.

Figures on the 2-core test machine (5 agents sharing it), MariaDB 10.11.19, galera 26.4.23:
the cluster is up (three nodes ``Synced``, ``wsrep_cluster_size = 3``) in 9.5-15 s
(measured 14.8, 9.5, 10.1 s: ``mariadb-install-db`` 2.5-4.5 s, node 1 0.7 s, each joiner
3-4 s, mostly Galera's own waits), and the three ``mariadbd`` hold 452 MiB RSS together
(about 150 MiB each, with a 32 MiB buffer pool and a 16 MiB gcache each). A node killed
with SIGKILL rejoins through ``restart`` in 4.5-12 s. ``GaleraCluster.startup_seconds``
and ``rss_mib()`` give the figures of the current run (the fixture prints them).

Missing ``galera-4`` (or MariaDB) skips these tests locally and fails them under ``CI=true``.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pymysql
from mirakuru.exceptions import AlreadyRunning
from port_for import get_port

# conftest.py imports this module at its very end, when these names already exist.
from tests.conftest import (
    SERVER_OPTIONS,
    DatabaseFactory,
    MariaDBExecutor,
    MariaDBServer,
)
from tests.helpers import find_binary, give_up, require_binary

GALERA_LIBRARIES = (
    "/usr/lib/galera/libgalera_smm.so",  # Debian/Ubuntu galera-4
    "/usr/lib/libgalera_smm.so",
    "/usr/lib64/galera-4/libgalera_smm.so",  # RPM distributions
    "/usr/lib64/galera/libgalera_smm.so",
)
"""Where the Galera wsrep provider library is looked for, first match wins."""

CLUSTER_NAME = "recover-test"
NODES = 3
START_TIMEOUT = 120
"""Seconds one node may take to accept connections, and the cluster to be ``Synced``."""

GALERA_OPTIONS: tuple[str, ...] = (
    # Galera needs row-based replication and interleaved AUTO_INCREMENT locks (MariaDB KB,
    # "Configuring MariaDB Galera Cluster", mandatory options).
    "--binlog-format=ROW",
    "--innodb-autoinc-lock-mode=2",
    "--default-storage-engine=InnoDB",
    # Three servers on a shared 2-core test machine: small buffers (later options win).
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--wsrep-on=ON",
    f"--wsrep-cluster-name={CLUSTER_NAME}",
    "--wsrep-sst-method=mysqldump",
    # mysqldump SST connects to the joiner as this user (root, empty password over TCP).
    "--wsrep-sst-auth=root:",
)


def find_galera() -> str | None:
    """Path of the Galera provider library (``libgalera_smm.so``), or ``None``."""
    for path in GALERA_LIBRARIES:
        if os.path.exists(path):
            return path
    return None


def require_galera() -> str:
    """Path of ``libgalera_smm.so``; skips the test locally, fails it under ``CI=true``."""
    path = find_galera()
    if path is None:
        give_up(
            "Galera provider libgalera_smm.so not found in "
            f"{', '.join(GALERA_LIBRARIES)} (Debian: apt-get install galera-4;"
            " or run scripts/test as root)"
        )
        raise AssertionError("not reached: give_up ends the test")
    return path


class GaleraNode(MariaDBServer):
    """One ``mariadbd`` of the cluster: a ``MariaDBServer`` plus its Galera identity.

    ``name`` (``node1`` ...), ``gcomm_port`` and ``ist_port``; ``url(db)`` is the plain
    URL (what an operator would give ``recover``); ``synced_url(db)`` adds
    ``wsrep_sync_wait = 1`` to every session, so a read through it sees every commit
    made through any node before it (for the tests' own checks). ``query()`` on the
    admin connection waits the same way.
    """

    def __init__(
        self,
        executor: MariaDBExecutor,
        client: str,
        startup_seconds: float,
        *,
        name: str,
        gcomm_port: int,
        ist_port: int,
    ) -> None:
        """Wrap ``executor`` (not started yet) as node ``name``."""
        super().__init__(executor, client, startup_seconds)
        self.name = name
        self.gcomm_port = gcomm_port
        self.ist_port = ist_port

    def synced_url(self, db: str) -> str:
        """``url(db)`` whose sessions read with ``wsrep_sync_wait = 1`` (read your writes)."""
        return self.url(db) + "&init_command=" + quote("SET SESSION wsrep_sync_wait = 1")

    @property
    def admin(self) -> pymysql.connections.Connection[Any]:
        """The harness's connection (see ``MariaDBServer.admin``), reading with sync-wait."""
        fresh = self._admin is None
        conn = super().admin
        if fresh or conn is not getattr(self, "_synced_admin", None):
            with conn.cursor() as cur:
                cur.execute("SET SESSION wsrep_sync_wait = 1")
            self._synced_admin = conn
        return conn

    def status(self, variable: str) -> str | None:
        """``SHOW GLOBAL STATUS`` value of ``variable`` (fresh connection, no sync-wait)."""
        conn = self.connect(connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (variable,))
                row = cur.fetchone()
        finally:
            conn.close()
        return None if row is None else str(row[1])

    @property
    def pid(self) -> int:
        """Process id of this node's ``mariadbd``."""
        process = self.executor.process
        assert process is not None, f"{self.name} is not running"
        return process.pid

    def kill(self) -> None:
        """SIGKILL this node's ``mariadbd`` (a crash, as ``kill -9``) and reap it."""
        process = self.executor.process
        assert process is not None, f"{self.name} is not running"
        self.close()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)

    def rss_mib(self) -> float:
        """Resident memory of this node's ``mariadbd`` in MiB (``VmRSS`` of /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.name} (pid {self.pid})")


class GaleraCluster:
    """Handle on the session's cluster (the ``galera_cluster`` fixture).

    ``nodes`` (three ``GaleraNode``), ``startup_seconds`` (initialisation to all
    ``Synced``), ``make_db(schema, name) -> [url of node 1, node 2, node 3]``,
    ``sync()``, ``wait_synced()``, ``restart(node)`` (after ``node.kill()``),
    ``rss_mib()``, ``stop()``.
    """

    def __init__(self, nodes: Sequence[GaleraNode]) -> None:
        """Wrap started ``nodes``; node 1 first."""
        self.nodes = list(nodes)
        self.startup_seconds = 0.0
        self._factory = DatabaseFactory(self.nodes[0])

    def urls(self, db: str) -> list[str]:
        """Plain URL of database ``db`` through each node, node 1 first."""
        return [node.url(db) for node in self.nodes]

    def make_db(self, schema: str, name: str) -> list[str]:
        """Database ``name`` holding ``sql/schemas/<schema>.sql``, empty, on every node.

        Created (or emptied) through node 1 like ``make_db`` does on the single server;
        the DDL and TRUNCATEs replicate (Galera runs DDL in total order on every node).
        Returns once every node has applied them: the plain URLs, node 1 first.
        """
        self._factory(schema, name)
        self.sync()
        return self.urls(name)

    def sync(self, timeout: float = 30) -> None:
        """Wait until every node has applied every write-set committed so far."""
        target = max(int(node.status("wsrep_last_committed") or 0) for node in self.nodes)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while int(node.status("wsrep_last_committed") or 0) < target:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not reach seqno {target} in {timeout} s")
                time.sleep(0.02)

    def wait_synced(
        self, timeout: float = START_TIMEOUT, nodes: Sequence[GaleraNode] | None = None
    ) -> None:
        """Wait until every node (of ``nodes``) is ``Synced`` in a cluster of exactly them."""
        nodes = self.nodes if nodes is None else nodes
        deadline = time.monotonic() + timeout
        for node in nodes:
            while True:
                try:
                    state = node.status("wsrep_local_state_comment")
                    size = node.status("wsrep_cluster_size")
                except pymysql.MySQLError:
                    state = size = None
                if state == "Synced" and size == str(len(nodes)):
                    break
                if not node.executor.running():
                    raise RuntimeError(
                        f"{node.name} exited while joining the cluster\n"
                        f"--- {node.executor.logfile_path} ---\n{node.executor.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{node.name} not Synced after {timeout} s (state {state}, size {size})"
                        f"\n--- {node.executor.logfile_path} ---\n{node.executor.log_tail()}"
                    )
                time.sleep(0.1)

    def restart(self, node: GaleraNode, timeout: float = START_TIMEOUT) -> float:
        """Start ``node`` again after it stopped or was killed; seconds until all ``Synced``.

        It rejoins the running nodes (never bootstraps a new cluster, even node 1): after a
        crash its position is unknown, so it takes a full state transfer.
        """
        started = time.perf_counter()
        executor = node.executor
        executor.kill()  # forgets the dead process (and ends any SST helper it left)
        parts = [part for part in executor.command_parts if part != "--wsrep-new-cluster"]
        executor.command_parts = parts
        executor.command = shlex.join(parts)
        executor.start()
        self.wait_synced(timeout)
        return time.perf_counter() - started

    def rss_mib(self) -> float:
        """Resident memory of the three ``mariadbd`` together, in MiB."""
        return sum(node.rss_mib() for node in self.nodes)

    def stop(self) -> None:
        """Stop the nodes this cluster started (SIGTERM to each one's pid, then wait)."""
        for node in reversed(self.nodes):
            node.close()
            if node.executor.running():
                node.executor.stop()
            elif node.executor.process is not None:
                node.executor.kill()  # killed by a test: forget the dead process


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = get_port(None)
        assert port is not None
        if port not in ports:
            ports.append(port)
    return ports


def start_galera(base: Path, nodes: int = NODES) -> GaleraCluster:
    """Start a ``nodes``-node Galera cluster with its files under ``base``; all ``Synced``.

    Skips (fails under ``CI=true``) without MariaDB or ``galera-4``. On failure the
    nodes already started are stopped and the error carries the failing node's log.
    """
    mariadbd = require_binary("mariadbd")
    install_db = (
        find_binary("mariadb-install-db")
        or find_binary("mysql_install_db")
        or require_binary("mariadb-install-db")
    )
    client = require_binary("mariadb")
    require_binary("mariadb-dump")  # the mysqldump SST script runs it
    provider = require_galera()
    user = pwd.getpwuid(os.geteuid()).pw_name
    started = time.perf_counter()
    for attempt in range(5):
        ports = _free_ports(3 * nodes)
        client_ports, gcomm_ports, ist_ports = (
            ports[i * nodes : (i + 1) * nodes] for i in range(3)
        )
        address = "gcomm://" + ",".join(f"127.0.0.1:{port}" for port in gcomm_ports)
        members: list[GaleraNode] = []
        for index in range(nodes):
            name = f"node{index + 1}"
            home = base / f"attempt{attempt}" / name
            home.mkdir(parents=True)
            options = (
                *SERVER_OPTIONS,
                *GALERA_OPTIONS,
                f"--wsrep-provider={provider}",
                f"--wsrep-cluster-address={address}",
                f"--wsrep-node-name={name}",
                "--wsrep-node-address=127.0.0.1",
                "--wsrep-provider-options="
                f"gmcast.listen_addr=tcp://127.0.0.1:{gcomm_ports[index]};"
                f"ist.recv_addr=127.0.0.1:{ist_ports[index]};gcache.size=16M",
                # mysqldump SST loads the dump through the joiner's own client port.
                f"--wsrep-sst-receive-address=127.0.0.1:{client_ports[index]}",
                *(("--wsrep-new-cluster",) if index == 0 else ()),
            )
            executor = MariaDBExecutor(
                mariadbd=mariadbd, install_db=install_db, base_directory=home,
                port=client_ports[index], user=user, options=options, timeout=START_TIMEOUT,
            )  # fmt: skip
            members.append(
                GaleraNode(
                    executor,
                    client,
                    0.0,
                    name=name,
                    gcomm_port=gcomm_ports[index],
                    ist_port=ist_ports[index],
                )
            )
        cluster = GaleraCluster(members)
        first = members[0].executor
        first.initialise_mysql_db_install()
        for node in members[1:]:
            # A joiner must be a whole server to receive the mysqldump SST: node 1's
            # initialised datadir, copied before anything runs, is one (no second install).
            shutil.copytree(first.datadir, node.executor.datadir, dirs_exist_ok=True)
            node.executor._initialised = True
        try:
            for position, node in enumerate(members):
                node.executor.start()
                if position == 0:  # the joiners need a primary component to join
                    cluster.wait_synced(nodes=members[:1])
            cluster.wait_synced()
        except AlreadyRunning:  # someone else took one of the ports meanwhile
            cluster.stop()
            if attempt == 4:
                raise
            continue
        except Exception as exc:
            failed = next((n for n in members if not n.executor.running()), members[-1])
            cluster.stop()
            raise RuntimeError(
                f"could not start the Galera cluster: {exc}\n"
                f"--- {failed.executor.logfile_path} ---\n{failed.executor.log_tail()}"
            ) from exc
        seconds = time.perf_counter() - started
        cluster.startup_seconds = seconds
        for node in members:
            node.startup_seconds = seconds
        return cluster
    raise AssertionError("not reached")
