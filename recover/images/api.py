"""The Glance API through python-glanceclient v2: verify as Nova downloads, upload for any store.

Authentication: ``--glance-endpoint`` with ``--os-token`` for a Glance without
Keystone, else a keystoneauth1 session from the usual ``OS_*`` variables.
Nova downloads with ``images.data(image_id)`` and glanceclient's default
``do_checksum=True`` (nova 34 ``nova/image/glance.py``), which checks the
multihash (else md5) at the end of the stream (glanceclient 4.13
``glanceclient/common/utils.py`` ``serious_integrity_iter``): we do exactly that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from recover.config import Settings
from recover.errors import ConfigError, RecoverError
from recover.images.digest import Digests
from recover.secrets import remember_secret, scrub


class GlanceApiError(RecoverError):
    """The Glance API refused or failed a request."""


def configured(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return settings.glance_endpoint is not None or bool(env.get("OS_AUTH_URL"))


def client(settings: Settings, environ: Mapping[str, str] | None = None) -> Any:
    """A glanceclient v2 Client, or ConfigError when no API is configured."""
    from glanceclient.v2.client import Client

    env = os.environ if environ is None else environ
    if settings.glance_endpoint is not None:
        token = settings.os_token.value if settings.os_token else env.get("OS_TOKEN")
        return Client(settings.glance_endpoint.value, token=token)
    if not env.get("OS_AUTH_URL"):
        raise ConfigError(
            "no Glance API configured",
            hint="pass --glance-endpoint URL (and --os-token), or set OS_AUTH_URL and the other "
            "OS_* variables",
        )
    from keystoneauth1 import loading, session

    options = {
        "auth_url": env["OS_AUTH_URL"],
        "username": env.get("OS_USERNAME"),
        "password": env.get("OS_PASSWORD"),
        "project_name": env.get("OS_PROJECT_NAME") or env.get("OS_TENANT_NAME"),
        "project_id": env.get("OS_PROJECT_ID"),
        "user_domain_name": env.get("OS_USER_DOMAIN_NAME"),
        "user_domain_id": env.get("OS_USER_DOMAIN_ID"),
        "project_domain_name": env.get("OS_PROJECT_DOMAIN_NAME"),
        "project_domain_id": env.get("OS_PROJECT_DOMAIN_ID"),
    }
    remember_secret(options["password"])
    plugin = "token" if env.get("OS_TOKEN") and not options["password"] else "password"
    if plugin == "token":
        remember_secret(env["OS_TOKEN"])
        options = {k: v for k, v in options.items() if k not in ("username", "password")}
        options["token"] = env["OS_TOKEN"]
    loader: Any = loading.get_plugin_loader(plugin)
    auth = loader.load_from_options(**{k: v for k, v in options.items() if v})
    verify: bool | str = env.get("OS_CACERT") or True
    if env.get("OS_INSECURE", "").lower() in ("1", "true", "yes"):
        verify = False
    return Client(
        session=session.Session(auth=auth, verify=verify),
        interface=env.get("OS_INTERFACE", "public"),
        region_name=env.get("OS_REGION_NAME"),
    )


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn glanceclient/keystoneauth exceptions into one clear line."""
    from glanceclient import exc

    try:
        yield
    except exc.HTTPUnauthorized:
        raise GlanceApiError(
            f"{what}: Glance says 401 Unauthorized", hint="check the token or OS_* credentials"
        ) from None
    except exc.HTTPForbidden:
        raise GlanceApiError(
            f"{what}: Glance says 403 Forbidden", hint="the account needs the admin role"
        ) from None
    except exc.HTTPNotFound:
        raise GlanceApiError(f"{what}: Glance says 404 Not Found") from None
    except exc.HTTPException as error:
        code = getattr(error, "code", "?")
        detail = scrub(str(getattr(error, "details", "") or error)).splitlines()[0][:200]
        raise GlanceApiError(f"{what}: Glance answered HTTP {code}: {detail}") from None
    except exc.CommunicationError as error:
        raise GlanceApiError(
            f"{what}: cannot reach the Glance API: {scrub(str(error))[:200]}"
        ) from None
    except Exception as error:  # keystoneauth1 and requests raise their own
        module = type(error).__module__
        if module.startswith(("keystoneauth1", "requests", "urllib3")):
            message = (
                scrub(str(error)).splitlines()[0][:200] if str(error) else type(error).__name__
            )
            raise GlanceApiError(f"{what}: {message}") from None
        raise


def preflight(glance: Any, why: str) -> None:
    """Before anything is written: does the Glance API answer, with these credentials?

    ``GET /v2/images?limit=1`` needs a valid token (``/versions`` does not) and is
    answered only by a Glance v2 API, so a wrong endpoint, an expired token or a
    broken Glance refuses the run here, with nothing changed, instead of after COMMIT.
    """
    try:
        with translated("the Glance API check before any change"):
            for _ in glance.images.list(limit=1):
                break
    except GlanceApiError as error:
        hint = f"{error.hint}; " if error.hint else ""
        raise GlanceApiError(error.message, hint=f"{hint}nothing was changed; {why}") from None


