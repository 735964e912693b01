"""Drive the real Nova object layer against a test nova_api + cell database.

Run with the python of a venv holding ``nova`` (34.x) and ``pymysql``; never
imported by pytest (``tests/test_nova_accepts.py`` runs it as a subprocess).
No Nova service runs: a generated nova.conf points ``[api_database]`` and
``[database]`` at the given URLs, RPC uses the ``fake://`` transport and
notifications the ``noop`` driver (``real-glance.md`` §6, gotchas 13-14).

Subcommands, each printing ONE JSON document on stdout (Nova's own logging and
warnings go to stderr):

``create --api URL --cell URL --spec JSON``
    Create flavors and instances the way nova-api does. ``JSON`` is
    ``{"flavors": [FLAVOR...], "instances": [INSTANCE...]}``;
    FLAVOR is ``{"name", "flavorid", "memory_mb", "vcpus", "root_gb",
    "ephemeral_gb", "swap", "rxtx_factor", "is_public", "extra_specs": {},
    "access": [project...], "path": "object" | "api"}``:

    * ``"object"``: ``objects.Flavor(..., extra_specs=...).create()``, extra
      specs in the same transaction as the flavor;
    * ``"api"``: what the REST API runs, call after call:
      ``nova.compute.flavors.create()`` (POST /flavors), then
      ``flavor.extra_specs = ...; flavor.save()`` (POST
      /flavors/{id}/os-extra_specs);

    then, with ``"update_description": TEXT``, ``flavor.description = TEXT;
    flavor.save()`` (PUT /flavors/{id}, which sets ``updated_at``), then
    ``flavor.add_access(project)`` for each of ``access``
    (POST /flavors/{id}/action addTenantAccess).
    INSTANCE is ``{"uuid", "flavorid", "project_id", "user_id", "host"}``:
    ``objects.Instance(..., instance_type_id=flavor.id, flavor=flavor).create()``
    with the flavor loaded by ``Flavor.get_by_flavor_id`` (as
    ``nova/compute/api.py`` does), so ``instance_extra.flavor`` is exactly what
    Nova writes. Prints ``{"flavors": {flavorid: id}, "instances": {uuid: id}}``.

    An INSTANCE may carry ``"image"``: the Glance v2 image as ``GET /v2/images/{id}``
    returned it (the spec then needs ``"image_schema"``: ``GET /v2/schemas/image``). It
    boots from it as nova-api does (nova 34 ``nova/compute/api.py``): the image dict is
    nova's own ``nova.image.glance._translate_from_glance`` of it (what ``_get_image``
    hands on); ``instance.system_metadata`` gets ``utils.get_system_metadata_from_image
    (image, flavor)``, ``image_base_image_ref`` and ``owner_user_name`` /
    ``owner_project_name`` (``_populate_instance_for_create``); and
    ``RequestSpec.from_components(...).create()`` stores the request spec in nova_api
    (``_provision_instances``). ``"libvirt_defaults": {prop: value}`` then writes
    ``image_<prop>`` for each of the libvirt driver's ``REGISTER_IMAGE_PROPERTY_DEFAULTS``
    the sysmeta lacks, and saves, as ``_register_undefined_instance_details`` does after
    spawn (the values are the test's: no libvirt runs here). ``"sysmeta_set": {key:
    value}`` is a later ``nova-manage image_property set``-like edit of sysmeta only
    (instance.system_metadata[...] = v; instance.save()).

``destroy --api URL --cell URL --flavorid X [--flavorid Y ...]``
    ``Flavor.get_by_flavor_id(ctx, X).destroy()``: DELETE /flavors/{id}, the
    hard delete of flavor, extra specs and projects. Prints the destroyed ids.

``check --api URL --cell URL --flavorid X ... --instance UUID ... [--as-project P ...]``
    Read everything back through Nova with an admin context:
    ``Flavor.get_by_flavor_id``, ``Flavor.get_by_id``, ``FlavorList.get_all``
    and ``Instance.get_by_uuid(ctx, uuid, expected_attrs=['flavor'])`` (plus
    ``Flavor.get_by_id(instance.instance_type_id)``, the API flavor the
    instance points at). With ``--as-project P``, also what a non-admin of
    project P sees: ``FlavorList.get_all`` flavorids and, per flavorid,
    whether ``Flavor.get_by_flavor_id`` finds it (flavor access of private
    flavors). A lookup that fails records ``{"error": "<ExceptionClass>: msg"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import tempfile
from typing import Any

FLAVOR_FIELDS = (
    "id",
    "flavorid",
    "name",
    "memory_mb",
    "vcpus",
    "root_gb",
    "ephemeral_gb",
    "swap",
    "rxtx_factor",
    "vcpu_weight",
    "is_public",
    "disabled",
    "description",
    "created_at",
    "updated_at",
)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        # Naive UTC in the DB; nova objects carry tz-aware UTC datetimes.
        return value.replace(tzinfo=None, microsecond=0).isoformat()
    return value


def write_conf(directory: str, api_url: str, cell_url: str) -> str:
    path = os.path.join(directory, "nova.conf")
    with open(path, "w", encoding="utf-8") as conf:
        conf.write(
            "[DEFAULT]\n"
            "transport_url = fake://\n"
            f"state_path = {directory}\n"
            "[oslo_concurrency]\n"
            f"lock_path = {directory}\n"
            "[api_database]\n"
            f"connection = {api_url}\n"
            "[database]\n"
            f"connection = {cell_url}\n"
            "[oslo_messaging_notifications]\n"
            "driver = noop\n"
        )
    return path


def start_nova(api_url: str, cell_url: str, directory: str) -> Any:
    """Import nova, parse a generated nova.conf, register the objects; return ``nova``."""
    import nova.config
    import nova.context
    import nova.objects

    conf = write_conf(directory, api_url, cell_url)
    nova.config.parse_args(["nova-objects"], default_config_files=[conf], init_rpc=True)
    nova.objects.register_all()
    return nova


def flavor_fields(flavor: Any, with_projects: bool = True) -> dict[str, Any]:
    out = {name: _json_value(getattr(flavor, name)) for name in FLAVOR_FIELDS}
    out["extra_specs"] = dict(flavor.extra_specs)
    # API flavors lazy-load ``projects`` from flavor_projects (Flavor.obj_load_attr);
    # an instance's embedded copy never has them, and loading them would ask the API DB.
    if with_projects:
        out["projects"] = sorted(flavor.projects)
    else:
        out["projects"] = sorted(flavor.projects) if flavor.obj_attr_is_set("projects") else None
    return out


def guarded(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def cmd_create(nova: Any, ctx: Any, args: argparse.Namespace) -> dict[str, Any]:
    from nova import objects
    from nova.compute import flavors as compute_flavors

    spec = json.loads(args.spec)
    created: dict[str, Any] = {"flavors": {}, "instances": {}}
    for f in spec.get("flavors", []):
        specs = dict(f.get("extra_specs", {}))
        sizes = {k: f[k] for k in ("memory_mb", "vcpus", "root_gb") if k in f}
        optional = {k: f[k] for k in ("ephemeral_gb", "swap", "rxtx_factor", "is_public") if k in f}
        if f.get("path", "object") == "api":
            flavor = compute_flavors.create(
                f["name"],
                sizes["memory_mb"],
                sizes["vcpus"],
                sizes["root_gb"],
                flavorid=f["flavorid"],
                description=f.get("description"),
                **optional,
            )
            if specs:
                flavor = objects.Flavor.get_by_flavor_id(ctx, f["flavorid"])
                flavor.extra_specs = dict(flavor.extra_specs, **specs)
                flavor.save()
        else:
            flavor = objects.Flavor(
                context=ctx, name=f["name"], flavorid=f["flavorid"], extra_specs=specs,
                **sizes, **optional,
            )  # fmt: skip
            flavor.create()
        if "update_description" in f:
            # PUT /flavors/{id} (microversion 2.55): the one mutable field; sets updated_at.
            flavor = objects.Flavor.get_by_flavor_id(ctx, f["flavorid"])
            flavor.description = f["update_description"]
            flavor.save()
        for project in f.get("access", []):
            flavor.add_access(project)
        created["flavors"][flavor.flavorid] = flavor.id
    for i in spec.get("instances", []):
        flavor = objects.Flavor.get_by_flavor_id(ctx, i["flavorid"])
        host = i.get("host", "compute-1")
        instance = objects.Instance(
            context=ctx,
            uuid=i["uuid"],
            project_id=i["project_id"],
            user_id=i.get("user_id", "u-nova-tier"),
            display_name=i.get("display_name", "vm-" + i["uuid"][:8]),
            image_ref=i["image"]["id"]
            if "image" in i
            else i.get("image_ref", "a0000000-0000-4000-8000-00000000000a"),
            instance_type_id=flavor.id,
            memory_mb=flavor.memory_mb,
            vcpus=flavor.vcpus,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
            flavor=flavor,
            vm_state="active",
            power_state=1,
            task_state=None,
            host=host,
            node=host,
            # Instance.create() refuses node without compute_id (gotcha 14).
            compute_id=1,
            launched_at=datetime.datetime.now(datetime.timezone.utc),
            system_metadata={},
            metadata={},
        )
        image = i.get("image")
        boot_meta = None
        if image is not None:
            boot_meta = _boot_meta(image, spec["image_schema"])
            _populate_image_sysmeta(instance, boot_meta, flavor, i)
        instance.create()
        if image is not None:
            _register_defaults(instance, i.get("libvirt_defaults") or {})
            if i.get("sysmeta_set"):
                instance.system_metadata.update(i["sysmeta_set"])
                instance.save()
            _create_request_spec(ctx, instance, boot_meta, flavor)
        created["instances"][instance.uuid] = instance.id
    return created


class _GlanceImage(dict):  # type: ignore[type-arg]
    """What glanceclient returns for an image: the JSON, and the schema it came with."""

    def __init__(self, data: dict[str, Any], schema: dict[str, Any]) -> None:
        super().__init__(data)
        self.schema = schema


def _boot_meta(image: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The image dict nova-api boots with: nova 34 ``nova/image/glance.py``
    ``GlanceImageServiceV2.show`` -> ``_translate_from_glance`` (every non-base attribute
    becomes a property; visibility -> is_public; protected, tags, virtual_size dropped)."""
    from nova.image import glance as nova_glance

    meta: dict[str, Any] = nova_glance._translate_from_glance(_GlanceImage(image, schema))
    return meta


