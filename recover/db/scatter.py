"""Run one step on every cell at once, each cell bounded by its own time budget.

nova's API does the same: ``nova/context.py`` ``scatter_gather_cells`` runs one green
thread per cell and gives up on a cell that has not answered within the timeout
(``CELL_TIMEOUT``, 60 s, ``scatter_gather_all_cells``), reporting it as
``did_not_respond_sentinel`` while the other cells' results are used.

Here each cell has one daemon thread for the whole scan, so a cell's steps run in order
on its one connection, and a cell stuck in a read never holds the process at exit: the
thread is abandoned (daemon) and PyMySQL's ``read_timeout`` (:data:`GRACE_S` past the
budget) ends the read.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: How much longer than its budget a blocked read may last before the driver ends it:
#: by then the scan has reported the cell, so the thread only has to end at all.
GRACE_S = 1.0

T = TypeVar("T")


class CellTimeout(Exception):
    """A cell used up its budget without answering."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s without an answer (--cell-timeout)")
        self.seconds = seconds


@dataclass
class _Job:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0


class _Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        #: Seconds of the budget used by the steps that answered.
        self.spent = 0.0
        #: The cell timed out: its thread may still be blocked; it gets no more work.
        self.lost = False
        self.current: _Job | None = None
        self.thread = threading.Thread(target=self._loop, name=f"recover-cell-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            start = time.monotonic()
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the scanning thread, which decides
                job.error = exc
            job.elapsed = time.monotonic() - start
            job.done.set()


class CellWorkers:
    """One thread per cell; :meth:`gather` runs a step on each and waits for all.

    The budget (``timeout``) is per cell and covers every step given to it: the time
    the cell spends answering, not the time the scan spends elsewhere between steps.
    """

    def __init__(self, names: Iterable[str], timeout: float) -> None:
        self.timeout = timeout
        self._workers: dict[str, _Worker] = {}
        for name in names:
            self._workers[name] = _Worker(name)

    def gather(self, jobs: Mapping[str, Callable[[], T]]) -> dict[str, T | BaseException]:
        """Each job's result, or the exception it raised, or :class:`CellTimeout`.

        The jobs run at once, one per cell; a cell that timed out before gets no job.
        Results come back in the order of ``jobs``.
        """
        started = time.monotonic()
        submitted: dict[str, _Job] = {}
        for name, fn in jobs.items():
            worker = self._workers[name]
            if not worker.lost:
                job = worker.current = _Job(fn)
                worker.jobs.put(job)
                submitted[name] = job
        results: dict[str, T | BaseException] = {}
        for name in jobs:
            worker = self._workers[name]
            job_or_none = submitted.get(name)
            if job_or_none is None:
                results[name] = CellTimeout(self.timeout)
                continue
            left = self.timeout - worker.spent - (time.monotonic() - started)
            if job_or_none.done.wait(max(left, 0.0)):
                worker.spent += job_or_none.elapsed
                error = job_or_none.error
                results[name] = error if error is not None else job_or_none.result
            else:
                worker.lost = True
                results[name] = CellTimeout(self.timeout)
        return results

    def idle(self, name: str) -> bool:
        """Not lost, and no step running: what it holds may be used from another thread."""
        worker = self._workers[name]
        return not worker.lost and (worker.current is None or worker.current.done.is_set())

    def close(self) -> None:
        """End the threads. Only idle ones are waited for: a lost one, or one still busy
        because the scan was interrupted (Ctrl-C in :meth:`gather`), is a daemon that its
        read_timeout ends."""
        for worker in self._workers.values():
            worker.jobs.put(None)
        for name, worker in self._workers.items():
            if self.idle(name):
                worker.thread.join()
