"""Image sources: where the bytes of a deleted image come from.

* :mod:`.store_file`: the filesystem store still holds the file (``pending_delete``);
* :mod:`.rbd`: the RBD image, or its entry in the RBD trash, still holds the bytes;
* :mod:`.base_file`: a local copy of a compute node's ``_base`` file (``--base-file``);
* :mod:`.compute`: ``_base/<sha1(id)>`` on a compute node over SSH (``--from-host``).

The first two are *survivors*: the store already has the bytes, nothing is copied. The
last two are *copies*, an :class:`ImageSource` each: whole, finished images checked
against the row's rules (:mod:`recover.images.rules`), converted to the row's format and
hashed in the pass that writes them.
"""

from __future__ import annotations

from typing import Protocol

from recover.images.rows import NewData
from recover.images.store import Staged
from recover.progress import Display


class ImageSource(Protocol):
    """Bytes that can be written as the image (a copy of them is made)."""

    #: Where the bytes are, for the plan and messages: ``/path on host``.
    label: str

    def describe(self, target_format: str) -> str:
        """One line for the plan: ``rebuild from X on Y (raw -> qcow2)``."""
        ...

    def produce(self, staged: Staged, target_format: str, algo: str, display: Display) -> NewData:
        """Write the bytes into ``staged`` in ``target_format``, hashed as they are written;
        each long step is shown on ``display`` (a terminal's progress bar, else nothing)."""
        ...

    def close(self) -> None:
        """Release the source's connection (``--from-host``: the one ssh connection)."""
        ...
