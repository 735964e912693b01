"""The RBD image of a deleted Glance image, or its entry in the RBD trash (ceph-rbd.md §1-2).

Glance's delete of an image whose ``snap`` has Nova clones either fails (clone
v1: the image stays intact) or moves it to the RBD trash (clone v2,
glance_store >= 4.6.0), its ``snap`` renamed into the trash namespace. So:

* ``intact``: ``<pool>/<id>@snap`` is there (a DB-only delete, clone v1, pending_delete);
* ``trash``: ``<pool>/<id>`` is in the pool's trash under its name (clone v2);
* ``snapshot-missing``: the image is there, ``snap`` is not (glance_store < 3.0 with clone
  v2 children: LP #1954883; a hand-made ``rbd snap rm``);
* ``gone``: nothing of it in the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from recover.config import Settings
from recover.errors import RecoverError, RefusedError
from recover.images.ceph import SNAP_NAME, CephClient, CephNotFoundError, parse_location

STATES = ("intact", "trash", "snapshot-missing", "gone")


@dataclass(frozen=True)
class RbdState:
    pool: str
    image: str
    state: str
    #: The trash entry's RBD image id (``trash``): what ``rbd trash restore`` takes.
    trash_id: str | None = None
    #: ``snap`` is protected (``intact``).
    protected: bool = False


def probe(ceph: CephClient, pool: str, image: str) -> RbdState:
    """What ``pool`` holds of ``image`` (read-only: ``rbd snap ls``, then ``rbd trash ls``)."""
    try:
        snaps = ceph.snaps(pool, image)
    except CephNotFoundError:
        entries = ceph.trash_find(pool, image)
        if len(entries) > 1:
            ids = ", ".join(e.id for e in entries)
            raise RefusedError(
                f"the RBD trash of pool {pool} holds {len(entries)} images named {image} "
                f"({ids}): recover cannot tell which is the Glance image",
                hint=f"restore the right one by hand: rbd trash restore --pool {pool} "
                "--image-id ID, then re-run",
            ) from None
        if entries:
            return RbdState(pool, image, "trash", trash_id=entries[0].id)
        return RbdState(pool, image, "gone")
    # After a restore with a clone v2 child alive, the old snapshot stays in the trash
    # namespace under a UUID beside the new one: only the user namespace's ``snap`` counts.
    ours = [s for s in snaps if s.namespace == "user" and s.name == SNAP_NAME]
    if ours:
        return RbdState(pool, image, "intact", protected=ours[0].protected)
    return RbdState(pool, image, "snapshot-missing")


def survey(ceph: CephClient, pool: str) -> dict[str, str]:
    """The state of every image of ``pool`` by name, in two commands (``rbd ls -l``,
    ``rbd trash ls``) whatever the number of images: names absent are ``gone``."""
    states = {entry.name: "trash" for entry in ceph.trash_list(pool)}
    present, snapped = set(), set()
    for item in ceph.long_listing(pool):
        name = str(item.get("image", ""))
        present.add(name)
        if item.get("snapshot") == SNAP_NAME:
            snapped.add(name)
    for name in present:
        states[name] = "intact" if name in snapped else "snapshot-missing"
    return states


def inventory_facts(
    settings: Settings, locations: dict[str, list[tuple[str, str | None]]], image_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """``{"pool", "state", "children"}`` of every image (of ``image_ids``) in an RBD store.

    ``locations``: each image's location rows, newest first, ``(value, meta_data)``. An
    image lived in RBD when its newest ``rbd://``/``file://`` row is ``rbd://``, or it has
    neither and Glance's default store is RBD. Bounded: one ``rbd ls -l`` and one ``rbd
    trash ls`` per pool, one ``rbd ls -l`` of Nova's pool (``settings.nova_rbd_pool``),
    whatever the number of images.
    ``children`` is None when the user cannot read Nova's pool (Glance's usual caps);
    ``state`` is None (with ``error``) when Ceph cannot be asked.
    """
    pools: dict[str, str] = {}
    for image_id in image_ids:
        pool = _rbd_pool(settings, locations.get(image_id, []))
        if pool is not None:
            pools[image_id] = pool
    if not pools:
        return {}
    ceph = CephClient(conf=settings.ceph_conf.value, user=settings.rbd_user.value)
    surveys: dict[str, dict[str, str] | str] = {}
    for pool in sorted(set(pools.values())):
        try:
            surveys[pool] = survey(ceph, pool)
        except RecoverError as exc:
            surveys[pool] = exc.message
    children: dict[tuple[str, str], int] | None
    try:
        clones = ceph.clones(settings.nova_rbd_pool)
    except RecoverError:
        children = None
    else:
        children = {}
        for clone in clones:
            key = (clone.parent_pool, clone.parent_image)
            children[key] = children.get(key, 0) + 1
    facts: dict[str, dict[str, Any]] = {}
    for image_id, pool in pools.items():
        found = surveys[pool]
        fact: dict[str, Any] = {"pool": pool, "state": None, "children": None}
        if isinstance(found, str):
            fact["error"] = found
        else:
            fact["state"] = found.get(image_id, "gone")
            if children is not None:
                fact["children"] = children.get((pool, image_id), 0)
        facts[image_id] = fact
    return facts


def _rbd_pool(settings: Settings, rows: list[tuple[str, str | None]]) -> str | None:
    for value, _meta in rows:
        scheme = urlparse(value or "").scheme
        if scheme in ("file", "filesystem"):
            return None
        if scheme == "rbd":
            try:
                return parse_location(value).pool or settings.rbd_pool.value
            except RecoverError:
                return None  # a hostile value: `recover image` refuses it with the reason
    if settings.glance_store_kind == "rbd" and settings.store_dir.source == "default":
        return settings.rbd_pool.value
    return None
