"""The real Nova object layer, run in a venv of its own (``tests/nova_tier/nova_objects.py``).

* :func:`nova_venv` builds/reuses the venv with nova 34 (``$RECOVER_NOVA_VENV``, else
  ``.cache/nova-venv``); the ``nova_python`` fixture (tests/conftest.py) is its python.
* :func:`run_nova` runs one subcommand of nova_objects.py and returns its JSON.
* :func:`nova_databases` makes a nova_api and a cell database (``make_db``'s empty copies
  of what nova 34's ``db sync`` creates) with the cell mapped in nova_api.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import REPO_ROOT, cached_venv, venv_imports

if TYPE_CHECKING:
    from tests.conftest import DatabaseFactory, MariaDBServer

NOVA_SCRIPT = Path(__file__).resolve().parent / "nova_tier" / "nova_objects.py"
NOVA_REQUIREMENTS = ("nova==34.*", "pymysql")
"""What the venv holds: the nova whose ``db sync`` the two schemas below come from."""
NOVA_API_SCHEMA = "nova_api-cdeec0c85668"
NOVA_CELL_SCHEMA = "nova-ab450ba04102"
VENV_ENV = "RECOVER_NOVA_VENV"
DEFAULT_VENV = REPO_ROOT / ".cache" / "nova-venv"
CELL1_UUID = "8a1b7c3e-2f4d-4e6a-9b5c-1d2e3f4a5b6c"


def _nova_works(python: Path) -> bool:
    return venv_imports(python, "import nova.config, nova.objects, pymysql")


def nova_venv() -> tuple[Path, float | None]:
    """``(venv, seconds to build it or None)``: nova 34 + pymysql."""
    venv = Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)
    return cached_venv(venv, NOVA_REQUIREMENTS, _nova_works)


def run_nova(python: str, command: str, api: str, cell: str, *args: str) -> dict[str, Any]:
    """Run ``nova_objects.py COMMAND`` and return the JSON it printed."""
    result = subprocess.run(
        [python, str(NOVA_SCRIPT), command, "--api", api, "--cell", cell, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"nova_objects.py {command} failed (exit {result.returncode}):\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def nova_databases(
    db_factory: DatabaseFactory, server: MariaDBServer, api_db: str, cell_db: str
) -> tuple[str, str]:
    """``(api URL, cell URL)``: empty nova 34 databases, the cell in ``cell_mappings``."""
    api = db_factory(NOVA_API_SCHEMA, api_db)
    cell = db_factory(NOVA_CELL_SCHEMA, cell_db)
    server.query(
        f"INSERT INTO `{api_db}`.cell_mappings (created_at, uuid, name, transport_url,"
        " database_connection, disabled) VALUES (UTC_TIMESTAMP(), %s, 'cell1', 'fake://', %s, 0)",
        (CELL1_UUID, cell),
    )
    return api, cell
