"""The safety model of every write: plan -> show -> confirm -> journal -> apply -> verify -> report.

``--dry-run`` stops after rendering the SQL: compile and read-only checks, never
"run it and roll back" (that would take real row locks on production).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recover import faults, journal, signals
from recover.config import Settings
from recover.db.cloud import open_nova
from recover.db.engine import Database, open_database
from recover.errors import ConfigError, RecoverError, RefusedError
from recover.images.digest import hash_file
from recover.images.store import is_store_file
from recover.plan import (
    Plan,
    RowChange,
    apply,
    blocking_references,
    lock_and_check,
    referenced_error,
    render_sql,
    verify,
)
from recover.text import printable


@dataclass
class Outcome:
    status: str  # "dry-run" | "applied"
    plan: Plan
    sql: str
    journal: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "title": self.plan.title,
            "database": self.plan.db.label,
            "changes": self.plan.summary(),
            "notes": self.plan.notes,
            "journal": str(self.journal) if self.journal else None,
            "undo": f"recover undo {self.journal}" if self.journal else None,
            **self.extra,
        }


def describe(plan: Plan) -> str:
    lines = [plan.title, *(f"  {n}" for n in plan.notes), "Changes (one transaction):"]
    lines += [f"  {line}" for line in plan.summary()]
    return "\n".join(lines) + "\n"


Confirm = Callable[[Plan], bool]


def execute(
    plan: Plan,
    *,
    dry_run: bool,
    yes: bool,
    command: str,
    confirm: Confirm | None,
    journal_dir: Path | None = None,
    on_journaled: Callable[[], None] | None = None,
    on_failure: Callable[[], None] | None = None,
) -> Outcome:
    """Carry out ``plan`` under the safety model; ``confirm`` is None without a terminal."""
    if not plan.changes:
        raise RefusedError(f"{plan.title}: nothing to change")
    sql = render_sql(plan)
    if dry_run:
        return Outcome("dry-run", plan, sql)
    confirmed(plan, yes, confirm)
    path = journal.new_path(plan, journal_dir)

    def before_commit() -> None:
        journal.write(path, plan, "applying", command)
        faults.point("journaled")
        if on_journaled is not None:
            on_journaled()  # e.g. place the image file: after the journal names it

    try:
        apply(
            plan,
            before_commit=before_commit,
            after_commit=lambda: signals.note_commit(path, plan.title),
        )
    except BaseException:
        if signals.committed() == (path, plan.title):
            # Interrupted (Ctrl-C, SIGTERM) right after the COMMIT: the change stays.
            journal.write(path, plan, "committed", command)
            raise
        if on_failure is not None:
            on_failure()
        if path.exists():
            journal.write(path, plan, "rolled-back", command)
        raise
    try:
        faults.point("committed")
        journal.write(path, plan, "committed", command)
        problems = verify(plan)
    except Exception as exc:
        raise committed_failure(path, "marking the journal and re-reading the rows", exc) from exc
    except BaseException:
        # Ctrl-C or SIGTERM after the COMMIT: the journal must say so before the exit (the
        # handler ignores another signal meanwhile), and the CLI names it and its undo.
        journal.write(path, plan, "committed", command)
        raise
    if problems:
        differ = RecoverError(f"they differ from the plan: {'; '.join(problems)}")
        raise committed_failure(path, "re-reading the rows", differ)
    return Outcome("applied", plan, sql, journal=path)


def confirmed(plan: Plan, yes: bool, confirm: Confirm | None) -> None:
    """Refuse unless ``--yes`` or the operator said yes at the terminal."""
    if yes:
        return
    if confirm is None:
        raise RefusedError(
            "refusing to change the database without confirmation",
            hint="pass --yes, or run on a terminal; --dry-run shows the exact SQL",
        )
    if not confirm(plan):
        raise RefusedError("cancelled at the prompt; nothing was changed")


def committed_failure(
    path: Path, what: str, error: BaseException, subject: str = "the change"
) -> RecoverError:
    """The error for anything that fails after COMMIT: the change is live, so the operator
    must learn that first, with the journal and the command that reverses it (a bare API
    error here once hid a committed recovery, and a re-run then found nothing to do)."""
    detail = str(error) if isinstance(error, RecoverError) else f"{type(error).__name__}: {error}"
    return RecoverError(
        f"{subject} was COMMITTED (journal {path}), but {what} failed: {detail}",
        hint=f"it is in the database now: inspect it; `recover undo {path}` reverses it",
    )


def _database_for(settings: Settings, target: str) -> Database:
    if target == "nova_api":
        if settings.nova_api_db is None:
            raise ConfigError("the journal is for the nova_api database: pass --nova-api-db")
        return open_database(settings.nova_api_db.value, "nova_api")
    if target == "glance":
        if settings.glance_db is None:
            raise ConfigError("the journal is for the Glance database: pass --glance-db")
        return open_database(settings.glance_db.value, "glance")
    if target.startswith("cell:"):
        name = target.removeprefix("cell:")
        nova = open_nova(settings)
        keep = next((c for c in nova.cells if c.name == name), None)
        for cell in nova.cells:
            if cell is not keep:
                cell.db.dispose()
        if nova.api is not None:
            nova.api.db.dispose()
        if keep is None:
            names = ", ".join(c.name for c in nova.cells)
            raise ConfigError(
                f"the journal is for cell {name!r}, which is not configured ({names})"
            )
        return keep.db
    raise RecoverError(f"the journal names an unknown database {target!r}")


def plan_undo(settings: Settings, path: Path) -> Plan:
    """The inverse of the plan a journal recorded, bound to the same database."""
    document = journal.read(path)
    if document.get("status") == "undone":
        raise RefusedError(f"journal {path} was already undone")
    outside = _files_outside_store(document, settings.image_dirs())
    if outside:
        raise RefusedError(
            f"journal {path} names a file that is not this image's file in the store "
            f"({printable(outside)})",
            hint="refusing to undo anything: was the journal edited?",
        )
    db = _database_for(settings, document["database"]["target"])
    recorded = journal.plan_from(document, db, path)
    inverse = recorded.inverse(f"undo: {recorded.title}")
    inverse.subject = {
        "kind": f"undo-{recorded.subject.get('kind', 'plan')}",
        "id": recorded.subject.get("id"),
        "journal": str(path),  # a refusal names the journal being undone
    }
    if document.get("status") in ("applying", "rolled-back") and recorded.subject.get(
        "created_through_api"
    ):
        # A re-creation through the Glance API killed before it recorded what Glance wrote:
        # the rows Glance created since the journal are removed, file included.
        inverse.changes, inverse.files = _created_through_api(db, recorded, document, path)
    elif document.get("status") in ("applying", "rolled-back"):
        # The run died (or failed) before its commit: perhaps nothing happened in the database.
        with db.engine.connect() as conn:
            try:
                lock_and_check(conn, recorded)
            except RefusedError:
                pass
            else:
                inverse.changes = []  # only files it may have placed are left to remove
    inverse.notes = [f"reverse {path.name} ({document.get('command', '?')})"]
    if inverse.changes:
        # Rows added since (an extra spec set on the recovered flavor) make the delete fail
        # on every run: say so now, for --dry-run too, rather than at COMMIT as a "race".
        with db.engine.connect() as conn:
            blockers = blocking_references(conn, inverse)
        if blockers:
            raise referenced_error(inverse, blockers)
    return inverse


def _created_through_api(
    db: Database, recorded: Plan, document: dict[str, Any], path: Path
) -> tuple[list[RowChange], list[dict[str, Any]]]:
    """The rows and the store file of a ``--via-api`` re-creation that never recorded them."""
    from recover.images.recreate import created_since

    image_id = str(recorded.subject.get("id", ""))
    try:
        written = datetime.fromisoformat(str(document.get("written_at")))
    except ValueError:
        raise RecoverError(
            f"journal {path} is damaged: no written_at", hint="nothing was changed"
        ) from None
    since = written.astimezone(timezone.utc).replace(tzinfo=None)
    rows = created_since(db, image_id, since)
    files = []
    for change in rows:
        value = (change.after or {}).get("value") if change.table == "image_locations" else None
        target = Path(urlparse(str(value)).path) if str(value).startswith("file://") else None
        if target is not None and target.is_file():
            files.append({"path": str(target), "size": target.stat().st_size, "md5": None,
                          "created": True, "by": "glance"})  # fmt: skip
    return [c.inverse() for c in reversed(rows)], files


def _store_dirs(store_dir: str | tuple[str, ...]) -> list[Path]:
    """The store's directories (``filesystem_store_datadirs``: the file may be in any)."""
    return [Path(d).resolve() for d in ((store_dir,) if isinstance(store_dir, str) else store_dir)]


