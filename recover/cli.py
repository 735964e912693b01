"""The ``recover`` command line: parse, call one core function, render.

Errors are translated once, in :class:`RecoverGroup`: a :class:`RecoverError`
becomes one ``Error: ...`` line on stderr and exit 1; tracebacks only with
``--debug``; passwords never.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from recover import __version__, signals
from recover.config import DEFAULT_INSTANCES_PATH, ENV_VARS, Settings, resolve
from recover.db.engine import describe_db_error
from recover.errors import ExitCode, PartialScanError, RecoverError
from recover.plan import Plan, render_sql
from recover.secrets import remember_secret, scrub
from recover.text import printable
from recover.write import (
    Confirm,
    Outcome,
    describe,
    execute,
    mark_undone,
    plan_undo,
    remove_created_files,
)


@dataclass
class AppContext:
    """What the group's options leave on ``ctx.obj`` for the commands."""

    options: dict[str, Any]
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        # Resolved on first use, so `recover rbd-features` never reads config files.
        if self._settings is None:
            self._settings = resolve(self.options)
        return self._settings


def warn(message: str) -> None:
    click.echo(f"Warning: {scrub(message)}", err=True)


class _NoteHandler(logging.Handler):
    """The core's ``log.warning`` calls (e.g. a URL rewritten): ``Note: ...`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        # click.echo looks the stream up now, so CliRunner's captured stderr gets it too.
        click.echo(f"Note: {scrub(record.getMessage())}", err=True)


_core_log = logging.getLogger("recover")
if not any(isinstance(h, _NoteHandler) for h in _core_log.handlers):
    _core_log.addHandler(_NoteHandler(logging.WARNING))
    _core_log.propagate = False
# SQLAlchemy's pool logs a failed ROLLBACK of a connection it gives up ("Exception during
# reset or similar", and three tracebacks) through logging's last-resort handler, i.e. on
# stderr: on a Galera node outside the primary component every query, ROLLBACK included,
# fails with 1047, and the one-line refusal came out under a page of tracebacks. The
# refusal says what happened; the connection is discarded, so the server rolls back.
_sqlalchemy_log = logging.getLogger("sqlalchemy")
if not _sqlalchemy_log.handlers:
    _sqlalchemy_log.addHandler(logging.NullHandler())


class RecoverGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        signals.reset()
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, signals.Terminated) as exc:
            self._interrupted(ctx, exc)
        except click.exceptions.Abort as exc:
            if signals.received() is not None:  # Ctrl-C at the confirmation prompt
                self._interrupted(ctx, exc)
            raise
        except (click.exceptions.Exit, click.ClickException):
            raise
        except RecoverError as exc:
            self._fail(ctx, exc, str(exc), exc.exit_code)
        except SQLAlchemyError as exc:
            self._fail(ctx, exc, f"database error: {describe_db_error(exc)}", ExitCode.FAILED)
        except BrokenPipeError as exc:
            _silence_stdout()
            self._fail(ctx, exc, "standard output was closed before the report was complete",
                       ExitCode.FAILED)  # fmt: skip
        except OSError as exc:
            self._fail(ctx, exc, f"{exc.strerror or exc}: {exc.filename or ''}", ExitCode.FAILED)
        except Exception as exc:  # the last line of defence: still one line, no traceback
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
            self._fail(ctx, exc, message, ExitCode.FAILED)

    @classmethod
    def _interrupted(cls, ctx: click.Context, exc: BaseException) -> None:
        """Ctrl-C or SIGTERM: the clean-up has run (``finally`` blocks, ``on_failure``, the
        journal marked); say in one line which state the run left, exit 128 + signal."""
        signum = signals.received()
        if signum is None:  # a KeyboardInterrupt not raised by our handler (none installed)
            signum = signal.SIGTERM if isinstance(exc, signals.Terminated) else signal.SIGINT
        name = signal.Signals(signum).name
        done = signals.committed()
        if done is not None and _journal_status(done[0]) == "committed":
            path, title = done
            message = (
                f"interrupted by {name} after the COMMIT: {title} is COMMITTED and stays "
                f"(journal {path}); `recover undo {path}` reverses it"
            )
        else:
            message = f"interrupted by {name}; nothing was changed"
        cls._fail(ctx, exc, message, 128 + signum, checked=True)  # 130 SIGINT, 143 SIGTERM

    @staticmethod
    def _fail(
        ctx: click.Context, exc: BaseException, message: str, code: int, checked: bool = False
    ) -> None:
        if not checked and signals.received() is not None:
            # The clean-up after a Ctrl-C or SIGTERM failed: the signal still decides the exit.
            RecoverGroup._interrupted(ctx, exc)
        obj = ctx.obj
        if isinstance(obj, AppContext) and obj.debug:
            click.echo(scrub("".join(traceback.format_exception(exc))), err=True, nl=False)
        click.echo(f"Error: {scrub(message).strip()}", err=True)
        ctx.exit(int(code))


def _env_help(name: str) -> str:
    return f" [env: {ENV_VARS[name]}]"


@click.group(cls=RecoverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recover")
@click.option(
    "--config", metavar="PATH", help="ini file with a [recover] section." + _env_help("config")
)
@click.option(
    "--nova-api-db",
    metavar="URL",
    help="nova_api database (Newton+); cells are discovered from cell_mappings."
    + _env_help("nova_api_db"),
)
@click.option(
    "--nova-db",
    metavar="URL",
    multiple=True,
    help="A Nova main/cell database; repeatable; overrides discovery."
    + " [env: RECOVER_NOVA_DB, comma-separated]",
)
@click.option("--glance-db", metavar="URL", help="Glance database." + _env_help("glance_db"))
@click.option(
    "--nova-conf",
    metavar="PATH",
    help="Read [database]/[api_database] connection from nova.conf." + _env_help("nova_conf"),
)
@click.option(
    "--glance-conf",
    metavar="PATH",
    help="Read [database] connection and the store dir from glance-api.conf."
    + _env_help("glance_conf"),
)
@click.option(
    "--store-dir",
    metavar="PATH",
    help="Glance filesystem store directory (default: from glance-api.conf, "
    "else /var/lib/glance/images)." + _env_help("store_dir"),
)
@click.option(
    "--glance-endpoint",
    metavar="URL",
    help="Glance API without Keystone." + _env_help("glance_endpoint"),
)
@click.option(
    "--os-token", metavar="TOKEN", help="Token for --glance-endpoint." + _env_help("os_token")
)
@click.option(
    "--cell-timeout",
    metavar="SECS",
    help="inventory: a cell that has not answered within SECS is reported unreachable "
    "(default 60, as nova's CELL_TIMEOUT)." + _env_help("cell_timeout"),
)
@click.option(
    "--ceph-conf",
    metavar="PATH",
    help="ceph.conf of Glance's RBD store (default: glance-api.conf's rbd_store_ceph_conf, "
    "else /etc/ceph/ceph.conf)." + _env_help("ceph_conf"),
)
@click.option(
    "--rbd-user",
    metavar="ID",
    help="Ceph client id whose keyring ceph.conf finds (default: rbd_store_user, else "
    "glance); the key is never printed." + _env_help("rbd_user"),
)
@click.option(
    "--rbd-pool",
    metavar="POOL",
    help="RBD pool of Glance's images (default: rbd_store_pool, else images)."
    + _env_help("rbd_pool"),
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, **options: Any) -> None:
    """Find live instances that depend on deleted Nova flavors and Glance
    images, and bring those back under their original ids.

    Database URLs are SQLAlchemy URLs, e.g.
    mysql+pymysql://nova:PASS@db/nova_api?charset=utf8. Precedence:
    flag > RECOVER_* env var > --config file > nova.conf / glance-api.conf >
    defaults. Passwords are never printed.

    \b
    Start with:
      recover --nova-conf /etc/nova/nova.conf \\
              --glance-conf /etc/glance/glance-api.conf inventory
    or see the whole story on a sandbox cloud:
      recover demo
    """
    remember_secret(options.get("os_token"))
    ctx.obj = AppContext(options=options, debug=debug)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "prometheus"]),
    default="table",
    show_default=True,
    help="table for people, json for tools, csv: one row per (orphan, instance), "
    "prometheus: node_exporter textfile collector format.",
)
@click.option(
    "--fail-on-orphans", is_flag=True, help="Exit 3 when anything is orphaned (cron, monitoring)."
)
@click.pass_obj
def inventory(app: AppContext, fmt: str, fail_on_orphans: bool) -> None:
    """List live instances whose flavor or image is deleted. Read-only.

    Scans every cell: flavors that are soft-deleted, archived into shadow_*
    tables or gone, whose internal id a new flavor took (id-reused), or that
    revert-resize would give back; images that are deleted, pending_delete,
    killed or purged, including the snapshots of shelved-offloaded instances. For each orphan:
    the instances, their compute hosts, the _base file name, and the command
    that recovers it.

    \b
    Examples:
      recover --nova-api-db mysql+pymysql://nova:PASS@db/nova_api \\
              --glance-db mysql+pymysql://glance:PASS@db/glance inventory
      recover --config /etc/recover.ini inventory --format json
      recover --config /etc/recover.ini inventory --fail-on-orphans >/dev/null

    Exit status: 0 clean or orphans listed, 1 some cell could not be read
    (the report is partial), 3 orphans found with --fail-on-orphans.
    """
    from recover.inventory import scan
    from recover.report import RENDERERS

    result = scan(app.settings)
    for message in result.warnings:
        warn(message)
    click.echo(RENDERERS[fmt](result), nl=False)
    if result.partial:
        # A cell's name comes from cell_mappings: one line, whatever it holds.
        failed = [f"{printable(c.name)}: {c.error}" for c in result.cells if not c.ok]
        raise PartialScanError(
            f"report is partial, not every cell was scanned ({'; '.join(failed)})"
        )
    if fail_on_orphans and result.has_orphans:
        sys.exit(int(ExitCode.ORPHANS_FOUND))


def _confirm_on_terminal() -> Confirm | None:
    """Ask on the terminal, showing the plan and its SQL; None when there is no terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def confirm(plan: Plan) -> bool:
        click.echo(render_sql(plan), err=True)
        click.echo(describe(plan), err=True, nl=False)
        return click.confirm("Apply these changes?", default=False, err=True)

    return confirm


