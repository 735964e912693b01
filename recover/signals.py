"""Ctrl-C and SIGTERM at any moment: the old state (or the new one after COMMIT, said so).

``install`` (the command line calls it once) makes SIGINT raise ``KeyboardInterrupt`` and
SIGTERM raise :class:`Terminated`, so both unwind through the same ``finally`` blocks and
``on_failure`` hooks as any error: the open transaction rolls back, a staged or placed
file is removed, qemu-img and ssh children are killed (``subprocess.run`` and
``SshTransport.open_read`` kill their child on any exception), the journal is marked.
Python's own SIGTERM action ends the process at once, without any of that.

Only the first signal interrupts. Later ones, during that clean-up, are ignored (a second
Ctrl-C must not cut a clean-up short and leave the placed file or an ``applying`` journal
behind); the clean-up is short (unlink, rollback, one journal rewrite, one ``ssh rm``), and
SIGKILL still ends it. A signal during the COMMIT itself waits until
the server has answered (:func:`deferred`): interrupting the client mid-COMMIT would leave
it not knowing whether the change was made.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

#: Exit status of a run ended by a signal: 128 + its number, as a shell reports it.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Terminated(BaseException):
    """SIGTERM arrived: like ``KeyboardInterrupt``, no ``except Exception`` catches it."""


_received: int | None = None  # the first signal, once it interrupted the run
_pending: int | None = None  # a signal that arrived inside a deferred section
_depth = 0
_committed: tuple[Path, str] | None = None  # journal and title of a change committed here


def _interrupt(signum: int) -> BaseException:
    # From now on both stay blocked (pending, never delivered), not only ignored by the
    # handler: the interpreter restores the default action of a Python handler as it exits
    # (a late Ctrl-C would then kill it after its clean-up: -2 instead of 130), and the
    # clean-up's own children (the ssh that removes the node's temporary file) inherit the
    # mask, so a second Ctrl-C on the terminal cannot kill them halfway either. (SIG_IGN
    # would do the same, but a signal already caught and not yet run by the interpreter is
    # then reported as "ignored due to race condition", a traceback on stderr.)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(EXIT_CODES))
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received, _pending
    if _received is not None:
        return  # already stopping: the clean-up finishes first
    if _depth > 0:
        _pending = _pending or signum
        return
    _received = signum
    raise _interrupt(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM (not when the parent made them ignored: ``nohup`` and
    friends mean it)."""
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


def received() -> int | None:
    """The signal that interrupted this run, if one did."""
    return _received


@contextmanager
def deferred() -> Iterator[None]:
    """A short section a signal must not cut (the COMMIT and its record): one that arrives
    meanwhile interrupts right after it."""
    global _depth, _pending, _received
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None and _received is None:
            _received, _pending = _pending, None
            raise _interrupt(_received)


def note_commit(journal: Path, title: str) -> None:
    """This process committed the change ``journal`` records (an interruption now says so)."""
    global _committed
    _committed = (journal, title)


def committed() -> tuple[Path, str] | None:
    """The journal and title of the change this run committed, if it did."""
    return _committed


def reset() -> None:
    """Forget everything (for tests that run several commands in one process)."""
    global _received, _pending, _depth, _committed
    _received = _pending = _committed = None
    _depth = 0
