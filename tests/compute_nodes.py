"""Compute nodes for ``inventory --probe-hosts`` and ``image --from-host``: a real sshd
each, in a mount namespace of its own (``SshdServer.start_node``), seeing its own
``/var/lib/nova/instances`` with real ``_base`` files and real qcow2 overlays made by
``qemu-img create -f qcow2 -b ../_base/<sha1> -F raw`` (as nova's libvirt driver makes
them: ``nova/virt/libvirt/imagebackend.py`` ``Qcow2.create_image``), and optionally
its own ``/etc/nova/nova.conf``.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from recover.db.engine import open_database
from recover.inventory import base_file_name
from recover.simulate import (
    Flavor,
    Image,
    Instance,
    create_api_flavor,
    create_image,
    create_instance,
    delete_image,
    map_cell,
)
from tests.clouds import (
    CELL0_UUID,
    CELL1_UUID,
    MODERN_API,
    MODERN_GLANCE,
    MODERN_NOVA,
    Cloud,
    MakeDb,
)
from tests.helpers import require_binary
from tests.sshd import ComputeNode, SshdServer

INSTANCES = "/var/lib/nova/instances"

SMALL = Flavor(name="m1.small", flavorid="2", memory_mb=2048, vcpus=1, root_gb=20,
               created_at=datetime(2019, 1, 1))  # fmt: skip


@dataclass
class NodeFiles:
    """What one compute node holds: ``_base`` files (name -> (bytes, mtime)), instance
    disks (uuid -> the ``_base`` name their qcow2 overlay is backed by) and nova.conf."""

    base: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    disks: dict[str, str] = field(default_factory=dict)
    nova_conf: str | None = None


def write_node(root: Path, files: NodeFiles) -> None:
    """Lay ``files`` out under ``root`` as ``SshdServer.start_node`` expects them."""
    qemu_img = require_binary("qemu-img")
    base = root / "instances" / "_base"
    base.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.base.items():
        (base / name).write_bytes(data)
    for uuid, backing in files.disks.items():
        disk_dir = root / "instances" / uuid
        disk_dir.mkdir()
        subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-b", f"../_base/{backing}", "-F", "raw",
             "disk"],
            cwd=disk_dir, check=True, capture_output=True,
        )  # fmt: skip
    for name, (_, mtime) in files.base.items():  # after qemu-img create read them
        os.utime(base / name, (mtime, mtime))
    if files.nova_conf is not None:
        (root / "etc" / "nova").mkdir(parents=True)
        (root / "etc" / "nova" / "nova.conf").write_text(files.nova_conf)


def start_nodes(
    server: SshdServer, directory: Path, nodes: dict[str, NodeFiles]
) -> list[ComputeNode]:
    started = []
    try:
        for alias, files in nodes.items():
            root = directory / alias
            write_node(root, files)
            started.append(server.start_node(alias, root))
    except BaseException:
        for node in started:
            node.stop()
        raise
    return started


def stop_nodes(server: SshdServer, nodes: list[ComputeNode]) -> None:
    for node in nodes:
        node.stop()
        server.nodes.pop(node.alias, None)


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def md5_sha512(blob: bytes) -> tuple[str, str]:
    return hashlib.md5(blob).hexdigest(), hashlib.sha512(blob).hexdigest()


def t(text: str) -> int:
    """Seconds since the epoch of a UTC time ``YYYY-MM-DD HH:MM:SS``."""
    return int((datetime.fromisoformat(text) - datetime(1970, 1, 1)).total_seconds())


def raw_image(image_id: str, name: str, blob: bytes, store: Path) -> Image:
    md5, sha = md5_sha512(blob)
    return Image(id=image_id, name=name, disk_format="raw", size=len(blob), checksum=md5,
                 os_hash_algo="sha512", os_hash_value=sha,
                 location=f"file://{store}/{image_id}")  # fmt: skip


def small_cloud(
    make_db: MakeDb,
    store: Path,
    images: list[tuple[Image, datetime | None]],
    instances: dict[str, tuple[str, str | None]],
    prefix: str = "p",
) -> Cloud:
    """nova_api + cell0 + cell1 + Glance: ``images`` (each deleted at the time given, or
    live) and ``instances`` (uuid -> (image_ref, host)) in cell1, all of flavor m1.small."""
    api_url = make_db(MODERN_API, f"{prefix}_api")
    cells = {"cell0": make_db(MODERN_NOVA, f"{prefix}_cell0"),
             "cell1": make_db(MODERN_NOVA, f"{prefix}_cell1")}  # fmt: skip
    glance_url = make_db(MODERN_GLANCE, f"{prefix}_glance")
    api, cell1, glance = (open_database(u, "test") for u in (api_url, cells["cell1"], glance_url))
    with api.engine.begin() as conn:
        map_cell(conn, api, CELL0_UUID, "cell0", cells["cell0"])
        map_cell(conn, api, CELL1_UUID, "cell1", cells["cell1"])
        small_id = create_api_flavor(conn, api, SMALL)
    with glance.engine.begin() as conn:
        for image, deleted_at in images:
            create_image(conn, glance, image)
            if deleted_at is not None:
                delete_image(conn, glance, image.id, deleted_at)
    with cell1.engine.begin() as conn:
        for uuid, (image_ref, host) in instances.items():
            create_instance(conn, cell1, Instance(
                uuid=uuid, flavor=SMALL, flavor_id=small_id, image_ref=image_ref, host=host,
                launched_at=datetime(2026, 10, 1, 12, 0, 0),
            ))  # fmt: skip
    for db in (api, cell1, glance):
        db.dispose()
    return Cloud(api_url=api_url, cell_urls=cells, glance_url=glance_url, store=store)


__all__ = ["INSTANCES", "NodeFiles", "base_file_name", "small_cloud", "start_nodes"]
