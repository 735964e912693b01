"""glance_store's filesystem store: ``<datadir>/<image id>``, placed atomically (store.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recover import faults
from recover.config import Settings
from recover.errors import ConfigError, RecoverError, RefusedError
from recover.images.digest import Digests
from recover.images.rows import NewData
from recover.images.rules import ImageRules
from recover.images.sources import ImageSource
from recover.images.sources.store_file import StoreFile
from recover.images.store import Ownership, Staged, image_lock, remove_stale, store_ownership
from recover.images.stores import Go, Location, Survivor
from recover.plan import Plan
from recover.text import printable
from recover.write import Outcome


class FilesystemStore:
    queued = False

    def __init__(
        self, settings: Settings, image_id: str, row: dict[str, Any], rules: ImageRules,
        algo: str, reformat: bool,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.image_id = image_id
        self.row = row
        self.rules = rules
        self.algo = algo
        #: --disk-format: the file must be rewritten even if the store still holds one.
        self.reformat = reformat
        self.dir = Path(settings.store_dir.value)
        self.final = self.dir / image_id
        # With filesystem_store_datadirs the file of a pending_delete image may be in any of
        # the store's directories (glance_store writes each image into the best one of its
        # time): un-delete it where it is.
        for directory in settings.image_dirs()[1:]:
            if (Path(directory) / image_id).is_file() and not self.final.exists():
                self.dir = Path(directory)
                self.final = self.dir / image_id
                break
        self.digests: Digests | None = None
        self.created_file = False
        self.owner: Ownership | None = None

    def location(self) -> Location:
        return Location(f"file://{self.final}", "file", self.settings.glance_store_id,
                        self.settings.image_dirs())  # fmt: skip

    def _refuse_other_store_kind(self) -> None:
        """Glance's default store is not a filesystem (Swift, ...) and no filesystem
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

    def survivor(self) -> Survivor | None:
        self._refuse_other_store_kind()
        if not self.dir.is_dir():
            raise ConfigError(f"store directory {self.dir} does not exist", hint="pass --store-dir")
        existing = StoreFile(self.final, self.algo).digests() if self.final.exists() else None
        if existing is None or not self.rules.matches_row(existing) or self.reformat:
            return None
        self.digests = existing
        return Survivor(
            f"the store still holds {self.final}: un-delete only, hashes unchanged",
            None if self.row.get("checksum") else NewData(existing, None, self.row["disk_format"]),
        )

    def action(self, source: ImageSource, target_format: str) -> str:
        return source.describe(target_format)

    @contextmanager
    def staging(self) -> Iterator[Staged]:
        if not os.access(self.dir, os.W_OK):
            raise RecoverError(f"store directory {self.dir} is not writable")
        with image_lock(self.dir, self.image_id):
            remove_stale(self.dir, self.image_id)
            self.owner = store_ownership(self.dir)
            staged = Staged(self.dir, self.image_id)
            try:
                yield staged
            finally:
                staged.discard()

    def commit(
        self, plan: Plan, go: Go, staged: Staged | None = None, new_data: NewData | None = None
    ) -> Outcome:
        if staged is None or new_data is None:
            return go.execute(plan)
        assert self.owner is not None
        self.digests = new_data.digests
        staged.finish(self.owner)
        faults.point("staged")
        existing = StoreFile(self.final, self.algo).digests()
        if existing is not None and existing != new_data.digests:
            raise RefusedError(
                f"{self.final} already exists with other content (md5 {existing.md5})",
                hint="move it away if it is not this image, then re-run",
            )
        plan.files = [
            {
                "path": str(self.final),
                "md5": new_data.digests.md5,
                "size": new_data.digests.size,
                "created": existing is None,
            }
        ]
        return go.execute(
            plan,
            on_journaled=(lambda: self._place(staged)) if existing is None else None,
            on_failure=self._unplace,
        )

    def _place(self, staged: Staged) -> None:
        staged.place(self.final)
        self.created_file = True
        faults.point("placed")

    def _unplace(self) -> None:
        if self.created_file:
            self.final.unlink(missing_ok=True)
            self.created_file = False
