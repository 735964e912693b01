"""`recover image` from local sources, on every Glance generation, with real qemu-img and MariaDB."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from recover.cli import cli
from recover.demo import SNAPSHOT
from tests import clouds
from tests.clouds import MakeDb
from tests.helpers import REPO_ROOT, committed_note, dump_rows, require_binary
from tests.images import PROPERTIES, Scenario, digests, incident_image, qemu_info_format

GENERATIONS = [
    pytest.param(clouds.LEGACY_GLANCE, id="legacy"),
    pytest.param(clouds.MIDDLE_GLANCE, id="middle"),
    pytest.param(clouds.MODERN_GLANCE, id="modern"),
]


@pytest.fixture(autouse=True)
def _tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("qemu-img")
    monkeypatch.setenv("RECOVER_STATE_DIR", str(tmp_path / "state"))


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def store_listing(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir())


def assert_recovered(scenario: Scenario, expect_format: str = "qcow2") -> tuple[str, str, int]:
    placed = scenario.store / SNAPSHOT
    md5, sha, size = digests(placed)
    row = scenario.row()
    assert (row["status"], row["deleted"], row["deleted_at"]) == ("active", 0, None)
    assert (row["checksum"], row["size"], row["disk_format"]) == (md5, size, expect_format)
    if "os_hash_value" in row:
        assert (row["os_hash_algo"], row["os_hash_value"]) == ("sha512", sha)
    assert qemu_info_format(placed) == expect_format
    children = scenario.children()
    assert children["image_properties"] == [(name, 0) for name in sorted(PROPERTIES)]
    assert children["image_tags"] == [("golden", 0)]
    assert children["image_members"] == [("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", 0)]
    assert children["image_locations"] == [(f"file://{placed}", "active", 0, "{}")]
    return md5, sha, size


@pytest.mark.parametrize("schema", GENERATIONS)
def test_incident_image_rebuilt_from_base_file_as_qcow2(
    make_db: MakeDb, tmp_path: Path, schema: str
) -> None:
    scenario = incident_image(make_db, tmp_path, schema)
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert result.exit_code == 0, result.stderr
    md5, sha, size = assert_recovered(scenario)
    # qemu-img convert is deterministic: the rebuilt qcow2 is the snapshot Glance had, byte for byte.
    assert (md5, sha, size) == scenario.original
    placed = scenario.store / SNAPSHOT
    assert placed.stat().st_mode & 0o777 == 0o640  # like the store's other file
    # Only the image file is new: the lock file went with the run (PRODUCT.md, safety model).
    assert store_listing(scenario.store) == sorted(
        [SNAPSHOT, "6e2d4b1a-8c3f-4e5d-9a7b-1f0c2e3d4a5b"]
    )
    assert "Done: recover image" in result.stdout


def test_raw_row_gets_a_raw_copy(make_db: MakeDb, tmp_path: Path) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario, "raw") == digests(scenario.base)
    placed = scenario.store / SNAPSHOT
    assert placed.stat().st_blocks * 512 < placed.stat().st_size  # holes stayed holes


def test_pending_delete_with_file_present_is_undeleted_only(
    make_db: MakeDb, tmp_path: Path
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, delayed=True)
    placed = scenario.store / SNAPSHOT
    inode, mtime = placed.stat().st_ino, placed.stat().st_mtime_ns
    before = scenario.row()
    result = run(scenario.args("image", SNAPSHOT, "--yes"))
    assert result.exit_code == 0, result.stderr
    assert "the store still holds" in result.stdout
    row = scenario.row()
    assert (row["checksum"], row["os_hash_value"], row["size"]) == (
        before["checksum"], before["os_hash_value"], before["size"],
    )  # fmt: skip
    assert (placed.stat().st_ino, placed.stat().st_mtime_ns) == (inode, mtime)
    assert_recovered(scenario)


def test_dry_run_changes_nothing(make_db: MakeDb, tmp_path: Path, mariadb_server: Any) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--dry-run"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"-- recover image {SNAPSHOT} (ucs-app-golden-snap)"
    assert (
        "deleted_at=NULL, deleted=0, status='active' WHERE image_locations.id = 1;" in result.stdout
    )
    assert "hashes and sizes are computed from the new file" in result.stdout
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


def test_undo_puts_rows_back_and_removes_the_file(make_db: MakeDb, tmp_path: Path) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    deleted = dump_rows(scenario.glance_url)
    assert (
        run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes")).exit_code
        == 0
    )
    (journal,) = (tmp_path / "state" / "journal").glob("*-image-*.json")
    assert json.loads(journal.read_text())["files"] == [
        {
            "created": True,
            "md5": scenario.original[0],
            "path": str(scenario.store / SNAPSHOT),
            "size": scenario.original[2],
        }
    ]
    result = run(scenario.args("undo", str(journal), "--yes"))
    assert result.exit_code == 0, result.stderr
    assert dump_rows(scenario.glance_url) == deleted
    assert not (scenario.store / SNAPSHOT).exists()


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (
            "not-a-uuid",
            "Error: 'not-a-uuid' is not an image UUID; e.g. b3986e99-1988-43bb-b47c-0b34438bc189\n",
        ),
        ("../../../etc/passwd", "Error: '../../../etc/passwd' is not an image UUID"),
        (f"{SNAPSHOT}/..", f"Error: '{SNAPSHOT}/..' is not an image UUID"),
        (
            "0" * 8 + "-0000-4000-8000-" + "0" * 12,
            "Error: image 00000000-0000-4000-8000-000000000000 has no images row: it was purged",
        ),
    ],
)
def test_bad_image_arguments_change_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, argument: str, message: str
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(scenario.args("image", "--base-file", str(scenario.base), "--yes", "--", argument))
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


def test_active_image_is_refused(make_db: MakeDb, tmp_path: Path) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    assert (
        run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes")).exit_code
        == 0
    )
    again = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert (again.exit_code, again.stderr) == (
        1,
        f"Error: image {SNAPSHOT} is active: nothing to recover\n",
    )


def test_iso_row_needs_disk_format_raw(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    # An iso upload is raw data, kept byte for byte in _base: its row has the _base's hashes.
    md5, sha, size = digests(scenario.base)
    mariadb_server.query(
        f"UPDATE i_glance.images SET disk_format = 'iso', checksum = '{md5}', size = {size}, "
        f"os_hash_value = '{sha}' WHERE id = '{SNAPSHOT}'"
    )
    refused = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert refused.exit_code == 1
    assert refused.stderr == (
        f"Error: image {SNAPSHOT} is 'iso', which qemu-img cannot write; pass --disk-format raw "
        "to store the _base data as raw (the row is updated to match)\n"
    )
    done = run(
        scenario.args(
            "image", SNAPSHOT, "--base-file", str(scenario.base), "--disk-format", "raw", "--yes"
        )
    )
    assert done.exit_code == 0, done.stderr
    assert assert_recovered(scenario, "raw") == digests(scenario.base)


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        ("missing", "--base-file {base}.nope does not exist or is not a regular file"),
        ("part", "{base}.part is a file nova is still writing; use the finished _base file"),
        ("backing", "{base}.overlay on local has a backing file"),
        (
            "small",
            "{base}.small on local has a virtual size of 1048576 bytes, but image "
            f"{SNAPSHOT} had 67108864 (its row's virtual_size): a partial copy",
        ),
        ("truncated", "qemu-img info failed: "),
    ],
)
def test_bad_sources_change_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, prepare: str, message: str
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    base = scenario.base
    source = {"missing": Path(f"{base}.nope"), "part": Path(f"{base}.part"), "backing": Path(f"{base}.overlay"),
              "small": Path(f"{base}.small"), "truncated": Path(f"{base}.qcow2")}[prepare]  # fmt: skip
    if prepare == "part":
        source.write_bytes(base.read_bytes())
    elif prepare == "backing":
        subprocess.run(
            ["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(base), str(source)],
            check=True,
            capture_output=True,
        )
    elif prepare == "small":
        subprocess.run(
            ["qemu-img", "create", "-f", "raw", str(source), "1M"], check=True, capture_output=True
        )
    elif prepare == "truncated":
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(base), str(source)], check=True
        )
        with open(source, "r+b") as handle:
            handle.truncate(100)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(source), "--yes"))
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert message.format(base=base) in result.stderr, result.stderr
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


def partial_copy(base: Path, size: int) -> Path:
    """The first ``size`` bytes of ``base``: what ``scp`` has written so far (``head -c``)."""
    partial = base.with_name(f"{base.name}.scp-in-progress")
    with open(base, "rb") as source, open(partial, "wb") as target:
        target.write(source.read(size))
    return partial


NEW_BYTES_HINT = (
    "use a complete copy of the _base file; --accept-new-bytes stores these bytes anyway, "
    "reported as NEW data"
)


@pytest.mark.parametrize("virtual_size", ["known", "null"])
def test_partial_copy_of_a_raw_images_base_is_refused(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, virtual_size: str
) -> None:
    """A raw upload's virtual size is its size: 40 of its 64 MiB is refused before any copy."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    basis = "its row's virtual_size"
    if virtual_size == "null":
        mariadb_server.query(
            f"UPDATE i_glance.images SET virtual_size = NULL WHERE id = '{SNAPSHOT}'"
        )
        basis = "the size of its raw upload"
    partial = partial_copy(scenario.base, 40 << 20)
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    for extra in (["--dry-run"], ["--yes"]):
        result = run(scenario.args("image", SNAPSHOT, "--base-file", str(partial), *extra))
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr == (
            f"Error: {partial} on local has a virtual size of 41943040 bytes, but image {SNAPSHOT} "
            f"had 67108864 ({basis}): a partial copy (an scp or a download still running?), not "
            f"this image's data; {NEW_BYTES_HINT}\n"
        )
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing
    assert not (tmp_path / "state" / "journal").exists()


