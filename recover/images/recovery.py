"""``recover image``: bring a deleted Glance image back under its own id.

Only the orchestration lives here: plan -> produce -> place -> commit. What the
store still holds, and how bytes get into it, is the store's
(:mod:`recover.images.stores`: filesystem, RBD, Glance API upload); where new
bytes come from is the source's (:mod:`recover.images.sources`: a local
``_base`` copy, a compute node); which bytes may become the image is the
rules' (:mod:`recover.images.rules`). The rows change in one transaction (the
flavor's plan/journal mechanism).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select

from recover.config import DEFAULT_INSTANCES_PATH, Settings
from recover.db.cloud import open_glance
from recover.errors import ConfigError, NotFoundError, RecoverError, RefusedError
from recover.glance import GlanceReader
from recover.images import api
from recover.images.ceph import parse_location
from recover.images.digest import DEFAULT_ALGO, Digests
from recover.images.nova_copies import INHERITABLE, NovaCopies, Sourced, read_copies
from recover.images.recreate import Recreated, finish_plan, recreated
from recover.images.rows import (
    PROPERTY_WINDOW,
    NewData,
    PendingData,
    child_rows,
    image_plan,
    meta_store,
    restored_status,
    within,
)
from recover.images.rules import ImageRules
from recover.images.sources import ImageSource
from recover.images.sources.base_file import base_file_source
from recover.images.sources.compute import compute_node_source
from recover.images.sources.transfer import WRITABLE
from recover.images.stores import Go, ImageStore
from recover.images.stores.filesystem import FilesystemStore
from recover.images.stores.glance_api import GlanceApiCreateStore, GlanceApiStore
from recover.images.stores.rbd import RbdStore
from recover.images.stores.rbd import client as rbd_client
from recover.plan import Plan
from recover.progress import Display
from recover.text import printable
from recover.write import Confirm, Outcome, committed_failure

__all__ = ["WRITABLE", "ImageRecovery", "ImageRequest", "recover_image", "validate_uuid"]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RECOVERABLE_STATUSES = ("deleted", "pending_delete", "killed")


@dataclass
class ImageRequest:
    image_id: str
    base_file: Path | None = None
    #: None: not given; "": pick a host from the instances that use the image.
    from_host: str | None = None
    instances_path: str = DEFAULT_INSTANCES_PATH
    disk_format: str | None = None
    #: Set the row to queued and upload through the Glance API (any store backend).
    via_api: bool = False
    #: Store bytes that are not the original upload's (a refusal of the size rules becomes
    #: a loud warning in the report).
    accept_new_bytes: bool = False
    #: The instance whose copy of the purged properties to trust when instances disagree.
    from_instance: str | None = None


def validate_uuid(text: str) -> str:
    value = text.strip().lower()
    if not UUID_RE.match(value):
        raise RecoverError(
            f"{text[:60]!r} is not an image UUID", hint="e.g. b3986e99-1988-43bb-b47c-0b34438bc189"
        )
    return value


def _deleted_with(deleted_at: datetime | None, anchor: datetime | None) -> bool:
    """Deleted with the image (image_plan revives it), not removed from it before."""
    return within(deleted_at, anchor, PROPERTY_WINDOW)


class ImageRecovery:
    def __init__(self, settings: Settings, request: ImageRequest, glance_api: Any = None) -> None:
        self.settings = settings
        self.request = request
        self.image_id = validate_uuid(request.image_id)
        self.glance: GlanceReader = open_glance(settings)
        #: The purged row being re-created from Nova's copies (None: the row exists).
        self.recreated: Recreated | None = None
        self.row = self._row()
        self.target_format = self._target_format()
        self.algo = self.row.get("os_hash_algo") or settings.hashing_algorithm or DEFAULT_ALGO
        self.rules = ImageRules(self.image_id, self.row, request.accept_new_bytes)
        if self.recreated is not None and "checksum" in self.recreated.fields:
            # The re-created row's checksum is the request spec's copy: say so in the report.
            spec_md5 = self.recreated.fields["checksum"]
            self.rules.original = (str(spec_md5.value), spec_md5.source)
        files = FilesystemStore(settings, self.image_id, self.row, self.rules, self.algo,
                                reformat=bool(request.disk_format))  # fmt: skip
        self.store: ImageStore = files
        if request.via_api and self.recreated is not None:
            self.store = GlanceApiCreateStore(glance_api, self.glance, self.recreated,
                                              files.final)  # fmt: skip
        elif request.via_api:
            self.store = GlanceApiStore(glance_api, self.glance, self.image_id, self.row,
                                        files.final)  # fmt: skip
        elif (rbd := self._rbd_store()) is not None:
            self.store = rbd
        #: Hashes of the bytes this run produced (for the API verification afterwards).
        self.new_digests: Digests | None = None
        #: Nova's copies (None: no Nova database given) and the purged properties they give.
        self.copies: NovaCopies | None = None
        self.rebuilt: dict[str, Sourced] = {}
        #: What the report says of the metadata Glance lost (not restored, no copy).
        self.metadata_notes: list[str] = []
        self.dropped: dict[str, str] = {}
        self._read_nova_copies()

    @property
    def overridden(self) -> list[str]:
        return self.rules.overridden

    def close(self) -> None:
        self.glance.db.dispose()

    # --- checks --------------------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        images = self.glance.images
        with self.glance.db.engine.connect() as conn:
            found = (
                conn.execute(select(images).where(images.c.id == self.image_id)).mappings().first()
            )
        if found is None:
            self.recreated = self._recreate()
            return self.recreated.row
        row = dict(found)
        if row["status"] == "active" and not row["deleted"]:
            raise RefusedError(f"image {self.image_id} is active: nothing to recover")
        # deleted=1 is what makes Glance hide a row (glance 33 _image_get filters on it),
        # whatever status it kept: hand edits and old releases leave active/deactivated ones.
        if row["status"] not in RECOVERABLE_STATUSES and not row["deleted"]:
            raise RefusedError(
                f"image {self.image_id} is {row['status']!r}, "
                "not deleted, pending_delete or killed",
                hint="recover only brings back deleted or failed images"
                + (
                    "; a `recover image --via-api` killed before its upload leaves the image it "
                    "created queued: `recover undo` that run's journal, then re-run"
                    if row["status"] == "queued"
                    else ""
                ),
            )
        return row

    def _recreate(self) -> Recreated:
        """The row was purged: what Nova's copies say it held (refused without live users)."""
        if self.settings.nova_api_db is None and not self.settings.cell_urls():
            raise NotFoundError(
                f"image {self.image_id} has no images row: it was purged "
                "(glance-manage db purge_images_table) or never existed",
                hint="pass --nova-api-db (or --nova-db): recover re-creates a purged row from "
                "the copies Nova keeps for the instances booted from it",
            )
        copies = read_copies(self.settings, self.image_id, from_instance=self.request.from_instance)
        now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        return recreated(self.glance, self.image_id, copies, now, self.request.disk_format)

    def _target_format(self) -> str:
        wanted = self.request.disk_format or self.row["disk_format"]
        if not wanted:
            raise RefusedError(
                f"image {self.image_id} has no disk_format", hint="pass --disk-format raw or qcow2"
            )
        if wanted not in WRITABLE:
            raise RefusedError(
                f"image {self.image_id} is {wanted!r}, which qemu-img cannot write",
                hint="pass --disk-format raw to store the _base data as raw "
                "(the row is updated to match)",
            )
        return wanted

    def _rbd_store(self) -> RbdStore | None:
        """The RBD store, when the image lived in one: its newest ``rbd://`` or ``file://``
        location row says which (deleted rows too); an image without either lived in
        Glance's default store, unless a filesystem directory was named (--store-dir)."""
        table = self.glance.db.table("image_locations")
        with self.glance.db.engine.connect() as conn:
            rows = conn.execute(
                select(table.c.value, table.c.meta_data)
                .where(table.c.image_id == self.image_id)
                .order_by(table.c.id.desc())
            ).all()
        settings = self.settings
        for value, meta in rows:
            scheme = urlparse(value or "").scheme
            if scheme in ("file", "filesystem"):
                return None
            if scheme == "rbd":
                old = parse_location(value)  # hostile values are refused here
                stored = meta_store(meta) or settings.rbd_store_id
                pool = old.pool or settings.rbd_pool.value
                return RbdStore(rbd_client(settings), pool, self.image_id, self.rules, self.algo,
                                stored, old)  # fmt: skip
        if settings.glance_store_kind != "rbd" or settings.store_dir.source != "default":
            return None
        return RbdStore(rbd_client(settings), settings.rbd_pool.value, self.image_id, self.rules,
                        self.algo, settings.rbd_store_id, None)  # fmt: skip

    # --- the metadata a purge removed ------------------------------------------------------

    def _read_nova_copies(self) -> None:
        """Properties whose rows a ``glance-manage db purge`` removed, from Nova's copies.

        Only names Glance has no row of at all are filled: a row that is still there
        (revived with the image, live, or deleted before the image, i.e. removed from it)
        is Glance's word. Instances that disagree about a name to fill are refused unless
        ``--from-instance`` (glance-purge.md "What a recover tool should do" (a)3).
        """
        settings, request = self.settings, self.request
        if settings.nova_api_db is None and not settings.cell_urls():
            if request.from_instance is not None:
                raise ConfigError(
                    "--from-instance reads Nova's copies of the image, and no Nova database "
                    "is given",
                    hint="pass --nova-api-db URL (or --nova-db URL, or --nova-conf)",
                )
            if not self._child_rows()["image_properties"]:
                self.metadata_notes.append(
                    "no property row left in Glance (purged, or there were none); with the "
                    "Nova databases (--nova-api-db or --nova-db) recover rebuilds purged "
                    "properties from Nova's copies"
                )
            return
        copies = self.copies = (
            self.recreated.copies
            if self.recreated is not None
            else read_copies(settings, self.image_id, from_instance=request.from_instance)
        )
        spec_md5 = copies.core.get("checksum")
        if self.rules.original is None and spec_md5 is not None:
            # The row lost its checksum (or never had one): the request spec kept the
            # original upload's, so the report can still say whether the bytes are the same.
            self.rules.original = (str(spec_md5.value), spec_md5.source)
        rows = self._child_rows()
        names = {r["name"]: r for r in rows["image_properties"]}
        anchor = self.row["deleted_at"]
        for name, copy in copies.properties.items():
            row = names.get(name)
            if row is None:
                self.rebuilt[name] = copy
            elif row["deleted"] and not _deleted_with(row["deleted_at"], anchor):
                self.metadata_notes.append(
                    f"property {printable(name)}: Nova's copy {printable(str(copy.value))} not "
                    f"restored: Glance's row {row['id']} was deleted at {row['deleted_at']}, "
                    "before the image (removed from it)"
                )
        conflicts = {k: v for k, v in copies.conflicts.items() if k not in names}
        if conflicts:
            scoped = NovaCopies(**{**copies.__dict__, "conflicts": conflicts})
            error = scoped.conflict_error()
            assert error is not None
            raise error
        self.dropped = {k: v for k, v in copies.dropped.items() if k not in names}
        own = sorted(k for k in self.dropped if k not in INHERITABLE)
        if self.rebuilt and own:
            self.metadata_notes.append(
                "left out as Nova's own, not the image's: "
                + ", ".join(printable(k) for k in own)
                + " (--format json: dropped_properties, with the reason for each)"
            )
        for table, what in (("image_tags", "tags"), ("image_members", "members")):
            if table == "image_members" and self.recreated is not None:
                continue  # the projects that run it become its members: recreate.py says so
            if not rows[table]:
                self.metadata_notes.append(
                    f"{what}: no row left in Glance (purged, or there were none) and Nova keeps "
                    f"no copy of {what}: none restored"
                )

    def _child_rows(self) -> dict[str, list[dict[str, Any]]]:
        with self.glance.db.engine.connect() as conn:
            return {
                t: child_rows(conn, self.glance, t, self.image_id)
                for t in ("image_properties", "image_tags", "image_members")
            }

    def metadata_report(self, plan: Plan) -> dict[str, Any]:
        """The report's ``properties`` (each with its source), what was left out and why."""
        return {
            "properties": plan.subject.get("properties", {}),
            "dropped_properties": dict(sorted(self.dropped.items())),
            "nova_copies": None if self.copies is None else self.copies.as_dict(),
        }

    # --- the source ------------------------------------------------------------------------

    def _source(self) -> ImageSource:
        request = self.request
        if request.base_file is not None:
            return base_file_source(request.base_file, self.rules, self.image_id)
        if request.from_host is None:
            raise RefusedError(
                f"no source for image {self.image_id}: the store has no file for it",
                hint="pass --from-host HOST (a compute node running it), "
                "--from-host alone to try them all, "
                "or --base-file PATH",
            )
        return compute_node_source(self.settings, request.from_host, request.instances_path,
                                   request.image_id, self.image_id, self.rules)  # fmt: skip

    # --- the whole run -------------------------------------------------------------------

    def plan(self, new_data: NewData | PendingData | None, action: str) -> Plan:
        queued = self.store.queued
        location = self.store.location()
        plan_now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        plan = image_plan(
            self.glance,
            self.row,
            location_uri=location.uri,
            location_kind=location.kind,
            new_data=new_data,
            store_id=location.store_id,
            now=plan_now,
            action=action,
            queued_for_upload=queued,
            store_dirs=location.dirs,
            rebuilt=self.rebuilt,
        )
        if self.recreated is not None:
            plan = finish_plan(plan, self.glance, self.recreated, plan_now)
        plan.notes += self.metadata_notes
        row = self.row
        if isinstance(new_data, PendingData) and self.rules.identical_upload(new_data.disk_format):
            plan.notes.append(
                f"a {row['disk_format']} upload is kept byte for byte in _base: the run refuses "
                f"a file whose size is not {row.get('size')} or whose md5 is not "
                f"{row.get('checksum')}"
            )
        original = self.rules.original
        if isinstance(new_data, NewData) and original is not None:
            md5, source = original
            said = "the row's checksum" if source == "images.checksum" else f"the {source}"
            if md5 == new_data.digests.md5:
                plan.notes.append(
                    f"the new file is the original upload, byte for byte (md5 = {said})"
                )
            else:
                was = md5 if source == "images.checksum" else f"{md5} in {said}"
                plan.notes.append(
                    f"the new file's bytes are NEW, not the original upload's: md5 "
                    f"{new_data.digests.md5} (was {was}), size "
                    f"{new_data.digests.size} (was {row.get('size')})"
                )
        plan.notes += [
            f"WARNING: NEW BYTES accepted (--accept-new-bytes): {m}" for m in self.overridden
        ]
        return plan

    def run(
        self,
        *,
        dry_run: bool,
        yes: bool,
        command: str,
        confirm: Confirm | None,
        journal_dir: Path | None = None,
    ) -> Outcome:
        """plan -> produce -> place -> commit."""
        go = Go(dry_run, yes, command, confirm, journal_dir)
        store = self.store
        survivor = store.survivor()
        if survivor is not None:
            new_data = survivor.new_data
            if new_data is None and self.recreated is not None and store.digests is not None:
                # A re-created row: the request spec kept checksum and size, not the
                # multihash; the store's file (which matched them) gives all of them.
                new_data = NewData(store.digests, None, self.row["disk_format"])
            plan = self.plan(new_data, survivor.action)
            plan.notes += survivor.notes
            outcome = store.commit(plan, go)
            self.new_digests = store.digests
            outcome.extra["bytes"] = (
                self.rules.bytes_report(new_data)
                if new_data is not None
                else self.rules.unchanged_report()
            )
            outcome.extra.update(self.metadata_report(plan))
            return outcome
        source = self._source()
        try:
            action = store.action(source, self.target_format)
            if go.dry_run:
                if not store.queued:
                    action += "; hashes and sizes are computed from the new file"
                plan = self.plan(PendingData(self.target_format, self.algo), action)
                outcome = store.commit(plan, go)
                outcome.extra.update(self.metadata_report(plan))
                return outcome
            with store.staging() as staged:
                try:
                    with Display() as display:
                        new_data = source.produce(staged, self.target_format, self.algo, display)
                finally:
                    source.close()  # the ssh connection is not held while the rows change
                self.rules.check_new_bytes(new_data, source.label)
                self.new_digests = new_data.digests
                plan = self.plan(new_data, action)
                outcome = store.commit(plan, go, staged, new_data)
                outcome.extra["bytes"] = self.rules.bytes_report(new_data)
                outcome.extra.update(self.metadata_report(plan))
                return outcome
        finally:
            source.close()


