"""The files of a compute node, here or over SSH, behind one small interface.

``LocalTransport`` uses the local file system and ``recover.images.qemu``.
``SshTransport`` runs one short command per call through the system ``ssh``
(``RECOVER_SSH_COMMAND``, default ``ssh``, split like ``GIT_SSH_COMMAND``), so the
operator's ``~/.ssh/config``, agent, jump hosts and keys all apply and no
password or key ever passes through this program. Once ``open()``-ed, every call
is a session multiplexed over ONE connection (:class:`_Master`): a recovery costs
one TCP connection, one key exchange and one authentication, not one per step.

Host names and paths come from databases and are untrusted: the host is checked
against a conservative pattern before any process starts, ``ssh`` gets an
argument list (never ``shell=True``), and every word of the remote command is
``shlex.quote``-d because sshd hands it to the remote user's login shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

from recover.errors import RecoverError
from recover.images import qemu
from recover.images.qemu import ImageInfo, QemuImgError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

SSH_COMMAND_ENV = "RECOVER_SSH_COMMAND"
"""Environment variable holding the ssh command line (``shlex``-split), default ``ssh``."""

SHORT_TIMEOUT_S = 60
"""Seconds a short remote command (stat, df, rm, qemu-img info) may take, connection included."""

STREAM_BUFFER = 1024 * 1024
"""Read-ahead of the stream returned by ``open_read``."""

SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures
COMMAND_NOT_FOUND = 127

# Letters, digits, '.', '-', '_' and ':' (IPv6), optional "user@"; never a leading '-'
# (ssh would read it as an option), never whitespace, quotes, '%' (ssh tokens) or '/'.
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63}@)?[A-Za-z0-9_:][A-Za-z0-9._:-]{0,252}",
)

# Printed on stderr before `cat` starts, so the reader can tell a complete stream from a
# file that shrank or grew while it was read (cat itself exits 0 in both cases).
_SIZE_MARKER = "recover-size"
_SIZE_RE = re.compile(rb"^" + _SIZE_MARKER.encode() + rb" (\d+)\r?$", re.MULTILINE)
_STREAM_SCRIPT = (
    'size=$(stat -L -c %s -- "$1") || exit; '
    f"printf '{_SIZE_MARKER} %s\\n' \"$size\" >&2; "
    'exec cat -- "$1"'
)

_NOT_THERE = ("No such file or directory", "Not a directory")


class Transport(Protocol):
    """Access to the files of one machine; every path is a path on that machine."""

    label: str
    """``"local"`` or ``"<host> (ssh)"``, for messages."""

    def stat_size(self, path: str) -> int | None:
        """Size in bytes of the regular file ``path`` (symlinks followed).

        ``None`` if nothing is there or it is not a regular file; ``RecoverError``
        if it cannot be known (permission denied, host unreachable).
        """
        ...

    def has_qemu_img(self) -> bool:
        """Whether ``qemu-img`` is on the machine's PATH."""
        ...

    def qemu_img_info(self, path: str) -> ImageInfo:
        """``qemu-img info --output=json --force-share -- path``; ``QemuImgError`` if it fails."""
        ...

    def convert(self, src: str, src_fmt: str, dest: str, dest_fmt: str) -> None:
        """``qemu-img convert -f src_fmt -O dest_fmt -- src dest`` on the machine."""
        ...

    def free_bytes(self, directory: str) -> int:
        """Bytes an unprivileged user may still write in ``directory``'s file system."""
        ...

    def open_read(self, path: str) -> AbstractContextManager[BinaryIO]:
        """Stream the bytes of ``path``.

        A stream that ends early (ssh or ``cat`` failed, the file shrank or grew
        while it was read) raises ``RecoverError`` when the ``with`` block exits
        after the caller read to the end. A caller that stops reading early gets
        no error; an exception inside the block is propagated unchanged.
        """
        ...

    def remove(self, path: str) -> None:
        """Remove a temporary file this program created; already gone is fine."""
        ...

    def close(self) -> None:
        """Release what the transport holds (the ssh connection); calls after it may fail."""
        ...


