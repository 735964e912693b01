"""Render an inventory as a table (for people), JSON (for tools) or CSV (for spreadsheets).

Everything is sorted so two runs over the same cloud print the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from datetime import datetime
from typing import Any

from recover.inventory import (
    AffectedInstance,
    FlavorOrphan,
    ImageOrphan,
    Inventory,
)
from recover.text import printable

WIDTH = 80


def _ts(value: datetime | None) -> str | None:
    return value.isoformat(sep=" ") if value is not None else None


def flavor_dict(orphan: FlavorOrphan) -> dict[str, Any]:
    return {
        "id": orphan.id,
        "flavorid": orphan.flavorid,
        "name": orphan.name,
        "state": orphan.state,
        "deleted_at": _ts(orphan.deleted_at),
        "instances": [i.uuid for i in orphan.instances],
        "cells": sorted({i.cell for i in (*orphan.instances, *orphan.revert_instances)}),
        "long_running": sorted(i.uuid for i in orphan.instances if i.long_running),
        "sources": {
            "row": orphan.row_table,
            "instance_extra": orphan.definitions_from_instance_extra,
            "system_metadata": orphan.definitions_from_system_metadata,
        },
        "conflicting_instances": orphan.conflicting_instances,
        "differ_in": orphan.differ_in if orphan.variants else [],
        "variants": [
            {"instances": v.count, "example": v.example, "values": v.values(orphan.differ_in)}
            for v in orphan.variants
        ],
        "revert_resize_instances": [i.uuid for i in orphan.revert_instances],
        "live_flavor": (
            {"id": orphan.live.id, "flavorid": orphan.live.flavorid, "name": orphan.live.name}
            if orphan.live is not None
            else None
        ),
        "at_risk": orphan.at_risk,
        "recover": orphan.recover,
        "never_ran": [i.uuid for i in orphan.never_ran],
        "note": orphan.note,
        "recreate": orphan.recreate,
    }


def image_dict(orphan: ImageOrphan) -> dict[str, Any]:
    return {
        "id": orphan.id,
        "name": orphan.name,
        "status": orphan.status,
        "deleted_at": _ts(orphan.deleted_at),
        "disk_format": orphan.disk_format,
        "size": orphan.size,
        "snapshot": orphan.snapshot,
        "instances": [i.uuid for i in orphan.instances],
        "shelved_instances": orphan.shelved_instances,
        "cells": sorted({i.cell for i in orphan.instances}),
        "long_running": sorted(i.uuid for i in orphan.instances if i.long_running),
        "hosts": orphan.hosts,
        "base_file": orphan.base_file,
        "base_files": orphan.base_files,
        "store_file": orphan.store_file,
        "deleted_children": orphan.children.as_dict(),
        "metadata": orphan.metadata,
        "at_risk": orphan.at_risk,
        "recover": orphan.recover,
        "note": orphan.note,
        "never_ran": [i.uuid for i in orphan.never_ran],
        "row_status": orphan.row_status,
        # Only for an image of an RBD store (PRODUCT.md "Ceph RBD stores").
        **({"rbd": orphan.rbd} if orphan.rbd is not None else {}),
    }


def as_dict(inventory: Inventory) -> dict[str, Any]:
    return {
        "flavors": [flavor_dict(f) for f in inventory.flavors],
        "images": [image_dict(i) for i in inventory.images],
        # Orphans that only failed builds in cell0 use: not in the lists above, not exit 3.
        "never_ran": {
            "flavors": [flavor_dict(f) for f in inventory.never_ran_flavors],
            "images": [image_dict(i) for i in inventory.never_ran_images],
        },
        "cells": [{"name": c.name, "ok": c.ok, "error": c.error} for c in inventory.cells],
        "partial": inventory.partial,
        "flavor_store": inventory.flavor_store,
        "glance_schema": inventory.glance_generation,
        "store_dir": inventory.store_dir,
        "scanned_at": _ts(inventory.scanned_at),
        "warnings": inventory.warnings,
    }


def render_json(inventory: Inventory) -> str:
    return json.dumps(as_dict(inventory), indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = (
    "kind",
    "id",
    "name",
    "state",
    "instance",
    "cell",
    "host",
    "vm_state",
    "launched_at",
    "long_running",
    "recover",
    "metadata",
)


def render_csv(inventory: Inventory) -> str:
    """One row per (orphan, instance)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def rows(kind: str, oid: str, name: str | None, state: str, recover: str | None,
             instances: list[AffectedInstance], metadata: str = "") -> None:  # fmt: skip
        for inst in instances:
            writer.writerow(
                (kind, oid, name or "", state, inst.uuid, inst.cell, inst.host or "",
                 inst.vm_state or "", _ts(inst.launched_at) or "",
                 "yes" if inst.long_running else "no", recover or "", metadata)
            )  # fmt: skip

    for f in inventory.flavors:
        rows("flavor", str(f.id), f.name, f.state, f.recover, f.instances)
        rows("flavor", str(f.id), f.name, f"{f.state} (revert-resize)", f.recover,
             f.revert_instances)  # fmt: skip
    for i in inventory.images:
        rows("image", i.id, i.name, i.status, i.recover, i.instances, metadata_text(i))
    return out.getvalue()


