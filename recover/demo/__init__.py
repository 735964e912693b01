"""``recover demo``: the incident of 2018-06-05, rebuilt as a sandbox cloud, then fixed.

The sandbox holds SQLite databases with the Mitaka tables (``schema.py``), a
compute node directory whose ``_base`` file qemu-img made from the snapshot
exactly as nova's ``fetch_to_raw`` does, and a non-default Glance store. The
ids are the incident's own (``seed-incident-zh.txt``).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from recover.config import Settings, resolve
from recover.db.engine import Database, open_database
from recover.demo.schema import glance_metadata, nova_metadata
from recover.errors import RecoverError
from recover.flavors import plan_flavor
from recover.images import qemu
from recover.images.recovery import ImageRecovery, ImageRequest
from recover.images.verify import render as render_verification
from recover.images.verify import verify_image
from recover.inventory import base_file_name, scan
from recover.report import render_table
from recover.simulate import (
    Flavor,
    Image,
    Instance,
    create_image,
    create_instance,
    create_legacy_flavor,
    delete_image,
    destroy_legacy_flavor,
)
from recover.write import Outcome, execute

MARKER = ".recover-demo"

# The incident's ids (seed-incident-zh.txt).
INSTANCE = "211437a1-e4c4-40e0-ade1-b167d6251ced"
SNAPSHOT = "b3986e99-1988-43bb-b47c-0b34438bc189"
PROJECT = "65ea11db9ebf49c69d3c05bc38925617"
USER = "d31b768e1dbf4a0dbf2571234b4e2f5a"
STORE = "mfsclient/ucscontroller/glance/images"
HOST = "compute-12"

# The rest of the sandbox: a second victim, a healthy VM, a boot-from-volume VM.
SECOND_VICTIM = "7c1e9a52-3f0b-4d6e-a8c4-5b2d9e0f1a37"
HEALTHY = "0f5b2c7e-9d14-4a3b-8e61-c2a7d9b4e580"
FROM_VOLUME = "c93a6e15-2b7d-4f80-9a1c-e4d5b6f70812"
CIRROS = "6e2d4b1a-8c3f-4e5d-9a7b-1f0c2e3d4a5b"
SNAPSHOT_OF = "e1f7c0aa-5c1d-4e2b-93a8-0d6b7f4c2e19"

INCIDENT = datetime(2018, 6, 5, 13, 40, 32)
VIRTUAL_SIZE = 64 * 1024 * 1024

SWAP_FLAVOR = Flavor(
    id=7,
    name="ucs.4c8g.swap",
    flavorid="7",
    memory_mb=8192,
    vcpus=4,
    root_gb=60,
    swap=4096,
    extra_specs={"hw:cpu_policy": "shared", "quota:disk_total_iops_sec": "2000"},
    created_at=datetime(2016, 11, 2, 9, 12, 5),
)
SMALL_FLAVOR = Flavor(
    id=2, name="m1.small", flavorid="2", memory_mb=2048, vcpus=1, root_gb=20,
    created_at=datetime(2016, 3, 1, 8, 0, 0),
)  # fmt: skip


Echo = Callable[[str], None]


def _prepare(directory: Path) -> Path:
    directory = directory.resolve()
    if directory.exists():
        if not directory.is_dir():
            raise RecoverError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()) and not (directory / MARKER).exists():
            raise RecoverError(
                f"{directory} is not empty and is not a recover sandbox",
                hint="name a new directory: recover demo DIR",
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `recover demo`; safe to delete\n")
    return directory


def _seed_disk(path: Path) -> None:
    """A small raw disk with recognisable, non-zero content in a few places."""
    with open(path, "wb") as handle:
        handle.truncate(VIRTUAL_SIZE)
        for offset in (0, 1 << 20, 17 << 20, 40 << 20):
            handle.seek(offset)
            handle.write(hashlib.sha512(f"block {offset}".encode()).digest() * 512)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_incident(
    nova: Database, glance: Database, store: Path, snapshot_md5: str, snapshot_size: int
) -> None:
    """The incident's rows, on any Mitaka-shaped Nova and Glance database (SQLite or MariaDB)."""
    with nova.engine.begin() as conn:
        swap_id = create_legacy_flavor(conn, nova, SWAP_FLAVOR)
        small_id = create_legacy_flavor(conn, nova, SMALL_FLAVOR)
        common: dict[str, Any] = {"project_id": PROJECT, "user_id": USER, "flavor_version": "1.1"}
        create_instance(conn, nova, Instance(
            uuid=INSTANCE, flavor=SWAP_FLAVOR, flavor_id=swap_id, image_ref=SNAPSHOT, host=HOST,
            display_name="ucs-app-01", launched_at=datetime(2017, 3, 14, 10, 2, 41),
            image_properties={"min_disk": "60", "disk_format": "qcow2"}, **common,
        ))  # fmt: skip
        create_instance(conn, nova, Instance(
            uuid=SECOND_VICTIM, flavor=SWAP_FLAVOR, flavor_id=swap_id, image_ref=SNAPSHOT,
            host=HOST, display_name="ucs-app-02", launched_at=datetime(2017, 3, 14, 10, 5, 9),
            image_properties={"min_disk": "60", "disk_format": "qcow2"}, **common,
        ))  # fmt: skip
        create_instance(conn, nova, Instance(
            uuid=HEALTHY, flavor=SMALL_FLAVOR, flavor_id=small_id, image_ref=CIRROS,
            host="compute-07", display_name="web-01", launched_at=datetime(2018, 2, 1, 12, 0, 0),
            **common,
        ))  # fmt: skip
        create_instance(conn, nova, Instance(
            uuid=FROM_VOLUME, flavor=SMALL_FLAVOR, flavor_id=small_id, image_ref="",
            host="compute-07", display_name="db-01", launched_at=datetime(2018, 4, 2, 8, 30, 0),
            **common,
        ))  # fmt: skip
        destroy_legacy_flavor(conn, nova, swap_id, datetime(2017, 11, 2, 16, 20, 11))
    with glance.engine.begin() as conn:
        create_image(conn, glance, Image(
            id=SNAPSHOT, name="ucs-app-golden-snap", disk_format="qcow2", size=snapshot_size,
            checksum=snapshot_md5, min_disk=0, created_at=datetime(2017, 3, 13, 18, 44, 2),
            properties={"image_type": "snapshot", "instance_uuid": SNAPSHOT_OF,
                        "base_image_ref": CIRROS, "hw_disk_bus": "virtio"},
            location=f"file://{store / SNAPSHOT}",
        ))  # fmt: skip
        create_image(conn, glance, Image(
            id=CIRROS, name="cirros-0.3.5", disk_format="qcow2", size=13267968,
            checksum="f8ab98ff5e73ebab884d80c9dc9c7290", visibility="public",
            location=f"file://{store / CIRROS}",
        ))  # fmt: skip
        delete_image(conn, glance, SNAPSHOT, datetime(2017, 9, 21, 11, 3, 57))