def _files_outside_store(document: dict[str, Any], store_dir: str | tuple[str, ...]) -> str | None:
    stores = _store_dirs(store_dir)
    image_id = str(document.get("subject", {}).get("id", ""))
    for entry in document.get("files", []):
        target = Path(str(entry.get("path", "")))
        if entry.get("created") and not any(is_store_file(target, s, image_id) for s in stores):
            return str(target)
    return None


def remove_created_files(
    plan: Plan, store_dir: str | tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """After an undo: remove the image file the original run placed, if it is still that file.

    A journal is a file anyone with access could edit, so only ``<store>/<image id>`` of
    the configured store is ever removed, and only with the recorded size and md5.
    Returns (removed, problems).
    """
    removed, problems = [], []
    stores = _store_dirs(store_dir)
    image_id = str(plan.subject.get("id", ""))
    for entry in plan.files:
        if not entry.get("created"):
            continue
        target = Path(str(entry.get("path", "")))
        if not any(is_store_file(target, s, image_id) for s in stores):
            where = " or ".join(f"{s}/{image_id}" for s in stores)
            problems.append(f"{printable(target)} is not {where}; left in place")
            continue
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            continue
        if size != entry.get("size") or (
            entry.get("md5") and hash_file(str(target)).md5 != entry.get("md5")
        ):
            problems.append(f"{target} changed since the recovery; left in place")
            continue
        target.unlink()
        removed.append(str(target))
    return removed, problems


def mark_undone(path: Path, undo_journal: Path | None, status: str = "undone") -> None:
    document = journal.read(path)
    document["status"] = status
    document["undone_by"] = str(undo_journal) if undo_journal else None
    journal.rewrite(path, document)
