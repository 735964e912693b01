"""A private MariaDB server for the benchmarks, like the tests' (tests/conftest.py).

``mariadb-install-db`` into a fresh datadir, then ``mariadbd --no-defaults`` on a
free port of 127.0.0.1 with the tests' server options (no binlog, no doublewrite,
flush at most once a second: a throw-away server) and a buffer pool big enough
for the cloud. Never the system server on :3306.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "sql" / "schemas"
SQL_MODE = (
    "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION"
)


def find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise SystemExit(f"error: {name} not found (Debian: apt-get install mariadb-server)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MariaDB:
    """One server; ``url(db)``, ``client_argv(db)``, ``create(db, schema)``, ``stop()``."""

    def __init__(self, base: Path, buffer_pool: str) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mariadb.sock"
        self.log = base / "mariadbd.err"
        self.client = find_binary("mariadb")
        self.mariadbd = find_binary("mariadbd")
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.buffer_pool = buffer_pool
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def options(self) -> list[str]:
        return [
            f"--sql-mode={SQL_MODE}",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-innodb-doublewrite",
            f"--innodb-buffer-pool-size={self.buffer_pool}",
            "--innodb-log-file-size=1G",
            "--max-allowed-packet=64M",
            "--local-infile=1",
        ]

    def start(self) -> None:
        install = shutil.which("mariadb-install-db") or find_binary("mysql_install_db")
        self.datadir.mkdir(parents=True)
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--user={self.user}",
                f"--datadir={self.datadir}",
                f"--tmpdir={self.base}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            check=True,
            capture_output=True,
        )
        for _attempt in range(5):
            self.port = free_port()
            argv = [
                self.mariadbd,
                "--no-defaults",
                f"--user={self.user}",
                f"--datadir={self.datadir}",
                f"--pid-file={self.base / 'mariadbd.pid'}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--log-error={self.log}",
                f"--tmpdir={self.base}",
                *self.options(),
            ]
            with (self.base / "mariadbd.out").open("ab") as out:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._ping():
                    return
                time.sleep(0.2)
            self.stop()
        raise SystemExit(f"error: mariadbd did not start; see {self.log}:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def _ping(self) -> bool:
        done = subprocess.run(
            [*self.client_argv(), "-e", "SELECT 1"], capture_output=True, check=False
        )
        return done.returncode == 0

    def url(self, db: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{db}?charset=utf8"

    def client_argv(self, db: str | None = None) -> list[str]:
        argv = [
            self.client,
            "--no-defaults",
            "--protocol=tcp",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--user=root",
        ]
        return [*argv, f"--database={db}"] if db else argv

    def sql(self, statement: str, db: str | None = None) -> str:
        done = subprocess.run(
            [*self.client_argv(db), "--batch", "--skip-column-names", "-e", statement],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{statement[:200]}: {done.stderr.strip()}")
        return done.stdout

    def create(self, db: str, schema: str) -> str:
        """Database ``db`` (CHARACTER SET utf8, like DevStack) with ``sql/schemas/<schema>.sql``."""
        self.sql(f"DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8")
        with (SCHEMAS / f"{schema}.sql").open("rb") as ddl:
            done = subprocess.run(
                [*self.client_argv(db), "--comments"], stdin=ddl, capture_output=True, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"loading {schema} into {db}: {done.stderr.decode()}")
        return self.url(db)

    def version(self) -> str:
        return self.sql("SELECT VERSION()").strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def describe(self) -> str:
        return shlex.join([self.mariadbd, "--no-defaults", *self.options()])
