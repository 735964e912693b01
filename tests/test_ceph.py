"""The Ceph client wrapper (recover/images/ceph.py) against a real single-node Ceph.

Images are written and deleted by glance_store's own RBD driver (tests/ceph.py
``GlanceStoreRbd``); instances' disks are Nova-style clones ``vms/<uuid>_disk``
in clone format 1 and 2. Facts: /work/shared/reference/ceph-rbd.md §1-§3.
"""

from __future__ import annotations

import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from glanceclient import exc as glance_exc

from recover.images.ceph import (
    GLANCE_ORDER,
    SNAP_NAME,
    ZERO_FSID,
    CephAccessError,
    CephBusyError,
    CephClient,
    CephError,
    CephExistsError,
    CephNameError,
    CephNotFoundError,
    RbdLocation,
    mask_keys,
    parse_location,
)
from recover.images.digest import Digests
from tests.ceph import (
    CephCluster,
    GlanceStoreError,
    GlanceStoreRbd,
    hashes,
    nova_clone,
    require_ceph,
)
from tests.glance_api import GlanceApi, create_image

EIGHT_MIB = 8 * 1024 * 1024
#: Pacific's rbd_default_features (61): what glance_store's _create_image and `rbd import` use.
DEFAULT_FEATURES = ("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten")


def client(cluster: CephCluster, user: str = "glance", **kwargs: object) -> CephClient:
    return CephClient(conf=str(cluster.conf_path), user=user, **kwargs)  # type: ignore[arg-type]


