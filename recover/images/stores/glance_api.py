"""Glance itself as the store: the row goes to ``queued`` and the bytes are uploaded through
the API (``--via-api``), so Glance writes whatever backend it uses and computes the hashes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from recover import faults, journal
from recover.glance import GlanceReader
from recover.images import api
from recover.images.digest import Digests
from recover.images.recreate import MEMBER_STATUS, Recreated, rows_of
from recover.images.rows import NewData, restored_status
from recover.images.sources import ImageSource
from recover.images.store import Staged
from recover.images.stores import Go, Location, Survivor
from recover.plan import Plan, RowChange, apply
from recover.text import printable
from recover.write import Outcome, committed_failure, confirmed


class GlanceApiStore:
    queued = True

    def __init__(
        self, glance_api: Any, glance: GlanceReader, image_id: str, row: dict[str, Any],
        store_file: Path,
    ) -> None:  # fmt: skip
        self.glance_api = glance_api
        self.glance = glance
        self.image_id = image_id
        self.row = row
        #: Where a filesystem-backed Glance would write the file (its leftover is removed).
        self.final = store_file
        self.store_file_before = False
        self.digests: Digests | None = None

    def location(self) -> Location:
        return Location(f"file://{self.final}")  # unused: Glance writes the location itself

    def survivor(self) -> Survivor | None:
        return None  # an upload always sends new bytes

    def action(self, source: ImageSource, target_format: str) -> str:
        return f"upload through the Glance API from {source.label}"

    @contextmanager
    def staging(self) -> Iterator[Staged]:
        work = journal.work_dir()
        self.store_file_before = self.final.exists()
        staged = Staged(work, self.image_id)
        try:
            yield staged
        finally:
            staged.discard()

    def commit(
        self, plan: Plan, go: Go, staged: Staged | None = None, new_data: NewData | None = None
    ) -> Outcome:
        """Queue the row, then let Glance itself write the bytes to whatever store it uses.

        The integrity columns go NULL first, else Glance rejects different bytes
        (glance 33 ``glance/location.py`` ``_verify_uploaded_data``); a failed upload
        puts the rows back and removes the file Glance may have left in a file store,
        which would make every later upload fail with ``Duplicate`` (real-glance.md §5).
        """
        if staged is None or new_data is None:
            return go.execute(plan)
        staged.close()
        outcome = go.execute(plan)
        assert outcome.journal is not None
        command = go.command
        subject = f"image {self.image_id} set to queued for the upload"
        try:
            with open(staged.path, "rb") as data:
                api.upload(self.glance_api, self.image_id, data, new_data.digests.size)
            if restored_status(self.row) == "deactivated":
                # An upload makes it active; the admin's deactivation stands (rows.py).
                api.deactivate(self.glance_api, self.image_id)
        except BaseException as failed:
            try:
                self._undo_queue(plan, outcome.journal, command)
            except Exception as exc:
                raise committed_failure(
                    outcome.journal,
                    f"the upload ({failed}) and then putting the rows back",
                    exc,
                    subject,
                ) from exc
            raise
        self.digests = new_data.digests
        try:
            self._record_upload(plan, outcome.journal, command)
        except Exception as exc:
            raise committed_failure(
                outcome.journal,
                "recording what Glance wrote in the journal (undo will leave Glance's new "
                "location row and file)",
                exc,
                f"the recovery of image {self.image_id}",
            ) from exc
        outcome.extra["uploaded"] = {"md5": new_data.digests.md5, "size": new_data.digests.size}
        return outcome

    def _current(self, plan: Plan) -> list[RowChange]:
        """The plan's rows as they are now, after Glance touched them."""
        changes = []
        with self.glance.db.engine.connect() as conn:
            for change in plan.changes:
                table = self.glance.db.table(change.table)
                key = and_(*(table.c[k] == v for k, v in change.key.items()))
                found = conn.execute(select(table).where(key)).mappings().first()
                changes.append(replace(change, after=dict(found) if found else None))
        return changes

    def _undo_queue(self, plan: Plan, path: Path, command: str) -> None:
        """The upload failed: put every row back as it was before the plan, whatever Glance did."""
        now = self._current(plan)
        restore = Plan(
            title=f"restore after a failed upload: {plan.title}",
            db=plan.db,
            target=plan.target,
            changes=[RowChange(c.table, c.key, before=c.after, after=o.before)
                     for c, o in zip(now, plan.changes, strict=True)],
        )  # fmt: skip
        apply(restore)
        if not self.store_file_before and self.final.exists():
            self.final.unlink()  # Glance's leftover would make every later upload a Duplicate
        journal.write(path, plan, "rolled-back", command)

    def _record_upload(self, plan: Plan, path: Path, command: str) -> None:
        """Amend the journal with what Glance wrote, so ``undo`` reverses the whole recovery."""
        changes = self._current(plan)
        table = self.glance.db.table("image_locations")
        known = {c.key["id"] for c in plan.changes if c.table == "image_locations"}
        with self.glance.db.engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.image_id == self.image_id)).mappings()
            changes += [
                RowChange("image_locations", {"id": r["id"]}, before=None, after=dict(r))
                for r in rows
                if r["id"] not in known and not r["deleted"]
            ]
        plan.changes = changes
        if not self.store_file_before and self.final.is_file():
            md5 = self.digests.md5 if self.digests else None
            plan.files = [{"path": str(self.final), "size": self.final.stat().st_size,
                           "md5": md5, "created": True, "by": "glance"}]  # fmt: skip
        journal.write(path, plan, "committed", command)


