"""Shared pieces of the benchmarks: running a command under measurement, medians, the machine."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TIME = "/usr/bin/time"
"""GNU time (Debian package ``time``), for the peak RSS of a command."""


@dataclass
class Run:
    """One measured run: wall-clock seconds, peak RSS of the tree's largest process (KiB)."""

    seconds: float
    rss_kb: int


@dataclass
class Series:
    """Several runs of one measurement, side by side with the others of its table."""

    name: str
    command: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rss_mb(self) -> float:
        return statistics.median(r.rss_kb for r in self.runs) / 1024

    @property
    def peak_rss_mb(self) -> float:
        return max(r.rss_kb for r in self.runs) / 1024


class CommandFailed(RuntimeError):
    pass


def measure(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
    stdin: Path | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run ``argv`` to completion; wall time, and peak RSS (KiB) as GNU time reports it.

    The command runs under ``/usr/bin/time -f %M``: its ``wait4`` rusage covers the
    process and every descendant it waited for, so ``ru_maxrss`` is the largest
    resident set of the tree (qemu-img, ssh, md5sum ... included). Not ``wait4``
    from here: a child forked from this (large) Python process starts with our
    resident set, and Linux carries it into ``ru_maxrss`` across ``exec``.
    stdout goes to ``stdout`` (or nowhere), stderr is kept for the error message.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
        inp = stdin.open("rb") if stdin is not None else subprocess.DEVNULL
        try:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [TIME, "-f", "%M", "-o", rss.name, *argv],
                stdin=inp,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
            )
            proc.wait()
            seconds = time.perf_counter() - started
        finally:
            for handle in (out, inp):
                if not isinstance(handle, int):
                    handle.close()
        if proc.returncode != 0:
            err.seek(0)
            raise CommandFailed(
                f"{shlex.join(argv)} exited {proc.returncode}:\n"
                + err.read().decode(errors="replace")[-3000:]
            )
        peak = int(rss.read().split()[-1])
    return Run(seconds, peak)


def run(argv: Sequence[str], **kwargs: object) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise CommandFailed(f"{shlex.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return str(done.stdout)


def rounds(
    runs: int, variants: Sequence[tuple[Series, Callable[[], Run]]], before: Callable[[], None]
) -> None:
    """``runs`` rounds; each runs every variant once, in an order rotated per round.

    Side by side: a disturbance (another user's job) hits all variants of a round
    alike instead of all runs of one. ``before`` runs, untimed, before each command.
    """
    for n in range(runs):
        order = list(variants[n % len(variants) :]) + list(variants[: n % len(variants)])
        for series, fn in order:
            before()
            series.runs.append(fn())
        print(f"    round {n + 1}/{runs} done, load {load()}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class CpuMeter:
    """CPU time the whole machine spent busy, to tell how loaded it was during a section."""

    def __init__(self) -> None:
        self.start = self._read()
        self.started = time.monotonic()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def busy_cores(self) -> float:
        """Average number of busy cores since the meter started (all processes)."""
        busy, total = self._read()
        d_busy, d_total = busy - self.start[0], total - self.start[1]
        cores = os.cpu_count() or 1
        return cores * d_busy / d_total if d_total > 0 else 0.0


def first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine(workdir: Path) -> dict[str, str]:
    """What the figures were measured on."""
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    usage = shutil.disk_usage(workdir)
    fs = run(["df", "--output=source,fstype", str(workdir)]).splitlines()[-1]
    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).strip()
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "disk": f"{' '.join(fs.split())}, {usage.free / 1e9:.0f} GB free"
        f" of {usage.total / 1e9:.0f} GB",
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "mariadb": first_line(
            [shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "mariadbd", "--version"]
        ),
        "qemu-img": first_line(["qemu-img", "--version"]),
        "python": first_line([PYTHON, "--version"]),
        "openssh": first_line(["ssh", "-V"]),
        "coreutils": first_line(["md5sum", "--version"]),
        "recover": f"{rev}{' + uncommitted changes' if dirty else ''}",
    }


def fmt_s(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"