def _report(outcome: Outcome, fmt: str) -> None:
    committed = outcome.status == "applied"
    if committed and not _is_terminal(sys.stdout):
        # The report may go to a pipe that is already closed (`| head`) or to a file on a
        # full disk: the one thing the operator must not lose is how to undo the commit.
        click.echo(f"Committed; journal {outcome.journal}; undo: recover undo {outcome.journal}",
                   err=True)  # fmt: skip
    try:
        if fmt == "json":
            click.echo(json.dumps(outcome.as_dict(), indent=2, sort_keys=True))
        elif outcome.status == "dry-run":
            click.echo(outcome.sql, nl=False)
        else:
            click.echo(f"Done: {outcome.plan.title}")
            for line in (*outcome.plan.notes, *outcome.plan.summary()):
                click.echo(f"  {line}")
            click.echo(f"Journal: {outcome.journal}")
            click.echo(f"Undo:    recover undo {outcome.journal}")
    except BrokenPipeError:
        if not committed:
            raise
        # The work is done and its journal named on stderr: a reader that went away is
        # not a failure of the recovery.
        _silence_stdout()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a real file (CliRunner): nothing will flush to a closed pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _command_line() -> str:
    return scrub(" ".join(shlex.quote(a) for a in ["recover", *sys.argv[1:]]))


