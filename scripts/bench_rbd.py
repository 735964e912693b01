"""The Ceph RBD benchmark (issue 11): ``recover image`` on Glance's RBD store, against by hand.

A real single-node Ceph (``tests/ceph.py`` ``start_ceph``: one mon, one memstore
OSD on 127.0.0.1, cephx, pools ``images``/``vms``), a Glance database with the real
DDL, and one raw image of random (incompressible, never thin) data. recover runs
as ``client.glance`` (``profile rbd pool=images``), as on a controller.

* **import** (the image is gone from Ceph): ``recover image ID --base-file BASE --yes``
  rebuilds ``images/<id>`` with a protected ``snap`` and reads it back before COMMIT,
  against the manual procedure ``rbd import --object-size 8M`` + ``md5sum`` +
  ``sha512sum`` + ``rbd snap create`` + ``rbd snap protect``.
* **trash** (clone v2 left it in the RBD trash): ``recover image ID --yes`` restores
  it, re-creates and protects ``snap`` and reads it back, against
  ``rbd export <pool>/<id>@snap - | md5sum`` alone.

Before every command (untimed) the state is put back: the rows deleted as Glance
deletes them, the imported image removed / the restored image back in the trash.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_db import MariaDB
from bench_image import GLANCE_SCHEMA, make_base
from bench_util import Run, measure
from sqlalchemy import text

from recover.db.engine import open_database
from recover.simulate import Image, create_image, delete_image

try:
    from tests.ceph import CEPH_BINARIES, DEBIAN_PACKAGES, CephCluster, start_ceph
    from tests.helpers import find_binary
except ImportError as exc:  # pragma: no cover - a venv without the test extra
    raise SystemExit(f"error: the rbd benchmark needs the test extra ({exc})") from None

POOL = "images"
SNAP = "snap"
USER = "glance"
OBJECT_SIZE = "8M"
IMPORT_ID = "c0ffee00-1988-43bb-b47c-000000000001"
MANUAL_ID = "c0ffee00-1988-43bb-b47c-000000000002"
TRASH_ID = "c0ffee00-1988-43bb-b47c-000000000003"
EXPORT_ID = "c0ffee00-1988-43bb-b47c-000000000004"


@dataclass
class Digest:
    md5: str
    sha512: str
    size: int


def _digests(path: Path) -> Digest:
    md5, sha = hashlib.md5(), hashlib.sha512()
    size = 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return Digest(md5.hexdigest(), sha.hexdigest(), size)


def have_ceph() -> bool:
    """The whole run includes this section only where Ceph is installed."""
    return all(find_binary(name) is not None for name in CEPH_BINARIES)


def require_ceph() -> None:
    missing = [name for name in CEPH_BINARIES if find_binary(name) is None]
    if missing:
        raise SystemExit(
            f"error: the rbd benchmark needs {', '.join(missing)}; install them with:\n"
            f"  sudo apt-get install --no-install-recommends {DEBIAN_PACKAGES}"
        )


class RbdBench:
    """The cluster, the Glance database, the base file, and one function per variant."""

    def __init__(self, db: MariaDB, work: Path, size: int, recover: list[str]) -> None:
        require_ceph()
        self.work = work
        self.size = size
        self.recover = recover
        self.state = work / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.base = work / "instances" / "_base" / "rbd-base.raw"
        print(f"    writing {self.base.name}: {size >> 20} MiB of random data", flush=True)
        make_base(self.base, size, size, seed=11)  # every extent written: nothing thin
        self.digest = _digests(self.base)
        self.glance_url = db.create("rbd_glance", GLANCE_SCHEMA)
        print("    starting Ceph (mon + memstore OSD)", flush=True)
        self.cluster: CephCluster = start_ceph(work / "ceph")
        self.conf = str(self.cluster.conf_path)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVER_")} | {
            "RECOVER_STATE_DIR": str(self.state),
            "LC_ALL": "C",
        }
        # The trash image: written as glance_store writes it, then in the trash as clone v2
        # leaves it (its snap gone from the user namespace); the export reference: intact.
        self.rbd("import", *self.import_args(TRASH_ID))
        self.rbd("trash", "mv", f"{POOL}/{TRASH_ID}")
        self.rbd("import", *self.import_args(EXPORT_ID))
        self.rbd("snap", "create", f"{POOL}/{EXPORT_ID}@{SNAP}")
        self.rbd("snap", "protect", f"{POOL}/{EXPORT_ID}@{SNAP}")

    def close(self) -> None:
        self.cluster.stop()

    # --- Ceph and rows (never timed) -------------------------------------------------------

    def rbd_argv(self, *args: str) -> list[str]:
        rbd = shutil.which("rbd") or "rbd"
        return [rbd, "--conf", self.conf, "--id", USER, *args]

    def rbd(self, *args: str) -> str:
        return self.cluster.run("rbd", *args, user=USER).stdout

    def import_args(self, image_id: str) -> list[str]:
        return ["--no-progress", "--image-format", "2", "--object-size", OBJECT_SIZE,
                str(self.base), f"{POOL}/{image_id}"]  # fmt: skip

    def exists(self, image_id: str) -> bool:
        return image_id in self.cluster.json("rbd", "ls", "--pool", POOL, user=USER)

    def snaps(self, image_id: str) -> list[dict[str, Any]]:
        return list(self.cluster.json("rbd", "snap", "ls", f"{POOL}/{image_id}", user=USER))

    def drop_snap(self, image_id: str) -> None:
        for snap in self.snaps(image_id):
            if snap["name"] == SNAP:
                if snap.get("protected") == "true":
                    self.rbd("snap", "unprotect", f"{POOL}/{image_id}@{SNAP}")
                self.rbd("snap", "rm", "--no-progress", f"{POOL}/{image_id}@{SNAP}")

    def remove(self, image_id: str) -> None:
        """Gone from Ceph: snap unprotected and removed, the image removed."""
        if self.exists(image_id):
            self.drop_snap(image_id)
            self.rbd("rm", "--no-progress", f"{POOL}/{image_id}")

    def to_trash(self, image_id: str) -> None:
        """Back in the trash as clone v2 leaves it (no snap in the user namespace)."""
        if self.exists(image_id):
            self.drop_snap(image_id)
            self.rbd("trash", "mv", f"{POOL}/{image_id}")

    def in_trash(self, image_id: str) -> bool:
        entries = self.cluster.json("rbd", "trash", "ls", "--all", "--pool", POOL, user=USER)
        return any(e["name"] == image_id for e in entries)

    def location(self, image_id: str) -> str:
        return f"rbd://{self.cluster.fsid}/{POOL}/{image_id}/{SNAP}"

    def reset_rows(self, image_id: str) -> None:
        """The image's rows as Glance's delete leaves them (raw upload, the base's hashes)."""
        glance = open_database(self.glance_url, "glance")
        try:
            with glance.engine.begin() as conn:
                for table in ("image_locations", "image_properties", "image_tags", "image_members"):
                    conn.execute(text(f"DELETE FROM {table} WHERE image_id = :i"), {"i": image_id})
                conn.execute(text("DELETE FROM images WHERE id = :i"), {"i": image_id})
                create_image(conn, glance, Image(
                    id=image_id, name=f"bench-rbd-{image_id[-1]}", disk_format="raw",
                    size=self.digest.size, virtual_size=self.digest.size,
                    checksum=self.digest.md5, os_hash_algo="sha512",
                    os_hash_value=self.digest.sha512, location=self.location(image_id),
                    properties={"os_distro": "centos"}, tags=["golden"],
                    created_at=datetime(2019, 3, 13, 18, 44, 2),
                ))  # fmt: skip
                delete_image(conn, glance, image_id, datetime(2020, 9, 21, 11, 3, 57))
        finally:
            glance.dispose()

    def check(self, image_id: str) -> None:
        """After recover: the rows live with the original hashes, snap protected, 8 MiB objects."""
        glance = open_database(self.glance_url, "glance")
        try:
            with glance.engine.connect() as conn:
                row = conn.execute(
                    text("SELECT status, deleted, checksum, os_hash_value, size FROM images"
                         " WHERE id = :i"), {"i": image_id},
                ).one()  # fmt: skip
                loc = conn.execute(
                    text("SELECT value, deleted FROM image_locations WHERE image_id = :i"),
                    {"i": image_id},
                ).all()
        finally:
            glance.dispose()
        d = self.digest
        if tuple(row) != ("active", 0, d.md5, d.sha512, d.size):
            raise RuntimeError(f"image {image_id} after recover: {tuple(row)}")
        if [tuple(x) for x in loc] != [(self.location(image_id), 0)]:
            raise RuntimeError(f"image {image_id}'s locations after recover: {loc}")
        snaps = [(s["name"], s.get("protected")) for s in self.snaps(image_id)]
        if snaps != [(SNAP, "true")]:
            raise RuntimeError(f"{POOL}/{image_id} snapshots after recover: {snaps}")
        info = self.cluster.json("rbd", "info", f"{POOL}/{image_id}", user=USER)
        if (info["size"], info["order"]) != (d.size, 23):
            raise RuntimeError(f"{POOL}/{image_id} after recover: {info}")

    # --- import: the image gone from Ceph --------------------------------------------------

    def recover_import_argv(self, recover: list[str] | None = None) -> list[str]:
        return [*(recover or self.recover), "--glance-db", self.glance_url,
                "--ceph-conf", self.conf, "--rbd-user", USER, "--rbd-pool", POOL,
                "image", IMPORT_ID,
                "--base-file", str(self.base), "--yes"]  # fmt: skip

    def recover_import(
        self, *, check: bool = False, recover: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Run:  # fmt: skip
        self.remove(IMPORT_ID)
        self.reset_rows(IMPORT_ID)
        os.sync()
        result = measure(self.recover_import_argv(recover), env=env or self.env)
        if check:
            self.check(IMPORT_ID)
        self.remove(IMPORT_ID)
        return result

    def manual_import_argvs(self) -> list[list[str]]:
        snap = f"{POOL}/{MANUAL_ID}@{SNAP}"
        return [
            self.import_argv(),
            ["md5sum", str(self.base)],
            ["sha512sum", str(self.base)],
            self.rbd_argv("snap", "create", snap),
            self.rbd_argv("snap", "protect", snap),
        ]

    def manual_import_script(self) -> str:
        return " && ".join(shlex.join(argv) for argv in self.manual_import_argvs())

    def manual_import(self, *, check: bool = False) -> Run:
        self.remove(MANUAL_ID)
        os.sync()
        result = measure(["sh", "-c", self.manual_import_script()], env=self.env)
        if check:
            snaps = [(s["name"], s.get("protected")) for s in self.snaps(MANUAL_ID)]
            if snaps != [(SNAP, "true")]:
                raise RuntimeError(f"{POOL}/{MANUAL_ID} after the manual import: {snaps}")
        self.remove(MANUAL_ID)
        return result

    def import_argv(self) -> list[str]:
        return self.rbd_argv("import", *self.import_args(MANUAL_ID))

    def import_alone(self) -> Run:
        self.remove(MANUAL_ID)
        os.sync()
        result = measure(self.import_argv(), env=self.env)
        self.remove(MANUAL_ID)
        return result

    # --- trash: the image in the RBD trash -------------------------------------------------

    def recover_trash_argv(self) -> list[str]:
        return [*self.recover, "--glance-db", self.glance_url, "--ceph-conf", self.conf,
                "--rbd-user", USER, "--rbd-pool", POOL, "image", TRASH_ID, "--yes"]  # fmt: skip

    def recover_trash(self, *, check: bool = False) -> Run:
        self.to_trash(TRASH_ID)
        if not self.in_trash(TRASH_ID):
            raise RuntimeError(f"{POOL}/{TRASH_ID} is not in the trash")
        self.reset_rows(TRASH_ID)
        os.sync()
        result = measure(self.recover_trash_argv(), env=self.env)
        if check:
            self.check(TRASH_ID)
        self.to_trash(TRASH_ID)
        return result

    def export_script(self) -> str:
        export = self.rbd_argv("export", "--no-progress", f"{POOL}/{EXPORT_ID}@{SNAP}", "-")
        return f"set -o pipefail; {shlex.join(export)} | md5sum"

    def export_md5(self, *, check: bool = False) -> Run:
        os.sync()
        out = self.work / "export.md5"
        result = measure(["bash", "-c", self.export_script()], env=self.env, stdout=out)
        if check and out.read_text().split()[0] != self.digest.md5:
            raise RuntimeError(f"rbd export | md5sum: {out.read_text()!r}, not {self.digest.md5}")
        return result
