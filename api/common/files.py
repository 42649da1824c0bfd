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
            handle.flush()
            os.fsync(handle.fileno())
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
    """Write an output and, when ``keep_take``, its timestamped take; returns the take's path."""
    take = take_path(path) if keep_take else None
    if take is not None:
        atomic_write(take, data)
    atomic_write(path, data)
    return take
