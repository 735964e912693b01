"""Synthetic clouds of any size, loaded in bulk, for the benchmarks and the tests.

Beside the benchmarks, not in the installed package: no command of ``recover`` uses it
(issue 13, item 7). ``scripts/bench_*`` import it as ``synthetic`` (their directory is on
``sys.path``), ``tests/test_synthetic.py`` from ``scripts/``.

The rows have the shapes ``recover.simulate`` writes one at a time the way Nova
and Glance do (the same ``flavor_primitive``/``flavor_blob`` JSON in
``instance_extra.flavor``, soft-deleted Nova rows with ``deleted = id``, Glance's
delete path for images and their children, hard-deleted nova_api flavors), but
they are generated as tab-separated files and loaded with ``LOAD DATA LOCAL
INFILE``: a cell of 550,000 instances loads in about a minute instead of hours.

The databases must already exist with the real DDL (``sql/schemas/*.sql``) and
be empty. Everything is derived from one seeded ``random.Random``, so a size and
a seed always give the same rows. :func:`generate` returns what it planted:
the orphans ``recover inventory`` must find, with their live instances.

Orphans of each kind (``Size.orphans`` of each):

* ``flavor``: a flavor hard-deleted from nova_api that live instances still use;
* ``deleted``, ``pending_delete``, ``killed``: the Glance image of live instances
  (``image_ref``) has that status;
* ``missing``: the ``image_ref`` has no Glance row at all (purged);
* ``shelved``: a shelved-offloaded instance's ``shelved_image_id`` snapshot is deleted.

Each orphan is used by one to three live instances, spread over the cells.
Soft-deleted instances reference anything, deleted flavors and images included,
so only a correct ``deleted = 0`` filter keeps them out of the results.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from bisect import bisect
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any, TextIO

import pymysql
from sqlalchemy.engine import make_url

from recover.simulate import Flavor, flavor_blob, flavor_primitive

IMAGE_KINDS = ("deleted", "pending_delete", "killed", "missing", "shelved")
"""Kinds of orphaned images, in the order they are planted."""
KINDS = ("flavor", *IMAGE_KINDS)
CELL0_UUID = "00000000-0000-0000-0000-000000000000"
PROJECTS = 2000
USERS = 5000
HOSTS_PER_CELL = 250
EPOCH = datetime(2016, 1, 1)
NOW = datetime(2026, 11, 1)
SPAN_S = int((NOW - EPOCH).total_seconds())
GIB = 1024**3

Progress = Callable[[str], None]

#: What nova copies from the image into system metadata at boot, in the order used.
_SYSMETA_KEYS = (
    "image_base_image_ref",
    "image_disk_format",
    "image_container_format",
    "image_min_disk",
    "image_min_ram",
    "image_os_distro",
    "image_hw_disk_bus",
)


@dataclass(frozen=True)
class Size:
    """How big a cloud to make. The defaults are the benchmark's full size."""

    live_per_cell: int = 50_000
    deleted_per_cell: int = 500_000
    flavors: int = 5_000
    deleted_flavors: int = 4_000
    images: int = 100_000
    deleted_images: int = 80_000
    #: Orphans of each kind (see the module docstring).
    orphans: int = 300
    #: ``instance_system_metadata`` rows per instance besides the shelve keys.
    sysmeta_per_instance: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.deleted_flavors < self.flavors:
            raise ValueError("need some live and some deleted flavors")
        if self.orphans > self.deleted_flavors:
            raise ValueError("more flavor orphans than deleted flavors")
        if 3 * self.orphans > self.deleted_images:
            raise ValueError("deleted images must cover the deleted/pending/shelved orphans")
        if 2 * self.orphans > self.images - self.deleted_images:
            raise ValueError("too few live images for the killed orphans")
        if not 1 <= self.sysmeta_per_instance <= len(_SYSMETA_KEYS):
            raise ValueError(f"sysmeta_per_instance must be 1..{len(_SYSMETA_KEYS)}")

    def scaled(self, factor: float) -> Size:
        """The same catalogue (flavors, images, orphans) with ``factor`` times the instances."""
        return replace(
            self,
            live_per_cell=max(int(self.live_per_cell * factor), len(KINDS) * 3 * self.orphans),
            deleted_per_cell=int(self.deleted_per_cell * factor),
        )


