"""``--from-host [HOST]``: ``_base/<sha1(id)>`` on a compute node, read over SSH."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from recover.config import Settings
from recover.db.cloud import open_nova
from recover.errors import ConfigError, NotFoundError, RecoverError, RefusedError
from recover.images.rules import ImageRules
from recover.images.sources.transfer import TransportSource
from recover.images.transport import SshTransport
from recover.inventory import base_file_name


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
    """The first host (``from_host``, or every host running the image when it is "") that
    has the ``_base`` file; refused when none has."""
    base_dir = posixpath.join(instances_path, "_base")
    hosts: dict[str, set[str]]
    if from_host:
        hosts = {from_host: set()}
    else:
        hosts = hosts_running(settings, image_id)
        if not hosts:
            raise NotFoundError(f"no live instance of image {image_id} runs on a compute host")
    misses = []
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
        except RefusedError:
            raise
        except RecoverError as exc:
            if len(hosts) == 1:
                raise
            misses.append(f"{host}: {exc}")
        finally:
            if transport is not None:
                transport.close()
    raise NotFoundError(f"no compute node has the _base file: {'; '.join(misses)}")
