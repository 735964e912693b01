"""The one wrapper around the Ceph client: the ``rbd`` and ``ceph`` commands of ceph-common.

ceph-common is on every controller whose Glance uses RBD, and ``recover``
installed by pip into a plain venv must work, so there are no Python
``rados``/``rbd`` bindings here (they are not on PyPI) and no new dependency.
As the qemu-img wrapper (:mod:`recover.images.qemu`): argument lists only
(never a shell), names passed as ``--pool``/``--image``/``--snap`` options (never
as ``pool/image@snap`` specs the CLI would parse), ``--format json``,
``LC_ALL=C``, a timeout, and the CLI's error mapped to one domain error line.

Every pool, image and snapshot name is validated before it reaches a command:
they come from ``image_locations.value`` in a database, i.e. they are data.
Credentials are ``--id`` (the client of ceph.conf whose keyring Ceph finds
itself) and, if given, ``--keyring``; the key is never on a command line, and
anything shaped like a cephx key is masked out of every message.

Layout and URIs are glance_store's (openstack/glance_store
``glance_store/_drivers/rbd.py``, 5.7.0): image ``<pool>/<image id>``, object
size ``rbd_store_chunk_size`` MiB (default 8 -> order 23, ``add``),
features ``rbd_default_features`` of the client's ceph.conf
(``_create_image``: what ``rbd import`` also uses when given none), a
protected snapshot ``snap`` (``DEFAULT_SNAPNAME``), location
``rbd://<fsid>/<pool>/<image>/<snap>`` (``StoreLocation.get_uri``/``parse_uri``).
CLI behaviour (messages, exit codes, JSON shapes) as measured on Ceph 16.2.15 (Debian 12)
and pinned by tests/test_ceph.py against a real cluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from recover.errors import NotFoundError, RecoverError, RefusedError
from recover.images.digest import DEFAULT_ALGO, Digests, Hasher
from recover.secrets import scrub
from recover.text import printable

RBD = "rbd"
CEPH = "ceph"
#: Seconds for a metadata command (info, snap ls, trash ls, snap create ...).
QUERY_TIMEOUT_S = 120.0
#: Seconds for an import or export (a few GiB at tens of MB/s, with room).
DATA_TIMEOUT_S = 6 * 3600.0
#: Seconds to reach the monitors before a command gives up (``client_mount_timeout``).
CONNECT_TIMEOUT_S = 30
#: glance_store ``DEFAULT_SNAPNAME``: the protected snapshot every Glance RBD image has.
SNAP_NAME = "snap"
#: glance_store ``rbd_store_chunk_size`` default, MiB; ``add`` makes it the object size.
GLANCE_CHUNK_MIB = 8
#: log2 of that object size: what ``rbd info`` reports as ``order`` (23 = 8 MiB).
GLANCE_ORDER = 23
ZERO_FSID = "00000000-0000-0000-0000-000000000000"
#: Read/write size of import and export streams.
CHUNK = 4 * 1024 * 1024
#: Chunks an export reads ahead of its consumer (hashing), and the pipe size asked for.
READ_AHEAD = 4
PIPE_SIZE = 1024 * 1024

# Ceph accepts almost any pool name; a name Glance or Nova is configured with is a plain
# word. Refusing the rest keeps option-looking ("-x"), spec-looking ("a/b", "a@b") and
# shell-looking names out of every command and message.
_POOL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# RBD image ids (``rbd info`` "id", trash entries) are hex strings.
_RBD_ID_RE = re.compile(r"^[0-9a-f]{1,64}$")
# A cephx secret: base64 of a 28-byte key blob, which always starts with type 1 (AES): "AQ".
_CEPHX_KEY_RE = re.compile(r"AQ[A-Za-z0-9+/]{36}==")
# "2026-11-28T07:30:10.125+0000 7fa9eef136c0 -1 " in front of librados/librbd log lines.
_LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ [0-9a-f]+ +-?\d+ ")
_LOG_STAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d{4} [0-9a-f]{6,} ")
# A whole log line of librados/librbd, wherever it starts (see CephClient._error).
_LOG_LINE_RE = re.compile(_LOG_STAMP_RE.pattern + r"[^\n]*(?:\n|$)")
_ERRNO_RE = re.compile(r"\((\d+)\) |\[errno (\d+)\]")
_KEYRING_RE = re.compile(r"unable to find a keyring on (\S+?):? \(2\)")
_BAD_KEYRING_RE = re.compile(r"auth: failed to load (\S+?): \(")

EPERM, ENOENT, EACCES, EEXIST, EBUSY, ENOTEMPTY, ETIMEDOUT = 1, 2, 13, 17, 16, 39, 110


class CephError(RecoverError):
    """The Ceph client is missing, failed, or answered something unexpected.

    ``errno`` is the error number the CLI printed (``(16) Device or resource
    busy`` -> 16), or None.
    """

    def __init__(self, message: str, *, hint: str | None = None, errno: int | None = None):
        super().__init__(mask_keys(message), hint=mask_keys(hint) if hint else None)
        self.errno = errno


class CephNotFoundError(CephError, NotFoundError):
    """The pool, image, snapshot or trash entry does not exist (ENOENT)."""


class CephBusyError(CephError):
    """The object is in use: a snapshot with children, an image with snapshots (EBUSY)."""


class CephExistsError(CephError):
    """The image or snapshot already exists (EEXIST): another run may have won."""


class CephAccessError(CephError):
    """The client could not connect or is not allowed to do this (EPERM/EACCES/ETIMEDOUT)."""


class CephNameError(CephError, RefusedError):
    """A pool, image, snapshot name or an rbd:// location is not acceptable."""