def metadata_text(image: ImageOrphan) -> str:
    """``metadata`` in one line: the rows left in Glance, then Nova's copies."""
    meta = image.metadata
    left = [("row" if meta["row"] else "no row")]
    left += [f"{k} {meta[k]}" for k in ("properties", "locations", "tags", "members")]
    nova = meta["nova"]
    return (
        f"{', '.join(left)}; Nova: request spec {nova['request_spec']}, "
        f"system_metadata {nova['system_metadata']}"
    )


def _wrap(label: str, items: list[str]) -> list[str]:
    text = ", ".join(items) if items else "-"
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=f"    {label}: ",
        subsequent_indent=" " * (len(label) + 6),
        break_on_hyphens=False,
    )


def _instances_line(instances: list[AffectedInstance]) -> list[str]:
    lines = _wrap(f"instances ({len(instances)})", [i.uuid for i in instances])
    old = [i for i in instances if i.long_running]
    if old:
        lines.append(f"    running > 365 days: {len(old)} of {len(instances)}")
    return lines


def render_table(inventory: Inventory) -> str:
    """For people: every value from a database is escaped (no terminal escapes, no forged lines)."""
    return "\n".join(printable(line) for line in _table_lines(inventory)) + "\n"


def _table_lines(inventory: Inventory) -> list[str]:
    lines: list[str] = []
    lines.append(f"Deleted flavors still used by live instances: {len(inventory.flavors)}")
    for f in inventory.flavors:
        head = f"  flavor {f.id}  flavorid {f.flavorid or '?'}  {f.name or '(name unknown)'}"
        lines.append(f"{head}  [{f.state}]")
        if f.live is not None:
            lines.extend(_wrap("id now held by", [
                f"live flavor {f.live.id} flavorid {f.live.flavorid} {f.live.name}"
            ]))  # fmt: skip
        if f.instances or not f.revert_instances:
            lines.extend(_instances_line(f.instances))
        if f.revert_instances:
            lines.extend(_wrap(
                f"back on revert-resize ({len(f.revert_instances)})",
                [i.uuid for i in f.revert_instances],
            ))  # fmt: skip
        sources = []
        if f.row_table:
            sources.append(f"{f.row_table} row")
        if f.definitions_from_instance_extra:
            sources.append(f"instance_extra.flavor of {f.definitions_from_instance_extra}")
        if f.definitions_from_system_metadata:
            sources.append(f"system_metadata of {f.definitions_from_system_metadata}")
        lines.extend(_wrap("definition from", sources or ["nothing found"]))
        if f.variants:
            lines.extend(_wrap("copies differ in", f.differ_in))
            for n, variant in enumerate(f.variants, 1):
                lines.append(
                    f"    variant {n}: {variant.count} instance(s), e.g. {variant.example}"
                )
                lines.extend(textwrap.wrap(
                    variant.shown(f.differ_in), width=WIDTH, initial_indent="      ",
                    subsequent_indent="      ", break_on_hyphens=False,
                ))  # fmt: skip
        lines.extend(_never_ran_line(f.never_ran))
        if f.recover:
            lines.append(f"    recover: {f.recover}")
        elif f.note:
            lines.extend(textwrap.wrap(
                f"recover: no ({f.note})", width=WIDTH, initial_indent="    ",
                subsequent_indent="      ", break_on_hyphens=False,
            ))  # fmt: skip
        else:
            lines.append("    recover: no source left")
        if f.recreate:
            lines.append(f"    recreate: {f.recreate}")  # one line: copy-pasteable
    lines.append("")
    lines.append(f"Deleted images still used by live instances: {len(inventory.images)}")
    for i in inventory.images:
        lines.append(f"  image {i.id}  [{i.status}]")
        details = [i.name or "(name unknown)", i.disk_format or "?"]
        if i.snapshot:
            details.append("snapshot")
        if i.store_file is not None:
            details.append("store file present" if i.store_file else "store file gone")
        lines.extend(_wrap("image", details))
        lines.extend(_instances_line(i.instances))
        if i.shelved_instances:
            lines.extend(_wrap("shelved-offloaded", i.shelved_instances))
        lines.extend(_wrap("hosts", i.hosts))
        lines.extend(_never_ran_line(i.never_ran))
        lines.extend(_wrap("_base file", i.base_files))
        if i.row_status not in (None, "deleted", i.status):
            lines.append(f"    row: status {i.row_status} with deleted=1")
        lines.extend(_wrap("metadata", [metadata_text(i)]))
        lines.append(f"    recover: {i.recover}" if i.recover else f"    recover: no ({i.note})")
    lines.append("")
    lines.extend(_never_ran_section(inventory))
    scanned = ", ".join(f"{c.name}" + ("" if c.ok else " (UNREACHABLE)") for c in inventory.cells)
    lines.extend(textwrap.wrap(f"Cells: {scanned}", width=WIDTH, subsequent_indent="  "))
    affected = {a.uuid for f in inventory.flavors for a in (*f.instances, *f.revert_instances)}
    affected |= {a.uuid for i in inventory.images for a in i.instances}
    never_ran = {a.uuid for f in inventory.flavors for a in f.never_ran}
    never_ran |= {a.uuid for f in inventory.never_ran_flavors for a in f.never_ran}
    never_ran |= {a.uuid for i in inventory.images for a in i.never_ran}
    never_ran |= {a.uuid for i in inventory.never_ran_images for a in i.never_ran}
    lines.append(
        f"Summary: {len(inventory.flavors)} flavor(s), {len(inventory.images)} image(s), "
        f"{len(affected)} instance(s) affected"
        + (f"; {len(never_ran)} failed build(s) in cell0 set apart" if never_ran else "")
        + ("; PARTIAL: some cells were not scanned" if inventory.partial else "")
    )
    return lines