def _printable(text: str) -> str:
    """``text`` itself, or its ``repr`` if it holds control characters (one clean line)."""
    return text if text.isprintable() else repr(text)


def _last_line(stderr: bytes) -> str | None:
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.startswith(_SIZE_MARKER)
    ]
    if not lines:
        return None
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in lines[-1])


def _detail(stderr: bytes, returncode: int) -> str:
    line = _last_line(stderr)
    if line is not None:
        return line
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _check_path(path: str, *, absolute: bool) -> None:
    if not path or "\0" in path:
        raise RecoverError(f"path {path!r} is not a valid path")
    if absolute and not path.startswith("/"):
        raise RecoverError(f"path {path!r} is not an absolute path")


class _CountingReader(io.RawIOBase):
    """Raw reader over a pipe or file that counts bytes and notices the end of data.

    ``close()`` does not close the source: the owner of the ``with`` block does,
    after it has looked at whether the data was complete.
    """

    def __init__(self, source: io.RawIOBase) -> None:
        super().__init__()
        self.source = source
        self.count = 0
        self.at_eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        n = self.source.readinto(buffer) or 0
        if n == 0:
            self.at_eof = True
        self.count += n
        return n

    def drained(self) -> bool:
        """True if the source has no more data (reads one byte if needed, without counting)."""
        if not self.at_eof and not self.source.read(1):
            self.at_eof = True
        return self.at_eof


def _buffered(reader: _CountingReader) -> BinaryIO:
    return io.BufferedReader(reader, STREAM_BUFFER)


class LocalTransport:
    """This machine's files (``--base-file``, or ``recover`` run on the compute node itself)."""

    label = "local"

    def stat_size(self, path: str) -> int | None:
        _check_path(path, absolute=False)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise RecoverError(f"cannot stat {_printable(path)}: {exc.strerror}") from None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def has_qemu_img(self) -> bool:
        return shutil.which(qemu.QEMU_IMG) is not None

    def qemu_img_info(self, path: str) -> ImageInfo:
        _check_path(path, absolute=False)
        # An absolute path can never be read as "protocol:..." (json:, nbd:) by qemu-img.
        return qemu.info(os.path.abspath(path))

    def convert(self, src: str, src_fmt: str, dest: str, dest_fmt: str) -> None:
        _check_path(src, absolute=False)
        _check_path(dest, absolute=False)
        qemu.convert(os.path.abspath(src), src_fmt, os.path.abspath(dest), dest_fmt)

    def free_bytes(self, directory: str) -> int:
        _check_path(directory, absolute=False)
        try:
            return shutil.disk_usage(directory).free
        except OSError as exc:
            raise RecoverError(
                f"cannot read the free space of {_printable(directory)}: {exc.strerror}"
            ) from None

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        _check_path(path, absolute=False)
        try:
            source = io.FileIO(path, "rb")
        except OSError as exc:
            raise RecoverError(f"cannot read {_printable(path)}: {exc.strerror}") from None
        with source:
            size = os.fstat(source.fileno()).st_size
            reader = _CountingReader(source)
            yield _buffered(reader)
            if reader.drained() and reader.count != size:
                raise RecoverError(
                    f"{_printable(path)} changed while it was read: "
                    f"expected {size} bytes, read {reader.count}"
                )

    def remove(self, path: str) -> None:
        _check_path(path, absolute=False)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RecoverError(f"cannot remove {_printable(path)}: {exc.strerror}") from None

    def close(self) -> None:
        pass


#: Batch mode, and give up on a host that stops answering instead of hanging a stream until
#: the TCP timeout. ssh keeps the first value it sees for an option and command-line values
#: beat ~/.ssh/config, so ``-o`` options in RECOVER_SSH_COMMAND (placed first) override these.
SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=20",
    "-o", "ServerAliveInterval=15",
    "-o", "ServerAliveCountMax=4",
)  # fmt: skip


