"""The journal: every write command records its plan on disk before it changes anything.

JSON, mode 0600, written to a temporary name, fsynced and renamed, so a crash
leaves either no journal or a whole one. It holds the before-image and the
after-image of every row, never a password: ``recover undo`` reconnects with
the current settings and checks it reached the same database.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from recover.db.engine import Database
from recover.errors import RecoverError
from recover.fsutil import fsync_dir
from recover.plan import Plan, RowChange
from recover.secrets import mask_url
from recover.textfile import JOURNAL_LIMIT, read_bounded

FORMAT = "recover-journal/1"
STATE_ENV = "RECOVER_STATE_DIR"


def journal_dir() -> Path:
    state = os.environ.get(STATE_ENV) or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "recover"
    )
    return Path(state) / "journal"


def work_dir() -> Path:
    """A private directory beside the journals for bytes staged outside the store (0700)."""
    work = journal_dir().parent / "tmp"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    return work


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "$datetime" in value:
        return datetime.fromisoformat(value["$datetime"])
    if isinstance(value, dict) and "$bytes" in value:
        return bytes.fromhex(value["$bytes"])
    return value


def _row(row: dict[str, Any] | None, codec: Any) -> dict[str, Any] | None:
    return None if row is None else {k: codec(v) for k, v in row.items()}


def _identity(url: URL) -> dict[str, Any]:
    return {"host": url.host, "port": url.port, "database": url.database}


def new_path(plan: Plan, directory: Path | None = None) -> Path:
    """A new journal file name: UTC time, what, which (never an existing file)."""
    moment = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    subject = f"{plan.subject.get('kind', 'plan')}-{plan.subject.get('id', '')}".strip("-")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", subject)[:80]
    return (directory or journal_dir()) / f"{moment}-{safe}.json"


def write(path: Path, plan: Plan, status: str, command: str) -> None:
    """Atomically (re)write the journal for ``plan``."""
    document = {
        "format": FORMAT,
        "status": status,
        "command": command,
        "written_at": datetime.now(timezone.utc).isoformat(),
        "title": plan.title,
        "subject": plan.subject,
        "database": {
            "target": plan.target,
            "url": mask_url(plan.db.url),
            "dialect": plan.db.dialect,
            **_identity(plan.db.url),
            **({"galera": galera} if (galera := plan.db.galera()) else {}),
        },
        "changes": [
            {
                "table": c.table,
                "key": _row(c.key, _encode),
                "before": _row(c.before, _encode),
                "after": _row(c.after, _encode),
            }
            for c in plan.changes
        ],
        "notes": plan.notes,
        "files": plan.files,
    }
    rewrite(path, document)


def rewrite(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically: temporary file, fsync, rename, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(read_bounded(path, "journal", JOURNAL_LIMIT))
    except FileNotFoundError:
        raise RecoverError(f"journal {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecoverError(f"journal {path} is not readable JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RecoverError(f"{path} is not a recover journal (no format {FORMAT!r})")
    problem = _shape_problem(document)
    if problem:
        raise RecoverError(f"journal {path} is damaged: {problem}", hint="nothing was changed")
    return document


def _shape_problem(document: dict[str, Any]) -> str | None:
    """What is wrong with a journal's structure, or None (it may have been edited by hand)."""
    database = document.get("database")
    if not isinstance(database, dict) or not isinstance(database.get("target"), str):
        return "no database.target"
    if not isinstance(document.get("title"), str):
        return "no title"
    changes = document.get("changes")
    if not isinstance(changes, list) or not changes:
        return "no changes"
    for n, change in enumerate(changes):
        if not isinstance(change, dict) or not isinstance(change.get("table"), str):
            return f"change {n} has no table"
        if not isinstance(change.get("key"), dict) or not change["key"]:
            return f"change {n} has no key"
        for side in ("before", "after"):
            if change.get(side) is not None and not isinstance(change[side], dict):
                return f"change {n}: {side} is not a row"
        if change.get("before") is None and change.get("after") is None:
            return f"change {n} has neither before nor after"
    files = document.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return "files is not a list of entries"
    return None


def _same_galera_cluster(recorded: dict[str, Any], db: Database) -> bool:
    """The journal was written through another node of the Galera cluster serving ``db``, for
    the same database: every node holds the same rows, so undo may run through any of them
    (node 1 may be the one that died). ``wsrep_cluster_state_uuid`` names the cluster's data
    history, not its configuration: two clusters that share a ``wsrep_cluster_name`` differ.
    Journals written before recover knew Galera have no ``galera`` entry: host and port."""
    galera = recorded.get("galera")
    if not isinstance(galera, dict) or not galera.get("cluster_state_uuid"):
        return False
    if recorded.get("database") != db.url.database:
        return False
    return db.galera().get("cluster_state_uuid") == galera["cluster_state_uuid"]


def plan_from(document: dict[str, Any], db: Database, path: Path) -> Plan:
    """The plan recorded in a journal, bound to ``db`` after checking it is the same database."""
    recorded = document["database"]
    here = _identity(db.url)
    same_server = all(recorded.get(k) == v for k, v in here.items())
    if (not same_server and not _same_galera_cluster(recorded, db)) or (
        recorded.get("dialect") != db.dialect
    ):
        raise RecoverError(
            f"journal {path} is for {recorded.get('url')}, but the configured database is "
            f"{mask_url(db.url)}",
            hint="point recover at the database the journal was written for",
        )
    changes = [
        RowChange(
            table=c["table"],
            key=_row(c["key"], _decode) or {},
            before=_row(c["before"], _decode),
            after=_row(c["after"], _decode),
        )
        for c in document["changes"]
    ]
    return Plan(
        title=document["title"],
        db=db,
        target=recorded["target"],
        changes=changes,
        subject=document.get("subject", {}),
        files=document.get("files", []),
    )
