"""A private ``sshd`` on 127.0.0.1 standing in for Nova compute nodes, and ssh wrappers.

Used through the fixtures at the end of ``tests/conftest.py``:

* ``sshd_server`` (session): an :class:`SshdServer`. Host aliases ``compute-1``,
  ``compute-2``, ``compute-3``, ``compute-07`` and ``compute-12`` all reach it
  (``server.ssh_command`` is ``ssh -F <client config>``); ``compute-down`` points
  at a port of 127.0.0.1 that refuses connections; ``compute-noqemu`` reaches it
  with a remote ``PATH`` holding ``sh`` and the coreutils the transport needs
  but no ``qemu-img``. ``server.add_host(alias)`` adds more.
* ``ssh_env``: sets ``RECOVER_SSH_COMMAND`` to ``server.ssh_command``.
* ``counting_ssh``: a :class:`CountingSsh`, an ssh command that logs the bytes it
  received on stdout per call.

``server.start_node(alias, root)`` starts one more ``sshd`` (same keys, its own port)
in a mount namespace of its own, where ``root/instances`` is bind-mounted over
``/var/lib/nova/instances`` (nova's default ``instances_path``) and, when
``root/etc/nova`` exists, that directory appears as ``/etc/nova``: each such compute
node sees its own files at nova's own paths. Needs root (``unshare --mount``).

Every "remote" file is a local file: the compute nodes are this machine, and the
login user is the current user (root in CI).

Remote sessions get ``HOME=<server dir>/home`` and a plain system ``PATH``
(``environment=`` options in ``authorized_keys``), so the login user's own
dotfiles cannot slow down or change the remote commands: Debian's bash sources
``~/.bashrc`` even for ``ssh host command``, and a developer's may run
``pyenv init`` (0.3 s per call) or put other tools first on the PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from port_for import get_port

from tests.helpers import require_binary

COMPUTE_HOSTS = ("compute-1", "compute-2", "compute-3", "compute-07", "compute-12")
"""Aliases that reach the test sshd."""

DOWN_HOST = "compute-down"
"""Alias of a closed port of 127.0.0.1: ssh fails with "Connection refused", exit 255."""

NO_QEMU_HOST = "compute-noqemu"
"""Alias reaching the test sshd with a remote PATH that has no qemu-img."""

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Remote PATH of the compute aliases (sshd's default for root)."""

START_TIMEOUT_S = 15

# What the remote commands of recover.images.transport need, for the qemu-less PATH.
_NO_QEMU_TOOLS = ("env", "sh", "stat", "cat", "rm", "df", "printf")


