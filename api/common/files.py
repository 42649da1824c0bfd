"""Writing and serving files safely inside the allowed roots.

Every file the server writes (an output, its take, the temp file of an atomic write, an
upload) goes through ``WriteFolder``: the folder is resolved (links followed) and must lie
inside the given roots; then, where the OS can work relative to an open folder, it is
opened from that root down one folder at a time without following any link (missing
folders are created on the way), and each file is created (``O_EXCL``, ``O_NOFOLLOW``),
linked and renamed relative to that open folder. A link swapped in after the check is
refused or replaced, never written through. Elsewhere (Windows) the folder is resolved and
checked again right before each step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from api.common.errors import Forbidden, InvalidField

TAKE_FOLDER = "tmp"  # beside each output: <dir>/tmp/<name>_<timestamp><ext>

# Opening, creating, linking and renaming relative to an open folder (POSIX).
DIR_FD_WRITES = (
    {os.open, os.mkdir, os.link, os.rename, os.unlink, os.stat} <= os.supports_dir_fd
    and hasattr(os, "O_DIRECTORY")
    and hasattr(os, "O_NOFOLLOW")
)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_LINK_NOFOLLOW = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}
_PROC_FDS = os.path.isdir("/proc/self/fd")  # Linux: an open file's real path, and a way back
_CHUNK = 2**20


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (already resolved) is one of ``roots`` or lies under one."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def describe_roots(roots: Sequence[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "none"


def take_path(path: Path, when: datetime | None = None) -> Path:
    """``<dir>/tmp/<name>_<timestamp><ext>``: the copy that keeps every take of an output."""
    when = when or datetime.now(UTC)
    stamp = when.strftime("%Y%m%d_%H%M%S_%f")
    return path.parent / TAKE_FOLDER / f"{path.stem}_{stamp}{path.suffix}"


class WriteFolder:
    """A folder inside ``roots``, opened for writing files in it by name (see the module's
    docstring). A refusal raises ``Forbidden`` (outside the roots, a link swapped in) or
    ``InvalidField`` (not a folder, can't be created) naming ``field``; ``what`` says which
    folder it is in those messages (e.g. "the take folder")."""

    def __init__(self, folder: Path, roots: Sequence[Path], field: str, what: str) -> None:
        self.field = field
        self.what = what
        self.fd: int | None = None
        try:
            self.path = Path(os.path.realpath(folder))
        except (OSError, ValueError) as exc:
            raise InvalidField(f"{field}: {what} {folder} can't be used: {exc}", field) from None
        root = next((r for r in roots if is_inside(self.path, [r])), None)
        if root is None:
            shown = f"{folder}, which resolves to {self.path}," if self.path != folder else folder
            raise Forbidden(
                f"{field}: {what} {shown} is outside the allowed roots "
                f"({describe_roots(roots)}); nothing was written",
                field,
            )
        try:
            if DIR_FD_WRITES:
                self.fd = self._open_down(root)
            else:
                self._make_folders(root)
        except OSError as exc:
            raise InvalidField(
                f"{field}: {what} {self.path} can't be written: {exc.strerror or exc}", field
            ) from None

    def __enter__(self) -> WriteFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open_down(self, root: Path) -> int:
        """The folder's fd, opened from ``root`` down without following links."""
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _BINARY)
        try:
            for part in self.path.relative_to(root).parts:
                try:
                    child = self._open_child(fd, part)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    child = self._open_child(fd, part)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_child(self, fd: int, part: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _BINARY
        try:
            return os.open(part, flags, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and stat.S_ISLNK(
                os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            ):
                raise Forbidden(
                    f"{self.field}: {self.what} {self.path} changed after it was checked "
                    f"('{part}' is now a link); nothing was written",
                    self.field,
                ) from None
            raise

    def _make_folders(self, root: Path) -> None:
        """Without dir fds: create the missing folders one at a time, none of them a link."""
        current = root
        for part in self.path.relative_to(root).parts:
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            self._check_unchanged()
            if not current.is_dir():
                raise OSError(errno.ENOTDIR, "not a folder", str(current))

    def _check_unchanged(self) -> None:
        """Without dir fds: the folder still resolves to itself (no link swapped in)."""
        if self.fd is None and Path(os.path.realpath(self.path)) != self.path:
            raise Forbidden(
                f"{self.field}: {self.what} {self.path} changed after it was checked (a link "
                "was swapped in); nothing was written",
                self.field,
            )

    def _name(self, name: str) -> str | Path:
        """How ``os`` functions name ``name`` in this folder (with ``dir_fd=self.fd``)."""
        return name if self.fd is not None else self.path / name

    def create(self, name: str) -> BinaryIO:
        """A new file ``name`` (never an existing file, never through a link), for writing."""
        self._check_unchanged()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY
        fd = os.open(self._name(name), flags, 0o644, dir_fd=self.fd)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # readable by the artist's other tools, whatever the umask
        return os.fdopen(fd, "wb")

    def write_temp(self, name: str, data: bytes | BinaryIO, limit: int | None = None) -> str:
        """Write ``data`` (bytes or a file to copy) into a new hidden temp file for ``name``;
        returns the temp file's name. Over ``limit`` bytes: ``OverflowError``, nothing kept."""
        stem, suffix = os.path.splitext(name)
        temp = f".{stem[:80]}.{secrets.token_hex(6)}.part{suffix}"
        try:
            with self.create(temp) as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    copied = 0
                    while chunk := data.read(_CHUNK):
                        copied += len(chunk)
                        if limit is not None and copied > limit:
                            raise OverflowError(f"over {limit} bytes")
                        handle.write(chunk)
        except BaseException:
            self.remove(temp)
            raise
        return temp

    def rename(self, source: str, name: str) -> None:
        """Move ``source`` to ``name`` in this folder, replacing what is there (a link at
        ``name`` is replaced, not followed)."""
        self._check_unchanged()
        os.rename(self._name(source), self._name(name), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def link(self, source: str, folder: WriteFolder, name: str) -> None:
        """A hard link ``folder/name`` to this folder's ``source`` (OSError where the
        filesystem has none)."""
        self._check_unchanged()
        folder._check_unchanged()
        os.link(
            self._name(source),
            folder._name(name),
            src_dir_fd=self.fd,
            dst_dir_fd=folder.fd,
            **_LINK_NOFOLLOW,
        )

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._name(name), dir_fd=self.fd)

    def write(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically: a reader sees the old file or the whole new one."""
        temp = self.write_temp(name, data)
        try:
            self.rename(temp, name)
        except BaseException:
            self.remove(temp)
            raise


def write_output(
    path: Path, data: bytes, roots: Sequence[Path], field: str, keep_take: bool = True
) -> Path | None:
    """Write an output atomically and, when ``keep_take``, its timestamped take (in
    ``<dir>/tmp/``); returns the take's path. Both folders are checked before anything is
    written: a take folder leading outside ``roots`` fails the write with nothing written.

    The take is a hard link to the output's file where the filesystem allows (no second
    copy; a later output replaces the path with a new file, so the take keeps its bytes).
    """
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(WriteFolder(path.parent, roots, field, "the output's folder"))
        takes = None
        if keep_take:
            takes = stack.enter_context(
                WriteFolder(folder.path / TAKE_FOLDER, roots, field, "the take folder")
            )
        temp = folder.write_temp(path.name, data)
        try:
            take = None
            if takes is not None:
                take = takes.path / take_path(path).name
                try:
                    folder.link(temp, takes, take.name)
                except OSError:  # no hard links here (another filesystem, some network shares)
                    takes.write(take.name, data)
            folder.rename(temp, path.name)
        except BaseException:
            folder.remove(temp)
            raise
        return take


def open_regular_file(path: Path, roots: Sequence[Path]) -> int | None:
    """``path`` opened for reading, if it is a regular file (not a link: its last component
    is opened without following one) whose real location lies inside ``roots``; else None.
    The caller closes the fd."""
    if not _NOFOLLOW and os.path.islink(path):
        return None
    flags = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _BINARY  # a FIFO can't block
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError):
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode) and is_inside(_real_location(fd, path), roots):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _real_location(fd: int, path: Path) -> Path:
    """Where the open file ``fd`` (opened as ``path``) really is."""
    if _PROC_FDS:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    real = Path(os.path.realpath(path))
    if not os.path.samestat(os.stat(real), os.fstat(fd)):
        raise OSError(errno.ENOENT, "the file changed while it was opened", str(path))
    return real


def served_path(fd: int, path: Path) -> str:
    """A path that reads the very file ``fd`` is open on (``/proc/self/fd/N`` on Linux),
    for a response that opens its file by path; elsewhere the file's real path."""
    return f"/proc/self/fd/{fd}" if _PROC_FDS else os.path.realpath(path)
