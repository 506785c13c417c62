"""Waiting for RunPod capacity instead of crashing: the decisions, pure and tested with tables.

RunPod's stock comes and goes by the minute. A run that finds nothing it may use in stock is put
back as ``Scheduled`` (state name :data:`AWAITING_CAPACITY`, with a message naming what it waits for)
and picked up again later by any worker of the pool, with backoff, until the pool's
``capacity_wait_minutes`` have passed since its first wait. No process is held while it waits, and a
worker restart loses nothing: when the wait began is read back from the run's state history.

Two memories are kept per worker, in :class:`LaunchGate`:

* a per-(GPU type, cloud) **cooldown ladder**: a type whose creates failed for capacity again and
  again is left alone for a while (1, 2, 4 … up to 16 minutes), so the worker does not hammer a type
  the catalog keeps calling available;
* a **billing pause**: when RunPod refuses a create for the account's balance or spending limit
  (HTTP 402), no run of the pool tries to launch for a few minutes; they all wait with that message.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

AWAITING_CAPACITY = "AwaitingCapacity"
# After this many capacity failures in a row, a (GPU type, cloud) starts cooling down.
COOLDOWN_AFTER_FAILURES = 2
COOLDOWN_BASE_S = 60.0
COOLDOWN_MAX_S = 16 * 60.0
BILLING_PAUSE_S = 5 * 60.0
# The wait between two capacity checks of one run grows from the pool's capacity_retry_seconds up to
# this many times that.
MAX_RETRY_GROWTH = 8


def _current_waits(states: Iterable[tuple[str | None, dt.datetime | None]]) -> list[dt.datetime]:
    """Times of the :data:`AWAITING_CAPACITY` states since the run last ran: a run that waited,
    ran, and came back (a retry from the UI, a resumed run) starts a new wait."""
    history = [(name, when) for name, when in states if when is not None]
    last_ran = max((when for name, when in history if name == "Running"), default=None)
    return [
        when for name, when in history if name == AWAITING_CAPACITY and (last_ran is None or when > last_ran)
    ]


def capacity_wait_started(states: Iterable[tuple[str | None, dt.datetime | None]]) -> dt.datetime | None:
    """When the run's current wait for capacity began, from ``(state name, timestamp)`` pairs of its
    history; None if it is not waiting yet."""
    times = _current_waits(states)
    return min(times) if times else None


def capacity_waits_so_far(states: Iterable[tuple[str | None, dt.datetime | None]]) -> int:
    return len(_current_waits(states))


@dataclass(frozen=True)
class WaitDecision:
    retry_at: dt.datetime | None  # None: the wait is exhausted, end the run
    waited_s: float


def decide_capacity_wait(
    *,
    now: dt.datetime,
    wait_started: dt.datetime | None,
    waits_so_far: int,
    wait_limit_s: float,
    retry_base_s: float,
) -> WaitDecision:
    """Wait again (and until when), or give up. The delay doubles per wait, capped, and never runs
    past the limit; a limit of 0 means do not wait at all."""
    started = wait_started or now
    waited = max(0.0, (now - started).total_seconds())
    left = wait_limit_s - waited
    if left <= 0:
        return WaitDecision(retry_at=None, waited_s=waited)
    delay = min(retry_base_s * (2 ** min(waits_so_far, 10)), retry_base_s * MAX_RETRY_GROWTH, left)
    return WaitDecision(retry_at=now + dt.timedelta(seconds=max(delay, 1.0)), waited_s=waited)


@dataclass
class _Ladder:
    failures: int = 0
    until: float = 0.0


@dataclass
class LaunchGate:
    """Per-worker memory of capacity failures and billing refusals (see the module docstring)."""

    clock: Callable[[], float] = time.monotonic
    _ladders: dict[tuple[str, str], _Ladder] = field(default_factory=dict)
    _billing_paused_until: float = 0.0
    _billing_reason: str = ""
    _billing_announced: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def capacity_failed(self, gpu_type_id: str, cloud: str) -> float:
        """Record a capacity failure; returns the cooldown now in force for that pair (0: none)."""
        with self._lock:
            ladder = self._ladders.setdefault((gpu_type_id, cloud), _Ladder())
            ladder.failures += 1
            if ladder.failures < COOLDOWN_AFTER_FAILURES:
                return 0.0
            cooldown = min(COOLDOWN_BASE_S * 2 ** (ladder.failures - COOLDOWN_AFTER_FAILURES), COOLDOWN_MAX_S)
            ladder.until = self.clock() + cooldown
            return cooldown

    def launched(self, gpu_type_id: str, cloud: str) -> bool:
        """A create succeeded: that pair has stock again, and the account can pay. True when this
        ends a billing pause (so the caller announces the resumption once)."""
        with self._lock:
            self._ladders.pop((gpu_type_id, cloud), None)
            self._billing_paused_until = 0.0
            resumed, self._billing_announced = self._billing_announced, False
            return resumed

    def cooling_down(self) -> set[tuple[str, str]]:
        now = self.clock()
        with self._lock:
            return {pair for pair, ladder in self._ladders.items() if ladder.until > now}

    def pause_for_billing(self, reason: str, seconds: float = BILLING_PAUSE_S) -> bool:
        """Pause launches; True when this starts a pause (so the caller announces it once)."""
        with self._lock:
            starting = not self._billing_announced
            self._billing_paused_until = self.clock() + seconds
            self._billing_reason = reason
            self._billing_announced = True
            return starting

    def billing_pause(self) -> str | None:
        """The reason launches are paused, or None when they are not."""
        with self._lock:
            return self._billing_reason if self._billing_paused_until > self.clock() else None
