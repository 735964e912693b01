"""`recover inventory --probe-hosts` and `recover image --from-host` without a value
(issue 13, items 1 and 2), against real compute nodes: one sshd each, in a mount
namespace of its own, each seeing its own /var/lib/nova/instances and /etc/nova
(tests/compute_nodes.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.errors import RecoverError
from recover.inventory import base_file_name
from recover.probe import MAX_OUTPUT, _run_bounded, parse
from tests.clouds import Cloud, MakeDb
from tests.compute_nodes import (
    INSTANCES,
    NodeFiles,
    data,
    raw_image,
    small_cloud,
    start_nodes,
    stop_nodes,
    t,
)
from tests.netdelay import BlackHole
from tests.sshd import DOWN_HOST, ComputeNode, SshdServer, start_sshd, write_executable

D = "d0000000-0000-4000-8000-00000000000d"  # deleted; instances on every host
S = "5a000000-0000-4000-8000-0000000000a5"  # the deleted shelve snapshot VM2 was unshelved from
LIVE = "a0000000-0000-4000-8000-00000000000a"
VM1 = "10000000-0000-4000-8000-000000000001"  # compute-1, disk on _base/sha1(D)
VM2 = "10000000-0000-4000-8000-000000000002"  # compute-2, image_ref D, disk on _base/sha1(S)
VM3 = "10000000-0000-4000-8000-000000000003"  # compute-down
VM4 = "10000000-0000-4000-8000-000000000004"  # compute-3, no disk there
VM5 = "10000000-0000-4000-8000-000000000005"  # compute-1, a live image: not probed
D_DATA = data(1, 1024 * 1024)
S_DATA = data(2, 512 * 1024)
SHA_D, SHA_S, SHA_LIVE = base_file_name(D), base_file_name(S), base_file_name(LIVE)
T1, T2, T3, T4 = (t("2026-11-20 10:00:00"), t("2026-11-25 08:30:00"), t("2026-11-26 07:00:00"),
                  t("2026-11-27 06:00:00"))  # fmt: skip
SECRET = "N0vaDbS3cret"

NODES = {
    "compute-1": NodeFiles(
        base={SHA_D: (D_DATA, T1), SHA_LIVE: (data(3, 4096), T3)},
        disks={VM1: SHA_D, VM5: SHA_LIVE},
        nova_conf=(
            f"[DEFAULT]\ninstances_path = {INSTANCES}\n"
            "remove_unused_original_minimum_age_seconds = 99\n"
            f"[database]\nconnection = mysql+pymysql://nova:{SECRET}@db/nova\n"
            "[image_cache]\nremove_unused_original_minimum_age_seconds = 3600\n"
        ),
    ),
    "compute-2": NodeFiles(
        base={SHA_D: (D_DATA, T2), SHA_S: (S_DATA, T3)},
        disks={VM2: SHA_S},
        nova_conf="[DEFAULT]\nremove_unused_original_minimum_age_seconds = 7200\n",
    ),
    # The freshest copy of D, but a partial one (half the bytes): never the first choice.
    "compute-3": NodeFiles(base={SHA_D: (D_DATA[: 512 * 1024], T4)}),
}


@pytest.fixture(scope="module")
def probe_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """An sshd of this module's own: its compute-N aliases are remapped to the nodes."""
    server = start_sshd(tmp_path_factory.mktemp("probe-sshd"))
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Scene:
    cloud: Cloud
    server: SshdServer
    nodes: list[ComputeNode]


@pytest.fixture
def scene(
    make_db: MakeDb, tmp_path: Path, probe_sshd: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Scene]:
    store = tmp_path / "store"
    store.mkdir()
    cloud = small_cloud(
        make_db, store,
        images=[(raw_image(D, "centos-7-golden", D_DATA, store), datetime(2026, 10, 20)),
                (raw_image(S, "vm2-shelved", S_DATA, store), datetime(2026, 10, 21)),
                (raw_image(LIVE, "ubuntu", data(3, 4096), store), None)],
        instances={VM1: (D, "compute-1"), VM2: (D, "compute-2"), VM3: (D, DOWN_HOST),
                   VM4: (D, "compute-3"), VM5: (LIVE, "compute-1")},
    )  # fmt: skip
    nodes = start_nodes(probe_sshd, tmp_path / "nodes", NODES)
    monkeypatch.setenv("RECOVER_SSH_COMMAND", probe_sshd.ssh_command)
    try:
        yield Scene(cloud, probe_sshd, nodes)
    finally:
        stop_nodes(probe_sshd, nodes)


