"""Run the recover CLI in this process and count the SQL statements it sends, per database.

    python scripts/bench_count.py OUT.json -- --nova-api-db URL --glance-db URL inventory ...

Every statement SQLAlchemy hands to a DB-API cursor (``before_cursor_execute``,
as tests/test_inventory.py counts them) is recorded with the database it went
to. OUT.json gets ``{"total", "reflection", "queries", "by_database": {db:
{"reflection", "queries"}}, "exit": status}``; reflection means SHOW/DESCRIBE
and information_schema reads of the schema, queries everything else (the
inventory's own SELECTs, plus the pool's pings and session set-up).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

REFLECTION = ("SHOW", "DESCRIBE", "EXPLAIN")


def main() -> int:
    out, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: bench_count.py OUT.json -- RECOVER-ARGS..."
    queries: Counter[str] = Counter()
    reflection: Counter[str] = Counter()

    def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        db = conn.engine.url.database or "?"
        text = statement.lstrip().upper()
        if text.startswith(REFLECTION) or "INFORMATION_SCHEMA" in text:
            reflection[db] += 1
        else:
            queries[db] += 1

    event.listen(Engine, "before_cursor_execute", before)
    from recover.cli import cli

    status = 0
    try:
        cli.main(args=args, prog_name="recover", standalone_mode=False)
    except SystemExit as exc:
        status = int(exc.code or 0)
    dbs = sorted(set(queries) | set(reflection))
    with open(out, "w") as handle:
        json.dump(
            {
                "exit": status,
                "total": sum(queries.values()) + sum(reflection.values()),
                "queries": sum(queries.values()),
                "reflection": sum(reflection.values()),
                "by_database": {
                    db: {"queries": queries[db], "reflection": reflection[db]} for db in dbs
                },
            },
            handle,
            indent=1,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
