"""The real Glance 33 API serves what ``recover image`` brings back (tests/glance_api.py).

Images are created, uploaded, tagged and deleted through the API, so the rows
``recover`` reads are exactly the ones Glance writes. After ``recover image``
the same API must show, list and serve the image, and python-glanceclient's
verified download (sha512 against ``os_hash_value``, checked at the end of the
stream) must pass, as Nova's download does. ``ga_glance`` persists for the
session: each test makes its own images.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from click.testing import CliRunner, Result
from glanceclient import exc as glance_exc

from recover.cli import cli
from recover.config import ENV_VARS
from recover.inventory import base_file_name
from tests.glance_api import GlanceApi, create_and_delete, create_image
from tests.helpers import require_binary

if TYPE_CHECKING:
    from glanceclient.v2.client import Client

    from tests.sshd import SshdServer

pytestmark = pytest.mark.slow

PROPS = {"hw_disk_bus": "virtio", "os_distro": "cirros", "image_type": "snapshot"}
TAG = "ga-tag"  # create_image's default


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the flags count: no RECOVER_* from the developer's shell; journals in tmp.
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


# --- helpers -------------------------------------------------------------------------------------


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def make_raw(path: Path, seed: int, size: int = 8 << 20) -> Path:
    """A sparse raw disk of ``size`` bytes with non-zero data at a few offsets."""
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, 1 << 20, 5 << 20 | 4096):
            handle.seek(offset)
            handle.write(rng.randbytes(64 << 10))
    return path


def to_qcow2(raw: Path, qcow2: Path) -> Path:
    """``qemu-img convert -f raw -O qcow2`` (deterministic: same input, same bytes)."""
    qemu_img = require_binary("qemu-img")
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return qcow2


def recover(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def db_args(api: GlanceApi) -> list[str]:
    return ["--glance-db", api.db_url, "--store-dir", str(api.store_dir)]


def image_row(api: GlanceApi, image_id: str) -> dict[str, Any]:
    (row,) = api.query("SELECT * FROM images WHERE id = %s", (image_id,))
    return row


def child_rows(api: GlanceApi, table: str, image_id: str) -> list[dict[str, Any]]:
    return api.query(f"SELECT * FROM {table} WHERE image_id = %s ORDER BY id", (image_id,))


def download(client: Client, image_id: str) -> bytes:
    """glanceclient's verified download, iterated to the end (where it checks the hash)."""
    body = client.images.data(image_id)
    # On HTTP 204 (no usable location) glanceclient returns RequestIdProxy(None).
    assert body is not None and body.wrapped is not None, f"{image_id}: HTTP 204, no data"
    return b"".join(body)


def assert_served(api: GlanceApi, image_id: str, expected: bytes) -> dict[str, Any]:
    """The API shows, lists and serves ``image_id``; its bytes are ``expected``; return show."""
    client = api.client()
    row = image_row(api, image_id)
    data = download(client, image_id)
    assert sha512(data) == row["os_hash_value"] == sha512(expected)
    assert (hashlib.md5(data).hexdigest(), len(data)) == (row["checksum"], row["size"])
    show = dict(client.images.get(image_id))
    assert (show["status"], show["os_hash_algo"], show["os_hash_value"]) == (
        "active", "sha512", row["os_hash_value"],
    )  # fmt: skip
    assert (show["checksum"], show["size"]) == (row["checksum"], row["size"])
    assert image_id in {image["id"] for image in client.images.list()}
    # recover's own checks (row vs file, then the same download through the API) agree.
    report = verify(api, image_id)
    assert report["ok"] is True, report
    assert [c["check"] for c in report["checks"] if c["check"].startswith("api ")] == [
        "api status", "api checksum", "api os_hash_value", "api size", "api download",
    ]  # fmt: skip
    return show


def verify(api: GlanceApi, image_id: str) -> dict[str, Any]:
    """``recover verify --format json`` with the database, the store and the API endpoint."""
    result = recover(
        *db_args(api), "--glance-endpoint", api.endpoint, "verify", image_id, "--format", "json"
    )
    assert result.exit_code in (0, 1), (result.stdout, result.stderr, result.exception)
    assert result.stdout, f"no report, only: {result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    return report


def failed_checks(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["detail"] for c in report["checks"] if not c["ok"]}


# --- 1. what an API delete leaves behind (real-glance.md §3) -------------------------------------