FULL = Size()
"""2 cells x (50,000 live + 500,000 soft-deleted) instances, 5,000 flavors, 100,000 images."""
TINY = Size(
    live_per_cell=40,
    deleted_per_cell=120,
    flavors=30,
    deleted_flavors=20,
    images=60,
    deleted_images=40,
    orphans=3,
)
"""Enough for a test to see every kind of orphan (and every filter) in a second."""


@dataclass
class Target:
    """Empty databases with the real DDL: nova_api, the cells to fill, Glance.

    ``cell0`` (optional) is mapped in ``cell_mappings`` but stays empty, like the
    cell0 of a cloud whose instances all scheduled.
    """

    api: str
    cells: dict[str, str]
    glance: str
    cell0: str | None = None


@dataclass
class Planted:
    """What :func:`generate` put in, to check ``recover inventory`` against."""

    #: orphaned flavor id -> uuids of the live instances using it
    flavors: dict[int, set[str]] = field(default_factory=dict)
    #: orphaned image id -> its status (``deleted``, ``pending_delete``, ``killed``, ``missing``)
    image_status: dict[str, str] = field(default_factory=dict)
    #: orphaned image id -> live instances whose ``image_ref`` or shelve snapshot it is
    images: dict[str, set[str]] = field(default_factory=dict)
    #: orphaned image id -> the shelved-offloaded instances among them
    shelved: dict[str, set[str]] = field(default_factory=dict)
    #: kind (``KINDS``) -> the orphaned ids of that kind
    kinds: dict[str, list[Any]] = field(default_factory=dict)
    #: (database role, table) -> rows loaded
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def expected(self) -> dict[str, Any]:
        """The orphan sets in the shape of ``recover inventory --format json``'s keys."""
        return {
            "flavors": {str(i): sorted(u) for i, u in sorted(self.flavors.items())},
            "images": {
                i: {
                    "status": self.image_status[i],
                    "instances": sorted(self.images[i]),
                    "shelved_instances": sorted(self.shelved.get(i, ())),
                }
                for i in sorted(self.images)
            },
        }

    def orphaned_instances(self) -> int:
        return len(set().union(*self.flavors.values(), *self.images.values()))


# --- the generator -------------------------------------------------------------------------


_INSTANCE_COLUMNS = (
    "id", "created_at", "updated_at", "deleted_at", "deleted", "uuid", "user_id", "project_id",
    "image_ref", "host", "node", "launched_on", "instance_type_id", "memory_mb", "vcpus",
    "root_gb", "ephemeral_gb", "vm_state", "power_state", "display_name", "hostname",
    "launched_at", "terminated_at", "reservation_id", "launch_index", "availability_zone",
    "root_device_name", "cleaned", "locked", "hidden",
)  # fmt: skip
_EXTRA_COLUMNS = ("id", "created_at", "deleted_at", "deleted", "instance_uuid", "flavor")
_SYSMETA_COLUMNS = ("id", "created_at", "deleted_at", "deleted", "instance_uuid", "key", "value")
_IMAGE_COLUMNS = (
    "id", "name", "size", "virtual_size", "status", "visibility", "created_at", "updated_at",
    "deleted_at", "deleted", "disk_format", "container_format", "checksum", "os_hash_algo",
    "os_hash_value", "owner", "min_disk", "min_ram", "protected", "os_hidden",
)  # fmt: skip
_LOCATION_COLUMNS = (
    "id", "image_id", "value", "meta_data", "status", "created_at", "updated_at", "deleted_at",
    "deleted",
)  # fmt: skip
_PROPERTY_COLUMNS = ("id", "image_id", "name", "value", "created_at", "deleted_at", "deleted")
_TAG_COLUMNS = ("id", "image_id", "value", "created_at", "deleted_at", "deleted")
_MEMBER_COLUMNS = (
    "id", "image_id", "member", "can_share", "status", "created_at", "deleted_at", "deleted",
)  # fmt: skip
_FLAVOR_COLUMNS = (
    "id", "name", "flavorid", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "swap",
    "rxtx_factor", "vcpu_weight", "disabled", "is_public", "description", "created_at",
)  # fmt: skip

