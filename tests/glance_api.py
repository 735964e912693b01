"""A real Glance 33 API on 127.0.0.1, without Keystone, for the ``glance_api`` tier.

Recipe: /work/shared/reference/real-glance.md. Glance runs from a venv of its own
(``$RECOVER_GLANCE_VENV``, else ``.cache/glance-venv``; built on first use) under
gunicorn (``glance.wsgi.api:application``; standalone ``glance-api`` is gone in
glance 33), with ``OS_GLANCE_CONFIG_DIR`` pointing at a generated
``glance-api.conf``: the empty paste flavor (the ``unauthenticated-context``
pipeline), ``policy.yaml`` with ``"context_is_admin": "@"`` (without it the
in-code policies answer 403 to everything), the legacy single filesystem store,
and the tests' MariaDB. The schema comes from ``glance-manage db_sync``, so every
row the tests read is one Glance itself wrote.

* :func:`glance_venv` builds/reuses the venv (a lock serialises sessions).
* :func:`start_glance` writes a config and starts one server; it returns a
  :class:`GlanceApi` (``.endpoint``, ``.db_url``, ``.store_dir``, ``.conf_path``,
  ``.client()``, ``.log_tail()``, ``.query()``, ``.stop()``).
* :func:`create_image` / :func:`create_and_delete` go through the API only.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql
from port_for import get_port

from tests.helpers import REPO_ROOT, cached_venv, log_tails, venv_imports

if TYPE_CHECKING:
    from glanceclient.v2.client import Client

    from tests.conftest import MariaDBServer

GLANCE_REQUIREMENTS = ("glance==33.*", "gunicorn", "pymysql")
"""What the venv holds (real-glance.md measured glance 33.0.0, gunicorn 27.0.1)."""
VENV_ENV = "RECOVER_GLANCE_VENV"
DEFAULT_VENV = REPO_ROOT / ".cache" / "glance-venv"
START_TIMEOUT = 60.0
"""Seconds for gunicorn to answer 200 on ``GET /v2/images`` (measured: 1.2-1.4 s)."""

GUNICORN_OPTIONS = ("-w", "1", "-k", "gthread", "--threads", "8", "--timeout", "300")


def _glance_works(python: Path) -> bool:
    return (
        # Not glance.wsgi.api: importing it builds the app, which reads the config.
        venv_imports(python, "import glance.common.wsgi_app, gunicorn, pymysql")
        and (python.parent / "gunicorn").exists()
        and (python.parent / "glance-manage").exists()
    )


def glance_venv() -> tuple[Path, float | None]:
    """``(venv, seconds to build it or None)``: glance 33 + gunicorn + pymysql."""
    return cached_venv(
        Path(os.environ.get(VENV_ENV) or DEFAULT_VENV), GLANCE_REQUIREMENTS, _glance_works
    )


# --- one server ----------------------------------------------------------------------------


@dataclass
class GlanceApi:
    """A running Glance API (see :func:`start_glance`).

    ``endpoint`` (``http://127.0.0.1:PORT``), ``db_url`` (SQLAlchemy URL, what
    ``recover --glance-db`` takes), ``db_name``, ``store_dir`` (filesystem store
    datadir), ``conf_path`` (its glance-api.conf, for ``recover --glance-conf``),
    ``directory`` (everything of this server), ``log_path``, ``delayed_delete``,
    ``startup_seconds`` (gunicorn start until the first 200 on ``GET /v2/images``),
    ``sync_seconds`` (``glance-manage db_sync``, 0 when not run).
    """

    endpoint: str
    port: int
    db_url: str
    db_name: str
    store_dir: Path
    conf_path: Path
    directory: Path
    log_path: Path
    delayed_delete: bool
    server: MariaDBServer
    process: subprocess.Popen[bytes]
    startup_seconds: float = 0.0
    sync_seconds: float = 0.0
    #: The venv it runs from (its ``glance-manage`` too: tests/purge.py).
    venv: Path | None = None

    def client(self) -> Client:
        """A python-glanceclient v2 client on ``endpoint``.

        The noauth pipeline ignores X-Auth-Token, and glanceclient's HTTPClient
        sends none when it has no token, so none is given.
        """
        from glanceclient.v2.client import Client

        return Client(self.endpoint, timeout=120)

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Run ``sql`` in ``db_name`` (autocommit) and return the rows as dicts."""
        conn = self.server.connect(self.db_name, cursorclass=pymysql.cursors.DictCursor)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of glance-api.log and gunicorn's own output."""
        return log_tails([self.log_path, self.directory / "gunicorn.log"], lines)

    def stop(self) -> None:
        """SIGINT (quick shutdown) to gunicorn's process group, SIGKILL after 10 s."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            sys.stderr.write(f"\nglance on {self.endpoint} ignored SIGINT for 10 s: SIGKILL\n")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


#: The noauth context has is_admin but no roles; without this every call is 403 (real-glance.md §1).
ADMIN_POLICY = '"context_is_admin": "@"\n'


@dataclass(frozen=True)
class RbdStore:
    """An RBD store for Glance (ceph-rbd.md §4): ``[glance_store] stores = rbd``.

    ``ceph_conf`` (with the client's keyring findable from it), ``user`` (always
    set: glance_store turns an unset one into the rados id ``'None'``), ``pool``,
    ``chunk_size`` MiB. The venv must import Debian's ``rados``/``rbd``
    (``tests.ceph.glance_rbd_venv``).
    """

    ceph_conf: Path
    user: str = "glance"
    pool: str = "images"
    chunk_size: int = 8
    #: Multi-store (glance/doc/source/admin/multistores.rst): ``enabled_backends =
    #: <backend>:rbd`` and a ``[<backend>]`` section; locations get ``{"store": <backend>}``.
    backend: str | None = None


def _rbd_defaults(directory: Path, rbd: RbdStore) -> str:
    staging = f"node_staging_uri = file://{directory}/staging\n"
    return staging if rbd.backend is None else f"{staging}enabled_backends = {rbd.backend}:rbd\n"


def _rbd_store_section(store_dir: Path, rbd: RbdStore) -> str:
    options = f"""rbd_store_pool = {rbd.pool}