def inventory(scene: Scene, *more: str, fmt: str = "json") -> Result:
    return CliRunner().invoke(
        cli, scene.cloud.args("inventory", "--format", fmt, "--probe-hosts", *more)
    )


def copy(host: str, name: str, size: int, mtime: int, expires: int | None, verified: bool,
         fmt: str = "raw") -> dict[str, Any]:  # fmt: skip
    def ts(value: int) -> str:
        return (datetime(1970, 1, 1) + timedelta(seconds=value)).isoformat(sep=" ")

    return {"host": host, "path": f"{INSTANCES}/_base/{name}", "size": size, "format": fmt,
            "mtime": ts(mtime), "expires": ts(expires) if expires is not None else None,
            "verified": verified}  # fmt: skip


def chain(uuid: str, backing: str) -> list[dict[str, str]]:
    return [{"path": f"{INSTANCES}/{uuid}/disk", "format": "qcow2"},
            {"path": f"{INSTANCES}/{uuid}/../_base/{backing}", "format": "raw"}]  # fmt: skip


def test_probe_reports_copies_backing_images_and_the_host_that_is_gone(scene: Scene) -> None:
    result = inventory(scene)
    down = scene.server.down_port
    refused = f"cannot reach it over ssh: ssh: connect to host 127.0.0.1 port {down}: " \
              "Connection refused"  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert result.stderr == (
        f"Error: report is partial, not every host was probed ({DOWN_HOST}: {refused})\n"
    )
    report = json.loads(result.stdout)
    assert report["partial"] is True
    assert report["instances_path"] == INSTANCES
    assert report["hosts"] == [
        {"name": "compute-1", "ok": True, "error": None,
         "remove_unused_original_minimum_age_seconds": 3600,
         "min_age_from": "nova.conf [image_cache]"},
        {"name": "compute-2", "ok": True, "error": None,
         "remove_unused_original_minimum_age_seconds": 7200,
         "min_age_from": "nova.conf [DEFAULT]"},
        {"name": "compute-3", "ok": True, "error": None,
         "remove_unused_original_minimum_age_seconds": 86400,
         "min_age_from": "nova default (nova.conf not readable)"},
        {"name": DOWN_HOST, "ok": False, "error": refused,
         "remove_unused_original_minimum_age_seconds": None, "min_age_from": None},
    ]  # fmt: skip
    assert report["instances"] == [
        {"uuid": VM1, "cell": "cell1", "host": "compute-1", "image_ref": D,
         "backing_file": SHA_D, "backing_image": D, "backed_by_other_image": False,
         "backing_chain": chain(VM1, SHA_D), "error": None},
        {"uuid": VM2, "cell": "cell1", "host": "compute-2", "image_ref": D,
         "backing_file": SHA_S, "backing_image": S, "backed_by_other_image": True,
         "backing_chain": chain(VM2, SHA_S), "error": None},
        {"uuid": VM4, "cell": "cell1", "host": "compute-3", "image_ref": D,
         "backing_file": None, "backing_image": None, "backed_by_other_image": False,
         "backing_chain": [], "error": f"no {INSTANCES}/{VM4}/disk on the host"},
    ]  # fmt: skip
    images = {i["id"]: i for i in report["images"]}
    assert sorted(images) == [S, D]
    d, s = images[D], images[S]
    assert d["instances"] == [VM1, VM2, VM3, VM4]
    assert d["hosts"] == ["compute-1", "compute-2", "compute-3", DOWN_HOST]
    assert d["copies"] == [
        copy("compute-1", SHA_D, len(D_DATA), T1, T1 + 3600, True),
        copy("compute-2", SHA_D, len(D_DATA), T2, T2 + 7200, True),
        copy("compute-3", SHA_D, len(D_DATA) // 2, T4, T4 + 86400, False),
    ]
    # The freshest copy that passes the size rule, not the freshest of all (a partial one).
    assert d["recover"] == f"recover image {D} --from-host compute-2"
    assert d["note"] == (
        f"{INSTANCES}/_base/{SHA_D} on compute-2: the freshest verified of 3 copies found by "
        "--probe-hosts"
    )
    # The unshelve snapshot backs VM2's disk: it counts as used, so it is an orphan too.
    assert (s["status"], s["instances"], s["hosts"]) == ("deleted", [VM2], ["compute-2"])
    assert s["copies"] == [copy("compute-2", SHA_S, len(S_DATA), T3, T3 + 7200, True)]
    assert s["recover"] == f"recover image {S} --from-host compute-2"
    assert SECRET not in result.stdout + result.stderr


def test_table_names_the_host_that_is_gone_and_the_unshelved_disk(scene: Scene) -> None:
    result = inventory(scene, fmt="table")
    assert result.exit_code == 1
    out = result.stdout
    assert (
        f"  instance {VM2} on compute-2: backed by image {S} (_base/{SHA_S}), image_ref {D}\n"
    ) in out
    assert f"  {DOWN_HOST}: UNREACHABLE: cannot reach it over ssh: ssh: connect to host" in out
    assert "  compute-3: ok, unused _base files removed after 86400 s (nova default" in out
    assert "Summary: 0 flavor(s), 2 image(s), 4 instance(s) affected; PARTIAL: some hosts" in out


def test_a_host_that_never_answers_costs_the_timeout_and_is_named(
    scene: Scene, make_db: MakeDb, tmp_path: Path
) -> None:
    hole = BlackHole()
    try:
        scene.server.add_host("compute-hang", port=hole.port)
        cloud = small_cloud(
            make_db, scene.cloud.store,
            images=[(raw_image(D, "centos", D_DATA, scene.cloud.store), datetime(2026, 10, 20))],
            instances={VM1: (D, "compute-1"), VM3: (D, "compute-hang")}, prefix="ph",
        )  # fmt: skip
        started = time.monotonic()
        result = CliRunner().invoke(cli, cloud.args(
            "inventory", "--format", "json", "--probe-hosts", "--host-timeout", "2"
        ))  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        hole.close()
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: report is partial, not every host was probed (compute-hang: no answer within "
        "2 s (--host-timeout))\n"
    )
    report = json.loads(result.stdout)
    assert [(h["name"], h["ok"]) for h in report["hosts"]] == [
        ("compute-1", True),
        ("compute-hang", False),
    ]
    assert report["images"][0]["copies"] == [
        copy("compute-1", SHA_D, len(D_DATA), T1, T1 + 3600, True)
    ]
    assert 2 <= elapsed < 6, elapsed


CONCURRENCY = '''\
#!{python}
"""ssh that records how many of its kind run at once (a directory of pid files)."""
import os, subprocess, sys, time
mine = os.path.join({running!r}, str(os.getpid()))
open(mine, "w").close()
with open({log!r}, "a") as log:
    log.write(f"{{len(os.listdir({running!r}))}}\\n")
time.sleep(0.3)  # long enough for the others to start, if they may
try:
    sys.exit(subprocess.call({argv!r} + sys.argv[1:]))
finally:
    os.unlink(mine)
'''


@pytest.mark.parametrize("workers", [1, 3])
def test_ssh_workers_bounds_the_connections_at_once(
    scene: Scene, make_db: MakeDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    hosts = [f"compute-w{n}" for n in range(8)]
    for host in hosts:  # eight names of compute-1's node
        scene.server.add_host(host, port=scene.nodes[0].port)
    cloud = small_cloud(
        make_db, scene.cloud.store,
        images=[(raw_image(D, "centos", D_DATA, scene.cloud.store), datetime(2026, 10, 20))],
        instances={f"20000000-0000-4000-8000-00000000000{n}": (D, h) for n, h in enumerate(hosts)},
        prefix="pw",
    )  # fmt: skip
    running, log = tmp_path / "running", tmp_path / "at-once.log"
    running.mkdir()
    wrapper = write_executable(tmp_path / "ssh", CONCURRENCY.format(
        python=sys.executable, running=str(running), log=str(log),
        argv=scene.server.ssh_argv(),
    ))  # fmt: skip
    monkeypatch.setenv("RECOVER_SSH_COMMAND", shlex.quote(str(wrapper)))
    result = CliRunner().invoke(cli, cloud.args(
        "inventory", "--format", "json", "--probe-hosts", "--ssh-workers", str(workers)
    ))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [h["name"] for h in report["hosts"] if h["ok"]] == hosts
    assert len(report["images"][0]["copies"]) == 8
    counts = [int(line) for line in log.read_text().split()]
    assert len(counts) == 8  # one connection per host
    assert max(counts) == workers
    assert os.listdir(running) == []


def test_from_host_without_a_value_takes_the_freshest_verified_copy(
    scene: Scene, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    result = CliRunner().invoke(
        cli,
        scene.cloud.args("image", D, "--from-host", "--yes", "--format", "json"),
        env={"RECOVER_STATE_DIR": str(journal)},
    )
    assert result.exit_code == 0, result.stderr
    down = scene.server.down_port
    assert result.stderr.splitlines()[0] == (
        f"Note: --from-host: chose compute-2: a verified copy ({INSTANCES}/_base/{SHA_D}, raw, "
        f"{len(D_DATA)} bytes, mtime 2026-11-25 08:30:00), the freshest of 3 host(s) holding "
        "one; then compute-1 (verified, mtime 2026-11-20 10:00:00), compute-3 (unverified, "
        f"mtime 2026-11-27 06:00:00); left out: {DOWN_HOST}: cannot reach it over ssh: ssh: "
        f"connect to host 127.0.0.1 port {down}: Connection refused"
    )
    assert (scene.cloud.store / D).read_bytes() == D_DATA
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "applied"


def test_from_host_without_a_value_says_why_no_host_will_do(
    scene: Scene, make_db: MakeDb, tmp_path: Path
) -> None:
    cloud = small_cloud(
        make_db, scene.cloud.store,
        images=[(raw_image(D, "centos", D_DATA, scene.cloud.store), datetime(2026, 10, 20))],
        instances={VM3: (D, DOWN_HOST), VM4: (D, "compute-3")}, prefix="pn",
    )  # fmt: skip
    result = CliRunner().invoke(
        cli, cloud.args("image", D, "--from-host", "--yes"),
        env={"RECOVER_STATE_DIR": str(tmp_path / "journal")},
    )  # fmt: skip
    assert result.exit_code == 1
    down = scene.server.down_port
    # compute-3's copy is the only one: tried, and refused as the partial copy it is.
    assert result.stderr.splitlines()[-1] == (
        f"Error: no compute node has the _base file: {DOWN_HOST}: cannot reach it over ssh: "
        f"ssh: connect to host 127.0.0.1 port {down}: Connection refused; compute-3: "
        f"{INSTANCES}/_base/{SHA_D} on compute-3 (ssh) has a virtual size of 524288 bytes, but "
        f"image {D} had 1048576 (the size of its raw upload): a partial copy (an scp or a "
        "download still running?), not this image's data; use a complete copy of the _base "
        "file; --accept-new-bytes stores these bytes anyway, reported as NEW data"
    )
    assert not (scene.cloud.store / D).exists()


# --- every byte a host prints is hostile ----------------------------------------------------

NAMES = {SHA_D}
UUIDS = {VM1}


def probe_output(*sections: str) -> str:
    return "\n".join(["@@recover probe 1", *sections, "@@recover end", ""])


def test_output_that_is_not_the_probes_is_refused() -> None:
    with pytest.raises(RecoverError, match="did not run the probe script"):
        parse("h", "Welcome to compute-1!\n@@recover probe 1\n", NAMES, UUIDS, INSTANCES)
    with pytest.raises(RecoverError, match="the probe's output ended early"):
        parse("h", "@@recover probe 1\n@@recover base\n", NAMES, UUIDS, INSTANCES)
    with pytest.raises(RecoverError, match=r"unexpected line: @@recover rm -rf \\x1b\[2J$"):
        parse("h", probe_output("@@recover rm -rf \x1b[2J"), NAMES, UUIDS, INSTANCES)


def test_hostile_lines_names_and_json_are_ignored_or_bounded() -> None:
    other = "f" * 40
    text = probe_output(
        "@@recover conf",
        "[image_cache]",
        "remove_unused_original_minimum_age_seconds = 12;",
        "[DEFAULT]",
        "image_cache_subdirectory_name = \x1b]0;owned\x07",
        "@@recover base",
        f"1048576 1790000000.5 {SHA_D}",
        f"99 1790000000 {SHA_D}\nforged",  # one line per file: the forged tail is no file
        f"-1 1790000000 {other}",
        f"12 99999999999999999999 {other}",
        "7 1790000000 ../../etc/passwd",
        f"@@recover info {other}",  # not asked for: ignored
        '{"format": "raw", "virtual-size": 1}',
        "@@recover rc 0",
        f"@@recover info {SHA_D}",
        '{"format": "raw\\u001b[31m", "virtual-size": 1048576}',
        "@@recover rc 0",
        f"@@recover disk {VM1}",
        json.dumps([{"filename": "/x/disk", "format": "qcow2"}] * 40),  # deeper than MAX_CHAIN
        "@@recover rc 0",
        f"@@recover disk {VM2}",  # not asked for: ignored
        "[]",
    )
    probe = parse("h", text, NAMES, UUIDS, INSTANCES)
    assert probe.ok
    assert (probe.min_age, probe.min_age_from) == (86400, "nova default")
    assert probe.warnings == [
        "h: nova.conf [image_cache] remove_unused_original_minimum_age_seconds = 12; is not "
        "an integer; nova's default assumed",
        "h: nova.conf sets the image cache directory to \\x1b]0;owned\\x07; the probe "
        "looked in _base only",
    ]
    assert probe.base == {SHA_D: (1048576, 1790000000)}
    assert probe.infos == {SHA_D: "qemu-img info failed: {\"format\": \"raw\\u001b[31m\", "
                                  "\"virtual-size\": 1048576}"}  # fmt: skip
    assert list(probe.disks) == [VM1]
    assert probe.disks[VM1].files == []
    assert probe.disks[VM1].error is not None
    assert probe.disks[VM1].error.startswith(f"qemu-img info {INSTANCES}/{VM1}/disk failed: ")
    assert len(probe.disks[VM1].error) <= 400


def test_a_host_that_prints_without_end_is_cut_at_the_bound() -> None:
    yes = shutil.which("yes")
    assert yes is not None
    started = time.monotonic()
    returncode, out, _, stopped = _run_bounded([yes, "x" * 1000], b"", 30)
    assert stopped == f"it printed more than {MAX_OUTPUT} bytes"
    assert returncode is None
    assert len(out) <= MAX_OUTPUT
    assert time.monotonic() - started < 30


def test_bad_probe_options_are_one_line_before_any_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["inventory", "--probe-hosts", "--instances-path", "x;rm"])
    assert result.exit_code == 2
    assert "Invalid value for --instances-path: must be an absolute path" in result.stderr
    monkeypatch.setenv("RECOVER_SSH_COMMAND", 'ssh "-F')
    result = runner.invoke(cli, ["inventory", "--probe-hosts"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: RECOVER_SSH_COMMAND is not a valid command line: No closing quotation\n"
    )
    result = runner.invoke(cli, ["inventory", "--probe-hosts", "--ssh-workers", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--ssh-workers': 0 is not in the range 1<=x<=256." in result.stderr
