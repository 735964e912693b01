"""One plan, two renderings: the write mechanism of every command that changes a database.

A :class:`Plan` is an ordered list of row changes on one database, each with the
full before-image of the row it touches. The same plan is

* rendered for ``--dry-run`` as the exact SQL of the target dialect
  (:func:`render_sql`), wrapped in ``BEGIN;`` ... ``COMMIT;``;
* written to the journal before anything changes (``recover.journal``);
* executed by :func:`apply` in one transaction that first re-reads every row
  ``FOR UPDATE`` and refuses if it no longer matches the plan;
* reversed by ``undo`` (:meth:`Plan.inverse`).

So the preview cannot drift from what runs. (Shape taken from alembic's
``DefaultImpl._exec``: one place where SQL is either executed or rendered.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    column,
    delete,
    insert,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql import ClauseElement

from recover import faults, signals
from recover.db.engine import Database, describe_db_error
from recover.errors import RecoverError, RefusedError
from recover.text import printable

Row = dict[str, Any]

#: MariaDB/MySQL error numbers meaning "someone else holds or changed these rows". On Galera,
#: row locks are local to one node: a conflicting write through another node is not blocked,
#: and whichever commits second fails its certification at COMMIT with 1213 (MariaDB KB,
#: "MariaDB Galera Cluster - Known Limitations": optimistic concurrency control, a COMMIT may
#: still be aborted; MariaDB/server mysql-test/suite/galera galera_certification_double_failure:
#: "COMMIT; ERROR 40001: Deadlock found"); a local transaction aborted by a replicated
#: write-set (brute-force abort) gets 1213 too.
_CONCURRENT = {
    1205: "lock wait timeout",
    1213: "deadlock, or on Galera a certification failure at COMMIT",
}
#: ER_UNKNOWN_COM_ERROR as Galera uses it: "WSREP has not yet prepared node for application
#: use", a node that lost the primary component (or is still joining) refuses every query.
_NOT_READY = 1047
#: ER_DUP_ENTRY, and ER_ROW_IS_REFERENCED(_2): a unique key, or a row other rows refer to.
_DUPLICATE, _REFERENCED = 1062, (1451, 1217)
#: Columns that say which row a referencing row is, in a refusal (besides its key).
_TELLING = ("key", "project_id", "name", "value", "member")


class ConcurrentChangeError(RefusedError):
    """Another session changed or locked the rows between planning and applying."""


@dataclass(frozen=True)
class Pending:
    """A value that exists only once the run has done its work (the checksum of a file it
    writes), in a dry-run's plan.

    Rendered as ``<name>``: a syntax error for the mariadb/mysql client and for sqlite3, so a
    dry-run replayed by hand fails there instead of writing a stale value (``:name`` would
    not do: sqlite3 binds an unset parameter as NULL). Such SQL ends in ``ROLLBACK``, not
    ``COMMIT``: a client that goes on after an error (``mariadb --force``, ``sqlite3``
    without ``-bail``) must not commit the other statements either. :func:`apply` refuses a
    plan that still holds one.
    """

    name: str

    @property
    def sql(self) -> str:
        return f"<{self.name}>"


@dataclass(frozen=True)
class RowChange:
    """One row inserted, updated or deleted.

    ``before`` is the whole row as planned (None for an insert), ``after`` the
    whole row wanted (None for a delete). ``key`` names the primary key values.
    """

    table: str
    key: Row
    before: Row | None
    after: Row | None

    @property
    def action(self) -> str:
        if self.before is None:
            return "insert"
        if self.after is None:
            return "delete"
        return "update"

    def changed_columns(self) -> dict[str, Any]:
        assert self.before is not None and self.after is not None
        return {k: v for k, v in self.after.items() if not same_value(self.before.get(k), v)}

    def inverse(self) -> RowChange:
        return RowChange(self.table, self.key, before=self.after, after=self.before)


@dataclass
class Plan:
    """Row changes on one database, applied together or not at all."""

    title: str
    db: Database
    #: Which configured database this is: ``nova_api``, ``cell:<name>`` or ``glance``.
    target: str
    changes: list[RowChange]
    #: Lines for the operator: what will happen and what will not.
    notes: list[str] = field(default_factory=list)
    #: What the plan is about (e.g. ``{"kind": "flavor", "id": 7}``), kept in the journal.
    subject: dict[str, Any] = field(default_factory=dict)
    #: Files the plan puts in place (``path``, ``size``, ``md5``, ``created``); undo removes them.
    files: list[dict[str, Any]] = field(default_factory=list)

    def inverse(self, title: str) -> Plan:
        return Plan(
            title=title,
            db=self.db,
            target=self.target,
            changes=[c.inverse() for c in reversed(self.changes)],
            subject=self.subject,
            files=self.files,
        )

    def summary(self) -> list[str]:
        counts: dict[tuple[str, str], int] = {}
        for change in self.changes:
            counts[(change.action, change.table)] = counts.get((change.action, change.table), 0) + 1
        return [f"{action} {n} row(s) in {table}" for (action, table), n in counts.items()]


def same_value(a: Any, b: Any) -> bool:
    """Equality as the database sees it: float columns lose precision, booleans are 0/1."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6)
        except (TypeError, ValueError):
            return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is not None and b is not None and int(a) == int(b)
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a.replace(microsecond=0) == b.replace(microsecond=0)
    return bool(a == b)


