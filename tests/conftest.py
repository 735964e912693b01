"""Pytest fixtures: a private MariaDB server and cheap, empty copies of the real schemas.

* ``mariadb_server`` (session): one ``mariadbd`` started through pytest-mysql's
  executor, on a free port of 127.0.0.1, with its datadir under pytest's tmp dir.
* ``make_db`` (function): ``make_db(schema, name) -> url``, a database ``name``
  holding the DDL of ``sql/schemas/<schema>.sql``, every table empty and with
  AUTO_INCREMENT back at 1. Each (schema, name) is loaded once per session;
  later requests only TRUNCATE the tables that a previous test touched.
* ``mysql_proc``: pytest-mysql's own process fixture, overridden to be the same
  server, so pytest-mysql's ``mysql`` client fixture works as well.

Missing MariaDB binaries skip these tests locally and fail them under ``CI=true``
(see ``tests.helpers.require_binary``). The server ignores every ``my.cnf``
(``--no-defaults``), so the host's own MariaDB set-up cannot leak in.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from mirakuru.exceptions import AlreadyRunning
from port_for import get_port
from pytest_mysql.executor import MySQLExecutor

from tests.helpers import SCHEMA_DIR, find_binary, require_binary

MARIADB_DEFAULT_SQL_MODE = (
    "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION"
)
"""MariaDB's built-in default ``sql_mode`` (10.2.4 and later), what production servers run."""

SERVER_OPTIONS: tuple[str, ...] = (
    f"--sql-mode={MARIADB_DEFAULT_SQL_MODE}",
    # Server charset as in the Debian/Ubuntu packages' 50-server.cnf. The test
    # databases themselves are created "CHARACTER SET utf8", like DevStack does.
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--skip-name-resolve",
    # Speed: a throw-away server needs neither durability nor a binlog.
    "--skip-log-bin",
    "--innodb-flush-log-at-trx-commit=0",
    "--skip-innodb-doublewrite",
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=48M",
)
"""Options passed to ``mariadbd`` after the paths/port ones."""

LOCK_WAIT_TIMEOUT = 15
"""Seconds the harness waits for a metadata lock before it reports a leaked transaction."""

