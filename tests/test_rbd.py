"""`recover rbd-features`: the incident's `Image uses unsupported features: 60`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from recover.cli import cli
from recover.rbd import decode, parse_value


@pytest.mark.parametrize(
    "text",
    [
        "60",
        "0x3c",
        "0X3C",
        " 60 ",
        "2018-06-05 13:40:32 -1 librbd: Image uses unsupported features: 60",
    ],
)
def test_parse_forms(text: str) -> None:
    assert parse_value(text) == 60


def test_decode_incident_value() -> None:
    decoded = decode(60)
    assert decoded.names == ("exclusive-lock", "object-map", "fast-diff", "deep-flatten")
    assert decoded.disableable == decoded.names
    assert decoded.unknown_bits == 0


def test_unknown_bits_are_reported() -> None:
    assert decode(1 | 4096).unknown_bits == 4096
    assert decode(1 | 4096).names == ("layering",)


def test_cli_prints_names_command_and_advice() -> None:
    result = CliRunner().invoke(cli, ["rbd-features", "60", "--image", "volumes/volume-433ad82b"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "RBD features 60 (0x3c):"
    assert [line.split()[1] for line in lines[1:5]] == [
        "exclusive-lock",
        "object-map",
        "fast-diff",
        "deep-flatten",
    ]
    assert (
        "  rbd feature disable volumes/volume-433ad82b exclusive-lock object-map fast-diff deep-flatten"
        in lines
    )
    assert "  rbd_default_features = 1" in lines


def test_option_looking_value_is_a_usage_error() -> None:
    assert CliRunner().invoke(cli, ["rbd-features", "-4"]).exit_code == 2


def test_layering_only_needs_no_disable() -> None:
    result = CliRunner().invoke(cli, ["rbd-features", "1"])
    assert result.exit_code == 0
    assert "rbd feature disable" not in result.stdout
    assert "      1  layering" in result.stdout.splitlines()


def test_striping_cannot_be_disabled() -> None:
    result = CliRunner().invoke(cli, ["rbd-features", "3"])
    assert "Cannot be disabled on an existing image: striping." in result.stdout


@pytest.mark.parametrize("bad", ["sixty", "0xZZ", "-4", "", "6" * 30, "60; rm -rf /", "6\x000"])
def test_bad_values_exit_1_with_one_line(bad: str) -> None:
    result = CliRunner().invoke(cli, ["rbd-features", "--", bad])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr
