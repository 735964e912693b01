"""The image pipeline benchmark: ``recover image`` against the manual procedure and qemu-img.

A raw ``_base`` file (sparse: ``data`` bytes of incompressible data spread over
``size``) stands in for nova's cache copy of a deleted qcow2 image. Variants, all
writing into the same file system (the store directory's):

* ``recover image ID --base-file BASE --yes``: convert, hash (md5 + sha512), fsync,
  place, rows; and ``--from-host`` over SSH to 127.0.0.1 (convert next to _base on
  the "compute node", stream the qcow2 back hashing it on the way);
* the manual procedure of the incident: ``qemu-img convert``, ``md5sum``,
  ``sha512sum``, ``cp`` into the store (over SSH: convert remotely, ``scp`` back);
* ``qemu-img convert`` alone (the floor), locally and run over SSH.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench_db import MariaDB
from bench_util import PYTHON, REPO, Run, measure, run
from sqlalchemy import text

from recover.db.engine import open_database
from recover.inventory import base_file_name
from recover.simulate import Image, create_image, delete_image

sys.path.insert(0, str(REPO))
from tests.sshd import SshdServer, start_sshd

GLANCE_SCHEMA = "glance-2024_1_contract01"
MIB = 1024**2
GIB = 1024**3
EXTENT = 8 * MIB
HOST = "compute-1"
HASH_SNIPPET = (
    "import sys; from recover.images.digest import hash_file; "
    "d = hash_file(sys.argv[1]); print(d.md5, d.value)"
)


@dataclass
class Case:
    label: str
    image_id: str
    size: int
    data: int
    base: Path

    @property
    def qcow2_name(self) -> str:
        return f"{self.image_id}.qcow2"


def make_base(path: Path, size: int, data: int, seed: int) -> None:
    """A sparse raw disk: ``data`` bytes of random (incompressible) data in 8 MiB extents
    at random places, the first one at offset 0 like a boot sector and partition table."""
    rng = random.Random(seed)
    slots = size // EXTENT
    chosen = sorted({0, *rng.sample(range(1, slots), data // EXTENT - 1)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for slot in chosen:
            os.pwrite(fd, rng.randbytes(EXTENT), slot * EXTENT)
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageBench:
    """The files, the Glance database, sshd, and one function per measured variant."""

    def __init__(
        self, db: MariaDB, work: Path, sizes: list[tuple[str, int, int]], recover: list[str]
    ) -> None:
        self.work = work
        self.instances = work / "instances"
        self.store = work / "store"
        self.tmp = work / "tmp"
        self.state = work / "state"
        for directory in (self.instances, self.store, self.tmp, self.state):
            directory.mkdir(parents=True, exist_ok=True)
        self.glance_url = db.create("img_glance", GLANCE_SCHEMA)
        self.recover = recover
        self.cases = []
        for n, (label, size, data) in enumerate(sizes):
            image_id = f"b3986e99-1988-43bb-b47c-{n:012x}"
            case = Case(
                label, image_id, size, data, self.instances / "_base" / base_file_name(image_id)
            )
            print(
                f"    writing {case.base.name}: {label} raw, {data // MIB} MiB of data", flush=True
            )
            make_base(case.base, size, data, seed=n + 1)
            self.cases.append(case)
        self.sshd: SshdServer = start_sshd(_fresh(work / "sshd"))
        self.ssh = self.sshd.ssh_argv()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVER_")} | {
            "RECOVER_STATE_DIR": str(self.state),
            "RECOVER_SSH_COMMAND": self.sshd.ssh_command,
        }
        self.expected: dict[str, str] = {}

    def close(self) -> None:
        self.sshd.stop()

    # --- state between runs (never timed) --------------------------------------------------

    def reset(self, case: Case) -> None:
        """The image row deleted as Glance deletes it, and no file in the store."""
        glance = open_database(self.glance_url, "glance")
        try:
            with glance.engine.begin() as conn:
                for table in ("image_locations", "image_properties", "image_tags", "image_members"):
                    conn.execute(
                        text(f"DELETE FROM {table} WHERE image_id = :i"), {"i": case.image_id}
                    )
                conn.execute(text("DELETE FROM images WHERE id = :i"), {"i": case.image_id})
                create_image(
                    conn,
                    glance,
                    Image(
                        id=case.image_id,
                        name=f"bench-{case.label}",
                        disk_format="qcow2",
                        size=case.data,
                        virtual_size=case.size,
                        checksum="0" * 32,
                        os_hash_algo="sha512",
                        os_hash_value="0" * 128,
                        location=f"file://{self.store}/{case.image_id}",
                        properties={"image_type": "snapshot", "os_distro": "centos"},
                        tags=["golden"],
                        created_at=datetime(2017, 3, 13, 18, 44, 2),
                    ),
                )
                delete_image(conn, glance, case.image_id, datetime(2017, 9, 21, 11, 3, 57))
        finally:
            glance.dispose()
        self.clean(case)

    def clean(self, case: Case) -> None:
        for path in (self.store / case.image_id, self.tmp / case.qcow2_name):
            path.unlink(missing_ok=True)
        for path in (*self.store.glob(".recover-*"), *self.instances.glob("_base/.*")):
            path.unlink(missing_ok=True)

    def check(self, case: Case) -> None:
        """The placed file is qemu-img's qcow2, byte for byte, and the row says so."""
        placed = self.store / case.image_id
        md5, sha = _digests(placed)
        if case.image_id in self.expected and self.expected[case.image_id] != md5:
            raise RuntimeError(
                f"{placed}: md5 {md5}, qemu-img convert gives {self.expected[case.image_id]}"
            )
        glance = open_database(self.glance_url, "glance")
        try:
            with glance.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT status, deleted, checksum, os_hash_value, size"
                        " FROM images WHERE id = :i"
                    ),
                    {"i": case.image_id},
                ).one()
        finally:
            glance.dispose()
        if (row.status, row.deleted, row.checksum, row.os_hash_value, row.size) != (
            "active",
            0,
            md5,
            sha,
            placed.stat().st_size,
        ):
            raise RuntimeError(f"image {case.image_id} after recover: {tuple(row)}")

    # --- the variants ----------------------------------------------------------------------

    def convert_argv(self, case: Case, out: Path) -> list[str]:
        return ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(case.base), str(out)]

    def convert(self, case: Case) -> Run:
        out = self.tmp / case.qcow2_name
        result = measure(self.convert_argv(case, out))
        if case.image_id not in self.expected:
            self.expected[case.image_id] = _digests(out)[0]
        self.clean(case)
        return result

    def convert_durable(self, case: Case) -> Run:
        out = self.tmp / case.qcow2_name
        script = f"{shlex.join(self.convert_argv(case, out))} && sync {shlex.quote(str(out))}"
        result = measure(["sh", "-c", script])
        self.clean(case)
        return result

    def manual_script(self, case: Case) -> str:
        out = shlex.quote(str(self.tmp / case.qcow2_name))
        dest = shlex.quote(str(self.store / case.image_id))
        return (
            f"{shlex.join(self.convert_argv(case, self.tmp / case.qcow2_name))}"
            f" && md5sum {out} && sha512sum {out} && cp {out} {dest}"
        )

    def manual(self, case: Case) -> Run:
        result = measure(["sh", "-c", self.manual_script(case)])
        self.clean(case)
        return result

    def recover_argv(self, case: Case, *, ssh: bool, recover: list[str] | None = None) -> list[str]:
        source = (
            ["--from-host", HOST, "--instances-path", str(self.instances)]
            if ssh
            else ["--base-file", str(case.base)]
        )
        return [
            *(recover or self.recover),
            "--glance-db",
            self.glance_url,
            "--store-dir",
            str(self.store),
            "image",
            case.image_id,
            *source,
            "--yes",
        ]

    def recover_run(
        self,
        case: Case,
        *,
        ssh: bool = False,
        recover: list[str] | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> Run:
        self.reset(case)
        os.sync()
        result = measure(self.recover_argv(case, ssh=ssh, recover=recover), env=env or self.env)
        if check:
            self.check(case)
        self.clean(case)
        return result

    def remote_tmp(self, case: Case) -> str:
        return str(case.base.parent / f".manual-{case.qcow2_name}")

    def convert_ssh_argv(self, case: Case) -> list[str]:
        remote = shlex.join(
            [
                "qemu-img",
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                str(case.base),
                self.remote_tmp(case),
            ]
        )
        return [*self.ssh, HOST, remote]

    def convert_ssh(self, case: Case) -> Run:
        result = measure(self.convert_ssh_argv(case))
        Path(self.remote_tmp(case)).unlink(missing_ok=True)
        return result

    def scp_argv(self, case: Case) -> list[str]:
        """The manual procedure's transfer alone (its qcow2 made untimed beforehand)."""
        scp = ["scp", "-q", "-O", "-F", str(self.sshd.client_config)]
        return [*scp, f"{HOST}:{self.remote_tmp(case)}", str(self.tmp / case.qcow2_name)]

    def scp(self, case: Case) -> Run:
        if not Path(self.remote_tmp(case)).exists():
            run(self.convert_ssh_argv(case))
        result = measure(self.scp_argv(case))
        (self.tmp / case.qcow2_name).unlink(missing_ok=True)
        return result

    def manual_ssh_script(self, case: Case) -> str:
        ssh = shlex.join(self.ssh)
        scp = shlex.join(["scp", "-q", "-O", "-F", str(self.sshd.client_config)])
        remote = self.remote_tmp(case)
        out = shlex.quote(str(self.tmp / case.qcow2_name))
        dest = shlex.quote(str(self.store / case.image_id))
        return (
            f"{shlex.join(self.convert_ssh_argv(case))}"
            f" && {scp} {HOST}:{shlex.quote(remote)} {out}"
            f" && {ssh} {HOST} rm -f {shlex.quote(remote)}"
            f" && md5sum {out} && sha512sum {out} && cp {out} {dest}"
        )

    def manual_ssh(self, case: Case) -> Run:
        result = measure(["sh", "-c", self.manual_ssh_script(case)])
        Path(self.remote_tmp(case)).unlink(missing_ok=True)
        self.clean(case)
        return result

    # --- hashing alone ---------------------------------------------------------------------

    def hash_file_path(self) -> Path:
        return self.work / "hash-input.qcow2"

    def prepare_hash(self, case: Case) -> Path:
        path = self.hash_file_path()
        run(self.convert_argv(case, path))
        _warm(path)
        return path

    def hash_argv(self) -> list[str]:
        return [PYTHON, "-c", HASH_SNIPPET, str(self.hash_file_path())]


def _warm(path: Path) -> None:
    with path.open("rb", buffering=0) as handle:
        while handle.read(16 * MIB):
            pass


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha512()
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(8 * MIB):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


Variant = Callable[[], Run]
