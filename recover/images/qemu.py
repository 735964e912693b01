"""The one wrapper around ``qemu-img``.

Argument lists only (never a shell string), ``LC_ALL=C`` so messages are
parseable, the source format always explicit, ``info --force-share`` so a file
in use by a running guest can be read, a timeout, and stderr mapped to one
domain error (nova 34 ``nova/privsep/qemu.py``, ``nova/virt/images.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recover.errors import RecoverError

QEMU_IMG = "qemu-img"
INFO_TIMEOUT_S = 60
CONVERT_TIMEOUT_S = 6 * 3600


class QemuImgError(RecoverError):
    """qemu-img is missing, failed, or said the image is unusable."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    corrupt: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        specific = (data.get("format-specific") or {}).get("data") or {}
        return cls(
            format=str(data.get("format")),
            virtual_size=int(data.get("virtual-size") or 0),
            actual_size=data.get("actual-size"),
            backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
            corrupt=bool(specific.get("corrupt", False)),
        )


def _binary() -> str:
    path = shutil.which(QEMU_IMG)
    if path is None:
        raise QemuImgError(
            "qemu-img is not installed", hint="install it: apt-get install qemu-utils"
        )
    return path


def run(args: list[str], timeout: float) -> str:
    env = {**os.environ, "LC_ALL": "C"}
    try:
        done = subprocess.run(
            [_binary(), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise QemuImgError(f"qemu-img {args[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        raise QemuImgError(f"qemu-img {args[0]} failed: {detail}")
    return done.stdout


def info(path: Path | str, fmt: str | None = None) -> ImageInfo:
    args = ["info", "--output=json", "--force-share"]
    if fmt:
        args += ["-f", fmt]
    output = run([*args, "--", str(path)], INFO_TIMEOUT_S)
    try:
        return ImageInfo.from_json(json.loads(output))
    except (ValueError, TypeError) as exc:
        raise QemuImgError(f"qemu-img info printed something unexpected: {exc}") from None


def convert(source: Path | str, source_fmt: str, dest: Path | str, dest_fmt: str) -> None:
    run(
        ["convert", "-f", source_fmt, "-O", dest_fmt, "--", str(source), str(dest)],
        CONVERT_TIMEOUT_S,
    )


def create_overlay(path: Path | str, backing: Path | str, backing_fmt: str) -> None:
    """A qcow2 disk backed by ``backing``, as nova creates instance disks."""
    run(
        ["create", "-f", "qcow2", "-F", backing_fmt, "-b", str(backing), "--", str(path)],
        INFO_TIMEOUT_S,
    )
