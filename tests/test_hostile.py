"""Hostile and malformed input: one table, every command, each case run as a real process.

Every case is a ``recover`` command line (plus, for some, a hostile value planted in a
database or on disk first) with its documented exit code and the beginning of its one
``Error:`` line. Each run is checked for:

* the exit code, and no ``Traceback``;
* exit 1: exactly one stderr line, starting with the expected text, never the last line
  of defence (``Error: unexpected ...``), and an empty stdout unless the command reports
  first (``verify``, a partial ``inventory``); exit 2: click's usage output; exit 0:
  an empty stderr and a case-specific look at stdout;
* ``CHECKSUM TABLE`` of every database involved unchanged;
* no file created, changed or removed anywhere under the test's directory (store, ``_base``,
  journal and state dir, ``$HOME``, ``$TMPDIR``, a directory "outside" the store), no
  ``/tmp`` marker, and ssh never started unless the case is about ssh (a tripwire
  ``RECOVER_SSH_COMMAND``);
* no password or token of the command line on stdout or stderr.

A case that exposes a bug stays, marked ``xfail(strict=True)`` with the bug in its reason
(see docs/reliability.md). The world builder and the process runner below are shared with
``test_faults.py``, ``test_races.py`` and ``test_privileges.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recover.cli import cli
from recover.db.engine import open_database
from recover.demo import SNAPSHOT, VIRTUAL_SIZE
from recover.inventory import base_file_name
from recover.simulate import (
    Flavor,
    Image,
    Instance,
    create_image,
    create_instance,
    create_legacy_flavor,
    delete_image,
    destroy_legacy_flavor,
    map_cell,
)
from tests import clouds
from tests.helpers import process_env, require_binary
from tests.images import PROPERTIES, digests, make_disks

RECOVER = str(Path(sys.executable).with_name("recover"))
MARKER = Path(f"/tmp/recover-hostile-marker-{os.getpid()}")
"""Every shell payload in this suite touches this file: it must never exist."""

OTHER_IMAGE = "6e2d4b1a-8c3f-4e5d-9a7b-1f0c2e3d4a5b"
UNKNOWN_IMAGE = "00000000-0000-4000-8000-000000000000"
VM1 = "11111111-1111-4111-8111-111111111111"
VM_HOSTILE = "99999999-9999-4999-8999-99999999999"
DELETED_AT = datetime(2017, 9, 21, 11, 3, 57)
FLAVOR_DELETED_AT = datetime(2024, 3, 1, 10, 0, 0)
PROJECT_A, PROJECT_B = "aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa", "bbbbbbbbbbbb4bbb8bbbbbbbbbbbbbbb"
FLAVOR = Flavor(
    name="db.xlarge", flavorid="f0e1d2c3", memory_mb=32768, vcpus=8, root_gb=100,
    ephemeral_gb=20, swap=4096, is_public=False,
    extra_specs={"hw:cpu_policy": "dedicated", "quota:disk_read_iops_sec": "5000"},
    projects=(PROJECT_A, PROJECT_B), created_at=datetime(2020, 5, 6, 7, 8, 9),
)  # fmt: skip
SECRET = "Sup3r-Secret-Passw0rd"
"""A password put into URLs and config files: it must never be printed."""


# --- the world: Nova + Glance databases, a store, a compute node's _base --------------------

_DISKS: dict[str, tuple[Path, Path, tuple[str, str, int]]] = {}


def shared_disks(factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[str, str, int]]:
    """The snapshot as Glance stored it (qcow2), nova's raw ``_base`` copy, the qcow2's digests.

    Made once per session with qemu-img; worlds hard-link them (nobody writes to them).
    """
    key = str(factory.getbasetemp())
    if key not in _DISKS:
        require_binary("qemu-img")
        directory = factory.mktemp("reliability-disks")
        original, base = make_disks(directory, directory / "instances")
        original.chmod(0o444)
        base.chmod(0o444)
        _DISKS[key] = (original, base, digests(original))
    return _DISKS[key]


@dataclass
class World:
    """One test's cloud: a Mitaka Nova cell, a modern Glance, a store, a compute node dir.

    The deleted flavor ``FLAVOR`` (id 1) and the deleted snapshot ``SNAPSHOT`` are both used
    by instance VM1 on ``compute-12``. The store holds another image's file (0640).
    """

    root: Path
    nova_url: str
    glance_url: str
    nova_db: str
    glance_db: str
    store: Path
    base: Path
    instances_path: Path
    original: Path
    digests: tuple[str, str, int]
    env: dict[str, str]
    outside: Path
    dbs: list[str] = field(default_factory=list)
    make_db: Any = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def journal_dir(self) -> Path:
        return self.state / "journal"

    @property
    def tripwire_fired(self) -> Path:
        return self.root / "tripwire-fired"

    def args(self, *more: str) -> list[str]:
        return [
            "--nova-db", self.nova_url, "--glance-db", self.glance_url,
            "--store-dir", str(self.store), *more,
        ]  # fmt: skip

    def base_args(self, *more: str) -> list[str]:
        """``image SNAPSHOT --base-file <_base file>`` plus ``more``."""
        return self.args("image", SNAPSHOT, "--base-file", str(self.base), *more)

    def host_args(self, host: str, *more: str) -> list[str]:
        return self.args(
            "image", SNAPSHOT, f"--from-host={host}", "--instances-path",
            str(self.instances_path), *more,
        )  # fmt: skip

    def url(self, db: str, credentials: str = "root") -> str:
        return self.glance_url.replace("root@", f"{credentials}@").replace(
            f"/{self.glance_db}?", f"/{db}?"
        )


def base_env(root: Path) -> dict[str, str]:
    """A clean environment: no RECOVER_*/OS_* of the developer's, HOME/TMPDIR/state in ``root``."""
    tripwire = root / "bin" / "ssh-tripwire"
    if not tripwire.exists():
        tripwire.parent.mkdir(parents=True, exist_ok=True)
        tripwire.write_text(
            f"#!/bin/sh\ntouch {shlex.quote(str(root / 'tripwire-fired'))}\nexit 255\n"
        )
        tripwire.chmod(0o755)
    (root / "outside").mkdir(exist_ok=True)
    return {**process_env(root), "RECOVER_SSH_COMMAND": str(tripwire)}