@pytest.mark.parametrize("virtual_size", ["exact", "null"])
def test_raw_upload_of_an_odd_size_comes_back_whole(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, virtual_size: str
) -> None:
    """A raw upload of 64 MiB - 300 bytes: qemu-img calls its virtual size 64 MiB (whole
    sectors), the row holds the byte count; the genuine _base is no partial copy."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    odd = (64 << 20) - 300
    shutil.copyfile(partial_copy(scenario.base, odd), scenario.base)
    md5, sha, size = digests(scenario.base)
    assert size == odd
    mariadb_server.query(
        f"UPDATE i_glance.images SET size = {odd}, checksum = '{md5}', os_hash_value = '{sha}', "
        f"virtual_size = {odd if virtual_size == 'exact' else 'NULL'} WHERE id = '{SNAPSHOT}'"
    )
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes",
                               "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert assert_recovered(scenario, expect_format="raw") == (md5, sha, odd)
    assert json.loads(result.stdout)["bytes"]["identical"] is True


def test_raw_base_with_other_bytes_is_refused_naming_both_checksums(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """Same size, one byte changed: only the md5 of the bytes made tells; nothing is placed."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    damaged = partial_copy(scenario.base, 64 << 20)
    with open(damaged, "r+b") as handle:
        handle.seek(17 << 20)
        handle.write(b"\0")
    md5 = digests(damaged)[0]
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(damaged), "--yes"))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: the bytes from {damaged} on local are not image {SNAPSHOT}'s raw upload (md5 "
        f"{md5} where the row says {scenario.original[0]}): nova keeps a raw upload byte for "
        f"byte in _base, so this copy is partial or damaged; {NEW_BYTES_HINT}\n"
    )
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing
    assert not (tmp_path / "state" / "journal").exists()


