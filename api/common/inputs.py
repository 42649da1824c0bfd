"""Input images of a request, checked at submit: a path on shared storage (inside the
allowed roots, readable, within DD_MAX_INPUT_PIXELS), an upload's path, or a data URL,
which is saved into the upload folder only once the whole request has passed its checks."""

from __future__ import annotations

import uuid
from pathlib import Path

from PIL import Image

from api.common.files import WriteFolder
from api.common.media import (
    check_image_bytes,
    check_image_file,
    decode_data_url,
    decode_image_bytes,
    open_image,
)
from api.common.services import Services


class InputImages:
    """Checks input image references at submit. A data URL becomes an uploaded file (named
    by its decoded format), but only once every check has passed (``save``): a rejected
    request writes nothing."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._pending: dict[str, tuple[str, bytes]] = {}  # path → (field, bytes)
        self.sizes: dict[str, tuple[int, int]] = {}  # checked reference → its header's size

    def check(self, value: str | None, field: str) -> str | None:
        """The reference as it will be stored in the job (a path), or a 4xx naming ``field``."""
        if value is None:
            return None
        if value.startswith("data:"):
            data, suffix = decode_data_url(value, field)
            size = check_image_bytes(data, field)
            path = self.services.uploads_dir / f"{uuid.uuid4().hex}{suffix}"
            self._pending[str(path)] = (field, data)
            self.sizes[str(path)] = size
            return str(path)
        self.sizes[value] = check_image_file(
            self.services.paths.resolve_input_path(value, field), field
        )
        return value

    def open(self, checked: str, field: str) -> Image.Image:
        """A checked reference, decoded."""
        if checked in self._pending:
            return decode_image_bytes(self._pending[checked][1], field)
        return open_image(self.services.paths.resolve_input_path(checked, field), field)

    def save(self) -> None:
        """Write the data URLs' images into the upload folder (inside the data dir)."""
        for path, (where, data) in self._pending.items():
            with WriteFolder(
                self.services.uploads_dir, [self.services.data_dir], where, "the upload folder"
            ) as folder:
                folder.write(Path(path).name, data)
        self._pending.clear()