_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_SYSTEM_DBS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class MariaDBExecutor(MySQLExecutor):
    """pytest-mysql's ``MySQLExecutor`` running ``mariadbd`` directly, isolated from ``my.cnf``.

    pytest-mysql builds a ``mysqld_safe`` command line and runs
    ``mysql_install_db`` without extra options. Here the executor keeps its
    start/readiness logic (TCP port *and* unix socket up) but:

    * runs ``mariadbd --no-defaults ...`` (``--no-defaults`` has to be first,
      which pytest-mysql's ``params`` cannot do), so no ``/etc/mysql`` or
      ``~/.my.cnf`` setting leaks in;
    * passes ``--user=<current user>``: as root, ``mariadbd`` refuses to start
      without ``--user=root``;
    * initialises the datadir with ``--auth-root-authentication-method=normal``
      so that ``root`` has an empty password over TCP (the default, unix_socket
      auth, only works on the socket for the OS user root);
    * stops with SIGTERM (a clean shutdown for mariadbd) instead of ``mysqladmin``.
    """

    def __init__(
        self,
        *,
        mariadbd: str,
        install_db: str,
        base_directory: Path,
        port: int,
        user: str,
        host: str = "127.0.0.1",
        options: tuple[str, ...] = SERVER_OPTIONS,
        timeout: int = 60,
    ) -> None:
        """Prepare (not start) a server on ``host:port`` with its files under ``base_directory``."""
        logfile = base_directory / f"mariadbd.{port}.err"
        super().__init__(
            mysqld_safe=Path(mariadbd),
            mysqld=Path(mariadbd),
            admin_exec="",
            logfile_path=str(logfile),
            params="",
            base_directory=base_directory,
            user=user,
            host=host,
            port=port,
            timeout=timeout,
            install_db=install_db,
        )
        argv = [
            mariadbd,
            "--no-defaults",
            f"--user={user}",
            f"--datadir={self.datadir}",
            f"--pid-file={self.pidfile}",
            f"--socket={self.unixsocket}",
            f"--port={port}",
            f"--bind-address={host}",
            f"--log-error={logfile}",
            f"--tmpdir={base_directory}",
            *options,
        ]
        # Replace the mysqld_safe command line built by MySQLExecutor.__init__.
        self.command = shlex.join(argv)
        self.command_parts = argv

    def initialise_mysql_db_install(self) -> bool:
        """Create the system tables in the empty datadir with ``mariadb-install-db``."""
        if self._initialised:
            return True
        assert self.install_db is not None
        argv = [
            self.install_db,
            "--no-defaults",
            f"--user={self.user}",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.base_directory}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(argv)} failed with exit {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        self._initialised = True
        return True

    def shutdown(self) -> None:
        """Do nothing: ``stop()`` sends SIGTERM, which mariadbd handles as a clean shutdown."""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's error log (for failure messages)."""
        try:
            text = Path(self.logfile_path).read_text(errors="replace")
        except OSError as exc:
            return f"(no error log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class MariaDBServer:
    """Handle on the session's private MariaDB server (the ``mariadb_server`` fixture).

    Attributes: ``host`` (``"127.0.0.1"``), ``port``, ``user`` (``"root"``, no
    password), ``socket``, ``client`` (path of the ``mariadb`` client),
    ``executor`` and ``startup_seconds`` (datadir initialisation + start).
    """

    user = "root"

    def __init__(self, executor: MariaDBExecutor, client: str, startup_seconds: float) -> None:
        """Wrap a started ``executor``; ``client`` is the ``mariadb`` binary."""
        self.executor = executor
        self.host: str = executor.host
        self.port: int = executor.port
        self.socket: str = executor.unixsocket
        self.client = client
        self.startup_seconds = startup_seconds
        self._admin: pymysql.connections.Connection[Any] | None = None

    def url(self, db: str) -> str:
        """SQLAlchemy URL of database ``db``: ``mysql+pymysql://root@127.0.0.1:<port>/<db>?charset=utf8``."""
        return f"mysql+pymysql://{self.user}@{self.host}:{self.port}/{db}?charset=utf8"

    def client_argv(self, db: str | None = None) -> list[str]:
        """Argv of the ``mariadb`` command-line client connected (TCP) to database ``db``.

        Append options or a ``-e "SQL"``; feed SQL on stdin. ``--no-defaults``
        keeps ``~/.my.cnf`` out of it.
        """
        argv = [
            self.client,
            "--no-defaults",
            "--protocol=tcp",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--user={self.user}",
        ]
        if db is not None:
            argv.append(f"--database={db}")
        return argv

    def connect(self, db: str | None = None, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A new PyMySQL connection (autocommit, utf8mb4) to ``db``; the caller closes it."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": "",
            "database": db,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    @property
    def admin(self) -> pymysql.connections.Connection[Any]:
        """The harness's own long-lived connection (no default database), reconnected if needed."""
        if self._admin is not None:
            try:
                self._admin.ping(False)
            except pymysql.MySQLError:
                self.close()
        if self._admin is None:
            self._admin = self.connect(
                init_command=f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}"
            )
        return self._admin

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the admin connection (autocommit) and return all rows as tuples.

        Qualify table names with their database: the admin connection has none.
        """
        with self.admin.cursor() as cur:
            cur.execute(sql, args)
            return [tuple(row) for row in cur.fetchall()]

    def table_names(self, db: str) -> list[str]:
        """Names of the base tables of database ``db``, in Python (codepoint) order."""
        rows = self.query(
            "SELECT TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
            (db,),
        )
        return sorted(row[0] for row in rows)

    def checksum(self, db: str) -> dict[str, int | None]:
        """``CHECKSUM TABLE`` of every base table of ``db``: ``{table: checksum}``.

        An empty table checksums to 0; ``None`` means the server could not read
        the table. Compare two results to prove that no row changed.
        """
        tables = self.table_names(db)
        if not tables:
            return {}
        qualified = ", ".join(f"{_quote(db)}.{_quote(t)}" for t in tables)
        rows = self.query(f"CHECKSUM TABLE {qualified}")
        prefix = f"{db}."
        result: dict[str, int | None] = {}
        for full_name, value in rows:
            name = full_name[len(prefix) :] if full_name.startswith(prefix) else full_name
            result[name] = None if value is None else int(value)
        return result

    def processlist(self) -> list[tuple[Any, ...]]:
        """Other sessions on the server: (id, user, db, command, time, state, info)."""
        return self.query(
            "SELECT ID, USER, DB, COMMAND, TIME, STATE, LEFT(INFO, 200)"
            " FROM information_schema.PROCESSLIST"
            " WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon' ORDER BY ID"
        )

    def close(self) -> None:
        """Close the admin connection."""
        if self._admin is not None and self._admin.open:
            with contextlib.suppress(pymysql.MySQLError):
                self._admin.close()
        self._admin = None


def _fingerprint_sql(db: str) -> str:
    """One-row query: ('fp', summary of db's tables, columns, indexes, FKs, checks, triggers)."""
    lit = _literal(db)

    def part(table: str, schema_column: str, fields: str) -> str:
        return (
            f"(SELECT CONCAT(COUNT(*), ':', IFNULL(SUM(CRC32(CONCAT_WS('|', {fields}))), 0))"
            f" FROM information_schema.{table} WHERE {schema_column} = {lit})"
        )

    parts = [
        part("TABLES", "TABLE_SCHEMA", "TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION"),
        part(
            "COLUMNS",
            "TABLE_SCHEMA",
            "TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE,"
            " IFNULL(COLUMN_DEFAULT, '~'), EXTRA, IFNULL(COLLATION_NAME, '~')",
        ),
        part(
            "STATISTICS",
            "TABLE_SCHEMA",
            "TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, IFNULL(SUB_PART, '~')",
        ),
        part(
            "REFERENTIAL_CONSTRAINTS",
            "CONSTRAINT_SCHEMA",
            "TABLE_NAME, CONSTRAINT_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE",
        ),
        part("CHECK_CONSTRAINTS", "CONSTRAINT_SCHEMA", "TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE"),
        part(
            "TRIGGERS",
            "TRIGGER_SCHEMA",
            "TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_STATEMENT",
        ),
        f"(SELECT CONCAT(DEFAULT_CHARACTER_SET_NAME, '/', DEFAULT_COLLATION_NAME)"
        f" FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit})",
    ]
    return f"SELECT 'fp', CONCAT_WS(' ', {', '.join(parts)})"


@dataclass
class _LoadedDB:
    schema: str
    probe_sql: str
    fingerprint: str


class DatabaseFactory:
    """``make_db(schema, name) -> url``: database ``name`` with ``sql/schemas/<schema>.sql``, empty.

    The first request of a (schema, name) pair creates the database
    (``CHARACTER SET utf8``) and loads the DDL with the ``mariadb`` client. Later
    requests run ONE probe query that lists the tables holding rows or with
    AUTO_INCREMENT above 1 and fingerprints the DDL, then TRUNCATE only those
    tables (``FOREIGN_KEY_CHECKS=0``). A database whose DDL a test changed, or
    dropped, is dropped and loaded again; requesting ``name`` with another
    schema also drops and reloads it.

    Counters for tests of the harness: ``loads[(schema, name)]`` (DDL loads),
    ``resets[(schema, name)]`` (cheap resets), ``drift_reloads[(schema, name)]``
    (reloads because the DDL had changed); ``last_truncated`` (tables the last
    reset truncated) and ``last_seconds`` (duration of the last call).
    """

    def __init__(self, server: MariaDBServer, schema_dir: Path = SCHEMA_DIR) -> None:
        """Create databases on ``server`` from the ``*.sql`` files in ``schema_dir``."""
        self.server = server
        self.schema_dir = schema_dir
        self.loads: Counter[tuple[str, str]] = Counter()
        self.resets: Counter[tuple[str, str]] = Counter()
        self.drift_reloads: Counter[tuple[str, str]] = Counter()
        self.last_truncated: list[str] = []
        self.last_seconds = 0.0
        self._loaded: dict[str, _LoadedDB] = {}

    def schemas(self) -> list[str]:
        """The schema names available: the stems of ``sql/schemas/*.sql``."""
        return sorted(p.stem for p in self.schema_dir.glob("*.sql"))

    def schema_file(self, schema: str) -> Path:
        """Path of the DDL file of ``schema``; ``ValueError`` if there is none."""
        path = self.schema_dir / f"{schema}.sql"
        if "/" in schema or not path.is_file():
            raise ValueError(f"unknown schema {schema!r}; available: {', '.join(self.schemas())}")
        return path

    def __call__(self, schema: str, name: str) -> str:
        """Return the SQLAlchemy URL of database ``name`` holding ``schema``'s tables, all empty."""
        if not _DB_NAME_RE.match(name) or name.lower() in _SYSTEM_DBS:
            raise ValueError(f"bad database name {name!r}: use [A-Za-z0-9_], not a system database")
        path = self.schema_file(schema)
        started = time.perf_counter()
        self.last_truncated = []
        try:
            loaded = self._loaded.get(name)
            if loaded is None or loaded.schema != schema:
                self._load(schema, name, path)
            elif not self._reset(name, loaded):
                self.drift_reloads[(schema, name)] += 1
                self._load(schema, name, path)
            else:
                self.resets[(schema, name)] += 1
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1205:  # ER_LOCK_WAIT_TIMEOUT
                sessions = "\n".join(map(repr, self.server.processlist()))
                raise RuntimeError(
                    f"make_db({schema!r}, {name!r}): timed out waiting for a lock; a previous"
                    " test probably left a transaction open (close connections, dispose"
                    f" engines). Sessions:\n{sessions}"
                ) from exc
            raise
        finally:
            self.last_seconds = time.perf_counter() - started
        return self.server.url(name)

    def _load(self, schema: str, name: str, path: Path) -> None:
        self._loaded.pop(name, None)
        server = self.server
        server.query(f"DROP DATABASE IF EXISTS {_quote(name)}")
        server.query(f"CREATE DATABASE {_quote(name)} CHARACTER SET utf8")
        # --comments keeps the "--" comments inside trigger bodies, as in the dumps.
        argv = [*server.client_argv(name), "--comments"]
        with path.open("rb") as ddl:
            result = subprocess.run(argv, stdin=ddl, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"loading {path} into {name!r} failed (exit {result.returncode}):\n"
                + result.stderr.decode(errors="replace")
            )
        self.loads[(schema, name)] += 1
        tables = server.table_names(name)
        lit_db = _literal(name)
        probes = [
            f"(SELECT 'dirty', {_literal(t)} FROM {_quote(name)}.{_quote(t)} LIMIT 1)"
            for t in tables
        ]
        probes.append(
            "(SELECT 'dirty', TABLE_NAME FROM information_schema.TABLES"
            f" WHERE TABLE_SCHEMA = {lit_db} AND AUTO_INCREMENT > 1)"
        )
        fingerprint_sql = _fingerprint_sql(name)
        probes.append(f"({fingerprint_sql})")
        fingerprint = server.query(fingerprint_sql)[0][1]
        self._loaded[name] = _LoadedDB(schema, " UNION ALL ".join(probes), fingerprint)

    def _reset(self, name: str, loaded: _LoadedDB) -> bool:
        """Empty the tables of ``name``; False if its DDL is no longer the loaded one."""
        try:
            rows = self.server.query(loaded.probe_sql)
        except (pymysql.err.ProgrammingError, pymysql.err.OperationalError) as exc:
            if exc.args and exc.args[0] in (1049, 1146):  # unknown database / table
                return False
            raise
        fingerprint = next((value for kind, value in rows if kind == "fp"), None)
        if fingerprint != loaded.fingerprint:
            return False
        dirty = sorted({value for kind, value in rows if kind == "dirty"})
        if dirty:
            statements = ["SET FOREIGN_KEY_CHECKS = 0"]
            statements += [f"TRUNCATE TABLE {_quote(name)}.{_quote(t)}" for t in dirty]
            try:
                for statement in statements:
                    self.server.query(statement)
            finally:
                self.server.query("SET FOREIGN_KEY_CHECKS = 1")
        self.last_truncated = dirty
        return True


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """The session's private MariaDB server (``MariaDBServer``), started on first use.

    ``mariadbd`` runs as the current user (``--user=root`` when root), listens
    on 127.0.0.1 at a free port and keeps its datadir in pytest's tmp dir
    (removed at the end; the error log stays). ``root`` has no password. It is
    stopped when the session ends. Skips (or fails with ``CI=true``) if the
    MariaDB server or client binaries are missing.
    """
    mariadbd = require_binary("mariadbd")
    install_db = (
        find_binary("mariadb-install-db")
        or find_binary("mysql_install_db")
        or require_binary("mariadb-install-db")
    )
    client = require_binary("mariadb")
    user = pwd.getpwuid(os.geteuid()).pw_name
    base = tmp_path_factory.mktemp("mariadb")
    started = time.perf_counter()
    executor: MariaDBExecutor | None = None
    for attempt in range(5):
        port = get_port(None)
        assert port is not None
        executor = MariaDBExecutor(
            mariadbd=mariadbd, install_db=install_db, base_directory=base, port=port, user=user
        )
        try:
            executor.start()
            break
        except AlreadyRunning:  # someone else took the port meanwhile
            if attempt == 4:
                raise
        except Exception as exc:
            raise RuntimeError(
                f"could not start {mariadbd} on port {port}: {exc}\n"
                f"--- {executor.logfile_path} ---\n{executor.log_tail()}"
            ) from exc
    assert executor is not None
    server = MariaDBServer(executor, client, time.perf_counter() - started)
    try:
        yield server
    finally:
        server.close()
        executor.stop()
        shutil.rmtree(executor.datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_proc(mariadb_server: MariaDBServer) -> MySQLExecutor:
    """pytest-mysql's process fixture, overridden: our ``mariadb_server``'s executor.

    So pytest-mysql's stock ``mysql`` fixture (a PyMySQL connection to a fresh
    ``test`` database) also works, against the same server.
    """
    return mariadb_server.executor


@pytest.fixture(scope="session")
def db_factory(mariadb_server: MariaDBServer) -> DatabaseFactory:
    """The session-wide ``DatabaseFactory`` behind ``make_db`` (it remembers what is loaded)."""
    return DatabaseFactory(mariadb_server)


@pytest.fixture
def make_db(db_factory: DatabaseFactory) -> DatabaseFactory:
    """``make_db(schema, name) -> str``: URL of an empty database ``name`` holding ``schema``.

    ``schema`` is a file stem in ``sql/schemas/`` (``"nova-legacy-mitaka"``,
    ``"nova_api-cdeec0c85668"``, ``"glance-2024_1_contract01"`` ...); ``name`` is
    the database name (``[A-Za-z0-9_]``, e.g. ``"cell1"``). Whatever an earlier
    test left in it, the database comes back with every table empty and
    AUTO_INCREMENT at 1. Cheap after the first request of a (schema, name)
    pair; see ``DatabaseFactory`` for the counters it exposes.
    """
    return db_factory


# --- sshd: compute nodes reached over ssh (tests/sshd.py) --------------------------------

# Imported here, not at the top, so this section stays one appended block.
from tests.sshd import CountingSsh, SshdServer, start_sshd  # noqa: E402


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """The session's private ``sshd`` on 127.0.0.1 (``tests.sshd.SshdServer``).

    ``sshd_server.ssh_command`` (``ssh -F <config>``) reaches it as ``compute-1``,
    ``compute-2``, ``compute-3``, ``compute-07``, ``compute-12`` (and aliases added
    with ``add_host``), logged in as the current user with a key made for the
    session; ``compute-down`` is refused; ``compute-noqemu`` has no qemu-img on
    its PATH. Skips (fails under ``CI=true``) without sshd/ssh/ssh-keygen.
    """
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ssh_env(monkeypatch: pytest.MonkeyPatch, sshd_server: SshdServer) -> SshdServer:
    """``RECOVER_SSH_COMMAND`` set to ``sshd_server.ssh_command`` for this test; the server."""
    monkeypatch.setenv("RECOVER_SSH_COMMAND", sshd_server.ssh_command)
    return sshd_server


@pytest.fixture
def counting_ssh(tmp_path: Path, sshd_server: SshdServer) -> CountingSsh:
    """A ``tests.sshd.CountingSsh``: ``.command`` for RECOVER_SSH_COMMAND, ``.bytes_received()``.

    It does not set the variable itself: pass ``.command`` to ``SshTransport`` or
    ``monkeypatch.setenv("RECOVER_SSH_COMMAND", counting_ssh.command)``.
    """
    return CountingSsh(tmp_path / "counting-ssh", sshd_server)


# --- glance_api: a real Glance 33 API, no Keystone (tests/glance_api.py) -------------------

# Imported here, not at the top, so this section stays one appended block.
import sys  # noqa: E402

from tests.glance_api import GlanceApi, glance_venv, start_glance  # noqa: E402

GLANCE_API_DB = "ga_glance"
"""The glance_api tier's database: synced by Glance itself, never TRUNCATEd by ``make_db``."""


@pytest.fixture(scope="session")
def glance_api_venv() -> Path:
    """Venv with glance 33 + gunicorn + pymysql (``$RECOVER_GLANCE_VENV``, else ``.cache/glance-venv``).

    Built on first use (30-40 s) and reused; skips locally and fails under
    ``CI=true`` when it cannot be installed.
    """
    venv, seconds = glance_venv()
    if seconds is not None:
        sys.stderr.write(f"\nglance venv {venv} built in {seconds:.1f} s\n")
    return venv


def _synced_glance(
    server: MariaDBServer, venv: Path, tmp_path_factory: pytest.TempPathFactory, db: str
) -> GlanceApi:
    """A Glance API on database ``db``, dropped, created ``CHARACTER SET utf8`` and synced."""
    server.query(f"DROP DATABASE IF EXISTS `{db}`")
    server.query(f"CREATE DATABASE `{db}` CHARACTER SET utf8")
    directory = tmp_path_factory.mktemp(db.replace("_", "-"))
    return start_glance(directory, venv, server, db, sync=True)


@pytest.fixture(scope="session")
def glance_api(
    glance_api_venv: Path,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GlanceApi]:
    """A real Glance API (``tests.glance_api.GlanceApi``) for the session.

    Database ``ga_glance`` (dropped and created ``CHARACTER SET utf8``, then
    ``glance-manage db_sync``) on ``mariadb_server``; legacy single filesystem
    store, ``delayed_delete = false``; gunicorn on a free port of 127.0.0.1,
    stopped at session end. ``.endpoint``, ``.db_url``, ``.db_name``,
    ``.store_dir``, ``.conf_path``, ``.client()``, ``.query(sql)``,
    ``.log_tail()``. The database persists across tests: create fresh images.
    """
    api = _synced_glance(mariadb_server, glance_api_venv, tmp_path_factory, GLANCE_API_DB)
    sys.stderr.write(
        f"\nglance_api {api.endpoint}: db_sync {api.sync_seconds:.2f} s,"
        f" gunicorn up in {api.startup_seconds:.2f} s\n"
    )
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="session")
def glance_api_delayed(
    glance_api: GlanceApi, glance_api_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GlanceApi]:
    """A second Glance API on ``glance_api``'s database and store, with ``delayed_delete = true``.

    A DELETE through it leaves ``pending_delete`` rows and the file in the store
    (no scrubber runs). Started on first request (about 1.3 s).
    """
    api = start_glance(
        tmp_path_factory.mktemp("glance-api-delayed"), glance_api_venv, glance_api.server,
        glance_api.db_name, store_dir=glance_api.store_dir, delayed_delete=True,
    )  # fmt: skip
    try:
        yield api
    finally:
        api.stop()


# --- ceph: a real single-node Ceph (mon + memstore OSD) and glance_store's RBD driver ----------
# (tests/ceph.py). Imported here, not at the top, so this section stays one appended block.

from tests.ceph import CephCluster, GlanceStoreRbd, glance_rbd_venv, start_ceph  # noqa: E402
from tests.glance_api import RbdStore  # noqa: E402

GLANCE_API_RBD_DB = "ga_glance_rbd"
"""The RBD Glance API's database (its own: ``glance_api``'s stays as it is)."""
GLANCE_API_RBD_MULTI_DB = "ga_glance_rbd_multi"
"""The multi-store RBD Glance API's database."""


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """The session's Ceph cluster (``tests.ceph.CephCluster``), started on first use (3-5 s).

    One mon on a free port of 127.0.0.1 (messenger v1), one memstore OSD, cephx;
    pools ``images`` and ``vms``; users ``admin``, ``glance``, ``nova`` with
    keyrings found through ``.conf_path``. Stopped (by pid) at session end.
    Skips locally, fails under ``CI=true``, without the Ceph packages.
    """
    cluster = start_ceph(tmp_path_factory.mktemp("ceph"))
    sys.stderr.write(
        f"\nceph {cluster.mon_addr} fsid {cluster.fsid}: up in {cluster.startup_seconds:.2f} s"
        f" {cluster.steps}\n"
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def glance_rbd_python_venv() -> Path:
    """Venv with glance 33, glance_store and Debian's rados/rbd (``tests.ceph.glance_rbd_venv``).

    ``$RECOVER_GLANCE_RBD_VENV``, else ``glance-rbd-venv`` beside
    ``$RECOVER_GLANCE_VENV``, else ``.cache/glance-rbd-venv``; built on first
    use (about 50 s) and reused.
    """
    venv, seconds = glance_rbd_venv()
    if seconds is not None:
        sys.stderr.write(f"\nglance-rbd venv {venv} built in {seconds:.1f} s\n")
    return venv


@pytest.fixture
def glance_store_rbd(glance_rbd_python_venv: Path, ceph_cluster: CephCluster) -> GlanceStoreRbd:
    """glance_store's RBD driver on ``ceph_cluster`` (pool ``images``, user ``glance``)."""
    return GlanceStoreRbd(glance_rbd_python_venv, ceph_cluster)


@pytest.fixture(scope="session")
def glance_api_rbd(
    glance_rbd_python_venv: Path,
    ceph_cluster: CephCluster,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GlanceApi]:
    """A real Glance API whose store is RBD: pool ``images`` of ``ceph_cluster``, as ``glance``.

    As ``glance_api`` (gunicorn, noauth, ``show_image_direct_url``) but on the
    glance-rbd venv, with database ``ga_glance_rbd`` (dropped, created,
    ``db_sync``). Locations are ``rbd://<fsid>/images/<id>/snap``.
    """
    yield from _glance_rbd(
        "glance-api-rbd", GLANCE_API_RBD_DB, RbdStore(ceph_cluster.conf_path),
        glance_rbd_python_venv, mariadb_server, tmp_path_factory,
    )  # fmt: skip


@pytest.fixture(scope="session")
def glance_api_rbd_multistore(
    glance_rbd_python_venv: Path,
    ceph_cluster: CephCluster,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GlanceApi]:
    """As ``glance_api_rbd``, but multi-store: ``enabled_backends = ceph:rbd``, section ``[ceph]``.

    Database ``ga_glance_rbd_multi``; locations carry ``{"store": "ceph"}``.
    """
    yield from _glance_rbd(
        "glance-api-rbd-multi", GLANCE_API_RBD_MULTI_DB,
        RbdStore(ceph_cluster.conf_path, backend="ceph"), glance_rbd_python_venv,
        mariadb_server, tmp_path_factory,
    )  # fmt: skip


def _glance_rbd(
    name: str, db: str, rbd: RbdStore, venv: Path, mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GlanceApi]:  # fmt: skip
    mariadb_server.query(f"DROP DATABASE IF EXISTS `{db}`")
    mariadb_server.query(f"CREATE DATABASE `{db}` CHARACTER SET utf8")
    api = start_glance(tmp_path_factory.mktemp(name), venv, mariadb_server, db, sync=True, rbd=rbd)
    sys.stderr.write(
        f"\n{name} {api.endpoint}: db_sync {api.sync_seconds:.2f} s,"
        f" gunicorn up in {api.startup_seconds:.2f} s\n"
    )
    try:
        yield api
    finally:
        api.stop()


# --- galera_cluster: a real three-node MariaDB Galera cluster (tests/galera.py) ------------

# Imported here, not at the top, so this section stays one appended block (tests.galera
# reuses MariaDBExecutor, MariaDBServer and DatabaseFactory defined above).
from tests.galera import GaleraCluster, start_galera  # noqa: E402


@pytest.fixture(scope="session")
def galera_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaleraCluster]:
    """The session's three-node Galera cluster (``tests.galera.GaleraCluster``), on first use.

    Three ``mariadbd --no-defaults`` with ``galera-4`` on free ports of 127.0.0.1, datadirs
    in pytest's tmp dir, every node ``Synced`` (10-15 s, 452 MiB RSS together).
    ``galera_cluster.make_db(schema, name)`` returns the URLs of one database through node
    1, 2 and 3; ``galera_cluster.nodes[i]`` are ``MariaDBServer``s. Stopped (SIGTERM to
    each pid it started) at session end. Skips (fails under ``CI=true``) without galera-4.
    """
    cluster = start_galera(tmp_path_factory.mktemp("galera"))
    sys.stderr.write(
        f"\ngalera_cluster: {len(cluster.nodes)} nodes Synced in {cluster.startup_seconds:.1f} s,"
        f" {cluster.rss_mib():.0f} MiB RSS\n"
    )
    try:
        yield cluster
    finally:
        cluster.stop()


# --- purged Glance metadata and Nova's copies of it (tests/purge.py, tests/nova_layer.py) --------

from tests.nova_layer import nova_venv  # noqa: E402

GLANCE_PURGE_DB = "ga_purge"
"""The database of ``glance_purge``: its own, so a real purge touches no other test's rows."""


@pytest.fixture(scope="session")
def nova_python() -> str:
    """Python of a venv with nova 34 + pymysql: ``$RECOVER_NOVA_VENV``, else ``.cache/nova-venv``.

    Created on first use (30-60 s) and kept; skipped locally and failed under
    ``CI=true`` when pip cannot install it (``tests.helpers.cached_venv``).
    """
    return str(nova_venv()[0] / "bin" / "python")


@pytest.fixture(scope="session")
def glance_purge(
    glance_api_venv: Path,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GlanceApi]:
    """A real Glance API, like ``glance_api``, on a database of its own (``ga_purge``).

    For the tests that run the real ``glance-manage db purge`` / ``purge_images_table``
    (tests/purge.py): a purge selects on ``deleted_at`` across the whole database.
    """
    api = _synced_glance(mariadb_server, glance_api_venv, tmp_path_factory, GLANCE_PURGE_DB)
    try:
        yield api
    finally:
        api.stop()
