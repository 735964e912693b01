"""Bounded inputs (issue 14, item 3): endless or huge files named by the operator are refused.

``--config``, ``--nova-conf``, ``--glance-conf`` and the journal of ``undo`` may be
``/dev/zero``, a FIFO that never ends, or a 1 GB file: each is refused with one ``Error:``
line and exit 1, before anything is read into memory (``recover.textfile.read_bounded``).
Each case is a real ``recover`` process under a 1 GiB address-space limit, so a
regression fails on the limit instead of eating the test machine's memory, and a 30 s
timeout, so a regression that blocks on a FIFO fails too. Nothing changes: the test's
directory is the same before and after (``tests.test_hostile.snapshot``), no journal.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from recover.textfile import CONFIG_LIMIT, JOURNAL_LIMIT
from tests import clouds
from tests.helpers import process_env
from tests.test_hostile import snapshot

RECOVER = str(Path(sys.executable).with_name("recover"))
ADDRESS_SPACE = 1024**3
GIB = 1024**3


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RECOVER, *argv], env=process_env(root), cwd=root, capture_output=True, text=True,
        timeout=30, check=False, stdin=subprocess.DEVNULL, preexec_fn=_limit_memory,
    )  # fmt: skip


def refused(done: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 1, nothing on stdout, exactly ``Error: <expected>`` on stderr."""
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == f"Error: {expected}\n"


