"""What Nova still knows of an image whose Glance metadata was purged.

Two copies (/work/shared/reference/glance-purge.md §3):

* ``instance_system_metadata`` ``image_<prop>`` of every instance booted from the image
  (nova 34 ``nova/utils.py`` ``get_system_metadata_from_image``: every Glance property,
  ``str()`` cut at 255 UTF-8 bytes by ``safe_truncate``, plus the four inheritable
  columns; ``nova/compute/api.py`` ``_populate_instance_for_create`` adds
  ``image_base_image_ref``; the libvirt driver adds its defaults later,
  ``nova/virt/libvirt/driver.py`` ``_register_undefined_instance_details``);
* ``nova_api.request_specs.spec``: the boot-time ``ImageMeta`` as an oslo versioned-object
  primitive (``nova/objects/request_spec.py`` ``_get_update_primitives``): id, name,
  owner, checksum, size, formats, the original min_ram/min_disk, created_at, and the
  properties Nova knows (``ImageMetaProps`` fields; custom keys are not kept).

:func:`read_copies` reads both (the SQL is :mod:`recover.nova`'s) and rebuilds the
image's properties by the rules of glance-purge.md "What a recover tool should do" (a)3;
:func:`build_copies` is the same on rows already read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recover.config import Settings
from recover.db.cloud import open_nova
from recover.errors import RefusedError
from recover.nova import IMAGE_PREFIX, InstanceRef, image_key

#: nova 34 ``nova/utils.py`` ``SM_INHERITABLE_KEYS``: columns of the images row, copied to
#: sysmeta beside the properties; the row (or the request spec) holds the truth.
INHERITABLE = ("min_ram", "min_disk", "disk_format", "container_format")
#: nova 34 ``nova/virt/libvirt/driver.py`` ``REGISTER_IMAGE_PROPERTY_DEFAULTS``: written as
#: ``image_<key>`` sysmeta after spawn when the image had no such property (Yoga+).
NOVA_DEFAULTS = (
    "hw_machine_type", "hw_cdrom_bus", "hw_disk_bus", "hw_input_bus",
    "hw_pointer_model", "hw_video_model", "hw_vif_model",
)  # fmt: skip
#: ``safe_truncate(str(value), 255)``: a value of exactly this many bytes may have been cut.
SYSMETA_VALUE_BYTES = 255
#: The images-row fields a request spec's ImageMeta holds (and the order they are shown in).
CORE_FIELDS = (
    "name", "owner", "disk_format", "container_format", "min_ram", "min_disk",
    "checksum", "size", "virtual_size", "created_at",
)  # fmt: skip
#: ``ImageMeta.from_dict`` turns a NULL of these into '' or 0 (nova 34
#: ``nova/objects/image_meta.py`` NULLABLE_STRING_FIELDS / NULLABLE_INTEGER_FIELDS).
NULLED = {"name": "", "checksum": "", "owner": "", "container_format": "",
          "disk_format": "", "size": 0, "virtual_size": 0}  # fmt: skip
TRUNCATED_NOTE = "255 bytes: possibly cut by Nova (nova/utils.py safe_truncate)"


@dataclass(frozen=True)
class Sourced:
    """A value and where it came from."""

    value: Any
    source: str  # e.g. "request_spec of <uuid>", "instance_system_metadata of 3 instances"
    guessed: bool = False
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "guessed": self.guessed,
                "note": self.note}  # fmt: skip


@dataclass
class NovaCopies:
    """Nova's copies of image ``image_id``, and the properties rebuilt from them."""

    image_id: str
    #: Live instances using the image (``image_ref``, ``shelved_image_id``), sorted.
    instances: list[str]
    #: Their project ids, sorted.
    projects: list[str]
    #: Rebuilt per the rules, agreed (or from --from-instance).
    properties: dict[str, Sourced]
    #: key -> why it is not restored (Nova's default, its own base_image_ref, ...).
    dropped: dict[str, str]
    #: key -> {value: [instance uuids]} when the instances disagree.
    conflicts: dict[str, dict[str, list[str]]]
    #: images-row fields: request spec first, sysmeta next, guessed ones flagged.
    core: dict[str, Sourced]
    has_request_spec: bool
    has_sysmeta: bool
    #: Instances whose sysmeta the properties come from (booted from this image).
    booted: list[str] = field(default_factory=list)

    def conflict_error(self) -> RefusedError | None:
        """The refusal when the instances disagree (one line naming key and instances)."""
        if not self.conflicts:
            return None
        key = sorted(self.conflicts)[0]
        held = "; ".join(
            f"{value!r} on {', '.join(uuids)}"
            for value, uuids in sorted(self.conflicts[key].items(), key=lambda kv: kv[1])
        )
        more = len(self.conflicts) - 1
        also = f" (and {more} more key{'s' if more > 1 else ''}: "
        also = also + ", ".join(sorted(self.conflicts)[1:]) + ")" if more else ""
        example = min(uuid for uuids in self.conflicts[key].values() for uuid in uuids)
        return RefusedError(
            f"the instances of image {self.image_id} disagree about property {key!r}: {held}{also}",
            hint=f"pick the instance whose copy to trust: --from-instance {example}",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "projects": self.projects,
            "properties": {k: v.as_dict() for k, v in sorted(self.properties.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "conflicts": {k: dict(sorted(v.items())) for k, v in sorted(self.conflicts.items())},
            "core": {k: self.core[k].as_dict() for k in CORE_FIELDS if k in self.core},
            "request_spec": self.has_request_spec,
            "system_metadata": self.has_sysmeta,
        }


@dataclass(frozen=True)
class SpecImage:
    """The image of one request spec: its fields and its (Nova-named, typed) properties."""

    fields: dict[str, Any]
    properties: dict[str, Any]


def spec_image(text: str | None, image_id: str) -> SpecImage | None:
    """The ``ImageMeta`` of ``request_specs.spec`` when it is image ``image_id``'s.

    The spec of a rebuilt or unshelved instance holds another image (nova 34
    ``nova/compute/api.py`` ``rebuild`` / ``unshelve`` update ``request_spec.image``); a
    legacy or broken spec, or one without an image (boot from volume), gives None.
    """
    try:
        blob = json.loads(text or "")
    except ValueError:
        return None
    data = _object_data(blob)
    image = _object_data(data.get("image")) if data else None
    if not image or image_key(str(image.get("id") or "")) != image_key(image_id):
        return None
    props = _object_data(image.get("properties")) or {}
    fields = {k: v for k, v in image.items() if k != "properties"}
    return SpecImage(fields, dict(props))


def _object_data(primitive: Any) -> dict[str, Any] | None:
    if not isinstance(primitive, dict):
        return None
    data = primitive.get("nova_object.data")
    return data if isinstance(data, dict) else None


def _dropped_reason(
    name: str, value: str | None, image_id: str, spec_props: set[str] | None
) -> str | None:
    """Why sysmeta key ``image_<name>`` is not a property to restore, or None."""
    if name in INHERITABLE:
        return "an images-row column (nova/utils.py SM_INHERITABLE_KEYS), not a property"
    if name.startswith("os_glance"):
        return "os_glance_* is reserved to Glance (glance/api/v2/images.py _reserved_namespaces)"
    if name == "base_image_ref" and image_key(value) == image_key(image_id):
        return (
            "Nova's own: the image's own id (nova/compute/api.py _populate_instance_for_create "
            "setdefault('image_base_image_ref', instance.image_ref))"
        )
    if name in ("kernel_id", "ramdisk_id") and (value is None or value in ("", "None")):
        return f"empty {name}"
    if name in NOVA_DEFAULTS and spec_props is not None and name not in spec_props:
        return (
            "Nova's libvirt default, absent from the request spec's image "
            "(nova/virt/libvirt/driver.py _register_undefined_instance_details)"
        )
    return None


def _source(uuids: Sequence[str]) -> str:
    if len(uuids) == 1:
        return f"instance_system_metadata of {uuids[0]}"
    return f"instance_system_metadata of {len(uuids)} instances"


def _property(
    name: str,
    value: str,
    uuids: Sequence[str],
    spec_props: Mapping[str, tuple[Any, str]] | None,
) -> Sourced:
    guessed, note = False, None
    if name in NOVA_DEFAULTS and spec_props is None:
        guessed = True
        note = "no request spec: may be Nova's libvirt default rather than a Glance property"
    if len(value.encode("utf-8")) == SYSMETA_VALUE_BYTES:
        full, holder = (spec_props or {}).get(name, (None, ""))
        if isinstance(full, str) and len(full) > len(value) and full.startswith(value):
            return Sourced(full, f"request_spec of {holder} (the sysmeta copy is cut at 255 bytes)")
        return Sourced(value, _source(uuids), True, TRUNCATED_NOTE)
    return Sourced(value, _source(uuids), guessed, note)


def build_copies(
    image_id: str,
    users: Sequence[InstanceRef],
    sysmeta: Mapping[str, tuple[int, Mapping[str, str | None]]],
    specs: Mapping[str, str],
    from_instance: str | None = None,
) -> NovaCopies:
    """:class:`NovaCopies` from what :func:`read_copies` read.

    ``users``: live instances using the image; ``sysmeta``: ``uuid -> (root_gb,
    {image_* key: value})`` of those booted from it; ``specs``: ``uuid -> spec JSON``.
    """
    image_id = image_key(image_id)
    instances = sorted({u.uuid for u in users})
    projects = sorted({u.project_id for u in users if u.project_id})
    booted = sorted(
        u.uuid for u in users if u.image_id == image_id and sysmeta.get(u.uuid, (0, {}))[1]
    )
    spec_of = {u: s for u in sorted(specs) if (s := spec_image(specs[u], image_id)) is not None}
    #: property -> (value, uuid of the first request spec holding it)
    spec_props: dict[str, tuple[Any, str]] | None = None
    if spec_of:
        spec_props = {}
        for uuid, spec in spec_of.items():
            for name, value in spec.properties.items():
                spec_props.setdefault(name, (value, uuid))
    if from_instance is not None:
        wanted = from_instance.strip().lower()
        if wanted not in booted:
            raise RefusedError(
                f"--from-instance {from_instance[:40]!r} is not a live instance booted from "
                f"image {image_id} with a copy of its metadata",
                hint="booted from it: "
                + (", ".join(booted[:5]) or "none")
                + (f" and {len(booted) - 5} more" if len(booted) > 5 else ""),
            )
        trusted = [wanted]
    else:
        trusted = booted
    spec_keys = None if spec_props is None else set(spec_props)
    dropped: dict[str, str] = {}
    held: dict[str, dict[str, list[str]]] = {}
    for uuid in trusted:
        for key, value in sysmeta[uuid][1].items():
            if not key.startswith(IMAGE_PREFIX):
                continue  # unprefixed sysmeta is Nova's own (owner_user_name, clean_attempts...)
            name = key[len(IMAGE_PREFIX) :]
            reason = _dropped_reason(name, value, image_id, spec_keys)
            if reason is not None:
                dropped[name] = reason
                continue
            held.setdefault(name, {}).setdefault(value or "", []).append(uuid)
    properties: dict[str, Sourced] = {}
    conflicts: dict[str, dict[str, list[str]]] = {}
    for name, values in sorted(held.items()):
        dropped.pop(name, None)  # one instance's default is another's real property
        if len(values) > 1:
            conflicts[name] = {v: sorted(u) for v, u in values.items()}
            continue
        ((value, uuids),) = values.items()
        properties[name] = _property(name, value, sorted(uuids), spec_props)
    core = _core(image_id, users, sysmeta, booted, spec_of)
    return NovaCopies(
        image_id=image_id, instances=instances, projects=projects, properties=properties,
        dropped=dropped, conflicts=conflicts, core=core, has_request_spec=bool(spec_of),
        has_sysmeta=bool(booted), booted=booted,
    )  # fmt: skip


def _core(
    image_id: str,
    users: Sequence[InstanceRef],
    sysmeta: Mapping[str, tuple[int, Mapping[str, str | None]]],
    booted: Sequence[str],
    spec_of: Mapping[str, SpecImage],
) -> dict[str, Sourced]:
    """The images-row fields: the request spec first, the sysmeta next, guesses flagged."""
    core: dict[str, Sourced] = {}
    for uuid, spec in spec_of.items():
        for name in CORE_FIELDS:
            value = spec.fields.get(name)
            if name in core or value is None or (name in NULLED and value == NULLED[name]):
                continue
            core[name] = Sourced(value, f"request_spec of {uuid}")
    for name in ("disk_format", "container_format", "min_ram"):
        if name in core:
            continue
        values = Counter(
            v for u in booted if (v := sysmeta[u][1].get(IMAGE_PREFIX + name)) not in (None, "")
        )
        if values:
            value, _count = values.most_common(1)[0]
            holders = [u for u in booted if sysmeta[u][1].get(IMAGE_PREFIX + name) == value]
            converted: Any = int(value) if name == "min_ram" and value.isdigit() else value
            note = None if len(values) == 1 else f"instances disagree: {sorted(values)}"
            core[name] = Sourced(converted, _source(holders), note is not None, note)
    if "min_disk" not in core and booted:
        # image_min_disk = max(min_disk, flavor root_gb) (nova/utils.py): exact only when
        # it exceeds the instance's root_gb; otherwise the truth is <= the smallest root_gb.
        exact = [
            (int(v), u)
            for u in booted
            if (v := str(sysmeta[u][1].get(IMAGE_PREFIX + "min_disk") or "")).isdigit()
            and int(v) > sysmeta[u][0]
        ]
        if exact:
            value = max(v for v, _u in exact)
            core["min_disk"] = Sourced(value, _source(sorted(u for v, u in exact if v == value)))
        else:
            smallest = min(sysmeta[u][0] for u in booted)
            core["min_disk"] = Sourced(
                0, _source(booted), True,
                f"unknown: at most {smallest} (image_min_disk is max(min_disk, root_gb))",
            )  # fmt: skip
    if "owner" not in core:
        owners = sorted({u.project_id for u in users if u.project_id})
        if owners:
            core["owner"] = Sourced(
                owners[0], f"project of the instances ({', '.join(owners)})", True,
                "no request spec: the project of an instance using it",
            )  # fmt: skip
    return core


def read_copies(
    settings: Settings, image_id: str, *, from_instance: str | None = None
) -> NovaCopies:
    """Read Nova's copies of ``image_id`` in every cell and nova_api, and rebuild."""
    image_id = image_key(image_id)
    nova = open_nova(settings)
    try:
        users: list[InstanceRef] = []
        sysmeta: dict[str, tuple[int, dict[str, str | None]]] = {}
        for cell in nova.cells:
            with cell.connect() as conn:
                refs = cell.instances_using(conn, [], [image_id])
                users += refs
                sysmeta.update(
                    cell.image_sysmeta(conn, [r.uuid for r in refs if r.image_id == image_id])
                )
        specs: dict[str, str] = {}
        if nova.api is not None:
            with nova.api.db.engine.connect() as conn:
                specs = nova.api.request_specs(conn, [u.uuid for u in users])
    finally:
        nova.dispose()
    users.sort(key=lambda r: r.uuid)
    return build_copies(image_id, users, sysmeta, specs, from_instance)