WRITE_OPTIONS = [
    click.option("--dry-run", is_flag=True, help="Print the exact SQL; change nothing."),
    click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts)."),
]


report_format = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Report format.",
)


def write_options(func: Any) -> Any:
    for option in reversed(WRITE_OPTIONS):
        func = option(func)
    return func


@cli.command()
@click.argument("flavor")
@click.option(
    "--from-instance",
    metavar="UUID",
    help="Newton+: the instance whose embedded flavor to trust when instances disagree.",
)
@click.option(
    "--new-name",
    metavar="NAME",
    help="Bring it back under its original ids with this name (when a live flavor took its "
    "name: nova's API cannot rename a flavor).",
)
@click.option(
    "--drop-extra-spec",
    "drop_specs",
    metavar="KEY",
    multiple=True,
    help="Newton+: leave this extra spec out (repeatable), e.g. one of two keys that differ "
    "only in case, which nova_api cannot hold together.",
)
@write_options
@report_format
@click.pass_obj
def flavor(
    app: AppContext,
    flavor: str,
    from_instance: str | None,
    new_name: str | None,
    drop_specs: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    fmt: str,
) -> None:
    """Bring a deleted flavor back with its original internal id and flavorid.

    FLAVOR is the flavorid, the name, or the internal id
    (instances.instance_type_id); pin the kind with id:7, flavorid:7 or
    name:m1.small when they clash. Pre-Newton clouds: un-deletes the
    instance_types row and the extra specs and projects deleted with it (or
    moves it back from shadow_instance_types). Newton+: re-inserts it into
    nova_api from the live instances' instance_extra.flavor (and from the old
    flavor of resized instances, which revert-resize gives back).

    Refuses, changing nothing, when the flavor is live, when a live flavor
    has its name (--new-name) or flavorid or took its internal id, when the
    instances' copies disagree (--from-instance), when a cell cannot be read,
    or when no source is left. Every run writes a journal first
    ($RECOVER_STATE_DIR, default ~/.local/state/recover/journal).

    \b
    Examples:
      recover --config /etc/recover.ini flavor m1.legacy --dry-run
      recover --config /etc/recover.ini flavor 7 --yes
      recover --config /etc/recover.ini flavor gold.large --from-instance 1b2c...
      recover --config /etc/recover.ini flavor id:7 --new-name m1.legacy-old --yes
    """
    from recover.flavors import plan_flavor

    if from_instance is not None:
        # Nova writes instance uuids in lower case (uuidutils.generate_uuid); clients copy
        # them in any case.
        from_instance = from_instance.strip().lower()
    recovery = plan_flavor(app.settings, flavor, from_instance, new_name, drop_specs)
    try:
        for message in recovery.warnings:
            warn(message)
        outcome = execute(recovery.plan, dry_run=dry_run, yes=yes, command=_command_line(),
                          confirm=_confirm_on_terminal())  # fmt: skip
    finally:
        recovery.nova.dispose()
    _report(outcome, fmt)


