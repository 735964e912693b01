"""Where database URLs and paths come from.

Precedence, highest first (PRODUCT.md): command-line flag > ``RECOVER_*``
environment variable > ``--config`` ini file (section ``[recover]``) >
``--nova-conf`` / ``--glance-conf`` service files > built-in defaults.
"""

from __future__ import annotations

import configparser
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recover.errors import ConfigError
from recover.secrets import remember_secret, remember_url_password
from recover.textfile import CONFIG_LIMIT, read_bounded

DEFAULT_STORE_DIR = "/var/lib/glance/images"
DEFAULT_INSTANCES_PATH = "/var/lib/nova/instances"
#: Seconds a cell may take to answer (nova ``nova/context.py`` ``CELL_TIMEOUT``).
DEFAULT_CELL_TIMEOUT = 60.0
#: glance_store ``_drivers/rbd.py`` defaults: ``rbd_store_ceph_conf`` (empty = librados'
#: default, /etc/ceph/ceph.conf), ``rbd_store_user`` (None; deployments use ``glance``),
#: ``rbd_store_pool`` (``DEFAULT_POOL = 'images'``).
DEFAULT_CEPH_CONF = "/etc/ceph/ceph.conf"
DEFAULT_RBD_USER = "glance"
DEFAULT_RBD_POOL = "images"
CONFIG_SECTION = "recover"

#: option name -> environment variable. Every global option has one.
ENV_VARS: dict[str, str] = {
    "config": "RECOVER_CONFIG",
    "nova_api_db": "RECOVER_NOVA_API_DB",
    "nova_db": "RECOVER_NOVA_DB",
    "glance_db": "RECOVER_GLANCE_DB",
    "nova_conf": "RECOVER_NOVA_CONF",
    "glance_conf": "RECOVER_GLANCE_CONF",
    "store_dir": "RECOVER_STORE_DIR",
    "glance_endpoint": "RECOVER_GLANCE_ENDPOINT",
    "os_token": "RECOVER_OS_TOKEN",
    "cell_timeout": "RECOVER_CELL_TIMEOUT",
    "ceph_conf": "RECOVER_CEPH_CONF",
    "rbd_user": "RECOVER_RBD_USER",
    "rbd_pool": "RECOVER_RBD_POOL",
}

#: keys accepted in the ``[recover]`` section of ``--config``.
INI_KEYS = frozenset(ENV_VARS) - {"config"}


