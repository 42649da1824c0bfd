"""Signed links to job outputs: ``/api/files/...?expires=<unix time>&sig=<hex HMAC-SHA256>``.

A browser, Nuke's Read node or ``curl`` can open such a link without the API key until it
expires. Links are signed when a job is answered (never stored), so fetching the job again
gives a fresh one. The secret is made once and kept in the data dir (``url-secret``, mode
0600), so links outlive a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from api.common.errors import Unauthorized
from api.common.settings import SettingsError

log = logging.getLogger("api")

FILES_PREFIX = "/api/files/"  # the download route (see api.common.router.get_file)
SECRET_FILE = "url-secret"
FRESH_LINK = "get a fresh link from the job (GET /api/jobs/<id>) or send the API key"


def load_secret(data_dir: Path, name: str = SECRET_FILE) -> bytes:
    """A secret of the data dir (the link-signing one unless ``name`` says another), made
    (readable by this user only) on first use."""
    path = data_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s was readable by other users: made private (mode 0600)", path)
        path.chmod(0o600)
    secret = path.read_text(errors="replace").strip()
    if len(secret) < 32:
        raise SettingsError(f"{path} holds no usable signing secret: delete it and restart")
    return secret.encode()


class LinkSigner:
    """Signs the download links in job results and checks the signature of a request."""

    def __init__(self, secret: bytes, expiry_seconds: int) -> None:
        self._secret = secret
        self.expiry_seconds = expiry_seconds

    def _signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None) -> str:
        """``path`` (a plain, unencoded ``/api/files/...`` path) as a signed, encoded link."""
        expires = int(now if now is not None else time.time()) + self.expiry_seconds
        return f"{quote(path)}?expires={expires}&sig={self._signature(path, expires)}"

    def sign_links(self, value: Any) -> Any:
        """``value`` (a job result) with every download link in it signed."""
        if isinstance(value, dict):
            return {key: self.sign_links(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.sign_links(item) for item in value]
        if isinstance(value, str) and value.startswith(FILES_PREFIX) and "?" not in value:
            return self.sign(value)
        return value

    def check(self, path: str, expires: str | None, sig: str | None) -> None:
        """Refuse (401) a request for ``path`` whose link is unsigned, altered or expired."""
        if not expires or not sig:
            missing = "expires" if not expires else "sig"
            raise Unauthorized(f"signed link without '{missing}': {FRESH_LINK}", missing)
        if not (expires.isascii() and expires.isdigit()) or len(expires) > 20:
            raise Unauthorized(f"expires must be a unix time: {FRESH_LINK}", "expires")
        expected = self._signature(path, int(expires)).encode()
        if not hmac.compare_digest(sig.lower().encode(errors="replace"), expected):
            raise Unauthorized(
                f"this link's signature does not match (the link was altered, or signed by "
                f"another server): {FRESH_LINK}",
                "sig",
            )
        if int(expires) < time.time():
            when = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise Unauthorized(f"this link expired at {when}: {FRESH_LINK}", "expires")