def _populate_image_sysmeta(
    instance: Any, boot_meta: dict[str, Any], flavor: Any, spec: dict[str, Any]
) -> None:
    """nova 34 ``nova/compute/api.py`` ``API._populate_instance_for_create``, image part."""
    from nova import utils

    instance.system_metadata = utils.instance_sys_meta(instance)
    system_meta = utils.get_system_metadata_from_image(boot_meta, flavor)
    system_meta.setdefault("image_base_image_ref", instance.image_ref)
    system_meta["owner_user_name"] = spec.get("user_name", "u-name")
    system_meta["owner_project_name"] = spec.get("project_name", "p-name")
    instance.system_metadata.update(system_meta)


def _register_defaults(instance: Any, defaults: dict[str, str]) -> None:
    """nova 34 ``nova/virt/libvirt/driver.py`` ``_register_undefined_instance_details``:
    only the properties the sysmeta lacks get a default, then ``instance.save()``."""
    if not defaults:
        return
    from nova.virt.libvirt.driver import REGISTER_IMAGE_PROPERTY_DEFAULTS

    unregistered = [
        p for p in REGISTER_IMAGE_PROPERTY_DEFAULTS if f"image_{p}" not in instance.system_metadata
    ]
    for prop in unregistered:
        if prop in defaults:
            instance.system_metadata[f"image_{prop}"] = defaults[prop]
    instance.save()