@dataclass(frozen=True)
class Value:
    """A resolved setting and the layer it came from (shown by ``--debug`` and in errors)."""

    value: str
    source: str


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know about where things are."""

    nova_api_db: Value | None = None
    #: Cell databases named explicitly (flag, env or ini); they override discovery.
    nova_dbs: tuple[Value, ...] = ()
    #: ``[database] connection`` of nova.conf: used only when there is no API database.
    nova_conf_db: Value | None = None
    glance_db: Value | None = None
    store_dir: Value = field(default_factory=lambda: Value(DEFAULT_STORE_DIR, "default"))
    #: The default backend id when glance uses ``enabled_backends`` (goes into location meta_data).
    glance_store_id: str | None = None
    #: Every directory of the store ``store_dir`` belongs to (``filesystem_store_datadirs``),
    #: ``store_dir`` first: an existing image file may be in any of them.
    store_dirs: tuple[str, ...] = ()
    #: The type of Glance's default store (``file``, ``rbd``, ``swift``, ...), when known.
    glance_store_kind: str | None = None
    #: Each filesystem backend of a multi-store Glance: ``(backend id, its directories)``.
    glance_file_stores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: glance ``[DEFAULT] hashing_algorithm`` (sha512 when unset).
    hashing_algorithm: str | None = None
    glance_endpoint: Value | None = None
    os_token: Value | None = None
    #: ``--cell-timeout``: a cell that has not answered by then is reported unreachable.
    cell_timeout: float = DEFAULT_CELL_TIMEOUT
    #: The Ceph client of Glance's RBD store (PRODUCT.md "Ceph RBD stores").
    ceph_conf: Value = field(default_factory=lambda: Value(DEFAULT_CEPH_CONF, "default"))
    rbd_user: Value = field(default_factory=lambda: Value(DEFAULT_RBD_USER, "default"))
    rbd_pool: Value = field(default_factory=lambda: Value(DEFAULT_RBD_POOL, "default"))
    #: Multi-store: the backend id of the RBD store (``enabled_backends = ceph:rbd``).
    rbd_store_id: str | None = None
    #: Nova's RBD pool (nova.conf ``[libvirt] images_rbd_pool`` when ``images_type = rbd``),
    #: where the clones of Glance's images are: ``vms`` as deployments name it.
    nova_rbd_pool: str = "vms"

    def cell_urls(self) -> tuple[Value, ...]:
        """The cell databases to scan when discovery through the API database is not used."""
        if self.nova_dbs:
            return self.nova_dbs
        if self.nova_conf_db is not None and self.nova_api_db is None:
            return (self.nova_conf_db,)
        return ()

    def image_dirs(self) -> tuple[str, ...]:
        """The directories an image file of the store may be in, ``store_dir`` first."""
        return self.store_dirs or (self.store_dir.value,)

    def file_store_of(self, directory: Path) -> str | None:
        """The multi-store backend id whose directories include ``directory``, if any."""
        resolved = directory.resolve()
        for store_id, dirs in self.glance_file_stores:
            if any(Path(d).resolve() == resolved for d in dirs):
                return store_id
        return None


def _read_ini(
    path: str, what: str, dict_type: type[dict[str, Any]] = dict
) -> configparser.RawConfigParser:
    # oslo.config files may repeat sections and keys; the last value wins there too.
    parser = configparser.RawConfigParser(strict=False, interpolation=None, dict_type=dict_type)
    try:
        text = read_bounded(path, what, CONFIG_LIMIT, ConfigError)
        # newline=None: universal newlines, as reading the file in text mode did.
        parser.read_file(io.StringIO(text, newline=None), source=path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path} is not a valid ini file: {first}") from None
    return parser


def _get(parser: configparser.RawConfigParser, section: str, key: str) -> str | None:
    if not parser.has_section(section) and section != "DEFAULT":
        return None
    value = parser.get(section, key, fallback=None)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


@dataclass(frozen=True)
class GlanceConf:
    """What recover needs from glance-api.conf."""

    connection: str | None = None
    #: Where glance_store writes a new image of the default store (highest priority datadir).
    store_dir: str | None = None
    #: Every datadir of the default store, ``store_dir`` first.
    store_dirs: tuple[str, ...] = ()
    store_id: str | None = None
    #: Type of the default store: ``file``, ``rbd``, ``swift``, ``http``, ``cinder``, ...
    store_kind: str | None = None
    #: Multi-store: every ``file`` backend and its datadirs.
    file_stores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    hashing_algorithm: str | None = None
    #: The RBD store's ``rbd_store_ceph_conf``/``rbd_store_user``/``rbd_store_pool`` and,
    #: multi-store, its backend id; with the section they were read from.
    rbd: dict[str, str] = field(default_factory=dict)
    rbd_section: str = "glance_store"
    rbd_store_id: str | None = None


def _datadirs(parser: configparser.RawConfigParser, section: str) -> tuple[str, ...]:
    """The datadirs of one filesystem store, the one glance_store writes to first.

    glance_store 5.7.0 ``_drivers/filesystem.py`` ``configure_add``: either
    ``filesystem_store_datadir`` or the repeatable ``filesystem_store_datadirs``
    (``path[:priority]``, priority 0 by default, both at once is a configuration
    error); ``_find_best_datadir`` writes into the highest priority, and among equal
    priorities into the directory with the most free space.
    """
    single = _get(parser, section, "filesystem_store_datadir")
    raw = _get(parser, section, "filesystem_store_datadirs")
    if raw is None:
        return (single,) if single else ()
    if single:
        raise ConfigError(
            f"glance config [{section}] sets both filesystem_store_datadir and "
            "filesystem_store_datadirs, which Glance refuses",
            hint="glance_store accepts only one of them",
        )
    entries: list[tuple[int, int, str]] = []
    for order, line in enumerate(raw.splitlines()):
        if not line.strip():
            continue
        path, _, priority = (part.strip() for part in line.strip().rpartition(":"))
        if not path:  # no colon: the whole line is the path
            path, priority = line.strip(), ""
        try:
            rank = int(priority) if priority else 0
        except ValueError:
            raise ConfigError(
                f"glance config [{section}] filesystem_store_datadirs: invalid priority in "
                f"{line.strip()!r}"
            ) from None
        entries.append((-rank, order, path))
    if not entries:
        return ()
    entries.sort()
    top = [path for rank, _, path in entries if rank == entries[0][0]]
    first = max(top, key=_free_space)  # stable: the first listed wins a tie
    return (first, *(path for _, _, path in entries if path != first))


def _free_space(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


class _MultiStr(dict[str, Any]):
    """A section whose repeated ``*_datadirs`` keys keep every value, one per line, as
    oslo.config reads a ``MultiStrOpt``; any other repeated key: the last value wins."""

    def __setitem__(self, key: str, value: object) -> None:
        previous = self.get(key)
        if key.endswith("_datadirs") and isinstance(previous, list) and isinstance(value, list):
            value = [*previous, *value]  # configparser joins the lines with "\n" at the end
        super().__setitem__(key, value)


def read_glance_conf(path: str) -> GlanceConf:
    """Read ``[database] connection`` and the filesystem store of glance-api.conf.

    With ``enabled_backends = fs:file,...`` the datadirs live in the section of
    the default backend (``[glance_store] default_backend``); otherwise in
    ``[glance_store]``, and the store is ``[glance_store] default_store`` (``file``
    unless set) (glance_store 5.7.0 ``glance_store/multi_backend.py``,
    ``glance_store/backend.py`` and ``_drivers/filesystem.py``).
    """
    parser = _read_ini(path, "glance config", _MultiStr)
    store_dirs: tuple[str, ...] = ()
    store_id = None
    kind: str | None
    file_stores: list[tuple[str, tuple[str, ...]]] = []
    rbd_section, rbd_store_id = "glance_store", None
    backends = _get(parser, "DEFAULT", "enabled_backends")
    if backends:
        kinds: dict[str, str] = {}
        for item in _split_list(backends):
            name, _, backend_kind = item.partition(":")
            kinds[name.strip()] = backend_kind.strip()
        default = _get(parser, "glance_store", "default_backend")
        if default is None and len(kinds) == 1:
            default = next(iter(kinds))
        kind = kinds.get(default) if default is not None else None
        for name, backend_kind in kinds.items():
            if backend_kind == "file":
                file_stores.append((name, _datadirs(parser, name)))
        # The RBD backend: the default one if it is RBD, else the first listed.
        rbds = [name for name, backend_kind in kinds.items() if backend_kind == "rbd"]
        if rbds:
            rbd_store_id = default if default in rbds else rbds[0]
            rbd_section = rbd_store_id
        if kind == "file":
            store_id = default
            store_dirs = dict(file_stores)[default] if default else ()
    else:
        kind = (_get(parser, "glance_store", "default_store") or "file").lower()
        # glance_store names the filesystem store "file" (schemes file://, filesystem://).
        kind = "file" if kind == "filesystem" else kind
        if kind == "file":
            store_dirs = _datadirs(parser, "glance_store")
    return GlanceConf(
        connection=_get(parser, "database", "connection"),
        store_dir=store_dirs[0] if store_dirs else None,
        store_dirs=store_dirs,
        store_id=store_id,
        store_kind=kind,
        file_stores=tuple(file_stores),
        hashing_algorithm=_get(parser, "DEFAULT", "hashing_algorithm"),
        rbd={
            key: value
            for key in ("rbd_store_ceph_conf", "rbd_store_user", "rbd_store_pool")
            if (value := _get(parser, rbd_section, key)) is not None
        },
        rbd_section=rbd_section,
        rbd_store_id=rbd_store_id,
    )


def read_nova_conf(path: str) -> tuple[str | None, str | None]:
    """``([api_database] connection, [database] connection)`` of nova.conf."""
    parser = _read_ini(path, "nova config")
    return _get(parser, "api_database", "connection"), _get(parser, "database", "connection")


def _cell_timeout(value: Value | None) -> float:
    if value is None:
        return DEFAULT_CELL_TIMEOUT
    try:
        seconds = float(value.value)
    except ValueError:
        seconds = float("nan")
    # A day at most: PyMySQL refuses longer socket timeouts no better than a typo.
    if not 0 < seconds <= 86400:
        raise ConfigError(
            f"{value.source} {value.value!r} is not a number of seconds",
            hint="give the seconds a cell may take to answer, e.g. 60 (more than 0, at most 86400)",
        )
    return seconds


def read_nova_rbd_pool(path: str) -> str | None:
    """``[libvirt] images_rbd_pool`` of nova.conf when its disks are RBD (``images_type =
    rbd``; the option's default is ``rbd``, nova/conf/libvirt.py), else None."""
    parser = _read_ini(path, "nova config")
    if (_get(parser, "libvirt", "images_type") or "").lower() != "rbd":
        return None
    return _get(parser, "libvirt", "images_rbd_pool") or "rbd"


def resolve(options: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the layers into one :class:`Settings`.

    ``options`` holds the command-line values (``None`` or empty when not given),
    keyed like :data:`ENV_VARS` (``nova_db`` is a sequence).
    """
    env = os.environ if environ is None else environ

    def flag(name: str) -> str | None:
        value = options.get(name)
        return str(value) if value not in (None, "") else None

    def from_env(name: str) -> str | None:
        value = env.get(ENV_VARS[name], "").strip()
        return value or None

    config_path = flag("config") or from_env("config")
    ini: dict[str, str] = {}
    if config_path:
        parser = _read_ini(config_path, "config file")
        if not parser.has_section(CONFIG_SECTION):
            raise ConfigError(f"config file {config_path} has no [{CONFIG_SECTION}] section")
        unknown = sorted(set(parser.options(CONFIG_SECTION)) - INI_KEYS)
        if unknown:
            raise ConfigError(
                f"config file {config_path}: unknown key {unknown[0]!r} in [{CONFIG_SECTION}]",
                hint="known keys: " + ", ".join(sorted(INI_KEYS)),
            )
        for key in parser.options(CONFIG_SECTION):
            value = _get(parser, CONFIG_SECTION, key)
            if value is not None:
                ini[key] = value

    def layered(name: str) -> Value | None:
        if (value := flag(name)) is not None:
            return Value(value, f"--{name.replace('_', '-')}")
        if (value := from_env(name)) is not None:
            return Value(value, ENV_VARS[name])
        if name in ini:
            return Value(ini[name], f"{config_path} [{CONFIG_SECTION}] {name}")
        return None

    nova_conf = layered("nova_conf")
    glance_conf = layered("glance_conf")
    api_from_conf = cell_from_conf = None
    nova_rbd_pool = "vms"
    if nova_conf is not None:
        api_from_conf, cell_from_conf = read_nova_conf(nova_conf.value)
        nova_rbd_pool = read_nova_rbd_pool(nova_conf.value) or nova_rbd_pool
    glance_settings = GlanceConf()
    if glance_conf is not None:
        glance_settings = read_glance_conf(glance_conf.value)

    given = options.get("nova_db") or ()
    flag_dbs = [str(v) for v in given if str(v).strip()] if isinstance(given, (list, tuple)) else []
    if flag_dbs:
        nova_dbs = tuple(Value(v, "--nova-db") for v in flag_dbs)
    elif (env_dbs := from_env("nova_db")) is not None:
        nova_dbs = tuple(Value(v, ENV_VARS["nova_db"]) for v in _split_list(env_dbs))
    elif "nova_db" in ini:
        source = f"{config_path} [{CONFIG_SECTION}] nova_db"
        nova_dbs = tuple(Value(v, source) for v in _split_list(ini["nova_db"]))
    else:
        nova_dbs = ()

    nova_api_db = layered("nova_api_db")
    if nova_api_db is None and api_from_conf and nova_conf is not None:
        nova_api_db = Value(api_from_conf, f"{nova_conf.value} [api_database] connection")
    nova_conf_db = None
    if cell_from_conf and nova_conf is not None:
        nova_conf_db = Value(cell_from_conf, f"{nova_conf.value} [database] connection")

    glance_db = layered("glance_db")
    if glance_db is None and glance_settings.connection and glance_conf is not None:
        glance_db = Value(glance_settings.connection, f"{glance_conf.value} [database] connection")

    store_dir = layered("store_dir")
    store_id = glance_settings.store_id
    store_dirs = glance_settings.store_dirs
    if store_dir is None and glance_settings.store_dir and glance_conf is not None:
        key = "filesystem_store_datadirs" if len(store_dirs) > 1 else "filesystem_store_datadir"
        store_dir = Value(glance_settings.store_dir, f"{glance_conf.value} {key}")
    elif store_dir is not None:
        # An explicit directory: the store it is a datadir of, if glance-api.conf names it.
        chosen = Path(store_dir.value).resolve()
        store_dirs = (store_dir.value,)
        for backend, dirs in glance_settings.file_stores or (
            (glance_settings.store_id, glance_settings.store_dirs),
        ):
            if any(Path(d).resolve() == chosen for d in dirs):
                store_id = backend
                store_dirs = (store_dir.value, *(d for d in dirs if Path(d).resolve() != chosen))
                break
    if store_dir is None:
        store_dir = Value(DEFAULT_STORE_DIR, "default")

    os_token = layered("os_token")

    def ceph(name: str, key: str, default: str) -> Value:
        """flag > env > ini > glance-api.conf's RBD store section > default."""
        if (value := layered(name)) is not None:
            return value
        if key in glance_settings.rbd and glance_conf is not None:
            where = f"{glance_conf.value} [{glance_settings.rbd_section}] {key}"
            return Value(glance_settings.rbd[key], where)
        return Value(default, "default")

    for url in (nova_api_db, nova_conf_db, glance_db, *nova_dbs):
        if url is not None:
            remember_url_password(url.value)
    if os_token is not None:
        remember_secret(os_token.value)

    return Settings(
        cell_timeout=_cell_timeout(layered("cell_timeout")),
        nova_api_db=nova_api_db,
        nova_dbs=nova_dbs,
        nova_conf_db=nova_conf_db,
        glance_db=glance_db,
        store_dir=Value(str(Path(store_dir.value)), store_dir.source),
        glance_store_id=store_id,
        store_dirs=tuple(str(Path(d)) for d in store_dirs),
        glance_store_kind=glance_settings.store_kind,
        glance_file_stores=glance_settings.file_stores,
        hashing_algorithm=glance_settings.hashing_algorithm,
        glance_endpoint=layered("glance_endpoint"),
        os_token=os_token,
        ceph_conf=ceph("ceph_conf", "rbd_store_ceph_conf", DEFAULT_CEPH_CONF),
        rbd_user=ceph("rbd_user", "rbd_store_user", DEFAULT_RBD_USER),
        rbd_pool=ceph("rbd_pool", "rbd_store_pool", DEFAULT_RBD_POOL),
        rbd_store_id=glance_settings.rbd_store_id,
        nova_rbd_pool=nova_rbd_pool,
    )
