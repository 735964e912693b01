"""``recover.images.transport`` against a real sshd on 127.0.0.1 and the real qemu-img.

The "compute nodes" (``compute-1`` ...) are this machine reached over ssh (see
``tests/sshd.py``), so a remote path is a local path and every remote result can
be compared with the local truth.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recover.errors import RecoverError
from recover.images import qemu
from recover.images.qemu import QemuImgError
from recover.images.transport import (
    AES_FIRST_CIPHERS,
    SSH_OPTIONS,
    STALE_S,
    LocalTransport,
    SshTransport,
    Transport,
    _has_aes_instructions,
)
from tests.helpers import require_binary
from tests.sshd import COMPUTE_HOSTS, CountingSsh, SshdServer, write_executable

BINARY = bytes(range(256)) * 64 + b"\x00\xff\r\n\x1a tail"
MIB = 1024 * 1024


@pytest.fixture(params=["local", "ssh", "ssh-shared"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each test runs with ``LocalTransport()``, ``SshTransport("compute-1")`` (a connection
    per call) and the same ``open()``-ed (every call over one shared connection)."""
    if request.param == "local":
        yield LocalTransport()
        return
    request.getfixturevalue("ssh_env")
    remote = SshTransport("compute-1")
    if request.param == "ssh":
        yield remote
        return
    with remote.open():
        assert remote.argv(["true"])[-3] == "--"  # nothing started before the first call
        assert remote.stat_size("/") is None
        assert remote.argv(["true"])[-5:-3] == ["-o", "ControlMaster=no"]  # really shared
        yield remote


@pytest.fixture
def qemu_img() -> str:
    return require_binary("qemu-img")


def _read_all(transport: Transport, path: str, chunk: int = 64 * 1024) -> bytes:
    parts = []
    with transport.open_read(path) as stream:
        while data := stream.read(chunk):
            parts.append(data)
    return b"".join(parts)


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _pid_ssh(directory: Path, server: SshdServer) -> tuple[str, Path]:
    """An ssh command that records its pid (the pid of ssh itself, after exec) in a file."""
    pidfile = directory / "ssh.pid"
    script = write_executable(
        directory / "pid-ssh",
        f'#!/bin/sh\necho $$ > {shlex.quote(str(pidfile))}\nexec {server.ssh_command} "$@"\n',
    )
    return shlex.quote(str(script)), pidfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- plain reads ------------------------------------------------------------------------


def test_labels(ssh_env: SshdServer) -> None:
    assert LocalTransport().label == "local"
    assert SshTransport("compute-12").label == "compute-12 (ssh)"


def test_stat_size_and_open_read_return_the_exact_bytes(
    transport: Transport, tmp_path: Path
) -> None:
    path = tmp_path / "base"
    path.write_bytes(BINARY)

    assert transport.stat_size(str(path)) == len(BINARY)
    assert _read_all(transport, str(path)) == BINARY
    assert _read_all(transport, str(path), chunk=1) == BINARY
    with transport.open_read(str(path)) as stream:
        buffer = bytearray(len(BINARY) + 10)
        assert stream.readinto(buffer) == len(BINARY)  # what digest.copy_hashing calls
        assert bytes(buffer[: len(BINARY)]) == BINARY