def _create_request_spec(ctx: Any, instance: Any, boot_meta: Any, flavor: Any) -> None:
    """nova 34 ``nova/compute/api.py`` ``_provision_instances``:
    ``RequestSpec.from_components(...)`` (``ImageMeta.from_dict`` of the boot image), then
    ``create()``, which stores the versioned-object primitive in ``request_specs.spec``."""
    from nova import objects

    req_spec = objects.RequestSpec.from_components(
        ctx, instance.uuid, boot_meta, flavor, None, objects.InstancePCIRequests(requests=[]),
        {}, None, None, project_id=instance.project_id, user_id=instance.user_id,
    )  # fmt: skip
    req_spec.is_bfv = False
    req_spec.create()


def cmd_destroy(nova: Any, ctx: Any, args: argparse.Namespace) -> dict[str, Any]:
    from nova import objects

    destroyed = {}
    for flavorid in args.flavorid:
        flavor = objects.Flavor.get_by_flavor_id(ctx, flavorid)
        flavor.destroy()
        destroyed[flavorid] = flavor.id
    return {"destroyed": destroyed}


def cmd_check(nova: Any, ctx: Any, args: argparse.Namespace) -> dict[str, Any]:
    from nova import context as nova_context
    from nova import objects

    out: dict[str, Any] = {"flavors": {}, "instances": {}, "visible": {}}
    listed = objects.FlavorList.get_all(ctx)
    out["flavor_list"] = {f.flavorid: flavor_fields(f) for f in listed}
    for flavorid in args.flavorid:
        by_flavorid = guarded(
            lambda flavorid=flavorid: flavor_fields(objects.Flavor.get_by_flavor_id(ctx, flavorid))
        )
        entry = {"get_by_flavor_id": by_flavorid}
        if "error" not in by_flavorid:
            entry["get_by_id"] = guarded(
                lambda fid=by_flavorid["id"]: flavor_fields(objects.Flavor.get_by_id(ctx, fid))
            )
        out["flavors"][flavorid] = entry
    for uuid in args.instance:
        instance = objects.Instance.get_by_uuid(ctx, uuid, expected_attrs=["flavor"])
        out["instances"][uuid] = {
            "instance_type_id": instance.instance_type_id,
            "project_id": instance.project_id,
            "flavor": flavor_fields(instance.flavor, with_projects=False),
            "api_flavor": guarded(
                lambda i=instance: flavor_fields(objects.Flavor.get_by_id(ctx, i.instance_type_id))
            ),
        }
    for project in args.as_project:
        user = nova_context.RequestContext(user_id="u-nova-tier", project_id=project)
        out["visible"][project] = {
            "flavor_list": sorted(f.flavorid for f in objects.FlavorList.get_all(user)),
            "get_by_flavor_id": {
                flavorid: "error"
                not in guarded(
                    lambda fid=flavorid, u=user: {"id": objects.Flavor.get_by_flavor_id(u, fid).id}
                )
                for flavorid in args.flavorid
            },
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "destroy", "check"):
        p = sub.add_parser(name)
        p.add_argument("--api", required=True, help="nova_api SQLAlchemy URL (mysql+pymysql://)")
        p.add_argument("--cell", required=True, help="cell (main) DB SQLAlchemy URL")
        if name == "create":
            p.add_argument("--spec", required=True, help="JSON: flavors and instances to create")
        else:
            p.add_argument("--flavorid", action="append", default=[], required=name == "destroy")
        if name == "check":
            p.add_argument("--instance", action="append", default=[])
            p.add_argument("--as-project", action="append", default=[])
    args = parser.parse_args(argv)

    real_stdout = sys.stdout
    # Whatever nova prints must not corrupt the JSON document on stdout.
    with (
        tempfile.TemporaryDirectory(prefix="nova-tier-") as directory,
        contextlib.redirect_stdout(sys.stderr),
    ):
        nova = start_nova(args.api, args.cell, directory)
        ctx = nova.context.get_admin_context()
        handler = {"create": cmd_create, "destroy": cmd_destroy, "check": cmd_check}
        result = handler[args.command](nova, ctx, args)
    json.dump(result, real_stdout, sort_keys=True)
    real_stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