N = r"\N"  # NULL in LOAD DATA's default format


def _tsv(value: Any) -> str:
    """One field of a LOAD DATA line: NULL as ``\\N``, the escape characters escaped."""
    if value is None:
        return N
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return text


def _line(values: Sequence[Any]) -> str:
    return "\t".join(map(_tsv, values)) + "\n"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _when(rng: random.Random, start: datetime = EPOCH, span_s: int = SPAN_S) -> datetime:
    return start + timedelta(seconds=rng.randrange(span_s))


class _Weighted:
    """Pick from ``values`` with Zipf-like popularity (a few flavors/images are most used)."""

    def __init__(self, rng: random.Random, values: Sequence[Any], skew: float = 0.8) -> None:
        self.values = list(values)
        rng.shuffle(self.values)
        self.cum = list(accumulate(1.0 / (rank + 1) ** skew for rank in range(len(self.values))))
        self.total = self.cum[-1]
        self.rng = rng

    def pick(self) -> Any:
        return self.values[bisect(self.cum, self.rng.random() * self.total)]


@dataclass
class _Image:
    id: str
    status: str  # active, killed, deleted, pending_delete
    snapshot: bool
    disk_format: str
    min_disk: int
    created_at: datetime
    deleted_at: datetime | None


@dataclass
class _Catalogue:
    flavors: dict[int, Flavor]
    blobs: dict[int, str]  # flavor id -> instance_extra.flavor, TSV-escaped
    live_flavors: list[int]
    deleted_flavors: list[int]
    images: list[_Image]
    active: list[_Image]
    active_snapshots: list[_Image]
    purged: list[str]  # image ids without a row (orphans "missing" and noise)


class _Loader:
    """TSV files in a scratch directory, each loaded with LOAD DATA LOCAL INFILE.

    The loads run on ``pool``'s thread while this one writes the next files: the
    server indexes one cell while Python generates the next.
    """

    def __init__(
        self, url: str, workdir: Path, role: str, planted: Planted, pool: ThreadPoolExecutor
    ) -> None:
        self.url = url
        self.workdir = workdir
        self.role = role
        self.planted = planted
        self.pool = pool
        self.pending: list[Future[None]] = []

    @contextmanager
    def table(self, table: str, columns: Sequence[str]) -> Iterator[_Counter]:
        path = self.workdir / f"{self.role}.{table}.tsv"
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            counter = _Counter(handle)
            yield counter
        self.planted.rows[f"{self.role}.{table}"] = counter.n
        self.pending.append(self.pool.submit(self._load, table, columns, path, counter.n))

    def _load(self, table: str, columns: Sequence[str], path: Path, rows: int) -> None:
        if rows:
            loaded = load_tsv(self.url, table, columns, path)
            if loaded != rows:
                raise RuntimeError(f"{self.role}.{table}: loaded {loaded} of {rows} rows")
        path.unlink()

    def wait(self) -> None:
        for future in self.pending:
            future.result()


class _Counter:
    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.n = 0

    def write(self, line: str) -> None:
        self.handle.write(line)
        self.n += 1


def connect(url: str) -> Any:
    """A PyMySQL connection (autocommit, LOAD DATA LOCAL allowed) to a SQLAlchemy URL."""
    parsed = make_url(url)
    return pymysql.connect(
        host=parsed.host or "localhost",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        charset="utf8mb4",
        autocommit=True,
        local_infile=True,
    )


