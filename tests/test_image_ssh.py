"""`recover image --from-host`: the compute node is a real sshd on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.db.engine import open_database
from recover.demo import SNAPSHOT
from recover.inventory import base_file_name
from recover.simulate import Instance, create_instance
from tests import clouds
from tests.clouds import MakeDb
from tests.helpers import REPO_ROOT, process_env, read_pty, require_binary
from tests.images import Scenario, digests, incident_image, qemu_info_format
from tests.netdelay import LatencyProxy
from tests.sshd import HostAlias, SshdServer
from tests.test_hostile import RECOVER
from tests.test_image import assert_recovered, store_listing

MARKER = Path("/tmp/recover-test-pwned")


@pytest.fixture(autouse=True)
def _tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_env: Any) -> None:
    require_binary("qemu-img")
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))
    MARKER.unlink(missing_ok=True)


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def image_bytes(counting_ssh: Any) -> list[int]:
    """Bytes of the calls that carried image data (the rest are stat/df/qemu-img info replies)."""
    calls = counting_ssh.calls()
    small = [c["bytes"] for c in calls if c["bytes"] < 4096]
    assert sum(small) < 64 * 1024
    return [c["bytes"] for c in calls if c["bytes"] >= 4096]


def from_host(scenario: Scenario, host: str | None, *more: str) -> list[str]:
    option = ["--from-host"] if host is None else [f"--from-host={host}"]
    return scenario.args(
        "image", SNAPSHOT, *option, "--instances-path", str(scenario.instances_path), *more
    )


@pytest.mark.parametrize("schema", [clouds.LEGACY_GLANCE, clouds.MODERN_GLANCE])
def test_incident_over_ssh_converts_on_the_node_and_sends_only_the_qcow2(
    make_db: MakeDb, tmp_path: Path, schema: str, counting_ssh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = incident_image(make_db, tmp_path, schema)
    monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)
    result = run(from_host(scenario, "compute-12", "--yes"))
    assert result.exit_code == 0, result.stderr
    assert "on compute-12 (ssh) (raw -> qcow2)" in result.stdout
    assert assert_recovered(scenario) == scenario.original
    # Only the compact qcow2 crossed the network, once; the raw _base file stayed put.
    assert image_bytes(counting_ssh) == [scenario.original[2]]
    assert scenario.base.stat().st_size > 50 * scenario.original[2]
    # The temporary file next to _base was removed.
    assert sorted(p.name for p in scenario.base.parent.iterdir()) == [scenario.base.name]


def test_node_without_qemu_img_sends_raw_once_and_converts_here(
    make_db: MakeDb, tmp_path: Path, counting_ssh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)
    result = run(from_host(scenario, "compute-noqemu", "--yes"))
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario) == scenario.original
    assert image_bytes(counting_ssh) == [scenario.base.stat().st_size]  # one pass, raw


def test_raw_row_is_streamed_once(
    make_db: MakeDb, tmp_path: Path, counting_ssh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)
    result = run(from_host(scenario, "compute-12", "--yes"))
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario, "raw") == digests(scenario.base)
    assert image_bytes(counting_ssh) == [scenario.base.stat().st_size]


def test_from_host_without_value_tries_the_inventory_hosts(make_db: MakeDb, tmp_path: Path) -> None:
    """Hosts come from the Nova database, so they are untrusted: a hostile one never reaches a shell."""
    scenario = incident_image(make_db, tmp_path, clouds.LEGACY_GLANCE)
    nova_url = make_db(clouds.LEGACY_NOVA, "s_nova")
    nova = open_database(nova_url, "nova")
    hostile = (f"-oProxyCommand=touch {MARKER}", f"compute-1;touch {MARKER}")
    with nova.engine.begin() as conn:
        for n, host in enumerate((*hostile, "compute-3", "compute-12")):
            create_instance(conn, nova, Instance(
                uuid=f"90000000-0000-4000-8000-00000000000{n}", flavor=clouds.SMALL, flavor_id=1,
                image_ref=SNAPSHOT, host=host,
            ))  # fmt: skip
    nova.dispose()
    # compute-3 answers but has no _base file there; compute-12 has it.
    empty = tmp_path / "empty-instances"
    (empty / "_base").mkdir(parents=True)
    result = run(["--nova-db", nova_url, *from_host(scenario, None, "--yes")])
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario) == scenario.original
    assert not MARKER.exists()


def test_unreachable_host_changes_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(from_host(scenario, "compute-down", "--yes"))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: cannot reach compute-down over ssh: ssh: connect to host 127.0.0.1 port "
    )
    assert len(result.stderr.splitlines()) == 1
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


def test_missing_base_file_changes_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    scenario.base.unlink()
    before = mariadb_server.checksum("i_glance")
    result = run(from_host(scenario, "compute-12", "--yes"))
    assert result.exit_code == 1
    # Both names nova may have given it: sha1 of the id, and of the id in upper case (item 6).
    upper = scenario.base.with_name(base_file_name(SNAPSHOT.upper()))
    assert result.stderr == (
        f"Error: no compute node has the _base file: compute-12: no {scenario.base} nor {upper}\n"
    )
    assert mariadb_server.checksum("i_glance") == before


@pytest.mark.parametrize(
    "host",
    [
        "compute-1;touch /tmp/recover-test-pwned",
        "$(touch /tmp/recover-test-pwned)",
    ],
)
def test_hostile_host_names_never_reach_a_shell(make_db: MakeDb, tmp_path: Path, host: str) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    result = run(from_host(scenario, host, "--yes"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: host name {host!r} is not a valid host name\n"
    assert not MARKER.exists()


def test_kill_during_ssh_transfer_then_rerun(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, sshd_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    before = mariadb_server.checksum("i_glance")
    recover = str(Path(sys.executable).with_name("recover"))
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "RECOVER_STATE_DIR": str(tmp_path / "state"),
        "RECOVER_SSH_COMMAND": sshd_server.ssh_command,
        "TMPDIR": str(tmp_path / "tmp"),  # the killed run's ssh socket directory stays there
    }
    proc = subprocess.Popen([recover, *from_host(scenario, "compute-12", "--yes")], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    prefix = f".recover-tmp-{SNAPSHOT}-"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        n.startswith(prefix) for n in os.listdir(scenario.store)
    ):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # recover and its ssh child
    proc.wait(10)
    assert mariadb_server.checksum("i_glance") == before
    assert not (scenario.store / SNAPSHOT).exists()
    assert len([n for n in os.listdir(scenario.store) if n.startswith(".recover-tmp-")]) <= 1
    result = run(from_host(scenario, "compute-12", "--yes"))
    assert result.exit_code == 0, result.stderr
    assert [n for n in os.listdir(scenario.store) if n.startswith(".recover-tmp-")] == []
    assert assert_recovered(scenario, "raw") == digests(scenario.base)
    assert qemu_info_format(scenario.store / SNAPSHOT) == "raw"


def test_option_looking_host_on_the_command_line_is_a_usage_error(
    make_db: MakeDb, tmp_path: Path
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    result = run(from_host(scenario, f"-oProxyCommand=touch {MARKER}", "--yes"))
    assert result.exit_code == 2
    assert not MARKER.exists()


@pytest.mark.parametrize("hosts_from_nova", [True, False], ids=["from-nova", "named-host"])
def test_base_file_of_an_upper_case_image_ref_is_found(
    make_db: MakeDb, tmp_path: Path, hosts_from_nova: bool
) -> None:
    """Nova keeps image_ref as the client sent it and names _base after that spelling
    (``get_cache_fname(instance.image_ref)``): sha1 of the upper-case id here. The hosts come
    from instances whatever their spelling, and both names are tried on each host."""
    scenario = incident_image(make_db, tmp_path, clouds.LEGACY_GLANCE)
    upper_base = scenario.base.with_name(base_file_name(SNAPSHOT.upper()))
    scenario.base.rename(upper_base)
    args = from_host(scenario, None if hosts_from_nova else "compute-12", "--yes")
    if hosts_from_nova:
        nova_url = make_db(clouds.LEGACY_NOVA, "u_nova")
        nova = open_database(nova_url, "nova")
        with nova.engine.begin() as conn:
            create_instance(conn, nova, Instance(
                uuid="92000000-0000-4000-8000-000000000001", flavor=clouds.SMALL, flavor_id=1,
                image_ref=SNAPSHOT.upper(), host="compute-12",
            ))  # fmt: skip
        nova.dispose()
        args = ["--nova-db", nova_url, *args]
    result = run(args)
    assert result.exit_code == 0, result.stderr
    assert f"rebuild from {upper_base} on compute-12 (ssh) (raw -> qcow2)" in result.stdout
    assert assert_recovered(scenario) == scenario.original


@pytest.mark.parametrize(
    ("host", "where", "sent"),
    [
        ("compute-12", "on compute-12 (ssh)", []),  # qemu-img info there: refused before a copy
        ("compute-noqemu", "from compute-noqemu (ssh)", [40 << 20]),  # checked on arrival
    ],
)
def test_partial_base_on_a_compute_node_is_refused(
    make_db: MakeDb,
    tmp_path: Path,
    mariadb_server: Any,
    counting_ssh: Any,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    where: str,
    sent: list[int],
) -> None:
    """A _base file nova (or an scp) has not finished writing: 40 of the image's 64 MiB."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    os.truncate(scenario.base, 40 << 20)
    monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(from_host(scenario, host, "--yes"))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: {scenario.base} {where} has a virtual size of 41943040 bytes, but image "
        f"{SNAPSHOT} had 67108864 (its row's virtual_size): a partial copy (an scp or a download "
        "still running?), not this image's data; use a complete copy of the _base file; "
        "--accept-new-bytes stores these bytes anyway, reported as NEW data\n"
    )
    assert image_bytes(counting_ssh) == sent
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing
    assert sorted(p.name for p in scenario.base.parent.iterdir()) == [scenario.base.name]


