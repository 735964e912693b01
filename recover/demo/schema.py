"""The sandbox's tables: the Mitaka Nova and Glance tables recover touches, for SQLite.

Names, columns, types and unique keys copy ``sql/schemas/nova-legacy-mitaka.sql``
and ``glance-legacy-mitaka.sql``; ``tests/test_demo.py`` compares them with the
real DDL loaded in MariaDB, so they cannot drift.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def _timestamps() -> list[Column]:
    return [
        Column("created_at", DateTime),
        Column("updated_at", DateTime),
        Column("deleted_at", DateTime),
    ]


def _flavor_tables(metadata: MetaData, prefix: str) -> None:
    unique = prefix == ""
    Table(
        f"{prefix}instance_types",
        metadata,
        *_timestamps(),
        Column("name", String(255)),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("memory_mb", Integer, nullable=False),
        Column("vcpus", Integer, nullable=False),
        Column("swap", Integer, nullable=False),
        Column("vcpu_weight", Integer),
        Column("flavorid", String(255)),
        Column("rxtx_factor", Float),
        Column("root_gb", Integer),
        Column("ephemeral_gb", Integer),
        Column("disabled", Boolean),
        Column("is_public", Boolean),
        Column("deleted", Integer),
        *(
            [
                UniqueConstraint("name", "deleted", name="uniq_instance_types0name0deleted"),
                UniqueConstraint(
                    "flavorid", "deleted", name="uniq_instance_types0flavorid0deleted"
                ),
            ]
            if unique
            else []
        ),
    )
    Table(
        f"{prefix}instance_type_extra_specs",
        metadata,
        *_timestamps(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("instance_type_id", Integer, nullable=False),
        Column("key", String(255)),
        Column("value", String(255)),
        Column("deleted", Integer),
        *(
            [
                UniqueConstraint(
                    "instance_type_id",
                    "key",
                    "deleted",
                    name="uniq_instance_type_extra_specs0instance_type_id0key0deleted",
                )
            ]
            if unique
            else []
        ),
    )
    Table(
        f"{prefix}instance_type_projects",
        metadata,
        *_timestamps(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("instance_type_id", Integer, nullable=False),
        Column("project_id", String(255)),
        Column("deleted", Integer),
        *(
            [
                UniqueConstraint(
                    "instance_type_id",
                    "project_id",
                    "deleted",
                    name="uniq_instance_type_projects0instance_type_id0project_id0deleted",
                )
            ]
            if unique
            else []
        ),
    )


def nova_metadata() -> MetaData:
    metadata = MetaData()
    Table(
        "instances",
        metadata,
        *_timestamps(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(255)),
        Column("project_id", String(255)),
        Column("image_ref", String(255)),
        Column("power_state", Integer),
        Column("vm_state", String(255)),
        Column("memory_mb", Integer),
        Column("vcpus", Integer),
        Column("hostname", String(255)),
        Column("host", String(255)),
        Column("launched_at", DateTime),
        Column("terminated_at", DateTime),
        Column("display_name", String(255)),
        Column("launched_on", Text),
        Column("locked", Boolean),
        Column("task_state", String(255)),
        Column("instance_type_id", Integer),
        Column("uuid", String(36), nullable=False, unique=True),
        Column("root_gb", Integer),
        Column("ephemeral_gb", Integer),
        Column("node", String(255)),
        Column("deleted", Integer),
        Column("cleaned", Integer),
    )
    Table(
        "instance_extra",
        metadata,
        *_timestamps(),
        Column("deleted", Integer),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("instance_uuid", String(36), nullable=False),
        Column("flavor", Text),
    )
    Table(
        "instance_system_metadata",
        metadata,
        *_timestamps(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("instance_uuid", String(36), nullable=False),
        Column("key", String(255), nullable=False),
        Column("value", String(255)),
        Column("deleted", Integer),
    )
    _flavor_tables(metadata, "")
    _flavor_tables(metadata, "shadow_")
    return metadata


def _glance_child(metadata: MetaData, name: str, *columns: Column) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("image_id", String(36), nullable=False),
        *columns,
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime),
        Column("deleted_at", DateTime),
        Column("deleted", Boolean, nullable=False),
    )


def glance_metadata() -> MetaData:
    metadata = MetaData()
    Table(
        "images",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("name", String(255)),
        Column("size", BigInteger),
        Column("status", String(30), nullable=False),
        Column("is_public", Boolean, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime),
        Column("deleted_at", DateTime),
        Column("deleted", Boolean, nullable=False),
        Column("disk_format", String(20)),
        Column("container_format", String(20)),
        Column("checksum", String(32)),
        Column("owner", String(255)),
        Column("min_disk", Integer, nullable=False),
        Column("min_ram", Integer, nullable=False),
        Column("protected", Boolean, nullable=False, server_default="0"),
        Column("virtual_size", BigInteger),
    )
    _glance_child(
        metadata,
        "image_locations",
        Column("value", Text, nullable=False),
        Column("meta_data", Text),
        Column("status", String(30), nullable=False, server_default="active"),
    )
    props = _glance_child(
        metadata,
        "image_properties",
        Column("name", String(255), nullable=False),
        Column("value", Text),
    )
    props.append_constraint(
        UniqueConstraint("image_id", "name", name="ix_image_properties_image_id_name")
    )
    _glance_child(metadata, "image_tags", Column("value", String(255), nullable=False))
    members = _glance_child(
        metadata,
        "image_members",
        Column("member", String(255), nullable=False),
        Column("can_share", Boolean, nullable=False),
        Column("status", String(20), nullable=False, server_default="pending"),
    )
    members.append_constraint(
        UniqueConstraint(
            "image_id", "member", "deleted_at", name="image_members_image_id_member_deleted_at_key"
        )
    )
    return metadata