def test_accept_new_bytes_stores_them_and_says_so_loudly(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    partial = partial_copy(scenario.base, 40 << 20)
    md5, sha, size = digests(partial)
    old_md5, _, old_size = scenario.original
    refusals = [
        f"{partial} on local has a virtual size of 41943040 bytes, but image {SNAPSHOT} had "
        "67108864 (its row's virtual_size): a partial copy (an scp or a download still "
        "running?), not this image's data",
        f"the bytes from {partial} on local are not image {SNAPSHOT}'s raw upload (size {size} "
        f"bytes where the row says {old_size}; md5 {md5} where the row says {old_md5}): nova "
        "keeps a raw upload byte for byte in _base, so this copy is partial or damaged",
    ]
    warnings = [f"WARNING: NEW BYTES accepted (--accept-new-bytes): {r}" for r in refusals]
    dry = run(scenario.args("image", SNAPSHOT, "--base-file", str(partial), "--accept-new-bytes",
                            "--dry-run"))  # fmt: skip
    assert dry.exit_code == 0, dry.stderr
    assert f"-- {warnings[0]}\n" in dry.stdout  # the md5 is known only once the bytes exist
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(partial), "--accept-new-bytes",
                               "--yes", "--format", "json"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert result.stderr == committed_note(report["journal"]) + "".join(
        f"Warning: NEW BYTES stored (--accept-new-bytes), not the original upload: {r}\n"
        for r in refusals
    )
    assert report["bytes"] == {
        "identical": False,
        "compared_with": "images.checksum",
        "new_bytes_accepted": True,
        "overridden": refusals,
        "original": {"checksum": old_md5, "size": old_size, "virtual_size": 64 << 20},
        "new": {"checksum": md5, "size": size, "virtual_size": 40 << 20},
    }
    assert report["notes"][-3:] == [
        f"the new file's bytes are NEW, not the original upload's: md5 {md5} (was {old_md5}), "
        f"size {size} (was {old_size})",
        *warnings,
    ]
    row = scenario.row()
    assert (row["checksum"], row["size"], row["virtual_size"], row["os_hash_value"]) == (
        md5, size, 40 << 20, sha,
    )  # fmt: skip
    (journal,) = (tmp_path / "state" / "journal").glob("*-image-*.json")
    assert json.loads(journal.read_text())["notes"][-2:] == warnings
    table = run(scenario.args("verify", SNAPSHOT))
    assert table.exit_code == 0, table.stdout  # the row now describes the bytes it has


def test_min_disk_is_no_lower_bound_on_the_image(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """min_disk=1 (GiB) is the root disk a flavor needs; the image is 64 MiB: it comes back."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    mariadb_server.query(f"UPDATE i_glance.images SET min_disk = 1 WHERE id = '{SNAPSHOT}'")
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes",
                               "--format", "json"))  # fmt: skip
    journal = json.loads(result.stdout)["journal"]
    assert (result.exit_code, result.stderr) == (0, committed_note(journal))
    assert assert_recovered(scenario) == scenario.original
    assert scenario.row()["min_disk"] == 1
    assert json.loads(result.stdout)["bytes"]["identical"] is True


def test_dry_run_sql_of_a_rebuild_cannot_be_replayed(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """The new file's hashes and sizes do not exist in a dry-run: placeholders, so the mariadb
    client stops at them and nothing changes (the old values would make the image active with a
    stale checksum and no file)."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    before = mariadb_server.checksum("i_glance")
    dry = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--dry-run"))
    assert dry.exit_code == 0, dry.stderr
    update = next(line for line in dry.stdout.splitlines() if line.startswith("UPDATE images "))
    assert update == (
        "UPDATE images SET size=<new_size>, status='active', updated_at='{now}', "
        "deleted_at=NULL, deleted=0, checksum=<new_checksum>, virtual_size=<new_virtual_size>, "
        f"os_hash_value=<new_os_hash_value> WHERE images.id = '{SNAPSHOT}';"
    ).format(now=update.split("updated_at='")[1].split("'")[0])
    assert (
        "-- <new_checksum>, <new_size>, <new_virtual_size>, <new_os_hash_value> are computed from "
        "the new file, which a dry-run does not make: placeholders, not values, so this SQL "
        "replayed by hand fails at them and ends in ROLLBACK: it changes nothing; apply with "
        "the same command and --yes\n"
    ) in dry.stdout
    assert dry.stdout.endswith(
        "\n-- ROLLBACK, not COMMIT: the <...> placeholders are not values\nROLLBACK;\n"
    )
    md5, _, size = scenario.original
    assert (
        f"-- a raw upload is kept byte for byte in _base: the run refuses a file whose size is "
        f"not {size} or whose md5 is not {md5}\n"
    ) in dry.stdout
    # --force: a client that goes on after the error still commits nothing (ROLLBACK).
    for force in ([], ["--force"]):
        replay = subprocess.run([*mariadb_server.client_argv("i_glance"), *force],
                                input=dry.stdout, text=True, capture_output=True, check=False)  # fmt: skip
        assert replay.returncode == (0 if force else 1)  # --force: errors shown, exit 0
        assert "ERROR 1064 (42000)" in replay.stderr and "near '<new_size>" in replay.stderr
        assert mariadb_server.checksum("i_glance") == before
        assert scenario.row()["status"] == "deleted"


def test_no_source_is_refused_with_the_choices(make_db: MakeDb, tmp_path: Path) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    result = run(scenario.args("image", SNAPSHOT, "--yes"))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no source for image {SNAPSHOT}: the store has no file for it; pass --from-host HOST "
        "(a compute node running it), --from-host alone to try them all, or --base-file PATH\n"
    )


def test_database_error_at_commit_removes_the_placed_file(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    mariadb_server.query(
        "CREATE TRIGGER i_glance.no_tags BEFORE UPDATE ON i_glance.image_tags FOR EACH ROW "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure'"
    )
    try:
        before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
        result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
        assert result.exit_code == 1
        assert "injected failure" in result.stderr and len(result.stderr.splitlines()) == 1
        assert mariadb_server.checksum("i_glance") == before
        assert store_listing(scenario.store) == listing
        (journal,) = (tmp_path / "state" / "journal").glob("*-image-*.json")
        assert json.loads(journal.read_text())["status"] == "rolled-back"
    finally:
        mariadb_server.query("DROP TRIGGER i_glance.no_tags")


def test_a_refusal_under_the_lock_leaves_the_store_as_it_was(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """Refused after the bytes were made (the store's file is someone else's): no staged file
    and no lock file stay behind."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    squatter = scenario.store / SNAPSHOT
    squatter.write_bytes(b"not this image")
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: {squatter} already exists with other content (md5 {digests(squatter)[0]}); "
        "move it away if it is not this image, then re-run\n"
    ))  # fmt: skip
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


@pytest.fixture
def small_mount(tmp_path: Path) -> Any:
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            message = f"cannot mount a tmpfs here: {done.stderr.strip()}"
            pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_full_store_changes_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, small_mount: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    store = small_mount("size=256k")
    before = mariadb_server.checksum("i_glance")
    result = run(["--glance-db", scenario.glance_url, "--store-dir", str(store), "image", SNAPSHOT,
                  "--base-file", str(scenario.base), "--yes"])  # fmt: skip
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "No space left on device" in result.stderr, (
        result.stderr
    )
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(store) == []


def test_read_only_store_changes_nothing(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, small_mount: Any
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    store = small_mount("size=1m,ro")
    before = mariadb_server.checksum("i_glance")
    result = run(["--glance-db", scenario.glance_url, "--store-dir", str(store), "image", SNAPSHOT,
                  "--base-file", str(scenario.base), "--yes"])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == f"Error: store directory {store} is not writable\n"
    assert mariadb_server.checksum("i_glance") == before


def test_kill_during_transfer_then_rerun(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """kill -9 mid-copy leaves the old rows and at most a temporary file; a re-run finishes the job."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, disk_format="raw")
    before = mariadb_server.checksum("i_glance")
    recover = str(Path(sys.executable).with_name("recover"))
    env = {**os.environ, "RECOVER_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([recover, *scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes")],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 30
    tmp_prefix = f".recover-tmp-{SNAPSHOT}-"
    while time.monotonic() < deadline and not any(
        n.startswith(tmp_prefix) for n in os.listdir(scenario.store)
    ):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert mariadb_server.checksum("i_glance") == before
    leftovers = [n for n in os.listdir(scenario.store) if n.startswith(".recover-tmp-")]
    assert len(leftovers) <= 1
    assert not (scenario.store / SNAPSHOT).exists()
    result = run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"))
    assert result.exit_code == 0, result.stderr
    assert [n for n in os.listdir(scenario.store) if n.startswith(".recover-tmp-")] == []
    assert assert_recovered(scenario, "raw") == digests(scenario.base)


@pytest.mark.parametrize(
    ("column", "value", "bad"),
    [
        ("size", "12345", "size"),
        ("os_hash_value", "'" + "0" * 128 + "'", "sha512"),
        ("checksum", "'" + "0" * 32 + "'", "checksum"),
    ],
)
def test_verify_catches_a_stale_row(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, column: str, value: str, bad: str
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    assert (
        run(scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes")).exit_code
        == 0
    )
    good = run(scenario.args("verify", SNAPSHOT))
    assert good.exit_code == 0
    assert good.stdout.splitlines()[0] == f"image {SNAPSHOT}: OK"
    mariadb_server.query(f"UPDATE i_glance.images SET {column} = {value} WHERE id = '{SNAPSHOT}'")
    result = run(scenario.args("verify", SNAPSHOT, "--format", "json"))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [c["check"] for c in report["checks"] if not c["ok"]] == [bad]
    assert result.stderr == f"Error: image {SNAPSHOT} does not verify ({bad})\n"


def test_concurrent_runs_on_one_image_exactly_one_wins(make_db: MakeDb, tmp_path: Path) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    recover = str(Path(sys.executable).with_name("recover"))
    env = {**os.environ, "RECOVER_STATE_DIR": str(tmp_path / "race")}
    argv = [recover, *scenario.args("image", SNAPSHOT, "--base-file", str(scenario.base), "--yes")]
    procs = [
        subprocess.Popen(
            argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1, 1, 1], results
    for code, _, err in results:
        if code:
            assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert assert_recovered(scenario) == scenario.original
    assert [n for n in os.listdir(scenario.store) if n.startswith(".recover-tmp-")] == []
    journals = [
        json.loads(p.read_text())["status"] for p in (tmp_path / "race" / "journal").glob("*.json")
    ]
    assert journals.count("committed") == 1


def test_multistore_glance_gets_the_store_id_in_the_location(
    make_db: MakeDb, tmp_path: Path
) -> None:
    """With enabled_backends, glance_store writes {"store": "<backend>"} into meta_data."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        f"[DEFAULT]\nenabled_backends = fast:file, ceph:rbd\n[glance_store]\ndefault_backend = fast\n"
        f"[fast]\nfilesystem_store_datadir = {scenario.store}\n[database]\nconnection = {scenario.glance_url}\n"
    )
    result = run(
        ["--glance-conf", str(conf), "image", SNAPSHOT, "--base-file", str(scenario.base), "--yes"]
    )
    assert result.exit_code == 0, result.stderr
    locations = scenario.children()["image_locations"]
    assert locations == [(f"file://{scenario.store}/{SNAPSHOT}", "active", 0, '{"store": "fast"}')]


# --- issue 10 item 9: a row that says active/deactivated with deleted=1 is a deleted row ----------


@pytest.mark.parametrize("status", ["active", "deactivated"])
def test_deleted_row_that_says_active_or_deactivated_is_recovered(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, status: str
) -> None:
    """Listed by the inventory with a command that used to refuse ("is 'active', not deleted,
    pending_delete or killed"); the command now works. A deactivated image comes back
    deactivated: an admin blocked its downloads, recovering it must not lift that."""
    import shlex

    from recover.db.engine import open_database
    from recover.simulate import Instance, create_instance

    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, delayed=True)
    mariadb_server.query(f"UPDATE i_glance.images SET status = '{status}' WHERE id = '{SNAPSHOT}'")
    nova_url = make_db(clouds.LEGACY_NOVA, "d_nova")
    nova = open_database(nova_url, "nova")
    with nova.engine.begin() as conn:
        create_instance(conn, nova, Instance(
            uuid="91000000-0000-4000-8000-000000000001", flavor=clouds.SMALL, flavor_id=1,
            image_ref=SNAPSHOT, host="compute-12",
        ))  # fmt: skip
    nova.dispose()
    listed = run(["--nova-db", nova_url, *scenario.args("inventory", "--format", "json")])
    assert listed.exit_code == 0, listed.stderr
    (image,) = json.loads(listed.stdout)["images"]
    assert (image["id"], image["status"], image["row_status"], image["store_file"]) == (
        SNAPSHOT, "deleted", status, True,
    )  # fmt: skip
    assert image["recover"] == f"recover image {SNAPSHOT}"
    if status == "deactivated":
        assert image["note"].endswith("; it comes back deactivated, as an admin left it")

    command = shlex.split(image["recover"])
    assert command[0] == "recover"
    result = run(scenario.args(*command[1:], "--yes"))
    assert result.exit_code == 0, result.stderr
    assert f"image row back to {status}" in result.stdout
    row = scenario.row()
    assert (row["status"], row["deleted"], row["deleted_at"]) == (status, 0, None)
    children = scenario.children()
    assert children["image_properties"] == [(name, 0) for name in sorted(PROPERTIES)]
    assert children["image_locations"] == [
        (f"file://{scenario.store / SNAPSHOT}", "active", 0, "{}")
    ]
    verified = run(scenario.args("verify", SNAPSHOT))
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert f"  ok   status: status={status} deleted=0\n" in verified.stdout
    again = run(["--nova-db", nova_url, *scenario.args("inventory", "--format", "json")])
    assert json.loads(again.stdout)["images"] == []


# --- issue 10 item 16: the store as Glance reads glance-api.conf ---------------------------------


def datadirs_conf(scenario: Any, tmp_path: Path, high: Path) -> Path:
    """The scenario's store as the low-priority datadir, ``high`` as the high-priority one."""
    high.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        f"[database]\nconnection = {scenario.glance_url}\n[glance_store]\n"
        f"filesystem_store_datadirs = {scenario.store}:100\n"
        f"filesystem_store_datadirs = {high}:200\n"
    )
    return conf


def test_datadirs_the_file_goes_to_the_highest_priority_and_the_moved_path_is_reported(
    make_db: MakeDb, tmp_path: Path
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    high = tmp_path / "srv/glance/high"
    conf = datadirs_conf(scenario, tmp_path, high)
    result = run(["--glance-conf", str(conf), "image", SNAPSHOT, "--base-file",
                  str(scenario.base), "--yes", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (
        f"location 1 was file://{scenario.store}/{SNAPSHOT}; the file is now placed at "
        f"file://{high}/{SNAPSHOT}"
    ) in json.loads(result.stdout)["notes"]
    assert digests(high / SNAPSHOT) == scenario.original
    assert not (scenario.store / SNAPSHOT).exists()
    assert scenario.children()["image_locations"] == [
        (f"file://{high}/{SNAPSHOT}", "active", 0, "{}")
    ]
    check = run(["--glance-conf", str(conf), "verify", SNAPSHOT])
    assert check.exit_code == 0, check.stdout + check.stderr


def test_datadirs_pending_delete_file_in_a_lower_priority_dir_is_undeleted_in_place(
    make_db: MakeDb, tmp_path: Path
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE, delayed=True)
    high = tmp_path / "srv/glance/high"
    conf = datadirs_conf(scenario, tmp_path, high)
    result = run(["--glance-conf", str(conf), "image", SNAPSHOT, "--yes"])
    assert result.exit_code == 0, result.stderr
    assert "the store still holds" in result.stdout
    assert "the file is now placed" not in result.stdout
    assert list(high.iterdir()) == []
    assert assert_recovered(scenario) == scenario.original


@pytest.mark.parametrize(
    "store_conf",
    [
        "[glance_store]\nstores = rbd, file\ndefault_store = rbd\n",
        "[DEFAULT]\nenabled_backends = ceph:rbd, fs:file\n[glance_store]\ndefault_backend = ceph\n",
    ],
    ids=["single-store", "multi-store"],
)
def test_default_store_rbd_points_at_via_api(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any, store_conf: str
) -> None:
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    conf = tmp_path / "glance-api.conf"
    conf.write_text(f"{store_conf}[database]\nconnection = {scenario.glance_url}\n")
    before, listing = mariadb_server.checksum("i_glance"), store_listing(scenario.store)
    for extra in ([], ["--dry-run"]):
        result = run(["--glance-conf", str(conf), "image", SNAPSHOT, "--base-file",
                      str(scenario.base), "--yes", *extra])  # fmt: skip
        assert (result.exit_code, result.stderr) == (1, (
            "Error: Glance's default store is of type 'rbd', not a filesystem store: recover "
            "writes only filesystem stores itself; pass --via-api (with --glance-endpoint and "
            "--os-token, or OS_AUTH_URL) so that Glance uploads the image into its own store\n"
        ))  # fmt: skip
    assert mariadb_server.checksum("i_glance") == before
    assert store_listing(scenario.store) == listing


def test_multistore_without_a_location_in_the_target_store_gets_a_new_row(
    make_db: MakeDb, tmp_path: Path, mariadb_server: Any
) -> None:
    """Issue 10 item 4: the image's only location is of another store (``web``): that row
    stays as Glance left it, and the file placed in ``fast`` gets a location row of its own."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    web = f"http://images.example.com/{SNAPSHOT}"
    mariadb_server.query(
        'UPDATE i_glance.image_locations SET value = %s, meta_data = \'{"store": "web"}\' '
        "WHERE image_id = %s",
        (web, SNAPSHOT),
    )
    (old,) = mariadb_server.query(
        "SELECT * FROM i_glance.image_locations WHERE image_id = %s", (SNAPSHOT,)
    )
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        "[DEFAULT]\nenabled_backends = fast:file, web:http\n[glance_store]\ndefault_backend = fast\n"
        f"[fast]\nfilesystem_store_datadir = {scenario.store}\n"
        f"[database]\nconnection = {scenario.glance_url}\n"
    )
    result = run(["--glance-conf", str(conf), "image", SNAPSHOT, "--base-file",
                  str(scenario.base), "--yes", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert "location rows of other stores left as Glance left them: 1 (store web)" in notes
    assert "the image had no location of store 'fast': a new location row 2" in notes
    rows = mariadb_server.query(
        "SELECT * FROM i_glance.image_locations WHERE image_id = %s ORDER BY id", (SNAPSHOT,)
    )
    assert rows[0] == old
    assert scenario.children()["image_locations"] == [
        (web, "deleted", 1, '{"store": "web"}'),
        (f"file://{scenario.store}/{SNAPSHOT}", "active", 0, '{"store": "fast"}'),
    ]
    check = run(["--glance-conf", str(conf), "verify", SNAPSHOT, "--format", "json"])
    assert check.exit_code == 0, check.stdout + check.stderr
    assert {c["check"]: c["detail"] for c in json.loads(check.stdout)["checks"]}[
        "location store"
    ] == "meta_data store 'fast', file in store 'fast'"


def test_datadirs_undo_removes_the_file_from_whichever_datadir_it_was_placed_in(
    make_db: MakeDb, tmp_path: Path
) -> None:
    """Undo accepts the image file in any datadir of the store (among equal priorities the one
    with most free space wins, so it need not be the one the undo resolves first)."""
    scenario = incident_image(make_db, tmp_path, clouds.MODERN_GLANCE)
    high = tmp_path / "srv/glance/high"
    conf = datadirs_conf(scenario, tmp_path, high)
    before = scenario.children()
    result = run(["--glance-conf", str(conf), "image", SNAPSHOT, "--base-file",
                  str(scenario.base), "--yes", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    journal = json.loads(result.stdout)["journal"]
    assert (high / SNAPSHOT).is_file()
    undo = run(["--glance-conf", str(conf), "--store-dir", str(scenario.store),
                "undo", journal, "--yes"])  # fmt: skip
    assert undo.exit_code == 0, undo.stderr
    assert not (high / SNAPSHOT).exists()
    assert scenario.children() == before
    assert scenario.row()["status"] == "deleted"
