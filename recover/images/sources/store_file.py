"""The filesystem store still holds ``<store>/<image id>`` (``pending_delete``, DB-only)."""

from __future__ import annotations

from pathlib import Path

from recover.images.digest import Digests, hash_file


class StoreFile:
    """The file Glance left in the store: its hashes, read once."""

    def __init__(self, path: Path, algo: str) -> None:
        self.path = path
        self.algo = algo

    def digests(self) -> Digests | None:
        """The file's hashes, or None when there is no such file."""
        return hash_file(str(self.path), self.algo) if self.path.is_file() else None