def load_tsv(url: str, table: str, columns: Sequence[str], path: Path) -> int:
    """``LOAD DATA LOCAL INFILE`` one file; returns the rows the server took."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
            cols = ", ".join(f"`{c}`" for c in columns)
            cur.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4"
                f" FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({cols})",
                (str(path),),
            )
            loaded = cur.rowcount
            cur.execute("SHOW WARNINGS")
            warnings = cur.fetchall()
        if warnings:
            raise RuntimeError(f"LOAD DATA into {table}: {warnings[:3]}")
        return int(loaded)
    finally:
        conn.close()


def _catalogue(rng: random.Random, size: Size) -> _Catalogue:
    memory = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    flavors: dict[int, Flavor] = {}
    blobs: dict[int, str] = {}
    for fid in range(1, size.flavors + 1):
        mem = rng.choice(memory)
        specs = (
            {"hw:cpu_policy": "dedicated", "hw:mem_page_size": "large"}
            if fid % 3 == 0
            else ({"quota:disk_read_iops_sec": "2000"} if fid % 7 == 0 else {})
        )
        flavor = Flavor(
            name=f"bench.{mem // 1024 or 0.5}g.{fid}",
            flavorid=_uuid(rng) if fid % 2 else f"f{fid}",
            memory_mb=mem,
            vcpus=max(1, mem // 2048),
            root_gb=rng.choice((10, 20, 40, 80, 160)),
            ephemeral_gb=rng.choice((0, 0, 0, 10)),
            swap=rng.choice((0, 0, 512, 2048)),
            rxtx_factor=1.0,
            vcpu_weight=None,
            is_public=fid % 5 != 0,
            extra_specs=specs,
            projects=() if fid % 5 != 0 else (_hex(rng, 128), _hex(rng, 128)),
            created_at=_when(rng, EPOCH, SPAN_S // 2),
        )
        flavors[fid] = flavor
        blobs[fid] = _tsv(flavor_blob(flavor_primitive(flavor, fid)))
    deleted = sorted(rng.sample(range(1, size.flavors + 1), size.deleted_flavors))
    deleted_set = set(deleted)
    live = [f for f in flavors if f not in deleted_set]

    images: list[_Image] = []
    statuses = ["deleted"] * size.deleted_images + ["active"] * (size.images - size.deleted_images)
    for status in statuses:
        created = _when(rng)
        deleted_at = (
            created + timedelta(seconds=rng.randrange(1, 86400 * 400))
            if status == "deleted"
            else None
        )
        images.append(_Image(
            id=_uuid(rng), status=status, snapshot=rng.random() < 0.3,
            disk_format=rng.choice(("qcow2", "qcow2", "raw")), min_disk=rng.choice((0, 10, 20)),
            created_at=created, deleted_at=deleted_at,
        ))  # fmt: skip
    rng.shuffle(images)
    active = [i for i in images if i.status == "active"]
    return _Catalogue(
        flavors=flavors,
        blobs=blobs,
        live_flavors=live,
        deleted_flavors=deleted,
        images=images,
        active=active,
        active_snapshots=[i for i in active if i.snapshot],
        purged=[_uuid(rng) for _ in range(size.orphans + max(size.images // 50, 1))],
    )


def _plant(
    rng: random.Random, size: Size, cat: _Catalogue, cells: list[str], planted: Planted
) -> dict[tuple[str, int], tuple[str, Any]]:
    """Choose the orphans and the live instance slots that use them."""
    deleted = [i for i in cat.images if i.status == "deleted"]
    rng.shuffle(deleted)
    deleted_snapshots = [i for i in deleted if i.snapshot][: size.orphans]
    others = [i for i in deleted if not i.snapshot]
    if len(deleted_snapshots) < size.orphans or len(others) < 2 * size.orphans:
        raise ValueError("too few deleted images for the orphans; raise deleted_images")
    for image in others[size.orphans : 2 * size.orphans]:
        image.status = "pending_delete"
    killed = rng.sample(cat.active, size.orphans)
    for image in killed:
        image.status = "killed"
    killed_ids = {i.id for i in killed}
    cat.active = [i for i in cat.active if i.id not in killed_ids]
    cat.active_snapshots = [i for i in cat.active_snapshots if i.id not in killed_ids]
    orphans: dict[str, list[Any]] = {
        "flavor": rng.sample(cat.deleted_flavors, size.orphans),
        "deleted": [i.id for i in others[: size.orphans]],
        "pending_delete": [i.id for i in others[size.orphans : 2 * size.orphans]],
        "killed": [i.id for i in killed],
        "missing": cat.purged[: size.orphans],
        "shelved": [i.id for i in deleted_snapshots],
    }
    planted.kinds = orphans
    slots = [(cell, n) for cell in cells for n in range(size.live_per_cell)]
    wanted = sum(len(v) for v in orphans.values()) * 3
    if wanted > len(slots):
        raise ValueError("too few live instances for the orphans; raise live_per_cell")
    free = iter(rng.sample(slots, wanted))
    uses: dict[tuple[str, int], tuple[str, Any]] = {}
    for kind, ids in orphans.items():
        for ref in ids:
            for _ in range(rng.randint(1, 3)):
                uses[next(free)] = (kind, ref)
            if kind == "flavor":
                planted.flavors[ref] = set()
            else:
                planted.image_status[ref] = "deleted" if kind == "shelved" else kind
                planted.images[ref] = set()
                if kind == "shelved":
                    planted.shelved[ref] = set()
    return uses


def generate(
    target: Target,
    size: Size = FULL,
    *,
    seed: int = 1,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> Planted:
    """Fill the (empty, real-DDL) databases of ``target``; return what was planted."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    planted = Planted()
    cat = _catalogue(rng, size)
    cells = list(target.cells)
    uses = _plant(rng, size, cat, cells, planted)
    with (
        tempfile.TemporaryDirectory(prefix="recover-synthetic-", dir=workdir) as tmp,
        ThreadPoolExecutor(1, thread_name_prefix="load-data") as pool,
    ):
        loaders = []

        def loader(url: str, role: str) -> _Loader:
            loaders.append(_Loader(url, Path(tmp), role, planted, pool))
            return loaders[-1]

        say(f"glance: {size.images} images")
        _write_glance(rng, cat, loader(target.glance, "glance"))
        say(f"nova_api: {size.flavors - size.deleted_flavors} live flavors, cell mappings")
        _write_api(rng, target, cat, loader(target.api, "api"))
        for cell in cells:
            say(f"{cell}: {size.live_per_cell} live + {size.deleted_per_cell} deleted instances")
            _write_cell(rng, size, cat, cell, uses, planted, loader(target.cells[cell], cell))
        say("waiting for LOAD DATA to finish")
        for each in loaders:
            each.wait()
    planted.seconds = time.perf_counter() - started
    return planted