#: OpenSSH's compiled-in cipher order (openssh-portable ``myproposal.h`` ``KEX_CLIENT_ENCRYPT``):
#: what ``ssh -G`` prints when nothing configured Ciphers (OpenSSH 9.2 here).
DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,"
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com"
)
#: The same set, AES-GCM first: with AES instructions (AES-NI, ARMv8 AES) it costs about two
#: thirds of chacha20-poly1305's CPU per byte (1 GiB over ssh to 127.0.0.1 here: 3.2 s
#: against 4.6 s), and a bulk copy over ssh is CPU-bound at both ends. The server picks the
#: first of the client's list that it allows (RFC 4253 section 7.1): a server that refuses
#: AES-GCM still gets what it would have got.
AES_FIRST_CIPHERS = (
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
)
#: The longest control socket path ssh can bind: sockaddr_un holds 107 characters on Linux,
#: and ssh first binds ``<path>.<16 random characters>`` (mux.c ``muxserver_listen``).
_SOCKET_PATH_MAX = 107 - 17
_SOCKET_DIR_PREFIX = "recover-ssh-"


def ssh_argv(command: str | None = None) -> list[str]:
    """The ssh command line: ``command``, else ``$RECOVER_SSH_COMMAND``, else ``ssh``."""
    if command is None:
        command = os.environ.get(SSH_COMMAND_ENV) or "ssh"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise RecoverError(f"{SSH_COMMAND_ENV} is not a valid command line: {exc}") from None
    if not argv:
        raise RecoverError(f"{SSH_COMMAND_ENV} is empty", hint="unset it to use plain ssh")
    return argv


def check_host(host: str) -> str:
    """``host`` if it is a plain host name or address (optionally ``user@``), else RecoverError."""
    if not _HOST_RE.fullmatch(host):
        raise RecoverError(f"host name {host!r} is not a valid host name")
    return host


def _has_aes_instructions() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            text = cpuinfo.read(256 * 1024)
    except OSError:
        return False
    return re.search(r"^(?:flags|Features)\s*:.*\baes\b", text, re.MULTILINE) is not None


def _effective_config(argv: Sequence[str], host: str) -> dict[str, str] | None:
    """What ``ssh -G`` says ``argv`` would use for ``host`` (no connection), or None."""
    try:
        done = subprocess.run(
            [*argv, "-G", "--", host],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SHORT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    config: dict[str, str] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, value)
    return config


#: An empty socket directory older than this belongs to a run that was killed (SIGKILL):
#: a live run's directory holds its socket, and one being set up is younger than the
#: master's start timeout.
STALE_S = 2 * SHORT_TIMEOUT_S


def _sweep_stale(base: str) -> None:
    """Remove the socket directories that runs killed by SIGKILL left in ``base``.

    Their master removed its socket as it ended (the killed run's stdin pipe closed), so
    they are empty; ``rmdir`` removes nothing else, and fails on a directory a live run
    is using (its socket is there).
    """
    now = time.time()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_SOCKET_DIR_PREFIX):
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            if mine and now - st.st_mtime > STALE_S:
                os.rmdir(entry.path)


