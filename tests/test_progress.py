"""``recover.progress.Display``: click's progress bar on a real pty, nothing on a pipe."""

from __future__ import annotations

import os
import re

from recover.progress import Display
from tests.helpers import read_pty


def _read_all(fd: int) -> str:
    return re.sub(r"\x1b\[\?25[lh]", "", read_pty(fd).decode())  # cursor hide/show


def test_counted_work_on_a_terminal_shows_one_bar_per_phase() -> None:
    """The shape a probe of many hosts uses: a count of items, then a byte count."""
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8", closefd=True) as terminal, Display(terminal) as display:
        assert display.enabled
        display.phase("probing hosts", 3, unit="hosts")
        for _ in range(3):
            display.advance()
        display.phase("copying", 4 << 20)
        display(2 << 20)
        display(4 << 20)
    shown = _read_all(master)
    os.close(master)
    lines = shown.split("\r\n")
    assert lines[0].endswith(
        "\rprobing hosts  [####################################]  100%  3/3 hosts"
    )
    assert lines[0].startswith(
        "\rprobing hosts  [------------------------------------]    0%  0/3 hosts"
        "\rprobing hosts  [############------------------------]   33%  1/3 hosts"
    )
    assert lines[1].endswith("\rcopying  [####################################]  100%  4.0/4.0 MiB")
    assert "\rcopying  [##################------------------]   50%  2.0/4.0 MiB" in lines[1]
    assert lines[2:] == [""]  # each bar ended its own line, nothing after


def test_nothing_at_all_on_a_pipe() -> None:
    read, write = os.pipe()
    with open(write, "w", encoding="utf-8", closefd=True) as pipe, Display(pipe) as display:
        assert not display.enabled
        display.phase("probing hosts", 3, unit="hosts")
        display.advance()
        display(5)
    with open(read, "rb") as out:
        assert out.read() == b""