def _write_api(rng: random.Random, target: Target, cat: _Catalogue, load: _Loader) -> None:
    with load.table("flavors", _FLAVOR_COLUMNS) as out:
        for fid in cat.live_flavors:
            f = cat.flavors[fid]
            out.write(_line((
                fid, f.name, f.flavorid, f.memory_mb, f.vcpus, f.root_gb, f.ephemeral_gb, f.swap,
                f.rxtx_factor, f.vcpu_weight, f.disabled, f.is_public, f.description, f.created_at,
            )))  # fmt: skip
    with load.table("flavor_extra_specs", ("flavor_id", "key", "value", "created_at")) as out:
        for fid in cat.live_flavors:
            f = cat.flavors[fid]
            for key, value in sorted(f.extra_specs.items()):
                out.write(_line((fid, key, value, f.created_at)))
    with load.table("flavor_projects", ("flavor_id", "project_id", "created_at")) as out:
        for fid in cat.live_flavors:
            f = cat.flavors[fid]
            for project in f.projects:
                out.write(_line((fid, project, f.created_at)))
    mappings = [("cell0", CELL0_UUID, target.cell0)] if target.cell0 else []
    mappings += [(name, _uuid(rng), url) for name, url in target.cells.items()]
    with load.table(
        "cell_mappings", ("uuid", "name", "database_connection", "transport_url", "disabled")
    ) as out:
        for name, cell_uuid, url in mappings:
            out.write(_line((cell_uuid, name, url, "rabbit://nova:secret@rabbit:5672/", 0)))
    # Hard-deleted flavors took their ids with them; AUTO_INCREMENT stays past them.
    load.pending.append(
        load.pool.submit(_auto_increment, load.url, "flavors", len(cat.flavors) + 1)
    )


def _auto_increment(url: str, table: str, value: int) -> None:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"ALTER TABLE `{table}` AUTO_INCREMENT = {int(value)}")
    finally:
        conn.close()


