"""The host-probe benchmark (issue 13): ``inventory --probe-hosts`` of many compute hosts.

``HOSTS`` compute nodes, each a real ``sshd`` in a mount namespace of its own
(``tests/sshd.py`` ``SshdServer.start_node``) seeing its own
``/var/lib/nova/instances``: a raw ``_base/<sha1>`` of the deleted image and the qcow2
overlay of the one instance it runs (``tests/compute_nodes.py``). Each node sits behind
its own TCP proxy (``tests/netdelay.py`` ``LatencyProxy``, threads of this process, not
of the recover measured) that holds every chunk back half a round trip each way, as a
host in another rack or data centre would. The same inventory is timed with
``--ssh-workers 16`` and ``--ssh-workers 1``.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path

from bench_db import MariaDB
from bench_util import Run, measure

try:
    from tests.compute_nodes import (
        NodeFiles,
        base_file_name,
        data,
        raw_image,
        small_cloud,
        start_nodes,
        stop_nodes,
    )
    from tests.netdelay import LatencyProxy
    from tests.sshd import SshdServer, start_sshd
except ImportError as exc:  # pragma: no cover - a venv without the test extra
    raise SystemExit(f"error: the probe benchmark needs the test extra ({exc})") from None

HOSTS = 32
ROUND_TRIP_S = 0.02
WORKERS = (16, 1)
IMAGE = "d0000000-0000-4000-8000-0000000000b1"
MTIME = 1_790_000_000


class ProbeBench:
    def __init__(self, db: MariaDB, work: Path, recover: list[str], hosts: int = HOSTS) -> None:
        work.mkdir(parents=True)
        self.work = work
        self.recover = recover
        self.hosts = [f"compute-{n:03d}" for n in range(hosts)]
        store = work / "store"
        store.mkdir()
        blob = data(13, 1024 * 1024)
        self.cloud = small_cloud(
            lambda schema, name: db.create(name, schema),
            store,
            images=[(raw_image(IMAGE, "golden", blob, store), datetime(2026, 10, 20))],
            instances={
                f"10000000-0000-4000-8000-{n:012d}": (IMAGE, h) for n, h in enumerate(self.hosts)
            },
            prefix="probe",
        )
        (work / "sshd").mkdir()
        self.server: SshdServer = start_sshd(work / "sshd")
        self.proxies: list[LatencyProxy] = []
        try:
            sha = base_file_name(IMAGE)
            nodes = {
                host: NodeFiles(base={sha: (blob, MTIME)},
                                disks={f"10000000-0000-4000-8000-{n:012d}": sha})
                for n, host in enumerate(self.hosts)
            }  # fmt: skip
            self.nodes = start_nodes(self.server, work / "nodes", nodes)
            for node in self.nodes:
                proxy = LatencyProxy(("127.0.0.1", node.port), ROUND_TRIP_S)
                self.proxies.append(proxy)
                self.server.add_host(node.alias, port=proxy.port)
        except BaseException:
            self.close()
            raise
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVER_")}
        self.env["RECOVER_SSH_COMMAND"] = self.server.ssh_command
        self.out = work / "probe.json"

    def plain_argv(self) -> list[str]:
        """The same inventory without the probe: what recover costs before any ssh."""
        return [*self.recover, *self.cloud.args("inventory", "--format", "json")]

    def plain(self) -> Run:
        return measure(self.plain_argv(), env=self.env, stdout=self.out)

    def argv(self, workers: int) -> list[str]:
        return [*self.recover, *self.cloud.args("inventory", "--format", "json", "--probe-hosts",
                                                 "--ssh-workers", str(workers))]  # fmt: skip

    def run(self, workers: int, check: bool = False) -> Run:
        result = measure(self.argv(workers), env=self.env, stdout=self.out)
        if check:
            report = json.loads(self.out.read_text())
            ok = [h["name"] for h in report["hosts"] if h["ok"]]
            copies = report["images"][0]["copies"]
            if ok != self.hosts or len(copies) != len(self.hosts):
                raise RuntimeError(f"the probe missed hosts: {report['hosts']}")
        return result

    def ssh_once(self) -> Run:
        """One bare ssh connection through a proxy running `true`: the floor per host."""
        return measure([*self.server.ssh_argv(), self.hosts[0], "true"], env=self.env)

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        stop_nodes(self.server, getattr(self, "nodes", []))
        self.server.stop()


def describe_ssh(server: SshdServer) -> str:
    done = subprocess.run([server.ssh, "-V"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip()