# --- one ssh connection per recovery ------------------------------------------------------------


@contextlib.contextmanager
def counted(sshd_server: SshdServer, like: str) -> Iterator[tuple[str, LatencyProxy]]:
    """An alias reaching the test sshd (with ``like``'s key) through a relay that counts the
    TCP connections: every one of them is a connection sshd accepts."""
    with LatencyProxy(("127.0.0.1", sshd_server.port), 0) as proxy:
        alias = f"counted-{like}"
        sshd_server.hosts[alias] = HostAlias(proxy.port, sshd_server.hosts[like].identity)
        sshd_server.write_client_config()
        yield alias, proxy


@pytest.mark.parametrize(
    ("like", "disk_format", "path"),
    [
        ("compute-12", "qcow2", "stat, qemu-img info, df, convert there, stream, rm"),
        ("compute-12", "raw", "stat, qemu-img info, stream"),
        ("compute-noqemu", "qcow2", "stat, no qemu-img, stream, convert here"),
    ],
)
def test_every_step_of_a_recovery_shares_one_ssh_connection(
    make_db: MakeDb, tmp_path: Path, sshd_server: SshdServer, own_tmp: Path,
    like: str, disk_format: str, path: str,
) -> None:  # fmt: skip
    """Item 5 of issue 13: one TCP connection reaches sshd for the whole recovery (the old
    transport made one per step: eight for the conversion on the node, four for a raw
    copy), and nothing is left locally or on the node."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format=disk_format)
    with counted(sshd_server, like) as (alias, proxy):
        result = run(from_host(scenario, alias, "--yes"))
        assert result.exit_code == 0, result.stderr
        assert proxy.accepted == 1, path
    expected = scenario.original if disk_format == "qcow2" else digests(scenario.base)
    assert assert_recovered(scenario, disk_format) == expected
    assert sorted(p.name for p in scenario.base.parent.iterdir()) == [scenario.base.name]
    assert list(own_tmp.iterdir()) == []  # the control socket's directory is gone


def test_a_refused_recovery_also_uses_one_connection_and_leaves_nothing(
    make_db: MakeDb, tmp_path: Path, sshd_server: SshdServer, own_tmp: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    os.truncate(scenario.base, 40 << 20)  # a partial copy: refused after qemu-img info
    before = mariadb_server.checksum("i_glance")
    with counted(sshd_server, "compute-12") as (alias, proxy):
        result = run(from_host(scenario, alias, "--yes"))
        assert result.exit_code == 1
        assert "has a virtual size of 41943040 bytes" in result.stderr
        assert proxy.accepted == 1
    assert mariadb_server.checksum("i_glance") == before
    assert list(own_tmp.iterdir()) == []


def test_options_on_recover_ssh_command_still_apply_with_one_connection(
    make_db: MakeDb, tmp_path: Path, sshd_server: SshdServer, own_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The operator's own -o options come first on every ssh command line (ssh keeps the
    first value): a port through them, and ControlMaster/ControlPath settings of theirs that
    -M/-S override for this run's private master."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    with counted(sshd_server, "compute-12") as (_, proxy):
        command = (
            f"{sshd_server.ssh_command} -o Port={proxy.port} -o ControlMaster=no"
            " -o ControlPath=none -o Ciphers=aes256-ctr"
        )
        monkeypatch.setenv("RECOVER_SSH_COMMAND", command)
        result = run(from_host(scenario, "compute-1", "--yes"))  # compute-1's own port unused
        assert result.exit_code == 0, result.stderr
        assert proxy.accepted == 1
    assert assert_recovered(scenario) == scenario.original
    assert list(own_tmp.iterdir()) == []


# --- progress on a terminal ----------------------------------------------------------------------


def _recover_with_stderr_on(
    args: list[str], env: dict[str, str], terminal: bool
) -> tuple[int, str, str]:
    """Run ``recover``; stdout a pipe, stderr a real pty (``os.openpty``) or a pipe."""
    if not terminal:
        done = subprocess.run([RECOVER, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # the pty's buffer is small: read it while recover runs
        chunks.append(read_pty(master))

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.Popen([RECOVER, *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave)  # fmt: skip
        os.close(slave)
        out, _ = proc.communicate(timeout=120)
    finally:
        reader.join(30)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_stderr_only_when_it_is_a_terminal(
    make_db: MakeDb, tmp_path: Path, sshd_server: SshdServer
) -> None:
    """Item 6 of issue 13: click's progress bar, one at a time, on a terminal's stderr; on a
    pipe not a byte of it; stdout the same report either way."""
    runs = {}
    for terminal in (True, False):
        root = tmp_path / ("tty" if terminal else "pipe")
        scenario = incident_image(make_db, root, clouds.MODERN_GLANCE, name="p_glance")
        env = {**process_env(root), "RECOVER_SSH_COMMAND": sshd_server.ssh_command}
        code, out, err = _recover_with_stderr_on(
            from_host(scenario, "compute-12", "--yes"), env, terminal
        )
        assert code == 0, err
        assert assert_recovered(scenario) == scenario.original
        out = re.sub(r"\d{8}T\d{12}Z", "TIME", out.replace(str(root), "ROOT"))
        runs[terminal] = (out, err)
    (tty_out, tty_err), (pipe_out, pipe_err) = runs[True], runs[False]
    assert pipe_err.startswith("Committed; journal ") and pipe_err.count("\n") == 1
    assert "\r" not in pipe_err and "[#" not in pipe_err and "copying" not in pipe_err
    assert tty_out == pipe_out and "\r" not in tty_out and "[#" not in tty_out
    # The remote conversion (a bar of unknown length), then the copy, to 100 %.
    assert "converting to qcow2 on compute-12 (ssh)" in tty_err
    size = f"{scenario.original[2] / (1 << 20):.1f}"
    plain = re.sub(r"\x1b\[\?25[lh]", "", tty_err)  # click hides the cursor meanwhile
    assert re.search(
        rf"\rcopying from compute-12 \(ssh\)  \[-+\]    0%.*"
        rf"\rcopying from compute-12 \(ssh\)  \[#+\]  100%  {size}/{size} MiB\r\n"
        r"Committed; journal ",
        plain,
    ), tty_err


def test_node_without_qemu_img_and_a_qcow2_base_keeps_it_byte_for_byte(
    make_db: MakeDb, tmp_path: Path, counting_ssh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nova with force_raw_images=False keeps a qcow2 _base: for a qcow2 row it is the image
    already. Its first bytes (qcow2's magic) say so, so it is hashed as it arrives, once."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    shutil.copyfile(tmp_path / "disks" / "snapshot.qcow2", scenario.base)
    monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)
    result = run(from_host(scenario, "compute-noqemu", "--yes"))
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario) == scenario.original
    assert image_bytes(counting_ssh) == [scenario.original[2]]