def build_sandbox(directory: Path) -> Path:
    """Lay out the sandbox cloud in ``directory``; return the path of recover.ini."""
    root = _prepare(directory)
    nova_url = f"sqlite:///{root / 'nova.sqlite'}"
    glance_url = f"sqlite:///{root / 'glance.sqlite'}"
    for url, metadata in ((nova_url, nova_metadata()), (glance_url, glance_metadata())):
        engine = create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
    store = root / STORE
    store.mkdir(parents=True)
    base_dir = root / "compute" / HOST / "var/lib/nova/instances/_base"
    base_dir.mkdir(parents=True)

    # The snapshot as Glance stored it (qcow2), and the raw _base file nova made from it.
    work = root / "work"
    work.mkdir()
    _seed_disk(work / "guest.raw")
    snapshot = work / f"{SNAPSHOT}.qcow2"
    qemu.convert(work / "guest.raw", "raw", snapshot, "qcow2")
    base = base_dir / base_file_name(SNAPSHOT)
    qemu.convert(snapshot, "qcow2", base, "raw")  # nova virt/images.py fetch_to_raw
    for uuid in (INSTANCE, SECOND_VICTIM):
        disk_dir = base_dir.parent / uuid
        disk_dir.mkdir()
        qemu.create_overlay(disk_dir / "disk", base, "raw")
    snapshot_md5, snapshot_size = _md5(snapshot), snapshot.stat().st_size
    shutil.rmtree(work)  # Glance deleted the file from its store with the image

    nova = open_database(nova_url, "nova")
    glance = open_database(glance_url, "glance")
    write_incident(nova, glance, store, snapshot_md5, snapshot_size)
    nova.dispose()
    glance.dispose()
    (store / CIRROS).write_bytes(b"")  # a live image's file, so the store looks lived-in

    ini = root / "recover.ini"
    ini.write_text(
        "# Made by `recover demo`: the sandbox cloud's databases and store.\n"
        "[recover]\n"
        f"nova_db = {nova_url}\n"
        f"glance_db = {glance_url}\n"
        f"store_dir = {store}\n"
    )
    return ini


