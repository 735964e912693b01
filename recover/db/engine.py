"""Open databases with errors an operator can act on, and passwords masked."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, bindparam, create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from recover.errors import DatabaseError
from recover.secrets import mask_url, remember_url_password, scrub

CONNECT_TIMEOUT_S = 10
#: The one MySQL driver recover ships (a pure-Python one: nothing to compile on a controller).
MYSQL_DRIVER = "pymysql"

log = logging.getLogger(__name__)


def describe_db_error(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's wrapping or any password."""
    orig = getattr(exc, "orig", None)
    if orig is not None and getattr(orig, "args", None):
        args = orig.args
        text = str(args[1]) if len(args) >= 2 else str(args[0])
    else:
        text = str(exc).split("\n(Background on this error")[0]
    return scrub(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)


@dataclass
class Database:
    """One database: an engine plus the tables reflected from it on demand."""

    role: str
    url: URL
    engine: Engine
    _tables: dict[str, Table] = field(default_factory=dict)
    _names: frozenset[str] | None = None
    _galera: dict[str, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.role} database {mask_url(self.url)}"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def table_names(self) -> frozenset[str]:
        if self._names is None:
            try:
                self._names = frozenset(inspect(self.engine).get_table_names())
            except SQLAlchemyError as exc:
                raise DatabaseError(f"cannot read {self.label}: {describe_db_error(exc)}") from exc
        return self._names

    def has_table(self, name: str) -> bool:
        return name in self.table_names()

    def reflect(self, names: Iterable[str]) -> dict[str, Table]:
        """Reflect the named tables that exist (missing ones are simply absent)."""
        wanted = [n for n in names if self.has_table(n) and n not in self._tables]
        if wanted:
            try:
                if self.dialect == "mysql":
                    key = self._columns_digest(wanted)
                    self._tables.update(_SHARED.get(key, lambda: self._reflect(wanted)))
                else:
                    self._tables.update(self._reflect(wanted))
            except SQLAlchemyError as exc:
                raise DatabaseError(f"cannot read {self.label}: {describe_db_error(exc)}") from exc
        return {n: self._tables[n] for n in names if n in self._tables}

    def _reflect(self, wanted: list[str]) -> dict[str, Table]:
        metadata = MetaData()
        metadata.reflect(bind=self.engine, only=wanted)
        return {name: metadata.tables[name] for name in wanted}

    def _columns_digest(self, wanted: list[str]) -> str:
        """What reflection of ``wanted`` depends on, in one round trip: every column's name,
        position, type, nullability, default, key and collation. Two cells of one cloud
        answer the same (nova-manage db sync runs the same migrations on each)."""
        query = text(
            "SELECT table_name, column_name, ordinal_position, column_type, is_nullable,"
            " column_default, column_key, extra, collation_name"
            " FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name IN :names"
            " ORDER BY table_name, ordinal_position"
        ).bindparams(bindparam("names", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"names": sorted(wanted)}).all()
        return hashlib.sha256(repr((sorted(wanted), [tuple(r) for r in rows])).encode()).hexdigest()

    def table(self, name: str) -> Table:
        tables = self.reflect([name])
        if name not in tables:
            raise DatabaseError(f"{self.label} has no table {name!r}")
        return tables[name]

    def dispose(self) -> None:
        self.engine.dispose()

    def galera(self) -> dict[str, str]:
        """The Galera cluster this database is served by (``{}`` when it is no Galera node):
        ``cluster_state_uuid`` (the cluster's data history, the same on every node) and
        ``cluster_name``. A journal records them, so undo may reconnect through any node."""
        if self._galera is None:
            self._galera = {}
            if self.dialect == "mysql":
                with self.engine.connect() as conn:
                    if conn.connection.info.get(GALERA_KEY):
                        status = _variables(conn, "STATUS", "wsrep_cluster_state_uuid")
                        names = _variables(conn, "VARIABLES", "wsrep_cluster_name")
                        self._galera = {
                            "cluster_state_uuid": status.get("wsrep_cluster_state_uuid", ""),
                            "cluster_name": names.get("wsrep_cluster_name", ""),
                        }
        return self._galera


#: How long a cell waits for another cell's reflection of the same schema before it
#: reflects its own (a cell that went silent mid-reflection must not stall the others).
SHARED_REFLECTION_WAIT_S = 5.0


