"""One progress display on stderr for long work, shown only when stderr is a terminal.

Built on click's own ``click.progressbar`` (its redrawing, terminal width, ETA), one bar
at a time: a new :meth:`Display.phase` ends the previous bar's line first, so the
operator sees one display, never two bars fighting over one line. On a pipe, a file or
a cron job's mail nothing at all is written (click itself would still print each label
once), and stdout is never touched: the report there stays exactly as without a
terminal.

    with Display() as progress:
        progress.phase("copying", total=size)        # bytes
        progress(done)                               # position, any number of times
        progress.phase("probing hosts", total=30, unit="hosts")
        progress.advance()                           # one more host done
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TextIO

import click

MIB = 1024 * 1024


def _nothing() -> Iterator[None]:
    """An iterable without a length: click draws a bar of unknown length (no percentage)."""
    yield from ()


class Display:
    """The progress display of one command; inert unless ``stream`` is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or closed
            self.enabled = False
        self._bar: Any = None
        self._unit = "bytes"
        self._total: int | None = None

    def phase(self, label: str, total: int | None = None, unit: str = "bytes") -> None:
        """Start a new bar (ending the current one): ``total`` units, or unknown."""
        self.close()
        if not self.enabled:
            return
        self._unit, self._total = unit, total
        if total is None:
            bar = click.progressbar(_nothing(), label=label, file=self.stream,
                                    show_eta=False, item_show_func=self._shown)  # fmt: skip
        else:
            bar = click.progressbar(length=total, label=label, file=self.stream,
                                    show_percent=True, item_show_func=self._shown)  # fmt: skip
        self._bar = bar
        bar.__enter__()  # draws it at 0

    def _shown(self, _item: object) -> str | None:
        if self._bar is None:
            return None
        done = self._bar.pos
        if self._unit != "bytes":
            of = f"/{self._total}" if self._total is not None else ""
            return f"{done}{of} {self._unit}"
        of = f"/{self._total / MIB:.1f}" if self._total is not None else ""
        return f"{done / MIB:.1f}{of} MiB"

    def __call__(self, done: int) -> None:
        """The current bar is at ``done`` units (a ``recover.images.digest.Progress``)."""
        bar = self._bar
        if bar is not None and done != bar.pos:
            bar.update(done - bar.pos)

    def advance(self, steps: int = 1) -> None:
        """``steps`` more units done."""
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        """End the current bar's line (the next output starts on a fresh line)."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.__exit__(None, None, None)

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
