"""Which Nova cell databases to scan.

With a nova_api database, every row of ``cell_mappings`` (cell0 included) is a
cell. An explicit ``--nova-db`` overrides discovery; a pre-Newton cloud has only
that.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from recover.config import Settings
from recover.db.engine import Database, describe_db_error, parse_url
from recover.errors import ConfigError, DatabaseError
from recover.secrets import mask_url

#: ``cell_mappings.uuid`` of cell0, where the conductor buries instances that were never
#: scheduled (nova ``nova/objects/cell_mapping.py`` ``CellMapping.CELL0_UUID``).
CELL0_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class CellTarget:
    """A cell database to open: its name for reports, and its URL."""

    name: str
    url: str
    source: str
    #: cell0 holds only failed builds: instances that no compute node ever ran.
    cell0: bool = False


def _format_template(template: str, base: URL) -> str:
    """Fill a templated ``database_connection`` the way nova does.

    Since Rocky a cell mapping may hold ``{username}``, ``{password}``,
    ``{hostname}``, ... which nova fills from its own ``[database] connection``
    (nova ``nova/objects/cell_mapping.py`` ``CellMapping._format_db_url``); we
    fill them from the nova_api URL, which names the same server and account
    in every deployment tool we know of.
    """
    if "{" not in template:
        return template
    values = {
        "scheme": base.drivername,
        # Quoted, as nova does: a password with @ / : % must not break the URL.
        "username": quote(base.username or "", safe=""),
        "password": quote(str(base.password or ""), safe=""),
        "hostname": base.host or "",
        "port": str(base.port or ""),
        "path": base.database or "",
        "query": "&".join(f"{k}={v}" for k, v in base.query.items()),
        "fragment": "",
    }
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = sorted(fields - set(values))
        if unknown:
            raise DatabaseError(f"cell mapping URL uses unknown template field {{{unknown[0]}}}")
        return template.format(**values)
    except (ValueError, IndexError, KeyError) as exc:
        raise DatabaseError(
            f"cell mapping URL {mask_url(template)!r} is not a valid template: {exc}"
        ) from None


def _name_from_url(url: str, position: int) -> str:
    try:
        parsed = parse_url(url, "nova")
    except DatabaseError:
        parsed = None
    name = parsed.database if parsed is not None else None
    return name.rsplit("/", 1)[-1] if name else f"#{position}"


def _is_cell0_url(url: str) -> bool:
    """An explicit ``--nova-db`` names cell0 when its database is ``<main>_cell0``.

    That is the name ``nova-manage cell_v2 map_cell0`` gives it unless told otherwise
    (nova ``nova/cmd/manage.py`` ``CellV2Commands._map_cell0``: ``url.database + '_cell0'``),
    and the one every deployment tool we know of uses.
    """
    try:
        parsed = parse_url(url, "nova")
    except DatabaseError:
        return False
    # The stem: a SQLite file may be called nova_cell0.sqlite.
    return bool(parsed.database) and PurePath(str(parsed.database)).stem.endswith("_cell0")


def cell_targets(settings: Settings, api: Database | None) -> list[CellTarget]:
    """The cells to scan, in a stable order."""
    explicit = settings.cell_urls()
    if explicit:
        targets: list[CellTarget] = []
        seen: dict[str, int] = {}
        for position, value in enumerate(explicit, start=1):
            name = _name_from_url(value.value, position)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            targets.append(
                CellTarget(name, value.value, value.source, cell0=_is_cell0_url(value.value))
            )
        return targets
    if api is None:
        raise ConfigError(
            "no Nova database given",
            hint="pass --nova-api-db (Newton and later) or --nova-db (any release), "
            "or --nova-conf /etc/nova/nova.conf",
        )
    mappings = api.table("cell_mappings")
    try:
        with api.engine.connect() as conn:
            rows = conn.execute(
                select(mappings.c.uuid, mappings.c.name, mappings.c.database_connection).order_by(
                    mappings.c.id
                )
            ).all()
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot read cell_mappings of {api.label}: {describe_db_error(exc)}"
        ) from None
    if not rows:
        raise DatabaseError(
            f"{api.label} has no cell_mappings rows",
            hint="pass the cell databases with --nova-db",
        )
    return [
        CellTarget(
            name=row.name or row.uuid,
            url=_format_template(row.database_connection or "", api.url),
            source=f"cell_mappings {row.uuid}",
            cell0=row.uuid == CELL0_UUID,
        )
        for row in rows
    ]