def test_api_delete_soft_deletes_every_row_and_removes_the_file(
    glance_api: GlanceApi, tmp_path: Path
) -> None:
    client = glance_api.client()
    data = to_qcow2(make_raw(tmp_path / "d.raw", 1), tmp_path / "d.qcow2").read_bytes()
    image_id = create_image(client, data, "qcow2", **PROPS)
    before = image_row(glance_api, image_id)
    locations = child_rows(glance_api, "image_locations", image_id)
    placed = glance_api.store_dir / image_id
    assert placed.read_bytes() == data
    assert (before["status"], before["deleted"], before["os_hash_value"]) == (
        "active", 0, sha512(data),
    )  # fmt: skip
    assert [(r["value"], r["meta_data"], r["status"], r["deleted"]) for r in locations] == [
        (f"file://{placed}", "{}", "active", 0)
    ]

    client.images.delete(image_id)

    after = image_row(glance_api, image_id)
    stamp = after["deleted_at"]
    assert stamp is not None
    assert (after["status"], after["deleted"], after["updated_at"]) == ("deleted", 1, stamp)
    # Every other column, the integrity ones included, is kept (updated_at has whole
    # seconds: it may equal the upload's).
    changed = {k for k in before if before[k] != after[k]}
    assert changed - {"updated_at"} == {"status", "deleted", "deleted_at"}
    assert [
        (r["value"], r["meta_data"], r["status"], r["deleted"], r["deleted_at"])
        for r in child_rows(glance_api, "image_locations", image_id)
    ] == [(f"file://{placed}", "{}", "deleted", 1, stamp)]
    props = child_rows(glance_api, "image_properties", image_id)
    assert sorted((r["name"], r["value"], r["deleted"], r["deleted_at"]) for r in props) == sorted(
        (name, value, 1, stamp) for name, value in PROPS.items()
    )
    tags = child_rows(glance_api, "image_tags", image_id)
    assert [(r["value"], r["deleted"], r["deleted_at"]) for r in tags] == [(TAG, 1, stamp)]
    assert not placed.exists()
    with pytest.raises(glance_exc.HTTPNotFound):
        client.images.get(image_id)
    assert image_id not in {image["id"] for image in client.images.list()}


# --- 2. every recovery path ends with the API serving the image -------------------------------


