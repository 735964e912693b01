"""Glance API failures, each from a real Glance: unreachable, 403, 404, 500, an upload cut short.

One clear line each, exit 1, and the database unchanged (or restored).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.inventory import base_file_name
from tests.glance_api import GlanceApi, create_and_delete, start_glance
from tests.helpers import require_binary

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("qemu-img")
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def raw_disk(path: Path, size: int, seed: str) -> bytes:
    """Incompressible bytes, so an upload takes long enough to be cut."""
    block = hashlib.sha512(seed.encode()).digest() * 8192
    data = (block * (size // len(block) + 1))[:size]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]
    path.write_bytes(data)
    return data


def image_rows(glance: GlanceApi, image_id: str) -> list[dict[str, Any]]:
    rows = glance.query("SELECT * FROM images WHERE id = %s", (image_id,))
    rows += glance.query(
        "SELECT * FROM image_locations WHERE image_id = %s ORDER BY id", (image_id,)
    )
    rows += glance.query(
        "SELECT * FROM image_properties WHERE image_id = %s ORDER BY id", (image_id,)
    )
    rows += glance.query("SELECT * FROM image_tags WHERE image_id = %s ORDER BY id", (image_id,))
    return rows


@pytest.fixture
def broken_glance(glance_api: GlanceApi, glance_api_venv: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[GlanceApi] = []

    def start(**options: Any) -> GlanceApi:
        api = start_glance(tmp_path / f"g{len(started)}", glance_api_venv, glance_api.server,
                           options.pop("db_name", glance_api.db_name),
                           store_dir=glance_api.store_dir, **options)  # fmt: skip
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def deleted_image(glance_api: GlanceApi, tmp_path: Path, size: int = 1 << 20) -> tuple[str, Path]:
    data = raw_disk(tmp_path / "disk.raw", size, str(tmp_path))
    image_id = create_and_delete(glance_api.client(), data, "raw")
    return image_id, tmp_path / "disk.raw"


def test_unreachable_api(glance_api: GlanceApi, tmp_path: Path) -> None:
    image_id, _ = deleted_image(glance_api, tmp_path)
    result = run(["--glance-db", glance_api.db_url, "--glance-endpoint", "http://127.0.0.1:9",
                  "verify", image_id])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: show image {image_id}: cannot reach the Glance API: ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_404_for_a_deleted_image(glance_api: GlanceApi, tmp_path: Path) -> None:
    image_id, _ = deleted_image(glance_api, tmp_path)
    result = run(["--glance-db", glance_api.db_url, "--glance-endpoint", glance_api.endpoint,
                  "verify", image_id])  # fmt: skip
    assert (result.exit_code, result.stderr) == (
        1, f"Error: show image {image_id}: Glance says 404 Not Found\n"
    )  # fmt: skip


def test_403_and_500_change_nothing(
    glance_api: GlanceApi, broken_glance: Any, tmp_path: Path
) -> None:
    # Reads allowed, uploads never ("!"): a real 403 from glance's policy engine.
    forbidden = broken_glance(policy='"context_is_admin": "@"\n"upload_image": "!"\n')
    glance_api.server.query("CREATE DATABASE IF NOT EXISTS ga_empty CHARACTER SET utf8")
    failing = broken_glance(db_name="ga_empty", expect=500)
    image_id, disk = deleted_image(glance_api, tmp_path)
    before = image_rows(glance_api, image_id)
    for api, expected in (
        (
            forbidden,
            f"Error: upload image {image_id}: Glance says 403 Forbidden; the account needs the admin role\n",
        ),
        # Issue 10 item 3: a Glance that answers 500 to everything is refused by the API
        # check before any change, so the rows never went to queued (no journal).
        (failing, "Error: the Glance API check before any change: Glance answered HTTP 500: "),
    ):
        result = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                      "--glance-endpoint", api.endpoint, "image", image_id, "--base-file", str(disk),
                      "--via-api", "--yes"])  # fmt: skip
        assert result.exit_code == 1
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), (
            result.stderr
        )
        # The row went to queued for the upload, and came back exactly as it was.
        assert image_rows(glance_api, image_id) == before
        assert not (glance_api.store_dir / image_id).exists()
    journals = sorted((tmp_path / "state" / "journal").glob("*.json"))
    assert len(journals) == 1
    assert all('"status": "rolled-back"' in j.read_text() for j in journals)


def test_upload_cut_half_way_leaves_rows_and_store_as_before(
    glance_api: GlanceApi, broken_glance: Any, tmp_path: Path
) -> None:
    """Glance dies mid-upload: the rows come back and the partial file is removed (else every
    later upload fails with Duplicate)."""
    victim = broken_glance()
    image_id, disk = deleted_image(glance_api, tmp_path, size=96 << 20)
    before = image_rows(glance_api, image_id)
    partial = glance_api.store_dir / image_id
    killed = threading.Event()

    def kill_when_data_flows() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size > 0:
                os.killpg(victim.process.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.001)

    killer = threading.Thread(target=kill_when_data_flows)
    killer.start()
    result = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                  "--glance-endpoint", victim.endpoint, "image", image_id, "--base-file", str(disk),
                  "--via-api", "--yes"])  # fmt: skip
    killer.join()
    assert killed.is_set(), "the upload finished before it could be cut"
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: upload image {image_id}: "), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert image_rows(glance_api, image_id) == before
    assert not partial.exists()
    # And the next attempt, through the healthy Glance, succeeds.
    again = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                 "--glance-endpoint", glance_api.endpoint, "image", image_id, "--base-file",
                 str(disk), "--via-api", "--yes"])  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert partial.stat().st_size == disk.stat().st_size


def test_via_api_from_host_reads_base_over_ssh(
    glance_api: GlanceApi, tmp_path: Path, ssh_env: Any
) -> None:
    image_id, disk = deleted_image(glance_api, tmp_path)
    base = tmp_path / "instances" / "_base" / base_file_name(image_id)
    base.parent.mkdir(parents=True)
    base.write_bytes(disk.read_bytes())
    result = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                  "--glance-endpoint", glance_api.endpoint, "image", image_id, "--from-host",
                  "compute-12", "--instances-path", str(tmp_path / "instances"), "--via-api",
                  "--yes", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert [c["check"] for c in report["verify"] if not c["ok"]] == []
    assert report["uploaded"]["size"] == disk.stat().st_size


# --- issue 10 item 3: the API is checked before anything is written; after COMMIT, any failure
# --- says the recovery was committed and names the journal and the undo command ---------------


def store_and_journals(glance_api: GlanceApi, image_id: str, tmp_path: Path) -> tuple[bool, int]:
    journals = list((tmp_path / "state" / "journal").glob("*.json"))
    return (glance_api.store_dir / image_id).exists(), len(journals)


@pytest.mark.parametrize("broken", ["unreachable", "http-500", "403-on-list"])
def test_api_that_does_not_answer_refuses_before_anything_is_written(
    glance_api: GlanceApi, broken_glance: Any, tmp_path: Path, broken: str
) -> None:
    if broken == "unreachable":
        endpoint = "http://127.0.0.1:9"
        problem = "cannot reach the Glance API: "
    elif broken == "http-500":
        glance_api.server.query("CREATE DATABASE IF NOT EXISTS ga_empty CHARACTER SET utf8")
        endpoint = broken_glance(db_name="ga_empty", expect=500).endpoint
        problem = "Glance answered HTTP 500: "
    else:
        endpoint = broken_glance(
            policy='"context_is_admin": "@"\n"get_images": "!"\n', expect=403
        ).endpoint
        problem = "Glance says 403 Forbidden; the account needs the admin role"
    image_id, disk = deleted_image(glance_api, tmp_path)
    before = image_rows(glance_api, image_id)
    for extra in ([], ["--dry-run"]):
        result = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                      "--glance-endpoint", endpoint, "image", image_id, "--base-file", str(disk),
                      "--yes", *extra])  # fmt: skip
        assert result.exit_code == 1
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(
            f"Error: the Glance API check before any change: {problem}"
        ), result.stderr
        assert result.stderr.endswith(
            "; nothing was changed; check --glance-endpoint and the token (or OS_*), "
            "or pass --no-verify\n"
        ), result.stderr
        assert image_rows(glance_api, image_id) == before
        assert store_and_journals(glance_api, image_id, tmp_path) == (False, 0)
    # --via-api is refused the same way, before the rows go to queued.
    result = run(["--glance-db", glance_api.db_url, "--store-dir", str(glance_api.store_dir),
                  "--glance-endpoint", endpoint, "image", image_id, "--base-file", str(disk),
                  "--via-api", "--yes"])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: the Glance API check before any change: {problem}")
    assert result.stderr.endswith(
        "; nothing was changed; --via-api needs the Glance API: check --glance-endpoint and the "
        "token (or OS_*)\n"
    ), result.stderr
    assert image_rows(glance_api, image_id) == before
    assert store_and_journals(glance_api, image_id, tmp_path) == (False, 0)


#: Policies under which listing images works (the check before any change passes) but the
#: verification after COMMIT fails, each a real answer of Glance's policy engine: an http:
#: check makes oslo.policy raise, and Glance answers HTTP 500. Glance filters a listing through
#: get_image too, so these run on a database whose only image is the deleted one.
AFTER_COMMIT = {
    "500-on-show": (
        '"context_is_admin": "@"\n"get_image": "http://127.0.0.1:9/"\n',
        "show image {id}: Glance answered HTTP 500: ",
    ),
    "403-on-download": (
        '"context_is_admin": "@"\n"download_image": "!"\n',
        "download image {id}: Glance says 403 Forbidden; the account needs the admin role",
    ),
}


@pytest.mark.parametrize("case", sorted(AFTER_COMMIT))
def test_failure_after_commit_says_committed_and_names_journal_and_undo(
    glance_api: GlanceApi, broken_glance: Any, tmp_path: Path, case: str
) -> None:
    policy, problem = AFTER_COMMIT[case]
    glance_api.server.query("DROP DATABASE IF EXISTS ga_after")
    glance_api.server.query("CREATE DATABASE ga_after CHARACTER SET utf8")
    healthy = broken_glance(db_name="ga_after", sync=True)
    failing = broken_glance(db_name="ga_after", policy=policy)
    image_id, disk = deleted_image(healthy, tmp_path)
    before = image_rows(healthy, image_id)
    result = run(["--glance-db", healthy.db_url, "--store-dir", str(glance_api.store_dir),
                  "--glance-endpoint", failing.endpoint, "image", image_id, "--base-file",
                  str(disk), "--yes"])  # fmt: skip
    assert result.exit_code == 1
    (journal,) = (tmp_path / "state" / "journal").glob("*.json")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    head, _, tail = result.stderr.partition(problem.format(id=image_id))
    assert head == (
        f"Error: the recovery of image {image_id} was COMMITTED (journal {journal}), but "
        "verifying it through the Glance API failed: "
    ), result.stderr
    assert tail.endswith(
        f"; it is in the database now: inspect it; `recover undo {journal}` reverses it\n"
    ), result.stderr
    assert '"status": "committed"' in journal.read_text()
    (row,) = healthy.query("SELECT status, deleted FROM images WHERE id = %s", (image_id,))
    assert (row["status"], row["deleted"]) == ("active", 0)
    assert (glance_api.store_dir / image_id).read_bytes() == disk.read_bytes()
    # The named undo reverses it all.
    undo = run(["--glance-db", healthy.db_url, "--store-dir", str(glance_api.store_dir),
                "undo", str(journal), "--yes"])  # fmt: skip
    assert undo.exit_code == 0, undo.stderr
    assert image_rows(healthy, image_id) == before
    assert not (glance_api.store_dir / image_id).exists()