def _write_glance(rng: random.Random, cat: _Catalogue, load: _Loader) -> None:
    owners = [_hex(rng, 128) for _ in range(PROJECTS)]
    for image in cat.images:
        if image.status in ("deleted", "pending_delete") and image.deleted_at is None:
            image.deleted_at = image.created_at + timedelta(days=1)
    with (
        load.table("images", _IMAGE_COLUMNS) as images,
        load.table("image_locations", _LOCATION_COLUMNS) as locations,
        load.table("image_properties", _PROPERTY_COLUMNS) as props,
        load.table("image_tags", _TAG_COLUMNS) as tags,
        load.table("image_members", _MEMBER_COLUMNS) as members,
    ):
        for image in cat.images:
            gone = image.status in ("deleted", "pending_delete")
            at = image.deleted_at if gone else None
            size = rng.randrange(10 * 1024**2, 8 * GIB)
            visibility = "shared" if rng.random() < 0.05 else rng.choice(("private", "public"))
            images.write(_line((
                image.id, f"snap-{image.id[:8]}" if image.snapshot else f"img-{image.id[:8]}",
                None if image.status == "killed" else size,
                None if image.status == "killed" else size * 3,
                image.status, visibility, image.created_at, at or image.created_at, at, gone,
                image.disk_format, "bare",
                None if image.status == "killed" else _hex(rng, 128),
                None if image.status == "killed" else "sha512",
                None if image.status == "killed" else _hex(rng, 512),
                rng.choice(owners), image.min_disk, 0, False, False,
            )))  # fmt: skip
            child_at = at
            if image.status != "killed":
                locations.write(_line((
                    locations.n + 1, image.id, f"file:///var/lib/glance/images/{image.id}", "{}",
                    image.status if gone else "active", image.created_at, at, at, gone,
                )))  # fmt: skip
            names = (
                {"image_type": "snapshot", "instance_uuid": _uuid(rng), "base_image_ref": ""}
                if image.snapshot
                else {"hw_disk_bus": "virtio", "os_distro": "ubuntu", "hw_qemu_guest_agent": "yes"}
            )
            for name, value in names.items():
                # image_update(purge_props=True) stamps them a moment before image_destroy.
                prop_at = child_at - timedelta(seconds=1) if child_at else None
                props.write(_line(
                    (props.n + 1, image.id, name, value, image.created_at, prop_at, gone)
                ))  # fmt: skip
            if rng.random() < 0.1:
                tags.write(_line(
                    (tags.n + 1, image.id, "golden", image.created_at, child_at, gone)
                ))  # fmt: skip
            if visibility == "shared":
                members.write(_line((
                    members.n + 1, image.id, rng.choice(owners), False, "accepted",
                    image.created_at, child_at, gone,
                )))  # fmt: skip