class _SharedReflections:
    """Tables reflected once per distinct schema, for every database that has it.

    Reflection (``SHOW CREATE TABLE`` per table, parsed by SQLAlchemy) costs ~35 ms of CPU
    per cell, under the GIL: with dozens of cells opened at once it was most of the
    inventory's time (docs/performance.md, cells). Cells of one cloud have the same
    tables, so the first cell to ask reflects and the others, whose columns digest is the
    same, use those ``Table`` objects (they hold no connection; statements compile per
    connection). Cells of another schema generation have another digest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, dict[str, Table]] = {}
        self._busy: dict[str, threading.Event] = {}

    def get(self, key: str, reflect: Callable[[], dict[str, Table]]) -> dict[str, Table]:
        with self._lock:
            if key in self._done:
                return self._done[key]
            busy = self._busy.get(key)
            if busy is None:
                busy = self._busy[key] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            busy.wait(SHARED_REFLECTION_WAIT_S)
            with self._lock:
                if key in self._done:
                    return self._done[key]
            return reflect()
        tables: dict[str, Table] | None = None
        try:
            tables = reflect()
            return tables
        finally:
            with self._lock:
                if tables is not None:
                    self._done[key] = tables
                del self._busy[key]
            busy.set()


_SHARED = _SharedReflections()

#: Key in a DBAPI connection's ``info``: True when the server is a Galera node.
GALERA_KEY = "recover_galera"
#: ER_UNKNOWN_SYSTEM_VARIABLE: a Galera older than wsrep_sync_wait (MariaDB < 10.0).
_UNKNOWN_VARIABLE = 1193


def _variables(conn: Any, kind: str, *names: str) -> dict[str, str]:
    """``SHOW GLOBAL <kind>`` values of ``names`` (absent ones are left out)."""
    quoted = ", ".join(f"'{n}'" for n in names)  # constants of this module, never input
    rows = conn.exec_driver_sql(f"SHOW GLOBAL {kind} WHERE Variable_name IN ({quoted})")
    return {str(name).lower(): str(value) for name, value in rows}


def _read_your_writes(dbapi_connection: Any, record: Any) -> None:
    """On a Galera node, make every read of this session wait until the node has applied
    every write-set committed anywhere in the cluster before it (MariaDB KB, "Galera
    Cluster System Variables", ``wsrep_sync_wait``: bit 1 = READ, i.e. SELECT, SHOW and
    BEGIN). Without it, verify, inventory or undo's re-check through node 2 right after a
    commit through node 1 can read node 2's stale rows. Detected once per connection; a
    plain MariaDB/MySQL server (no ``wsrep_on``, or ``wsrep_provider = none``) is left as is.
    """
    cursor = dbapi_connection.cursor()
    try:
        try:
            cursor.execute(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_provider')"
            )
            found = {str(name).lower(): str(value) for name, value in cursor.fetchall()}
        except Exception:  # a server or proxy that will not say: treat it as no Galera node
            found = {}
        galera = found.get("wsrep_on", "OFF").upper() == "ON" and found.get(
            "wsrep_provider", "none"
        ).lower() not in ("", "none")
        record.info[GALERA_KEY] = galera
        if galera:
            try:
                cursor.execute("SET SESSION wsrep_sync_wait = 1")
            except Exception as exc:  # an old Galera: its predecessor, for reads too
                if getattr(exc, "args", (None,))[0] != _UNKNOWN_VARIABLE:
                    raise
                cursor.execute("SET SESSION wsrep_causal_reads = ON")
    finally:
        cursor.close()


def parse_url(text: str, role: str) -> URL:
    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        raise DatabaseError(
            f"{role} database: {mask_url(text)!r} is not a database URL",
            hint="expected e.g. mysql+pymysql://user:password@host/nova?charset=utf8",
        ) from None


def as_configs_mean_it(url: URL, role: str) -> URL:
    """The URL as nova.conf/glance-api.conf write it, made one that recover can open.

    Old configs say ``mysql://`` (SQLAlchemy's default MySQL driver, MySQLdb, a C
    extension recover does not ship); the server speaks the same protocol to PyMySQL.
    devstack appends ``plugin=dbcounter`` (a SQLAlchemy CreateEnginePlugin of its own,
    devstack ``lib/databases/mysql`` ``database_connection_url_mysql``) that is not
    installed here and counts nothing recover needs. Each change is said once on stderr.
    """
    if url.get_backend_name() == "mysql" and url.get_driver_name() != MYSQL_DRIVER:
        log.warning(
            "%s database: %s names the %s driver; using PyMySQL (mysql+%s://) instead",
            role, f"{url.drivername}://", url.get_driver_name(), MYSQL_DRIVER,
        )  # fmt: skip
        url = url.set(drivername=f"mysql+{MYSQL_DRIVER}")
    if "plugin" in url.query:
        plugins = url.query["plugin"]
        names = ", ".join([plugins] if isinstance(plugins, str) else plugins)
        log.warning(
            "%s database: ignoring the SQLAlchemy plugin parameter (plugin=%s) of the URL",
            role, names,
        )  # fmt: skip
        url = url.difference_update_query(["plugin"])
    return url


def open_database(text: str, role: str, *, read_timeout: float | None = None) -> Database:
    """Connect to a database and prove the connection works, or raise DatabaseError.

    ``read_timeout`` (MySQL): a read or write that waits longer fails, so a server that
    accepted the connection and then went silent cannot block a thread for ever.
    """
    remember_url_password(text)
    url = as_configs_mean_it(parse_url(text, role), role)
    connect_args: dict[str, object] = {}
    if url.get_backend_name() == "sqlite":
        path = url.database
        # SQLite would silently create an empty file for a mistyped path.
        if path and path != ":memory:" and not Path(path).is_file():
            raise DatabaseError(f"{role} database {mask_url(url)}: no such file {path}")
    elif url.get_backend_name() == "mysql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if read_timeout is not None:
            # PyMySQL reads the server's greeting with read_timeout too (connections.py
            # connect -> _get_server_information): the one wait connect_timeout misses.
            connect_args["read_timeout"] = read_timeout
            connect_args["write_timeout"] = read_timeout
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except NoSuchModuleError:
        raise DatabaseError(
            f"{role} database {mask_url(url)}: unsupported driver {url.drivername!r}",
            hint="use mysql+pymysql:// or sqlite://",
        ) from None
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"{role} database {mask_url(url)}: {scrub(str(exc))}") from None
    if url.get_backend_name() == "mysql":
        event.listen(engine, "connect", _read_your_writes)
        if url.get_driver_name() == MYSQL_DRIVER:
            event.listen(engine, "do_connect", _connect_sharing_tls_context)
    try:
        with engine.connect():
            pass
    except (DBAPIError, SQLAlchemyError) as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot connect to {role} database {mask_url(url)}: {describe_db_error(exc)}"
        ) from None
    return Database(role=role, url=url, engine=engine)


def _preferred_tls_connection_class() -> type:
    """PyMySQL's Connection, with one TLS context for every connection in PREFERRED mode.

    PyMySQL >= 1.2 tries TLS on every connection that names no TLS option ("PREFERRED",
    ``pymysql/connections.py`` ``Connection.__init__`` -> ``_create_ssl_ctx({})``) and
    builds a new ``ssl.create_default_context()`` for each: the system CA bundle parsed
    again, ~30 ms of CPU under the GIL, although that context verifies nothing
    (``CERT_NONE``, no hostname check, as no CA was named). With dozens of cells opened at
    once it was the largest cost of the inventory (docs/performance.md, cells). The same
    context, built once by PyMySQL's own code, serves every such connection (an
    ``SSLContext`` is safe to share between threads); any connection that names a TLS
    option still gets its own, exactly as PyMySQL builds it.
    """
    import pymysql.connections

    base: Any = pymysql.connections.Connection
    shared: list[Any] = []
    lock = threading.Lock()

    class SharedTlsContextConnection(base):
        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if sslp:
                return super()._create_ssl_ctx(sslp)
            with lock:
                if not shared:
                    shared.append(super()._create_ssl_ctx(sslp))
                return shared[0]

    return SharedTlsContextConnection


_connection_class: type | None = None


def _connect_sharing_tls_context(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """SQLAlchemy's ``do_connect`` hook: connect as the dialect would, through the class above."""
    global _connection_class
    if _connection_class is None:
        _connection_class = _preferred_tls_connection_class()
    return _connection_class(*cargs, **cparams)
