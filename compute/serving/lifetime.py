"""When a deployment should stop: idle for too long, or alive for too long (pure, table-tested)."""

from __future__ import annotations

import time
from typing import Literal, Protocol

ShutdownReason = Literal["idle", "hard_timeout"]


class WatchedServer(Protocol):
    """What :func:`wait_until_shutdown` needs of a server (ours and the vLLM process both have it)."""

    @property
    def running(self) -> bool: ...

    def shutdown_reason(self) -> ShutdownReason | None: ...


def shutdown_reason(
    *,
    now: float,
    started_at: float,
    last_activity: float,
    busy: bool = False,
    idle_timeout_seconds: float,
    hard_timeout_seconds: float,
) -> ShutdownReason | None:
    """``"hard_timeout"`` once the server has lived ``hard_timeout_seconds``; ``"idle"`` once nobody used it
    for ``idle_timeout_seconds`` (never while a request is ``busy``: a long generation is activity);
    else None. Times are seconds on one clock (e.g. ``time.time()``)."""
    if now - started_at >= hard_timeout_seconds:
        return "hard_timeout"
    if not busy and now - max(last_activity, started_at) >= idle_timeout_seconds:
        return "idle"
    return None


def wait_until_shutdown(server: WatchedServer, poll_seconds: float = 5.0) -> ShutdownReason | str:
    """Block until the server's timeouts say to stop (``"idle"`` / ``"hard_timeout"``) or it stopped on
    its own (``"exited"``). Does not stop the server: the caller does."""
    while True:
        if not server.running:
            return "exited"
        reason = server.shutdown_reason()
        if reason is not None:
            return reason
        time.sleep(poll_seconds)
