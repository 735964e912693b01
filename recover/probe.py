"""``inventory --probe-hosts``: what each compute host really holds, as facts.

One ssh connection per host runs one ``sh`` script (:data:`SCRIPT`) that prints, in
framed sections: the image-cache lines of the host's ``nova.conf``, every file of
``<instances_path>/_base`` (size, mtime, name), ``qemu-img info`` of the ``_base``
files asked for, and ``qemu-img info -U --backing-chain`` of the instance disks asked
for. The names and uuids go on stdin, so no command line grows with the cloud. At most
``workers`` hosts are asked at once, each within its own ``timeout``; a host that
cannot be reached, refuses or times out is reported, the others still are.

Everything a host prints is hostile: the total is bounded (:data:`MAX_OUTPUT`), each
line is matched against what it may be, names must be ones we asked about or sha1
digests, JSON must have the expected shape, sizes and times are bounded integers.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import selectors
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from recover.errors import RecoverError, RefusedError
from recover.images.qemu import ImageInfo
from recover.images.rules import ImageRules
from recover.images.transport import SshTransport
from recover.progress import Display
from recover.text import printable

DEFAULT_SSH_WORKERS = 16
DEFAULT_HOST_TIMEOUT_S = 60.0
NOVA_CONF = "/etc/nova/nova.conf"
#: nova 34 ``nova/conf/imagecache.py``: ``remove_unused_original_minimum_age_seconds``
#: defaults to ``24 * 3600``.
DEFAULT_MIN_AGE_S = 86400
#: Bytes one host may print in all; more ends its probe as a failure.
MAX_OUTPUT = 16 * 1024 * 1024
#: Lines of _base listing and backing-chain entries kept per host/disk.
MAX_BASE_FILES = 100_000
MAX_CHAIN = 32
MAX_ERROR = 300

_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE_LINE = re.compile(r"(\d{1,18}) (\d{1,12})(?:\.\d{0,12})? ([0-9a-f]{40})")
_CONF_LINE = re.compile(
    r"\s*(?:\[([A-Za-z0-9_.-]{1,64})\]|([A-Za-z_]{1,64})\s*[=:]\s*(\S{0,64}))\s*"
)
_MARK = "@@recover"

#: Runs under ``env LC_ALL=C sh -c SCRIPT sh <instances_path> <nova.conf>``; reads
#: ``u <uuid>`` (an instance disk) then ``n <sha1>`` (a _base name to inspect) on stdin.
#: A _base file a disk's chain named is not read twice: :func:`_chain` keeps the chain's
#: entry as that file's info when its path is ``<instances_path>/_base/<name>``.
#: qemu-img gets ``-U`` (``--force-share``): the disks belong to running guests.
SCRIPT = r"""
p=$1; conf=$2
keys='remove_unused_original_minimum_age_seconds|remove_unused_base_images'
keys="$keys|subdirectory_name|image_cache_subdirectory_name"
echo "@@recover probe 1"
if [ -r "$conf" ]; then
  echo "@@recover conf"
  grep -E "^[[:space:]]*(\[|$keys)" -- "$conf"
  echo
else
  echo "@@recover noconf"
fi
if ! cd -- "$p" 2>/dev/null; then echo "@@recover nodir"; exit 0; fi
echo "@@recover base"
h='[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
# Only names of 40 hex digits (nova's get_cache_fname): no file name can forge a line.
# No `head` here or above: the reader bounds the whole output (MAX_OUTPUT).
[ -d _base ] && find _base/ -maxdepth 1 -type f -name "$h$h$h$h$h" \
  -printf '%s %T@ %f\n' 2>/dev/null
seen=
while read -r kind value; do
  case $kind in
    n) [ -f "_base/$value" ] || continue
       # A disk's chain already described this file: no second qemu-img for it.
       case $seen in *"/_base/$value\""*) continue;; esac
       echo "@@recover info $value"
       qemu-img info -U --output=json -- "$p/_base/$value" </dev/null 2>&1
       echo; echo "@@recover rc $?";;
    u) echo "@@recover disk $value"
       if [ -f "$value/disk" ]; then
         out=$(qemu-img info -U --backing-chain --output=json -- "$p/$value/disk" </dev/null 2>&1)
         rc=$?
         printf '%s\n' "$out"; echo "@@recover rc $rc"
         seen="$seen$out"
       else
         echo "@@recover nodisk"
       fi;;
  esac
