"""Open every database a command needs, from the resolved settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from recover.config import Settings
from recover.db.cells import CellTarget, cell_targets
from recover.db.engine import open_database
from recover.db.schema import GlanceSchema, NovaApiSchema, NovaCellSchema
from recover.errors import ConfigError, DatabaseError
from recover.glance import GlanceReader
from recover.nova import ApiReader, CellReader


@dataclass
class NovaCloud:
    """The nova_api database (when given) and every reachable cell."""

    api: ApiReader | None
    cells: list[CellReader]
    #: Cells that could not be opened, with the reason (already password-free).
    unreachable: list[tuple[CellTarget, str]] = field(default_factory=list)

    def dispose(self) -> None:
        if self.api is not None:
            self.api.db.dispose()
        for cell in self.cells:
            cell.db.dispose()


def open_nova(settings: Settings, *, allow_unreachable_cells: bool = False) -> NovaCloud:
    api = None
    if settings.nova_api_db is not None:
        # Explicit --nova-db cells override discovery, but Newton+ flavors still live here.
        db = open_database(settings.nova_api_db.value, "nova_api")
        api = ApiReader(db, NovaApiSchema.detect(db))
    cells: list[CellReader] = []
    unreachable: list[tuple[CellTarget, str]] = []
    for target in cell_targets(settings, api.db if api else None):
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