def recover_image_into(
    settings: Settings, request: ImageRequest, command: str, journal_dir: Path
) -> Outcome:
    recovery = ImageRecovery(settings, request)
    try:
        return recovery.run(
            dry_run=False, yes=True, command=command, confirm=None, journal_dir=journal_dir
        )
    finally:
        recovery.close()


def _step(echo: Echo, command: str) -> None:
    echo("")
    echo(f"$ {command}")


def run_demo(directory: Path, echo: Echo) -> None:
    echo(f"Building the sandbox cloud in {directory} ...")
    ini = build_sandbox(directory)
    root = ini.parent
    echo(f"  Nova (Mitaka tables) and Glance in SQLite, config in {ini}")
    echo(f"  compute node {HOST}: _base/{base_file_name(SNAPSHOT)} made by qemu-img")
    echo("")
    echo(f"The incident ({INCIDENT:%Y-%m-%d}): volume attach fails on instance")
    echo(f"{INSTANCE}. It was booted from a snapshot that was since")
    echo("deleted, with a flavor that was since deleted, and has run for over a year.")
    settings = resolve({"config": str(ini)}, environ={})
    prefix = f"recover --config {ini}"

    _step(echo, f"{prefix} inventory")
    echo(render_table(scan(settings, now=INCIDENT)).rstrip("\n"))

    flavorid = SWAP_FLAVOR.flavorid
    _step(echo, f"{prefix} flavor {flavorid} --dry-run")
    recovery = plan_flavor(settings, flavorid, None)
    try:
        preview = execute(recovery.plan, dry_run=True, yes=False, command="", confirm=None)
        echo(preview.sql.rstrip("\n"))
        _step(echo, f"{prefix} flavor {flavorid} --yes")
        done = execute(
            recovery.plan,
            dry_run=False,
            yes=True,
            command=f"{prefix} flavor {flavorid} --yes",
            confirm=None,
            journal_dir=root / "journal",
        )
    finally:
        recovery.nova.dispose()
    echo(f"Done: {done.plan.title}")
    echo(f"Journal: {done.journal}")

    base = root / "compute" / HOST / "var/lib/nova/instances/_base" / base_file_name(SNAPSHOT)
    command = f"{prefix} image {SNAPSHOT} --base-file {base} --yes"
    _step(echo, command)
    echo("(the sandbox's compute node is a directory; on a cloud: --from-host compute-12)")
    request = ImageRequest(SNAPSHOT, base_file=base)
    image_done = recover_image_into(settings, request, command, root / "journal")
    echo(f"Done: {image_done.plan.title}")
    for note in image_done.plan.notes:
        echo(f"  {note}")
    echo(f"Journal: {image_done.journal}")
    before, after = image_done.plan.changes[0].before, image_done.plan.changes[0].after
    if before and after and before["checksum"] == after["checksum"]:
        echo("  md5 equals the checksum Glance had before the delete: qemu-img convert is")
        echo("  deterministic, so the rebuilt qcow2 is the original snapshot, byte for byte.")

    _step(echo, f"{prefix} verify {SNAPSHOT}")
    echo(render_verification(verify_image(settings, SNAPSHOT)).rstrip("\n"))

    _step(echo, f"{prefix} inventory")
    echo(render_table(scan(settings, now=INCIDENT)).rstrip("\n"))
    echo("")
    echo("Both are back under their own ids. Every change has a journal in")
    echo(f"{root / 'journal'}; `recover undo <journal>` reverses it.")
