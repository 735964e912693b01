"""`instance_extra.flavor`: what we write in simulations equals what nova writes, byte for byte,
and what we parse handles every shape nova has produced."""

from __future__ import annotations

from datetime import datetime

import pytest

from recover.nova import FlavorBlobError, parse_flavor_blob
from recover.simulate import Flavor, flavor_blob, flavor_primitive

# Captured from nova 34.0.0 (openstack-facts.md §2, "Real example").
NOVA_34_BLOB = (
    '{"cur": {"nova_object.name": "Flavor", "nova_object.namespace": "nova", "nova_object.version": '
    '"1.2", "nova_object.data": {"id": 1, "name": "m1.recover", "memory_mb": 2048, "vcpus": 2, '
    '"root_gb": 20, "ephemeral_gb": 5, "flavorid": "b7d3a4e2-5c1f-4a8e-9d2b-0f6e1c3a7b95", "swap": '
    '1024, "rxtx_factor": 1.0, "vcpu_weight": 0, "disabled": false, "is_public": true, '
    '"extra_specs": {"hw:cpu_policy": "dedicated", "quota:disk_read_iops_sec": "500"}, '
    '"description": null, "created_at": "2026-11-24T01:20:39Z", "updated_at": null, "deleted_at": '
    'null, "deleted": false}}, "old": null, "new": null}'
)

RECOVER_FLAVOR = Flavor(
    name="m1.recover",
    flavorid="b7d3a4e2-5c1f-4a8e-9d2b-0f6e1c3a7b95",
    memory_mb=2048,
    vcpus=2,
    root_gb=20,
    ephemeral_gb=5,
    swap=1024,
    extra_specs={"hw:cpu_policy": "dedicated", "quota:disk_read_iops_sec": "500"},
    created_at=datetime(2026, 11, 24, 1, 20, 39),
)


def test_simulated_blob_is_byte_identical_to_nova() -> None:
    assert flavor_blob(flavor_primitive(RECOVER_FLAVOR, 1)) == NOVA_34_BLOB


def test_parse_nova_34_blob() -> None:
    parsed = parse_flavor_blob(NOVA_34_BLOB)
    cur = parsed["cur"]
    assert cur is not None and parsed["old"] is None and parsed["new"] is None
    assert (cur.id, cur.flavorid, cur.name) == (1, RECOVER_FLAVOR.flavorid, "m1.recover")
    assert (cur.memory_mb, cur.vcpus, cur.root_gb, cur.ephemeral_gb, cur.swap) == (
        2048,
        2,
        20,
        5,
        1024,
    )
    assert (cur.rxtx_factor, cur.vcpu_weight, cur.disabled, cur.is_public) == (1.0, 0, False, True)
    assert cur.extra_specs == (("hw:cpu_policy", "dedicated"), ("quota:disk_read_iops_sec", "500"))


def test_parse_resize_blob_with_changes_key() -> None:
    large = Flavor(name="m1.recover.large", flavorid="large-1", memory_mb=4096, vcpus=4, root_gb=40,
                   extra_specs={"hw:mem_page_size": "large"})  # fmt: skip
    cur = {**flavor_primitive(RECOVER_FLAVOR, 1), "nova_object.changes": ["extra_specs"]}
    blob = flavor_blob(cur, old=cur, new=flavor_primitive(large, 2))
    parsed = parse_flavor_blob(blob)
    assert parsed["cur"] == parsed["old"]
    assert parsed["new"] is not None and (parsed["new"].id, parsed["new"].flavorid) == (
        2,
        "large-1",
    )


def test_version_1_1_has_no_description_and_old_blobs_default_flags() -> None:
    old = flavor_primitive(RECOVER_FLAVOR, 3, version="1.1")
    assert "description" not in old["nova_object.data"]
    del old["nova_object.data"]["disabled"], old["nova_object.data"]["is_public"]
    cur = parse_flavor_blob(flavor_blob(old))["cur"]
    # nova defaults missing disabled/is_public to False/True.
    assert cur is not None and (cur.disabled, cur.is_public) == (False, True)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        ('{"old": null}', "no 'cur' flavor"),
        ('{"cur": {"id": 1}}', "not a serialized nova object"),
        ('{"cur": {"nova_object.data": {"id": 1}}}', "lacks 'flavorid'"),
        ('{"cur": {"nova_object.data": {"id": "x", "flavorid": "1", "name": "n", "memory_mb": 1, '
         '"vcpus": 1, "root_gb": 1}}}', "bad flavor field"),
    ],
)  # fmt: skip
def test_malformed_blobs_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(FlavorBlobError, match=reason):
        parse_flavor_blob(text)