def build_world(
    make_db: Any,
    root: Path,
    factory: pytest.TempPathFactory,
    *,
    prefix: str = "h",
    disk_format: str = "qcow2",
    delayed: bool = False,
    nova: bool = True,
) -> World:
    """Databases ``<prefix>_nova`` and ``<prefix>_glance`` and the files of the incident."""
    original, shared_base, (md5, sha, size) = shared_disks(factory)
    env = base_env(root)
    store = root / "glance" / "images"
    store.mkdir(parents=True)
    instances_path = root / "compute-12" / "instances"
    (instances_path / "_base").mkdir(parents=True)
    base = instances_path / "_base" / base_file_name(SNAPSHOT)
    os.link(shared_base, base)
    if disk_format == "raw":
        md5, sha, size = digests(shared_base)
    glance_db = f"{prefix}_glance"
    glance_url = make_db(clouds.MODERN_GLANCE, glance_db)
    glance = open_database(glance_url, "glance")
    with glance.engine.begin() as conn:
        create_image(conn, glance, Image(
            id=SNAPSHOT, name="ucs-app-golden-snap", disk_format=disk_format, size=size,
            virtual_size=VIRTUAL_SIZE,
            checksum=md5, os_hash_algo="sha512", os_hash_value=sha, properties=PROPERTIES,
            tags=["golden"], members=["a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"],
            location=f"file://{store}/{SNAPSHOT}", created_at=datetime(2017, 3, 13, 18, 44, 2),
        ))  # fmt: skip
        create_image(conn, glance, Image(
            id=OTHER_IMAGE, name="cirros", disk_format="raw", size=13, checksum="0" * 32,
            location=f"file://{store}/{OTHER_IMAGE}",
        ))  # fmt: skip
        delete_image(conn, glance, SNAPSHOT, DELETED_AT, delayed=delayed)
    glance.dispose()
    if delayed:
        shutil.copyfile(shared_base if disk_format == "raw" else original, store / SNAPSHOT)
        (store / SNAPSHOT).chmod(0o640)
    other = store / OTHER_IMAGE
    other.write_bytes(b"another image")
    other.chmod(0o640)
    nova_db = f"{prefix}_nova"
    nova_url = ""
    dbs = [glance_db]
    if nova:
        nova_url = make_db(clouds.LEGACY_NOVA, nova_db)
        cell = open_database(nova_url, "nova")
        with cell.engine.begin() as conn:
            flavor_id = create_legacy_flavor(conn, cell, FLAVOR)
            create_instance(conn, cell, Instance(
                uuid=VM1, flavor=FLAVOR, flavor_id=flavor_id, image_ref=SNAPSHOT,
                host="compute-12", project_id=PROJECT_A, flavor_version="1.1",
            ))  # fmt: skip
            destroy_legacy_flavor(conn, cell, flavor_id, FLAVOR_DELETED_AT)
        cell.dispose()
        dbs.insert(0, nova_db)
    return World(
        root=root, nova_url=nova_url, glance_url=glance_url, nova_db=nova_db,
        glance_db=glance_db, store=store, base=base, instances_path=instances_path,
        original=original, digests=(md5, sha, size), env=env, outside=root / "outside",
        dbs=dbs, make_db=make_db,
    )  # fmt: skip


