"""Image stores: where a recovered image's bytes live, and how they get there.

* :mod:`.filesystem`: glance_store's filesystem store (``<datadir>/<image id>``);
* :mod:`.rbd`: glance_store's RBD store (``<pool>/<image id>@snap``);
* :mod:`.glance_api`: Glance itself, through an API upload (any backend).

:mod:`recover.images.recovery` asks a store what it still holds
(:meth:`ImageStore.survivor`), else has a source write new bytes into
:meth:`ImageStore.staging`, then lets the store :meth:`~ImageStore.commit` the plan:
journal, place the bytes, check them, COMMIT the rows.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from recover.images.digest import Digests
from recover.images.rows import NewData
from recover.images.sources import ImageSource
from recover.images.store import Staged
from recover.plan import Plan
from recover.write import Confirm, Outcome, execute


@dataclass
class Go:
    """How to carry out a plan: the options of this command line (``write.execute``)."""

    dry_run: bool
    yes: bool
    command: str
    confirm: Confirm | None
    journal_dir: Path | None = None

    def execute(self, plan: Plan, **hooks: Any) -> Outcome:
        if self.dry_run:
            return execute(plan, dry_run=True, yes=self.yes, command=self.command,
                           confirm=self.confirm)  # fmt: skip
        return execute(plan, dry_run=False, yes=self.yes, command=self.command,
                       confirm=self.confirm, journal_dir=self.journal_dir, **hooks)  # fmt: skip


@dataclass(frozen=True)
class Location:
    """The image's location in a store: its URL, and how to tell that store's rows."""

    uri: str
    #: ``file`` or ``rbd``: the scheme of the store's location rows.
    kind: str = "file"
    #: Multi-store: the backend id that goes into ``meta_data``.
    store_id: str | None = None
    #: A filesystem store's directories (a row without a store id is one of them by its path).
    dirs: tuple[str, ...] = ()


@dataclass
class Survivor:
    """Bytes of the image the store still holds: the rows come back pointing at them."""

    #: The first line of the plan: what the store holds and what bringing it back takes.
    action: str
    #: For the plan: new integrity columns (a row that had none), or None to keep the row's.
    new_data: NewData | None = None
    notes: list[str] = field(default_factory=list)


class ImageStore(Protocol):
    #: The rows go to ``queued`` and Glance itself writes the bytes (an API upload).
    queued: bool
    #: The hashes of the bytes the store holds for the image once placed (None: not known yet).
    digests: Digests | None

    def location(self) -> Location:
        """The location row the image gets (``file://...``, ``rbd://...``)."""
        ...

    def survivor(self) -> Survivor | None:
        """What the store still holds of this image (read-only), or None: a source is needed."""
        ...

    def action(self, source: ImageSource, target_format: str) -> str:
        """The first line of the plan of writing ``source``'s bytes into this store."""
        ...

    def staging(self) -> AbstractContextManager[Staged]:
        """A private file to write new bytes into (and whatever lock the store needs)."""
        ...

    def commit(
        self, plan: Plan, go: Go, staged: Staged | None = None, new_data: NewData | None = None
    ) -> Outcome:
        """Carry out ``plan`` (``go.dry_run``: render it only) with the bytes placed, in the
        survivor's case (``staged`` None) brought back, and checked before COMMIT."""
        ...
