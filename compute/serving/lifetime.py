"""When a deployment should stop: idle for too long, or alive for too long (pure, table-tested)."""

from __future__ import annotations

from typing import Literal

ShutdownReason = Literal["idle", "hard_timeout"]


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