@cli.command()
@click.argument("image_uuid")
@click.option(
    "--from-host",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[HOST]",
    help="Read _base/<sha1(uuid)> from this compute node over ssh; without a value, "
    "try the hosts that run the image. [env: RECOVER_SSH_COMMAND for the ssh command]",
)
@click.option(
    "--instances-path",
    metavar="PATH",
    default=DEFAULT_INSTANCES_PATH,
    show_default=True,
    help="nova's instances_path on the compute node.",
)
@click.option(
    "--base-file",
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="A local copy of the _base file.",
)
@click.option(
    "--disk-format",
    metavar="FMT",
    help="Store the data in this format and update the row (e.g. raw for an iso/ami row).",
)
@click.option(
    "--via-api",
    is_flag=True,
    help="Set the row to queued and upload through the Glance API, so Glance writes any "
    "store backend (file, RBD, Swift) and computes the hashes.",
)
@click.option(
    "--accept-new-bytes",
    is_flag=True,
    help="Store the source's bytes even where they cannot be the original upload (another "
    "virtual size; for a raw image, another size or md5), e.g. a disk rebuilt on purpose. "
    "Without it such a source is refused; with it the report says loudly that the bytes are NEW.",
)
@click.option(
    "--from-instance",
    metavar="UUID",
    help="Properties purged from Glance are rebuilt from the live instances' copies; when "
    "those disagree, take this instance's.",
)
@click.option(
    "--verify/--no-verify",
    default=None,
    help="Download the image through the Glance API afterwards, as Nova does, and fail "
    "loudly if glanceclient's integrity check does not pass. [default: on when the API "
    "is configured]",
)
@write_options
@report_format
@click.pass_obj
def image(
    app: AppContext,
    image_uuid: str,
    from_host: str | None,
    instances_path: str,
    base_file: Path | None,
    disk_format: str | None,
    via_api: bool,
    accept_new_bytes: bool,
    from_instance: str | None,
    verify: bool | None,
    dry_run: bool,
    yes: bool,
    fmt: str,
) -> None:
    """Bring a deleted Glance image back under its own id.

    Sources, in order: the store still has the file (pending_delete): un-delete
    only; --base-file PATH; --from-host HOST: _base/<sha1(uuid)> on that compute
    node over the system ssh (so ~/.ssh/config, agents and jump hosts work). The
    bytes are converted to the row's disk_format (the _base file is raw; a qcow2
    row gets qemu-img convert -f raw -O qcow2, on the compute node when it has
    qemu-img), hashed (md5 and sha512) while they are written, and placed in the
    store atomically. The image row, its location, properties, tags and members
    come back in one transaction, journaled first.

    A source that cannot be this image is refused: its virtual size must equal the
    image's, and a raw image's _base must be its upload byte for byte (size and md5);
    --accept-new-bytes overrides that, and the report then says the bytes are NEW.

    An image whose location was rbd:// (or, with no location, of a Glance whose
    default store is RBD) comes back in Ceph: <pool>/<id>@snap intact -> rows
    only; in the RBD trash -> restored, snap re-created and protected; snap
    missing -> re-created and protected; gone -> rebuilt from the source with
    rbd import. The bytes of <pool>/<id>@snap are read back before COMMIT.

    Properties a glance-manage db purge removed are rebuilt from Nova's copies
    (the live instances' image_* system metadata and request specs; give the Nova
    databases): Nova's own keys are left out, every property's source is in the
    report, and instances that disagree are refused unless --from-instance UUID.

    \b
    Examples:
      recover --config /etc/recover.ini image b3986e99-1988-43bb-b47c-0b34438bc189 \\
              --from-host compute-12 --dry-run
      recover --config /etc/recover.ini image b3986e99-... --from-host --yes
      recover --config /etc/recover.ini image b3986e99-... --base-file ./141ce39... --yes
    """
    from recover.images.recovery import ImageRequest, recover_image

    if base_file is not None and from_host is not None:
        raise click.UsageError("--base-file and --from-host are two sources: pick one")
    request = ImageRequest(image_uuid, base_file=base_file, from_host=from_host,
                           instances_path=instances_path, disk_format=disk_format,
                           via_api=via_api, accept_new_bytes=accept_new_bytes,
                           from_instance=from_instance)  # fmt: skip
    outcome = recover_image(app.settings, request, dry_run=dry_run, yes=yes,
                            command=_command_line(), confirm=_confirm_on_terminal(),
                            verify=verify)  # fmt: skip
    _report(outcome, fmt)
    for message in outcome.extra.get("bytes", {}).get("overridden", []):
        warn(f"NEW BYTES stored (--accept-new-bytes), not the original upload: {message}")