done
echo "@@recover end"
"""


def _utc(seconds: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(seconds=seconds)


@dataclass(frozen=True)
class BaseCopy:
    """One ``_base`` file of an image on one host."""

    host: str
    path: str
    size: int
    format: str | None
    mtime: datetime
    #: When nova's image cache manager may remove it once no instance uses it; None: never
    #: (``remove_unused_base_images = False``).
    expires: datetime | None
    #: qemu-img read a whole image (no backing file, not corrupt) of the image's virtual
    #: size: the check ``recover image`` makes before it takes the copy.
    verified: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "path": self.path,
            "size": self.size,
            "format": self.format,
            "mtime": self.mtime.isoformat(sep=" "),
            "expires": self.expires.isoformat(sep=" ") if self.expires else None,
            "verified": self.verified,
        }


@dataclass
class DiskChain:
    """``qemu-img info --backing-chain`` of ``<instances_path>/<uuid>/disk`` on a host."""

    uuid: str
    #: (path, format) of each file, the disk first.
    files: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def backing_file(self) -> str | None:
        """The disk's own backing file, by name: what nova's cache manager counts as in use
        (nova 34 ``nova/virt/libvirt/imagecache.py`` ``_list_backing_images``:
        ``get_disk_backing_file``, the basename)."""
        return posixpath.basename(self.files[1][0]) if len(self.files) > 1 else None


@dataclass
class HostProbe:
    """What one host answered, or why it did not."""

    host: str
    ok: bool = False
    error: str | None = None
    #: ``remove_unused_original_minimum_age_seconds`` and where it came from.
    min_age: int = DEFAULT_MIN_AGE_S
    min_age_from: str = "nova default"
    remove_unused: bool = True
    #: _base file name -> (size, mtime seconds)
    base: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: _base file name -> qemu-img info (or the error line)
    infos: dict[str, ImageInfo | str] = field(default_factory=dict)
    disks: dict[str, DiskChain] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.host,
            "ok": self.ok,
            "error": self.error,
            "remove_unused_original_minimum_age_seconds": self.min_age if self.ok else None,
            "min_age_from": self.min_age_from if self.ok else None,
        }

    def copy(self, name: str, instances_path: str, rules: ImageRules) -> BaseCopy | None:
        """The ``_base/<name>`` file of this host, if it has one, checked by ``rules``."""
        found = self.base.get(name)
        if found is None:
            return None
        size, mtime = found
        info = self.infos.get(name)
        fmt = info.format if isinstance(info, ImageInfo) else None
        path = posixpath.join(instances_path, "_base", name)
        verified = False
        if isinstance(info, ImageInfo):
            try:  # the check TransportSource makes, never with --accept-new-bytes
                ImageRules(rules.image_id, rules.row, False).check_info(info, path)
                verified = True
            except RefusedError:
                pass
        # nova 34 nova/virt/libvirt/imagecache.py _get_age_of_file: the age is
        # time.time() - os.path.getmtime(base_file); _remove_old_enough_file removes it once
        # that age reaches remove_unused_original_minimum_age_seconds, and _mark_in_use
        # (nova.privsep.path.utime: os.utime(path, None)) resets the mtime on every pass while
        # an instance uses it. So the mtime, not the atime, starts the clock.
        expires = _utc(mtime + self.min_age) if self.remove_unused else None
        return BaseCopy(self.host, path, size, fmt, _utc(mtime), expires, verified)


def _bounded(text: str) -> str:
    line = printable(" ".join(text.split()))
    return line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 3] + "..."


def _conf(probe: HostProbe, lines: list[str]) -> None:
    """The image-cache options from the grep'd lines of nova.conf.

    nova 34 ``nova/conf/imagecache.py``: ``[image_cache]
    remove_unused_original_minimum_age_seconds`` (``deprecated_group='DEFAULT'``),
    ``remove_unused_base_images`` (same), ``subdirectory_name`` (formerly ``[DEFAULT]
    image_cache_subdirectory_name``). The new group wins over the deprecated one; the
    last value of a key in a group wins (oslo.config).
    """
    section = "DEFAULT"
    found: dict[tuple[str, str], str] = {}
    for line in lines:
        match = _CONF_LINE.fullmatch(line)
        if match is None:
            continue
        if match.group(1) is not None:
            section = match.group(1)
            continue
        if section in ("DEFAULT", "image_cache"):
            found[(section, match.group(2))] = match.group(3)
    for group in ("DEFAULT", "image_cache"):  # the new group last: it wins
        raw = found.get((group, "remove_unused_original_minimum_age_seconds"))
        if raw is not None:
            if re.fullmatch(r"-?\d{1,10}", raw):
                probe.min_age = int(raw)
                probe.min_age_from = f"nova.conf [{group}]"
            else:
                probe.warnings.append(
                    f"{probe.host}: nova.conf [{group}] remove_unused_original_minimum_age_"
                    f"seconds = {_bounded(raw)} is not an integer; nova's default assumed"
                )
        flag = found.get((group, "remove_unused_base_images"))
        if flag is not None and flag.lower() in ("false", "no", "off", "0"):
            probe.remove_unused = False
        elif flag is not None and flag.lower() in ("true", "yes", "on", "1"):
            probe.remove_unused = True
    for key in (("DEFAULT", "image_cache_subdirectory_name"), ("image_cache", "subdirectory_name")):
        value = found.get(key)
        if value is not None and value != "_base":
            probe.warnings.append(
                f"{probe.host}: nova.conf sets the image cache directory to {_bounded(value)}; "
                "the probe looked in _base only"
            )


def _chain(
    probe: HostProbe, uuid: str, text: str, rc: str | None, instances_path: str
) -> DiskChain:
    """The chain of one disk; what it says of a ``_base`` file is kept as that file's info."""
    chain = DiskChain(uuid)
    try:
        data = json.loads(text)
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_CHAIN:
            raise ValueError("not a list of images")
        for item in data:
            if not isinstance(item, dict):
                raise ValueError("not a list of images")
            name, fmt = item.get("filename"), item.get("format")
            if not (isinstance(name, str) and isinstance(fmt, str)) or len(name) > 4096:
                raise ValueError("an image without filename or format")
            if len(fmt) > 32 or not fmt.isprintable() or not name.isprintable():
                raise ValueError("unprintable filename or format")
            chain.files.append((name, fmt))
        for (name, _), item in zip(chain.files[1:], data[1:], strict=True):
            base = posixpath.basename(name)
            if posixpath.normpath(name) == posixpath.join(instances_path, "_base", base):
                info = _info(json.dumps(item))
                if isinstance(info, ImageInfo):
                    probe.infos.setdefault(base, info)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {rc}"
        disk = posixpath.join(instances_path, uuid, "disk")
        chain.error = f"qemu-img info {disk} failed: {_bounded(detail)}"
        chain.files = []
    return chain