def mask_keys(text: str) -> str:
    """``text`` with every cephx key and every known secret masked (``***``)."""
    return scrub(_CEPHX_KEY_RE.sub("***", text))


def _shown(value: object) -> str:
    # Untrusted text in a one-line message: escaped, bounded, no key.
    return mask_keys(repr(str(value)[:160]))


# --- names ------------------------------------------------------------------------------------


def check_pool(pool: str) -> str:
    """``pool`` if it is a plain Ceph pool name, else :class:`CephNameError`."""
    if not isinstance(pool, str) or not _POOL_RE.match(pool):
        raise CephNameError(
            f"RBD pool name {_shown(pool)} is not acceptable",
            hint="a pool name is letters, digits, '_', '.', '-', not starting with '.' or '-'",
        )
    return pool


def check_image(image: str) -> str:
    """``image`` if it is a plain RBD image name (``<uuid>``, ``<uuid>_disk`` ...)."""
    if not isinstance(image, str) or not _NAME_RE.match(image):
        raise CephNameError(
            f"RBD image name {_shown(image)} is not acceptable",
            hint="an image name is letters, digits, '_', '.', '-', not starting with '.' or '-'",
        )
    return image


def check_image_id(image_id: str) -> str:
    """``image_id`` if it is a UUID, as every Glance image id (and so RBD image name) is."""
    if not isinstance(image_id, str) or not _UUID_RE.match(image_id):
        raise CephNameError(f"{_shown(image_id)} is not a Glance image id (a UUID)")
    return image_id


def check_snap(snap: str) -> str:
    """``snap`` if it is a plain snapshot name (Glance's is always ``snap``)."""
    if not isinstance(snap, str) or not _NAME_RE.match(snap):
        raise CephNameError(f"RBD snapshot name {_shown(snap)} is not acceptable")
    return snap


def check_rbd_id(rbd_id: str) -> str:
    """``rbd_id`` if it is an RBD internal image id (hex, as ``rbd trash ls`` prints it)."""
    if not isinstance(rbd_id, str) or not _RBD_ID_RE.match(rbd_id):
        raise CephNameError(f"RBD image id {_shown(rbd_id)} is not acceptable")
    return rbd_id


def check_user(user: str) -> str:
    """The cephx client id for ``--id``: ``glance`` (``client.glance`` is accepted too)."""
    name = user[len("client.") :] if isinstance(user, str) and user.startswith("client.") else user
    if not isinstance(name, str) or not _POOL_RE.match(name):
        raise CephNameError(f"Ceph client id {_shown(user)} is not acceptable")
    return name


# --- rbd:// locations -------------------------------------------------------------------------


@dataclass(frozen=True)
class RbdLocation:
    """A parsed ``rbd://`` location: ``fsid``/``pool``/``snapshot`` are None in the 1-part form."""

    image: str
    fsid: str | None = None
    pool: str | None = None
    snapshot: str | None = None

    @property
    def zero_fsid(self) -> bool:
        """True for the all-zero fsid glance_store stored when librados answered too early."""
        return self.fsid == ZERO_FSID

    def uri(self) -> str:
        """The location as glance_store writes it (``StoreLocation.get_uri``)."""
        if self.fsid and self.pool and self.snapshot:
            parts = (self.fsid, self.pool, self.image, self.snapshot)
            return "rbd://" + "/".join(urllib.parse.quote(p, safe="") for p in parts)
        return "rbd://" + urllib.parse.quote(self.image, safe="")


