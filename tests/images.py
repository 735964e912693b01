"""Image scenarios: a Glance database of one generation with the incident's snapshot deleted,
its original qcow2 bytes, and the raw `_base` file nova made from them with qemu-img."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recover.db.engine import open_database
from recover.demo import SNAPSHOT, _seed_disk
from recover.images import qemu
from recover.inventory import base_file_name
from recover.simulate import Image, create_image, delete_image
from tests.clouds import MakeDb

DELETED_AT = datetime(2017, 9, 21, 11, 3, 57)
PROPERTIES = {"image_type": "snapshot", "hw_disk_bus": "virtio", "os_distro": "centos"}


def digests(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest(), path.stat().st_size


@dataclass
class Scenario:
    glance_url: str
    db_name: str
    store: Path
    base: Path
    original: tuple[str, str, int]  # md5, sha512, size of the qcow2 Glance had
    instances_path: Path

    def args(self, *more: str) -> list[str]:
        return ["--glance-db", self.glance_url, "--store-dir", str(self.store), *more]

    def row(self) -> dict[str, Any]:
        db = open_database(self.glance_url, "glance")
        try:
            with db.engine.connect() as conn:
                images = db.table("images")
                return dict(
                    conn.execute(images.select().where(images.c.id == SNAPSHOT)).mappings().one()
                )
        finally:
            db.dispose()

    def children(self) -> dict[str, list[tuple[Any, ...]]]:
        db = open_database(self.glance_url, "glance")
        found = {}
        try:
            with db.engine.connect() as conn:
                for table, cols in (
                    ("image_properties", "name, deleted"),
                    ("image_tags", "value, deleted"),
                    ("image_members", "member, deleted"),
                    ("image_locations", "value, status, deleted, meta_data"),
                ):
                    found[table] = [
                        tuple(r)
                        for r in conn.exec_driver_sql(
                            f"SELECT {cols} FROM {table} WHERE image_id = '{SNAPSHOT}' ORDER BY id"
                        )
                    ]
        finally:
            db.dispose()
        return found


def make_disks(directory: Path, instances_path: Path) -> tuple[Path, Path]:
    """The snapshot as Glance stored it (qcow2) and nova's raw _base copy of it."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "guest.raw"
    _seed_disk(raw)
    original = directory / "snapshot.qcow2"
    qemu.convert(raw, "raw", original, "qcow2")
    base_dir = instances_path / "_base"
    base_dir.mkdir(parents=True, exist_ok=True)
    base = base_dir / base_file_name(SNAPSHOT)
    qemu.convert(original, "qcow2", base, "raw")  # nova/virt/images.py fetch_to_raw
    raw.unlink()
    return original, base


def incident_image(
    make_db: MakeDb,
    tmp_path: Path,
    schema: str,
    *,
    disk_format: str = "qcow2",
    delayed: bool = False,
    name: str = "i_glance",
) -> Scenario:
    url = make_db(schema, name)
    store = tmp_path / "mfsclient/ucscontroller/glance/images"
    store.mkdir(parents=True)
    instances_path = tmp_path / "compute-12/var/lib/nova/instances"
    original, base = make_disks(tmp_path / "disks", instances_path)
    if disk_format == "raw":
        shutil.copyfile(base, original)
    md5, sha, size = digests(original)
    glance = open_database(url, "glance")
    with glance.engine.begin() as conn:
        create_image(conn, glance, Image(
            id=SNAPSHOT, name="ucs-app-golden-snap", disk_format=disk_format, size=size,
            virtual_size=qemu.info(original).virtual_size, checksum=md5, os_hash_algo="sha512",
            os_hash_value=sha, min_disk=0, properties=PROPERTIES, tags=["golden"],
            members=["a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"], location=f"file://{store}/{SNAPSHOT}",
            created_at=datetime(2017, 3, 13, 18, 44, 2),
        ))  # fmt: skip
        delete_image(conn, glance, SNAPSHOT, DELETED_AT, delayed=delayed)
    glance.dispose()
    if delayed:
        shutil.copyfile(original, store / SNAPSHOT)  # glance-scrubber has not run yet
    other = store / "6e2d4b1a-8c3f-4e5d-9a7b-1f0c2e3d4a5b"
    other.write_bytes(b"another image")
    other.chmod(0o640)  # glance:glance 0640, as glance_store leaves its files
    return Scenario(url, name, store, base, (md5, sha, size), instances_path)


def qemu_info_format(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    import json

    return str(json.loads(out.stdout)["format"])