def image_bytes(size: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes with runs of zeros (thin-provisioning holes)."""
    block = uuid.UUID(int=seed).bytes * 4096  # 64 KiB
    data = bytearray((block * (size // len(block) + 1))[:size])
    data[EIGHT_MIB // 2 : EIGHT_MIB // 2 + 65536] = bytes(65536)
    return bytes(data)


def glance_add(store: GlanceStoreRbd, size: int, seed: int) -> tuple[str, bytes, dict[str, object]]:
    image_id = str(uuid.uuid4())
    data = image_bytes(size, seed)
    return image_id, data, store.add(image_id, data)


# --- the cluster and glance_store's driver -----------------------------------------------------


def test_cluster_runs_cephx_on_its_own_port(ceph_cluster: CephCluster) -> None:
    fsid = client(ceph_cluster).fsid()
    assert fsid == ceph_cluster.fsid
    assert fsid != ZERO_FSID
    port = int(ceph_cluster.mon_addr.rsplit(":", 1)[1])
    assert port not in (3300, 6789)
    assert client(ceph_cluster, "admin").list_images("images") is not None
    assert ceph_cluster.json("ceph", "auth", "get", "client.glance")[0]["caps"] == {
        "mon": "profile rbd",
        "osd": "profile rbd pool=images",
    }
    # Ceph found each client's keyring through ceph.conf, as on a controller.
    assert (
        ceph_cluster.run(
            "ceph", "auth", "get", "client.glance", user="glance", check=False
        ).returncode
        != 0
    )


def test_reads_an_image_written_by_glance_store(
    ceph_cluster: CephCluster, glance_store_rbd: GlanceStoreRbd
) -> None:
    size = 2 * EIGHT_MIB + 12345  # three objects, the last one partial
    image_id, data, added = glance_add(glance_store_rbd, size, 1)
    md5, sha512 = hashes(data)
    assert added["location"] == f"rbd://{ceph_cluster.fsid}/images/{image_id}/snap"
    assert (added["size"], added["checksum"], added["multihash"]) == (size, md5, sha512)

    ceph = client(ceph_cluster)
    info = ceph.info("images", image_id)
    assert (info.name, info.size, info.order, info.object_size) == (image_id, size, 23, EIGHT_MIB)
    assert info.features == DEFAULT_FEATURES
    assert info.parent is None
    snaps = ceph.snaps("images", image_id)
    assert [(s.name, s.size, s.protected, s.namespace) for s in snaps] == [
        ("snap", size, True, "user")
    ]
    assert ceph.info("images", image_id, snap=SNAP_NAME).protected is True
    digests = ceph.export_digests("images", image_id, SNAP_NAME)
    assert digests == Digests(md5=md5, algo="sha512", value=sha512, size=size)
    assert parse_location(str(added["location"])) == RbdLocation(
        image=image_id, fsid=ceph_cluster.fsid, pool="images", snapshot="snap"
    )
    got = glance_store_rbd.get(str(added["location"]))
    assert (got["size"], got["md5"], got["sha512"]) == (size, md5, sha512)


def test_clone_v1_makes_glance_delete_fail_and_the_image_stays(
    ceph_cluster: CephCluster, glance_store_rbd: GlanceStoreRbd
) -> None:
    image_id, _, added = glance_add(glance_store_rbd, EIGHT_MIB + 7, 2)
    instance = str(uuid.uuid4())
    child = nova_clone(ceph_cluster, image_id, instance, clone_format=1)
    before = ceph_cluster.listing()

    with pytest.raises(GlanceStoreError) as refused:
        glance_store_rbd.delete(str(added["location"]))
    assert refused.value.kind == "InUseByStore"
    assert refused.value.message == (
        "The image cannot be deleted because it is in use through the backend store"
        " outside of Glance."
    )
    assert ceph_cluster.listing() == before
    ceph = client(ceph_cluster)
    assert [(s.name, s.protected) for s in ceph.snaps("images", image_id)] == [("snap", True)]
    assert ceph.export_digests("images", image_id, SNAP_NAME).md5 == added["checksum"]
    # Counting children opens them: Nova's caps can, Glance's (pool=images only) cannot.
    children = client(ceph_cluster, "nova").children("images", image_id)
    assert [(c.pool, c.image, c.trash) for c in children] == [("vms", child, False)]
    with pytest.raises(CephAccessError) as denied:
        ceph.children("images", image_id)
    assert str(denied.value) == (
        f"rbd children images/{image_id}@snap failed: listing children failed:"
        " (1) Operation not permitted; client.glance lacks the Ceph caps for this"
    )
    child_info = client(ceph_cluster, "nova").info("vms", child)
    assert child_info.parent is not None
    assert (child_info.parent.image, child_info.parent.snapshot, child_info.parent.trash) == (
        image_id,
        "snap",
        False,
    )
    # What glance_store ran first, by hand: unprotect is refused while the clone exists.
    with pytest.raises(CephBusyError) as busy:
        ceph.snap_unprotect("images", image_id)
    assert busy.value.errno == 16
    assert ceph_cluster.listing() == before


def test_clone_v2_delete_trashes_the_image_and_it_comes_back(
    ceph_cluster: CephCluster, glance_store_rbd: GlanceStoreRbd
) -> None:
    size = EIGHT_MIB + 4099
    image_id, data, added = glance_add(glance_store_rbd, size, 3)
    md5, sha512 = hashes(data)
    child = nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format=2)
    ceph = client(ceph_cluster)

    glance_store_rbd.delete(str(added["location"]))  # glance_store >= 4.6.0: success

    assert not ceph.exists("images", image_id)
    assert image_id not in ceph.list_images("images")
    (entry,) = ceph.trash_find("images", image_id)
    assert (entry.name, entry.source) == (image_id, "USER")
    assert entry.id != image_id
    # Readable by its RBD id while in the trash: HEAD untouched, `snap` in the trash namespace.
    assert ceph.info("images", rbd_id=entry.id).size == size
    (trashed,) = ceph.snaps("images", rbd_id=entry.id)
    assert (trashed.namespace, trashed.original_name, trashed.protected) == ("trash", "snap", False)
    assert trashed.name != "snap"
    parent = client(ceph_cluster, "nova").info("vms", child).parent
    assert parent is not None
    assert (parent.image, parent.image_id, parent.snapshot, parent.trash) == (
        image_id,
        entry.id,
        trashed.name,
        True,
    )
    # The clone is found from Nova's pool, though its parent is in the trash.
    clones = [c for c in client(ceph_cluster, "nova").clones("vms") if c.parent_image == image_id]
    assert [(c.image, c.parent_pool, c.parent_snapshot) for c in clones] == [
        (child, "images", trashed.name)
    ]

    ceph.trash_restore("images", entry.id)
    assert ceph.exists("images", image_id)
    assert ceph.trash_find("images", image_id) == []
    ceph.snap_create("images", image_id)
    ceph.snap_protect("images", image_id)
    snaps = sorted(
        (s.namespace, s.name == "snap", s.protected) for s in ceph.snaps("images", image_id)
    )
    assert snaps == [("trash", False, False), ("user", True, True)]
    assert ceph.export_digests("images", image_id, SNAP_NAME) == Digests(
        md5, "sha512", sha512, size
    )
    # The old location works again, for glance_store as for Nova.
    got = glance_store_rbd.get(str(added["location"]))
    assert (got["size"], got["md5"], got["sha512"]) == (size, md5, sha512)
    with pytest.raises(CephExistsError):
        ceph.snap_create("images", image_id)

    # Undo: back to the trash exactly as Glance left it.
    ceph.snap_unprotect("images", image_id)
    ceph.snap_remove("images", image_id)
    ceph.trash_move("images", image_id)
    (again,) = ceph.trash_find("images", image_id)
    assert (again.id, again.name, again.source) == (entry.id, image_id, "USER")
    assert [(s.namespace, s.name) for s in ceph.snaps("images", rbd_id=entry.id)] == [
        ("trash", trashed.name)
    ]


def test_import_lays_an_image_out_like_glance_store(
    ceph_cluster: CephCluster, glance_store_rbd: GlanceStoreRbd, tmp_path: Path
) -> None:
    size = 3 * EIGHT_MIB - 1
    glance_id, _, _ = glance_add(glance_store_rbd, 4096, 4)
    ceph = client(ceph_cluster)
    reference = ceph.info("images", glance_id)
    data = image_bytes(size, 5)
    md5, sha512 = hashes(data)

    from_stream, from_path = str(uuid.uuid4()), str(uuid.uuid4())
    assert ceph.import_image("images", from_stream, io.BytesIO(data)) == size
    path = tmp_path / "base.raw"
    path.write_bytes(data)
    assert ceph.import_image("images", from_path, path) is None
    for image in (from_stream, from_path):
        info = ceph.info("images", image)
        assert (info.size, info.order, info.object_size) == (size, GLANCE_ORDER, EIGHT_MIB)
        assert (info.order, info.object_size, info.features) == (
            reference.order,
            reference.object_size,
            reference.features,
        )
        ceph.snap_create("images", image)
        ceph.snap_protect("images", image)
        assert ceph.export_digests("images", image, SNAP_NAME) == Digests(
            md5, "sha512", sha512, size
        )

    copy = io.BytesIO()
    assert ceph.export("images", from_path, SNAP_NAME, copy) == size
    assert copy.getvalue() == data
    with pytest.raises(CephExistsError) as exists:
        ceph.import_image("images", from_path, io.BytesIO(b"x" * 10))
    assert exists.value.errno == 17
    assert ceph.info("images", from_path).size == size
    with pytest.raises(CephBusyError):
        ceph.remove("images", from_path)  # a protected snapshot: rbd refuses
    for image in (from_stream, from_path):
        ceph.snap_unprotect("images", image)
        ceph.snap_remove("images", image)
        ceph.remove("images", image)
    assert {from_stream, from_path}.isdisjoint(ceph.list_images("images"))


def test_an_import_cut_short_raises_and_leaves_a_partial_image_without_snap(
    ceph_cluster: CephCluster,
) -> None:
    class Dying(io.RawIOBase):
        reads = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 3:
                raise OSError(5, "the compute node went away")
            return image_bytes(size, self.reads)

    ceph = client(ceph_cluster)
    image = str(uuid.uuid4())
    with pytest.raises(OSError, match="the compute node went away"):
        ceph.import_image("images", image, Dying())
    # rbd created the image before the data came: what the caller's undo must remove.
    assert ceph.exists("images", image)
    assert ceph.snaps("images", image) == []
    ceph.remove("images", image)
    assert not ceph.exists("images", image)


def test_repeated_and_racing_actions_fail_distinctly(ceph_cluster: CephCluster) -> None:
    """What a second run (or a retry after a crash) meets: one error each, told apart by class."""
    ceph = client(ceph_cluster)
    image = str(uuid.uuid4())
    spec = f"images/{image}"
    ceph.import_image("images", image, io.BytesIO(image_bytes(65536, 9)))
    ceph.snap_create("images", image)
    ceph.snap_protect("images", image)
    with pytest.raises(CephBusyError) as protected:
        ceph.snap_protect("images", image)
    assert str(protected.value) == f"rbd snap protect {spec}@snap failed: snap is already protected"
    ceph.snap_unprotect("images", image)
    with pytest.raises(CephError) as unprotected:
        ceph.snap_unprotect("images", image)
    assert (type(unprotected.value), unprotected.value.errno) == (CephError, 22)
    ceph.snap_remove("images", image)
    with pytest.raises(CephNotFoundError):
        ceph.snap_remove("images", image)
    ceph.trash_move("images", image)
    (entry,) = ceph.trash_find("images", image)
    ceph.import_image("images", image, io.BytesIO(b"other"))  # the name is taken meanwhile
    with pytest.raises(CephExistsError) as taken:
        ceph.trash_restore("images", entry.id)
    assert str(taken.value) == (
        f"rbd trash restore images/{entry.id} failed: error: an image with the same name already"
        " exists, try again with a different name"
    )
    ceph.remove("images", image)
    ceph.trash_restore("images", entry.id)
    with pytest.raises(CephNotFoundError) as gone:
        ceph.trash_restore("images", entry.id)  # the loser of two restores
    assert str(gone.value) == (
        f"rbd trash restore images/{entry.id} failed: error: image does not exist in trash"
    )
    ceph.remove("images", image)
    with pytest.raises(CephNotFoundError):
        ceph.trash_move("images", image)


def test_export_failures(ceph_cluster: CephCluster, glance_store_rbd: GlanceStoreRbd) -> None:
    image_id, _, _ = glance_add(glance_store_rbd, 3 * EIGHT_MIB, 6)
    ceph = client(ceph_cluster)
    missing = str(uuid.uuid4())
    with pytest.raises(CephNotFoundError) as not_found:
        ceph.export("images", missing, SNAP_NAME, io.BytesIO())
    assert str(not_found.value) == (
        f"rbd export images/{missing}@snap failed: error opening image {missing}:"
        " (2) No such file or directory"
    )

    class Full(io.RawIOBase):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        ceph.export("images", image_id, SNAP_NAME, Full())
    # rbd was stopped, not left writing into a pipe nobody reads.
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_export_of(p, image_id)]


def _is_export_of(proc: Path, image_id: str) -> bool:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"export" in argv and image_id.encode() in argv


# --- hostile input ----------------------------------------------------------------------------

FSID = "6a1f0b0e-3a0c-4c55-9d3a-5e2f7c1d9b01"
IMAGE = "0f3a6c2e-8d4b-4b7a-9e1c-2d5f6a7b8c9d"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "rbd://x/images/../y/snap",
            "RBD location 'rbd://x/images/../y/snap' must have exactly 1 or 4 components, not 5",
        ),
        (
            f"rbd://{FSID}/images/{IMAGE}",
            f"RBD location 'rbd://{FSID}/images/{IMAGE}' must have exactly 1 or 4 components, not 3",
        ),
        (
            f"rbd://{FSID}/images/{IMAGE}/snap/",
            f"RBD location 'rbd://{FSID}/images/{IMAGE}/snap/' must have exactly 1 or 4 components, not 5",
        ),
        (
            f"rbd://{FSID}//{IMAGE}/snap",
            f"RBD location 'rbd://{FSID}//{IMAGE}/snap' has an empty component",
        ),
        (
            f"rbd://{FSID}/images/..%2Fy/snap",
            "'../y' is not a Glance image id (a UUID)",
        ),
        (
            f"rbd://{FSID}/images/$(reboot)/snap",
            "'$(reboot)' is not a Glance image id (a UUID)",
        ),
        (
            f"rbd://{FSID}/images;rm -rf ~/{IMAGE}/snap",
            "RBD pool name 'images;rm -rf ~' is not acceptable; a pool name is letters, digits,"
            " '_', '.', '-', not starting with '.' or '-'",
        ),
        (
            f"rbd://{FSID}/-images/{IMAGE}/snap",
            "RBD pool name '-images' is not acceptable; a pool name is letters, digits,"
            " '_', '.', '-', not starting with '.' or '-'",
        ),
        (
            f"rbd://{FSID}/images/{IMAGE}/snap%0a;id",
            "RBD snapshot name 'snap\\n;id' is not acceptable",
        ),
        (
            f"rbd://not-a-fsid/images/{IMAGE}/snap",
            f"RBD location 'rbd://not-a-fsid/images/{IMAGE}/snap': fsid 'not-a-fsid' is not a UUID",
        ),
        (
            f"file:///var/lib/glance/images/{IMAGE}",
            f"RBD location 'file:///var/lib/glance/images/{IMAGE}' does not start with rbd://",
        ),
        ("rbd://`id`", "'`id`' is not a Glance image id (a UUID)"),
    ],
)
def test_hostile_locations_are_refused(uri: str, message: str) -> None:
    with pytest.raises(CephNameError) as refused:
        parse_location(uri)
    assert str(refused.value) == message
    assert "\n" not in str(refused.value)


def test_locations_glance_store_writes_parse_and_round_trip() -> None:
    uri = f"rbd://{FSID}/images/{IMAGE}/snap"
    assert parse_location(uri) == RbdLocation(IMAGE, FSID, "images", "snap")
    assert parse_location(uri).uri() == uri
    assert parse_location(f"rbd://{IMAGE}") == RbdLocation(IMAGE)
    assert parse_location(f"rbd://{IMAGE}").uri() == f"rbd://{IMAGE}"
    zero = parse_location(f"rbd://{ZERO_FSID}/images/{IMAGE}/snap")
    assert zero.zero_fsid
    assert not parse_location(uri).zero_fsid


STAMP = "2026-11-28T08:20:00.123+0000 7f1234567890 -1 librbd::api::Image: list_descendants: x"


@pytest.mark.parametrize(
    "stderr",
    [
        "rbd: listing children failed: (1) Operation not permitted\n",
        # A librbd log line written between the two pieces of rbd's message (seen in CI).
        f"rbd: listing children failed: {STAMP}\n(1) Operation not permitted\n",
        # ... or right after the message, without a newline between them.
        f"rbd: listing children failed: (1) Operation not permitted{STAMP}\n",
    ],
    ids=["plain", "log-line-inside", "log-line-glued"],
)
def test_rbd_messages_interleaved_with_log_lines_are_read_whole(stderr: str) -> None:
    error = CephClient(None, "glance", None)._error("rbd", "children images/x@snap", 1, stderr)
    assert isinstance(error, CephAccessError)
    assert str(error) == (
        "rbd children images/x@snap failed: listing children failed: (1) Operation not "
        "permitted; client.glance lacks the Ceph caps for this"
    )


def test_hostile_names_never_reach_ceph(ceph_cluster: CephCluster) -> None:
    ceph = client(ceph_cluster)
    before = ceph_cluster.listing()
    cases = [
        (lambda: ceph.info("images;rm -rf /", IMAGE), "RBD pool name 'images;rm -rf /'"),
        (lambda: ceph.info("images", "--pool=vms"), "RBD image name '--pool=vms'"),
        (lambda: ceph.snap_create("images", IMAGE, "s@p"), "RBD snapshot name 's@p'"),
        (lambda: ceph.trash_restore("images", "../x"), "RBD image id '../x'"),
        (lambda: ceph.import_image("vms", "a/b", io.BytesIO(b"")), "RBD image name 'a/b'"),
        (lambda: ceph.trash_find("images", "$(id)"), "RBD image name '$(id)'"),
        (lambda: CephClient(user="glance --key x"), "Ceph client id 'glance --key x'"),
        (lambda: CephClient(conf="--keyring=/x"), "ceph.conf path '--keyring=/x'"),
    ]
    for call, start in cases:
        with pytest.raises(CephNameError) as refused:
            call()
        assert str(refused.value).startswith(start + " is not acceptable"), str(refused.value)
        assert "\n" not in str(refused.value)
    assert ceph_cluster.listing() == before


# --- credentials ----------------------------------------------------------------------------


def test_an_unknown_user_gives_one_clear_error(ceph_cluster: CephCluster) -> None:
    with pytest.raises(CephAccessError) as failed:
        client(ceph_cluster, "client.nosuch").list_images("images")
    keyring = ceph_cluster.directory / "ceph.client.nosuch.keyring"
    assert str(failed.value) == (
        "rbd ls images: cannot connect to the Ceph cluster as client.nosuch: no keyring for"
        f" client.nosuch at {keyring}; give --rbd-user a Ceph user whose keyring is readable here"
    )


def test_a_wrong_key_gives_one_clear_error_without_the_key(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    real = ceph_cluster.key("glance")
    authtool = [ceph_cluster.binaries["ceph-authtool"], "--gen-print-key"]
    wrong = subprocess.run(authtool, capture_output=True, text=True, check=True).stdout.strip()
    keyring = tmp_path / "wrong.keyring"
    keyring.write_text(f"[client.glance]\n\tkey = {wrong}\n")
    with pytest.raises(CephAccessError) as failed:
        client(ceph_cluster, keyring=str(keyring)).trash_list("images")
    text = str(failed.value)
    assert text == (
        "rbd trash ls images: cannot connect to the Ceph cluster as client.glance: the cluster"
        " refused the key of client.glance; check --rbd-user and its keyring"
    )
    assert failed.value.errno == 13
    assert real not in text and wrong not in text
    # The right keyring given explicitly works.
    assert (
        client(ceph_cluster, keyring=str(ceph_cluster.keyring("glance"))).trash_list("images")
        is not None
    )


def test_a_malformed_keyring_gives_one_clear_error_without_the_key(
    ceph_cluster: CephCluster, tmp_path: Path
) -> None:
    real = ceph_cluster.key("glance")
    garbled = "AQ" + real[2:-2][::-1] + "=="  # key-shaped, but not a valid key blob
    keyring = tmp_path / "garbled.keyring"
    keyring.write_text(f"[client.glance]\n\tkey = {garbled}\n")
    with pytest.raises(CephAccessError) as failed:
        client(ceph_cluster, keyring=str(keyring)).list_images("images")
    # librados logs "val=<the key>: Malformed input" on stderr; none of it reaches the message.
    assert str(failed.value) == (
        "rbd ls images: cannot connect to the Ceph cluster as client.glance: the keyring"
        f" {keyring} cannot be read (malformed?); give --rbd-user a Ceph user whose keyring is"
        " readable here"
    )
    assert garbled not in str(failed.value) and real not in str(failed.value)


def test_the_key_is_never_in_a_message_or_on_a_command_line(ceph_cluster: CephCluster) -> None:
    key = ceph_cluster.key("glance")
    ceph = client(ceph_cluster, keyring=str(ceph_cluster.keyring("glance")))
    argv = ceph._argv("rbd", ["ls"])
    assert key not in " ".join(argv)
    assert argv[1:] == [
        "--conf", str(ceph_cluster.conf_path), "--id", "glance",
        "--keyring", str(ceph_cluster.keyring("glance")), "--client-mount-timeout", "30", "ls",
    ]  # fmt: skip
    assert key not in repr(ceph)
    assert mask_keys(f"librados: key {key} rejected") == "librados: key *** rejected"
    assert str(CephError(f"bad {key}", hint=f"not {key}")) == "bad ***; not ***"


def test_no_monitor_answering_is_a_timeout_error(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    # Named ceph.conf: Ceph takes $cluster from the file name, and the keyring setting
    # ($cluster.$name.keyring) must still find ceph.client.glance.keyring.
    conf = tmp_path / "ceph.conf"
    # A port nobody listens on: the client retries until client_mount_timeout.
    text = ceph_cluster.conf_path.read_text()
    conf.write_text(text.replace(f"v1:{ceph_cluster.mon_addr}\n", "v1:127.0.0.1:9\n", 1))
    dead = CephClient(conf=str(conf), user="glance", connect_timeout=2)
    with pytest.raises(CephAccessError) as failed:
        dead.list_images("images")
    assert str(failed.value) == (
        "rbd ls images: cannot connect to the Ceph cluster as client.glance: no monitor answered"
        f" within 2 s; check mon_host in {conf}"
    )
    with pytest.raises(CephAccessError) as fsid_failed:
        dead.fsid()
    assert str(fsid_failed.value) == (
        "ceph fsid: cannot connect to the Ceph cluster as client.glance: no monitor answered"
        f" within 2 s; check mon_host in {conf}"
    )


def test_a_missing_rbd_command_is_one_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CephError) as missing:
        CephClient().list_images("images")
    assert str(missing.value) == (
        "the rbd command is not installed; install Ceph's client: apt-get install ceph-common"
    )


def test_missing_ceph_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("tests.ceph.find_binary", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ceph-mon, ceph-osd, ceph, rbd"):
        require_ceph()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install --no-install-recommends"):
        require_ceph()


def test_cluster_memory_and_start_time_are_reported(ceph_cluster: CephCluster) -> None:
    rss = ceph_cluster.rss_kib()
    assert set(rss) == {"mon.a", "osd.0"}
    assert all(kib > 0 for kib in rss.values())
    assert set(ceph_cluster.steps) == {"keys", "mon", "osd", "pools", "users"}
    assert 0 < ceph_cluster.startup_seconds < 60
    assert os.path.exists(ceph_cluster.directory / "run" / "mon.a.pid")


# --- a real Glance API whose store is RBD -------------------------------------------------------


def test_glance_api_stores_in_rbd_and_its_deletes_follow_the_clone_format(
    glance_api_rbd: GlanceApi, ceph_cluster: CephCluster
) -> None:
    glance = glance_api_rbd.client()
    ceph = client(ceph_cluster)
    ids = {}
    for clone_format in (1, 2):
        data = image_bytes(EIGHT_MIB + 3 + clone_format, 10 + clone_format)
        md5, sha512 = hashes(data)
        image_id = create_image(glance, data, "raw", name=f"rbd-v{clone_format}")
        ids[clone_format] = image_id
        uri = f"rbd://{ceph_cluster.fsid}/images/{image_id}/snap"
        shown = glance.images.get(image_id)
        assert (shown["checksum"], shown["os_hash_value"], shown["size"]) == (
            md5,
            sha512,
            len(data),
        )
        assert shown["direct_url"] == uri
        assert glance_api_rbd.query(
            "SELECT value, status, deleted FROM image_locations WHERE image_id = %s", (image_id,)
        ) == [{"value": uri, "status": "active", "deleted": 0}]
        # What Glance wrote, read back by the wrapper: protected snap, 8 MiB objects, same bytes.
        assert [(s.name, s.protected) for s in ceph.snaps("images", image_id)] == [("snap", True)]
        assert ceph.info("images", image_id).object_size == EIGHT_MIB
        assert ceph.export_digests("images", image_id, SNAP_NAME) == Digests(
            md5, "sha512", sha512, len(data)
        )
        nova_clone(ceph_cluster, image_id, str(uuid.uuid4()), clone_format)

    # Clone v1: 409, the image stays active and intact (ceph-rbd.md §1).
    before = ceph_cluster.listing()
    with pytest.raises(glance_exc.HTTPConflict):
        glance.images.delete(ids[1])
    assert glance.images.get(ids[1])["status"] == "active"
    assert ceph_cluster.listing() == before

    # Clone v2: Glance deletes every row; the bytes wait in the RBD trash under the image's id.
    glance.images.delete(ids[2])
    assert glance_api_rbd.query("SELECT status, deleted FROM images WHERE id = %s", (ids[2],)) == [
        {"status": "deleted", "deleted": 1}
    ]
    assert glance_api_rbd.query(
        "SELECT status, deleted FROM image_locations WHERE image_id = %s", (ids[2],)
    ) == [{"status": "deleted", "deleted": 1}]
    assert not ceph.exists("images", ids[2])
    assert [(e.name, e.source) for e in ceph.trash_find("images", ids[2])] == [(ids[2], "USER")]


def test_multistore_glance_api_tags_rbd_locations_with_its_backend(
    glance_api_rbd_multistore: GlanceApi, ceph_cluster: CephCluster
) -> None:
    glance = glance_api_rbd_multistore.client()
    data = image_bytes(EIGHT_MIB // 2 + 1, 20)
    md5, sha512 = hashes(data)
    image_id = create_image(glance, data, "raw", name="rbd-multi")
    shown = glance.images.get(image_id)
    assert (shown["checksum"], shown["stores"]) == (md5, "ceph")
    uri = f"rbd://{ceph_cluster.fsid}/images/{image_id}/snap"
    # glance_store add() puts the backend id into the location's metadata (multi-store).
    assert glance_api_rbd_multistore.query(
        "SELECT value, meta_data, status FROM image_locations WHERE image_id = %s", (image_id,)
    ) == [{"value": uri, "meta_data": '{"store": "ceph"}', "status": "active"}]
    assert client(ceph_cluster).export_digests("images", image_id, SNAP_NAME) == Digests(
        md5, "sha512", sha512, len(data)
    )
