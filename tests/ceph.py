"""A real single-node Ceph (one mon, one memstore OSD) on 127.0.0.1 for the RBD tests.

Recipe and gotchas: /work/shared/reference/ceph-rbd.md §3 (measured on Debian 12,
Ceph 16.2.15). Used through the ``ceph_cluster`` fixture at the end of
``tests/conftest.py``:

* :func:`start_ceph` writes ``ceph.conf`` into a pytest tmp dir and starts
  ``ceph-mon`` and ``ceph-osd`` in the foreground as children of the test process
  (``-f``), so they are stopped by the pids this module started, never by name.
  Pools ``images`` and ``vms`` (``application rbd``).
* cephx is on, so ``--id``/keyring handling is real: users ``client.admin``,
  ``client.glance`` (``profile rbd pool=images``, what the Ceph docs give Glance)
  and ``client.nova`` (``profile rbd`` on ``vms`` and ``images``: Nova's clone v1
  writes ``rbd_children`` in the parent's pool). Their keyrings are
  ``<dir>/ceph.client.<name>.keyring``, found by the ``keyring`` setting of
  ceph.conf, as ``/etc/ceph/ceph.client.<name>.keyring`` is on a controller.
  cephx costs nothing measurable here (see :data:`MEASURED`) and is also what
  avoids the all-zero fsid of gotcha (4).
* The mon listens on a free port of 127.0.0.1 with messenger v1 only
  (``ms bind msgr2 = false``, ``mon host = v1:127.0.0.1:<port>``), so parallel
  sessions (other worktrees, CI jobs) never meet on 6789/3300; that also removes
  gotcha (3) ("wrong fsid" from a previous run's daemon still on the fixed port).
* :func:`nova_clone` makes Nova-style clones ``vms/<uuid>_disk`` of
  ``images/<id>@snap`` in clone format 1 or 2; :class:`GlanceStoreRbd` runs
  glance_store's own RBD driver (add / delete / get) in the glance-rbd venv.

A missing ``ceph-mon``/``ceph-osd``/``ceph``/``rbd``/``ceph-authtool`` skips the
tests locally and fails them under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from port_for import get_port

from tests.helpers import REPO_ROOT, cached_venv, find_binary, give_up, log_tails

MEASURED = """
Measured on this 2-core machine (Debian 12, Ceph 16.2.15, 5 agents sharing it), 3 runs each:
start (keys, mon mkfs+start, osd mkfs+start+up, 2 pools, 2 users) 3.2-4.5 s with cephx,
3.1-5.0 s with auth none: cephx costs nothing measurable. Without the two paxos settings
of ceph.conf a start took 14 s (every mon write waited ~1 s, `rbd pool init` 3 s).
RSS idle: mon ~36 MB, osd ~42 MB; memstore holds the data in RAM (osd 85 MB after two
5 MB images and two clones). Stop (SIGTERM, osd then mon) < 0.1 s.
"""

CEPH_BINARIES = ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool")
DEBIAN_PACKAGES = "ceph-mon ceph-osd ceph-common"
POOLS = ("images", "vms")
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0

#: Caps as the Ceph docs (rbd-openstack) give them; glance's are enough for
#: add/delete/trash_move (ceph-rbd.md §4).
USERS: dict[str, tuple[str, ...]] = {
    "glance": ("mon", "profile rbd", "osd", "profile rbd pool=images"),
    "nova": ("mon", "profile rbd", "osd", "profile rbd pool=vms, profile rbd pool=images"),
}


def require_ceph() -> dict[str, str]:
    """``{name: path}`` of the Ceph binaries; skip (fail under ``CI=true``) when one is missing."""
    found = {name: find_binary(name) for name in CEPH_BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        give_up(
            f"required executable(s) {', '.join(missing)} not found (Debian: apt-get install"
            f" --no-install-recommends {DEBIAN_PACKAGES}; or run scripts/test as root)"
        )
    return {name: str(path) for name, path in found.items()}


def _free_port() -> int:
    port = get_port(None)
    assert isinstance(port, int)
    return port


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_conf(directory: Path, fsid: str, port: int) -> Path:
    """ceph.conf of the cluster in ``directory``; every file of it stays in there."""
    conf = directory / "ceph.conf"
    conf.write_text(
        f"""[global]