@dataclass
class ApiCheck:
    name: str
    ok: bool
    detail: str


def verify(
    glance: Any, image_id: str, expected: Digests | None = None, status: str = "active"
) -> list[ApiCheck]:
    """Show the image and download it whole through glanceclient, as Nova does.

    ``status``: what the image should say; ``deactivated`` images download for admins only
    (glance 33 ``glance/api/v2/image_data.py``), which this account must be anyway.
    """
    checks: list[ApiCheck] = []
    with translated(f"show image {image_id}"):
        image = glance.images.get(image_id)
    found = image.get("status")
    checks.append(ApiCheck("api status", found == status, f"status={found}"))
    if expected is not None:
        for name, want in (
            ("checksum", expected.md5),
            ("os_hash_value", expected.value),
            ("size", expected.size),
        ):
            got = image.get(name)
            if got is not None or name != "os_hash_value":
                checks.append(ApiCheck(f"api {name}", got == want, f"api {got}, file {want}"))
    algo = image.get("os_hash_algo") or "sha512"
    digest = hashlib.new(algo)
    received = 0
    with translated(f"download image {image_id}"):
        body = glance.images.data(image_id)
    if body is None or getattr(body, "wrapped", body) is None:
        checks.append(ApiCheck("api download", False, "Glance has no data for it (HTTP 204)"))
        return checks
    # Iterate outside `translated`: a failure mid-stream is a failed check, not an abort.
    try:
        for chunk in body:
            digest.update(chunk)
            received += len(chunk)
    except Exception as error:
        checks.append(ApiCheck("api download", False, f"after {received} bytes: {_why(error)}"))
        return checks
    detail = f"{received} bytes, glanceclient integrity check passed ({algo})"
    checks.append(ApiCheck("api download", True, detail))
    return checks


def _why(error: Exception) -> str:
    """A failed download, in words: glanceclient's integrity check, or a stream cut short."""
    if type(error).__module__.startswith(("requests", "urllib3")):
        # requests' ChunkedEncodingError is an OSError too: test for it first.
        return f"{type(error).__name__}: the stream ended before the size Glance announced"
    if isinstance(error, OSError):
        return error.strerror or str(error)  # "Corrupt image download. Hash was ... expected ..."
    raise error


def deactivate(glance: Any, image_id: str) -> None:
    """Deactivate an image again after an upload made it active."""
    with translated(f"deactivate image {image_id}"):
        glance.images.deactivate(image_id)


def upload(glance: Any, image_id: str, data: BinaryIO, size: int) -> None:
    """Upload the bytes of a ``queued`` image; Glance writes the store and the hashes."""
    with translated(f"upload image {image_id}"):
        glance.images.upload(image_id, data, image_size=size)


#: Never sent when creating an image: read-only or reserved in Glance's v2 schema (403), or,
#: for ``os_hash_*``, accepted as a custom property that would then lie about the bytes
#: (glance ``glance/api/v2/images.py`` ``RequestDeserializer.create``; glance-purge.md §2).
NEVER_SENT = ("checksum", "size", "virtual_size", "status", "created_at", "updated_at",
              "locations", "location", "direct_url", "self", "file", "schema", "stores",
              "deleted", "deleted_at", "os_hash_algo", "os_hash_value", "id")  # fmt: skip


def create_body(fields: Mapping[str, Any], properties: Mapping[str, str]) -> dict[str, Any]:
    """The ``POST /v2/images`` body of a re-created image, without its id: the core fields
    Glance lets a caller set, and the properties as strings (the schema allows no other
    type for a custom property); ``os_glance_*`` is a reserved namespace (403)."""
    body: dict[str, Any] = {
        name: fields[name]
        for name in ("name", "owner", "disk_format", "container_format", "min_ram", "min_disk",
                     "visibility")
        if fields.get(name) is not None
    }  # fmt: skip
    for name, value in properties.items():
        if name in NEVER_SENT or name in body or name.startswith("os_glance"):
            continue
        body[name] = str(value)
    return body


def create_with_id(glance: Any, image_id: str, body: Mapping[str, Any]) -> None:
    """``POST /v2/images`` with the image's own id: allowed once no row holds it (glance
    ``ImageRepo.add`` raises Duplicate, 409, on a primary-key collision only)."""
    with translated(f"create image {image_id} through the Glance API"):
        glance.images.create(id=image_id, **body)


def add_member(glance: Any, image_id: str, project: str, status: str) -> None:
    """Share the image with ``project`` and set the membership's status (an admin may set it
    for the member: glance ``ImageMembersController.update``)."""
    with translated(f"add project {project} as a member of image {image_id}"):
        glance.image_members.create(image_id, project)
        glance.image_members.update(image_id, project, status)