rbd_store_user = {rbd.user}
rbd_store_ceph_conf = {rbd.ceph_conf}
rbd_store_chunk_size = {rbd.chunk_size}
"""
    if rbd.backend is None:
        return f"[glance_store]\nstores = rbd\ndefault_store = rbd\n{options}"
    # Multi-store also wants its reserved staging/tasks stores (filesystem) configured.
    return f"""[glance_store]
default_backend = {rbd.backend}

[{rbd.backend}]
store_description = Ceph RBD
{options}
[os_glance_staging_store]
filesystem_store_datadir = {store_dir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {store_dir}/tasks
"""


def write_config(
    directory: Path,
    venv: Path,
    *,
    db_url: str,
    store_dir: Path,
    delayed_delete: bool = False,
    policy: str = ADMIN_POLICY,
    backends: dict[str, str] | None = None,
    extra: str = "",
    rbd: RbdStore | None = None,
) -> Path:
    """Write ``directory/etc/{glance-api.conf, glance-api-paste.ini, policy.yaml}``.

    Returns the path of glance-api.conf. ``directory`` also gets log/, cache/,
    lock/ and staging/. ``backends`` (``{"fast": "file", "web": "http"}``) makes a
    multi-store Glance (``enabled_backends``): the first is the default backend, with
    ``store_dir`` as its datadir; other file backends get ``store_dir``'s siblings named
    like them; ``show_multiple_locations`` lets a test add a location through the API.
    ``extra`` is appended as it is (more sections).
    ``rbd`` makes the store Ceph RBD instead (single store, or the one backend of a
    multi-store Glance when ``rbd.backend`` is set).
    """
    etc = directory / "etc"
    for sub in ("etc", "log", "cache", "lock", "staging"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    store_dir.mkdir(parents=True, exist_ok=True)
    # The paste file ships in the wheel (data_files -> <venv>/etc/glance).
    shutil.copyfile(venv / "etc" / "glance" / "glance-api-paste.ini", etc / "glance-api-paste.ini")
    (etc / "policy.yaml").write_text(policy)
    conf = etc / "glance-api.conf"
    conf.write_text(
        f"""[DEFAULT]
debug = false
log_file = {directory}/log/glance-api.log
image_cache_dir = {directory}/cache
enabled_import_methods = []
show_image_direct_url = true
delayed_delete = {str(delayed_delete).lower()}
{_multistore_defaults(directory, backends) if rbd is None else _rbd_defaults(directory, rbd)}
[database]
connection = {db_url}

[paste_deploy]
flavor =
config_file = {etc}/glance-api-paste.ini

[oslo_concurrency]
lock_path = {directory}/lock

[oslo_policy]
policy_file = {etc}/policy.yaml

{_store_sections(directory, store_dir, backends) if rbd is None else _rbd_store_section(store_dir, rbd)}{extra}"""
    )
    return conf


def _store_sections(directory: Path, store_dir: Path, backends: dict[str, str] | None) -> str:
    if not backends:
        return f"""[glance_store]
stores = file
default_store = file
filesystem_store_datadir = {store_dir}
"""
    default = next(iter(backends))
    text = f"""[glance_store]
default_backend = {default}

[os_glance_staging_store]
filesystem_store_datadir = {directory}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {directory}/tasks
"""
    for name, kind in backends.items():
        text += f"\n[{name}]\n"
        if kind == "file":
            datadir = store_dir if name == default else store_dir.parent / name
            datadir.mkdir(parents=True, exist_ok=True)
            text += f"filesystem_store_datadir = {datadir}\n"
    return text


def _multistore_defaults(directory: Path, backends: dict[str, str] | None) -> str:
    if not backends:
        return f"node_staging_uri = file://{directory}/staging\n"
    (directory / "tasks").mkdir(exist_ok=True)
    listed = ", ".join(f"{name}:{kind}" for name, kind in backends.items())
    return f"enabled_backends = {listed}\nshow_multiple_locations = true\n"


def glance_env(directory: Path, conf: Path) -> dict[str, str]:
    """Environment of glance processes: its config dir, a HOME of its own, no pip cache."""
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "RECOVER_"))}
    env.update(OS_GLANCE_CONFIG_DIR=str(conf.parent), HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def db_sync(venv: Path, conf: Path, env: dict[str, str]) -> float:
    """``glance-manage db_sync`` with ``conf``; returns the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"glance-manage db_sync failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return time.perf_counter() - started


def _ready(endpoint: str, expect: int = 200) -> bool:
    """True once ``GET /v2/images`` answers ``expect`` (200; 403 or 500 for broken variants)."""
    try:
        with urllib.request.urlopen(f"{endpoint}/v2/images", timeout=5) as response:
            return bool(response.status == expect)
    except urllib.error.HTTPError as error:
        return error.code == expect
    except (urllib.error.URLError, OSError):
        return False


def start_glance(
    directory: Path,
    venv: Path,
    server: MariaDBServer,
    db_name: str,
    *,
    store_dir: Path | None = None,
    delayed_delete: bool = False,
    sync: bool = False,
    policy: str = "",
    expect: int = 200,
    backends: dict[str, str] | None = None,
    extra: str = "",
    rbd: RbdStore | None = None,
) -> GlanceApi:
    """Write a config in ``directory`` and start gunicorn on a free port of 127.0.0.1.

    The database ``db_name`` must exist; ``sync=True`` runs :func:`db_sync` on it
    first. ``store_dir`` defaults to ``directory/images``; two servers may share
    a database and a store (e.g. one with ``delayed_delete``). ``rbd`` makes the
    store an RBD pool instead (``venv`` must then be the glance-rbd venv).
    """
    store_dir = store_dir or directory / "images"
    db_url = server.url(db_name)
    conf = write_config(
        directory, venv, db_url=db_url, store_dir=store_dir, delayed_delete=delayed_delete,
        policy=policy or ADMIN_POLICY, backends=backends, extra=extra, rbd=rbd,
    )  # fmt: skip
    env = glance_env(directory, conf)
    sync_seconds = db_sync(venv, conf, env) if sync else 0.0
    for attempt in range(5):
        port = get_port(None)
        assert isinstance(port, int)
        endpoint = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        with open(directory / "gunicorn.log", "ab") as log:
            process = subprocess.Popen(
                [str(venv / "bin" / "gunicorn"), "-b", f"127.0.0.1:{port}", *GUNICORN_OPTIONS,
                 "--no-control-socket", "glance.wsgi.api:application"],
                env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        api = GlanceApi(
            endpoint=endpoint, port=port, db_url=db_url, db_name=db_name, store_dir=store_dir,
            conf_path=conf, directory=directory, log_path=directory / "log" / "glance-api.log",
            delayed_delete=delayed_delete, server=server, process=process, venv=venv,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if _ready(endpoint, expect):
                api.startup_seconds = time.perf_counter() - started
                api.sync_seconds = sync_seconds
                return api
            time.sleep(0.05)
        api.stop()
        if process.returncode not in (None, 0) and attempt < 4 and "in use" in api.log_tail():
            continue  # someone took the port meanwhile
        raise RuntimeError(
            f"glance under gunicorn did not answer on {endpoint}/v2/images within "
            f"{START_TIMEOUT:.0f} s (exit {process.returncode}):\n{api.log_tail()}"
        )
    raise AssertionError("not reached")


# --- images through the API ------------------------------------------------------------------


def create_image(
    client: Client,
    data: bytes,
    disk_format: str,
    container_format: str = "bare",
    *,
    name: str = "ga-image",
    tag: str = "ga-tag",
    **props: str,
) -> str:
    """Create an image, upload ``data``, add ``tag``, set ``props``; return its id.

    Every step is one API call, as an operator's CLI makes them.
    """
    image = client.images.create(
        name=name, disk_format=disk_format, container_format=container_format
    )
    image_id = str(image["id"])
    client.images.upload(image_id, io.BytesIO(data), image_size=len(data))
    client.image_tags.update(image_id, tag)
    if props:
        client.images.update(image_id, **props)
    return image_id


def create_and_delete(
    client: Client,
    data: bytes,
    disk_format: str,
    container_format: str = "bare",
    **props: str,
) -> str:
    """:func:`create_image` then ``DELETE /v2/images/{id}``; return the id.

    The rows left behind are exactly what Glance writes on delete.
    """
    image_id = create_image(client, data, disk_format, container_format, **props)
    client.images.delete(image_id)
    return image_id