def _write_cell(
    rng: random.Random,
    size: Size,
    cat: _Catalogue,
    cell: str,
    uses: dict[tuple[str, int], tuple[str, Any]],
    planted: Planted,
    load: _Loader,
) -> None:
    total = size.live_per_cell + size.deleted_per_cell
    live_ids = sorted(rng.sample(range(1, total + 1), size.live_per_cell))
    live_slot = {iid: n for n, iid in enumerate(live_ids)}
    hosts = [f"{cell}-compute-{n:04d}" for n in range(1, HOSTS_PER_CELL + 1)]
    projects = [_hex(rng, 128) for _ in range(PROJECTS)]
    users = [_hex(rng, 128) for _ in range(USERS)]
    flavor_pick = _Weighted(rng, cat.live_flavors)
    image_pick = _Weighted(rng, cat.active)
    any_flavor = list(cat.flavors)
    any_image = [i.id for i in cat.images] + cat.purged
    images_by_id = {i.id: i for i in cat.images}
    sysmeta_keys = _SYSMETA_KEYS[: size.sysmeta_per_instance]
    sm_id = 0
    with (
        load.table("instances", _INSTANCE_COLUMNS) as instances,
        load.table("instance_extra", _EXTRA_COLUMNS) as extra,
        load.table("instance_system_metadata", _SYSMETA_COLUMNS) as sysmeta,
    ):
        for iid in range(1, total + 1):
            slot = live_slot.get(iid)
            live = slot is not None
            inst_uuid = _uuid(rng)
            launched = _when(rng)
            created = launched - timedelta(seconds=rng.randrange(20, 300))
            use = uses.get((cell, slot)) if slot is not None else None
            kind: str | None = use[0] if use is not None else None
            ref: Any = use[1] if use is not None else None
            vm_state = "active"
            shelved_image: str | None = None
            if live:
                fid = ref if kind == "flavor" else flavor_pick.pick()
                if kind in ("deleted", "pending_delete", "killed", "missing"):
                    image_ref = ref
                elif kind is None and rng.random() < 0.1:
                    image_ref = ""  # boot from volume
                else:
                    image_ref = image_pick.pick().id
                roll = rng.random()
                if kind == "shelved" or (kind is None and roll < 0.02 and cat.active_snapshots):
                    vm_state = "shelved_offloaded"
                    shelved_image = (
                        ref if kind == "shelved" else rng.choice(cat.active_snapshots).id
                    )
                elif roll < 0.1:
                    vm_state = "stopped"
                deleted_at = None
                deleted = 0
            else:
                fid = rng.choice(any_flavor)
                image_ref = "" if rng.random() < 0.1 else rng.choice(any_image)
                vm_state = "deleted"
                deleted_at = launched + timedelta(seconds=rng.randrange(60, 86400 * 700))
                deleted = iid
            host = None if vm_state == "shelved_offloaded" else rng.choice(hosts)
            flavor = cat.flavors[fid]
            if live and flavor.created_at is not None and created < flavor.created_at:
                # Nova boots only on an existing flavor: no live instance is older than its
                # flavor (the inventory reads the embedded copy of those that are: id reuse).
                shift = flavor.created_at - created + timedelta(hours=1)
                created, launched = created + shift, launched + shift
            power = 1 if vm_state == "active" else (0 if vm_state == "deleted" else 4)
            name = f"vm-{cell}-{iid}"
            # Every value here is generated and plain (no tab, newline or backslash), so
            # the lines are written directly; the flavor JSON is escaped once per flavor.
            gone = N if deleted_at is None else str(deleted_at)
            on_host = N if host is None else host
            instances.write(
                f"{iid}\t{created}\t{deleted_at or launched}\t{gone}\t{deleted}\t{inst_uuid}\t"
                f"{rng.choice(users)}\t{rng.choice(projects)}\t{image_ref}\t{on_host}\t"
                f"{on_host}\t{host or rng.choice(hosts)}\t{fid}\t{flavor.memory_mb}\t"
                f"{flavor.vcpus}\t{flavor.root_gb}\t{flavor.ephemeral_gb}\t{vm_state}\t{power}\t"
                f"{name}\t{name}\t{launched}\t{gone}\tr-{rng.getrandbits(32):08x}\t0\tnova\t"
                f"/dev/vda\t{1 if deleted else 0}\t0\t0\n"
            )
            extra.write(f"{iid}\t{created}\t{gone}\t{deleted}\t{inst_uuid}\t{cat.blobs[fid]}\n")
            image = images_by_id.get(image_ref) if image_ref else None
            values = {
                "image_base_image_ref": image_ref,
                "image_disk_format": image.disk_format if image else "qcow2",
                "image_container_format": "bare",
                "image_min_disk": str(image.min_disk if image else flavor.root_gb),
                "image_min_ram": "0",
                "image_os_distro": "ubuntu",
                "image_hw_disk_bus": "virtio",
            }
            rows = [
                (k, values[k]) for k in sysmeta_keys if k != "image_base_image_ref" or image_ref
            ]
            if shelved_image is not None:
                rows += [
                    ("shelved_at", str(launched + timedelta(days=30))),
                    ("shelved_image_id", shelved_image),
                    ("shelved_host", rng.choice(hosts)),
                ]
            for key, value in rows:
                sm_id += 1
                sysmeta.write(
                    f"{sm_id}\t{created}\t{gone}\t{sm_id if deleted else 0}\t{inst_uuid}\t"
                    f"{key}\t{value}\n"
                )
            if kind == "flavor":
                planted.flavors[ref].add(inst_uuid)
            elif kind is not None:
                planted.images[ref].add(inst_uuid)
                if kind == "shelved":
                    planted.shelved[ref].add(inst_uuid)
