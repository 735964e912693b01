"""Helpers shared by the tests: binary look-up and exact database snapshots.

Import them as ``from tests.helpers import dump_rows, require_binary``; ``pytest``
run from the repository root puts the root on ``sys.path`` because ``tests/`` is
a package.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``pyproject.toml``)."""

SCHEMA_DIR = REPO_ROOT / "sql" / "schemas"
"""Where the ``<schema>.sql`` DDL dumps live (see ``sql/schemas/README.md``)."""

# Daemons live in sbin folders, which are not on a non-root user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def in_ci() -> bool:
    """True when the environment variable ``CI`` says we run in CI (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_binary(name: str) -> str | None:
    """Absolute path of executable ``name`` on ``PATH`` or in an sbin folder, else ``None``."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def require_binary(name: str) -> str:
    """Return the absolute path of executable ``name``, or end the test.

    A missing binary is a broken machine in CI (``CI=true``): the test fails. On a
    developer machine the test is skipped, with the Debian package to install.
    Usable in tests and fixtures, e.g. ``require_binary("qemu-img")``.
    """
    path = find_binary(name)
    if path is not None:
        return path
    message = f"required executable {name!r} not found on PATH or in {', '.join(_SBIN_DIRS)}"
    package = _DEBIAN_PACKAGES.get(name)
    if package:
        message += f" (Debian: apt-get install {package}; or run scripts/test as root)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_DEBIAN_PACKAGES = {
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mysql_install_db": "mariadb-server",
    "mariadb": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "qemu-img": "qemu-utils",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def _sort_key(row: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    # NULLs sort last; non-NULL values of one column share a Python type.
    return tuple((0, value) if value is not None else (1, 0) for value in row)


def dump_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every base table of the database at SQLAlchemy ``url``.

    Returns ``{table: sorted list of row tuples}`` with one key per table, empty
    tables included, so two dumps compare equal only if no row (and no table)
    was added, removed or changed. Values are what PyMySQL returns (``int``,
    ``str``, ``Decimal``, ``datetime``, ``bytes`` ...). Meant for small test
    databases: it reads everything.
    """
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT TABLE_NAME FROM information_schema.TABLES"
                    " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'"
                )
            ).scalars()
            result: dict[str, list[tuple[Any, ...]]] = {}
            for table in sorted(tables):
                quoted = "`" + table.replace("`", "``") + "`"
                rows = [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {quoted}"))]
                result[table] = sorted(rows, key=_sort_key)
            return result
    finally:
        engine.dispose()


PIP_TIMEOUT = 900
"""Seconds one ``pip install`` of a test tier's venv may take."""


def give_up(message: str) -> None:
    """Skip the test locally; fail it under ``CI=true`` (a broken CI machine)."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def venv_imports(python: Path, statement: str) -> bool:
    """Whether the venv of ``python`` exists and runs ``statement`` (its import probe)."""
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", statement], capture_output=True, check=False)
    return probe.returncode == 0


def cached_venv(
    venv: Path,
    requirements: Sequence[str],
    works: Callable[[Path], bool],
    *,
    timeout: float = PIP_TIMEOUT,
) -> tuple[Path, float | None]:
    """``(venv, seconds)``: a venv holding ``requirements``, built on first use and kept.

    ``works(python)`` says whether an existing venv is usable as is (then
    ``seconds`` is None). Otherwise the folder is removed and rebuilt (``python -m
    venv`` + ``pip install``). A lock file next to the venv serialises concurrent
    sessions. When pip fails (no index reachable), :func:`give_up`. The same
    pattern as ``nova_python`` in tests/test_nova_accepts.py, with the package
    list and the probe as parameters.
    """
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if works(python):
            return venv, None
        shutil.rmtree(venv, ignore_errors=True)  # half-built by an interrupted run
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        try:
            pip = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                 *requirements],
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            give_up(f"pip install {' '.join(requirements)} took over {timeout} s")
            raise  # not reached: give_up raises
        if pip.returncode != 0 or not works(python):
            shutil.rmtree(venv, ignore_errors=True)
            tail = "\n".join((pip.stdout + pip.stderr).splitlines()[-15:])
            give_up(
                f"cannot install {' '.join(requirements)} into {venv} "
                f"(exit {pip.returncode}; is PyPI reachable?):\n{tail}"
            )
        seconds = time.perf_counter() - started
        sys.stderr.write(f"\nvenv {venv} created in {seconds:.1f} s\n")
        return venv, seconds


def committed_note(journal: object) -> str:
    """The stderr line of a committed write whose report does not go to a terminal."""
    return f"Committed; journal {journal}; undo: recover undo {journal}\n"


def process_env(root: Path) -> dict[str, str]:
    """A clean environment for ``recover`` run as a process: home, tmp and journals
    (``root/state``) under ``root``. PYTHONPATH passes through: a worktree's env.sh points it
    at the code under test rather than the installed package."""
    for name in ("home", "tmp", "state"):
        (root / name).mkdir(exist_ok=True)
    kept = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    return {
        **kept,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "RECOVER_STATE_DIR": str(root / "state"),
    }


def log_tails(paths: Sequence[Path], lines: int) -> str:
    """The last ``lines`` lines of each log, headed by its path (for a failed start-up)."""
    out = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            text = f"(no log: {exc})"
        out.append(f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(out)


def read_pty(fd: int) -> bytes:
    """Everything a pseudo-terminal's master side ``fd`` gives until the other side is
    closed and drained (Linux answers EIO then, not an empty read)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
