"""glance_store's RBD store: ``<pool>/<image id>`` with a protected ``snap`` (ceph-rbd.md §1).

Every Ceph action is a *step* of the plan: shown by ``--dry-run`` (a comment
beside the SQL), in the journal (``files``, key ``rbd``) before it happens,
done after the journal is on disk and before COMMIT, each followed by a
fault point (``rbd-<step>``), and reversed by ``undo`` or a failed run:

* ``restore`` (trash -> pool, under its name)   <-> ``rbd trash mv``
* ``import`` (rebuild, glance_store's layout)    <-> ``rbd rm``
* ``snap-create``                                <-> ``rbd snap rm``
* ``snap-protect``                               <-> ``rbd snap unprotect``

Before COMMIT the bytes of ``<pool>/<id>@snap`` are read back: the row's size,
md5 and multihash (the bytes that came back), or the new file's (a rebuild).
The run holds the image's rows ``FOR UPDATE`` meanwhile, so of two runs on one
image the second waits, then finds the rows changed and refuses.
Never read from Nova's ``vms/<uuid>_disk``: that is the guest's disk, not the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from recover import faults, journal
from recover.config import Settings
from recover.errors import RecoverError, RefusedError
from recover.images.ceph import (
    GLANCE_CHUNK_MIB,
    SNAP_NAME,
    CephClient,
    CephError,
    RbdLocation,
    check_image_id,
    check_pool,
    check_rbd_id,
)
from recover.images.digest import Digests
from recover.images.rows import NewData
from recover.images.rules import ImageRules
from recover.images.sources import ImageSource
from recover.images.sources.rbd import RbdState, probe
from recover.images.store import Staged
from recover.images.stores import Go, Location, Survivor
from recover.plan import Plan
from recover.write import Outcome


def client(settings: Settings) -> CephClient:
    return CephClient(conf=settings.ceph_conf.value, user=settings.rbd_user.value)


class RbdStore:
    queued = False

    def __init__(
        self, ceph: CephClient, pool: str, image_id: str, rules: ImageRules, algo: str,
        store_id: str | None, old: RbdLocation | None,
    ) -> None:  # fmt: skip
        self.ceph = ceph
        self.pool = check_pool(pool)
        self.image_id = check_image_id(image_id)
        self.rules = rules
        self.algo = algo
        self.store_id = store_id
        self.old = old
        self.steps: list[dict[str, Any]] = []
        self.state: RbdState | None = None
        self.digests: Digests | None = None
        self._fsid: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.image_id}"

    def fsid(self) -> str:
        """The cluster's fsid (never all zeros); a location naming another cluster is refused."""
        if self._fsid is None:
            fsid = self.ceph.fsid()
            old = self.old
            if old is not None and old.fsid and not old.zero_fsid and old.fsid != fsid:
                raise RefusedError(
                    f"image {self.image_id}'s location names Ceph cluster {old.fsid}, but "
                    f"{self.ceph.conf} is cluster {fsid}",
                    hint="pass --ceph-conf of the cluster that holds Glance's images",
                )
            self._fsid = fsid
        return self._fsid

    def location(self) -> Location:
        uri = RbdLocation(self.image_id, self.fsid(), self.pool, SNAP_NAME).uri()
        return Location(uri, "rbd", self.store_id)

    def _step(self, kind: str, **extra: str) -> dict[str, Any]:
        return {"rbd": kind, "pool": self.pool, "image": self.image_id, **extra, "done": False}

    def survivor(self) -> Survivor | None:
        self.fsid()
        state = self.state = probe(self.ceph, self.pool, self.image_id)
        notes = []
        if self.old is not None and self.old.zero_fsid:
            notes.append(
                "the old location has the all-zero fsid glance_store once stored (librados "
                "answered too early); the new one has the cluster's"
            )
        if state.state == "gone":
            return None
        if state.state == "intact":
            digests = self.ceph.export_digests(self.pool, self.image_id, SNAP_NAME, self.algo)
            wrong = self.rules.mismatches(digests)
            if wrong:
                raise RefusedError(
                    f"{self.spec}@{SNAP_NAME} is not image {self.image_id}'s data "
                    f"({'; '.join(wrong)})",
                    hint="nothing was changed; inspect the RBD image",
                )
            self.digests = digests
            if not state.protected:
                self.steps = [self._step("snap-protect")]
            row = self.rules.row
            return Survivor(
                f"{self.spec}@{SNAP_NAME} is intact, its bytes the row's: un-delete the rows",
                None if row.get("checksum") else NewData(digests, None, row["disk_format"]),
                notes,
            )
        if state.state == "trash":
            assert state.trash_id is not None
            self.steps = [self._step("restore", trash_id=check_rbd_id(state.trash_id)),
                          self._step("snap-create"), self._step("snap-protect")]  # fmt: skip
            action = f"{self.spec} is in the RBD trash (id {state.trash_id}): restore it"
        else:
            self.steps = [self._step("snap-create"), self._step("snap-protect")]
            action = f"{self.spec} has no {SNAP_NAME}: re-create and protect it"
        notes.append(
            f"the bytes of {self.spec}@{SNAP_NAME} are read back before COMMIT: size, md5 and "
            f"{self.algo} must be the row's, else everything is put back"
        )
        return Survivor(action, None, notes)

    def action(self, source: ImageSource, target_format: str) -> str:
        self.steps = [self._step("import"), self._step("snap-create"),
                      self._step("snap-protect")]  # fmt: skip
        return f"{source.describe(target_format)} into {self.spec} ({self.spec} is gone)"

    @contextmanager
    def staging(self) -> Iterator[Staged]:
        work = journal.work_dir()
        # rbd import reads the bytes once and _read_back checks them: a local file
        # that already is the image need not be copied here first.
        staged = Staged(work, self.image_id, by_reference=True)
        try:
            yield staged
        finally:
            staged.discard()

    def describe(self, step: dict[str, Any]) -> str:
        kind, spec = step["rbd"], self.spec
        return {
            "restore": f"rbd trash restore --pool {self.pool} --image-id {step.get('trash_id')} "
            f"(back as {spec}; undo: rbd trash mv)",
            "import": f"rbd import into {spec}: {GLANCE_CHUNK_MIB} MiB objects, the client's "
            "default features, as glance_store writes it (undo: rbd rm)",
            "snap-create": f"rbd snap create {spec}@{SNAP_NAME} (undo: rbd snap rm)",
            "snap-protect": f"rbd snap protect {spec}@{SNAP_NAME} (undo: rbd snap unprotect)",
        }[kind]

    def commit(
        self, plan: Plan, go: Go, staged: Staged | None = None, new_data: NewData | None = None
    ) -> Outcome:
        plan.notes += [f"RBD step {n}: {self.describe(s)}" for n, s in enumerate(self.steps, 1)]
        if self.steps:
            plan.notes.append(
                "RBD steps run after the journal is written and before COMMIT; "
                "a failure puts them back"
            )
        plan.files = self.steps
        if go.dry_run:
            return go.execute(plan)
        expected = new_data.digests if new_data is not None else None
        if staged is not None:
            staged.close()
        done: list[dict[str, Any]] = []

        def place() -> None:
            for step in self.steps:
                self._do(step, staged)
                step["done"] = True
                done.append(step)
                faults.point(f"rbd-{step['rbd']}")
            self._read_back(expected)

        def unplace() -> None:
            for step in reversed(done):
                try:
                    reverse(self.ceph, step)
                except CephError:
                    continue  # the error that stopped the run says more; undo can retry
                step["reversed"] = True

        return go.execute(plan, on_journaled=place, on_failure=unplace)

    def _do(self, step: dict[str, Any], staged: Staged | None) -> None:
        kind, ceph = step["rbd"], self.ceph
        if kind == "restore":
            ceph.trash_restore(self.pool, step["trash_id"], self.image_id)
        elif kind == "import":
            assert staged is not None
            ceph.import_image(self.pool, self.image_id, staged.data_path)
        elif kind == "snap-create":
            ceph.snap_create(self.pool, self.image_id)
        elif kind == "snap-protect":
            ceph.snap_protect(self.pool, self.image_id)

    def _read_back(self, expected: Digests | None) -> None:
        digests = self.ceph.export_digests(self.pool, self.image_id, SNAP_NAME, self.algo)
        if expected is not None:
            if digests != expected:
                raise RecoverError(
                    f"the bytes read back from {self.spec}@{SNAP_NAME} are not the ones "
                    f"written (md5 {digests.md5}, {digests.size} bytes; wrote {expected.md5}, "
                    f"{expected.size} bytes); everything is put back"
                )
        else:
            wrong = self.rules.mismatches(digests)
            if wrong:
                raise RefusedError(
                    f"the bytes of {self.spec}@{SNAP_NAME} are not image {self.image_id}'s "
                    f"({'; '.join(wrong)}); everything is put back",
                    hint="nothing was changed; if a recover run was killed while importing it, "
                    "`recover undo` of that run's journal removes what it left",
                )
        self.digests = digests