def test_qcow2_row_from_the_raw_base_file(glance_api: GlanceApi, tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "guest.raw", 2)  # what nova's _base holds
    original = to_qcow2(raw, tmp_path / "guest.qcow2").read_bytes()
    image_id = create_and_delete(glance_api.client(), original, "qcow2", **PROPS)

    # With --glance-endpoint, recover downloads it through the API itself (--verify).
    result = recover(
        *db_args(glance_api), "--glance-endpoint", glance_api.endpoint,
        "image", image_id, "--base-file", str(raw), "--yes", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "applied"
    assert [(c["check"], c["ok"]) for c in report["verify"]][-1] == ("api download", True)
    assert all(c["ok"] for c in report["verify"]), report["verify"]

    # qemu-img convert is deterministic: the rebuilt qcow2 is the upload, byte for byte.
    show = assert_served(glance_api, image_id, original)
    assert (show["disk_format"], show["container_format"]) == ("qcow2", "bare")


def test_raw_row_from_the_base_file_via_glance_conf(glance_api: GlanceApi, tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "guest.raw", 3)
    image_id = create_and_delete(glance_api.client(), raw.read_bytes(), "raw", **PROPS)

    # Database and store dir both read from the server's own glance-api.conf.
    result = recover(
        "--glance-conf", str(glance_api.conf_path),
        "image", image_id, "--base-file", str(raw), "--yes",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr

    assert assert_served(glance_api, image_id, raw.read_bytes())["disk_format"] == "raw"


def test_pending_delete_file_still_in_store(
    glance_api: GlanceApi, glance_api_delayed: GlanceApi, tmp_path: Path
) -> None:
    data = to_qcow2(make_raw(tmp_path / "d.raw", 4), tmp_path / "d.qcow2").read_bytes()
    image_id = create_image(glance_api.client(), data, "qcow2", **PROPS)
    glance_api_delayed.client().images.delete(image_id)  # delayed_delete = true, no scrubber
    row = image_row(glance_api, image_id)
    assert (row["status"], row["deleted"]) == ("pending_delete", 1)
    assert [
        (r["status"], r["deleted"]) for r in child_rows(glance_api, "image_locations", image_id)
    ] == [("pending_delete", 1)]
    placed = glance_api.store_dir / image_id
    inode, mtime = placed.stat().st_ino, placed.stat().st_mtime_ns

    result = recover(*db_args(glance_api), "image", image_id, "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "the store still holds" in result.stdout

    assert (placed.stat().st_ino, placed.stat().st_mtime_ns) == (inode, mtime)  # untouched
    assert_served(glance_api, image_id, data)
    assert_served(glance_api_delayed, image_id, data)


def test_qcow2_row_from_the_compute_node_over_ssh(
    glance_api: GlanceApi, ssh_env: SshdServer, tmp_path: Path
) -> None:
    instances = tmp_path / "instances"
    raw = make_raw(tmp_path / "guest.raw", 5)
    original = to_qcow2(raw, tmp_path / "guest.qcow2").read_bytes()
    image_id = create_and_delete(glance_api.client(), original, "qcow2", **PROPS)
    (instances / "_base").mkdir(parents=True)
    raw.rename(instances / "_base" / base_file_name(image_id))

    result = recover(
        *db_args(glance_api), "image", image_id, "--from-host", "compute-12",
        "--instances-path", str(instances), "--yes",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "on compute-12 (ssh) (raw -> qcow2)" in result.stdout

    assert_served(glance_api, image_id, original)


def test_qcow2_row_uploaded_through_the_api(glance_api: GlanceApi, tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "guest.raw", 9)
    original = to_qcow2(raw, tmp_path / "guest.qcow2").read_bytes()
    image_id = create_and_delete(glance_api.client(), original, "qcow2", **PROPS)
    (old_location,) = child_rows(glance_api, "image_locations", image_id)

    result = recover(
        *db_args(glance_api), "--glance-endpoint", glance_api.endpoint,
        "image", image_id, "--base-file", str(raw), "--via-api", "--yes", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["uploaded"] == {"md5": hashlib.md5(original).hexdigest(), "size": len(original)}
    assert all(c["ok"] for c in report["verify"]), report["verify"]

    assert_served(glance_api, image_id, original)
    # Glance wrote the file and a location row of its own; the deleted one stays (real-glance.md Q1).
    locations = child_rows(glance_api, "image_locations", image_id)
    assert [(r["id"], r["status"], r["deleted"]) for r in locations] == [
        (old_location["id"], "deleted", 1),
        (locations[-1]["id"], "active", 0),
    ]
    assert locations[-1]["value"] == f"file://{glance_api.store_dir / image_id}"


@pytest.mark.parametrize("via_api", [False, True], ids=["store", "via-api"])
def test_other_bytes_for_a_raw_image_are_refused(
    glance_api: GlanceApi, tmp_path: Path, via_api: bool
) -> None:
    """A raw image Glance itself stored and deleted; a _base of its size with other data (a
    damaged copy) is refused, naming both md5s, before any row, file or upload changes."""
    raw = make_raw(tmp_path / "guest.raw", 10)
    image_id = create_and_delete(glance_api.client(), raw.read_bytes(), "raw", **PROPS)
    other = make_raw(tmp_path / "other.raw", 11)  # same size, other data
    before = {t: child_rows(glance_api, t, image_id) for t in ("image_locations", "image_tags")}
    row = image_row(glance_api, image_id)
    result = recover(
        *db_args(glance_api), "--glance-endpoint", glance_api.endpoint, "image", image_id,
        "--base-file", str(other), *(["--via-api"] if via_api else []), "--yes",
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: the bytes from {other} on local are not image {image_id}'s raw upload (md5 "
        f"{hashlib.md5(other.read_bytes()).hexdigest()} where the row says "
        f"{hashlib.md5(raw.read_bytes()).hexdigest()}): nova keeps a raw upload byte for byte "
        "in _base, so this copy is partial or damaged; use a complete copy of the _base file; "
        "--accept-new-bytes stores these bytes anyway, reported as NEW data\n"
    )
    assert image_row(glance_api, image_id) == row
    assert {t: child_rows(glance_api, t, image_id) for t in before} == before
    assert not (glance_api.store_dir / image_id).exists()
    assert not (tmp_path / "state" / "journal").exists()


# --- 3. a wrong row is caught by glanceclient's check ----------------------------------------------


@pytest.mark.parametrize("column", ["os_hash_value", "size"])
def test_wrong_row_fails_the_verified_download(
    glance_api: GlanceApi, tmp_path: Path, column: str
) -> None:
    raw = make_raw(tmp_path / "guest.raw", 6)
    data = raw.read_bytes()
    image_id = create_and_delete(glance_api.client(), data, "raw")
    result = recover(*db_args(glance_api), "image", image_id, "--base-file", str(raw), "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert_served(glance_api, image_id, data)

    if column == "os_hash_value":
        wrong = sha512(b"not the image")
        glance_api.query("UPDATE images SET os_hash_value = %s WHERE id = %s", (wrong, image_id))
        expected = f"Corrupt image download. Hash was {sha512(data)} expected {wrong}"
    else:
        # Glance sends images.size bytes (Content-Length) of the longer file.
        glance_api.query("UPDATE images SET size = size - 4096 WHERE id = %s", (image_id,))
        expected = (
            f"Corrupt image download. Hash was {sha512(data[:-4096])} expected {sha512(data)}"
        )
    with pytest.raises(OSError) as caught:
        download(glance_api.client(), image_id)
    assert type(caught.value) is BrokenPipeError  # IOError(errno.EPIPE, ...)
    assert caught.value.strerror == expected
    # recover verify sees it both in the row and through the API download.
    failed = failed_checks(verify(glance_api, image_id))
    received = len(data) - 4096 if column == "size" else len(data)
    assert failed["api download"] == f"after {received} bytes: {expected}"
    assert {"sha512" if column == "os_hash_value" else "size", "api download"} <= set(failed)


def size_too_large(api: GlanceApi, tmp_path: Path, seed: int) -> tuple[str, int]:
    """A recovered raw image whose row then says 4096 bytes more than the file: (id, file size)."""
    raw = make_raw(tmp_path / "guest.raw", seed)
    image_id = create_and_delete(api.client(), raw.read_bytes(), "raw")
    result = recover(*db_args(api), "image", image_id, "--base-file", str(raw), "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    api.query("UPDATE images SET size = size + 4096 WHERE id = %s", (image_id,))
    return image_id, raw.stat().st_size


def test_size_larger_than_the_file_breaks_the_connection(
    glance_api: GlanceApi, tmp_path: Path
) -> None:
    image_id, size = size_too_large(glance_api, tmp_path, 7)
    # Glance announces Content-Length = images.size, then ends the body early; the
    # client sees the connection close after gunicorn's keep-alive (2 s).
    with pytest.raises(requests.exceptions.ChunkedEncodingError) as caught:
        download(glance_api.client(), image_id)
    assert f"IncompleteRead({size} bytes read, 4096 more expected)" in str(caught.value)


def test_verify_reports_a_truncated_download_as_a_failed_check(
    glance_api: GlanceApi, tmp_path: Path
) -> None:
    image_id, size = size_too_large(glance_api, tmp_path, 10)
    failed = failed_checks(verify(glance_api, image_id))
    assert failed["api download"] == (
        f"after {size} bytes: ChunkedEncodingError: the stream ended before the size Glance announced"
    )
    assert failed["size"] == f"row {size + 4096}, file {size}"


# --- 4. the recovered image is the image it was (real-glance.md R1) -------------------------------


def test_recovered_image_shows_as_before_and_deletes_again(
    glance_api: GlanceApi, tmp_path: Path
) -> None:
    client = glance_api.client()
    raw = make_raw(tmp_path / "guest.raw", 8)
    original = to_qcow2(raw, tmp_path / "guest.qcow2").read_bytes()
    image_id = create_image(client, original, "qcow2", name="ga-r1", **PROPS)
    before = dict(client.images.get(image_id))
    client.images.delete(image_id)

    result = recover(*db_args(glance_api), "image", image_id, "--base-file", str(raw), "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr

    after = assert_served(glance_api, image_id, original)
    assert (after["visibility"], after["owner"]) == (before["visibility"], before["owner"])
    assert (after["tags"], {k: after.get(k) for k in PROPS}) == ([TAG], PROPS)
    assert {k for k in before if before[k] != after.get(k)} <= {"updated_at"}
    assert set(after) == set(before)
    listed = {image["id"]: dict(image) for image in client.images.list(filters={"tag": [TAG]})}
    assert listed[image_id]["tags"] == [TAG]
    assert {k: listed[image_id].get(k) for k in PROPS} == PROPS

    client.images.delete(image_id)  # the state recover left is one Glance can delete again
    with pytest.raises(glance_exc.HTTPNotFound):
        client.images.get(image_id)
    assert not (glance_api.store_dir / image_id).exists()
    row = image_row(glance_api, image_id)
    assert (row["status"], row["deleted"]) == ("deleted", 1)
    for table in ("image_locations", "image_properties", "image_tags"):
        rows = child_rows(glance_api, table, image_id)
        assert rows and {(r["deleted"], r["deleted_at"]) for r in rows} == {
            (1, row["deleted_at"])
        }, table


def test_fixture_describes_itself(glance_api: GlanceApi) -> None:
    conf = glance_api.conf_path.read_text()
    assert f"filesystem_store_datadir = {glance_api.store_dir}" in conf
    assert f"connection = {glance_api.db_url}" in conf
    assert "delayed_delete = false" in conf
    assert glance_api.endpoint == f"http://127.0.0.1:{glance_api.port}"
    assert glance_api.db_url.endswith(f"/{glance_api.db_name}?charset=utf8")
    # No token at all: the unauthenticated-context pipeline plus the policy override.
    assert isinstance(list(glance_api.client().images.list()), list)
    assert "Listening at: " + glance_api.endpoint in glance_api.log_tail(200)


# --- issue 10 item 9: a deactivated row deleted by hand comes back deactivated ------------------


@pytest.mark.parametrize("path", ["store-file", "via-api"])
def test_deactivated_row_deleted_by_hand_comes_back_deactivated(
    glance_api: GlanceApi, tmp_path: Path, path: str
) -> None:
    """status='deactivated' with deleted=1 (a soft delete made in SQL): recovered, still
    deactivated (an admin blocked downloads; recovering must not lift that), served to admins
    with a verified download, and reactivated by the admin's own call."""
    raw = make_raw(tmp_path / "guest.raw", 21)
    data = raw.read_bytes()
    client = glance_api.client()
    image_id = create_image(client, data, "raw", **PROPS)
    client.images.deactivate(image_id)
    glance_api.query(
        "UPDATE images SET deleted = 1, deleted_at = UTC_TIMESTAMP() WHERE id = %s", (image_id,)
    )
    args = [*db_args(glance_api), "--glance-endpoint", glance_api.endpoint, "image", image_id]
    if path == "via-api":  # the data is gone too: Glance writes it again from the _base copy
        glance_api.query(
            "UPDATE image_locations SET deleted = 1, status = 'deleted' WHERE image_id = %s",
            (image_id,),
        )
        (glance_api.store_dir / image_id).unlink()
        args += ["--base-file", str(raw), "--via-api"]
    with pytest.raises(glance_exc.HTTPNotFound):
        client.images.get(image_id)

    result = recover(*args, "--yes", "--format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    status = report["verify"][0]
    assert (status["check"], status["ok"], status["detail"]) == (
        "api status", True, "status=deactivated",
    )  # fmt: skip
    assert all(c["ok"] for c in report["verify"]), report["verify"]
    row = image_row(glance_api, image_id)
    assert (row["status"], row["deleted"], row["deleted_at"]) == ("deactivated", 0, None)
    assert client.images.get(image_id)["status"] == "deactivated"
    assert verify(glance_api, image_id)["ok"] is True

    client.images.reactivate(image_id)
    assert_served(glance_api, image_id, data)


# --- 5. multi-store: the location of the store the file goes to (issue 10 item 4) ----------------

MULTISTORE = {"fast": "file", "slow": "file", "web": "http"}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving a directory: what the ``web:http`` store reads."""
    root = tmp_path_factory.mktemp("web")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def glance_multistore(
    glance_api: GlanceApi,
    glance_api_venv: Path,
    tmp_path_factory: pytest.TempPathFactory,
    web_server: tuple[str, Path],
) -> Iterator[GlanceApi]:
    """A Glance with ``enabled_backends = fast:file, slow:file, web:http`` (default ``fast``),
    on a database of its own (``ga_multi``, synced by ``glance-manage``). Glance refuses
    loopback URLs as locations unless allowed (glance 33 ``glance/common/utils.py``
    ``get_validated_address``): the web server's host and port are."""
    from tests.glance_api import start_glance

    glance_api.server.query("DROP DATABASE IF EXISTS ga_multi")
    glance_api.server.query("CREATE DATABASE ga_multi CHARACTER SET utf8")
    directory = tmp_path_factory.mktemp("glance-multi")
    port = web_server[0].rsplit(":", 1)[1]
    api = start_glance(
        directory, glance_api_venv, glance_api.server, "ga_multi", store_dir=directory / "fast",
        sync=True, backends=MULTISTORE,
        extra=f"\n[import_filtering_opts]\nallowed_hosts = [127.0.0.1]\nallowed_ports = [{port}]\n",
    )  # fmt: skip
    try:
        yield api
    finally:
        api.stop()


def fast_and_web_image(api: GlanceApi, web: tuple[str, Path], data: bytes) -> str:
    """Upload into ``fast`` (location 1), add the same bytes on the web server as a second
    location (``web``, the newest row), then delete the image: all through the API."""
    client = api.client()
    image_id = create_image(client, data, "raw", **PROPS)
    url, root = web
    (root / image_id).write_bytes(data)
    client.images.add_location(image_id, f"{url}/{image_id}", {"store": "web"})
    client.images.delete(image_id)
    return image_id


def multistore_args(api: GlanceApi) -> list[str]:
    return ["--glance-conf", str(api.conf_path)]


def test_multistore_revives_the_fast_location_and_leaves_the_web_one(
    glance_multistore: GlanceApi, web_server: tuple[str, Path], tmp_path: Path
) -> None:
    api = glance_multistore
    raw = make_raw(tmp_path / "guest.raw", 11)
    image_id = fast_and_web_image(api, web_server, raw.read_bytes())
    fast_file = api.store_dir / image_id
    before = child_rows(api, "image_locations", image_id)
    assert [(r["value"], json.loads(r["meta_data"]), r["status"], r["deleted"]) for r in before] == [
        (f"file://{fast_file}", {"store": "fast"}, "deleted", 1),
        (f"{web_server[0]}/{image_id}", {"store": "web"}, "deleted", 1),
    ]  # fmt: skip
    assert not fast_file.exists()

    result = recover(
        *multistore_args(api), "--glance-endpoint", api.endpoint,
        "image", image_id, "--base-file", str(raw), "--yes", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert all(c["ok"] for c in report["verify"]), report["verify"]
    assert (
        f"location rows of other stores left as Glance left them: {before[1]['id']} (store web)"
        in report["notes"]
    )

    after = child_rows(api, "image_locations", image_id)
    fast_row, web_row = after
    assert (fast_row["id"], fast_row["value"], json.loads(fast_row["meta_data"])) == (
        before[0]["id"], f"file://{fast_file}", {"store": "fast"},
    )  # fmt: skip
    assert (fast_row["status"], fast_row["deleted"], fast_row["deleted_at"]) == ("active", 0, None)
    assert web_row == before[1]  # exactly as Glance left it
    assert fast_file.read_bytes() == raw.read_bytes()
    assert_served(api, image_id, raw.read_bytes())
    checks = {c["check"]: (c["ok"], c["detail"]) for c in verify_multi(api, image_id)["checks"]}
    assert checks["location store"] == (True, "meta_data store 'fast', file in store 'fast'")


def verify_multi(api: GlanceApi, image_id: str, *extra: str) -> dict[str, Any]:
    result = recover(*multistore_args(api), *extra, "verify", image_id, "--format", "json")
    assert result.stdout, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    return report


def test_verify_catches_a_file_location_under_another_stores_id(
    glance_multistore: GlanceApi, web_server: tuple[str, Path], tmp_path: Path
) -> None:
    """What the first release did: the web row rewritten to the fast file, keeping its store id.
    Glance answers HTTP 500 on download; `recover verify` (without the API) must say so too."""
    api = glance_multistore
    raw = make_raw(tmp_path / "guest.raw", 12)
    image_id = fast_and_web_image(api, web_server, raw.read_bytes())
    result = recover(*multistore_args(api), "image", image_id, "--base-file", str(raw), "--yes")
    assert result.exit_code == 0, result.stdout + result.stderr
    fast_row, web_row = child_rows(api, "image_locations", image_id)
    api.query(
        "UPDATE image_locations SET deleted = 1, status = 'deleted' WHERE id = %s",
        (fast_row["id"],),
    )
    api.query(
        "UPDATE image_locations SET value = %s, deleted = 0, deleted_at = NULL, status = 'active' "
        "WHERE id = %s",
        (fast_row["value"], web_row["id"]),
    )
    with pytest.raises(glance_exc.HTTPInternalServerError):
        b"".join(api.client().images.data(image_id))

    report = verify_multi(api, image_id)
    assert failed_checks(report) == {
        "location store": "meta_data store 'web', file in store 'fast'"
    }
