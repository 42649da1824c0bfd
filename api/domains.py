"""The domains this server serves: adding one is its package plus one line here.

``DOMAINS`` is what create_app, the job engine, /api/models, the files route and
``python -m api tiny-models`` loop over; ``Settings`` is the server's settings with each
domain's own mixed in (one object, read from the environment and validated at start-up).
"""

from __future__ import annotations

from api.agentic.domain import AGENTIC
from api.common.domain import Domain
from api.common.settings import ServerSettings
from api.images.domain import IMAGES
from api.texts.domain import TEXTS
from api.videos.domain import VIDEOS

DOMAINS: tuple[Domain, ...] = (IMAGES, VIDEOS, TEXTS, AGENTIC)


class Settings(ServerSettings, *(d.settings for d in DOMAINS if d.settings)):  # type: ignore[misc]
    """Everything the server reads from its environment: its own settings and each domain's."""
