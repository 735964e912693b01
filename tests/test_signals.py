"""Ctrl-C (SIGINT) and SIGTERM at every phase of ``recover image`` and ``recover flavor``.

The safety model: "Ctrl-C or SIGTERM at any moment: the old state (the new one if COMMIT had
already happened, and it says so), temporary files removed, exit 130/143". Each run stops
itself at a fault point (``RECOVER_FAULT_POINT=<phase>:stop``, SIGSTOP), gets the signal,
then SIGCONT: the handler runs as the process resumes, at exactly that phase. The state is
checked as in the kill -9 tests (tests/test_faults.py: rows by ``CHECKSUM TABLE``, the store
file by its digests), plus: the exact exit code, the exact one line on stderr, the journal's
status, no temporary, lock or stray file anywhere (store, journal directory, TMPDIR, the
compute node's ``_base`` directory), and no child process left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from recover.demo import SNAPSHOT
from tests.images import digests
from tests.test_faults import (
    FlavorCase,
    assert_image_new,
    assert_image_old,
    assert_nothing_lost,
    base_stat,
    finish,
    journals,
    processes_naming,
    rerun_and_check,
    start,
    start_remote_conversion,
    stopped,
    store_tmp_files,
    wait_until,
)
from tests.test_hostile import OTHER_IMAGE, RECOVER, World, build_world

SIGNALS = [
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
]

#: phase -> (state afterwards, journal statuses afterwards)
IMAGE_PHASES = {
    "convert": ("old", []),
    "staged": ("old", []),
    "journaled": ("old", ["rolled-back"]),
    "placed": ("old", ["rolled-back"]),
    "in-transaction": ("old", ["rolled-back"]),
    "committed": ("new", ["committed"]),
}


@pytest.fixture
def world(make_db: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(make_db, tmp_path, tmp_path_factory, prefix="s")


def stop_and_signal(
    argv: list[str], env: dict[str, str], cwd: Path, phase: str, signum: int
) -> tuple[int, str, str]:
    """Run ``recover argv`` until it stops itself at ``phase``; send ``signum``, then SIGCONT.

    Writes how long the clean-up took (SIGCONT to exit) to stderr: the figures of
    docs/reliability.md. It must stay well under systemd's 90 s before its SIGKILL.
    """
    proc = start(argv, {**env, "RECOVER_FAULT_POINT": f"{phase}:stop"}, cwd)
    try:
        assert wait_until(lambda: proc.poll() is not None or stopped(proc.pid)), "never stopped"
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signum)  # the process only, as `kill` or systemd would
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    result = finish(proc)
    seconds = time.monotonic() - resumed
    sys.stderr.write(f"\n{signal.Signals(signum).name} at {phase}: exit after {seconds:.2f} s\n")
    assert seconds < 10
    return result


def interrupted_line(signum: int) -> str:
    return f"Error: interrupted by {signal.Signals(signum).name}; nothing was changed\n"


def committed_line(signum: int, journal: Path) -> str:
    title = json.loads(journal.read_text())["title"]
    return (
        f"Error: interrupted by {signal.Signals(signum).name} after the COMMIT: {title} is "
        f"COMMITTED and stays (journal {journal}); `recover undo {journal}` reverses it\n"
    )


def assert_no_litter(world: World) -> None:
    """Nothing but the store's files, the journals and the compute node's _base file."""
    assert store_tmp_files(world) == []
    allowed = {OTHER_IMAGE, SNAPSHOT}
    assert {p.name for p in world.store.iterdir()} <= allowed, list(world.store.iterdir())
    if world.journal_dir.exists():
        assert all(p.suffix == ".json" for p in world.journal_dir.iterdir())
    assert list((world.root / "tmp").iterdir()) == []
    assert sorted(p.name for p in world.base.parent.iterdir()) == [world.base.name]


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
@pytest.mark.parametrize("phase", list(IMAGE_PHASES))
def test_image_signal_at_phase(
    world: World, mariadb_server: Any, phase: str, signum: int, code: int
) -> None:
    state, statuses = IMAGE_PHASES[phase]
    before, base_before = mariadb_server.checksum(world.glance_db), base_stat(world)
    exit_code, out, err = stop_and_signal(world.base_args("--yes"), world.env, world.root,
                                          phase, signum)  # fmt: skip
    assert (exit_code, out) == (code, ""), err
    assert sorted(journals(world).values()) == statuses
    if state == "new":
        (journal,) = world.journal_dir.glob("*.json")
        assert err == committed_line(signum, journal)
        assert_image_new(world, mariadb_server)
    else:
        assert err == interrupted_line(signum)
        assert_image_old(world, mariadb_server, before)
        assert not (world.store / SNAPSHOT).exists()
    assert_no_litter(world)
    rerun_and_check(world, mariadb_server, world.base_args("--yes"), base_before,
                    already_done=state == "new")  # fmt: skip
    if state == "new":  # the undo the line names puts everything back
        undone = subprocess.run(
            [RECOVER, *world.args("undo", str(journal), "--yes")], env=world.env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert undone.returncode == 0, undone.stderr
        assert mariadb_server.checksum(world.glance_db) == before
        assert not (world.store / SNAPSHOT).exists()


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
@pytest.mark.parametrize("kind", ["legacy", "modern"])
def test_flavor_signal_inside_the_transaction(
    make_db: Any, tmp_path: Path, mariadb_server: Any, kind: str, signum: int, code: int
) -> None:
    case = FlavorCase(kind, make_db, tmp_path)
    before = mariadb_server.checksum(case.db)
    exit_code, out, err = stop_and_signal(case.argv("--yes"), case.env, tmp_path,
                                          "in-transaction", signum)  # fmt: skip
    assert (exit_code, out, err) == (code, "", interrupted_line(signum))
    assert case.state() == "old"
    assert mariadb_server.checksum(case.db) == before
    assert case.journals() == ["rolled-back"]
    assert sorted(p.name for p in (tmp_path / "state" / "journal").iterdir()) == [
        p.name for p in (tmp_path / "state" / "journal").glob("*.json")
    ]
    case.rerun(already_done=False)


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_flavor_signal_after_the_commit(
    make_db: Any, tmp_path: Path, mariadb_server: Any, signum: int, code: int
) -> None:
    case = FlavorCase("legacy", make_db, tmp_path)
    exit_code, out, err = stop_and_signal(case.argv("--yes"), case.env, tmp_path,
                                          "committed", signum)  # fmt: skip
    (journal,) = (tmp_path / "state" / "journal").glob("*.json")
    assert (exit_code, out, err) == (code, "", committed_line(signum, journal))
    assert case.state() == "new"
    assert case.journals() == ["committed"]


def test_image_signals_during_the_clean_up_do_not_cut_it_short(
    world: World, mariadb_server: Any
) -> None:
    """SIGINT with the file placed, then more SIGINTs and SIGTERMs every millisecond while it
    cleans up (an impatient operator): the first one decides, the clean-up runs to its end."""
    before, base_before = mariadb_server.checksum(world.glance_db), base_stat(world)
    proc = start(world.base_args("--yes"), {**world.env, "RECOVER_FAULT_POINT": "placed:stop"},
                 world.root)  # fmt: skip
    assert wait_until(lambda: proc.poll() is not None or stopped(proc.pid)), "never stopped"
    assert digests(world.store / SNAPSHOT) == world.digests  # placed, not committed
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    sent = 0
    while proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT if sent % 2 else signal.SIGTERM)
        except ProcessLookupError:
            break
        sent += 1
        wait_until(lambda: proc.poll() is not None, timeout=0.001, step=0.0005)
    code, out, err = finish(proc)
    assert (code, out, err) == (130, "", interrupted_line(signal.SIGINT))
    assert sent > 0
    sys.stderr.write(f"\n{sent} more signals during the clean-up\n")
    assert_image_old(world, mariadb_server, before)
    assert not (world.store / SNAPSHOT).exists()
    assert list(journals(world).values()) == ["rolled-back"]
    assert_no_litter(world)
    rerun_and_check(world, mariadb_server, world.base_args("--yes"), base_before)


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_image_signal_mid_copy_ends_the_child_and_removes_the_temporary_file(
    make_db: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
    mariadb_server: Any, signum: int, code: int,
) -> None:  # fmt: skip
    """A raw image read from the node while its bytes flow into the store's temporary file."""
    world = build_world(make_db, tmp_path, tmp_path_factory, prefix="s", disk_format="raw")
    before, base_before = mariadb_server.checksum(world.glance_db), base_stat(world)
    proc = start(world.base_args("--yes"), world.env, world.root)
    assert wait_until(lambda: store_tmp_files(world) or proc.poll() is not None)
    os.kill(proc.pid, signum)
    exit_code, out, err = finish(proc)
    if exit_code == 0:  # the copy was done before the signal arrived: nothing to test here
        pytest.skip("the recovery finished before the signal")
    assert (exit_code, out, err) == (code, "", interrupted_line(signum))
    assert_image_old(world, mariadb_server, before)
    assert_no_litter(world)
    assert journals(world) == {}
    assert wait_until(lambda: not processes_naming(str(world.base)), timeout=10)
    rerun_and_check(world, mariadb_server, world.base_args("--yes"), base_before)
    assert_nothing_lost(world, base_before)


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_image_signal_during_remote_conversion_removes_the_node_temporary_file(
    world: World, mariadb_server: Any, sshd_server: Any, signum: int, code: int
) -> None:
    """qemu-img converts next to _base on the compute node (over ssh) when the signal comes:
    the local ssh is ended and the node's ``.recover-tmp-<id>.qcow2`` removed."""
    run = start_remote_conversion(world, mariadb_server, sshd_server)
    remote_tmp = run.remote_tmp
    os.kill(run.proc.pid, signum)
    exit_code, out, err = finish(run.proc)
    if exit_code == 0:
        pytest.skip("the recovery finished before the signal")
    assert (exit_code, out, err) == (code, "", interrupted_line(signum))
    assert_image_old(world, mariadb_server, run.before)
    assert not remote_tmp.exists()
    assert_no_litter(world)  # TMPDIR included: the ssh control socket's directory is gone
    # The run's one ssh connection (its master names the socket under TMPDIR) is stopped.
    assert processes_naming(str(world.root / "tmp")) == []
    # ssh and the node's qemu-img end with it (sshd closes the session).
    assert wait_until(lambda: not processes_naming(str(world.base)), timeout=10), processes_naming(
        str(world.base)
    )
    rerun_and_check(world, mariadb_server, run.argv, run.base_before, env=run.env)


