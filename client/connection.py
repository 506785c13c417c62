"""Which Prefect server ``ow`` talks to, checked before a command needs one.

``ow`` reads the API URL as every Prefect client does: ``PREFECT_API_URL``, else the active
Prefect profile (``make demo`` and ``scripts/services.py start`` make ``ow-local`` active, so a new
terminal reaches the embedded default). It never starts a temporary server, which Prefect's own
default profile allows: a temporary server has an empty database, so the user's jobs, files and
deployments would seem gone. With no URL, or nothing answering at it, ``ow`` says so in one line.
"""

from __future__ import annotations

import os
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

START_HINT = "start the embedded default with `make demo` or `python scripts/services.py start`, or set PREFECT_API_URL"
# Long enough for a busy local server, short enough that a missing one is reported at once.
HEALTH_TIMEOUT_SECONDS = 3.0


class NoServerError(Exception):
    """No Prefect server to talk to; the message is the one line to show."""


def configured_api_url() -> str | None:
    """The API URL Prefect's settings resolve to (environment, active profile, prefect.toml), or None."""
    # Before Prefect is first imported: its SDK telemetry reads DO_NOT_TRACK at import.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def server_answers(api_url: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> bool:
    """True when an HTTP server answers at ``api_url``'s health route (an authentication error is an answer)."""
    try:
        with urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout):  # noqa: S310 - the user's own API URL
            return True
    except HTTPError:
        return True
    except (URLError, OSError, ValueError):
        return False


def require_server() -> str:
    """The configured API URL once a server answers there; else :class:`NoServerError`."""
    url = configured_api_url()
    if not url:
        raise NoServerError(f"no Prefect server configured: PREFECT_API_URL is not set ({START_HINT})")
    if not server_answers(url):
        raise NoServerError(f"no Prefect server at {url} ({START_HINT})")
    return url
