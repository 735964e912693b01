"""A committed write whose stdout is gone (`recover flavor 7 --yes | true`): issue 10, item 14."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.test_flavor import LEGACY_TABLES, PRIVATE, SHADOW_TABLES, Legacy, rows
from tests.test_flavor import legacy as legacy


def run_with_stdout_closed(args: list[str], state: Path) -> subprocess.CompletedProcess[str]:
    """Run recover with fd 1 a pipe whose reader has already gone, as `... | true` ends up."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE, deterministically
    recover = str(Path(sys.executable).with_name("recover"))
    env = {**os.environ, "RECOVER_STATE_DIR": str(state)}
    try:
        return subprocess.run(
            [recover, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
            cwd=REPO_ROOT, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_a_commit_with_stdout_closed_succeeds_and_names_its_journal_on_stderr(
    legacy: Legacy, tmp_path: Path
) -> None:
    done = run_with_stdout_closed(legacy.args("flavor", PRIVATE.flavorid, "--yes"), tmp_path)
    (journal,) = sorted((tmp_path / "journal").glob("*.json"))
    assert json.loads(journal.read_text())["status"] == "committed"
    assert rows(legacy.url, LEGACY_TABLES) == legacy.before_delete
    assert (done.returncode, done.stderr) == (
        0,
        f"Committed; journal {journal}; undo: recover undo {journal}\n",
    )


def test_a_dry_run_with_stdout_closed_fails_in_one_line_and_changes_nothing(
    legacy: Legacy, tmp_path: Path
) -> None:
    done = run_with_stdout_closed(legacy.args("flavor", PRIVATE.flavorid, "--dry-run"), tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        "Error: standard output was closed before the report was complete\n",
    )
    assert rows(legacy.url, (*LEGACY_TABLES, *SHADOW_TABLES)) == legacy.after_delete
    assert not (tmp_path / "journal").exists()
