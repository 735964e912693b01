"""Real ``glance-manage db purge`` / ``purge_images_table`` runs on a test Glance database.

The purge is Glance's own (glance 33 ``glance/cmd/manage.py`` ``DbCommands.purge`` and
``purge_images_table``, run from the Glance tier's venv with the server's generated
glance-api.conf), never a hand-written DELETE. What it does (glance 33
``glance/db/sqlalchemy/api.py`` ``purge_deleted_rows`` / ``purge_deleted_rows_from_images``;
/work/shared/reference/glance-purge.md §1):

* ``purge``: for ``image_properties``, ``image_tags``, ``image_locations``,
  ``image_members`` (then ``tasks``), in that order, ``DELETE`` the rows with
  ``deleted_at < now - age_in_days`` (``deleted`` is never looked at), oldest
  ``deleted_at`` first, at most ``max_rows`` per table (``-1``: all); never ``images``.
* ``purge_images_table``: the same on ``images`` alone.

A real purge takes every table and every image whose rows are old enough. To purge
ONE table (a run that stopped at ``max_rows`` in the others leaves exactly that mix),
or only some images, :func:`purge` shields the rest first: it moves the ``deleted_at``
of every soft-deleted row it must keep 100 years into the future (so Glance's own
``deleted_at < cutoff`` does not select it), runs the real command with
``--age_in_days 0``, and moves them back. Which rows Glance deletes among the others,
and how (``max_rows``, the order), stays Glance's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tests.glance_api import glance_env

if TYPE_CHECKING:
    from tests.glance_api import GlanceApi

#: The child tables ``purge`` deletes from, in glance 33's order (the order of
#: ``glance.db.sqlalchemy.models`` with a ``deleted`` column, ``images`` left out).
CHILD_TABLES = ("image_properties", "image_tags", "image_locations", "image_members")
#: Every table either command purges (tasks: no test makes any; shielded all the same).
PURGED_TABLES = ("images", *CHILD_TABLES, "tasks")
SHIELD = "INTERVAL 100 YEAR"


def glance_manage(api: GlanceApi, *args: str) -> subprocess.CompletedProcess[str]:
    """``glance-manage --config-file <api's glance-api.conf> ARGS`` from the api's venv."""
    assert api.venv is not None, "start_glance records the venv"
    result = subprocess.run(
        [str(api.venv / "bin" / "glance-manage"), "--config-file", str(api.conf_path), *args],
        env=glance_env(api.directory, api.conf_path), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"glance-manage {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _shield(api: GlanceApi, keep: dict[str, str]) -> None:
    for table, where in keep.items():
        api.query(f"UPDATE {table} SET deleted_at = deleted_at + {SHIELD} WHERE {where}")


def _unshield(api: GlanceApi, tables: Iterable[str]) -> None:
    for table in tables:
        api.query(
            f"UPDATE {table} SET deleted_at = deleted_at - {SHIELD} "
            f"WHERE deleted_at > UTC_TIMESTAMP() + INTERVAL 50 YEAR"
        )


def _keep_clauses(
    tables: Sequence[str], images: Sequence[str] | None, purged: Sequence[str]
) -> dict[str, str]:
    """``table -> WHERE`` of the rows with a ``deleted_at`` that must survive the run."""
    keep: dict[str, str] = {}
    listed = ", ".join(f"'{i}'" for i in images or ())
    for table in tables:
        column = "id" if table == "images" else "image_id"
        if table == "tasks" or table not in purged:
            keep[table] = "deleted_at IS NOT NULL"
        elif images is not None:
            keep[table] = f"deleted_at IS NOT NULL AND {column} NOT IN ({listed or 'NULL'})"
    return keep


def _run_shielded(
    api: GlanceApi,
    command: str,
    purged: Sequence[str],
    images: Sequence[str] | None,
    max_rows: int,
    age_in_days: int,
) -> str:
    keep = _keep_clauses(PURGED_TABLES, images, purged)
    _shield(api, keep)
    try:
        result = glance_manage(
            api, "db", command, "--age_in_days", str(age_in_days), "--max_rows", str(max_rows)
        )
    finally:
        _unshield(api, keep)
    return result.stdout + result.stderr


def purge(
    api: GlanceApi,
    *,
    tables: Sequence[str] = CHILD_TABLES,
    images: Sequence[str] | None = None,
    max_rows: int = -1,
    age_in_days: int = 0,
) -> str:
    """``glance-manage db purge --age_in_days 0 --max_rows N`` on ``tables`` only (each of
    :data:`CHILD_TABLES`), for ``images`` only (None: every image). Returns its log."""
    unknown = set(tables) - set(CHILD_TABLES)
    assert not unknown, f"db purge never touches {unknown}"
    return _run_shielded(api, "purge", tables, images, max_rows, age_in_days)


def purge_images_table(
    api: GlanceApi, *, images: Sequence[str] | None = None, max_rows: int = -1
) -> str:
    """``glance-manage db purge_images_table --age_in_days 0 --max_rows N`` (only
    ``images`` rows; their child rows must be gone already, or Glance fails on the FK)."""
    return _run_shielded(api, "purge_images_table", ("images",), images, max_rows, 0)


def purge_all(api: GlanceApi, images: Sequence[str] | None = None) -> str:
    """What a cloud's cron does at its most thorough: ``purge`` then ``purge_images_table``."""
    return purge(api, images=images) + purge_images_table(api, images=images)


def surviving(api: GlanceApi, image_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of ``image_id`` in ``images`` and the child tables, live or soft-deleted."""
    found = {"images": api.query("SELECT * FROM images WHERE id = %s", (image_id,))}
    for table in CHILD_TABLES:
        found[table] = api.query(
            f"SELECT * FROM {table} WHERE image_id = %s ORDER BY id", (image_id,)
        )
    return found