def test_empty_file(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert transport.stat_size(str(path)) == 0
    assert _read_all(transport, str(path)) == b""


def test_stat_size_is_none_unless_a_regular_file_is_there(
    transport: Transport, tmp_path: Path
) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link").symlink_to(tmp_path / "file")

    assert transport.stat_size(str(tmp_path / "missing")) is None
    assert transport.stat_size(str(tmp_path / "missing-dir" / "x")) is None
    assert transport.stat_size(str(tmp_path / "file" / "x")) is None  # ENOTDIR
    assert transport.stat_size(str(tmp_path / "dir")) is None
    assert transport.stat_size(str(tmp_path / "dangling")) is None
    assert transport.stat_size("/dev/null") is None
    assert transport.stat_size(str(tmp_path / "link")) == 1  # symlinks are followed


def test_every_compute_alias_reaches_the_test_sshd(ssh_env: SshdServer, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    for host in COMPUTE_HOSTS:
        assert SshTransport(host).stat_size(str(path)) == 5
    ssh_env.add_host("compute-99")
    assert SshTransport("compute-99").stat_size(str(path)) == 5


def test_open_read_of_a_missing_file_locally_fails_on_entry(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(RecoverError) as caught, LocalTransport().open_read(str(path)):
        pytest.fail("entered the block")
    assert str(caught.value) == f"cannot read {path}: No such file or directory"


def test_open_read_of_a_missing_file_over_ssh_fails_when_the_block_exits(
    ssh_env: SshdServer, tmp_path: Path
) -> None:
    path = tmp_path / "missing"
    with (
        pytest.raises(RecoverError) as caught,
        SshTransport("compute-1").open_read(str(path)) as stream,
    ):
        assert stream.read() == b""
    assert str(caught.value) == (
        f"cannot read {path} on compute-1: stat: cannot statx '{path}': No such file or directory"
    )


def test_ssh_paths_must_be_absolute_and_free_of_nul(ssh_env: SshdServer) -> None:
    remote = SshTransport("compute-1")
    with pytest.raises(RecoverError) as caught:
        remote.stat_size("var/lib/nova/instances/_base/x")
    assert str(caught.value) == "path 'var/lib/nova/instances/_base/x' is not an absolute path"
    with pytest.raises(RecoverError) as caught:
        remote.qemu_img_info("json:{}")
    assert str(caught.value) == "path 'json:{}' is not an absolute path"
    for transport in (remote, LocalTransport()):
        with pytest.raises(RecoverError) as caught:
            transport.stat_size("/tmp/a\0b")
        assert str(caught.value) == "path '/tmp/a\\x00b' is not a valid path"


# --- untrusted paths and host names -------------------------------------------------------


def _hostile_name(marker: Path) -> str:
    return (
        f"sp ace 'single' \"double\" ;semi $(touch {marker}) `touch {marker}`"
        " $HOME * ?[a] \\back & | > < !x ~ #hash\nnewline"
    )


def test_hostile_path_is_passed_literally(transport: Transport, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = _hostile_name(marker)
    real = tmp_path / name
    real.parent.mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    real.write_bytes(BINARY)
    path = f"{tmp_path}/sub/../{name}"

    assert transport.stat_size(path) == len(BINARY)
    assert _read_all(transport, path) == BINARY
    info = transport.qemu_img_info(path)
    assert (info.format, info.virtual_size) == ("raw", 16896)  # rounded up to 512-byte sectors
    assert transport.stat_size(path + "-missing") is None
    transport.remove(path)

    assert not real.exists()
    assert real.parent.is_dir()  # only that file went
    assert not marker.exists()
    assert not (Path.home() / "pwned").exists()


def test_hostile_path_of_a_missing_file_runs_nothing(transport: Transport, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = f"{tmp_path}/{_hostile_name(marker)}"
    assert transport.stat_size(path) is None
    transport.remove(path)
    with pytest.raises(QemuImgError):
        transport.qemu_img_info(path)
    with pytest.raises(RecoverError), transport.open_read(path) as stream:
        stream.read()
    assert not marker.exists()


BAD_HOSTS = [
    "compute-1; touch {marker}",
    "compute-1 && touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "-oProxyCommand=touch {marker}",
    "-compute-1",
    "root@-oProxyCommand=x",
    "compute-1\n",
    "compute-1\ntouch {marker}",
    "compute-1\r",
    "compute 1",
    "compute-1|id",
    "compute-1'",
    'compute-1"',
    "compute/1",
    "%h",
    "a@b@c",
    "compute-1\x1b[31m",
    "cömpute-1",
    "",
]


@pytest.mark.parametrize("template", BAD_HOSTS)
def test_bad_host_names_are_refused_before_any_process_starts(
    template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ssh-ran"
    fake = write_executable(tmp_path / "fake-ssh", f"#!/bin/sh\ntouch {marker}\n")
    monkeypatch.setenv("RECOVER_SSH_COMMAND", str(fake))
    host = template.format(marker=marker)

    with pytest.raises(RecoverError) as caught:
        SshTransport(host)
    with pytest.raises(RecoverError):
        SshTransport(host, ssh_command=str(fake))

    assert str(caught.value) == f"host name {host!r} is not a valid host name"
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_the_fake_ssh_of_the_host_test_does_run_for_a_good_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proves the marker check above would catch a started process.
    marker = tmp_path / "ssh-ran"
    fake = write_executable(tmp_path / "fake-ssh", f"#!/bin/sh\ntouch {marker}\n")
    monkeypatch.setenv("RECOVER_SSH_COMMAND", str(fake))
    assert SshTransport("compute-1").stat_size("/x") is None  # empty answer: no regular file
    assert marker.exists()


@pytest.mark.parametrize(
    "host",
    ["compute-12", "root@compute-12", "nova_compute.example.org", "10.1.2.3", "fe80::1", "C-07"],
)
def test_good_host_names_are_accepted(host: str) -> None:
    assert SshTransport(host, ssh_command="ssh").host == host


def test_ssh_argv_is_a_list_with_every_remote_word_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECOVER_SSH_COMMAND", "ssh -F '/etc/my ssh/config' -o Port=2222")
    transport = SshTransport("root@compute-12")
    argv = transport.argv(["stat", "-c", "%s", "--", "/a b/it's $(x);`y`"])
    assert argv == [
        "ssh",
        "-F",
        "/etc/my ssh/config",
        "-o",
        "Port=2222",
        *SSH_OPTIONS,
        "--",
        "root@compute-12",
        "env LC_ALL=C stat -c %s -- '/a b/it'\"'\"'s $(x);`y`'",
    ]
    assert shlex.split(argv[-1]) == [
        "env",
        "LC_ALL=C",
        "stat",
        "-c",
        "%s",
        "--",
        "/a b/it's $(x);`y`",
    ]


def test_ssh_command_defaults_to_ssh_and_must_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECOVER_SSH_COMMAND", raising=False)
    argv = SshTransport("compute-1").argv(["true"])
    assert argv[: len(SSH_OPTIONS) + 2] == ["ssh", *SSH_OPTIONS, "--"]
    assert SSH_OPTIONS[:2] == ("-o", "BatchMode=yes")
    monkeypatch.setenv("RECOVER_SSH_COMMAND", "ssh -F 'unterminated")
    with pytest.raises(RecoverError) as caught:
        SshTransport("compute-1")
    assert (
        str(caught.value) == "RECOVER_SSH_COMMAND is not a valid command line: No closing quotation"
    )


def test_remote_commands_run_with_lc_all_c(ssh_env: SshdServer, tmp_path: Path) -> None:
    # A localised message would break the "No such file or directory" test in stat_size.
    argv = SshTransport("compute-1").argv(["sh", "-c", "echo $LC_ALL"])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert done.stdout == "C\n"


# --- qemu-img -------------------------------------------------------------------------


def test_has_qemu_img(ssh_env: SshdServer, qemu_img: str) -> None:
    assert LocalTransport().has_qemu_img() is True
    assert SshTransport("compute-1").has_qemu_img() is True
    assert SshTransport("compute-noqemu").has_qemu_img() is False


def test_qemu_img_info_and_convert(transport: Transport, tmp_path: Path, qemu_img: str) -> None:
    raw = tmp_path / "disk.raw"
    subprocess.run(
        [qemu_img, "create", "-f", "raw", str(raw), "1M"], check=True, capture_output=True
    )
    with raw.open("r+b") as f:
        f.seek(4096)
        f.write(BINARY)
    qcow2 = tmp_path / "disk.qcow2"

    info = transport.qemu_img_info(str(raw))
    assert (info.format, info.virtual_size, info.backing_file, info.corrupt) == (
        "raw",
        MIB,
        None,
        False,
    )
    transport.convert(str(raw), "raw", str(qcow2), "qcow2")
    info = transport.qemu_img_info(str(qcow2))
    assert (info.format, info.virtual_size, info.backing_file, info.corrupt) == (
        "qcow2",
        MIB,
        None,
        False,
    )
    back = tmp_path / "back.raw"
    qemu.convert(qcow2, "qcow2", back, "raw")
    assert back.read_bytes() == raw.read_bytes()


def test_qemu_img_info_sees_a_backing_file(
    transport: Transport, tmp_path: Path, qemu_img: str
) -> None:
    base = tmp_path / "base.raw"
    _sparse(base, MIB)
    overlay = tmp_path / "disk"
    qemu.create_overlay(overlay, base, "raw")
    info = transport.qemu_img_info(str(overlay))
    assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", MIB, str(base))


def test_remote_qemu_img_failures_carry_qemu_img_message(
    ssh_env: SshdServer, tmp_path: Path, qemu_img: str
) -> None:
    remote = SshTransport("compute-1")
    missing = tmp_path / "missing"
    with pytest.raises(QemuImgError) as caught:
        remote.qemu_img_info(str(missing))
    assert str(caught.value) == (
        f"qemu-img info failed on compute-1: qemu-img: Could not open '{missing}':"
        f" Could not open '{missing}': No such file or directory"
    )
    raw = _sparse(tmp_path / "x.raw", MIB)
    with pytest.raises(QemuImgError) as caught:
        remote.convert(str(raw), "bogus", str(tmp_path / "x.qcow2"), "qcow2")
    assert str(caught.value) == (
        f"qemu-img convert failed on compute-1: qemu-img: Could not open '{raw}':"
        " Unknown driver 'bogus'"
    )
    assert not (tmp_path / "x.qcow2").exists()


def test_missing_remote_qemu_img(ssh_env: SshdServer, tmp_path: Path) -> None:
    remote = SshTransport("compute-noqemu")
    raw = _sparse(tmp_path / "x.raw", MIB)
    assert remote.stat_size(str(raw)) == MIB  # the rest still works there
    with pytest.raises(QemuImgError) as caught:
        remote.qemu_img_info(str(raw))
    assert str(caught.value) == (
        "qemu-img is not installed on compute-noqemu; "
        "install qemu-utils there, or copy the file and use --base-file"
    )
    with pytest.raises(QemuImgError, match=r"^qemu-img is not installed on compute-noqemu;"):
        remote.convert(str(raw), "raw", str(tmp_path / "x.qcow2"), "qcow2")


# --- unreachable hosts ------------------------------------------------------------------


def test_unreachable_host(ssh_env: SshdServer, tmp_path: Path) -> None:
    down = SshTransport("compute-down")
    expected = (
        f"cannot reach compute-down over ssh: ssh: connect to host 127.0.0.1"
        f" port {ssh_env.down_port}: Connection refused"
    )
    path = str(tmp_path / "x")
    calls = [
        lambda: down.stat_size(path),
        down.has_qemu_img,
        lambda: down.qemu_img_info(path),
        lambda: down.convert(path, "raw", path + ".qcow2", "qcow2"),
        lambda: down.free_bytes(str(tmp_path)),
        lambda: down.remove(path),
    ]
    for call in calls:
        with pytest.raises(RecoverError) as caught:
            call()
        assert type(caught.value) is RecoverError  # not a QemuImgError: qemu-img never ran
        assert str(caught.value) == expected
    with pytest.raises(RecoverError) as caught, down.open_read(path) as stream:
        assert stream.read() == b""
    assert str(caught.value) == expected


# --- streams that end badly -------------------------------------------------------------


def test_ssh_killed_mid_stream_raises_when_the_block_exits(
    sshd_server: SshdServer, tmp_path: Path
) -> None:
    command, pidfile = _pid_ssh(tmp_path, sshd_server)
    path = _sparse(tmp_path / "big", 64 * MIB)
    remote = SshTransport("compute-1", ssh_command=command)
    received = 0
    with pytest.raises(RecoverError) as caught, remote.open_read(str(path)) as stream:
        received += len(stream.read(MIB))
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        while data := stream.read(MIB):
            received += len(data)
    assert MIB <= received < 64 * MIB
    assert re.fullmatch(
        rf"ssh to compute-1 was killed by signal 9 while reading {re.escape(str(path))}"
        r" after \d+ bytes",
        str(caught.value),
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (1, "cannot read {path} on compute-1: fake: read error"),
        (
            255,
            "lost the ssh connection to compute-1 while reading {path} after 1000 bytes:"
            " fake: read error",
        ),
    ],
)
def test_stream_that_fails_after_some_bytes(status: int, expected: str, tmp_path: Path) -> None:
    fake = write_executable(
        tmp_path / "fake-ssh",
        f"#!/bin/sh\nhead -c 1000 /dev/zero\necho 'fake: read error' >&2\nexit {status}\n",
    )
    path = str(tmp_path / "base")
    with (
        pytest.raises(RecoverError) as caught,
        SshTransport("compute-1", ssh_command=str(fake)).open_read(path) as stream,
    ):
        assert stream.read() == bytes(1000)
    assert str(caught.value) == expected.format(path=path)


def test_file_truncated_mid_read_over_ssh(ssh_env: SshdServer, tmp_path: Path) -> None:
    path = _sparse(tmp_path / "big", 64 * MIB)
    with (
        pytest.raises(RecoverError) as caught,
        SshTransport("compute-1").open_read(str(path)) as stream,
    ):
        assert len(stream.read(MIB)) == MIB
        os.truncate(path, 0)  # cat is far behind the 64 MiB: ssh's window holds it back
        while stream.read(MIB):
            pass
    assert re.fullmatch(
        rf"{re.escape(str(path))} on compute-1 changed while it was read:"
        r" expected 67108864 bytes, received \d+",
        str(caught.value),
    )


def test_file_truncated_mid_read_locally(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "big", 64 * MIB)
    with pytest.raises(RecoverError) as caught, LocalTransport().open_read(str(path)) as stream:
        assert len(stream.read(MIB)) == MIB
        os.truncate(path, 0)
        assert stream.read(MIB) == b""
    assert str(caught.value) == (
        f"{path} changed while it was read: expected 67108864 bytes, read 1048576"
    )


def test_file_grown_mid_read_over_ssh(ssh_env: SshdServer, tmp_path: Path) -> None:
    path = _sparse(tmp_path / "big", 8 * MIB)
    with (
        pytest.raises(RecoverError) as caught,
        SshTransport("compute-1").open_read(str(path)) as stream,
    ):
        stream.read(MIB)
        with path.open("ab") as f:
            f.truncate(64 * MIB)
        while stream.read(MIB):
            pass
    assert re.fullmatch(
        rf"{re.escape(str(path))} on compute-1 changed while it was read:"
        r" expected 8388608 bytes, received \d+",
        str(caught.value),
    )


def test_file_deleted_mid_read_is_still_read_whole(transport: Transport, tmp_path: Path) -> None:
    # An unlinked file stays readable through the descriptor cat (or we) already hold,
    # as when nova's image cache manager removes a _base file we are copying.
    content = os.urandom(3 * MIB + 5)
    path = tmp_path / "base"
    path.write_bytes(content)
    parts = []
    with transport.open_read(str(path)) as stream:
        parts.append(stream.read(MIB))
        path.unlink()
        while data := stream.read(MIB):
            parts.append(data)
    assert b"".join(parts) == content


def test_stopping_early_is_no_error_and_ends_ssh(sshd_server: SshdServer, tmp_path: Path) -> None:
    command, pidfile = _pid_ssh(tmp_path, sshd_server)
    path = _sparse(tmp_path / "big", 64 * MIB)
    with SshTransport("compute-1", ssh_command=command).open_read(str(path)) as stream:
        assert stream.read(10) == bytes(10)
        pid = int(pidfile.read_text())
    assert not _alive(pid)


def test_an_error_inside_the_block_propagates_and_ends_ssh(
    sshd_server: SshdServer, tmp_path: Path
) -> None:
    command, pidfile = _pid_ssh(tmp_path, sshd_server)
    path = _sparse(tmp_path / "big", 64 * MIB)
    with (
        pytest.raises(ZeroDivisionError),
        SshTransport("compute-1", ssh_command=command).open_read(str(path)) as stream,
    ):
        stream.read(10)
        pid = int(pidfile.read_text())
        _ = 1 / 0
    assert not _alive(pid)


# --- bytes cross the network once -------------------------------------------------------


def test_one_open_read_receives_exactly_the_file_size(
    counting_ssh: CountingSsh, tmp_path: Path
) -> None:
    content = os.urandom(5 * MIB + 3)
    path = tmp_path / "base"
    path.write_bytes(content)
    remote = SshTransport("compute-1", ssh_command=counting_ssh.command)

    assert _read_all(remote, str(path), chunk=MIB) == content

    calls = counting_ssh.calls()
    assert [(c["bytes"], c["status"]) for c in calls] == [(len(content), 0)]
    assert calls[0]["argv"][: len(SSH_OPTIONS) + 2] == [*SSH_OPTIONS, "--", "compute-1"]
    assert counting_ssh.bytes_received() == len(content)


def test_counting_ssh_keeps_ssh_exit_status(counting_ssh: CountingSsh, tmp_path: Path) -> None:
    with pytest.raises(RecoverError, match=r"^cannot reach compute-down over ssh: "):
        SshTransport("compute-down", ssh_command=counting_ssh.command).stat_size(str(tmp_path))
    assert [(c["bytes"], c["status"]) for c in counting_ssh.calls()] == [(0, 255)]


# --- free space and removal ---------------------------------------------------------------


def test_free_bytes_matches_disk_usage(transport: Transport, tmp_path: Path) -> None:
    free = transport.free_bytes(str(tmp_path))
    expected = shutil.disk_usage(tmp_path).free
    assert free > 0
    assert abs(free - expected) <= expected / 100


def test_free_bytes_of_a_missing_directory(ssh_env: SshdServer, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(RecoverError) as caught:
        SshTransport("compute-1").free_bytes(str(missing))
    assert str(caught.value) == (
        f"cannot read the free space of {missing} on compute-1: stat: cannot read file system"
        f" information for '{missing}': No such file or directory"
    )
    with pytest.raises(RecoverError) as caught:
        LocalTransport().free_bytes(str(missing))
    assert str(caught.value) == (
        f"cannot read the free space of {missing}: No such file or directory"
    )


def test_remove(transport: Transport, tmp_path: Path) -> None:
    path = tmp_path / ".recover-tmp-x.qcow2"
    path.write_bytes(b"x")
    transport.remove(str(path))
    assert not path.exists()
    transport.remove(str(path))  # already gone: fine


def test_remove_refuses_a_directory(ssh_env: SshdServer, tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(RecoverError) as caught:
        SshTransport("compute-1").remove(str(directory))
    assert str(caught.value) == (
        f"cannot remove {directory} on compute-1: rm: cannot remove '{directory}': Is a directory"
    )
    with pytest.raises(RecoverError) as caught:
        LocalTransport().remove(str(directory))
    assert str(caught.value) == f"cannot remove {directory}: Is a directory"
    assert directory.is_dir()


# --- one shared connection (open / close) -----------------------------------------------------


def _master_argv(remote: SshTransport) -> list[str]:
    """The argv of ``remote``'s running ssh master, read from /proc."""
    master = remote._master
    assert master is not None and master.proc is not None
    return (Path("/proc") / str(master.proc.pid) / "cmdline").read_bytes().split(b"\0")[:-1]


def test_open_shares_one_master_and_close_removes_it(ssh_env: SshdServer, tmp_path: Path) -> None:
    path = tmp_path / "five"
    path.write_bytes(b"12345")
    remote = SshTransport("compute-1").open()
    assert remote._master is None  # made by the first call
    assert remote.stat_size(str(path)) == 5
    master = remote._master
    assert master is not None and master.proc is not None
    directory, proc = Path(master.directory), master.proc
    assert directory.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in directory.iterdir()] == ["s"]  # the control socket
    assert remote.stat_size(str(path)) == 5
    assert _read_all(remote, str(path)) == b"12345"
    remote.close()
    assert proc.returncode is not None  # stopped and reaped
    assert not directory.exists()
    assert remote.stat_size(str(path)) == 5  # closed: back to a connection per call
    remote.close()  # twice is fine


def test_master_gets_aes_gcm_first_only_when_nothing_chose_the_ciphers(
    sshd_server: SshdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    aes_first = f"Ciphers={AES_FIRST_CIPHERS}".encode()
    with SshTransport("compute-1", ssh_command=sshd_server.ssh_command) as remote:
        assert remote.stat_size("/") is None
        assert (aes_first in _master_argv(remote)) == _has_aes_instructions()
    chosen = f"{sshd_server.ssh_command} -o Ciphers=aes256-ctr"
    with SshTransport("compute-1", ssh_command=chosen) as remote:
        assert remote.stat_size("/") is None  # the connection works
        argv = _master_argv(remote)
        assert not any(word.startswith(b"Ciphers=aes128-gcm") for word in argv), argv


def test_an_ssh_command_that_cannot_be_our_master_gets_a_connection_per_call(
    sshd_server: SshdServer, tmp_path: Path
) -> None:
    """-M on top of the operator's own -o ControlMaster=yes would mean "ask" (a prompt):
    ssh -G shows it, and the transport does without a master rather than hang."""
    path = tmp_path / "five"
    path.write_bytes(b"12345")
    command = f"{sshd_server.ssh_command} -o ControlMaster=yes"
    with SshTransport("compute-1", ssh_command=command) as remote:
        assert remote.stat_size(str(path)) == 5
        assert remote._master is None
        assert "-S" not in remote.argv(["true"])


def test_an_unreachable_host_fails_on_the_first_call_and_leaves_nothing(
    ssh_env: SshdServer, own_tmp: Path
) -> None:
    with pytest.raises(RecoverError) as caught:
        SshTransport("compute-down").open().stat_size("/")
    assert str(caught.value) == (
        f"cannot reach compute-down over ssh: ssh: connect to host 127.0.0.1 port "
        f"{ssh_env.down_port}: Connection refused"
    )
    assert list(own_tmp.iterdir()) == []


def test_after_open_a_refused_path_still_starts_no_process(tmp_path: Path) -> None:
    marker = tmp_path / "ssh-ran"
    fake = write_executable(tmp_path / "fake-ssh", f"#!/bin/sh\ntouch {marker}\nexit 255\n")
    with SshTransport("compute-1", ssh_command=str(fake)) as remote:
        with pytest.raises(RecoverError, match=r"^path 'x;y' is not an absolute path$"):
            remote.stat_size("x;y")
        assert not marker.exists()


def test_a_new_master_removes_only_stale_empty_socket_directories(
    ssh_env: SshdServer, own_tmp: Path
) -> None:
    own = own_tmp
    old = time.time() - STALE_S - 1
    stale, young, busy, other = (own / name for name in (
        "recover-ssh-killed", "recover-ssh-starting", "recover-ssh-live", "unrelated"))  # fmt: skip
    for directory in (stale, young, busy, other):
        directory.mkdir()
    (busy / "s").write_bytes(b"")  # stands for a live run's socket
    for directory in (stale, busy, other):
        os.utime(directory, (old, old))
    with SshTransport("compute-1").open() as remote:
        assert remote.stat_size("/") is None
    assert sorted(p.name for p in own.iterdir()) == [
        "recover-ssh-live", "recover-ssh-starting", "unrelated"]  # fmt: skip