def parse_location(uri: str) -> RbdLocation:
    """Parse ``rbd://<fsid>/<pool>/<image>/<snap>`` (or legacy ``rbd://<image>``).

    Exactly glance_store's rules (``glance_store/_drivers/rbd.py``
    ``StoreLocation.parse_uri``): scheme ``rbd://``, then 1 or 4 ``/``-separated
    components, none empty, each url-unquoted. Then, since the parts name Ceph
    objects and come from a database: the fsid must be a UUID, the pool a plain
    pool name, the image a Glance image id (UUID) and the snapshot a plain name.
    ``rbd://x/images/../y/snap`` has 5 components and is refused as glance_store
    refuses it; ``..`` smuggled in quoted (``..%2Fy``) is refused as an image name.
    """
    prefix = "rbd://"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise CephNameError(f"RBD location {_shown(uri)} does not start with rbd://")
    pieces = uri[len(prefix) :].split("/")
    if len(pieces) not in (1, 4):
        raise CephNameError(
            f"RBD location {_shown(uri)} must have exactly 1 or 4 components, not {len(pieces)}"
        )
    if any(piece == "" for piece in pieces):
        raise CephNameError(f"RBD location {_shown(uri)} has an empty component")
    if len(pieces) == 1:
        return RbdLocation(image=check_image_id(urllib.parse.unquote(pieces[0])))
    fsid, pool, image, snap = (urllib.parse.unquote(piece) for piece in pieces)
    if not _UUID_RE.match(fsid):
        raise CephNameError(f"RBD location {_shown(uri)}: fsid {_shown(fsid)} is not a UUID")
    return RbdLocation(
        image=check_image_id(image), fsid=fsid.lower(), pool=check_pool(pool),
        snapshot=check_snap(snap),
    )  # fmt: skip


# --- what the CLI reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class RbdParent:
    pool: str
    image: str
    image_id: str | None
    snapshot: str
    #: The parent image is in the RBD trash (clone v2 child of a deleted Glance image).
    trash: bool


@dataclass(frozen=True)
class RbdInfo:
    name: str
    id: str
    size: int
    order: int
    object_size: int
    features: tuple[str, ...]
    op_features: tuple[str, ...]
    snapshot_count: int
    parent: RbdParent | None
    #: For ``info`` of a snapshot: is it protected; None for an image.
    protected: bool | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RbdInfo:
        parent = data.get("parent")
        protected = data.get("protected")
        return cls(
            name=str(data["name"]),
            id=str(data["id"]),
            size=int(data["size"]),
            order=int(data["order"]),
            object_size=int(data.get("object_size") or 1 << int(data["order"])),
            features=tuple(str(f) for f in data.get("features") or ()),
            op_features=tuple(str(f) for f in data.get("op_features") or ()),
            snapshot_count=int(data.get("snapshot_count") or 0),
            parent=RbdParent(
                pool=str(parent["pool"]),
                image=str(parent["image"]),
                image_id=str(parent["id"]) if parent.get("id") else None,
                snapshot=str(parent["snapshot"]),
                trash=bool(parent.get("trash", False)),
            )
            if parent
            else None,
            protected=None if protected is None else str(protected) == "true",
        )


@dataclass(frozen=True)
class RbdSnap:
    id: int
    name: str
    size: int
    protected: bool
    #: ``user`` for a normal snapshot; ``trash`` for one removed while clone v2 children
    #: still use it (renamed to a UUID; ``original_name`` is what it was called).
    namespace: str
    original_name: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RbdSnap:
        namespace = data.get("namespace") or {}
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            size=int(data["size"]),
            protected=str(data.get("protected")) == "true",
            namespace=str(namespace.get("type", "user")),
            original_name=namespace.get("original_name"),
        )


@dataclass(frozen=True)
class TrashEntry:
    #: The RBD image id (what ``trash restore`` takes); not the Glance id.
    id: str
    #: The image's name when it was trashed: the Glance image id for a Glance image.
    name: str
    #: ``USER`` (glance_store's ``trash_move``), ``MIRRORING``, ``MIGRATION``, ``REMOVING``,
    #: ``USER_PARENT``.
    source: str
    deleted_at: str
    status: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrashEntry:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            source=str(data.get("source", "")),
            deleted_at=str(data.get("deleted_at", "")),
            status=str(data.get("status", "")),
        )


