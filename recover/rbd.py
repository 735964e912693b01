"""Decode an RBD feature bitmask, as in librbd's ``Image uses unsupported features: 60``.

Bits from ceph ``src/include/rbd/features.h``. The incident's 60 is
exclusive-lock + object-map + fast-diff + deep-flatten: the defaults of
format-2 images, unknown to the old librbd on the compute node.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from recover.errors import RecoverError

FEATURES: tuple[tuple[int, str], ...] = (
    (1, "layering"),
    (2, "striping"),
    (4, "exclusive-lock"),
    (8, "object-map"),
    (16, "fast-diff"),
    (32, "deep-flatten"),
    (64, "journaling"),
    (128, "data-pool"),
    (256, "operations"),
    (512, "migrating"),
    (1024, "non-primary"),
    (2048, "dirty-cache"),
)
#: Features ``rbd feature disable`` can turn off on an existing image (rbd(8) man page).
DISABLEABLE = frozenset({"exclusive-lock", "object-map", "fast-diff", "deep-flatten", "journaling"})
_LOG_LINE = re.compile(r"features:\s*(0x[0-9a-fA-F]+|\d+)")


@dataclass(frozen=True)
class Decoded:
    value: int
    names: tuple[str, ...]
    unknown_bits: int

    @property
    def disableable(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in DISABLEABLE)


def parse_value(text: str) -> int:
    """``60``, ``0x3c``, or a whole librbd log line ending in ``features: 60``."""
    raw = text.strip()
    match = _LOG_LINE.search(raw)
    if match:
        raw = match.group(1)
    try:
        value = int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
    except ValueError:
        raise RecoverError(
            f"{text.strip()[:60]!r} is not an RBD feature value",
            hint="give a number such as 60 or 0x3c",
        ) from None
    if value < 0 or value >= 1 << 64:
        raise RecoverError(f"{value} is out of range for an RBD feature mask (0 to 2^64-1)")
    return value


def decode(value: int) -> Decoded:
    names = tuple(name for bit, name in FEATURES if value & bit)
    known = sum(bit for bit, _ in FEATURES)
    return Decoded(value=value, names=names, unknown_bits=value & ~known)


def render(decoded: Decoded, image: str | None = None) -> str:
    lines = [f"RBD features {decoded.value} (0x{decoded.value:x}):"]
    for bit, name in FEATURES:
        if decoded.value & bit:
            lines.append(f"  {bit:>5}  {name}")
    if decoded.unknown_bits:
        lines.append(f"  unknown bits: 0x{decoded.unknown_bits:x}")
    if not decoded.names:
        lines.append("  (none)")
    # Printed for pasting into a shell: quote what the operator typed.
    target = shlex.quote(image) if image else "<pool>/<image>"
    if decoded.disableable:
        lines += [
            "",
            "A librbd or kernel client older than the image refuses it",
            "('Image uses unsupported features'). Turn them off on the image:",
            f"  rbd feature disable {target} {' '.join(decoded.disableable)}",
        ]
    fixed = [n for n in decoded.names if n not in DISABLEABLE and n != "layering"]
    if fixed:
        lines.append(f"Cannot be disabled on an existing image: {', '.join(fixed)}.")
    lines += [
        "",
        "So new volumes get layering only, in ceph.conf on the cinder-volume nodes:",
        "  [client]",
        "  rbd_default_features = 1",
    ]
    return "\n".join(lines) + "\n"