def test_a_signal_during_the_commit_waits_for_it_and_later_ones_are_ignored() -> None:
    """``recover.signals`` in this process: SIGTERM inside ``deferred()`` (the COMMIT and its
    record) interrupts only once the section is done; a second signal then stays blocked."""
    from recover import signals

    saved = {s: signal.getsignal(s) for s in signals.EXIT_CODES}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    signals.reset()
    signals.install()
    steps = []
    try:
        with pytest.raises(signals.Terminated):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("committed")  # the section went on after the signal
                signals.note_commit(Path("/journal.json"), "recover flavor 7")
            steps.append("not reached")
        assert steps == ["committed"]
        assert signals.received() == signal.SIGTERM
        assert signals.committed() == (Path("/journal.json"), "recover flavor 7")
        os.kill(os.getpid(), signal.SIGINT)  # blocked now: no KeyboardInterrupt
        assert signal.SIGINT in signal.sigpending()
    finally:
        for signum in saved:  # the pending SIGINT is discarded, not delivered to pytest
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        signals.reset()


@pytest.mark.parametrize(("signum", "code"), SIGNALS)
def test_undo_signal_after_its_commit_finishes_the_undo(
    world: World, mariadb_server: Any, signum: int, code: int
) -> None:
    """The undo of an image recovery is interrupted after its own COMMIT: the rows are old,
    the recovered file is removed and the recovery's journal says ``undone`` all the same."""
    before = mariadb_server.checksum(world.glance_db)
    done = subprocess.run([RECOVER, *world.base_args("--yes")], env=world.env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (recovery,) = world.journal_dir.glob("*.json")
    exit_code, out, err = stop_and_signal(world.args("undo", str(recovery), "--yes"),
                                          world.env, world.root, "committed", signum)  # fmt: skip
    (undo_journal,) = [p for p in world.journal_dir.glob("*.json") if p != recovery]
    assert (exit_code, out, err) == (code, "", committed_line(signum, undo_journal))
    assert mariadb_server.checksum(world.glance_db) == before
    assert not (world.store / SNAPSHOT).exists()
    assert json.loads(recovery.read_text())["status"] == "undone"
    assert json.loads(undo_journal.read_text())["status"] == "committed"
    assert_no_litter(world)
