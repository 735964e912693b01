"""The confirmation prompt on a real terminal: a pseudo-terminal the test holds the master
side of, ``recover`` its session leader with the terminal as its controlling tty, so keys
typed arrive through the kernel's line discipline as they do from an operator's keyboard
(Ctrl-C is ``\\x03`` turned into SIGINT for the foreground process group, not a signal
the test sends).

Each run recovers the pre-Newton deleted flavor of tests/test_faults.py (its rows compared
whole before and after); stdout goes to a file of its own, so the terminal shows only what
is written to stderr: the plan, its SQL and the question.
"""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT
from tests.test_faults import (
    RECOVER,
    FlavorCase,
    assert_image_old,
    assert_nothing_lost,
    base_stat,
    journals,
)
from tests.test_hostile import World, build_world

QUESTION = b"Apply these changes? [y/N]: "


def on_terminal(
    argv: list[str], env: dict[str, str], root: Path, keys: bytes
) -> tuple[int, str, str]:
    """Run ``recover ARGV`` on a fresh pty; type ``keys`` once the question is shown.

    Returns (exit status, what the terminal showed, stdout)."""
    out = root / "stdout.txt"
    argv = [RECOVER, *argv]
    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its stdin, stdout, stderr and controlling tty
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.chdir(REPO_ROOT)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    shown = bytearray()
    typed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not chunk:
                    break
                shown += chunk
            if not typed and shown.endswith(QUESTION):
                os.write(master, keys)
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert typed, f"the question never came: {bytes(shown[-400:])!r}"
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace"), out.read_text()


def last_line(shown: str) -> str:
    return shown.replace("\r\n", "\n").rstrip("\n").rsplit("\n", 1)[-1]


@pytest.fixture
def case(make_db: Any, tmp_path: Path) -> FlavorCase:
    return FlavorCase("legacy", make_db, tmp_path)


def flavor_on_terminal(case: FlavorCase, keys: bytes) -> tuple[int, str, str]:
    return on_terminal(case.argv(), case.env, case.root, keys)


def test_ctrl_c_at_the_prompt_changes_nothing_and_exits_130(case: FlavorCase) -> None:
    code, shown, stdout = flavor_on_terminal(case, b"\x03")
    assert (code, case.state(), case.journals()) == (130, "old", [])
    assert last_line(shown) == "Error: interrupted by SIGINT; nothing was changed"
    assert "UPDATE instance_types SET" in shown  # the SQL was shown before the question
    assert stdout == ""


def test_no_at_the_prompt_is_a_refusal_that_changes_nothing(case: FlavorCase) -> None:
    code, shown, stdout = flavor_on_terminal(case, b"n\r")
    assert (code, case.state(), case.journals()) == (1, "old", [])
    assert last_line(shown) == "Error: cancelled at the prompt; nothing was changed"
    assert stdout == ""


def test_enter_alone_takes_the_default_no(case: FlavorCase) -> None:
    code, shown, _ = flavor_on_terminal(case, b"\r")
    assert (code, case.state(), case.journals()) == (1, "old", [])
    assert last_line(shown) == "Error: cancelled at the prompt; nothing was changed"


def test_yes_at_the_prompt_applies_the_plan_and_journals_it(case: FlavorCase) -> None:
    code, shown, stdout = flavor_on_terminal(case, b"y\r")
    assert (code, case.state(), case.journals()) == (0, "new", ["committed"])
    assert "Error" not in shown
    assert "f0e1d2c3" in stdout  # the report went to stdout, not to the terminal


@pytest.fixture
def world(make_db: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(make_db, tmp_path, tmp_path_factory, prefix="t")


def test_ctrl_c_at_the_prompt_of_an_image_recovery_removes_the_staged_file(
    world: World, mariadb_server: Any
) -> None:
    """The new file is converted, hashed and staged in the store before the question: the
    Ctrl-C clean-up removes it; the rows, the store and the compute node's copy as before."""
    before, base_before = mariadb_server.checksum(world.glance_db), base_stat(world)
    code, shown, stdout = on_terminal(world.base_args(), world.env, world.root, b"\x03")
    assert code == 130
    assert last_line(shown) == "Error: interrupted by SIGINT; nothing was changed"
    assert_image_old(world, mariadb_server, before)
    assert_nothing_lost(world, base_before)
    assert (stdout, journals(world)) == ("", {})