class _Master:
    """One OpenSSH master connection to ``host`` that every command of a recovery shares.

    Why a control master rather than one remote script session: each step stays a plain
    ``ssh host command`` with its own exit status, stderr and stdout pipe (the stream's
    completeness checks, qemu-img's messages and the error texts are those of the
    per-call transport), and OpenSSH passes our pipes to the master over the control
    socket (mux.c ``mux_client_request_session``: SCM_RIGHTS), so the bytes of the stream
    do not cross one more process. A script session would need a framing protocol of its
    own over one stdout, with the image bytes in it.

    Left to nobody else: the control socket lives in a private 0700 directory made here
    (``-S`` beats any ControlPath of the operator's config or RECOVER_SSH_COMMAND, ``-M``
    any ControlMaster: command-line flags are set before ssh_config is read, and that keeps
    the first value), ControlPersist is off, and the master's own session is ``cat`` reading
    our pipe: if this process dies, even by SIGKILL, the pipe closes, the remote ``cat``
    ends and the master exits with it instead of holding a connection open. It runs in a
    session of its own so a Ctrl-C on the terminal reaches ``recover`` only: the clean-up
    (removing the temporary file on the node) still has the connection, then ``close``
    stops the master with ``-O exit`` and removes the directory.
    """

    def __init__(self, ssh: list[str], host: str) -> None:
        self.ssh = ssh
        self.host = host
        base = tempfile.gettempdir()
        # mkdtemp adds 8 characters; a TMPDIR too long for the socket gives way to /tmp.
        if len(os.path.join(base, _SOCKET_DIR_PREFIX + "x" * 8, "s")) > _SOCKET_PATH_MAX:
            base = "/tmp"
        _sweep_stale(base)
        self.directory = tempfile.mkdtemp(prefix=_SOCKET_DIR_PREFIX, dir=base)  # mode 0700
        self.socket = os.path.join(self.directory, "s")
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (stop() closes it)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Connect and authenticate; return once the control socket accepts sessions.

        False (nothing started) when ``ssh -G`` shows this ssh command cannot be the master
        asked for: a wrapper that does not understand ``-G``, or ``-o ControlMaster=yes`` /
        ``ControlPersist`` on RECOVER_SSH_COMMAND's own command line (those come first and
        ssh keeps the first value; ``-M`` on top of ControlMaster=yes means "ask"). The
        caller then runs each step on a connection of its own, as before.
        """
        hold = " ".join(shlex.quote(word) for word in ("env", "LC_ALL=C", "cat"))
        options = [*SSH_OPTIONS, "-M", "-S", self.socket, "-o", "ControlPersist=no"]
        config = _effective_config([*self.ssh, *options], self.host)
        if config is None or (
            config.get("controlmaster"),
            config.get("controlpath"),
            config.get("controlpersist"),
        ) != ("true", self.socket, "no"):
            return False
        # Only when nothing chose the ciphers (the operator's ~/.ssh/config, /etc/ssh,
        # -o on RECOVER_SSH_COMMAND all show in ssh -G): the order changes, never the set,
        # so a site policy (FIPS, a Ciphers line) is left exactly as it is.
        if config.get("ciphers") == DEFAULT_CIPHERS and _has_aes_instructions():
            options += ["-o", f"Ciphers={AES_FIRST_CIPHERS}"]
        argv = [*self.ssh, *options, "--", self.host, hold]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self.errors,
                start_new_session=True,
            )
        except OSError as exc:
            raise RecoverError(f"cannot run {self.ssh[0]}: {exc.strerror}") from None
        # ssh binds a temporary name and link()s it to ``socket`` once it listens, after
        # authentication (mux.c muxserver_listen): the name appearing means ready.
        deadline = time.monotonic() + SHORT_TIMEOUT_S
        pause = 0.002
        while not os.path.exists(self.socket):
            returncode = self.proc.poll()
            if returncode is not None:
                raise self.failure(returncode)
            if time.monotonic() > deadline:
                raise RecoverError(
                    f"cannot reach {self.host} over ssh: no connection within {SHORT_TIMEOUT_S} s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    def failure(self, returncode: int) -> RecoverError:
        self.errors.seek(0)
        detail = _detail(self.errors.read(), returncode)
        return RecoverError(f"cannot reach {self.host} over ssh: {detail}")

    def client_options(self) -> list[str]:
        return ["-S", self.socket, "-o", "ControlMaster=no"]

    def stop(self) -> None:
        """End the connection (``-O exit``), reap ssh, remove the directory; never raises."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                if proc.poll() is None and os.path.exists(self.socket):
                    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                        subprocess.run(
                            [*self.ssh, "-S", self.socket, "-O", "exit", "--", self.host],
                            stdin=subprocess.DEVNULL,
                            capture_output=True,
                            timeout=10,
                            check=False,
                        )
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.errors.close()


