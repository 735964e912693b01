"""One error hierarchy and one exit-code enum for every command.

Core code raises a :class:`RecoverError` subclass carrying the facts and the next
step; the CLI turns it into a single ``Error: ...`` line on stderr once (see
``recover.cli.main``). Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes of every ``recover`` command (PRODUCT.md, "Exit codes")."""

    OK = 0
    #: The operation was refused or failed; nothing was changed.
    FAILED = 1
    #: Usage error, raised by click itself.
    USAGE = 2
    #: ``inventory --fail-on-orphans`` found orphaned references.
    ORPHANS_FOUND = 3


class RecoverError(Exception):
    """An expected failure: one line for the operator, exit code 1."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ConfigError(RecoverError):
    """Configuration is missing, contradictory or unreadable."""


class DatabaseError(RecoverError):
    """A database could not be reached, or is not the kind we expected."""


class SchemaError(DatabaseError):
    """A database is reachable but its tables are not those of Nova or Glance."""


class NotFoundError(RecoverError):
    """The object named on the command line does not exist anywhere we looked."""


class RefusedError(RecoverError):
    """The operation is unsafe or pointless, so nothing was done."""


class PartialScanError(RecoverError):
    """Some cells could not be scanned; the report printed is incomplete."""