fsid = {fsid}
# A port of our own, messenger v1 only: no collision with other sessions on 6789/3300.
mon host = v1:127.0.0.1:{port}
ms bind msgr2 = false
ms bind ipv6 = false
# A port taken meanwhile: the mon exits after one try (start_ceph retries on another
# port) instead of retrying the bind 3 times 5 s apart. (0 fails every bind: EPERM.)
ms bind retry count = 1
ms bind retry delay = 1
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
# As /etc/ceph/$cluster.$name.keyring on a controller: `--id glance` finds its key.
keyring = {directory}/$cluster.$name.keyring
run dir = {directory}/run
pid file = {directory}/run/$name.pid
# $pid: a plain $name.asok collides for every concurrent client (gotcha 2).
admin socket = {directory}/run/$name.$pid.asok
log file = {directory}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
mon data avail crit = 0
client mount timeout = 30

[mon]
# Each mon write otherwise waits for the 1 s paxos proposal interval:
# 14 s start-up instead of 7, and `rbd pool init` takes 3 s.
paxos propose interval = 0.05
paxos min wait = 0.01
mon warn on insecure global id reclaim allowed = false

[mon.a]
mon data = {directory}/mon
keyring = {directory}/mon/keyring
# Without it the mon is not in its own monmap and binds 3300/6789.
public addr = v1:127.0.0.1:{port}

[osd.0]
osd data = {directory}/osd
keyring = {directory}/osd/keyring
osd objectstore = memstore
memstore device bytes = 4294967296
osd class load list = *
osd class default list = *
# A client killed while it held an image open (the import cut short, the kill tests) keeps
# its watch until this expires: `rbd rm` of that image waits for it (default 30 s).
osd client watch timeout = 5
"""
    )
    return conf


@dataclass
class CephCluster:
    """A running single-node cluster (see :func:`start_ceph`).

    ``conf_path`` (ceph.conf, for ``--conf``), ``fsid``, ``mon_addr``
    (``127.0.0.1:PORT``), ``directory``, ``startup_seconds`` and ``steps``
    (seconds per start-up step), ``users`` (client names with keyrings).
    """

    directory: Path
    conf_path: Path
    fsid: str
    mon_addr: str
    binaries: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    users: tuple[str, ...] = ()

    def keyring(self, user: str) -> Path:
        """Path of ``client.<user>``'s keyring (``ceph.client.<user>.keyring``)."""
        return self.directory / f"ceph.client.{user}.keyring"

    def key(self, user: str) -> str:
        """The secret of ``client.<user>``: for tests that check it is never printed."""
        for line in self.keyring(user).read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "key":
                return value.strip()
        raise AssertionError(f"no key in {self.keyring(user)}")

    def run(
        self,
        tool: str,
        *args: str,
        user: str = "admin",
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """``<tool> --conf <conf> --id <user> ARGS`` (``tool``: ``ceph`` or ``rbd``), text output."""
        argv = [self.binaries[tool], "--conf", str(self.conf_path), "--id", user, *args]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                env={**os.environ, "LC_ALL": "C"},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(argv)} did not finish within {timeout} s") from None
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
            )
        return result

    def json(self, tool: str, *args: str, user: str = "admin") -> Any:
        """``run(tool, *args, "--format", "json")`` parsed."""
        return json.loads(self.run(tool, *args, "--format", "json", user=user).stdout or "null")

    def rbd_images(self, pool: str) -> list[str]:
        """``rbd ls <pool>``, sorted."""
        return sorted(self.json("rbd", "ls", "--pool", pool))

    def trash(self, pool: str) -> list[dict[str, Any]]:
        """``rbd trash ls --all --long <pool>`` (json): ``[{"id", "name", "source", ...}]``."""
        return list(self.json("rbd", "trash", "ls", "--all", "--long", "--pool", pool))

    def listing(self) -> dict[str, Any]:
        """Every image, snapshot and trash entry of both pools: compare before/after a refusal."""
        out: dict[str, Any] = {}
        for pool in POOLS:
            for name in self.rbd_images(pool):
                snaps = self.json("rbd", "snap", "ls", "--all", "--pool", pool, "--image", name)
                out[f"{pool}/{name}"] = sorted(
                    (s["name"], s["size"], s.get("protected"), s.get("namespace", {}).get("type"))
                    for s in snaps
                )
            out[f"trash:{pool}"] = sorted(
                (t["id"], t["name"], t["source"]) for t in self.trash(pool)
            )
        return out

    def add_user(self, name: str, caps: Sequence[str]) -> Path:
        """``ceph auth get-or-create client.<name> CAPS`` into its keyring; returns the path."""
        keyring = self.keyring(name)
        self.run("ceph", "auth", "get-or-create", f"client.{name}", *caps, "-o", str(keyring))
        keyring.chmod(0o600)
        self.users = (*self.users, name)
        return keyring

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each daemon, KiB (``VmRSS``)."""
        return {name: _rss_kib(proc.pid) for name, proc in self.processes.items()}

    def stop(self) -> None:
        """SIGTERM to the OSD, then the mon (by the pids started here); SIGKILL after 15 s."""
        for name in ("osd.0", "mon.a"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                sys.stderr.write(f"\n{name} (pid {proc.pid}) ignored SIGTERM for 15 s: SIGKILL\n")
                proc.kill()
                proc.wait(15)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the mon's and the osd's logs."""
        return log_tails([self.directory / "log" / f"{n}.log" for n in ("mon.a", "osd.0")], lines)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (Linux ``PR_SET_PDEATHSIG``).

    A pytest killed with SIGKILL cannot stop its daemons; without this a memstore
    OSD would keep its data in RAM on a machine five agents share.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def _daemon(cluster: CephCluster, name: str, argv: list[str]) -> None:
    """Start ``argv`` (a daemon in the foreground, ``-f``) and remember its process."""
    with open(cluster.directory / "log" / f"{name}.out", "ab") as out:
        cluster.processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C", "CEPH_CONF": str(cluster.conf_path)},
            preexec_fn=_die_with_parent,
        )  # fmt: skip