@cli.command()
@click.argument("image_uuid")
@report_format
@click.pass_obj
def verify(app: AppContext, image_uuid: str, fmt: str) -> None:
    """Check that a recovered image's row agrees with its data, and that Glance serves it.

    Status and location as Glance needs them to serve it; size, checksum (md5)
    and the multihash of the store file as glanceclient checks them on every
    download (Nova downloads through it); the data's format against
    disk_format. When the Glance API is configured (--glance-endpoint, or
    OS_AUTH_URL and friends) it also shows the image and downloads it whole
    through glanceclient, integrity check included: exactly what Nova does
    before a boot or rebuild. Exit 1 when any check fails. Read-only.

    \b
    Example:
      recover --config /etc/recover.ini verify b3986e99-1988-43bb-b47c-0b34438bc189
    """
    from recover.images.verify import render, verify_image

    result = verify_image(app.settings, image_uuid)
    if fmt == "json":
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(render(result), nl=False)
    if not result.ok:
        failed = ", ".join(name for name, ok, _ in result.checks if not ok)
        raise RecoverError(f"image {result.image_id} does not verify ({failed})")


@cli.command()
@click.argument("journal_file", metavar="JOURNAL_FILE", type=click.Path(path_type=Path))
@write_options
@report_format
@click.pass_obj
def undo(app: AppContext, journal_file: Path, dry_run: bool, yes: bool, fmt: str) -> None:
    """Reverse what a journal recorded: put the rows back as they were.

    Connects with the current settings to the database the journal names,
    and refuses (changing nothing) if any row changed since the journal was
    written. The undo writes a journal of its own.

    \b
    Examples:
      recover --config /etc/recover.ini undo JOURNAL_FILE --dry-run
      recover --config /etc/recover.ini undo \\
        ~/.local/state/recover/journal/20261124T020000000000Z-flavor-7.json --yes
    """
    plan = plan_undo(app.settings, journal_file)
    store_dir = app.settings.image_dirs()  # filesystem_store_datadirs: any of them
    plan.notes += [  # shown by --dry-run beside the SQL
        f"after COMMIT, reverse RBD step {printable(str(e['rbd']))} on "
        f"{printable(str(e.get('pool')))}/{printable(str(e.get('image')))} if its effect is there"
        for e in reversed(plan.files)
        if "rbd" in e and not e.get("reversed")
    ]
    try:
        if not plan.changes:
            _clean_up_after_interrupted_run(app.settings, plan, journal_file, store_dir, dry_run)
            return
        try:
            outcome = execute(plan, dry_run=dry_run, yes=yes, command=_command_line(),
                              confirm=_confirm_on_terminal())  # fmt: skip
        except (KeyboardInterrupt, signals.Terminated):
            done = signals.committed()
            if (
                done is not None
                and done[1] == plan.title
                and _journal_status(done[0]) == ("committed")
            ):
                # Interrupted after the undo's COMMIT: finish it (the signals are blocked
                # now), so the recovered file goes and the original journal says `undone`.
                remove_created_files(plan, store_dir)
                mark_undone(journal_file, done[0])
            raise
        if outcome.status == "applied":
            removed, problems = remove_created_files(plan, store_dir)
            for problem in problems:
                warn(problem)
            outcome.extra["removed_files"] = removed
            _undo_rbd(app.settings, plan, outcome.extra)
            mark_undone(journal_file, outcome.journal)
    finally:
        plan.db.dispose()
    _report(outcome, fmt)