def run_recover(
    world: World,
    argv: list[Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    umask: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``recover <argv>`` as a process (argv items may be bytes: not UTF-8 on purpose)."""
    full_env = {**world.env, **(env or {})}
    done = subprocess.run(
        [RECOVER, *argv], env=full_env, cwd=world.root, capture_output=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "backslashreplace"),
        done.stderr.decode("utf-8", "backslashreplace"),
    )


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type and mode, plus size and mtime for non-directories."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            entry: tuple[Any, ...] = (kind, stat.S_IMODE(st.st_mode))
            if not stat.S_ISDIR(st.st_mode):
                entry += (st.st_size, st.st_mtime_ns)
            found[str(path.relative_to(root))] = entry
    return found


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = set(before) | set(after)
    return {k: (before.get(k), after.get(k)) for k in sorted(keys) if before.get(k) != after.get(k)}


def checksums(mariadb_server: Any, dbs: list[str]) -> dict[str, Any]:
    return {db: mariadb_server.checksum(db) for db in dbs}


# --- planting hostile values -----------------------------------------------------------------


def q(mariadb_server: Any, sql: str, *args: Any) -> None:
    mariadb_server.query(sql, args or None)


def add_instance(world: World, mariadb_server: Any, uuid: str, host: str, image_ref: str) -> None:
    """A live instance of flavor 1 in the Nova cell, with the given host and image_ref."""
    cell = open_database(world.nova_url, "nova")
    try:
        with cell.engine.begin() as conn:
            create_instance(conn, cell, Instance(
                uuid=uuid, flavor=FLAVOR, flavor_id=1, image_ref=image_ref, host=host,
                flavor_version="1.1",
            ))  # fmt: skip
    finally:
        cell.dispose()


def make_active(world: World, mariadb_server: Any, location: str | None = None) -> None:
    """The snapshot back to active with its file in the store (what a recovery leaves)."""
    placed = world.store / SNAPSHOT
    shutil.copyfile(world.original, placed)
    placed.chmod(0o640)
    g = world.glance_db
    q(
        mariadb_server,
        f"UPDATE {g}.images SET status='active', deleted=0, deleted_at=NULL WHERE id=%s",
        SNAPSHOT,
    )
    q(mariadb_server, f"UPDATE {g}.image_locations SET status='active', deleted=0, deleted_at=NULL, value=%s WHERE image_id=%s",
      location or f"file://{placed}", SNAPSHOT)  # fmt: skip


def write_file(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def journal_doc(world: World, **override: Any) -> dict[str, Any]:
    """A well-formed journal of a flavor recovery on the world's Nova cell, then ``override``."""
    doc: dict[str, Any] = {
        "format": "recover-journal/1",
        "status": "committed",
        "command": "recover flavor f0e1d2c3 --yes",
        "written_at": "2026-01-01T00:00:00+00:00",
        "title": "recover flavor f0e1d2c3 (id 1, db.xlarge)",
        "subject": {"kind": "flavor", "id": 1},
        "database": {
            "target": f"cell:{world.nova_db}",
            "url": world.nova_url,
            "dialect": "mysql",
            "host": "127.0.0.1",
            "port": int(world.nova_url.split(":")[2].split("/")[0]),
            "database": world.nova_db,
        },
        "changes": [],
        "notes": [],
        "files": [],
    }
    doc.update(override)
    return doc


def with_journal(name: str, make: Callable[[World], Any]) -> Callable[[World, Any], None]:
    def setup(world: World, mariadb_server: Any) -> None:
        content = make(world)
        if not isinstance(content, (bytes, str)):
            content = json.dumps(content)
        write_file(world.root / "journals" / name, content)

    return setup


def real_image_journal_with_files_outside(world: World, mariadb_server: Any) -> None:
    """Recover the image for real, then tamper with its journal: ``files`` names a victim
    outside the store (same size, so the size check passes)."""
    done = run_recover(world, world.base_args("--yes"))
    assert done.returncode == 0, done.stderr
    (journal,) = world.journal_dir.glob("*-image-*.json")
    victim = write_file(world.outside / "victim", "precious data outside the store\n")
    document = json.loads(journal.read_text())
    document["files"] = [{"path": str(victim), "size": victim.stat().st_size, "created": True}]
    write_file(world.root / "journals" / "tampered.json", json.dumps(document))


def dangling_cell_mapping(url: str | Callable[[World], str]) -> Setup:
    """A nova_api database (``h_api``) whose only cell mapping holds ``url``."""

    def setup(world: World, mariadb_server: Any) -> None:
        api_url = world.make_db(clouds.MODERN_API, "h_api")
        api = open_database(api_url, "api")
        with api.engine.begin() as conn:
            map_cell(conn, api, clouds.CELL1_UUID, "cell1", url(world) if callable(url) else url)
        api.dispose()
        world.dbs.append("h_api")

    return setup


# --- the catalogue ---------------------------------------------------------------------------

Argv = Callable[[World], list[Any]]
Setup = Callable[[World, Any], None]
Check = Callable[[World, str], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv
    code: int
    #: exit 1: the start of the one stderr line; exit 0: stderr must equal it ("" = empty).
    stderr: str | Callable[[World], str] = ""
    setup: Setup | None = None
    #: extra look at stdout (exit 0 cases, or a report printed before the error).
    check: Check | None = None
    stdout_empty: bool = True
    #: run in-process through click's CliRunner: argv can hold a NUL byte, a process's cannot.
    inprocess: bool = False
    ssh: bool = False
    #: "full": Nova + Glance databases; "bare": only the directories (no database).
    world: str = "full"
    bug: str | None = None


def marker_cmd() -> str:
    return f"touch {MARKER}"


def shlex_words(line: str) -> list[str]:
    return shlex.split(line.split("recover: ", 1)[1] if "recover: " in line else line)


def recover_suggestion(image_id: str) -> Check:
    """The ``recover`` command inventory prints for ``image_id`` splits into the right words."""

    def check(world: World, stdout: str) -> None:
        report = json.loads(stdout)
        (image,) = [i for i in report["images"] if i["id"] == image_id]
        words = shlex.split(image["recover"])
        assert words[:3] == ["recover", "image", image_id]
        assert words[3] == "--from-host" and words[4] == image["hosts"][0], words
        assert len(words) == 5

    return check


def hostile_host(host: str) -> Setup:
    def setup(world: World, mariadb_server: Any) -> None:
        add_instance(world, mariadb_server, VM_HOSTILE + "9", host, SNAPSHOT)

    return setup


def hostile_hosts_only(world: World, mariadb_server: Any) -> None:
    q(mariadb_server, f"UPDATE {world.nova_db}.instances SET host=%s WHERE uuid=%s",
      f"compute-1;{marker_cmd()}", VM1)  # fmt: skip
    add_instance(world, mariadb_server, VM_HOSTILE + "8", f"$({marker_cmd()})", SNAPSHOT)


def store_neighbour(world: World, mariadb_server: Any) -> None:
    """A file at ``<store>/../x`` and an instance whose image_ref is ``../x``."""
    write_file(world.store.parent / "x", "not an image")
    add_instance(world, mariadb_server, VM_HOSTILE + "7", "compute-12", "../x")


def image_ref_not_touched(world: World, stdout: str) -> None:
    report = json.loads(stdout)
    (image,) = [i for i in report["images"] if i["id"] == "../x"]
    assert image["status"] == "missing"
    assert image["store_file"] is None  # never looked up on disk
    assert image["recover"] is None


def hostile_flavor_names(world: World, mariadb_server: Any) -> None:
    q(mariadb_server, f"UPDATE {world.nova_db}.instance_types SET name=%s, flavorid=%s WHERE id=1",
      f"m1;{marker_cmd()}", f"$({marker_cmd()})")  # fmt: skip


def flavor_suggestion_quoted(world: World, stdout: str) -> None:
    report = json.loads(stdout)
    (flavor,) = report["flavors"]
    assert shlex.split(flavor["recover"]) == ["recover", "flavor", f"$({marker_cmd()})"]


def control_chars_in_names(world: World, mariadb_server: Any) -> None:
    q(mariadb_server, f"UPDATE {world.nova_db}.instance_types SET name=%s WHERE id=1",
      "db.x\x1b]0;owned\x07\x1b[2J\nInjected: line")  # fmt: skip


def no_control_chars(world: World, stdout: str) -> None:
    assert "\x1b" not in stdout and "\x07" not in stdout
    assert not any(line.startswith("Injected") for line in stdout.splitlines())


def image_name_with_sql(world: World, mariadb_server: Any) -> None:
    q(mariadb_server, f"UPDATE {world.glance_db}.images SET name=%s WHERE id=%s",
      "snap\nCREATE TABLE h_injected (x INT);", SNAPSHOT)  # fmt: skip


def sql_lines_only(world: World, stdout: str) -> None:
    """Every line of a --dry-run is a comment or one of the statements of the plan."""
    for line in stdout.splitlines():
        assert line.startswith(
            ("-- ", "BEGIN;", "COMMIT;", "ROLLBACK;", "UPDATE ", "INSERT ", "DELETE ")
        ), line


def location_rewritten(world: World, stdout: str) -> None:
    assert f"value='file://{world.store}/{SNAPSHOT}'" in stdout


def location_outside_with_matching_data(world: World, mariadb_server: Any) -> None:
    """Active row; its location points outside the store at a file with the row's exact data."""
    make_active(world, mariadb_server)
    (world.store / SNAPSHOT).unlink()
    shutil.copyfile(world.original, world.outside / "copy")
    relative = os.path.relpath(world.outside / "copy", world.store)
    q(mariadb_server, f"UPDATE {world.glance_db}.image_locations SET value=%s WHERE image_id=%s",
      f"file://{world.store}/{relative}", SNAPSHOT)  # fmt: skip


def shake_algo(world: World, mariadb_server: Any) -> None:
    make_active(world, mariadb_server)
    q(
        mariadb_server,
        f"UPDATE {world.glance_db}.images SET os_hash_algo='shake_128' WHERE id=%s",
        SNAPSHOT,
    )


def drop_column(db: str, schema: str, table: str, column: str) -> Setup:
    """Database ``db`` of ``schema`` without ``table.column`` (make_db reloads it next time)."""

    def setup(world: World, mariadb_server: Any) -> None:
        world.make_db(schema, db)
        mariadb_server.query(f"ALTER TABLE {db}.{table} DROP COLUMN {column}")
        world.dbs.append(db)

    return setup


def fifo(world: World, mariadb_server: Any) -> None:
    os.mkfifo(world.root / "fifo")


def lp_user(world: World, mariadb_server: Any) -> None:
    mariadb_server.query(
        "CREATE USER IF NOT EXISTS 'h_user'@'127.0.0.1' IDENTIFIED BY 'Right-Passw0rd-42'"
    )


def rbd_command_quoted(world: World, stdout: str) -> None:
    (line,) = [x for x in stdout.splitlines() if "rbd feature disable" in x]
    assert shlex.split(line)[3] == f"volumes/v;{marker_cmd()}", line


def demo_file(world: World, mariadb_server: Any) -> None:
    write_file(world.root / "home" / "a-file", "x")


def foreign_dir(world: World, mariadb_server: Any) -> None:
    write_file(world.outside / "precious.txt", "not a sandbox")


CELL_BRACE = "mysql+pymysql://{username}:{password}@{hostname}:{port}/h_cell{"

CASES: list[Case] = [
    # --- database URLs and servers (global options) -------------------------------------------
    Case("url-not-a-url", lambda w: ["--nova-db", "not a url", "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova cell '#1' database: 'not a url' is not a database URL"),
    Case("url-unknown-driver", lambda w: ["--nova-db", f"postgresql+nosuchdriver://u:{SECRET}@x/y", "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova cell 'y' database postgresql+nosuchdriver://u:***@x/y: unsupported driver"),
    Case("url-wrong-password", lambda w: ["--nova-db", w.url(w.nova_db, f"h_user:{SECRET}"), "--glance-db", w.glance_url, "inventory"],
         1, lambda w: "Error: cannot connect to nova cell 'h_nova' database mysql+pymysql://h_user:***@127.0.0.1:", setup=lp_user),
    Case("url-unreachable-server", lambda w: ["--nova-db", f"mysql+pymysql://nova:{SECRET}@127.0.0.1:1/nova", "--glance-db", w.glance_url, "inventory"],
         1, "Error: cannot connect to nova cell 'nova' database mysql+pymysql://nova:***@127.0.0.1:1/nova: Can't connect"),
    Case("url-unknown-database", lambda w: ["--nova-db", w.url("h_no_such_db"), "--glance-db", w.glance_url, "inventory"],
         1, "Error: cannot connect to nova cell 'h_no_such_db' database mysql+pymysql://root@127.0.0.1:"),
    Case("url-sqlite-missing-file", lambda w: ["--nova-db", f"sqlite:///{w.outside}/nova.sqlite", "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova cell 'nova.sqlite' database sqlite:///"),
    Case("url-password-with-url-syntax", lambda w: ["--nova-db", f"mysql+pymysql://nova:p%40ss%3Bw%27rd%20{SECRET}@127.0.0.1:1/nova", "--glance-db", w.glance_url, "inventory"],
         1, "Error: cannot connect to nova cell 'nova' database mysql+pymysql://nova:***@127.0.0.1:1/nova"),
    Case("wrong-kind-nova-is-glance", lambda w: ["--nova-db", w.glance_url, "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova cell 'h_glance' database mysql+pymysql://root@127.0.0.1:"),
    Case("wrong-kind-glance-is-nova", lambda w: ["--glance-db", w.nova_url, "--store-dir", str(w.store), "image", SNAPSHOT, "--base-file", str(w.base), "--yes"],
         1, "Error: glance database mysql+pymysql://root@127.0.0.1:"),
    Case("wrong-kind-api-is-cell", lambda w: ["--nova-api-db", w.nova_url, "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova_api database mysql+pymysql://root@127.0.0.1:"),
    Case("schema-missing-column-nova", lambda w: ["--nova-db", w.url("h_nocol"), "--glance-db", w.glance_url, "flavor", "f0e1d2c3", "--yes"],
         1, "Error: nova cell 'h_nocol' database mysql+pymysql://root@127.0.0.1:", setup=drop_column("h_nocol", clouds.LEGACY_NOVA, "instances", "host")),
    Case("schema-missing-column-glance", lambda w: ["--glance-db", w.url("h_gnocol"), "verify", SNAPSHOT],
         1, "Error: glance database mysql+pymysql://root@127.0.0.1:", setup=drop_column("h_gnocol", clouds.MODERN_GLANCE, "images", "checksum")),
    # --- configuration files -------------------------------------------------------------------
    Case("config-corrupt", lambda w: ["--config", str(w.root / "bad.ini"), "inventory"], 1,
         lambda w: f"Error: config file {w.root / 'bad.ini'} is not a valid ini file: ",
         setup=lambda w, m: write_file(w.root / "bad.ini", f"[recover\nglance_db = mysql+pymysql://g:{SECRET}@db/glance\n")),
    Case("config-not-utf8", lambda w: ["--config", str(w.root / "bad.ini"), "inventory"], 1,
         lambda w: f"Error: config file {w.root / 'bad.ini'} is not UTF-8 text",
         setup=lambda w, m: write_file(w.root / "bad.ini", b"[recover]\nnova_db = \xff\xfe\xfd\n")),
    Case("config-is-a-directory", lambda w: ["--config", str(w.outside), "inventory"], 1,
         lambda w: f"Error: config file {w.outside} is a directory, not a file"),
    Case("config-missing", lambda w: ["--config", str(w.root / "nope.ini"), "inventory"], 1,
         lambda w: f"Error: config file {w.root / 'nope.ini'} does not exist"),
    Case("config-unknown-key", lambda w: ["--config", str(w.root / "bad.ini"), "inventory"], 1,
         lambda w: f"Error: config file {w.root / 'bad.ini'}: unknown key 'glance_url' in [recover]",
         setup=lambda w, m: write_file(w.root / "bad.ini", "[recover]\nglance_url = x\n")),
    Case("config-nul-in-url", lambda w: ["--config", str(w.root / "bad.ini"), "inventory"], 1,
         "Error: ",
         setup=lambda w, m: write_file(w.root / "bad.ini", f"[recover]\nnova_db = mysql+pymysql://n:{SECRET}@127.0.0.1:1/n\x00ova\nglance_db = {w.glance_url}\n")),
    Case("nova-conf-no-section", lambda w: ["--nova-conf", str(w.root / "nova.conf"), "inventory"], 1,
         lambda w: f"Error: nova config {w.root / 'nova.conf'} is not a valid ini file: File contains no section headers.",
         setup=lambda w, m: write_file(w.root / "nova.conf", f"connection = mysql+pymysql://nova:{SECRET}@db/nova\n")),
    Case("glance-conf-binary", lambda w: ["--glance-conf", str(w.root / "glance-api.conf"), "--nova-db", w.nova_url, "inventory"], 1,
         lambda w: f"Error: glance config {w.root / 'glance-api.conf'} is not UTF-8 text",
         setup=lambda w, m: write_file(w.root / "glance-api.conf", bytes(range(256)))),
    Case("cell-mapping-template-unbalanced", lambda w: ["--nova-api-db", w.url("h_api"), "--glance-db", w.glance_url, "inventory"],
         1, "Error: cell mapping URL", setup=dangling_cell_mapping(CELL_BRACE)),
    Case("cell-mapping-template-attribute", lambda w: ["--nova-api-db", w.url("h_api"), "--glance-db", w.glance_url, "inventory"],
         1, "Error: cell mapping URL uses unknown template field {password.__class__}",
         setup=dangling_cell_mapping("mysql+pymysql://{username}:{password.__class__}@{hostname}/h_cell1")),
    Case("cell-mapping-sqlite-outside", lambda w: ["--nova-api-db", w.url("h_api"), "--glance-db", w.glance_url, "inventory"],
         1, "Error: nova cell 'cell1' database sqlite:///",
         setup=dangling_cell_mapping(lambda w: f"sqlite:///{w.outside}/cell1.sqlite")),
    # --- inventory: hostile values in the databases (read-only: exit 0) ----------------------
    Case("db-host-semicolon", lambda w: [*w.args("inventory", "--format", "json")], 0,
         setup=hostile_host(f"compute-1;{marker_cmd()}"), check=recover_suggestion(SNAPSHOT)),
    Case("db-host-command-substitution", lambda w: [*w.args("inventory", "--format", "json")], 0,
         setup=hostile_host(f"$({marker_cmd()})"), check=recover_suggestion(SNAPSHOT)),
    Case("db-host-ssh-option", lambda w: [*w.args("inventory", "--format", "json")], 0,
         setup=hostile_host(f"-oProxyCommand={marker_cmd()}"), check=recover_suggestion(SNAPSHOT)),
    Case("db-host-traversal", lambda w: [*w.args("inventory", "--format", "csv")], 0,
         setup=hostile_host("../../../etc")),
    Case("db-image-ref-traversal", lambda w: [*w.args("inventory", "--format", "json")], 0,
         setup=store_neighbour, check=image_ref_not_touched),
    Case("db-flavor-names-metachars", lambda w: [*w.args("inventory", "--format", "json")], 0,
         setup=hostile_flavor_names, check=flavor_suggestion_quoted),
    Case("db-flavor-name-terminal-escapes", lambda w: [*w.args("inventory")], 0,
         setup=control_chars_in_names, check=no_control_chars),
    # --- flavor ------------------------------------------------------------------------------
    Case("flavor-sql-quote", lambda w: w.args("flavor", "x'; DROP TABLE instance_types; --", "--yes"), 1,
         "Error: no deleted flavor matches \"x'; DROP TABLE instance_types; --\"; searched"),
    Case("flavor-percent", lambda w: w.args("flavor", "100%", "--yes"), 1, "Error: no deleted flavor matches '100%'"),
    Case("flavor-like-wildcards", lambda w: w.args("flavor", "db._l%", "--yes"), 1, "Error: no deleted flavor matches 'db._l%'"),
    Case("flavor-backslash", lambda w: w.args("flavor", "db\\.xlarge", "--yes"), 1, "Error: no deleted flavor matches 'db\\\\.xlarge'"),
    Case("flavor-nul", lambda w: w.args("flavor", "db.x\x00large", "--yes"), 1,
         "Error: 'db.x\\x00large' is not a flavor id, flavorid or name", inprocess=True),
    Case("flavor-very-long", lambda w: w.args("flavor", "x" * 5000, "--yes"), 1,
         "Error: '" + "x" * 40 + "' is not a flavor id, flavorid or name"),
    Case("flavor-not-utf8", lambda w: [*w.args("flavor"), b"db.\xff\xfe", "--yes"], 1,
         "Error: 'db.\\udcff\\udcfe' is not a flavor id, flavorid or name"),
    Case("flavor-newline", lambda w: w.args("flavor", "db.xlarge\n--yes", "--yes"), 1,
         "Error: no deleted flavor matches 'db.xlarge\\n--yes'"),
    Case("flavor-id-injection", lambda w: w.args("flavor", "id:1 OR 1=1", "--yes"), 1,
         "Error: no deleted flavor matches 'id:1 OR 1=1'"),
    Case("flavor-superscript-digit", lambda w: w.args("flavor", "\u00b2", "--yes"), 1,
         "Error: no deleted flavor matches '\u00b2'"),
    Case("flavor-arabic-indic-digit", lambda w: w.args("flavor", "\u0661", "--yes"), 1,
         "Error: no deleted flavor matches '\u0661'"),
    Case("flavor-from-instance-traversal", lambda w: w.args("flavor", "f0e1d2c3", "--from-instance", "../../etc", "--yes"), 1,
         "Error: --from-instance applies to Newton+ clouds"),
    Case("flavor-empty", lambda w: w.args("flavor", "", "--yes"), 1,
         "Error: '' is not a flavor id, flavorid or name"),
    # --- image -------------------------------------------------------------------------------
    Case("image-not-a-uuid", lambda w: w.args("image", "not-a-uuid", "--base-file", str(w.base), "--yes"), 1,
         "Error: 'not-a-uuid' is not an image UUID"),
    Case("image-traversal", lambda w: w.args("image", "--base-file", str(w.base), "--yes", "--", "../../../etc/passwd"), 1,
         "Error: '../../../etc/passwd' is not an image UUID"),
    Case("image-uuid-then-dotdot", lambda w: w.args("image", f"{SNAPSHOT}/..", "--base-file", str(w.base), "--yes"), 1,
         f"Error: '{SNAPSHOT}/..' is not an image UUID"),
    Case("image-uuid-nul", lambda w: w.args("image", f"{SNAPSHOT}\x00", "--base-file", str(w.base), "--yes"), 1,
         f"Error: '{SNAPSHOT}\\x00' is not an image UUID", inprocess=True),
    Case("image-uuid-not-utf8", lambda w: [*w.args("image"), b"b3986e99-1988-43bb-b47c-0b34438bc18\xff", "--base-file", str(w.base), "--yes"], 1,
         "Error: 'b3986e99-1988-43bb-b47c-0b34438bc18\\udcff' is not an image UUID"),
    Case("image-uuid-huge", lambda w: w.args("image", "f" * 100000, "--base-file", str(w.base), "--yes"), 1,
         "Error: 'ffffffff"),
    Case("image-purged", lambda w: w.args("image", UNKNOWN_IMAGE, "--base-file", str(w.base), "--yes"), 1,
         f"Error: image {UNKNOWN_IMAGE} has no images row (purged) and no live instance references it"),
    Case("base-file-fifo", lambda w: w.args("image", SNAPSHOT, "--base-file", str(w.root / "fifo"), "--yes"), 1,
         lambda w: f"Error: --base-file {w.root / 'fifo'} does not exist or is not a regular file", setup=fifo),
    Case("base-file-dev-zero", lambda w: w.args("image", SNAPSHOT, "--base-file", "/dev/zero", "--yes"), 1,
         "Error: --base-file /dev/zero does not exist or is not a regular file"),
    Case("base-file-qemu-protocol", lambda w: w.args("image", SNAPSHOT, "--base-file", 'json:{"file.filename":"/etc/passwd"}', "--yes"), 1,
         "Error: --base-file json:{\"file.filename\":\"/etc/passwd\"} does not exist or is not a regular file"),
    Case("base-file-etc-passwd", lambda w: w.args("image", SNAPSHOT, "--base-file", "/etc/passwd", "--yes"), 1,
         "Error: /etc/passwd on local has a virtual size of "),
    Case("base-file-and-from-host", lambda w: w.args("image", SNAPSHOT, "--base-file", str(w.base), "--from-host", "compute-12", "--yes"), 2,
         "Error: --base-file and --from-host are two sources"),
    Case("from-host-semicolon", lambda w: w.host_args(f"compute-1;{marker_cmd()}", "--yes"), 1,
         f"Error: host name 'compute-1;{marker_cmd()}' is not a valid host name"),
    Case("from-host-command-substitution", lambda w: w.host_args(f"$({marker_cmd()})", "--yes"), 1,
         f"Error: host name '$({marker_cmd()})' is not a valid host name"),
    # click reads "-o..." after --from-host as an option of its own: a usage error, no ssh.
    Case("from-host-ssh-option", lambda w: w.host_args(f"-oProxyCommand={marker_cmd()}", "--yes"), 2,
         "Error: No such option '-o'"),
    Case("from-host-newline", lambda w: w.host_args("compute-12\nProxyCommand touch", "--yes"), 1,
         "Error: host name 'compute-12\\nProxyCommand touch' is not a valid host name"),
    Case("from-host-ssh-token", lambda w: w.host_args("compute-%h", "--yes"), 1,
         "Error: host name 'compute-%h' is not a valid host name"),
    Case("from-host-unreachable", lambda w: w.host_args("compute-down", "--yes"), 1,
         "Error: cannot reach compute-down over ssh: ssh: connect to host 127.0.0.1 port ", ssh=True),
    Case("instances-path-relative", lambda w: w.args("image", SNAPSHOT, "--from-host", "compute-12", "--instances-path", f"x;{marker_cmd()}", "--yes"), 1,
         f"Error: path 'x;{marker_cmd()}/_base/"),
    Case("instances-path-metachars", lambda w: w.args("image", SNAPSHOT, "--from-host", "compute-12", "--instances-path", f"/nonexistent;{marker_cmd()};$({marker_cmd()})'\"`{marker_cmd()}`", "--yes"), 1,
         f"Error: no compute node has the _base file: compute-12: no /nonexistent;{marker_cmd()};", ssh=True),
    Case("db-hosts-all-hostile", lambda w: [*w.args("image", SNAPSHOT, "--from-host", "--yes")], 1,
         f"Error: no compute node has the _base file: $({marker_cmd()}): host name '$({marker_cmd()})' is not a valid host name; compute-1;",
         setup=hostile_hosts_only),
    Case("disk-format-metachars", lambda w: w.base_args("--disk-format", f"qcow2;{marker_cmd()}", "--yes"), 1,
         f"Error: image {SNAPSHOT} is 'qcow2;{marker_cmd()}', which qemu-img cannot write"),
    Case("db-disk-format-metachars", lambda w: w.base_args("--yes"), 1,
         f"Error: image {SNAPSHOT} is '../../raw', which qemu-img cannot write",
         setup=lambda w, m: q(m, f"UPDATE {w.glance_db}.images SET disk_format='../../raw' WHERE id=%s", SNAPSHOT)),
    Case("store-dir-missing", lambda w: [*w.args()[:-1], str(w.outside / "nope"), "image", SNAPSHOT, "--base-file", str(w.base), "--yes"], 1,
         lambda w: f"Error: store directory {w.outside / 'nope'} does not exist"),
    Case("db-location-etc-passwd-dry-run", lambda w: w.base_args("--dry-run"), 0,
         setup=lambda w, m: q(m, f"UPDATE {w.glance_db}.image_locations SET value='file:///etc/passwd' WHERE image_id=%s", SNAPSHOT),
         check=location_rewritten),
    Case("db-image-name-sql-in-dry-run", lambda w: w.base_args("--dry-run"), 0,
         setup=image_name_with_sql, check=sql_lines_only),
    # --- verify ------------------------------------------------------------------------------
    Case("verify-not-a-uuid", lambda w: w.args("verify", "../x"), 1, "Error: '../x' is not an image UUID"),
    Case("verify-purged", lambda w: w.args("verify", UNKNOWN_IMAGE), 1, f"Error: image {UNKNOWN_IMAGE} has no images row"),
    Case("verify-location-outside-store", lambda w: w.args("verify", SNAPSHOT), 1,
         f"Error: image {SNAPSHOT} does not verify (file)", setup=location_outside_with_matching_data,
         stdout_empty=False),
    Case("verify-location-not-a-file", lambda w: w.args("verify", SNAPSHOT), 1,
         f"Error: image {SNAPSHOT} does not verify (file)", stdout_empty=False,
         setup=lambda w, m: make_active(w, m, "rbd://pool/image/snap")),
    Case("verify-hash-algo-shake", lambda w: w.args("verify", SNAPSHOT), 1,
         "Error: hashing algorithm 'shake_128'", setup=shake_algo),
    # --- undo --------------------------------------------------------------------------------
    Case("undo-missing", lambda w: w.args("undo", str(w.root / "nope.json"), "--yes"), 1,
         lambda w: f"Error: journal {w.root / 'nope.json'} does not exist"),
    Case("undo-directory", lambda w: w.args("undo", str(w.outside), "--yes"), 1,
         lambda w: f"Error: journal {w.outside} is not readable JSON: "),
    Case("undo-etc-passwd", lambda w: w.args("undo", "/etc/passwd", "--yes"), 1,
         "Error: journal /etc/passwd is not readable JSON: "),
    Case("undo-binary", lambda w: w.args("undo", str(w.root / "journals" / "bin.json"), "--yes"), 1,
         lambda w: f"Error: journal {w.root / 'journals' / 'bin.json'} is not readable JSON: ",
         setup=with_journal("bin.json", lambda w: bytes(range(256)))),
    Case("undo-not-a-journal", lambda w: w.args("undo", str(w.root / "journals" / "x.json"), "--yes"), 1,
         lambda w: f"Error: {w.root / 'journals' / 'x.json'} is not a recover journal",
         setup=with_journal("x.json", lambda w: {"changes": []})),
    Case("undo-truncated-journal", lambda w: w.args("undo", str(w.root / "journals" / "t.json"), "--yes"), 1,
         lambda w: f"Error: journal {w.root / 'journals' / 't.json'} is damaged: no database.target; nothing was changed",
         setup=with_journal("t.json", lambda w: {"format": "recover-journal/1"})),
    Case("undo-journal-target-traversal", lambda w: w.args("undo", str(w.root / "journals" / "j.json"), "--yes"), 1,
         "Error: the journal is for cell '../../etc', which is not configured (h_nova)",
         setup=with_journal("j.json", lambda w: journal_doc(w, database={**journal_doc(w)["database"], "target": "cell:../../etc"},
                                                            changes=[{"table": "instance_types", "key": {"id": 1}, "before": {"id": 1}, "after": {"id": 1}}]))),
    Case("undo-journal-unknown-table", lambda w: w.args("undo", str(w.root / "journals" / "j.json"), "--yes"), 1,
         "Error: nova cell 'h_nova' database mysql+pymysql://root@127.0.0.1:",
         setup=with_journal("j.json", lambda w: journal_doc(w, changes=[{"table": "mysql`.`user", "key": {"id": 1}, "before": None, "after": {"id": 1}}]))),
    Case("undo-journal-files-outside-store", lambda w: w.args("undo", str(w.root / "journals" / "tampered.json"), "--yes"), 1,
         lambda w: f"Error: journal {w.root / 'journals' / 'tampered.json'} names a file that is not this image's file in the store",
         setup=real_image_journal_with_files_outside),
    # --- rbd-features, demo, usage -----------------------------------------------------------
    Case("rbd-shell-metachars", lambda w: ["rbd-features", f"60; {marker_cmd()}"], 1,
         f"Error: '60; {marker_cmd()}' is not an RBD feature value", world="bare"),
    Case("rbd-out-of-range", lambda w: ["rbd-features", "9" * 40], 1,
         "Error: " + "9" * 40 + " is out of range for an RBD feature mask", world="bare"),
    Case("rbd-negative", lambda w: ["rbd-features", "--", "-1"], 1,
         "Error: -1 is out of range for an RBD feature mask", world="bare"),
    Case("rbd-image-metachars", lambda w: ["rbd-features", "60", "--image", f"volumes/v;{marker_cmd()}"], 0,
         check=rbd_command_quoted, world="bare"),
    Case("demo-into-a-file", lambda w: ["demo", str(w.root / "home" / "a-file")], 1,
         lambda w: f"Error: {w.root / 'home' / 'a-file'} exists and is not a directory",
         setup=demo_file, world="bare", stdout_empty=False),
    Case("demo-into-a-foreign-dir", lambda w: ["demo", str(w.outside)], 1,
         lambda w: f"Error: {w.outside} is not empty and is not a recover sandbox",
         setup=foreign_dir, world="bare", stdout_empty=False),
    Case("usage-unknown-command", lambda w: ["flavour", "x"], 2, "Error: No such command 'flavour'", world="bare"),
    Case("usage-bad-format", lambda w: w.args("inventory", "--format", "xml"), 2, "Error: Invalid value for '--format'"),
    Case("usage-missing-argument", lambda w: w.args("image", "--yes"), 2, "Error: Missing argument 'IMAGE_UUID'"),
]  # fmt: skip


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_catalogue_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {"inventory", "flavor", "image", "verify", "undo", "rbd-features", "demo"}
    seen = set()
    for case in CASES:
        fake = World(Path("/w"), "mysql+pymysql://root@h:1/n?charset=utf8",
                     "mysql+pymysql://root@h:1/g?charset=utf8", "n", "g", Path("/s"),
                     Path("/b"), Path("/i"), Path("/o"), ("", "", 0), {}, Path("/x"))  # fmt: skip
        seen |= {a for a in case.argv(fake) if isinstance(a, str)} & commands
    assert seen == commands


@pytest.mark.parametrize("case", _params())
def test_hostile_input(
    case: Case,
    make_db: Any,
    mariadb_server: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> None:
    MARKER.unlink(missing_ok=True)
    if case.world == "full":
        world = build_world(make_db, tmp_path, tmp_path_factory)
    else:
        world = World(tmp_path, "", "", "", "", tmp_path / "glance" / "images", Path(),
                      Path(), Path(), ("", "", 0), base_env(tmp_path), tmp_path / "outside")  # fmt: skip
    if case.ssh:
        world.env["RECOVER_SSH_COMMAND"] = request.getfixturevalue("sshd_server").ssh_command
    if case.setup is not None:
        case.setup(world, mariadb_server)
    before_db = checksums(mariadb_server, world.dbs)
    before_files = snapshot(tmp_path)
    passwd = os.stat("/etc/passwd")
    argv = case.argv(world)

    if case.inprocess:
        result = CliRunner().invoke(cli, argv, env=world.env)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(
            result.exception
        )
        code, out, err = result.exit_code, result.stdout, result.stderr
    else:
        done = run_recover(world, argv)
        code, out, err = done.returncode, done.stdout, done.stderr

    expected = case.stderr(world) if callable(case.stderr) else case.stderr
    assert code == case.code, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    if case.code == 1:
        assert len(err.splitlines()) == 1, err
        assert err.startswith(expected), err
        assert not err.startswith("Error: unexpected"), err
        if case.stdout_empty:
            assert out == "", out
    elif case.code == 2:
        assert "Usage: recover" in err and expected in err, err
    else:
        assert err == expected, err
    if case.check is not None:
        case.check(world, out)
    for secret in (SECRET, "Right-Passw0rd-42", "p@ss;w'rd"):
        assert secret not in out and secret not in err
    assert checksums(mariadb_server, world.dbs) == before_db
    assert diff(before_files, snapshot(tmp_path)) == {}
    assert not MARKER.exists()
    assert not world.tripwire_fired.exists() or case.ssh
    after = os.stat("/etc/passwd")
    assert (after.st_size, after.st_mtime_ns) == (passwd.st_size, passwd.st_mtime_ns)