def write_executable(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, mode 0755; return ``path``."""
    path.write_text(text)
    path.chmod(0o755)
    return path


@dataclass
class HostAlias:
    """One ``Host`` block of the client config: where it goes and with which key."""

    port: int
    identity: Path
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class SshdServer:
    """A running test ``sshd`` and the ssh client configuration that reaches it.

    Attributes: ``port``; ``directory`` (keys, configs, log); ``client_config``
    (the file for ``ssh -F``); ``client_key``; ``user`` (login user: the current
    one); ``ssh`` (client binary); ``down_port`` (a port of 127.0.0.1 that
    refuses connections); ``hosts`` (alias -> :class:`HostAlias`);
    ``startup_seconds`` (keys + configs + start until the port answers); ``log``
    (sshd's own log, see ``log_tail()``).
    """

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    ssh: str
    client_key: Path
    client_config: Path
    user: str
    log: Path
    down_port: int
    down_socket: socket.socket
    files: _ServerFiles
    startup_seconds: float = 0.0
    hosts: dict[str, HostAlias] = field(default_factory=dict)
    #: The namespaced compute nodes started by :meth:`start_node`, by alias.
    nodes: dict[str, ComputeNode] = field(default_factory=dict)

    @property
    def sshd(self) -> str:
        return self.files.sshd

    @property
    def ssh_command(self) -> str:
        """``ssh -F <client config>``: the value for ``RECOVER_SSH_COMMAND``."""
        return shlex.join(self.ssh_argv())

    def ssh_argv(self) -> list[str]:
        """``[ssh, "-F", client_config]``."""
        return [self.ssh, "-F", str(self.client_config)]

    def add_host(
        self, alias: str, *, port: int | None = None, options: dict[str, str] | None = None
    ) -> str:
        """Make ``alias`` reach this sshd (or ``port`` of 127.0.0.1); return ``alias``.

        ``options`` are extra ssh_config keywords for that alias. The alias stays
        for the rest of the session.
        """
        port = self.port if port is None else port
        self.hosts[alias] = HostAlias(port, self.client_key, dict(options or {}))
        self.write_client_config()
        return alias

    def write_client_config(self) -> None:
        """(Re)write ``client_config`` from ``hosts``."""
        lines = []
        for alias, entry in self.hosts.items():
            lines += [
                f"Host {alias}",
                "    HostName 127.0.0.1",
                f"    Port {entry.port}",
                f"    User {self.user}",
                f"    IdentityFile {entry.identity}",
                "    IdentitiesOnly yes",
                "    StrictHostKeyChecking no",
                "    UserKnownHostsFile /dev/null",
                "    GlobalKnownHostsFile /dev/null",
                "    LogLevel ERROR",
                "    ControlMaster no",
                "    ControlPath none",
                "    ConnectTimeout 10",
                # The default sntrup761x25519 key exchange costs ~0.1 s per connection
                # here; the tests are about what runs over the connection, not the kex.
                "    KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
            ]
            lines += [f"    {key} {value}" for key, value in entry.options.items()]
            lines.append("")
        tmp = self.client_config.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(self.client_config)  # atomic: a running ssh never reads half a file

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of sshd's log (for failure messages)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no sshd log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def start_node(self, alias: str, root: Path) -> ComputeNode:
        """Start an sshd in its own mount namespace that sees ``root/instances`` as
        ``/var/lib/nova/instances`` (and ``root/etc/nova`` as ``/etc/nova`` if it
        exists); ``alias`` reaches it. Stopped by :meth:`stop` or ``node.stop()``."""
        unshare = require_binary("unshare")
        instances = root / "instances"
        instances.mkdir(parents=True, exist_ok=True)
        # The mount points must exist; where the machine has none, an overlay of a
        # skeleton over /var/lib (or /etc) adds them inside the namespace only.
        skel = self.directory / "skel"
        (skel / "var-lib" / "nova" / "instances").mkdir(parents=True, exist_ok=True)
        script = (
            "set -e; "
            "[ -d /var/lib/nova/instances ] || "
            'mount -t overlay overlay -o "lowerdir=$1:/var/lib" /var/lib; '
            'mount --bind "$2" /var/lib/nova/instances; '
            'if [ -d "$3/nova" ]; then mount -t overlay overlay -o "lowerdir=$3:/etc" /etc; fi; '
            'shift 3; exec "$@"'
        )
        config = root / "sshd_config"
        log = root / "sshd.log"

        def argv(port: int) -> list[str]:
            _write_sshd_config(self.files, config, port, root / "sshd.pid")
            return [
                unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(skel / "var-lib"), str(instances), str(root / "etc"),
                self.sshd, "-D", "-e", "-f", str(config),
            ]  # fmt: skip

        process, port = _launch(argv, log)
        node = ComputeNode(alias, root, process, port, log)
        self.nodes[alias] = node
        self.hosts[alias] = HostAlias(port, self.client_key)
        self.write_client_config()
        return node

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL after 10 s); sessions still open end with it."""
        for node in self.nodes.values():
            node.stop()
        _terminate(self.process)
        self.down_socket.close()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ComputeNode:
    """An sshd in a mount namespace of its own (:meth:`SshdServer.start_node`)."""

    alias: str
    root: Path
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def instances(self) -> Path:
        """The directory the node sees as /var/lib/nova/instances."""
        return self.root / "instances"

    def stop(self) -> None:
        """Stop this node's sshd, by its pid (the namespace goes with it)."""
        _terminate(self.process)


def _openssh_version(ssh: str) -> tuple[int, int]:
    done = subprocess.run([ssh, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", done.stderr + done.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _keygen(keygen: str, path: Path) -> None:
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _wait_for_banner(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once 127.0.0.1:port sends an SSH banner; False if sshd exited or time ran out."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.settimeout(2)
            if s.recv(8).startswith(b"SSH-"):
                return True
        time.sleep(0.02)
    return False


def _closed_port() -> tuple[socket.socket, int]:
    """A socket bound to a port of 127.0.0.1 but not listening: connections are refused.

    Keeping it bound means no other process can start listening there meanwhile.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


@dataclass
class _ServerFiles:
    """What every sshd of a session shares: keys, authorized_keys, the binary."""

    directory: Path
    host_key: Path
    authorized: Path
    version: tuple[int, int]
    sshd: str


def _write_sshd_config(files: _ServerFiles, config: Path, port: int, pidfile: Path) -> None:
    extra = []
    if files.version >= (9, 8):
        # Refused logins would otherwise get 127.0.0.1 penalised (blocked) for a while.
        extra.append("PerSourcePenalties no")
    options = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {files.host_key}",
        f"AuthorizedKeysFile {files.authorized}",
        f"PidFile {pidfile}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "PrintMotd no",
        "X11Forwarding no",
        "PermitUserEnvironment HOME,PATH",  # the environment= options of authorized_keys
        # Tests open many short connections, some at once; the default
        # MaxStartups 10:30:100 randomly drops unauthenticated ones beyond 10.
        "MaxStartups 200",
        "MaxSessions 200",
        "LogLevel INFO",
        *extra,
    ]
    config.write_text("\n".join(options) + "\n")


def _launch(argv: Callable[[int], list[str]], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv(port)`` on a free port until its banner answers (5 tries)."""
    for attempt in range(5):
        port = get_port(None) or 0
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                argv(port), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        if _wait_for_banner(process, port, time.monotonic() + START_TIMEOUT_S):
            return process, port
        if process.poll() is None:
            process.kill()
        process.wait()
        text = log.read_text(errors="replace")
        if "Address already in use" not in text or attempt == 4:
            raise RuntimeError(f"could not start sshd on port {port}; {log}:\n{text[-3000:]}")
    raise AssertionError("unreachable")


def start_sshd(directory: Path) -> SshdServer:
    """Generate keys and configs in ``directory`` and start ``sshd -D -e`` on a free port.

    Skips the test (fails under ``CI=true``) if sshd, ssh or ssh-keygen is missing.
    """
    sshd = require_binary("sshd")
    ssh = require_binary("ssh")
    keygen = require_binary("ssh-keygen")
    started = time.perf_counter()
    user = pwd.getpwuid(os.geteuid()).pw_name
    host_key = directory / "ssh_host_ed25519_key"
    client_key = directory / "id_ed25519"
    no_qemu_key = directory / "id_noqemu"
    for key in (host_key, client_key, no_qemu_key):
        _keygen(keygen, key)
    home = directory / "home"
    home.mkdir()
    no_qemu_bin = directory / "noqemu-bin"
    no_qemu_bin.mkdir()
    for tool in _NO_QEMU_TOOLS:
        (no_qemu_bin / tool).symlink_to(require_binary(tool))

    def key_line(key: Path, path: str) -> str:
        env = f'environment="HOME={home}",environment="PATH={path}"'
        return f"{env} {key.with_suffix('.pub').read_text().strip()}\n"

    authorized = directory / "authorized_keys"
    authorized.write_text(
        key_line(client_key, SYSTEM_PATH) + key_line(no_qemu_key, str(no_qemu_bin))
    )
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        # sshd as root chroots its pre-auth child into this empty dir and will not start
        # without it ("Missing privilege separation directory: /run/sshd"). The Debian
        # package creates it at boot (tmpfiles.d), which a container never runs.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    log = directory / "sshd.log"
    config = directory / "sshd_config"
    server_options = _ServerFiles(directory, host_key, authorized, _openssh_version(ssh), sshd)

    def argv(port: int) -> list[str]:
        _write_sshd_config(server_options, config, port, directory / "sshd.pid")
        return [sshd, "-D", "-e", "-f", str(config)]

    process, port = _launch(argv, log)
    down_socket, down_port = _closed_port()
    server = SshdServer(
        directory=directory,
        port=port,
        process=process,
        ssh=ssh,
        client_key=client_key,
        client_config=directory / "ssh_config",
        user=user,
        log=log,
        down_port=down_port,
        down_socket=down_socket,
        files=server_options,
    )
    for alias in COMPUTE_HOSTS:
        server.hosts[alias] = HostAlias(port, client_key)
    server.hosts[DOWN_HOST] = HostAlias(down_port, client_key)
    server.hosts[NO_QEMU_HOST] = HostAlias(port, no_qemu_key)
    server.write_client_config()
    server.startup_seconds = time.perf_counter() - started
    return server


_COUNTER_SCRIPT = '''\
#!{python}
"""Run the real ssh, pass its stdout on, log how many bytes came; exit with ssh's status."""
import json, os, subprocess, sys

proc = subprocess.Popen({argv!r} + sys.argv[1:], stdout=subprocess.PIPE, bufsize=0)
received = 0
broken = False
out = sys.stdout.buffer
while True:
    chunk = proc.stdout.read(1 << 16)
    if not chunk:
        break
    received += len(chunk)
    if not broken:
        try:
            out.write(chunk)
            out.flush()
        except BrokenPipeError:  # our reader went away: stop ssh, as a plain ssh would
            broken = True
            proc.kill()
status = proc.wait()
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "bytes": received, "status": status}}) + "\\n")
if broken:  # nothing more can be written; keep the exit-time flush quiet
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
sys.exit(status if status >= 0 else 128 - status)
'''


class CountingSsh:
    """An ssh command (``.command``) that records how many bytes each call received.

    It runs ``ssh -F <config>`` of the test sshd with the same arguments and
    passes stderr and the exit status through (a signal N becomes 128+N).
    ``calls()`` lists one dict per finished call: ``argv`` (the arguments after
    ``ssh -F config``), ``bytes`` (stdout bytes of the remote command that
    arrived here) and ``status`` (ssh's exit status, negative for a signal).
    ``bytes_received()`` is the total.
    """

    def __init__(self, directory: Path, server: SshdServer) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "ssh-bytes.jsonl"
        self.script = write_executable(
            directory / "counting-ssh",
            _COUNTER_SCRIPT.format(
                python=sys.executable, argv=server.ssh_argv(), log=str(self.log)
            ),
        )
        self.command = shlex.quote(str(self.script))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def bytes_received(self) -> int:
        return sum(call["bytes"] for call in self.calls())

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)
