"""The safety model of every write: plan -> show -> confirm -> journal -> apply -> verify -> report.

``--dry-run`` stops after rendering the SQL: compile and read-only checks, never
"run it and roll back" (that would take real row locks on production).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recover import faults, journal
from recover.config import Settings
from recover.db.cloud import open_nova
from recover.db.engine import Database, open_database
from recover.errors import ConfigError, RecoverError, RefusedError
from recover.plan import Plan, apply, lock_and_check, render_sql, verify


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
    if not yes:
        if confirm is None:
            raise RefusedError(
                "refusing to change the database without confirmation",
                hint="pass --yes, or run on a terminal; --dry-run shows the exact SQL",
            )
        if not confirm(plan):
            raise RefusedError("cancelled at the prompt; nothing was changed")
    path = journal.new_path(plan, journal_dir)

    def before_commit() -> None:
        journal.write(path, plan, "applying", command)
        faults.point("journaled")
        if on_journaled is not None:
            on_journaled()  # e.g. place the image file: after the journal names it

    try:
        apply(plan, before_commit=before_commit)
    except BaseException:
        if on_failure is not None:
            on_failure()
        if path.exists():
            journal.write(path, plan, "rolled-back", command)
        raise
    faults.point("committed")
    journal.write(path, plan, "committed", command)
    problems = verify(plan)
    if problems:
        raise RecoverError(
            f"committed, but re-reading the rows differs from the plan: {'; '.join(problems)}",
            hint=f"inspect them; `recover undo {path}` reverses the change",
        )
    return Outcome("applied", plan, sql, journal=path)


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
    db = _database_for(settings, document["database"]["target"])
    recorded = journal.plan_from(document, db, path)
    inverse = recorded.inverse(f"undo: {recorded.title}")
    inverse.subject = {
        "kind": f"undo-{recorded.subject.get('kind', 'plan')}",
        "id": recorded.subject.get("id"),
    }
    if document.get("status") == "applying":
        # The run died between writing the journal and committing: maybe nothing happened.
        with db.engine.connect() as conn:
            try:
                lock_and_check(conn, recorded)
            except RefusedError:
                pass
            else:
                raise RefusedError(
                    f"journal {path} never committed: the rows are still as they were before it"
                )
    inverse.notes = [f"reverse {path.name} ({document.get('command', '?')})"]
    return inverse


def remove_created_files(plan: Plan) -> list[str]:
    """After an undo: remove the files the original run created, if they are still its files."""
    problems = []
    for entry in plan.files:
        if not entry.get("created"):
            continue
        target = Path(entry["path"])
        try:
            if target.stat().st_size != entry.get("size"):
                problems.append(f"{target} changed size since; left in place")
                continue
            target.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"cannot remove {target}: {exc.strerror}")
    return problems


def mark_undone(path: Path, undo_journal: Path | None) -> None:
    document = journal.read(path)
    document["status"] = "undone"
    document["undone_by"] = str(undo_journal) if undo_journal else None
    journal.rewrite(path, document)