class GlanceApiCreateStore(GlanceApiStore):
    """A purged row re-created by Glance itself (``--via-api``): ``POST /v2/images`` with the
    image's id and owner, the members, then ``PUT /v2/images/{id}/file``.

    No SQL of recover runs: the plan (the rows a database re-creation would insert) is what
    the journal names before the first request; once Glance has written the image, the
    journal records the rows Glance wrote as inserts, so ``undo`` deletes exactly them (and
    the file Glance wrote in a filesystem store) and the id has "no row" again, as before.
    Deleting through the API instead would leave a soft-deleted row (``image_destroy``),
    another state than the one the run started from. A failure or a signal after the
    ``POST`` removes what it created the same way: the old state.
    """

    def __init__(
        self, glance_api: Any, glance: GlanceReader, made: Recreated, store_file: Path
    ) -> None:
        super().__init__(glance_api, glance, made.image_id, made.row, store_file)
        self.made = made

    def action(self, source: ImageSource, target_format: str) -> str:
        return (
            f"create image {self.image_id} through the Glance API (POST /v2/images with its id), "
            f"then upload from {source.label}"
        )

    def body(self, disk_format: str) -> dict[str, Any]:
        values = {name: s.value for name, s in self.made.fields.items()}
        values["disk_format"] = disk_format
        properties = {n: str(c.value) for n, c in sorted(self.made.copies.properties.items())}
        return api.create_body(values, properties)

    def requests(self, disk_format: str, size: int | None) -> list[str]:
        """The API requests of the run, for the dry-run and the journal."""
        made = self.made
        lines = [f"POST /v2/images {json.dumps({'id': made.image_id, **self.body(disk_format)})}"]
        lines += [
            f'POST /v2/images/{made.image_id}/members {{"member": "{p}"}}, then PUT '
            f'/v2/images/{made.image_id}/members/{p} {{"status": "{MEMBER_STATUS}"}}'
            for p in made.members
        ]
        shown = f"{size} bytes" if size is not None else "the new file"
        lines.append(f"PUT /v2/images/{made.image_id}/file ({shown}; Glance computes the hashes)")
        return lines

    def commit(
        self, plan: Plan, go: Go, staged: Staged | None = None, new_data: NewData | None = None
    ) -> Outcome:
        first = plan.changes[0].after or {}
        disk_format = str(first.get("disk_format"))
        size = new_data.digests.size if new_data is not None else None
        plan.notes += [f"API: {line}" for line in self.requests(disk_format, size)]
        original = self.made.fields.get("created_at")
        if original is not None and not original.guessed:
            plan.notes.append(
                f"created_at becomes Glance's now, not the original {original.value}: read-only "
                "in the API (glance/api/v2/images.py RequestDeserializer.create)"
            )
        plan.subject = {**plan.subject, "created_through_api": True}
        if staged is None or new_data is None:
            lines = [
                plan.title,
                f"database: {plan.db.label}",
                *plan.notes,
                "no SQL runs: Glance writes the rows (the plan's rows are its prediction)",
            ]
            return Outcome("dry-run", plan, "".join(f"-- {printable(x)}\n" for x in lines))
        staged.close()
        confirmed(plan, go.yes, go.confirm)
        path = journal.new_path(plan, go.journal_dir)
        journal.write(path, plan, "applying", go.command)
        faults.point("journaled")
        created = False
        try:
            api.create_with_id(self.glance_api, self.image_id, self.body(disk_format))
            created = True
            faults.point("api-created")
            for project in self.made.members:
                api.add_member(self.glance_api, self.image_id, project, MEMBER_STATUS)
            with open(staged.path, "rb") as data:
                api.upload(self.glance_api, self.image_id, data, new_data.digests.size)
            faults.point("committed")
        except BaseException as failed:
            if not created:  # Glance refused the POST: it wrote nothing of ours
                journal.write(path, plan, "rolled-back", go.command)
                raise
            try:
                self._remove_created(plan, path, go.command)
            except Exception as exc:
                raise committed_failure(
                    path, f"the API calls ({failed}) and then removing the image they created",
                    exc, f"image {self.image_id}, created through the Glance API,",
                ) from exc  # fmt: skip
            raise
        self.digests = new_data.digests
        try:
            self._record_created(plan, path, go.command)
        except Exception as exc:
            raise committed_failure(
                path, "recording what Glance wrote in the journal", exc,
                f"the re-creation of image {self.image_id}",
            ) from exc  # fmt: skip
        outcome = Outcome("applied", plan, "", journal=path)
        outcome.extra["uploaded"] = {"md5": new_data.digests.md5, "size": new_data.digests.size}
        return outcome

    def _remove_created(self, plan: Plan, path: Path, command: str) -> None:
        """Back to "no row": delete every row Glance wrote for the image, and its file."""
        rows = rows_of(self.glance.db, self.image_id)
        if rows:
            apply(Plan(
                title=f"remove after a failed re-creation: {plan.title}",
                db=plan.db, target=plan.target,
                changes=[c.inverse() for c in reversed(rows)],
            ))  # fmt: skip
        if not self.store_file_before and self.final.exists():
            self.final.unlink()
        journal.write(path, plan, "rolled-back", command)

    def _record_created(self, plan: Plan, path: Path, command: str) -> None:
        plan.changes = rows_of(self.glance.db, self.image_id)
        if not self.store_file_before and self.final.is_file():
            md5 = self.digests.md5 if self.digests else None
            plan.files = [{"path": str(self.final), "size": self.final.stat().st_size,
                           "md5": md5, "created": True, "by": "glance"}]  # fmt: skip
        journal.write(path, plan, "committed", command)
