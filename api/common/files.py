"""Writing outputs safely: atomic writes and the timestamped take kept beside each output."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def take_path(path: Path, when: datetime | None = None) -> Path:
    """``<dir>/tmp/<name>_<timestamp><ext>``: the copy that keeps every take of an output."""
    when = when or datetime.now(UTC)
    stamp = when.strftime("%Y%m%d_%H%M%S_%f")
    return path.parent / "tmp" / f"{path.stem}_{stamp}{path.suffix}"


def write_output(path: Path, data: bytes, keep_take: bool = True) -> Path | None:
    """Write an output and, when ``keep_take``, its timestamped take; returns the take's path.

    The take is a hard link to the output's file where the filesystem allows (no second
    copy; a later output replaces the path with a new file, so the take keeps its bytes).
    """
    atomic_write(path, data)
    if not keep_take:
        return None
    take = take_path(path)
    take.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, take)
    except OSError:  # no hard links here (another filesystem, some network shares)
        atomic_write(take, data)
    return take
