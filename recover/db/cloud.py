"""Open every database a command needs, from the resolved settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from recover.config import Settings
from recover.db.cells import CellTarget, cell_targets
from recover.db.engine import as_configs_mean_it, open_database, parse_url
from recover.db.scatter import GRACE_S, CellTimeout, CellWorkers
from recover.db.schema import GlanceSchema, NovaApiSchema, NovaCellSchema
from recover.errors import ConfigError, DatabaseError
from recover.glance import GlanceReader
from recover.nova import ApiReader, CellReader
from recover.secrets import mask_url, remember_url_password


@dataclass
class NovaCloud:
    """The nova_api database (when given) and every reachable cell."""

    api: ApiReader | None
    cells: list[CellReader]
    #: Cells that could not be opened, with the reason (already password-free).
    unreachable: list[tuple[CellTarget, str]] = field(default_factory=list)
    #: With a cell timeout: the thread of each cell, which opened it (recover.db.scatter).
    workers: CellWorkers | None = None

    def dispose(self) -> None:
        if self.workers is not None:
            self.workers.close()
        if self.api is not None:
            self.api.db.dispose()
        for cell in self.cells:
            # A lost cell's connection is still checked out by its blocked thread; dispose
            # closes the pool's idle ones and leaves that one to its read_timeout.
            cell.db.dispose()


def open_nova(
    settings: Settings, *, allow_unreachable_cells: bool = False, cell_timeout: float | None = None
) -> NovaCloud:
    """The nova_api database and every cell; cells that cannot be opened are ``unreachable``
    (or raise, unless ``allow_unreachable_cells``).

    With ``cell_timeout``, the cells are opened at once, one thread each (kept in
    ``workers`` for the steps that follow), and a cell that has not answered within that
    many seconds is unreachable.
    """
    api = None
    if settings.nova_api_db is not None:
        # Explicit --nova-db cells override discovery, but Newton+ flavors still live here.
        db = open_database(settings.nova_api_db.value, "nova_api")
        api = ApiReader(db, NovaApiSchema.detect(db))
    targets = cell_targets(settings, api.db if api else None)
    if cell_timeout is not None:
        return _open_cells_at_once(api, targets, cell_timeout, allow_unreachable_cells)
    cells: list[CellReader] = []
    unreachable: list[tuple[CellTarget, str]] = []
    for target in targets:
        try:
            db = open_database(target.url, f"nova cell {target.name!r}")
            cells.append(CellReader(target.name, db, NovaCellSchema.detect(db), cell0=target.cell0))
        except DatabaseError as exc:
            if not allow_unreachable_cells:
                raise
            unreachable.append((target, str(exc)))
    return NovaCloud(api=api, cells=cells, unreachable=unreachable)


def open_glance(settings: Settings) -> GlanceReader:
    if settings.glance_db is None:
        raise ConfigError(
            "no Glance database given",
            hint="pass --glance-db URL or --glance-conf /etc/glance/glance-api.conf",
        )
    db = open_database(settings.glance_db.value, "glance")
    return GlanceReader(db, GlanceSchema.detect(db))


def _open_cell(url: str, role: str, name: str, cell0: bool, read_timeout: float) -> CellReader:
    db = open_database(url, role, read_timeout=read_timeout)
    try:
        return CellReader(name, db, NovaCellSchema.detect(db), cell0=cell0)
    except BaseException:
        db.dispose()
        raise


def _open_cells_at_once(
    api: ApiReader | None, targets: list[CellTarget], timeout: float, allow_unreachable: bool
) -> NovaCloud:
    # Two cell mappings may share a name; the threads are per target.
    keys = [f"{n}:{t.name}" for n, t in enumerate(targets)]
    workers = CellWorkers(keys, timeout)
    read_timeout = timeout + GRACE_S
    outcomes: dict[str, object] = {}
    jobs: dict[str, Callable[[], CellReader]] = {}
    for key, target in zip(keys, targets, strict=True):
        role = f"nova cell {target.name!r}"
        remember_url_password(target.url)
        try:
            # Here, not in the threads: the notes about a URL rewritten come out in cell order.
            url = as_configs_mean_it(parse_url(target.url, role), role)
        except DatabaseError as exc:
            outcomes[key] = exc
            continue
        text = url.render_as_string(hide_password=False)
        jobs[key] = partial(_open_cell, text, role, target.name, target.cell0, read_timeout)
    outcomes.update(workers.gather(jobs))
    cloud = NovaCloud(api=api, cells=[], workers=workers)
    failure: BaseException | None = None
    for key, target in zip(keys, targets, strict=True):
        outcome = outcomes[key]
        if isinstance(outcome, CellReader):
            outcome.worker = key
            cloud.cells.append(outcome)
        elif isinstance(outcome, CellTimeout):
            label = f"nova cell {target.name!r} database {mask_url(target.url)}"
            cloud.unreachable.append((target, f"cannot read {label}: {outcome}"))
        elif isinstance(outcome, DatabaseError):
            cloud.unreachable.append((target, str(outcome)))
        elif isinstance(outcome, BaseException):
            failure = failure or outcome
    if failure is None and cloud.unreachable and not allow_unreachable:
        failure = DatabaseError(cloud.unreachable[0][1])
    if failure is not None:
        cloud.dispose()
        raise failure
    return cloud
