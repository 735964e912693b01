"""Cloud scenarios on real MariaDB databases, built with Nova's and Glance's own write paths
(``recover.simulate``). Each builder returns the URLs the CLI needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recover.db.engine import Database, open_database
from recover.simulate import (
    Flavor,
    Image,
    Instance,
    create_api_flavor,
    create_image,
    create_instance,
    delete_image,
    destroy_api_flavor,
    map_cell,
    shelve_offload,
)

MakeDb = Callable[[str, str], str]

MODERN_NOVA = "nova-ab450ba04102"
MODERN_API = "nova_api-cdeec0c85668"
MODERN_GLANCE = "glance-2024_1_contract01"
MIDDLE_GLANCE = "glance-ocata_contract01"
LEGACY_NOVA = "nova-legacy-mitaka"
LEGACY_GLANCE = "glance-legacy-mitaka"

CELL0_UUID = "00000000-0000-0000-0000-000000000000"
CELL1_UUID = "8a1b7c3e-2f4d-4e6a-9b5c-1d2e3f4a5b6c"
CELL2_UUID = "9b2c8d4f-3a5e-4f7b-8c6d-2e3f4a5b6c7d"

# Instances of the modern two-cell cloud.
VM_GONE_FLAVOR = "10000000-0000-4000-8000-000000000001"  # cell1, flavor 2 (hard-deleted)
VM_GONE_FLAVOR_2 = "10000000-0000-4000-8000-000000000002"  # cell2, flavor 2 too
VM_DELETED_IMAGE = "20000000-0000-4000-8000-000000000001"  # cell1, image DELETED_IMAGE
VM_PENDING = "20000000-0000-4000-8000-000000000002"  # cell2, image PENDING_IMAGE
VM_SHELVED = "30000000-0000-4000-8000-000000000001"  # cell2, shelved-offloaded, snapshot deleted
VM_VOLUME = "40000000-0000-4000-8000-000000000001"  # cell1, boot from volume
VM_HEALTHY = "50000000-0000-4000-8000-000000000001"  # cell1, all fine

LIVE_IMAGE = "a0000000-0000-4000-8000-00000000000a"
DELETED_IMAGE = "d0000000-0000-4000-8000-00000000000d"
PENDING_IMAGE = "e0000000-0000-4000-8000-00000000000e"
SHELVE_SNAPSHOT = "f0000000-0000-4000-8000-00000000000f"

LONG_AGO = datetime(2019, 5, 1, 12, 0, 0)
RECENT = datetime(2026, 10, 1, 12, 0, 0)
DELETED_AT = datetime(2026, 10, 20, 9, 30, 0)

SMALL = Flavor(name="m1.small", flavorid="2", memory_mb=2048, vcpus=1, root_gb=20,
               created_at=datetime(2019, 1, 1))  # fmt: skip
GOLD = Flavor(
    name="gold.large",
    flavorid="gold-large-1",
    memory_mb=16384,
    vcpus=8,
    root_gb=80,
    ephemeral_gb=10,
    swap=2048,
    extra_specs={"hw:cpu_policy": "dedicated", "hw:mem_page_size": "large"},
    created_at=datetime(2019, 1, 2, 3, 4, 5),
)


@dataclass
class Cloud:
    api_url: str | None
    cell_urls: dict[str, str]
    glance_url: str
    store: Path

    def args(self, *more: str) -> list[str]:
        base = ["--glance-db", self.glance_url, "--store-dir", str(self.store)]
        if self.api_url:
            base = ["--nova-api-db", self.api_url, *base]
        else:
            for url in self.cell_urls.values():
                base = [*base, "--nova-db", url]
        return [*base, *more]


def open_all(*urls: str) -> list[Database]:
    return [open_database(u, "test") for u in urls]


def modern_cloud(make_db: MakeDb, store: Path, glance_schema: str = MODERN_GLANCE) -> Cloud:
    """nova_api + cell0 + two cells, a hard-deleted flavor, every kind of orphaned image."""
    api_url = make_db(MODERN_API, "m_api")
    cells = {
        "cell0": make_db(MODERN_NOVA, "m_cell0"),
        "cell1": make_db(MODERN_NOVA, "m_cell1"),
        "cell2": make_db(MODERN_NOVA, "m_cell2"),
    }
    glance_url = make_db(glance_schema, "m_glance")
    api, cell1, cell2, glance = open_all(api_url, cells["cell1"], cells["cell2"], glance_url)
    with api.engine.begin() as conn:
        for name, uuid in (("cell0", CELL0_UUID), ("cell1", CELL1_UUID), ("cell2", CELL2_UUID)):
            map_cell(conn, api, uuid, name, cells[name])
        small_id = create_api_flavor(conn, api, SMALL)
        gold_id = create_api_flavor(conn, api, GOLD)
    assert (small_id, gold_id) == (1, 2)
    with glance.engine.begin() as conn:
        for image_id, name in (
            (LIVE_IMAGE, "ubuntu-24.04"),
            (DELETED_IMAGE, "centos-7-golden"),
            (PENDING_IMAGE, "debian-12"),
            (SHELVE_SNAPSHOT, "vm-shelved-shelved"),
        ):
            create_image(conn, glance, Image(
                id=image_id, name=name, size=1024, checksum="0" * 32,
                os_hash_algo="sha512", os_hash_value="1" * 128,
                location=f"file://{store}/{image_id}",
                properties={"image_type": "snapshot"} if image_id == SHELVE_SNAPSHOT else {},
            ))  # fmt: skip
        delete_image(conn, glance, DELETED_IMAGE, DELETED_AT)
        delete_image(conn, glance, PENDING_IMAGE, DELETED_AT, delayed=True)
        delete_image(conn, glance, SHELVE_SNAPSHOT, DELETED_AT)
    (store / PENDING_IMAGE).write_bytes(b"still here until glance-scrubber runs")

    def boot(cell: Database, uuid: str, flavor: Flavor, fid: int, image: str, host: str | None,
             launched: datetime) -> None:  # fmt: skip
        with cell.engine.begin() as conn:
            create_instance(conn, cell, Instance(
                uuid=uuid, flavor=flavor, flavor_id=fid, image_ref=image, host=host,
                launched_at=launched,
            ))  # fmt: skip

    boot(cell1, VM_GONE_FLAVOR, GOLD, gold_id, LIVE_IMAGE, "compute-1", LONG_AGO)
    boot(cell2, VM_GONE_FLAVOR_2, GOLD, gold_id, LIVE_IMAGE, "compute-2", RECENT)
    boot(cell1, VM_DELETED_IMAGE, SMALL, small_id, DELETED_IMAGE, "compute-1", RECENT)
    boot(cell2, VM_PENDING, SMALL, small_id, PENDING_IMAGE, "compute-3", LONG_AGO)
    boot(cell2, VM_SHELVED, SMALL, small_id, LIVE_IMAGE, "compute-2", RECENT)
    boot(cell1, VM_VOLUME, SMALL, small_id, "", "compute-1", RECENT)
    boot(cell1, VM_HEALTHY, SMALL, small_id, LIVE_IMAGE, "compute-1", RECENT)
    with cell2.engine.begin() as conn:
        shelve_offload(conn, cell2, VM_SHELVED, SHELVE_SNAPSHOT, DELETED_AT)
    with api.engine.begin() as conn:
        destroy_api_flavor(conn, api, gold_id)
    for db in (api, cell1, cell2, glance):
        db.dispose()
    return Cloud(api_url=api_url, cell_urls=cells, glance_url=glance_url, store=store)