def _has_snap(ceph: CephClient, pool: str, image: str) -> tuple[bool, bool]:
    """(``snap`` exists in the user namespace, it is protected); (False, False) if no image."""
    try:
        snaps = ceph.snaps(pool, image)
    except CephError:
        return False, False
    ours = [s for s in snaps if s.namespace == "user" and s.name == SNAP_NAME]
    return bool(ours), bool(ours and ours[0].protected)


def reverse(ceph: CephClient, step: dict[str, Any]) -> str | None:
    """Undo one step if its effect is there (each checked first: steps are not idempotent);
    what was done, or None when there was nothing to undo."""
    pool, image = check_pool(str(step.get("pool"))), check_image_id(str(step.get("image")))
    kind = step.get("rbd")
    spec = f"{pool}/{image}"
    if kind == "snap-protect":
        exists, protected = _has_snap(ceph, pool, image)
        if protected:
            ceph.snap_unprotect(pool, image)
            return f"unprotected {spec}@{SNAP_NAME}"
    elif kind == "snap-create":
        exists, protected = _has_snap(ceph, pool, image)
        if exists:
            if protected:
                ceph.snap_unprotect(pool, image)
            ceph.snap_remove(pool, image)
            return f"removed {spec}@{SNAP_NAME}"
    elif kind == "import":
        if ceph.exists(pool, image):
            ceph.remove(pool, image)
            return f"removed {spec}"
    elif kind == "restore":
        if ceph.exists(pool, image):
            ceph.trash_move(pool, image)
            return f"moved {spec} back to the RBD trash"
    else:
        raise RefusedError(f"the journal names an unknown RBD step {str(kind)[:40]!r}")
    return None


def undo_steps(settings: Settings, plan: Plan) -> tuple[list[str], list[str]]:
    """Reverse the RBD steps a journal recorded, newest first: (what was done, problems).

    Only steps on the journal's own image (its subject) in a valid pool are touched:
    a journal is a file anyone with access could edit.
    """
    steps = [s for s in plan.files if "rbd" in s and not s.get("reversed")]
    if not steps:
        return [], []
    image_id = str(plan.subject.get("id", ""))
    ceph = client(settings)
    done, problems = [], []
    for step in reversed(steps):
        if str(step.get("image")) != image_id:
            problems.append(f"RBD step on {str(step.get('image'))[:60]!r}, not {image_id}: left")
            continue
        try:
            what = reverse(ceph, step)
        except RecoverError as exc:
            problems.append(str(exc))
            break  # later steps depend on this one (a snapshot blocks the trash move)
        if what:
            done.append(what)
    return done, problems
