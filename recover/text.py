"""Text from databases is untrusted: make it safe to print on one line.

Names of images and flavors are set by any tenant; a newline in one must not
start a new SQL statement in a ``--dry-run`` script or forge a report line, and
an escape sequence must not reach the operator's terminal.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