@pytest.fixture
def endless_fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO whose writer (``yes``) never stops writing."""
    fifo = tmp_path / "endless.fifo"
    os.mkfifo(fifo)
    # The writer blocks in open() until a reader comes; it is ended below either way.
    writer = subprocess.Popen(
        ["sh", "-c", f"exec yes '[recover]' > '{fifo}'"], stderr=subprocess.DEVNULL
    )
    try:
        yield fifo
    finally:
        writer.kill()
        writer.wait()


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def comments(path: Path, size: int) -> Path:
    """A valid ini file of exactly ``size`` bytes: comment lines only."""
    line = b"#" * 63 + b"\n"
    with path.open("wb") as handle:
        handle.write(line * (size // len(line)))
        handle.write(b"#" * (size % len(line)))
    assert path.stat().st_size == size
    return path


OPTIONS = {
    "--config": "config file",
    "--nova-conf": "nova config",
    "--glance-conf": "glance config",
}

KINDS: dict[str, Callable[[Path], tuple[str, str]]] = {
    # kind -> (path, what the line says about it)
    "dev-zero": lambda root: ("/dev/zero", "is not a regular file (a character device)"),
    "dev-urandom": lambda root: ("/dev/urandom", "is not a regular file (a character device)"),
    "fifo-without-writer": lambda root: (
        str(_fifo(root / "silent.fifo")),
        "is not a regular file (a FIFO)",
    ),
    "unix-socket": lambda root: (str(_socket(root / "s.sock")), "is not a regular file (a socket)"),
    "sparse-1-GiB": lambda root: (
        str(sparse(root / "huge.conf", GIB)),
        f"is larger than 16 MiB ({GIB} bytes): not read",
    ),
}
HINT = "; give the path of the file itself"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # the file stays after close; nobody listens
    listener.close()
    return path


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_endless_or_huge_config_is_refused(tmp_path: Path, option: str, kind: str) -> None:
    path, says = KINDS[kind](tmp_path)
    process_env(tmp_path)
    before = snapshot(tmp_path)
    done = run(tmp_path, option, path, "inventory")
    hint = HINT if "regular" in says else ""
    refused(done, f"{OPTIONS[option]} {path} {says}{hint}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_fifo_with_an_endless_writer_is_refused(
    tmp_path: Path, endless_fifo: Path, option: str
) -> None:
    done = run(tmp_path, option, str(endless_fifo), "inventory")
    refused(done, f"{OPTIONS[option]} {endless_fifo} is not a regular file (a FIFO){HINT}")


def test_config_at_the_limit_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    at_limit = comments(tmp_path / "at-limit.ini", CONFIG_LIMIT)
    done = run(tmp_path, "--config", str(at_limit), "inventory")
    # Read and parsed whole: it only lacks the section.
    refused(done, f"config file {at_limit} has no [recover] section")
    over = comments(tmp_path / "over.ini", CONFIG_LIMIT + 1)
    done = run(tmp_path, "--config", str(over), "inventory")
    refused(done, f"config file {over} is larger than 16 MiB ({CONFIG_LIMIT + 1} bytes): not read")


def test_config_files_through_symlinks_are_read(make_db: clouds.MakeDb, tmp_path: Path) -> None:
    nova_url = make_db(clouds.LEGACY_NOVA, "b_nova")
    glance_url = make_db(clouds.LEGACY_GLANCE, "b_glance")
    real = tmp_path / "real"
    real.mkdir()
    (real / "nova.conf").write_text(f"[database]\nconnection = {nova_url}\n")
    (real / "glance-api.conf").write_text(f"[database]\nconnection = {glance_url}\n")
    links = tmp_path / "links"
    links.mkdir()
    for name in ("nova.conf", "glance-api.conf"):
        (links / name).symlink_to(real / name)
    (real / "recover.ini").write_text(
        f"[recover]\nnova_conf = {links / 'nova.conf'}\nglance_conf = {links / 'glance-api.conf'}\n"
        f"store_dir = {tmp_path}\n"
    )
    (links / "recover.ini").symlink_to(real / "recover.ini")
    done = run(tmp_path, "--config", str(links / "recover.ini"), "inventory", "--format", "json")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    report = json.loads(done.stdout)
    # Each of the three files was read: the store from recover.ini, a scanned cell from
    # nova.conf, the Glance schema from glance-api.conf.
    assert (report["store_dir"], report["flavors"], report["images"]) == (str(tmp_path), [], [])
    assert [c["ok"] for c in report["cells"]] == [True] and report["partial"] is False
    assert report["glance_schema"] is not None


def test_existing_messages_are_unchanged(tmp_path: Path) -> None:
    """Missing, directory, unreadable and non-UTF-8 files keep their words."""
    refused(
        run(tmp_path, "--config", str(tmp_path / "missing.ini"), "inventory"),
        f"config file {tmp_path / 'missing.ini'} does not exist",
    )
    refused(
        run(tmp_path, "--nova-conf", str(tmp_path), "inventory"),
        f"nova config {tmp_path} is a directory, not a file",
    )
    latin = tmp_path / "latin.conf"
    latin.write_bytes(b"[database]\nconnection = mysql://caf\xe9\n")
    refused(
        run(tmp_path, "--glance-conf", str(latin), "inventory"),
        f"glance config {latin} is not UTF-8 text",
    )
    refused(
        run(tmp_path, "undo", str(tmp_path / "gone.json"), "--yes"),
        f"journal {tmp_path / 'gone.json'} does not exist",
    )


JOURNAL_KINDS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "dev-zero": lambda root: ("/dev/zero", "is not a regular file (a character device)" + HINT),
    "fifo-without-writer": lambda root: (
        str(_fifo(root / "journal.fifo")),
        "is not a regular file (a FIFO)" + HINT,
    ),
    "sparse-1-GiB": lambda root: (
        str(sparse(root / "huge.json", GIB)),
        f"is larger than 64 MiB ({GIB} bytes): not read",
    ),
    "one-byte-over-the-limit": lambda root: (
        str(sparse(root / "big.json", JOURNAL_LIMIT + 1)),
        f"is larger than 64 MiB ({JOURNAL_LIMIT + 1} bytes): not read",
    ),
}


@pytest.mark.parametrize("kind", sorted(JOURNAL_KINDS))
def test_endless_or_huge_journal_is_refused(tmp_path: Path, kind: str) -> None:
    path, says = JOURNAL_KINDS[kind](tmp_path)
    process_env(tmp_path)
    before = snapshot(tmp_path)
    for argv in (["undo", path, "--yes"], ["undo", path, "--dry-run"]):
        refused(run(tmp_path, *argv), f"journal {path} {says}")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "state" / "journal").exists()


def test_journal_through_a_fifo_with_an_endless_writer_is_refused(
    tmp_path: Path, endless_fifo: Path
) -> None:
    refused(
        run(tmp_path, "undo", str(endless_fifo), "--yes"),
        f"journal {endless_fifo} is not a regular file (a FIFO){HINT}",
    )
