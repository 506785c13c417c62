"""Sane bounds for time settings (TTL, poll intervals, timeouts) and the one checker and parser for them.

Every time setting, whether a work-pool variable, an ``ow dev-pod``/``ow ttl`` argument or an environment
variable read inside a pod, is a finite number greater than 0 (some also allow 0) and at most a maximum
defined here. ``inf``, ``nan`` or ``1e8`` would overflow a deadline or a sleep and stop the very code
that ends a pod, so they are refused where the value enters, with a message naming the setting.
"""

from __future__ import annotations

import math
from numbers import Real

# The pod terminates itself this long after it starts unless someone extends it (`ow ttl`).
DEFAULT_TTL_HOURS = 24.0
# 30 days: longer than any job we run; a longer TTL is no safety net for a forgotten pod.
TTL_HOURS_MAX = 720.0
# 30 days, as the TTL: the worker's limit on a run is never meant to outlast the pod's own.
MAX_RUN_HOURS_MAX = 720.0
# 10 minutes: the poll interval is also the delay before billing stops once a run ends.
POLL_INTERVAL_SECONDS_MAX = 600.0
# 24 hours: a pod that has not started its run within a day (image pull, boot) never will.
POD_START_TIMEOUT_SECONDS_MAX = 24 * 3600.0
# 1 hour: the orphan sweep is what stops the pods of a killed worker from billing.
SWEEP_INTERVAL_SECONDS_MAX = 3600.0
# 1 hour: the watchdog may overrun the TTL by up to one check interval.
TTL_CHECK_SECONDS_MAX = 3600.0
# 1 hour: the TTL warning's lead; a checkpoint that takes longer to store is no checkpoint to wait for.
TTL_WARNING_SECONDS_MAX = 3600.0


def _allowed(maximum: float, allow_zero: bool) -> str:
    if allow_zero:
        return f"a number from 0 to {maximum:g}"
    return f"a number greater than 0 and at most {maximum:g}"


def bounded_positive(value: object, *, name: str, maximum: float, allow_zero: bool = False) -> float:
    """``value`` as a float when it is a finite number greater than 0 (or 0, with ``allow_zero``) and at
    most ``maximum``; otherwise raise :class:`ValueError` naming ``name``, the value and the range.

    Bools and strings are refused: ``True`` is no duration, and text goes through
    :func:`parse_bounded_positive`.
    """
    number = float(value) if isinstance(value, Real) and not isinstance(value, bool) else math.nan
    lowest_ok = number >= 0 if allow_zero else number > 0
    # Comparisons with nan are False, so nan and non-numbers fail here as well as inf and 1e8.
    if not (lowest_ok and number <= maximum):
        raise ValueError(f"{name} must be {_allowed(maximum, allow_zero)}, got {value!r}")
    return number


def parse_bounded_positive(
    raw: str | None, *, name: str, default: float | None, maximum: float, allow_zero: bool = False
) -> float:
    """Read an environment variable's or argument's text as :func:`bounded_positive` does.

    Empty text (or ``None``: the variable is unset) means ``default``; with no default it is refused.
    Raise :class:`ValueError` naming ``name``, the text and the allowed range.
    """
    text = (raw or "").strip()
    if not text:
        if default is None:
            raise ValueError(f"{name} must be {_allowed(maximum, allow_zero)}, got {raw!r}")
        return bounded_positive(default, name=name, maximum=maximum, allow_zero=allow_zero)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name} must be {_allowed(maximum, allow_zero)}, got {raw!r}") from None
    try:
        return bounded_positive(number, name=name, maximum=maximum, allow_zero=allow_zero)
    except ValueError:
        # Quote the text as given ('1e8'), not the float it became (100000000.0).
        raise ValueError(f"{name} must be {_allowed(maximum, allow_zero)}, got {raw!r}") from None
