"""Which schema generation a database has, decided by reflecting its columns.

Never by version strings: real clouds carry hand-applied fixes and half-run
migrations, and the columns are what our SQL must match.
"""

from __future__ import annotations

from dataclasses import dataclass

from recover.db.engine import Database
from recover.errors import SchemaError

NOVA_CELL_TABLES = (
    "instances",
    "instance_extra",
    "instance_system_metadata",
    "instance_types",
    "instance_type_extra_specs",
    "instance_type_projects",
    "shadow_instance_types",
    "shadow_instance_type_extra_specs",
    "shadow_instance_type_projects",
)
NOVA_API_TABLES = (
    "cell_mappings", "flavors", "flavor_extra_specs", "flavor_projects", "request_specs",
)  # fmt: skip
GLANCE_TABLES = ("images", "image_locations", "image_properties", "image_tags", "image_members")


def _require(db: Database, table: str, columns: tuple[str, ...], kind: str) -> None:
    if not db.has_table(table):
        raise SchemaError(
            f"{db.label} does not look like a {kind} database: it has no {table!r} table"
        )
    have = set(db.table(table).c.keys())
    missing = [c for c in columns if c not in have]
    if missing:
        raise SchemaError(
            f"{db.label}: table {table!r} lacks column {missing[0]!r}; "
            f"this is not a {kind} schema recover knows"
        )


@dataclass(frozen=True)
class NovaCellSchema:
    """A Nova main/cell database."""

    has_instance_extra: bool
    has_legacy_flavors: bool
    has_shadow_flavors: bool

    @classmethod
    def detect(cls, db: Database) -> NovaCellSchema:
        _require(
            db,
            "instances",
            ("uuid", "deleted", "instance_type_id", "image_ref", "host", "vm_state"),
            "Nova cell",
        )
        db.reflect(NOVA_CELL_TABLES)
        return cls(
            has_instance_extra=db.has_table("instance_extra"),
            has_legacy_flavors=db.has_table("instance_types"),
            has_shadow_flavors=db.has_table("shadow_instance_types"),
        )


@dataclass(frozen=True)
class NovaApiSchema:
    """A nova_api database (Mitaka+ has the tables; Newton+ uses ``flavors``)."""

    has_flavors: bool
    has_description: bool
    #: ``request_specs.spec`` (Mitaka+): the boot-time image of each instance.
    has_request_specs: bool = False

    @classmethod
    def detect(cls, db: Database) -> NovaApiSchema:
        _require(db, "cell_mappings", ("uuid", "name", "database_connection"), "nova_api")
        db.reflect(NOVA_API_TABLES)
        has_flavors = db.has_table("flavors")
        return cls(
            has_flavors=has_flavors,
            has_description=has_flavors and "description" in db.table("flavors").c,
            has_request_specs=db.has_table("request_specs")
            and {"instance_uuid", "spec"} <= set(db.table("request_specs").c.keys()),
        )


@dataclass(frozen=True)
class GlanceSchema:
    """``is_public`` (to Newton) or ``visibility`` (Ocata+); multihash (Rocky+)."""

    visibility_column: str
    has_multihash: bool

    @property
    def generation(self) -> str:
        if self.visibility_column == "is_public":
            return "legacy"
        return "modern" if self.has_multihash else "middle"

    @classmethod
    def detect(cls, db: Database) -> GlanceSchema:
        _require(db, "images", ("id", "status", "deleted", "deleted_at", "checksum"), "Glance")
        db.reflect(GLANCE_TABLES)
        columns = set(db.table("images").c.keys())
        # ocata_expand01 has both during a rolling upgrade; visibility is the newer truth.
        if "visibility" in columns:
            visibility = "visibility"
        elif "is_public" in columns:
            visibility = "is_public"
        else:
            raise SchemaError(f"{db.label}: images has neither 'visibility' nor 'is_public'")
        return cls(
            visibility_column=visibility,
            has_multihash={"os_hash_algo", "os_hash_value"} <= columns,
        )