@dataclass(frozen=True)
class RbdChild:
    pool: str
    image: str
    id: str | None
    #: The child itself is in the trash.
    trash: bool


@dataclass(frozen=True)
class RbdClone:
    """An image of a pool listed with its parent (``rbd ls -l``)."""

    pool: str
    image: str
    parent_pool: str
    parent_image: str
    parent_snapshot: str


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


# --- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CephClient:
    """One Ceph client identity: ``conf`` (ceph.conf), ``user`` (cephx id), ``keyring``.

    Every method runs one ``rbd``/``ceph`` command. None of them changes anything
    unless its name says so (``snap_create``, ``trash_restore`` ...). ``conf`` None
    means Ceph's default (``/etc/ceph/ceph.conf``, ``$CEPH_CONF``); ``user`` None
    means ``client.admin``, Ceph's own default.
    """

    conf: str | None = None
    user: str | None = None
    keyring: str | None = None
    timeout: float = QUERY_TIMEOUT_S
    data_timeout: float = DATA_TIMEOUT_S
    connect_timeout: int = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.user is not None:
            object.__setattr__(self, "user", check_user(self.user))
        for what, path in (("ceph.conf", self.conf), ("keyring", self.keyring)):
            if path is not None and (not isinstance(path, str) or path.startswith("-")):
                raise CephNameError(f"{what} path {_shown(path)} is not acceptable")

    # -- running commands ----------------------------------------------------------------------

    def _argv(self, tool: str, args: Sequence[str]) -> list[str]:
        binary = shutil.which(tool)
        if binary is None:
            raise CephError(
                f"the {tool} command is not installed",
                hint="install Ceph's client: apt-get install ceph-common",
            )
        argv = [binary]
        if self.conf is not None:
            argv += ["--conf", self.conf]
        if self.user is not None:
            argv += ["--id", self.user]
        if self.keyring is not None:
            argv += ["--keyring", self.keyring]
        if tool == CEPH:
            argv += ["--connect-timeout", str(self.connect_timeout)]
        else:
            argv += ["--client-mount-timeout", str(self.connect_timeout)]
        return [*argv, *args]

    def _error(self, tool: str, what: str, returncode: int, stderr: str) -> CephError:
        # rbd writes its message in pieces (`std::cerr << "rbd: listing children failed: "
        # << cpp_strerror(r)`, ceph src/tools/rbd/action/*.cc) while librados threads log
        # whole lines to the same stderr: a log line can land between the pieces, or right
        # after the message without a newline. Taking the log lines out gives rbd's words back.
        words = [line.strip() for line in _LOG_LINE_RE.sub("", stderr).splitlines()]
        stderr = _LOG_STAMP_RE.sub(lambda m: "\n" + m.group(), stderr)
        lines = [_LOG_PREFIX_RE.sub("", line).strip() for line in stderr.splitlines()]
        lines = [line for line in lines if line]
        own = [line for line in words if line.startswith((f"{tool}:", "Error", "[errno"))]
        detail = (own or lines or [f"exit status {returncode}"])[-1]
        detail = printable(detail.removeprefix(f"{tool}: "))
        match = _ERRNO_RE.search(detail)
        # rbd and ceph exit with the errno (39 for "image has snapshots"): the fallback.
        errno = int(match.group(1) or match.group(2)) if match else (returncode or None)
        connect = any("couldn't connect to the cluster" in line for line in lines) or (
            "error connecting to the cluster" in detail
        )
        # The ceph CLI says only "timed out" (exit 1) when no monitor answered in time.
        timed_out = errno == ETIMEDOUT or (tool == CEPH and detail == "timed out")
        if timed_out:
            errno = ETIMEDOUT
        keyring = next((m.group(1) for m in map(_KEYRING_RE.search, lines) if m), None)
        # librados logs a malformed key's value ("val=AQ...: Malformed input"): never shown.
        unreadable = next((m.group(1) for m in map(_BAD_KEYRING_RE.search, lines) if m), None)
        who = f"client.{self.user or 'admin'}"
        conf = self.conf or "Ceph's default ceph.conf"
        if connect or timed_out:
            if unreadable:
                reason = f"the keyring {unreadable} cannot be read (malformed?)"
                hint = "give --rbd-user a Ceph user whose keyring is readable here"
            elif keyring:
                reason = f"no keyring for {who} at {keyring}"
                hint = "give --rbd-user a Ceph user whose keyring is readable here"
            elif errno in (EPERM, EACCES):
                reason = f"the cluster refused the key of {who}"
                hint = "check --rbd-user and its keyring"
            elif timed_out:
                reason = f"no monitor answered within {self.connect_timeout} s"
                hint = f"check mon_host in {conf}"
            else:
                reason, hint = detail, f"check {conf} and --rbd-user"
            return CephAccessError(
                f"{tool} {what}: cannot connect to the Ceph cluster as {who}: {reason}",
                hint=hint, errno=errno,
            )  # fmt: skip
        message = f"{tool} {what} failed: {detail}"
        if errno == ENOENT:
            return CephNotFoundError(message, errno=errno)
        if errno in (EBUSY, ENOTEMPTY):
            return CephBusyError(message, errno=errno)
        if errno == EEXIST:
            return CephExistsError(message, errno=errno)
        if errno in (EPERM, EACCES):
            return CephAccessError(message, hint=f"{who} lacks the Ceph caps for this", errno=errno)
        if errno == ETIMEDOUT:
            return CephAccessError(message, hint="the Ceph cluster did not answer", errno=errno)
        return CephError(message, errno=errno)

    def run(
        self, tool: str, args: Sequence[str], what: str, *, timeout: float | None = None
    ) -> str:
        """Run ``tool args`` (a query or a small change): its stdout, or the mapped error."""
        argv = self._argv(tool, args)
        limit = self.timeout if timeout is None else timeout
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=limit, check=False,
                env=_env(), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise CephError(f"{tool} {what} did not finish within {limit:.0f} s") from None
        if done.returncode != 0:
            raise self._error(tool, what, done.returncode, done.stderr)
        return done.stdout

    def _json(self, tool: str, args: Sequence[str], what: str) -> Any:
        output = self.run(tool, [*args, "--format", "json"], what)
        try:
            return json.loads(output or "null")
        except ValueError as exc:
            raise CephError(f"{tool} {what} printed something unexpected: {exc}") from None

    # -- the cluster ----------------------------------------------------------------------------

    def fsid(self, *, attempts: int = 3, delay: float = 0.5) -> str:
        """The cluster's fsid (``ceph fsid``), never the all-zero one.

        glance_store once stored ``rbd://00000000-.../...`` because librados
        answered ``get_fsid()`` before it had the monmap (ceph-rbd.md §3, gotcha
        4); a zero or malformed answer is asked again, then refused.
        """
        last = ""
        for attempt in range(attempts):
            data = self._json(CEPH, ["fsid"], "fsid")
            last = str((data or {}).get("fsid", "")) if isinstance(data, dict) else str(data)
            if _UUID_RE.match(last) and last != ZERO_FSID:
                return last.lower()
            if attempt + 1 < attempts:
                time.sleep(delay)
        raise CephError(
            f"ceph fsid answered {_shown(last)}, not a cluster fsid",
            hint="the monitors have no monmap yet; try again when `ceph -s` works",
        )

    # -- reading --------------------------------------------------------------------------------

    def info(
        self, pool: str, image: str | None = None, *, snap: str | None = None,
        rbd_id: str | None = None,
    ) -> RbdInfo:  # fmt: skip
        """``rbd info`` of ``pool/image`` (or of ``pool``'s image ``rbd_id``, also in the trash).

        With ``snap``: the snapshot's size and ``protected`` state.
        """
        args = ["info", "--pool", check_pool(pool), *self._which(image, rbd_id)]
        if snap is not None:
            args += ["--snap", check_snap(snap)]
        return RbdInfo.from_json(self._json(RBD, args, f"info {_spec(pool, image, snap, rbd_id)}"))

    def exists(self, pool: str, image: str) -> bool:
        """True if ``pool/image`` exists (not in the trash)."""
        try:
            self.info(pool, image)
        except CephNotFoundError:
            return False
        return True

    def snaps(
        self, pool: str, image: str | None = None, *, rbd_id: str | None = None
    ) -> list[RbdSnap]:
        """Every snapshot of the image, the trash namespace included (``snap ls --all``)."""
        args = ["snap", "ls", "--all", "--pool", check_pool(pool), *self._which(image, rbd_id)]
        data = self._json(RBD, args, f"snap ls {_spec(pool, image, None, rbd_id)}")
        return [RbdSnap.from_json(item) for item in data or ()]

    def list_images(self, pool: str) -> list[str]:
        """``rbd ls <pool>``: the image names (not those in the trash)."""
        data = self._json(RBD, ["ls", "--pool", check_pool(pool)], f"ls {pool}")
        return [str(name) for name in data or ()]

    def trash_list(self, pool: str) -> list[TrashEntry]:
        """``rbd trash ls --all --long <pool>``: every trash entry, whatever its source."""
        args = ["trash", "ls", "--all", "--long", "--pool", check_pool(pool)]
        return [
            TrashEntry.from_json(item) for item in self._json(RBD, args, f"trash ls {pool}") or ()
        ]

    def trash_find(self, pool: str, name: str) -> list[TrashEntry]:
        """The trash entries of ``pool`` whose name is ``name`` (a Glance image id)."""
        check_image(name)
        return [entry for entry in self.trash_list(pool) if entry.name == name]

    def children(self, pool: str, image: str, snap: str = SNAP_NAME) -> list[RbdChild]:
        """Clones of ``pool/image@snap`` in every pool, those in the trash too (``children --all``).

        Needs read access to the children's pools (Nova's ``vms``): with Glance's
        caps (``profile rbd pool=images``) Ceph refuses (EPERM) -> :class:`CephAccessError`.
        Pacific's ``rbd children`` cannot open a parent that is itself in the
        trash; for that, see :meth:`clones`.
        """
        args = ["children", "--all", "--pool", check_pool(pool), "--image", check_image(image),
                "--snap", check_snap(snap)]  # fmt: skip
        data = self._json(RBD, args, f"children {_spec(pool, image, snap)}")
        return [
            RbdChild(
                pool=str(item["pool"]),
                image=str(item["image"]),
                id=str(item["id"]) if item.get("id") else None,
                trash=bool(item.get("trash")),
            )
            for item in data or ()
        ]

    def long_listing(self, pool: str) -> list[dict[str, Any]]:
        """``rbd ls -l``: one row per image, and one per image snapshot (with ``snapshot``)."""
        data = self._json(RBD, ["ls", "--long", "--pool", check_pool(pool)], f"ls -l {pool}")
        return [item for item in data or () if isinstance(item, dict)]

    def clones(self, pool: str) -> list[RbdClone]:
        """The images of ``pool`` that are clones, with their parents (``rbd ls -l``).

        Works for a parent in the trash too (its snapshot then shows under its
        trash name, a UUID): the way to count the clone v2 children of a
        trashed Glance image from Nova's pool.
        """
        data = self._json(RBD, ["ls", "--long", "--pool", check_pool(pool)], f"ls -l {pool}")
        out = []
        for item in data or ():
            parent = item.get("parent")
            if parent and "snapshot" not in item:  # "snapshot" rows are the images' own snaps
                out.append(
                    RbdClone(
                        pool=pool,
                        image=str(item["image"]),
                        parent_pool=str(parent["pool"]),
                        parent_image=str(parent["image"]),
                        parent_snapshot=str(parent["snapshot"]),
                    )
                )
        return out

    def export(
        self, pool: str, image: str, snap: str | None, sink: _Writable | Callable[[bytes], object],
        *, chunk: int = CHUNK,
    ) -> int:  # fmt: skip
        """Stream ``pool/image[@snap]`` into ``sink`` (a file object or a callable); bytes written.

        ``rbd export ... -`` read in ``chunk``-sized pieces, so the caller can hash
        while reading; a reader thread keeps up to :data:`READ_AHEAD` chunks
        ahead, so rbd keeps exporting while the sink works (hashing 1 GiB with
        md5 + sha512: 8 s read-then-hash, see docs). On any failure (rbd's, the
        sink's, the timeout) rbd is stopped and an error raised: what ``sink``
        got is then incomplete.
        """
        args = ["export", "--no-progress", "--pool", check_pool(pool), "--image",
                check_image(image)]  # fmt: skip
        if snap is not None:
            args += ["--snap", check_snap(snap)]
        write = sink if callable(sink) else sink.write
        what = f"export {_spec(pool, image, snap)}"
        total = 0
        with _Streaming(self, RBD, [*args, "-"], what, stdin=False) as proc:
            assert proc.stdout is not None
            ahead = _ReadAhead(proc.stdout, chunk)
            try:
                for data in ahead:
                    write(data)
                    total += len(data)
            finally:
                ahead.stop(proc)
        return total

    def export_digests(
        self, pool: str, image: str, snap: str | None, algo: str = DEFAULT_ALGO,
        *, out: _Writable | None = None,
    ) -> Digests:  # fmt: skip
        """md5, ``algo`` digest and size of ``pool/image[@snap]``, read once (copied to ``out``)."""
        hasher = Hasher(algo)
        try:

            def take(data: bytes) -> None:
                hasher.update(data)
                if out is not None:
                    out.write(data)

            self.export(pool, image, snap, take)
            return hasher.result()
        finally:
            hasher.close()

    # -- changing -------------------------------------------------------------------------------

    def import_image(
        self, pool: str, image: str, source: Path | str | BinaryIO, *,
        object_size_mib: int = GLANCE_CHUNK_MIB, chunk: int = CHUNK,
    ) -> int | None:  # fmt: skip
        """Create ``pool/image`` from ``source`` laid out as glance_store does; bytes sent.

        A path is read by rbd itself (sparse-aware; returns None); a binary file
        object is streamed through stdin in ``chunk`` pieces (read it through a
        hashing wrapper to hash while importing). Object size ``object_size_mib``
        MiB (glance_store: ``rbd_store_chunk_size``, default 8 = order 23), format
        2, features the client's ``rbd_default_features`` as in glance_store
        ``_create_image``. No snapshot: :meth:`snap_create` + :meth:`snap_protect`.
        An image of that name already there -> :class:`CephExistsError`. A failure
        part-way (rbd's, the source's, a kill) leaves a partial image without
        snapshot behind: rbd creates the image first. It is not removed here (after
        a failure we cannot tell ours from a concurrent run's); the caller journals
        the import first and removes it (:meth:`remove`) when undoing.
        """
        args = ["import", "--no-progress", "--image-format", "2",
                "--object-size", f"{int(object_size_mib)}M",
                "--dest-pool", check_pool(pool), "--dest", check_image(image)]  # fmt: skip
        what = f"import {_spec(pool, image)}"
        if isinstance(source, (str, Path)):
            path = str(source)
            # A path starting with "-" would read as an option; "./-x" is the same file.
            self.run(RBD, [*args, path if not path.startswith("-") else f"./{path}"], what,
                     timeout=self.data_timeout)  # fmt: skip
            return None
        total = 0
        with _Streaming(self, RBD, [*args, "-"], what, stdin=True) as proc:
            assert proc.stdin is not None
            while True:
                data = source.read(chunk)
                if not data:
                    break
                try:
                    proc.stdin.write(data)
                except BrokenPipeError:
                    break  # rbd died: _Streaming raises its error
                total += len(data)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        return total

    def snap_create(self, pool: str, image: str, snap: str = SNAP_NAME) -> None:
        self.run(RBD, ["snap", "create", *self._snap_args(pool, image, snap)],
                 f"snap create {_spec(pool, image, snap)}")  # fmt: skip

    def snap_protect(self, pool: str, image: str, snap: str = SNAP_NAME) -> None:
        """Already protected -> :class:`CephBusyError` ("snap is already protected", 16)."""
        self.run(RBD, ["snap", "protect", *self._snap_args(pool, image, snap)],
                 f"snap protect {_spec(pool, image, snap)}")  # fmt: skip

    def snap_unprotect(self, pool: str, image: str, snap: str = SNAP_NAME) -> None:
        """Clone v1 children -> :class:`CephBusyError` (16); not protected -> errno 22."""
        self.run(RBD, ["snap", "unprotect", *self._snap_args(pool, image, snap)],
                 f"snap unprotect {_spec(pool, image, snap)}")  # fmt: skip

    def snap_remove(self, pool: str, image: str, snap: str = SNAP_NAME) -> None:
        """``rbd snap rm``; with clone v2 children the snapshot moves to the trash namespace."""
        self.run(RBD, ["snap", "rm", "--no-progress", *self._snap_args(pool, image, snap)],
                 f"snap rm {_spec(pool, image, snap)}")  # fmt: skip

    def remove(self, pool: str, image: str) -> None:
        """``rbd rm``: an image with snapshots -> :class:`CephBusyError` (ENOTEMPTY)."""
        self.run(RBD, ["rm", "--no-progress", "--pool", check_pool(pool), "--image",
                       check_image(image)], f"rm {_spec(pool, image)}",
                 timeout=self.data_timeout)  # fmt: skip

    def trash_move(self, pool: str, image: str) -> None:
        """``rbd trash mv``, as glance_store's delete does when snapshots prevent removal."""
        self.run(RBD, ["trash", "mv", "--pool", check_pool(pool), "--image", check_image(image)],
                 f"trash mv {_spec(pool, image)}")  # fmt: skip

    def trash_restore(self, pool: str, rbd_id: str, name: str | None = None) -> None:
        """``rbd trash restore``: trash entry ``rbd_id`` back into ``pool`` (as ``name``).

        Without ``name`` it keeps the name it was trashed under (the Glance id).
        An image of that name already in the pool -> :class:`CephExistsError`; the
        entry no longer in the trash (another run restored it) -> :class:`CephNotFoundError`.
        """
        args = ["trash", "restore", "--pool", check_pool(pool), "--image-id", check_rbd_id(rbd_id)]
        if name is not None:
            args += ["--image", check_image(name)]
        self.run(RBD, args, f"trash restore {pool}/{rbd_id}")

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _which(image: str | None, rbd_id: str | None) -> list[str]:
        if (image is None) == (rbd_id is None):
            raise ValueError("give exactly one of image and rbd_id")
        if image is not None:
            return ["--image", check_image(image)]
        assert rbd_id is not None
        return ["--image-id", check_rbd_id(rbd_id)]

    @staticmethod
    def _snap_args(pool: str, image: str, snap: str) -> list[str]:
        return ["--pool", check_pool(pool), "--image", check_image(image), "--snap",
                check_snap(snap)]  # fmt: skip


