"""``--base-file PATH``: a local copy of a compute node's ``_base`` file."""

from __future__ import annotations

from pathlib import Path

from recover.errors import NotFoundError
from recover.images.rules import ImageRules
from recover.images.sources.transfer import TransportSource
from recover.images.transport import LocalTransport


def base_file_source(path: Path, rules: ImageRules, image_id: str) -> TransportSource:
    transport = LocalTransport()
    if transport.stat_size(str(path)) is None:
        raise NotFoundError(f"--base-file {path} does not exist or is not a regular file")
    return TransportSource(transport, str(path), rules, image_id)