def _never_ran_line(instances: list[AffectedInstance]) -> list[str]:
    if not instances:
        return []
    return _wrap(f"never ran, cell0 ({len(instances)})", [i.uuid for i in instances])


def _never_ran_section(inventory: Inventory) -> list[str]:
    """Orphans that only failed builds use: shown, but nothing a compute node needs."""
    if not (inventory.never_ran_flavors or inventory.never_ran_images):
        return []
    lines = [
        "Deleted flavors and images used only by failed builds in cell0 (never ran): "
        f"{len(inventory.never_ran_flavors) + len(inventory.never_ran_images)}"
    ]
    for f in inventory.never_ran_flavors:
        lines.append(f"  flavor {f.id}  flavorid {f.flavorid or '?'}  "
                     f"{f.name or '(name unknown)'}  [{f.state}]")  # fmt: skip
        lines.extend(_never_ran_line(f.never_ran))
    for i in inventory.never_ran_images:
        lines.append(f"  image {i.id}  [{i.status}]")
        lines.extend(_never_ran_line(i.never_ran))
    lines.append("    delete these instances (openstack server delete): nothing to recover")
    lines.append("")
    return lines


def _label(value: str) -> str:
    r"""A label value as the text exposition format writes it: backslash, double quote and
    line feed escaped as ``\\``, ``\"``, ``\n`` (prometheus
    docs/instrumenting/exposition_formats.md, "Text format details")."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def affected_instances(inventory: Inventory) -> list[str]:
    """Every instance an orphan leaves at risk, once: on a deleted flavor or image now, or
    given a deleted flavor back by revert-resize."""
    found = {i.uuid for f in inventory.flavors for i in (*f.instances, *f.revert_instances)}
    found |= {i.uuid for image in inventory.images for i in image.instances}
    return sorted(found)


def render_prometheus(inventory: Inventory) -> str:
    """The node_exporter textfile collector format: gauges for a cron job and an alert.

    Counts are those of the JSON report: ``len(flavors)``, ``len(images)``, the distinct
    instances of both, and one ``recover_cell_up`` per entry of ``cells``.
    """
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    gauge(
        "recover_orphaned_flavors",
        "Deleted Nova flavors that live instances still use (recover inventory).",
        [("", len(inventory.flavors))],
    )
    gauge(
        "recover_orphaned_images",
        "Deleted Glance images that live instances still use (recover inventory).",
        [("", len(inventory.images))],
    )
    gauge(
        "recover_affected_instances",
        "Live instances on a deleted flavor or image, or given a deleted flavor back by "
        "revert-resize.",
        [("", len(affected_instances(inventory)))],
    )
    gauge(
        "recover_cell_up",
        "1 when the cell's database answered within --cell-timeout, else 0 (the other "
        "metrics then leave its instances out).",
        [(f'{{cell="{_label(c.name)}"}}', int(c.ok)) for c in inventory.cells],
    )
    # The copies found on compute hosts come from `inventory --probe-hosts` (issue 13), which
    # fills ImageOrphan.copies; without it nothing is known, and a 0 would be a false alarm.
    copies = [
        (f'{{image="{_label(i.id)}"}}', len(found))
        for i in inventory.images
        if (found := getattr(i, "copies", None)) is not None
    ]
    gauge(
        "recover_image_copies",
        "Copies of an orphaned image's _base file found on compute hosts by "
        "inventory --probe-hosts; no sample for an image whose hosts were not probed.",
        copies,
    )
    return "\n".join(lines) + "\n"


RENDERERS = {
    "table": render_table,
    "json": render_json,
    "csv": render_csv,
    "prometheus": render_prometheus,
}