def _info(text: str) -> ImageInfo | str:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError
        fmt, size = data.get("format"), data.get("virtual-size")
        if not isinstance(fmt, str) or len(fmt) > 32 or not fmt.isprintable():
            raise ValueError
        if not isinstance(size, int) or not 0 <= size < 1 << 62:
            raise ValueError
        info = ImageInfo.from_json(data)
        backing = info.backing_file
        if backing is not None and not (isinstance(backing, str) and len(backing) <= 4096):
            raise ValueError
        return info
    except (ValueError, TypeError, AttributeError):
        lines = [line for line in text.splitlines() if line.strip()]
        return f"qemu-img info failed: {_bounded(lines[-1] if lines else 'no output')}"


def parse(
    host: str, output: str, names: set[str], uuids: set[str], instances_path: str
) -> HostProbe:
    """The sections of :data:`SCRIPT`'s output; RecoverError if it is not that output."""
    probe = HostProbe(host)
    lines = output.split("\n")
    if not lines or lines[0] != f"{_MARK} probe 1":
        raise RecoverError("it did not run the probe script (no POSIX sh as login shell?)")
    section, subject = "", ""
    body: list[str] = []

    def close() -> None:
        text = "\n".join(body)
        rc = None
        if body and body[-1].startswith(f"{_MARK} rc "):
            rc = body[-1].split()[-1]
            text = "\n".join(body[:-1])
        if section == "conf":
            _conf(probe, body)
        elif section == "base":
            for line in body:
                match = _BASE_LINE.fullmatch(line)
                if match and len(probe.base) < MAX_BASE_FILES:  # the first line of a name
                    found = (int(match.group(1)), int(match.group(2)))
                    probe.base.setdefault(match.group(3), found)
        elif section == "info" and subject in names:
            probe.infos[subject] = _info(text)
        elif section == "disk" and subject in uuids:
            probe.disks[subject] = _chain(probe, subject, text, rc, instances_path)
        elif section == "nodisk" and subject in uuids:
            disk = posixpath.join(instances_path, subject, "disk")
            probe.disks[subject] = DiskChain(subject, error=f"no {disk} on the host")

    ended = False
    for line in lines[1:]:
        if not line.startswith(_MARK + " "):
            body.append(line)
            continue
        words = line.split(" ")
        kind = words[1] if len(words) > 1 else ""
        if kind == "rc":
            body.append(line)
            continue
        if kind == "nodisk" and section == "disk":  # belongs to the disk just named
            section, body = "nodisk", []
            continue
        close()
        body = []
        if kind in ("info", "disk") and len(words) == 3:
            section, subject = kind, words[2]
        elif kind in ("conf", "noconf", "base", "nodir") and len(words) == 2:
            section, subject = kind, ""
            if kind == "noconf":
                probe.min_age_from = "nova default (nova.conf not readable)"
            if kind == "nodir":
                raise RecoverError(f"no directory {instances_path} (--instances-path)")
        elif kind == "end" and len(words) == 2:
            ended = True
            section = ""
            break
        else:
            raise RecoverError(f"the probe printed an unexpected line: {_bounded(line)}")
    if not ended:
        raise RecoverError("the probe's output ended early")
    probe.ok = True
    return probe


