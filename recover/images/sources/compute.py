"""``--from-host [HOST]``: ``_base/<sha1(id)>`` on a compute node, read over SSH."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable

from recover.config import Settings
from recover.db.cloud import open_nova
from recover.errors import ConfigError, NotFoundError, RecoverError, RefusedError
from recover.images.rules import ImageRules
from recover.images.sources.transfer import TransportSource
from recover.images.transport import SshTransport
from recover.inventory import base_file_name
from recover.probe import BaseCopy, HostProbe, probe_hosts
from recover.text import printable

log = logging.getLogger(__name__)


def base_names(image_id: str, typed: str, spellings: Iterable[str] = ()) -> list[str]:
    """The names ``_base/<sha1>`` may have, most likely first.

    Nova names the file after ``instance.image_ref`` as the client spelled it (nova 34
    ``nova/virt/libvirt/driver.py`` ``_create_and_inject_local_root``:
    ``get_cache_fname(disk_images['image_id'])``), so an instance booted with an
    upper-case id has ``sha1(<UPPER>)``: Glance's id, the id as typed, the spellings the
    instances use, then upper case.
    """
    names = [image_id, typed.strip(), *sorted(spellings), image_id.upper()]
    return list(dict.fromkeys(base_file_name(n) for n in names))


def hosts_running(settings: Settings, image_id: str) -> dict[str, set[str]]:
    """Compute hosts of live instances booted from this image (the inventory's list),
    each with the spellings of the id in those instances' ``image_ref``."""
    try:
        nova = open_nova(settings, allow_unreachable_cells=True)
    except ConfigError as exc:
        raise ConfigError(
            "--from-host without a host name needs the Nova databases to find the hosts",
            hint=f"name the host (--from-host HOST), or configure Nova ({exc.message})",
        ) from None
    try:
        hosts: dict[str, set[str]] = {}
        for cell in nova.cells:
            if cell.cell0:  # failed builds: never on a compute node
                continue
            with cell.connect() as conn:
                for ref in cell.instances_using(conn, [], [image_id]):
                    if ref.host and ref.image_id == image_id:
                        hosts.setdefault(ref.host, set()).add(str(ref.image_ref))
    finally:
        nova.dispose()
    return dict(sorted(hosts.items()))


def compute_node_source(
    settings: Settings, from_host: str, instances_path: str, typed_id: str, image_id: str,
    rules: ImageRules,
) -> TransportSource:  # fmt: skip
    """The first host (``from_host``, or the best of the hosts running the image when it
    is "": :func:`ranked_hosts`) that has the ``_base`` file; refused when none has."""
    base_dir = posixpath.join(instances_path, "_base")
    hosts: dict[str, set[str]]
    misses: list[str] = []
    if from_host:
        hosts = {from_host: set()}
    else:
        running = hosts_running(settings, image_id)
        if not running:
            raise NotFoundError(f"no live instance of image {image_id} runs on a compute host")
        hosts, misses = ranked_hosts(running, instances_path, typed_id, image_id, rules)
        if not hosts:
            raise NotFoundError(f"no compute node has the _base file: {'; '.join(misses)}")
    for host, spellings in hosts.items():
        paths = [posixpath.join(base_dir, n) for n in base_names(image_id, typed_id, spellings)]
        transport: SshTransport | None = None
        try:
            # One connection per host for every step that follows (transport.open).
            transport = SshTransport(host).open()
            for base in paths:
                if transport.stat_size(base) is not None:
                    source = TransportSource(transport, base, rules, image_id)
                    transport = None  # the source owns it now and closes it
                    return source
            misses.append(f"{host}: no {' nor '.join(paths)}")
        except RefusedError as exc:
            if from_host:
                raise
            misses.append(f"{host}: {exc}")
        except RecoverError as exc:
            if len(hosts) == 1 and from_host:
                raise
            misses.append(f"{host}: {exc}")
        finally:
            if transport is not None:
                transport.close()
    raise NotFoundError(f"no compute node has the _base file: {'; '.join(misses)}")


def ranked_hosts(
    running: dict[str, set[str]], instances_path: str, typed_id: str, image_id: str,
    rules: ImageRules,
) -> tuple[dict[str, set[str]], list[str]]:  # fmt: skip
    """``--from-host`` without a value: probe the hosts (recover.probe, one ssh connection
    each, at once) and order those that hold a copy: verified copies first (qemu-img reads a
    whole image of the image's virtual size), then the freshest (latest mtime: the copy
    nova's cache manager touched last, so keeps longest). Says which it chose and why.

    Returns the hosts to try in that order, each with its spellings, and why the others
    are left out.
    """
    requests = {
        host: (base_names(image_id, typed_id, spellings), ()) for host, spellings in running.items()
    }
    probes = probe_hosts(requests, instances_path)
    found: list[tuple[bool, BaseCopy, str]] = []
    misses: list[str] = []
    for host, probe in probes.items():
        best = _best_copy(probe, requests[host][0], instances_path, image_id, rules)
        if best is None:
            misses.append(
                f"{host}: {probe.error}" if not probe.ok else f"{host}: no _base copy of it"
            )
        else:
            found.append((*best, host))
    found.sort(key=lambda f: (not f[0], -f[1].mtime.timestamp(), f[2]))
    if found:
        verified, copy, host = found[0]
        why = "a verified copy" if verified else "no verified copy anywhere; an unverified copy"
        others = [f"{h} ({'verified' if v else 'unverified'}, mtime {c.mtime})"
                  for v, c, h in found[1:]]  # fmt: skip
        log.warning(
            f"--from-host: chose {printable(host)}: {why} ({copy.path}, {copy.format}, "
            f"{copy.size} bytes, mtime {copy.mtime}), the freshest of {len(found)} host(s) "
            f"holding one"
            + (f"; then {', '.join(printable(o) for o in others)}" if others else "")
            + (f"; left out: {'; '.join(printable(m) for m in misses)}" if misses else "")
        )
    return {host: running[host] for _, _, host in found}, misses


def _best_copy(
    probe: HostProbe, names: list[str], instances_path: str, image_id: str, rules: ImageRules
) -> tuple[bool, BaseCopy] | None:
    """The host's best copy of the image: a verified one first, then the freshest."""
    copies = [
        copy
        for name in names
        if probe.ok and (copy := probe.copy(name, instances_path, rules)) is not None
    ]
    best = max(copies, key=lambda c: (c.verified, c.mtime), default=None)
    return (best.verified, best) if best is not None else None
