"""A stop that keeps the work: told to end mid-training, finish the step, checkpoint it, then end as told.

A pod is told to go with SIGTERM (RunPod stopping it, the TTL watchdog's warning, a Prefect
cancellation) and killed a grace period later. Ended in the middle of a step, training loses
everything since its last checkpoint. So while it trains, a termination only *requests* a stop:
at the next step end the Trainer saves a checkpoint of that step (``StopRequestCallback``; the
``CheckpointSyncCallback`` uploads it with its ``COMPLETE`` marker) and leaves its loop, and only
then does the termination carry on as it would have, so the run never reports success with a
half-trained adapter.

How a termination is noticed: :func:`run_until_stopped` runs training on a worker thread while the
main thread, the one where Python runs signal handlers, waits for it. Whatever a signal handler
raises into the waiting main thread becomes the request and is raised again once training has
stopped: Prefect's ``TerminationSignal`` (its SIGTERM handler in a flow-run process, left in place
so Prefect's cancellation handshake, which checks for that handler, still works), or
``KeyboardInterrupt``. Where SIGTERM has no handler (a plain script, a test's subprocess), one is
installed for the duration; after the checkpoint the process ends by SIGTERM as it would have.
A second termination (not a repeat of the first within seconds) is not waited for: it ends the
run at once.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# A termination repeated within this time is the same one: a signal sent to a process group and
# also forwarded by a parent in it (the pod entrypoint) arrives twice.
REPEAT_WINDOW_SECONDS = 2.0


class StopRequest:
    """Set from the main thread when the process is told to end; read at step ends by training."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()

    def request(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason

    @property
    def requested(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason


class TerminationRequested(BaseException):
    """Raised into the main thread by the SIGTERM handler installed where there was none."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


def _raise_termination(signum: int, _frame: object) -> None:
    raise TerminationRequested(signum)


def describe_termination(exc: BaseException) -> str:
    """What told the process to end: ``SIGTERM``, ``SIGINT``, or the exception's type."""
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    signum = getattr(exc, "signum", None) or getattr(exc, "signal", None)  # ours, Prefect's
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return type(exc).__name__


def _end_as_told(termination: BaseException) -> None:
    if isinstance(termination, TerminationRequested):
        # Our handler is gone again (SIGTERM is back to its default): the process ends here, by
        # SIGTERM, as it would have without us; the raise below only runs if the signal is blocked.
        os.kill(os.getpid(), termination.signum)
    raise termination


def run_until_stopped(work: Callable[[], T], stop: StopRequest, log: Callable[[str], None]) -> T:
    """``work()`` (training that checks ``stop`` at its step ends), stoppable by a termination.

    Returns what ``work`` returns. A termination received while it runs is turned into
    ``stop.request(...)``; once ``work`` has returned (with its checkpoint stored), the
    termination is raised again (or SIGTERM delivered again) instead of returning. Off the main
    thread no signal can be noticed, so ``work`` simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        log("training runs off the main thread: a SIGTERM will end it without a final checkpoint")
        return work()

    previous = signal.getsignal(signal.SIGTERM)
    installed = previous == signal.SIG_DFL
    if installed:
        signal.signal(signal.SIGTERM, _raise_termination)
    outcome: dict[str, object] = {}
    done = threading.Event()
    context = contextvars.copy_context()  # the reporter may need the caller's context (Prefect's run)

    def run() -> None:
        try:
            outcome["result"] = context.run(work)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            outcome["error"] = exc
        finally:
            done.set()

    # Daemon: a second termination leaves it behind, and it must not keep the process alive.
    worker = threading.Thread(target=run, name="ow-training", daemon=True)
    termination: BaseException | None = None
    first_at = 0.0
    try:
        try:
            worker.start()
        except BaseException:
            # A termination that lands while the thread starts ends the run before training began;
            # if the thread got going, it stops at its first step end.
            stop.request("ended as training started")
            raise
        while not done.is_set():
            try:
                # An Event, not Thread.join: Python 3.11 marks a thread stopped when an exception
                # interrupts a join of it, though it still runs.
                done.wait(timeout=1.0)
            except BaseException as exc:  # noqa: BLE001 - whatever a signal handler raised
                if termination is None:
                    termination, first_at = exc, time.monotonic()
                    stop.request(describe_termination(exc))
                    log(f"{stop.reason}: training stops at the end of this step, after saving a checkpoint")
                elif time.monotonic() - first_at >= REPEAT_WINDOW_SECONDS:
                    log(f"{describe_termination(exc)} again: ending now, without waiting for the checkpoint")
                    termination = exc
                    break
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
    if termination is not None:
        if "error" in outcome:
            log(f"training failed while stopping: {outcome['error']!r}")
        elif done.is_set():
            log(f"training stopped for {describe_termination(termination)}; ending as told")
        _end_as_told(termination)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