def _spec(pool: str, image: str | None, snap: str | None = None, rbd_id: str | None = None) -> str:
    """``pool/image@snap`` for messages (names are validated before this is called)."""
    name = image if image is not None else f"(id {rbd_id})"
    return f"{pool}/{name}" + (f"@{snap}" if snap else "")


def _env() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C"}


class _ReadAhead:
    """Chunks of ``stream`` read on a thread of its own, up to ``depth`` ahead of the consumer.

    Without it rbd stalls on a full pipe while the consumer hashes, and export +
    hashing take the sum of both times instead of the longer one.
    """

    def __init__(self, stream: IO[bytes], chunk: int, depth: int = READ_AHEAD) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._stream, self._chunk = stream, chunk
        with contextlib.suppress(OSError, AttributeError):  # Linux only; best effort
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._thread = threading.Thread(target=self._run, name="rbd-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while True:
                data = self._stream.read(self._chunk)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """End the thread; after a failure, by killing ``proc`` so its read returns."""
        self._stopping.set()
        if self._thread.is_alive():
            if proc.poll() is None:
                proc.kill()
            self._thread.join()


class _Streaming:
    """A running ``rbd import -``/``export -``: its stderr in a temp file, a kill at the deadline.

    On leaving: waits for rbd, and raises its mapped error if it failed (or the
    timeout struck); on an exception inside, kills rbd first.
    """

    def __init__(self, client: CephClient, tool: str, args: list[str], what: str, *, stdin: bool):
        self.client, self.tool, self.what = client, tool, what
        self.argv = client._argv(tool, args)
        self.stdin = stdin
        self.timed_out = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.timer: threading.Timer | None = None

    def _kill(self, timed_out: bool = False) -> None:
        self.timed_out = self.timed_out or timed_out
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def __enter__(self) -> subprocess.Popen[bytes]:
        # A file, not a pipe: rbd's stderr can never fill up and block the data stream.
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.stdin else subprocess.PIPE, stderr=self.stderr,
            env=_env(),
        )  # fmt: skip
        self.timer = threading.Timer(
            self.client.data_timeout, self._kill, kwargs={"timed_out": True}
        )
        self.timer.daemon = True
        self.timer.start()
        return self.proc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.proc is not None and self.stderr is not None and self.timer is not None
        try:
            if exc_type is not None:
                self._kill()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(BrokenPipeError):
                        stream.close()
            returncode = self.proc.wait()
            if exc_type is not None:
                return
            if self.timed_out:
                limit = self.client.data_timeout
                raise CephError(f"{self.tool} {self.what} did not finish within {limit:.0f} s")
            if returncode != 0:
                self.stderr.seek(0)
                text = self.stderr.read().decode("utf-8", errors="replace")
                raise self.client._error(self.tool, self.what, returncode, text)
        finally:
            self.timer.cancel()
            self.stderr.close()