def _clean_up_after_interrupted_run(
    settings: Settings,
    plan: Plan,
    journal_file: Path,
    store_dir: str | tuple[str, ...],
    dry_run: bool,
) -> None:
    """The journaled run never committed: its rows are untouched; remove a file it placed."""
    click.echo(f"Nothing to undo in the database: {journal_file} never committed.")
    if dry_run:
        for entry in plan.files:
            if "rbd" in entry:
                click.echo(f"Would reverse RBD step {entry['rbd']} on {entry.get('pool')}/"
                           f"{entry.get('image')} if the interrupted run did it.")  # fmt: skip
                continue
            click.echo(f"Would remove {entry.get('path')} if it is still the file that run placed.")
        return
    removed, problems = remove_created_files(plan, store_dir)
    for problem in problems:
        warn(problem)
    for path in removed:
        click.echo(f"Removed {path}, which the interrupted run had placed.")
    extra: dict[str, Any] = {}
    _undo_rbd(settings, plan, extra)
    for what in extra.get("rbd_reversed", []):
        click.echo(f"RBD: {what}, which the interrupted run had done.")
    mark_undone(journal_file, None, status="rolled-back")


def _undo_rbd(settings: Settings, plan: Plan, extra: dict[str, Any]) -> None:
    """Reverse the RBD steps the journal recorded (the trash restore, the import, ``snap``)."""
    if not any("rbd" in entry for entry in plan.files):
        return
    from recover.images.stores.rbd import undo_steps

    done, problems = undo_steps(settings, plan)
    for problem in problems:
        warn(problem)
    extra["rbd_reversed"] = done


@cli.command("rbd-features")
@click.argument("value")
@click.option("--image", metavar="POOL/IMAGE", help="Fill in the rbd command for this image.")
def rbd_features(value: str, image: str | None) -> None:
    """Decode an RBD feature bitmask from a librbd error.

    VALUE is decimal, hex (0x3c) or the log line itself. Prints the feature
    names, the `rbd feature disable` command for an existing image, and the
    rbd_default_features advice for new ones.

    \b
    Examples:
      recover rbd-features 60
      recover rbd-features 0x3c --image volumes/volume-433ad82b-4d8d-4d5c-b1c0-d0c88e0c397b
      recover rbd-features 'librbd: Image uses unsupported features: 60'
    """
    from recover.rbd import decode, parse_value, render

    click.echo(render(decode(parse_value(value)), image), nl=False)


@cli.command()
@click.argument(
    "directory", metavar="[DIR]", default="recover-demo", type=click.Path(path_type=Path)
)
@click.pass_obj
def demo(app: AppContext, directory: Path) -> None:
    """Build a sandbox cloud in DIR and run the whole story on it.

    The sandbox reproduces the incident that started this tool: SQLite
    databases laid out like a Mitaka Nova and Glance, a compute node
    directory whose _base file was made by qemu-img, and a Glance store;
    the instance 211437a1-... uses a deleted flavor and the deleted snapshot
    image b3986e99-.... No database server is needed. DIR/recover.ini lets
    you run any command against the sandbox afterwards.

    \b
    Examples:
      recover demo
      recover demo /tmp/sandbox
      recover --config /tmp/sandbox/recover.ini inventory --format json
    """
    from recover.demo import run_demo

    run_demo(directory, echo=click.echo)


def _journal_status(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("status"))
    except (OSError, ValueError, AttributeError):
        return None


def main() -> None:
    signals.install()
    cli(prog_name="recover")


if __name__ == "__main__":
    main()