def _wait(cluster: CephCluster, what: str, ready: Callable[[], bool], deadline: float) -> None:
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                    + cluster.log_tail()
                )
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}\n" + cluster.log_tail())


def _start_once(directory: Path, binaries: dict[str, str]) -> CephCluster:
    for sub in ("run", "log", "mon", "osd"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    port = _free_port()
    conf = write_conf(directory, fsid, port)
    cluster = CephCluster(directory, conf, fsid, f"127.0.0.1:{port}", binaries)
    try:
        _bootstrap(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _bootstrap(cluster: CephCluster) -> None:
    directory, conf, binaries = cluster.directory, cluster.conf_path, cluster.binaries
    started = time.perf_counter()
    deadline = time.monotonic() + START_TIMEOUT_S

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        cluster.steps[name] = round(now - since, 3)
        return now

    def tool(*argv: str) -> None:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr[-2000:]}")

    authtool = binaries["ceph-authtool"]
    mon_keyring = directory / "ceph.mon.keyring"
    admin_keyring = cluster.keyring("admin")
    tool(authtool, "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
         "--cap", "mon", "allow *")  # fmt: skip
    tool(authtool, "--create-keyring", str(admin_keyring), "--gen-key", "-n", "client.admin",
         "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *")  # fmt: skip
    tool(authtool, str(mon_keyring), "--import-keyring", str(admin_keyring))
    admin_keyring.chmod(0o600)
    t = step("keys", started)
    tool(binaries["ceph-mon"], "--conf", str(conf), "--id", "a", "--mkfs", "--keyring",
         str(mon_keyring))  # fmt: skip
    _daemon(cluster, "mon.a", [binaries["ceph-mon"], "-f", "--conf", str(conf), "--id", "a"])

    def mon_up() -> bool:
        probe = cluster.run("ceph", "--connect-timeout", "5", "mon", "stat", check=False)
        return probe.returncode == 0

    _wait(cluster, "mon.a to answer", mon_up, deadline)
    osd_id = cluster.run("ceph", "osd", "create").stdout.strip()
    if osd_id != "0":
        raise RuntimeError(f"ceph osd create gave id {osd_id!r}, expected 0")
    t = step("mon", t)
    cluster.run("ceph", "auth", "get-or-create", "osd.0", "mon", "allow profile osd", "osd",
                "allow *", "-o", str(directory / "osd" / "keyring"))  # fmt: skip
    cluster.run("ceph", "osd", "crush", "add", "osd.0", "1", "root=default")
    # --no-mon-config: mkfs must not ask the mon for its config (gotcha 6).
    tool(binaries["ceph-osd"], "--conf", str(conf), "--id", "0", "--mkfs", "--no-mon-config")
    _daemon(cluster, "osd.0", [binaries["ceph-osd"], "-f", "--conf", str(conf), "--id", "0"])

    def osd_up() -> bool:
        stat = cluster.json("ceph", "osd", "stat")
        return bool(stat.get("num_up_osds") == 1)

    _wait(cluster, "osd.0 up", osd_up, deadline)
    t = step("osd", t)
    for pool in POOLS:
        cluster.run("ceph", "osd", "pool", "create", pool, "8", "8")
        cluster.run("rbd", "pool", "init", pool)
    t = step("pools", t)
    for name, caps in USERS.items():
        cluster.add_user(name, caps)
    step("users", t)
    cluster.startup_seconds = round(time.perf_counter() - started, 3)


def start_ceph(directory: Path) -> CephCluster:
    """A running cluster with its files in ``directory``.

    Tried up to 3 times, each in a folder of its own, for a free port that
    someone else took between the check and the mon's bind. A failed try stops
    the daemons it started (by their pids) before the next one.
    """
    binaries = require_ceph()
    errors: list[str] = []
    for attempt in range(3):
        try:
            return _start_once(directory / f"try{attempt}", binaries)
        except RuntimeError as exc:
            errors.append(str(exc))
    raise RuntimeError(f"could not start a Ceph cluster in {directory}:\n" + "\n".join(errors))


# --- Nova-style clones ------------------------------------------------------------------------


def nova_clone(
    cluster: CephCluster, image_id: str, instance_uuid: str, clone_format: int, *,
    guest_writes: bool = True,
) -> str:  # fmt: skip
    """``rbd clone images/<image_id>@snap vms/<instance_uuid>_disk`` in clone format 1 or 2.

    As Nova's ``RBDDriver.clone`` (nova/storage/rbd_utils.py) does it with the
    ``rbd_default_clone_format`` of its own ceph.conf, as ``client.nova``. With
    ``guest_writes`` 1 MiB is then written into the child (``rbd bench``), as a
    booted guest would: the child's bytes are no longer the image's. Returns the
    child's name.
    """
    if clone_format not in (1, 2):
        raise ValueError(f"clone format must be 1 or 2, not {clone_format}")
    child = f"{instance_uuid}_disk"
    cluster.run(
        "rbd", "clone", f"--rbd-default-clone-format={clone_format}",
        "--pool", "images", "--image", image_id, "--snap", "snap",
        "--dest-pool", "vms", "--dest", child, user="nova",
    )  # fmt: skip
    if guest_writes:
        cluster.run(
            "rbd", "bench", "--io-type", "write", "--io-size", "64K", "--io-total", "1M",
            "--pool", "vms", "--image", child, user="nova",
        )  # fmt: skip
    return child


# --- glance_store's own RBD driver ------------------------------------------------------------

GLANCE_RBD_VENV_ENV = "RECOVER_GLANCE_RBD_VENV"
GLANCE_RBD_REQUIREMENTS = ("glance==33.*", "gunicorn", "pymysql")
"""The Glance tier's requirements: the same venv can also serve a Glance API whose store is RBD."""
DRIVER_SCRIPT = Path(__file__).with_name("glance_store_rbd.py")
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")


def glance_rbd_venv_path() -> Path:
    """``$RECOVER_GLANCE_RBD_VENV``; else ``glance-rbd-venv`` beside ``$RECOVER_GLANCE_VENV``.

    Else ``.cache/glance-rbd-venv``. A venv of its own: the Glance tier's venv is
    left exactly as it is.
    """
    explicit = os.environ.get(GLANCE_RBD_VENV_ENV)
    if explicit:
        return Path(explicit)
    beside = os.environ.get("RECOVER_GLANCE_VENV")
    if beside:
        return Path(beside).parent / "glance-rbd-venv"
    return REPO_ROOT / ".cache" / "glance-rbd-venv"


def _bindings(python: Path) -> list[Path]:
    """Debian's ``rados``/``rbd`` extension modules for ``python``'s ABI (ceph-rbd.md §4)."""
    suffix = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return [DIST_PACKAGES / f"{name}{suffix}" for name in ("rados", "rbd")]


def _link_bindings(python: Path) -> bool:
    """Symlink Debian's rados/rbd modules into the venv (no PyPI wheel exists); False if absent."""
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    for so in _bindings(python):
        if not so.exists():
            return False
        link = site / so.name
        if not link.exists():
            link.symlink_to(so)
    return True


def _glance_rbd_works(python: Path) -> bool:
    # cached_venv calls this before and after pip: linking here makes a fresh venv whole.
    if not python.exists() or not _link_bindings(python):
        return False
    probe = subprocess.run(
        [str(python), "-c",
         "import rados, rbd, glance_store._drivers.rbd, glance.common.wsgi_app, gunicorn, pymysql"],
        capture_output=True, check=False,
    )  # fmt: skip
    return probe.returncode == 0 and (python.parent / "gunicorn").exists()


def glance_rbd_venv() -> tuple[Path, float | None]:
    """``(venv, seconds to build or None)``: glance 33 + glance_store + Debian's rados/rbd.

    Needs a CPython whose minor version is Debian's (3.11 on Debian 12): the two
    extension modules are built for it. Skips (fails under ``CI=true``) otherwise.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wanted = [
        DIST_PACKAGES / f"{n}{sysconfig.get_config_var('EXT_SUFFIX')}" for n in ("rados", "rbd")
    ]
    if not all(p.exists() for p in wanted):
        give_up(
            f"Debian's rados/rbd bindings for Python {version} are missing ({wanted[0]}):"
            " apt-get install python3-rados python3-rbd, and run the tests with Debian's"
            " Python minor version"
        )
    return cached_venv(glance_rbd_venv_path(), GLANCE_RBD_REQUIREMENTS, _glance_rbd_works)


class GlanceStoreError(Exception):
    """glance_store raised ``kind`` (e.g. ``InUseByStore``, ``NotFound``) with ``message``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class GlanceStoreRbd:
    """glance_store's RBD driver, run in the glance-rbd venv as Glance runs it.

    ``add`` = ``add_to_backend_with_multihash`` (the upload path of Glance),
    ``delete`` = ``delete_from_backend`` (Glance's image delete), ``get`` =
    ``get_from_backend`` (download). Configured as in ceph-rbd.md §4:
    ``rbd_store_pool``, ``rbd_store_user`` (always set: gotcha 5),
    ``rbd_store_ceph_conf``, ``rbd_store_chunk_size = 8``.
    """

    venv: Path
    cluster: CephCluster
    pool: str = "images"
    user: str = "glance"
    chunk_size_mb: int = 8
    hashing_algorithm: str = "sha512"

    def _call(self, request: dict[str, Any], stdin: bytes | None = None) -> dict[str, Any]:
        config = {
            "rbd_store_pool": self.pool,
            "rbd_store_user": self.user,
            "rbd_store_ceph_conf": str(self.cluster.conf_path),
            "rbd_store_chunk_size": self.chunk_size_mb,
        }
        result = subprocess.run(
            [str(self.venv / "bin" / "python"), str(DRIVER_SCRIPT),
             json.dumps({**request, "config": config})],
            input=stdin or b"", capture_output=True, timeout=300, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"{DRIVER_SCRIPT.name} {request['op']} failed (exit {result.returncode}):\n"
                + result.stderr.decode(errors="replace")[-3000:]
            )
        answer: dict[str, Any] = json.loads(result.stdout)
        if "error" in answer:
            raise GlanceStoreError(answer["error"], answer["message"])
        return answer

    def add(self, image_id: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` as image ``image_id``: ``{location, size, checksum, multihash, metadata}``."""
        return self._call(
            {"op": "add", "image_id": image_id, "size": len(data),
             "hashing_algorithm": self.hashing_algorithm},
            data,
        )  # fmt: skip

    def delete(self, location: str) -> None:
        """Delete as Glance does; :class:`GlanceStoreError` (``InUseByStore`` ...) when it refuses."""
        self._call({"op": "delete", "location": location})

    def get(self, location: str) -> dict[str, Any]:
        """Read the image back through the driver: ``{size, md5, sha512}``."""
        return self._call({"op": "get", "location": location})


def hashes(data: bytes) -> tuple[str, str]:
    """``(md5, sha512)`` hex digests: what Glance stores as checksum and os_hash_value."""
    return hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()
