"""The command line itself: help that teaches, a version, one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from recover import __version__
from recover.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"recover, version {__version__}\n")


def test_top_level_help_lists_commands_and_env_vars() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for word in ("inventory", "rbd-features", "demo", "RECOVER_NOVA_API_DB", "RECOVER_GLANCE_DB",
                 "RECOVER_STORE_DIR", "RECOVER_CONFIG", "recover demo"):  # fmt: skip
        assert word in result.stdout


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_help_has_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert f"recover {command}" in result.stdout or "recover --" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["flavour"])
    assert result.exit_code == 2
    assert "No such command 'flavour'" in result.stderr


def test_corrupt_config_file_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "recover.ini"
    bad.write_bytes(b"[recover\nnova_db = x\n")
    result = CliRunner().invoke(cli, ["--config", str(bad), "inventory"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: config file {bad} is not a valid ini file: ")
    assert len(result.stderr.splitlines()) == 1


def test_debug_shows_a_traceback_without_passwords(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli,
        ["--debug", "--nova-db", "mysql+pymysql://nova:T0pSecret@127.0.0.1:9/nova", "inventory"],
    )
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "T0pSecret" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")


def test_the_distribution_is_openstack_recover_and_installs_the_recover_command() -> None:
    # "recover" on PyPI is someone else's project (issue 10, item 17).
    from importlib import metadata

    dist = metadata.distribution("openstack-recover")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert (dist.metadata["Name"], scripts) == (
        "openstack-recover",
        {"recover": "recover.cli:main"},
    )
