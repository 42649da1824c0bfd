"""Client paths → server paths and back: the path map and the allowed roots."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from api.common.errors import Forbidden, InvalidField

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")


def _normalise(path: str) -> str:
    """Forward slashes, no trailing slash (except a bare root)."""
    path = path.strip().replace("\\", "/")
    if len(path) > 1 and path.endswith("/") and not re.fullmatch(r"[A-Za-z]:/", path):
        path = path.rstrip("/")
    return path


def _strip_prefix(path: str, prefix: str) -> str | None:
    """The rest of ``path`` after ``prefix`` (on a folder boundary), or None.

    Windows-style prefixes (``Z:/show``) match case-insensitively, as Windows does.
    """
    fold = bool(_WINDOWS_DRIVE.match(prefix + "/"))
    a, b = (path.lower(), prefix.lower()) if fold else (path, prefix)
    if a == b:
        return ""
    if a.startswith(b.rstrip("/") + "/"):
        return path[len(prefix.rstrip("/")) + 1 :]
    return None


class PathPolicy:
    """Maps client paths (``DD_PATH_MAP``) and keeps every path inside ``DD_ALLOWED_ROOTS``."""

    def __init__(self, roots: list[Path], path_map: dict[str, str]) -> None:
        self.roots = [root.resolve() for root in roots]
        pairs = [(_normalise(c), _normalise(s)) for c, s in path_map.items()]
        self._to_server = sorted(pairs, key=lambda p: len(p[0]), reverse=True)
        self._to_client = sorted(pairs, key=lambda p: len(p[1]), reverse=True)

    def to_server(self, client_path: str) -> str:
        path = _normalise(client_path)
        for client, server in self._to_server:
            rest = _strip_prefix(path, client)
            if rest is not None:
                return str(PurePosixPath(server, rest)) if rest else server
        return client_path

    def to_client(self, server_path: Path | str) -> str:
        path = _normalise(str(server_path))
        for client, server in self._to_client:
            rest = _strip_prefix(path, server)
            if rest is not None:
                return f"{client}/{rest}" if rest else client
        return str(server_path)

    def is_allowed(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def _resolve(self, value: str, field: str) -> Path:
        if not value or not value.strip():
            raise InvalidField(f"{field} is empty", field)
        if "\x00" in value:
            raise InvalidField(f"{field} contains a NUL character", field)
        mapped = self.to_server(value)
        path = Path(mapped).expanduser()
        if not path.is_absolute():
            raise InvalidField(
                f"{field} must be an absolute path (or start with a DD_PATH_MAP prefix): {value!r}",
                field,
            )
        resolved = path.resolve()  # follows links and folds '..'
        if not self.is_allowed(resolved):
            raise Forbidden(
                f"{field} {value!r} is outside the allowed roots (DD_ALLOWED_ROOTS)", field
            )
        return resolved

    def resolve_input_path(self, value: str, field: str) -> Path:
        """An existing file inside the allowed roots, or a 4xx naming ``field``."""
        path = self._resolve(value, field)
        if not path.is_file():
            raise InvalidField(f"{field} {value!r} does not exist or is not a file", field)
        return path

    def resolve_output_path(self, value: str, field: str, suffixes: tuple[str, ...]) -> Path:
        """A writable file path inside the allowed roots with one of ``suffixes``."""
        path = self._resolve(value, field)
        if path.suffix.lower() not in suffixes:
            raise InvalidField(
                f"{field} must end with one of {', '.join(suffixes)}: {value!r}", field
            )
        if path.is_dir():
            raise InvalidField(f"{field} {value!r} is a folder, not a file", field)
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InvalidField(f"{field}: {parent} is not a folder", field)
                break
        return path
