"""The TTL watchdog: terminates the pod it runs in once the time in ``~/shutdown.txt`` has passed.

Started by the pod entrypoint (:mod:`infra.pod.entrypoint`) in every pod, flow-run and dev pods
alike, as a safety net under the worker: if the worker dies, the flow hangs or a dev pod is
forgotten, billing still ends. ``TTL_HOURS`` (default 24, at most 720) sets the first deadline; the
file is then the single source of truth, re-read at every check (``OW_TTL_CHECK_SECONDS``, default 60,
at most 3600), so ``python -m infra.pod.ttl --extend`` works from inside the pod. A failed termination
is retried at the next check. A setting that is not a number within its bounds (``inf``, ``nan``,
``1e8``, ``abc``) is logged as an error and replaced by its default: a watchdog that crashed would
leave the pod running with no TTL at all.

``OW_TTL_WARNING_SECONDS`` (default 300, at most 3600, 0 for none) before the deadline the watchdog
logs a warning and calls its ``on_warning`` callback once (the entrypoint sends the flow-run command
SIGTERM, so training stores a checkpoint before the pod is killed). A pod whose whole TTL fits in
that window gets no warning: it would be told to stop as it starts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from infra.bounds import (
    DEFAULT_TTL_HOURS,
    TTL_CHECK_SECONDS_MAX,
    TTL_HOURS_MAX,
    TTL_WARNING_SECONDS_MAX,
    parse_bounded_positive,
)
from infra.pod import ttl

logger = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 60.0
DEFAULT_WARNING_SECONDS = 300.0


def _setting_from_env(
    environ: dict[str, str], name: str, *, default: float, maximum: float, allow_zero: bool = False
) -> float:
    """The variable's value, or ``default`` (with an error logged) when it is not a number in range."""
    try:
        return parse_bounded_positive(
            environ.get(name), name=name, default=default, maximum=maximum, allow_zero=allow_zero
        )
    except ValueError as exc:
        logger.error("TTL watchdog: environment variable %s; using the default %g instead", exc, default)
        return default


class TtlWatchdog:
    """Checks the shutdown file every ``check_interval_s`` and calls ``end_pod`` once it has passed;
    ``warning_s`` before that, calls ``on_warning`` (once per deadline)."""

    def __init__(
        self,
        *,
        shutdown_file: Path,
        ttl_hours: float,
        check_interval_s: float,
        end_pod: Callable[[str], bool],
        warning_s: float = DEFAULT_WARNING_SECONDS,
        on_warning: Callable[[str], None] | None = None,
        clock: Callable[[], dt.datetime] = ttl.utc_now,
    ):
        self.shutdown_file = shutdown_file
        self.ttl_hours = ttl_hours
        self.check_interval_s = check_interval_s
        self.warning_s = warning_s
        self._end_pod = end_pod
        self._on_warning = on_warning
        self._clock = clock
        self._deadline: dt.datetime | None = None
        self._started_at: dt.datetime | None = None
        self._warned_for: dt.datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environment(
        cls,
        end_pod: Callable[[str], bool],
        environ: dict[str, str] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> TtlWatchdog:
        environ = dict(os.environ if environ is None else environ)
        return cls(
            shutdown_file=ttl.shutdown_file(),
            ttl_hours=_setting_from_env(
                environ, "TTL_HOURS", default=DEFAULT_TTL_HOURS, maximum=TTL_HOURS_MAX
            ),
            check_interval_s=_setting_from_env(
                environ, "OW_TTL_CHECK_SECONDS", default=DEFAULT_CHECK_SECONDS, maximum=TTL_CHECK_SECONDS_MAX
            ),
            warning_s=_setting_from_env(
                environ,
                "OW_TTL_WARNING_SECONDS",
                default=DEFAULT_WARNING_SECONDS,
                maximum=TTL_WARNING_SECONDS_MAX,
                allow_zero=True,
            ),
            end_pod=end_pod,
            on_warning=on_warning,
        )

    def initialize(self) -> dt.datetime:
        """Write the first deadline, unless the file already holds one.

        A file that exists belongs to this pod (the container disk is per pod) and means the
        container restarted: keeping its deadline stops a crash loop from extending the TTL forever.
        """
        self._started_at = self._clock()
        try:
            self._deadline = ttl.read_deadline(self.shutdown_file)
            logger.info(
                "TTL watchdog: keeping existing deadline; this pod %s",
                ttl.describe(self._deadline, self._clock()),
            )
        except ttl.TtlFileError:
            self._deadline = ttl.deadline_after(self._clock(), self.ttl_hours)
            ttl.write_deadline(self.shutdown_file, self._deadline)
            logger.info(
                "TTL watchdog: TTL %g h; this pod %s",
                self.ttl_hours,
                ttl.describe(self._deadline, self._clock()),
            )
        return self._deadline

    def check_once(self) -> bool:
        """One check: True when the deadline has passed and RunPod accepted the termination."""
        try:
            self._deadline = ttl.read_deadline(self.shutdown_file)
        except ttl.TtlFileError as exc:
            # A broken hand edit must neither kill the pod early nor disable the TTL.
            logger.error("TTL watchdog: %s; keeping the last good deadline", exc)
        if self._deadline is None:
            return False
        now = self._clock()
        if self._warning_due(now):
            self._warn(now)
        if ttl.remaining(self._deadline, now).total_seconds() > 0:
            return False
        return self._end_pod(f"TTL expired at {ttl.format_deadline(self._deadline)}")

    def _warning_due(self, now: dt.datetime) -> bool:
        if self.warning_s <= 0 or self._deadline == self._warned_for:
            return False
        window = dt.timedelta(seconds=self.warning_s)
        started_at = self._started_at or now
        # A TTL that fits in the warning window would stop the command as it starts.
        return self._deadline - started_at > window and ttl.remaining(self._deadline, now) <= window

    def _warn(self, now: dt.datetime) -> None:
        # Once per deadline, and marked before the callback runs: a second SIGTERM would end
        # training at once instead of after its checkpoint.
        self._warned_for = self._deadline
        reason = f"TTL warning: this pod {ttl.describe(self._deadline, now)}"
        logger.warning(
            "TTL watchdog: %s; save your work, or extend the TTL with `python -m infra.pod.ttl --extend HOURS`",
            reason,
        )
        if self._on_warning is not None:
            self._on_warning(reason)

    def run(self) -> None:
        """Check until the pod is gone (or :meth:`stop`); failures are retried at the next check."""
        if self._deadline is None:
            self.initialize()
        while not self._stop.is_set():
            try:
                if self.check_once():
                    logger.info(
                        "TTL watchdog: RunPod accepted the termination; waiting for the container to stop"
                    )
            except Exception:  # noqa: BLE001 - the watchdog must outlive any single failure
                logger.exception("TTL watchdog: check failed; retrying in %g s", self.check_interval_s)
            self._stop.wait(self.check_interval_s)

    def start(self) -> threading.Thread:
        """Write the first deadline now, then check in a daemon thread."""
        self.initialize()
        self._thread = threading.Thread(target=self.run, name="ttl-watchdog", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
