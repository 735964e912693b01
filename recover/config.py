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

from recover.errors import ConfigError
from recover.secrets import remember_secret, remember_url_password
from recover.textfile import CONFIG_LIMIT, read_bounded

DEFAULT_STORE_DIR = "/var/lib/glance/images"
DEFAULT_INSTANCES_PATH = "/var/lib/nova/instances"
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
    #: glance ``[DEFAULT] hashing_algorithm`` (sha512 when unset).
    hashing_algorithm: str | None = None
    glance_endpoint: Value | None = None
    os_token: Value | None = None

    def cell_urls(self) -> tuple[Value, ...]:
        """The cell databases to scan when discovery through the API database is not used."""
        if self.nova_dbs:
            return self.nova_dbs
        if self.nova_conf_db is not None and self.nova_api_db is None:
            return (self.nova_conf_db,)
        return ()


def _read_ini(path: str, what: str) -> configparser.RawConfigParser:
    # oslo.config files may repeat sections and keys; the last value wins there too.
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
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
    store_dir: str | None = None
    store_id: str | None = None
    hashing_algorithm: str | None = None


def read_glance_conf(path: str) -> GlanceConf:
    """Read ``[database] connection`` and the filesystem store of glance-api.conf.

    With ``enabled_backends = fs:file,...`` the datadir lives in the section of
    the default backend (``[glance_store] default_backend``); otherwise in
    ``[glance_store] filesystem_store_datadir`` (glance_store 5.7.0
    ``glance_store/multi_backend.py`` and ``_drivers/filesystem.py``).
    """
    parser = _read_ini(path, "glance config")
    store_dir = None
    store_id = None
    backends = _get(parser, "DEFAULT", "enabled_backends")
    if backends:
        kinds = {}
        for item in _split_list(backends):
            name, _, kind = item.partition(":")
            kinds[name.strip()] = kind.strip()
        default = _get(parser, "glance_store", "default_backend")
        if default is None and len(kinds) == 1:
            default = next(iter(kinds))
        if default is not None and kinds.get(default) == "file":
            store_id = default
            store_dir = _get(parser, default, "filesystem_store_datadir")
    else:
        store_dir = _get(parser, "glance_store", "filesystem_store_datadir")
    return GlanceConf(
        connection=_get(parser, "database", "connection"),
        store_dir=store_dir,
        store_id=store_id,
        hashing_algorithm=_get(parser, "DEFAULT", "hashing_algorithm"),
    )


def read_nova_conf(path: str) -> tuple[str | None, str | None]:
    """``([api_database] connection, [database] connection)`` of nova.conf."""
    parser = _read_ini(path, "nova config")
    return _get(parser, "api_database", "connection"), _get(parser, "database", "connection")


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
    if nova_conf is not None:
        api_from_conf, cell_from_conf = read_nova_conf(nova_conf.value)
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
    if store_dir is None and glance_settings.store_dir and glance_conf is not None:
        store_dir = Value(
            glance_settings.store_dir, f"{glance_conf.value} filesystem_store_datadir"
        )
    if store_dir is None:
        store_dir = Value(DEFAULT_STORE_DIR, "default")

    os_token = layered("os_token")
    for url in (nova_api_db, nova_conf_db, glance_db, *nova_dbs):
        if url is not None:
            remember_url_password(url.value)
    if os_token is not None:
        remember_secret(os_token.value)

    return Settings(
        nova_api_db=nova_api_db,
        nova_dbs=nova_dbs,
        nova_conf_db=nova_conf_db,
        glance_db=glance_db,
        store_dir=Value(str(Path(store_dir.value)), store_dir.source),
        glance_store_id=glance_settings.store_id,
        hashing_algorithm=glance_settings.hashing_algorithm,
        glance_endpoint=layered("glance_endpoint"),
        os_token=os_token,
    )