def recover_image(
    settings: Settings,
    request: ImageRequest,
    *,
    dry_run: bool,
    yes: bool,
    command: str,
    confirm: Confirm | None,
    verify: bool | None = None,
) -> Outcome:
    """Recover, then (when the Glance API is configured, or ``verify`` says so) download the
    image through glanceclient exactly as Nova will, and fail loudly if that does not pass."""
    api_on = api.configured(settings)
    want_verify = api_on if verify is None else verify
    if want_verify and not api_on:
        raise ConfigError(
            "--verify downloads the image through the Glance API, which is not configured",
            hint="pass --glance-endpoint (and --os-token) or set OS_AUTH_URL; or --no-verify",
        )
    if request.via_api and not api_on:
        raise ConfigError(
            "--via-api uploads through the Glance API, which is not configured",
            hint="pass --glance-endpoint (and --os-token) or set OS_AUTH_URL",
        )
    glance_api = api.client(settings) if api_on and (want_verify or request.via_api) else None
    recovery = ImageRecovery(settings, request, glance_api)
    try:
        if glance_api is not None:
            api.preflight(
                glance_api,
                "--via-api needs the Glance API: check --glance-endpoint and the token (or OS_*)"
                if request.via_api
                else "check --glance-endpoint and the token (or OS_*), or pass --no-verify",
            )
        outcome = recovery.run(dry_run=dry_run, yes=yes, command=command, confirm=confirm)
        if recovery.recreated is not None:
            outcome.extra["recreated"] = recovery.recreated.report()
    finally:
        recovery.close()
    if outcome.status == "applied" and want_verify:
        assert outcome.journal is not None
        subject = f"the recovery of image {recovery.image_id}"
        try:
            checks = api.verify(
                glance_api, recovery.image_id, recovery.new_digests, restored_status(recovery.row)
            )
        except Exception as exc:
            # Any failure after COMMIT says so first (a bare API error once hid the commit).
            raise committed_failure(
                outcome.journal, "verifying it through the Glance API", exc, subject
            ) from exc
        outcome.extra["verify"] = [
            {"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks
        ]
        failed = [f"{c.name} ({c.detail})" for c in checks if not c.ok]
        if failed:
            raise committed_failure(
                outcome.journal,
                "the Glance verification",
                RecoverError("; ".join(failed)),
                subject,
            )
    return outcome
