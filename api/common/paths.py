"""Client paths → server paths and back: the path map and the allowed roots."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from api.common.errors import Forbidden, InvalidField
from api.common.files import TAKE_FOLDER, describe_roots, is_inside

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")
_WINDOWS_FORM = re.compile(r"^([A-Za-z]:|//)")  # after _normalise: a drive or a UNC share
_URL_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)  # '.', '/', '\', NUL
NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, NTFS...)
PATH_MAX = 4096  # bytes in a whole path (Linux)
# An output's name leaves room for the take's "_<timestamp>" (and an extra picture's
# "_mask_<i>") within NAME_MAX.
OUTPUT_NAME_MAX = 200


def _normalise(path: str) -> str:
    """Forward slashes, no trailing slash (except a bare root)."""
    path = path.strip().replace("\\", "/")
    if len(path) > 1 and path.endswith("/") and not re.fullmatch(r"[A-Za-z]:/", path):
        path = path.rstrip("/")
    return path


def _strip_prefix(path: str, prefix: str) -> str | None:
    """The rest of ``path`` after ``prefix`` (on a folder boundary), or None.

    Windows-style prefixes (``Z:/show``, ``//server/share``) match case-insensitively, as
    Windows does.
    """
    fold = bool(_WINDOWS_DRIVE.match(prefix + "/")) or prefix.startswith("//")
    a, b = (path.lower(), prefix.lower()) if fold else (path, prefix)
    if a == b:
        return ""
    if a.startswith(b.rstrip("/") + "/"):
        return path[len(prefix.rstrip("/")) + 1 :]
    return None


def _shown(value: str, limit: int = 160) -> str:
    """A client's path for a message: quoted, backslashes as typed, cut when very long."""
    return f"'{value}'" if len(value) <= limit else f"'{value[:limit]}...' ({len(value)} chars)"


def _example_mapping(path: str) -> str:
    """A DD_PATH_MAP that would map the Windows path ``path`` (normalised), as an example."""
    parts = [part for part in path.split("/") if part]
    if path.startswith("//"):  # //server/share/...
        prefix, name = "//" + "/".join(parts[:2]), parts[1] if len(parts) > 1 else "share"
    else:  # Z:/show/...
        prefix = "/".join(parts[:2]) if len(parts) > 1 else parts[0]
        name = parts[1] if len(parts) > 1 else "show"
    return f'DD_PATH_MAP=\'{{"{prefix}": "/mnt/{name.lower()}"}}\''


class PathPolicy:
    """Maps client paths (``DD_PATH_MAP``) and keeps every path inside ``DD_ALLOWED_ROOTS``.

    The server's own upload folder is always allowed as an input (what ``POST /api/files``
    and data URLs save), but not as an output unless the allowed roots include it.
    """

    def __init__(
        self, roots: Sequence[Path], path_map: dict[str, str], uploads: Path | None = None
    ) -> None:
        self.roots = [root.resolve() for root in roots]
        self.input_roots = list(self.roots)
        if uploads is not None and not is_inside(uploads.resolve(), self.roots):
            self.input_roots.append(uploads.resolve())
        pairs = [(_normalise(c), _normalise(s)) for c, s in path_map.items()]
        self._to_server = sorted(pairs, key=lambda p: len(p[0]), reverse=True)
        self._to_client = sorted(pairs, key=lambda p: len(p[1]), reverse=True)

    def _map(self, client_path: str) -> str | None:
        path = _normalise(client_path)
        for client, server in self._to_server:
            rest = _strip_prefix(path, client)
            if rest is not None:
                return str(PurePosixPath(server, rest)) if rest else server
        return None

    def to_server(self, client_path: str) -> str:
        mapped = self._map(client_path)
        return client_path if mapped is None else mapped

    def to_client(self, server_path: Path | str) -> str:
        path = _normalise(str(server_path))
        for client, server in self._to_client:
            rest = _strip_prefix(path, server)
            if rest is not None:
                return f"{client}/{rest}" if rest else client
        return str(server_path)

    def is_allowed(self, path: Path) -> bool:
        return is_inside(path, self.roots)

    def _resolve(self, value: str, field: str, roots: list[Path]) -> Path:
        """``value`` mapped, made absolute and resolved (links, ``..``), inside ``roots``."""
        if not value or not value.strip():
            raise InvalidField(f"{field} is empty", field)
        if "\x00" in value:
            raise InvalidField(f"{field} contains a NUL character", field)
        if encoded := _URL_ENCODED.search(value):
            raise InvalidField(
                f"{field} {_shown(value)} contains URL-encoding ({encoded.group()}): send the "
                "path itself, not URL-encoded",
                field,
            )
        mapped = self._map(value)
        if mapped is None and os.name != "nt" and self._windows_form(value):
            normalised = _normalise(value)
            raise InvalidField(
                f"{field} {_shown(value)} is a Windows path and no DD_PATH_MAP entry maps it to "
                f"a path on this server; map its drive or share in the server's settings, e.g. "
                f"{_example_mapping(normalised)}",
                field,
            )
        try:
            path = Path(mapped or value).expanduser()
        except RuntimeError as exc:  # ~user of a user who doesn't exist
            raise InvalidField(f"{field} {_shown(value)}: {exc}", field) from None
        if not path.is_absolute():
            raise InvalidField(
                f"{field} must be an absolute path (or start with a DD_PATH_MAP prefix): "
                f"{_shown(value)}",
                field,
            )
        self._check_length(path, value, field)
        try:
            resolved = path.resolve()  # follows links and folds '..'
        except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a link loop
            raise InvalidField(f"{field} {_shown(value)} can't be used: {exc}", field) from None
        if not is_inside(resolved, roots):
            raise Forbidden(
                f"{field} {_shown(value)} is {resolved} on the server, outside the allowed roots "
                f"({describe_roots(roots)}; DD_ALLOWED_ROOTS)",
                field,
            )
        return resolved

    @staticmethod
    def _windows_form(value: str) -> bool:
        """A drive (``Z:\\x``, ``Z:/x``), a UNC share (``\\\\server\\share``) or backslashes:
        a Windows path, meaningless on this (POSIX) server without a mapping."""
        return "\\" in value or bool(_WINDOWS_FORM.match(_normalise(value)))

    @staticmethod
    def _check_length(path: Path, value: str, field: str) -> None:
        longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
        if longest > NAME_MAX:
            raise InvalidField(
                f"{field} {_shown(value)} has a name of {longest} bytes; names can have at "
                f"most {NAME_MAX}",
                field,
            )
        if len(os.fsencode(str(path))) >= PATH_MAX:
            raise InvalidField(
                f"{field} is {len(os.fsencode(str(path)))} bytes long; paths can have at most "
                f"{PATH_MAX - 1}",
                field,
            )

    def resolve_input_path(self, value: str, field: str) -> Path:
        """An existing file inside the allowed roots (or the upload folder), or a 4xx naming
        ``field``."""
        path = self._resolve(value, field, self.input_roots)
        try:
            is_file = path.is_file()
        except OSError as exc:
            raise InvalidField(f"{field} {_shown(value)} can't be used: {exc}", field) from None
        if not is_file:
            raise InvalidField(f"{field} {_shown(value)} does not exist or is not a file", field)
        return path

    def resolve_output_path(
        self, value: str, field: str, suffixes: tuple[str, ...], keep_take: bool = True
    ) -> Path:
        """A writable file path inside the allowed roots with one of ``suffixes``; with
        ``keep_take``, its take folder (``<dir>/tmp``), where it exists, must resolve inside
        them too."""
        path = self._resolve(value, field, self.roots)
        if path.suffix.lower() not in suffixes:
            raise InvalidField(
                f"{field} must end with one of {', '.join(suffixes)}: {_shown(value)}", field
            )
        if len(os.fsencode(path.name)) > OUTPUT_NAME_MAX:
            raise InvalidField(
                f"{field}: the file name is {len(os.fsencode(path.name))} bytes; an output's "
                f"can have at most {OUTPUT_NAME_MAX} (its take adds a timestamp)",
                field,
            )
        try:
            self._check_output_folders(path, value, field, keep_take)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop
            raise InvalidField(f"{field} {_shown(value)} can't be used: {exc}", field) from None
        return path

    def _check_output_folders(self, path: Path, value: str, field: str, keep_take: bool) -> None:
        if path.is_dir():
            raise InvalidField(f"{field} {_shown(value)} is a folder, not a file", field)
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InvalidField(f"{field}: {parent} is not a folder", field)
                break
        takes = path.parent / TAKE_FOLDER
        if keep_take and os.path.lexists(takes):
            resolved = takes.resolve()
            if not is_inside(resolved, self.roots):
                raise Forbidden(
                    f"{field} {_shown(value)}: its take folder {takes} leads to {resolved}, "
                    f"which leaves the allowed roots ({describe_roots(self.roots)}; "
                    "DD_ALLOWED_ROOTS)",
                    field,
                )
            if resolved.exists() and not resolved.is_dir():
                raise InvalidField(f"{field}: its take folder {takes} is not a folder", field)
