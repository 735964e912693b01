"""``recover image``: bring a deleted Glance image back under its own id.

Sources, in order: the store still holds the file (``pending_delete``); a local
copy of the ``_base`` file (``--base-file``); ``_base/<sha1(id)>`` on a compute
node over SSH (``--from-host``). The bytes are converted to the row's
``disk_format``, hashed in the pass that writes them, placed atomically, and
the rows change in one transaction (the flavor's plan/journal mechanism).
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from recover import faults, journal
from recover.config import DEFAULT_INSTANCES_PATH, Settings
from recover.db.cloud import open_glance, open_nova
from recover.errors import ConfigError, NotFoundError, RecoverError, RefusedError
from recover.glance import GlanceReader
from recover.images import api, qemu
from recover.images.digest import DEFAULT_ALGO, Digests, Progress, copy_hashing, hash_file
from recover.images.rows import NewData, PendingData, image_plan, restored_status
from recover.images.store import Staged, image_lock, remove_stale, store_ownership
from recover.images.transport import LocalTransport, SshTransport, Transport
from recover.inventory import base_file_name
from recover.plan import Plan, RowChange, apply
from recover.text import printable
from recover.write import Confirm, Outcome, committed_failure, execute

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Glance disk_format -> the qemu-img format that writes it (qemu calls VHD "vpc").
WRITABLE = {
    "raw": "raw",
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vdi": "vdi",
    "vhd": "vpc",
    "vhdx": "vhdx",
}
RECOVERABLE_STATUSES = ("deleted", "pending_delete", "killed")
#: nova's fetch_to_raw writes these names while downloading/converting (nova/virt/images.py).
IN_PROGRESS_SUFFIXES = (".part", ".converted")
#: Uploads qemu-img reads as raw, which nova keeps byte for byte as ``_base``: fetch_to_raw
#: converts only what qemu-img does not call raw (nova/virt/images.py fetch_to_raw), and
#: treats iso and the AMI formats as raw (do_image_deep_inspection, nova 2024.1+).
RAW_UPLOADS = ("raw", "iso", "ami", "ari", "aki")
NEW_BYTES_HINT = (
    "use a complete copy of the _base file; --accept-new-bytes stores these bytes anyway, "
    "reported as NEW data"
)


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


def validate_uuid(text: str) -> str:
    value = text.strip().lower()
    if not UUID_RE.match(value):
        raise RecoverError(
            f"{text[:60]!r} is not an image UUID", hint="e.g. b3986e99-1988-43bb-b47c-0b34438bc189"
        )
    return value


def _progress(label: str, total: int | None) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    step = max((total or 0) // 100, 64 * 1024 * 1024)
    shown = [0]

    def report(done: int) -> None:
        if done - shown[0] >= step:
            shown[0] = done
            pct = f" {100 * done // total}%" if total else ""
            print(
                f"\r{label}: {done // (1024 * 1024)} MiB{pct}", end="", file=sys.stderr, flush=True
            )

    return report


class ImageRecovery:
    def __init__(self, settings: Settings, request: ImageRequest) -> None:
        self.settings = settings
        self.request = request
        self.image_id = validate_uuid(request.image_id)
        self.store = Path(settings.store_dir.value)
        self.final = self.store / self.image_id
        # With filesystem_store_datadirs the file of a pending_delete image may be in any of
        # the store's directories (glance_store writes each image into the best one of its
        # time): un-delete it where it is.
        for directory in settings.image_dirs()[1:]:
            if (Path(directory) / self.image_id).is_file() and not self.final.exists():
                self.store = Path(directory)
                self.final = self.store / self.image_id
                break
        self.glance: GlanceReader = open_glance(settings)
        self.row = self._row()
        self.target_format = self._target_format()
        self.algo = self.row.get("os_hash_algo") or settings.hashing_algorithm or DEFAULT_ALGO
        self.created_file = False
        #: Hashes of the bytes this run produced (for the API verification afterwards).
        self.new_digests: Digests | None = None
        #: Refusals --accept-new-bytes turned into warnings.
        self.overridden: list[str] = []

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
            raise NotFoundError(
                f"image {self.image_id} has no images row: it was purged "
                "(glance-manage db purge_images_table) or never existed",
                hint="recover cannot bring an image back under the same id without its row",
            )
        row = dict(found)
        if row["status"] == "active" and not row["deleted"]:
            raise RefusedError(f"image {self.image_id} is active: nothing to recover")
        # deleted=1 is what makes Glance hide a row (glance 33 _image_get filters on it),
        # whatever status it kept: hand edits and old releases leave active/deactivated ones.
        if row["status"] not in RECOVERABLE_STATUSES and not row["deleted"]:
            raise RefusedError(
                f"image {self.image_id} is {row['status']!r}, "
                "not deleted, pending_delete or killed",
                hint="recover only brings back deleted or failed images",
            )
        return row

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

    def _check_source(self, transport: Transport, path: str) -> qemu.ImageInfo | None:
        """Refuse a source that is not a whole, finished copy of this image.

        None when the node has no qemu-img: the bytes are then checked here on arrival.
        """
        if path.endswith(IN_PROGRESS_SUFFIXES):
            raise RefusedError(
                f"{path} is a file nova is still writing; use the finished _base file"
            )
        if not isinstance(transport, LocalTransport) and not transport.has_qemu_img():
            return None
        return self._check_info(transport.qemu_img_info(path), f"{path} on {transport.label}")

    def _check_info(self, info: qemu.ImageInfo, where: str) -> qemu.ImageInfo:
        if info.backing_file:
            raise RefusedError(
                f"{where} has a backing file ({info.backing_file}); it is not a whole image"
            )
        if info.corrupt:
            raise RefusedError(f"qemu-img reports {where} as corrupt")
        # min_disk is no size of the image: it is the root disk a flavor needs to boot it (GiB,
        # images are routinely smaller). The image's own size is the rule: converting between
        # formats keeps the virtual size exactly, so any other size is another disk.
        expected = self._expected_virtual_size()
        if expected is not None and info.virtual_size != expected[0]:
            size, basis = expected
            what = (
                "a partial copy (an scp or a download still running?)"
                if info.virtual_size < size
                else "a different or resized disk"
            )
            self._refuse_or_accept(
                f"{where} has a virtual size of {info.virtual_size} bytes, but image "
                f"{self.image_id} had {size} ({basis}): {what}, not this image's data"
            )
        return info

    def _expected_virtual_size(self) -> tuple[int, str] | None:
        """The virtual size the image had, and where that comes from; None when unknown."""
        row = self.row
        if row.get("virtual_size"):
            return int(row["virtual_size"]), "its row's virtual_size"
        if row.get("disk_format") in RAW_UPLOADS and row.get("size"):
            return int(row["size"]), f"the size of its {row['disk_format']} upload"
        return None

    def _identical_upload(self, disk_format: str) -> bool:
        """True when the new file must be the upload itself: a raw upload stored as raw."""
        return self.row.get("disk_format") in RAW_UPLOADS and disk_format == "raw"

    def _check_new_bytes(self, new_data: NewData, where: str) -> None:
        """A raw upload's ``_base`` is the upload, byte for byte: so must the new file be."""
        if not self._identical_upload(new_data.disk_format):
            return  # e.g. qcow2 from a raw _base: other bytes, by nature; the size rule applies
        row, found = self.row, new_data.digests
        wrong = []
        if row.get("size") is not None and row["size"] != found.size:
            wrong.append(f"size {found.size} bytes where the row says {row['size']}")
        if row.get("checksum") and row["checksum"] != found.md5:
            wrong.append(f"md5 {found.md5} where the row says {row['checksum']}")
        elif (
            row.get("os_hash_value")
            and row.get("os_hash_algo") == found.algo
            and row["os_hash_value"] != found.value
        ):
            wrong.append(f"another {found.algo} than the row's")
        if wrong:
            self._refuse_or_accept(
                f"the bytes from {where} are not image {self.image_id}'s {row['disk_format']} "
                f"upload ({'; '.join(wrong)}): nova keeps a raw upload byte for byte in _base, "
                "so this copy is partial or damaged"
            )

    def _refuse_or_accept(self, message: str) -> None:
        if not self.request.accept_new_bytes:
            raise RefusedError(message, hint=NEW_BYTES_HINT)
        self.overridden.append(message)

    def bytes_report(self, new_data: NewData) -> dict[str, Any]:
        """Whether the new file is the original upload, with both sets of values (the report)."""
        row, found = self.row, new_data.digests
        return {
            "identical": row["checksum"] == found.md5 if row.get("checksum") else None,
            "new_bytes_accepted": bool(self.overridden),
            "overridden": list(self.overridden),
            "original": {
                "checksum": row.get("checksum"),
                "size": row.get("size"),
                "virtual_size": row.get("virtual_size"),
            },
            "new": {
                "checksum": found.md5,
                "size": found.size,
                "virtual_size": new_data.virtual_size,
            },
        }

    # --- sources -------------------------------------------------------------------------

    def _base_names(self, spellings: Iterable[str] = ()) -> list[str]:
        """The names ``_base/<sha1>`` may have, most likely first.

        Nova names the file after ``instance.image_ref`` as the client spelled it (nova 34
        ``nova/virt/libvirt/driver.py`` ``_create_and_inject_local_root``:
        ``get_cache_fname(disk_images['image_id'])``), so an instance booted with an
        upper-case id has ``sha1(<UPPER>)``: Glance's id, the id as typed, the spellings the
        instances use, then upper case.
        """
        typed = self.request.image_id.strip()
        names = [self.image_id, typed, *sorted(spellings), self.image_id.upper()]
        return list(dict.fromkeys(base_file_name(n) for n in names))

    def _hosts(self) -> dict[str, set[str]]:
        """Compute hosts of live instances booted from this image (the inventory's list),
        each with the spellings of the id in those instances' ``image_ref``."""
        try:
            nova = open_nova(self.settings, allow_unreachable_cells=True)
        except ConfigError as exc:
            raise ConfigError(
                "--from-host without a host name needs the Nova databases to find the hosts",
                hint=f"name the host (--from-host HOST), or configure Nova ({exc.message})",
            ) from None
        try:
            hosts: dict[str, set[str]] = {}
            for cell in nova.cells:
                if cell.cell0:  # failed builds: never on a compute node
                    continue
                with cell.connect() as conn:
                    for ref in cell.instances_using(conn, [], [self.image_id]):
                        if ref.host and ref.image_id == self.image_id:
                            hosts.setdefault(ref.host, set()).add(str(ref.image_ref))
        finally:
            nova.dispose()
        return dict(sorted(hosts.items()))

    def _source(self) -> tuple[Transport, str, qemu.ImageInfo | None]:
        request = self.request
        if request.base_file is not None:
            transport: Transport = LocalTransport()
            path = str(request.base_file)
            if transport.stat_size(path) is None:
                raise NotFoundError(f"--base-file {path} does not exist or is not a regular file")
            return transport, path, self._check_source(transport, path)
        base_dir = posixpath.join(request.instances_path, "_base")
        hosts: dict[str, set[str]]
        if request.from_host:
            hosts = {request.from_host: set()}
        elif request.from_host == "":
            hosts = self._hosts()
            if not hosts:
                raise NotFoundError(
                    f"no live instance of image {self.image_id} runs on a compute host"
                )
        else:
            raise RefusedError(
                f"no source for image {self.image_id}: the store has no file for it",
                hint="pass --from-host HOST (a compute node running it), "
                "--from-host alone to try them all, "
                "or --base-file PATH",
            )
        misses = []
        for host, spellings in hosts.items():
            paths = [posixpath.join(base_dir, name) for name in self._base_names(spellings)]
            try:
                transport = SshTransport(host)
                for base in paths:
                    if transport.stat_size(base) is not None:
                        return transport, base, self._check_source(transport, base)
                misses.append(f"{host}: no {' nor '.join(paths)}")
            except RefusedError:
                raise
            except RecoverError as exc:
                if len(hosts) == 1:
                    raise
                misses.append(f"{host}: {exc}")
        raise NotFoundError(f"no compute node has the _base file: {'; '.join(misses)}")

    # --- data ----------------------------------------------------------------------------

    def _produce(
        self, staged: Staged, transport: Transport, path: str, info: qemu.ImageInfo | None
    ) -> NewData:
        target = WRITABLE[self.target_format]
        progress = _progress(f"image {self.image_id}", None)
        if info is None:
            digests = self._arrive_unchecked(staged, transport, path, target, progress)
        elif info.format == target:
            digests = copy_hashing_from(transport, path, staged, self.algo, progress)
        elif isinstance(transport, LocalTransport):
            staged.close()
            faults.point("convert")
            qemu.convert(path, info.format, staged.path, target)
            digests = hash_file(str(staged.path), self.algo, progress)
        else:
            digests = self._convert_remotely(staged, transport, path, info, target, progress)
        checked = qemu.info(staged.path, target)
        if checked.format != target:
            raise RecoverError(f"the converted file is {checked.format}, not {target}")
        return NewData(
            digests=digests, virtual_size=checked.virtual_size, disk_format=self.target_format
        )

    def _convert_remotely(
        self, staged: Staged, transport: Transport, path: str, info: qemu.ImageInfo, target: str,
        progress: Progress | None,
    ) -> Digests:  # fmt: skip
        """Convert next to _base on the compute node: only the compact image crosses the network."""
        directory = posixpath.dirname(path)
        size = transport.stat_size(path) or info.virtual_size
        if transport.free_bytes(directory) < size:
            raise RecoverError(
                f"not enough free space in {directory} on {transport.label} to convert "
                f"({size} bytes needed)"
            )
        remote_tmp = posixpath.join(directory, f".recover-tmp-{self.image_id}.{target}")
        try:
            faults.point("convert")
            transport.convert(path, info.format, remote_tmp, target)
            return copy_hashing_from(transport, remote_tmp, staged, self.algo, progress)
        finally:
            transport.remove(remote_tmp)

    def _arrive_unchecked(
        self, staged: Staged, transport: Transport, path: str, target: str,
        progress: Progress | None,
    ) -> Digests:  # fmt: skip
        """No qemu-img on the node: bring the bytes once, check them here, convert here."""
        digests = copy_hashing_from(transport, path, staged, self.algo, progress)
        info = self._check_info(qemu.info(staged.path), f"{path} from {transport.label}")
        if info.format == target:
            return digests
        source = Staged(self.store, f"{self.image_id}-src")
        try:
            source.close()
            staged.close()
            os.replace(staged.path, source.path)
            # qemu-img keeps the mode of a file it overwrites: never world-readable meanwhile.
            os.close(os.open(staged.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            qemu.convert(source.path, info.format, staged.path, target)
        finally:
            source.discard()
        return hash_file(str(staged.path), self.algo, progress)

    def _existing_file(self) -> Digests | None:
        return hash_file(str(self.final), self.algo) if self.final.is_file() else None

    def _matches_row(self, digests: Digests) -> bool:
        row = self.row
        if row.get("size") is not None and row["size"] != digests.size:
            return False
        if row.get("os_hash_value") and row["os_hash_value"] != digests.value:
            return False
        return not (row.get("checksum") and row["checksum"] != digests.md5)

    # --- the whole run -------------------------------------------------------------------

    def plan(
        self, new_data: NewData | PendingData | None, action: str, queued: bool = False
    ) -> Plan:
        plan = image_plan(
            self.glance,
            self.row,
            location_uri=f"file://{self.final}",
            new_data=new_data,
            store_id=self.settings.glance_store_id,
            now=datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0),
            action=action,
            queued_for_upload=queued,
            store_dirs=self.settings.image_dirs(),
        )
        row = self.row
        if isinstance(new_data, PendingData) and self._identical_upload(new_data.disk_format):
            plan.notes.append(
                f"a {row['disk_format']} upload is kept byte for byte in _base: the run refuses "
                f"a file whose size is not {row.get('size')} or whose md5 is not "
                f"{row.get('checksum')}"
            )
        if isinstance(new_data, NewData) and row.get("checksum"):
            if row["checksum"] == new_data.digests.md5:
                plan.notes.append(
                    "the new file is the original upload, byte for byte (md5 = the row's checksum)"
                )
            else:
                plan.notes.append(
                    f"the new file's bytes are NEW, not the original upload's: md5 "
                    f"{new_data.digests.md5} (was {row['checksum']}), size "
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
        self._refuse_other_store_kind()
        if not self.store.is_dir():
            raise ConfigError(
                f"store directory {self.store} does not exist", hint="pass --store-dir"
            )
        existing = self._existing_file() if self.final.exists() else None
        if existing is not None and self._matches_row(existing) and not self.request.disk_format:
            self.new_digests = existing
            plan = self.plan(
                None
                if self.row.get("checksum")
                else NewData(existing, None, self.row["disk_format"]),
                f"the store still holds {self.final}: un-delete only, hashes unchanged",
            )
            return execute(
                plan, dry_run=dry_run, yes=yes, command=command, confirm=confirm,
                journal_dir=journal_dir,
            )  # fmt: skip
        transport, path, info = self._source()
        if dry_run:
            plan = self.plan(
                PendingData(self.target_format, self.algo),
                f"rebuild from {path} on {transport.label} ({_fmt(info)} -> "
                f"{self.target_format}); hashes and sizes are computed from the new file",
            )
            return execute(plan, dry_run=True, yes=yes, command=command, confirm=confirm)
        if not os.access(self.store, os.W_OK):
            raise RecoverError(f"store directory {self.store} is not writable")
        with image_lock(self.store, self.image_id):
            remove_stale(self.store, self.image_id)
            owner = store_ownership(self.store)
            staged = Staged(self.store, self.image_id)
            try:
                new_data = self._produce(staged, transport, path, info)
                self._check_new_bytes(new_data, f"{path} on {transport.label}")
                self.new_digests = new_data.digests
                staged.finish(owner)
                faults.point("staged")
                existing = self._existing_file()
                if existing is not None and existing != new_data.digests:
                    raise RefusedError(
                        f"{self.final} already exists with other content (md5 {existing.md5})",
                        hint="move it away if it is not this image, then re-run",
                    )
                plan = self.plan(
                    new_data,
                    f"rebuild from {path} on {transport.label} "
                    f"({_fmt(info)} -> {self.target_format})",
                )
                plan.files = [
                    {
                        "path": str(self.final),
                        "md5": new_data.digests.md5,
                        "size": new_data.digests.size,
                        "created": existing is None,
                    }
                ]
                outcome = execute(
                    plan,
                    dry_run=False,
                    yes=yes,
                    command=command,
                    confirm=confirm,
                    on_journaled=(lambda: self._place(staged)) if existing is None else None,
                    on_failure=self._unplace,
                    journal_dir=journal_dir,
                )
                outcome.extra["bytes"] = self.bytes_report(new_data)
                return outcome
            finally:
                staged.discard()

    def _refuse_other_store_kind(self) -> None:
        """Glance's default store is not a filesystem (RBD, Swift, ...) and no filesystem
        directory was named: only Glance itself can write that store."""
        kind = self.settings.glance_store_kind
        if kind in (None, "file") or self.settings.store_dir.source != "default":
            return
        raise ConfigError(
            f"Glance's default store is of type {printable(kind)!r}, not a filesystem store: "
            "recover writes only filesystem stores itself",
            hint="pass --via-api (with --glance-endpoint and --os-token, or OS_AUTH_URL) so that "
            "Glance uploads the image into its own store",
        )

    def run_via_api(
        self,
        glance_api: Any,
        *,
        dry_run: bool,
        yes: bool,
        command: str,
        confirm: Confirm | None,
        journal_dir: Path | None = None,
    ) -> Outcome:
        """Queue the row, then let Glance itself write the bytes to whatever store it uses.

        The integrity columns go NULL first, else Glance rejects different bytes
        (glance 33 ``glance/location.py`` ``_verify_uploaded_data``); a failed upload
        puts the rows back and removes the file Glance may have left in a file store,
        which would make every later upload fail with ``Duplicate`` (real-glance.md §5).
        """
        transport, path, info = self._source()
        label = f"upload through the Glance API from {path} on {transport.label}"
        if dry_run:
            plan = self.plan(PendingData(self.target_format, self.algo), label, queued=True)
            return execute(plan, dry_run=True, yes=yes, command=command, confirm=confirm)
        work = (
            journal.journal_dir().parent / "tmp"
            if journal_dir is None
            else journal_dir.parent / "tmp"
        )
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        store_file_before = self.final.exists()
        staged = Staged(work, self.image_id)
        try:
            new_data = self._produce(staged, transport, path, info)
            self._check_new_bytes(new_data, f"{path} on {transport.label}")
            staged.close()
            plan = self.plan(new_data, label, queued=True)
            outcome = execute(plan, dry_run=False, yes=yes, command=command, confirm=confirm,
                              journal_dir=journal_dir)  # fmt: skip
            assert outcome.journal is not None
            subject = f"image {self.image_id} set to queued for the upload"
            try:
                with open(staged.path, "rb") as data:
                    api.upload(glance_api, self.image_id, data, new_data.digests.size)
                if restored_status(self.row) == "deactivated":
                    # An upload makes it active; the admin's deactivation stands (rows.py).
                    api.deactivate(glance_api, self.image_id)
            except BaseException as failed:
                try:
                    self._undo_queue(plan, outcome.journal, command, store_file_before)
                except Exception as exc:
                    raise committed_failure(
                        outcome.journal,
                        f"the upload ({failed}) and then putting the rows back",
                        exc,
                        subject,
                    ) from exc
                raise
            self.new_digests = new_data.digests
            try:
                self._record_upload(plan, outcome.journal, command, store_file_before)
            except Exception as exc:
                raise committed_failure(
                    outcome.journal,
                    "recording what Glance wrote in the journal (undo will leave Glance's new "
                    "location row and file)",
                    exc,
                    f"the recovery of image {self.image_id}",
                ) from exc
            outcome.extra["uploaded"] = {"md5": new_data.digests.md5, "size": new_data.digests.size}
            outcome.extra["bytes"] = self.bytes_report(new_data)
            return outcome
        finally:
            staged.discard()

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

    def _undo_queue(self, plan: Plan, path: Path, command: str, store_file_before: bool) -> None:
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
        if not store_file_before and self.final.exists():
            self.final.unlink()  # Glance's leftover would make every later upload a Duplicate
        journal.write(path, plan, "rolled-back", command)

    def _record_upload(self, plan: Plan, path: Path, command: str, store_file_before: bool) -> None:
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
        if not store_file_before and self.final.is_file():
            md5 = self.new_digests.md5 if self.new_digests else None
            plan.files = [{"path": str(self.final), "size": self.final.stat().st_size,
                           "md5": md5, "created": True, "by": "glance"}]  # fmt: skip
        journal.write(path, plan, "committed", command)

    def _place(self, staged: Staged) -> None:
        staged.place(self.final)
        self.created_file = True
        faults.point("placed")

    def _unplace(self) -> None:
        if self.created_file:
            self.final.unlink(missing_ok=True)
            self.created_file = False


def _fmt(info: qemu.ImageInfo | None) -> str:
    return info.format if info is not None else "format checked on arrival"


def copy_hashing_from(
    transport: Transport, path: str, staged: Staged, algo: str, progress: Progress | None
) -> Digests:
    with transport.open_read(path) as stream:
        return copy_hashing(stream, staged.fd, algo, progress)


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
    recovery = ImageRecovery(settings, request)
    try:
        if glance_api is not None:
            api.preflight(
                glance_api,
                "--via-api needs the Glance API: check --glance-endpoint and the token (or OS_*)"
                if request.via_api
                else "check --glance-endpoint and the token (or OS_*), or pass --no-verify",
            )
        if request.via_api:
            outcome = recovery.run_via_api(
                glance_api, dry_run=dry_run, yes=yes, command=command, confirm=confirm
            )
        else:
            outcome = recovery.run(dry_run=dry_run, yes=yes, command=command, confirm=confirm)
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