def same_row(a: Row | None, b: Row | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


def _where_key(table: Table, key: Row) -> Any:
    return and_(*(table.c[k] == v for k, v in key.items()))


def _values(row: Row) -> Row:
    return {k: literal_column(v.sql) if isinstance(v, Pending) else v for k, v in row.items()}


def pending(plan: Plan) -> list[str]:
    """The names of the placeholders the plan still holds, in order."""
    names: list[str] = []
    for change in plan.changes:
        for value in (change.after or {}).values():
            if isinstance(value, Pending) and value.name not in names:
                names.append(value.name)
    return names


def statements(plan: Plan) -> Iterator[tuple[RowChange, ClauseElement]]:
    """The DML of the plan, in order."""
    for change in plan.changes:
        table = plan.db.table(change.table)
        if change.action == "insert":
            assert change.after is not None
            yield change, insert(table).values(**_values(change.after))
        elif change.action == "delete":
            yield change, delete(table).where(_where_key(table, change.key))
        elif change.changed_columns():
            yield (
                change,
                update(table)
                .where(_where_key(table, change.key))
                .values(**_values(change.changed_columns())),
            )
        # else: the row is already as planned (e.g. a live location of a row deleted by hand):
        # lock_and_check still locks and re-checks it; an empty SET would be a syntax error.


def _literal_dialect(dialect: Dialect) -> Dialect:
    """The same dialect with a named paramstyle, so literals are not %-escaped."""
    return type(dialect)(paramstyle="named")  # type: ignore[call-arg]


def render_sql(plan: Plan) -> str:
    """The exact SQL ``apply`` runs, with literal values, for the plan's database."""
    dialect = _literal_dialect(plan.db.engine.dialect)
    comments = [plan.title, f"database: {plan.db.label}", *plan.notes]
    lines = [f"-- {printable(c)}" for c in comments]
    lines.append("BEGIN;")
    for change, statement in statements(plan):
        if change.before is not None:
            now = f"{change.table} {_describe_key(change.key)} is now: {_brief(change.before)}"
            lines.append(f"-- {printable(now)}")
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        lines.append(sql.strip() + ";")
    if pending(plan):
        lines.append("-- ROLLBACK, not COMMIT: the <...> placeholders are not values")
        lines.append("ROLLBACK;")
    else:
        lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def _describe_key(key: Row) -> str:
    return " ".join(f"{k}={v!r}" for k, v in key.items())


def _brief(row: Row) -> str:
    shown = {k: row[k] for k in ("deleted", "deleted_at", "status") if k in row}
    return ", ".join(f"{k}={'NULL' if v is None else v}" for k, v in shown.items()) or "present"


def lock_and_check(conn: Connection, plan: Plan) -> None:
    """Re-read every planned row ``FOR UPDATE``; refuse if any differs from the plan."""
    for change in plan.changes:
        table = plan.db.table(change.table)
        query = select(table).where(_where_key(table, change.key))
        if conn.dialect.name != "sqlite":  # SQLite locks the whole file on the first write
            query = query.with_for_update()
        found = conn.execute(query).mappings().first()
        current = dict(found) if found is not None else None
        if not same_row(current, change.before):
            raise ConcurrentChangeError(
                f"{change.table} {_describe_key(change.key)} changed since the plan was made "
                f"({_difference(change.before, current)})",
                hint="nothing was changed; look again with `recover inventory` and re-run",
            )


def _difference(expected: Row | None, found: Row | None) -> str:
    if expected is None:
        return "the row now exists"
    if found is None:
        return "the row is gone"
    cols = [k for k in expected if not same_value(expected.get(k), found.get(k))]
    return ", ".join(f"{k}: planned {expected[k]!r}, now {found.get(k)!r}" for k in cols[:3])


def verify(plan: Plan) -> list[str]:
    """Re-read every row after the commit; the differences from the plan, if any."""
    problems = []
    with plan.db.engine.connect() as conn:
        for change in plan.changes:
            table = plan.db.table(change.table)
            found = (
                conn.execute(select(table).where(_where_key(table, change.key))).mappings().first()
            )
            current = dict(found) if found is not None else None
            if not same_row(current, change.after):
                where = f"{change.table} {_describe_key(change.key)}"
                problems.append(f"{where}: {_difference(change.after, current)}")
    return problems


def _foreign_keys(
    conn: Connection, db: Database, parents: set[str]
) -> list[tuple[str, str, str, str]]:
    """``(child table, child column, parent table, parent column)`` of FKs into ``parents``."""
    if conn.dialect.name == "mysql":
        rows = conn.execute(
            select(text("TABLE_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME"))
            .select_from(text("information_schema.KEY_COLUMN_USAGE"))
            .where(
                text("TABLE_SCHEMA = DATABASE()"),
                column("REFERENCED_TABLE_NAME").in_(sorted(parents)),
            )
        )
        return sorted((str(a), str(b), str(c), str(d)) for a, b, c, d in rows)
    found = []
    inspector = inspect(conn)
    for child in sorted(db.table_names()):
        for fk in inspector.get_foreign_keys(child):
            if fk["referred_table"] in parents:
                pairs = zip(fk["constrained_columns"], fk["referred_columns"], strict=True)
                found += [(child, c, fk["referred_table"], p) for c, p in pairs]
    return found


def blocking_references(conn: Connection, plan: Plan) -> list[str]:
    """Rows outside the plan that refer to a row the plan deletes (a foreign key forbids it).

    Such rows were added after the plan's rows were read (e.g. an extra spec set on a
    recovered flavor before its undo): the delete fails the same way however often it runs.
    """
    deleted = [c for c in plan.changes if c.action == "delete" and c.before is not None]
    if not deleted:
        return []
    gone = {(c.table, tuple(sorted(c.key.items()))) for c in deleted}
    found: list[str] = []
    links = _foreign_keys(conn, plan.db, {c.table for c in deleted})
    for change in deleted:
        assert change.before is not None
        for child, child_column, parent, parent_column in links:
            if parent != change.table or parent_column not in change.before:
                continue
            table = plan.db.table(child)
            keys = [col.name for col in table.primary_key.columns]
            query = select(table).where(table.c[child_column] == change.before[parent_column])
            for row in conn.execute(query).mappings():
                if (child, tuple(sorted((k, row[k]) for k in keys))) in gone:
                    continue
                shown = {k: row[k] for k in (*keys, *_TELLING) if k in row}
                found.append(f"{child} {_describe_key(shown)}")
    return found


def referenced_error(plan: Plan, blockers: list[str]) -> RefusedError:
    flavor = any(c.table in ("flavors", "instance_types") for c in plan.changes)
    how = (
        "`openstack flavor unset --property KEY FLAVOR` or `--project PROJECT`"
        if flavor
        else "through the service's API"
    )
    return RefusedError(
        f"rows added since refer to a row this would delete: {'; '.join(blockers)}",
        hint=(
            "nothing was changed; they were not there when the plan was made, so it leaves them "
            f"alone: remove them first ({how}), or keep what the plan would delete"
        ),
    )


def _integrity_error(
    conn: Connection, plan: Plan, change: RowChange, exc: IntegrityError
) -> RefusedError:
    """The refusal for a unique or foreign key violation: deterministic ones say why."""
    args = getattr(exc.orig, "args", (None,))
    code = args[0] if args else None
    if code in _REFERENCED or (conn.dialect.name == "sqlite" and change.action == "delete"):
        blockers = blocking_references(conn, plan)
        if blockers:
            return referenced_error(plan, blockers)
    if code == _DUPLICATE and change.after is not None:
        collision = _collision_within(conn, plan, change)
        if collision is not None:
            return collision
    return ConcurrentChangeError(
        f"the database refused the change: {describe_db_error(exc)}",
        hint="nothing was changed; another run or a person changed these rows at the same time",
    )


def _collision_within(conn: Connection, plan: Plan, change: RowChange) -> RefusedError | None:
    """An earlier row of this very plan that the database holds equal to ``change``'s.

    E.g. two extra-spec keys differing only in case under utf8_general_ci: a re-run
    fails the same way, so this is no race.
    """
    after = change.after
    assert after is not None
    table = plan.db.table(change.table)
    earlier = [
        c
        for c in plan.changes[: plan.changes.index(change)]
        if c.table == change.table and c.after is not None
    ]
    for unique in _unique_keys(conn, change.table):
        if not all(after.get(c) is not None for c in unique):
            continue
        query = select(table).where(and_(*(table.c[c] == after[c] for c in unique)))
        for row in conn.execute(query).mappings():
            for other in earlier:
                if not all(row.get(k) == v for k, v in other.key.items()):
                    continue
                assert other.after is not None
                mine = [other.after[c] for c in unique]
                theirs = [after[c] for c in unique]
                return RefusedError(
                    f"two rows of this plan collide in {change.table}: its unique key "
                    f"({', '.join(unique)}) holds {mine!r} and {theirs!r} equal under the "
                    "column's collation",
                    hint="nothing was changed; a re-run would fail the same way",
                )
    return None


def _unique_keys(conn: Connection, table: str) -> list[list[str]]:
    inspector = inspect(conn)
    found: list[list[Any]] = [
        list(u["column_names"]) for u in inspector.get_unique_constraints(table)
    ]
    found += [list(i["column_names"]) for i in inspector.get_indexes(table) if i.get("unique")]
    keys: list[list[str]] = []
    for names in found:
        columns = [str(c) for c in names if c is not None]
        if columns and columns not in keys:
            keys.append(columns)
    return keys


def _subject(plan: Plan) -> str:
    """The object a refusal names: the plan's title, and the journal an undo reverses."""
    journal = plan.subject.get("journal")
    return f"{plan.title} (journal {journal})" if journal else plan.title


def apply(
    plan: Plan,
    before_commit: Callable[[], None] = lambda: None,
    after_commit: Callable[[], None] = lambda: None,
) -> None:
    """One transaction: lock, re-check, ``before_commit`` (the journal), DML, commit, then
    ``after_commit`` (a Ctrl-C or SIGTERM during the COMMIT and this waits for both).

    Concurrent sessions: the loser either finds the rows changed (re-check),
    waits on the winner's row locks and then finds them changed, or gets a
    duplicate key or deadlock from the server; each becomes one clear refusal.
    """
    if pending(plan):  # a dry-run's plan: its placeholders are not values
        raise RecoverError(f"{plan.title}: the plan still holds {', '.join(pending(plan))}")
    try:
        with plan.db.engine.begin() as conn:
            lock_and_check(conn, plan)
            before_commit()
            for change, statement in statements(plan):
                try:
                    conn.execute(statement)  # type: ignore[call-overload]
                except IntegrityError as exc:
                    # Asked inside the transaction: the plan's earlier rows are visible here.
                    raise _integrity_error(conn, plan, change, exc) from None
            faults.point("in-transaction")
            with signals.deferred():
                conn.commit()
                after_commit()
    except IntegrityError as exc:
        raise ConcurrentChangeError(
            f"the database refused the change: {describe_db_error(exc)}",
            hint="nothing was changed; another run or a person changed these rows at the same time",
        ) from None
    except OperationalError as exc:
        code = getattr(exc.orig, "args", (None,))[0]
        if code in _CONCURRENT:
            raise ConcurrentChangeError(
                f"{_subject(plan)}: another session holds these rows or changed them at the "
                f"same moment ({_CONCURRENT[code]}, {code}: {describe_db_error(exc)})",
                hint="nothing was changed; run `recover inventory` to see the result of the "
                "run that won, and re-run only if it is still needed",
            ) from None
        if code == _NOT_READY:
            raise ConcurrentChangeError(
                f"{_subject(plan)}: the database node is not ready ({code}: "
                f"{describe_db_error(exc)}): a Galera node outside the cluster's primary part",
                hint="nothing was changed; run `recover inventory` through a node that is "
                "Synced, then re-run through it",
            ) from None
        raise RecoverError(
            f"the transaction failed and was rolled back: {describe_db_error(exc)}"
        ) from None
    except DBAPIError as exc:
        raise RecoverError(
            f"the transaction failed and was rolled back: {describe_db_error(exc)}"
        ) from None