class SshTransport:
    """The files of compute node ``host``, through the system ``ssh`` in batch mode.

    Remote commands need a POSIX login shell and GNU coreutils (``stat``, ``cat``,
    ``rm``) on the node; ``qemu-img`` only for ``qemu_img_info`` and ``convert``.

    After ``open()`` every call shares one connection, made by the first (end it with
    ``close()`` or a ``with`` block); without it (or when the ssh command cannot be a
    master, see :meth:`_Master.start`) each call opens its own.
    """

    def __init__(self, host: str, ssh_command: str | None = None) -> None:
        self.host = check_host(host)
        self.ssh = ssh_argv(ssh_command)
        self.label = f"{host} (ssh)"
        self._master: _Master | None = None
        self._finalizer: weakref.finalize | None = None
        self._shared = self._tried = False

    def open(self) -> SshTransport:
        """Share one connection for every later call; the first call that runs something
        makes it (after its own checks: a refused path starts no process at all)."""
        self._shared = True
        return self

    def _connect(self) -> None:
        """Start the shared master, once, if ``open()`` asked for one."""
        if not self._shared or self._master is not None or self._tried:
            return
        self._tried = True  # a command that cannot be a master is not asked again
        master = _Master(self.ssh, self.host)
        # Also at interpreter exit, should an error path forget close().
        finalizer = weakref.finalize(self, master.stop)
        try:
            started = master.start()
        except BaseException:
            finalizer()
            raise
        if not started:
            finalizer()
            return
        self._master, self._finalizer = master, finalizer

    def close(self) -> None:
        finalizer, self._master, self._finalizer = self._finalizer, None, None
        self._shared = self._tried = False
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> SshTransport:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, words: Sequence[str]) -> list[str]:
        """The local argv running ``words`` on the host with ``LC_ALL=C``, each word quoted."""
        remote = " ".join(shlex.quote(word) for word in ("env", "LC_ALL=C", *words))
        shared = self._master.client_options() if self._master is not None else []
        return [*self.ssh, *SSH_OPTIONS, *shared, "--", self.host, remote]

    def _run(
        self, words: Sequence[str], timeout: float = SHORT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a short remote command; exit 255 (ssh itself failed) becomes RecoverError."""
        self._connect()
        try:
            done = subprocess.run(
                self.argv(words),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RecoverError(
                f"{words[0]} on {self.host} over ssh did not finish within {timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise RecoverError(f"cannot run {self.ssh[0]}: {exc.strerror}") from None
        if done.returncode == SSH_FAILED:
            raise self._unreachable(done.stderr, done.returncode)
        return done

    def _unreachable(self, stderr: bytes, returncode: int) -> RecoverError:
        return RecoverError(f"cannot reach {self.host} over ssh: {_detail(stderr, returncode)}")

    def stat_size(self, path: str) -> int | None:
        _check_path(path, absolute=True)
        done = self._run(["stat", "-L", "-c", "%F/%s", "--", path])
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip()
            if message.endswith(_NOT_THERE):
                return None
            detail = _detail(done.stderr, done.returncode)
            raise RecoverError(f"cannot stat {_printable(path)} on {self.host}: {detail}")
        kind, _, size = done.stdout.decode("ascii", "replace").strip().rpartition("/")
        if not kind.startswith("regular"):  # "regular file", "regular empty file"
            return None
        try:
            return int(size)
        except ValueError:
            raise RecoverError(
                f"stat on {self.host} printed something unexpected: {done.stdout[:80]!r}"
            ) from None

    def has_qemu_img(self) -> bool:
        # `command` is a shell builtin, so it needs a shell of its own behind `env`.
        done = self._run(["sh", "-c", f"command -v {qemu.QEMU_IMG}"])
        return done.returncode == 0 and bool(done.stdout.strip())

    def _qemu_img(self, args: list[str], timeout: float) -> bytes:
        # umask 077: the converted temporary file next to _base is never world-readable.
        done = self._run(
            ["sh", "-c", 'umask 077 && exec "$@"', "sh", qemu.QEMU_IMG, *args], timeout
        )
        if done.returncode == COMMAND_NOT_FOUND:
            raise QemuImgError(
                f"qemu-img is not installed on {self.host}",
                hint="install qemu-utils there, or copy the file and use --base-file",
            )
        if done.returncode != 0:
            detail = _detail(done.stderr or done.stdout, done.returncode)
            raise QemuImgError(f"qemu-img {args[0]} failed on {self.host}: {detail}")
        return done.stdout

    def qemu_img_info(self, path: str) -> ImageInfo:
        _check_path(path, absolute=True)
        output = self._qemu_img(
            ["info", "--output=json", "--force-share", "--", path], qemu.INFO_TIMEOUT_S
        )
        try:
            return ImageInfo.from_json(json.loads(output))
        except (ValueError, TypeError, AttributeError) as exc:
            raise QemuImgError(
                f"qemu-img info on {self.host} printed something unexpected: {exc}"
            ) from None

    def convert(self, src: str, src_fmt: str, dest: str, dest_fmt: str) -> None:
        _check_path(src, absolute=True)
        _check_path(dest, absolute=True)
        self._qemu_img(
            ["convert", "-f", src_fmt, "-O", dest_fmt, "--", src, dest], qemu.CONVERT_TIMEOUT_S
        )

    def free_bytes(self, directory: str) -> int:
        _check_path(directory, absolute=True)
        # f_bavail * f_frsize, what shutil.disk_usage().free reports; no df column parsing.
        done = self._run(["stat", "-f", "-c", "%a %S", "--", directory])
        if done.returncode != 0:
            detail = _detail(done.stderr, done.returncode)
            raise RecoverError(
                f"cannot read the free space of {_printable(directory)} on {self.host}: {detail}"
            )
        try:
            available, block = (int(word) for word in done.stdout.split())
        except ValueError:
            raise RecoverError(
                f"stat -f on {self.host} printed something unexpected: {done.stdout[:80]!r}"
            ) from None
        return available * block

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        _check_path(path, absolute=True)
        self._connect()
        argv = self.argv(["sh", "-c", _STREAM_SCRIPT, "sh", path])
        # stderr goes to a file: a pipe nobody reads could fill up and stall the stream.
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, bufsize=0
                )
            except OSError as exc:
                raise RecoverError(f"cannot run {self.ssh[0]}: {exc.strerror}") from None
            source = cast(IO[bytes], proc.stdout)
            _widen_pipe(source.fileno())
            reader = _CountingReader(cast(io.RawIOBase, source))
            try:
                yield _buffered(reader)
                complete = reader.drained()
            except BaseException:
                _stop(proc)
                raise
            finally:
                source.close()
            if not complete:  # the caller stopped early: its choice, not an error
                _stop(proc)
                return
            returncode = proc.wait()
            errors.seek(0)
            stderr = errors.read()
        self._check_stream(path, returncode, stderr, reader.count)

    def _check_stream(self, path: str, returncode: int, stderr: bytes, received: int) -> None:
        shown = _printable(path)
        detail = _detail(stderr, returncode)
        if returncode == SSH_FAILED:
            if received == 0:
                raise self._unreachable(stderr, returncode)
            raise RecoverError(
                f"lost the ssh connection to {self.host} while reading {shown} "
                f"after {received} bytes: {detail}"
            )
        if returncode < 0:
            raise RecoverError(
                f"ssh to {self.host} was killed by signal {-returncode} while reading {shown} "
                f"after {received} bytes"
            )
        if returncode != 0:
            raise RecoverError(f"cannot read {shown} on {self.host}: {detail}")
        match = _SIZE_RE.search(stderr)
        if match is not None and int(match.group(1)) != received:
            raise RecoverError(
                f"{shown} on {self.host} changed while it was read: "
                f"expected {int(match.group(1))} bytes, received {received}"
            )

    def remove(self, path: str) -> None:
        _check_path(path, absolute=True)
        done = self._run(["rm", "-f", "--", path])
        if done.returncode != 0:
            detail = _detail(done.stderr, done.returncode)
            raise RecoverError(f"cannot remove {_printable(path)} on {self.host}: {detail}")


#: The stream's pipe, widened from Linux's 64 KiB: ssh hands over the bytes in 1 MiB
#: rather than 64 KiB steps, sixteen times fewer wake-ups of ssh and of this reader
#: (fs/pipe.c, the default /proc/sys/fs/pipe-max-size allows 1 MiB unprivileged).
PIPE_SIZE = 1024 * 1024


def _widen_pipe(fd: int) -> None:
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, set_size, PIPE_SIZE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