def _run_bounded(
    argv: list[str], stdin: bytes, timeout: float
) -> tuple[int | None, bytes, bytes, str | None]:
    """Run ``argv`` with ``stdin``; (returncode, stdout, stderr, why it was stopped)."""
    with tempfile.TemporaryFile() as given:
        given.write(stdin)
        given.seek(0)
        try:
            proc = subprocess.Popen(
                argv, stdin=given, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise RecoverError(f"cannot run {argv[0]}: {exc.strerror}") from None
    out: list[bytes] = []
    err: list[bytes] = []
    total = 0
    stopped = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map() and stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = f"no answer within {timeout:g} s (--host-timeout)"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                if total > MAX_OUTPUT:
                    stopped = f"it printed more than {MAX_OUTPUT} bytes"
                    break
                key.data.append(chunk)
    if stopped is not None:
        proc.kill()
    try:
        returncode = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        returncode = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return (None if stopped else returncode), b"".join(out), b"".join(err), stopped


def probe_host(
    host: str,
    instances_path: str,
    names: Iterable[str],
    uuids: Iterable[str],
    timeout: float = DEFAULT_HOST_TIMEOUT_S,
    nova_conf: str = NOVA_CONF,
) -> HostProbe:
    """Ask one host, over one ssh connection; a failure is in the result, never raised."""
    started = time.monotonic()
    wanted_names = {n for n in names if _SHA1_RE.fullmatch(n)}
    wanted_uuids = {u for u in uuids if _UUID_RE.fullmatch(u)}
    try:
        transport = SshTransport(host)
        argv = transport.argv(["sh", "-c", SCRIPT, "sh", instances_path, nova_conf])
        # The disks first: their chains describe the _base files they are backed by.
        lines = [f"u {u}\n" for u in sorted(wanted_uuids)]
        lines += [f"n {n}\n" for n in sorted(wanted_names)]
        request = "".join(lines)
        rc, out, err, stopped = _run_bounded(argv, request.encode(), timeout)
        if stopped is not None:
            raise RecoverError(stopped)
        if rc == 255:
            lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
            raise RecoverError(
                f"cannot reach it over ssh: {_bounded(lines[-1]) if lines else 'exit status 255'}"
            )
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError:
            raise RecoverError("the probe printed bytes that are not UTF-8") from None
        if rc != 0 and not text.startswith(f"{_MARK} probe 1"):
            lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
            raise RecoverError(
                f"the probe failed: {_bounded(lines[-1]) if lines else f'exit status {rc}'}"
            )
        probe = parse(host, text, wanted_names, wanted_uuids, instances_path)
    except RecoverError as exc:
        probe = HostProbe(host, ok=False, error=exc.message)
    probe.seconds = time.monotonic() - started
    return probe


def probe_hosts(
    requests: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    instances_path: str,
    workers: int = DEFAULT_SSH_WORKERS,
    timeout: float = DEFAULT_HOST_TIMEOUT_S,
) -> dict[str, HostProbe]:
    """``host -> (base names, instance uuids)`` asked of each host, ``workers`` at once.

    A progress bar on stderr when it is a terminal (issue 13 item 6); nothing otherwise.
    """
    if not requests:
        return {}
    found: dict[str, HostProbe] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="recover-ssh") as pool:
        futures = [
            pool.submit(probe_host, host, instances_path, names, uuids, timeout)
            for host, (names, uuids) in requests.items()
        ]
        with Display() as progress:
            if len(futures) > 1:
                progress.phase("probing compute hosts", total=len(futures), unit="hosts")
            for future in as_completed(futures):
                probe = future.result()
                found[probe.host] = probe
                progress.advance()
    return dict(sorted(found.items()))
