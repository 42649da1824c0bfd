"""One server per data dir: an exclusive lock on ``<data dir>/server.lock`` while it runs.

Two servers on one data dir would share the job queue, and each would take the other's
running jobs for ones a dead process left behind. The lock is taken at start-up (a second
server exits naming the dir and the process holding it) and released when the process
ends, however it ends: the operating system drops the lock with the process.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from api.common.settings import SettingsError

LOCK_FILE = "server.lock"
# Windows locks byte ranges, and a locked range can't be read: lock one byte far past the
# holder's description, which stays readable at the start of the file.
_WINDOWS_LOCK_OFFSET = 1 << 20

# Locks this process holds, by data dir: start-up takes it before the server is built and
# the app's lifespan again, for the same process (a lock is per open file, not per process).
_held: dict[Path, tuple[IO[str], int]] = {}
_guard = threading.Lock()


class DataDirInUse(SettingsError):
    """Another server process holds the data dir."""


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(_WINDOWS_LOCK_OFFSET)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def lock_data_dir(data_dir: Path) -> None:
    """Take the data dir for this process, or raise DataDirInUse naming who has it."""
    data_dir = data_dir.resolve()
    with _guard:
        if data_dir in _held:
            handle, count = _held[data_dir]
            _held[data_dir] = (handle, count + 1)
            return
        path = data_dir / LOCK_FILE
        handle = path.open("a+", encoding="utf-8")
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirInUse(
                f"the data dir {data_dir} is in use by another deferred-diffusion server "
                f"({holder}). Two servers on one data dir would share and break each other's "
                "job queue: stop that server, or give this one its own DD_DATA_DIR."
            )
        handle.seek(0)
        handle.truncate()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        _held[data_dir] = (handle, 1)


def unlock_data_dir(data_dir: Path) -> None:
    """Give back one ``lock_data_dir`` of this process; the last one releases the lock."""
    data_dir = data_dir.resolve()
    with _guard:
        if data_dir not in _held:
            return
        handle, count = _held.pop(data_dir)
        if count > 1:
            _held[data_dir] = (handle, count - 1)
            return
        handle.close()  # closing the file releases the lock
