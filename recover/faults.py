"""Fault injection for the reliability suite: ``RECOVER_FAULT_POINT=<name>`` kills the process
with SIGKILL when it reaches that point, exactly like ``kill -9`` at that moment.

Points: ``convert`` (qemu-img about to convert), ``staged`` (file complete under its
temporary name), ``journaled`` (the journal is on disk, nothing else changed), ``placed``
(image file in place, transaction not committed), ``in-transaction`` (statements executed,
not committed), ``committed`` (committed, journal not yet marked); on an RBD store, after
each Ceph step (journal written, transaction open): ``rbd-restore``, ``rbd-import``,
``rbd-snap-create``, ``rbd-snap-protect``; a purged row re-created through the Glance API:
``api-created`` (``POST /v2/images`` done, nothing uploaded; ``committed`` there is the
upload done, the journal not yet recording Glance's rows). Unset in production: one
dictionary look-up.
"""

from __future__ import annotations

import os
import signal

ENV = "RECOVER_FAULT_POINT"
POINTS = ("convert", "staged", "journaled", "placed", "in-transaction", "committed",
          "api-created", "rbd-restore", "rbd-import", "rbd-snap-create",
          "rbd-snap-protect")  # fmt: skip


def point(name: str) -> None:
    """SIGKILL at ``name``; with ``name:stop``, SIGSTOP instead, so a test can act (say, KILL
    the database connection) and then SIGCONT the process."""
    wanted = os.environ.get(ENV)
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{name}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)
