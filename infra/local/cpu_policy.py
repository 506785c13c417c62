"""Which threads may preempt a job's compute threads when the job shares the CPUs with Prefect.

On the embedded default one machine runs the Prefect server, the workers, the control flows and
the job. Everything except the job's compute only answers polls, relays output, stores logs and
waits; when such a thread wakes it need not preempt a torch thread that occupies a core (with
every core busy, one stalled thread stalls the others at the next sync). Linux's ``SCHED_BATCH``
policy says exactly that: a fair share of CPU (so nothing is recorded late, unlike a lower nice
value, which was tried and starved the server on a loaded machine) but no preemption on wake-up.

- :func:`schedule_as_batch_work` puts a whole process (the server, each local worker) under it;
  what the process starts later inherits the policy, so a job's process starts under it too.
- :func:`prioritise_calling_thread`, called by the GPU stage in the job's process before the
  heavy work, gives the normal policy back to the calling thread and to native threads (torch's
  pools) and keeps every other Python thread (Prefect's log, event and heartbeat threads) batch.
- :func:`schedule_this_thread_as_batch` is for a helper thread started after that.

Elsewhere (not Linux) the policy does not exist and these functions do nothing.
``OW_BATCH_SCHEDULING=0`` turns all of it off.
"""

from __future__ import annotations

import os
import threading

BATCH_SCHEDULING_VARIABLE = "OW_BATCH_SCHEDULING"


def batch_scheduling_enabled(env: dict[str, str] | None = None) -> bool:
    """``OW_BATCH_SCHEDULING`` (default ``1``); ``0`` leaves every thread's policy alone."""
    value = (env if env is not None else os.environ).get(BATCH_SCHEDULING_VARIABLE, "1").strip().lower()
    if value not in {"0", "1", "true", "false"}:
        raise ValueError(f"{BATCH_SCHEDULING_VARIABLE} must be 1 or 0, got {value!r}")
    return value in {"1", "true"}


def _supported() -> bool:
    return hasattr(os, "SCHED_BATCH") and os.path.isdir("/proc/self/task")


def _set_policy(thread_id: int, policy: int) -> bool:
    try:
        os.sched_setscheduler(thread_id, policy, os.sched_param(0))
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _thread_ids(pid: int | str) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def schedule_as_batch_work(pid: int) -> bool:
    """Put every thread of process ``pid`` (and so what it starts later) under SCHED_BATCH.

    False where the policy does not exist or the process is gone.
    """
    if not _supported():
        return False
    results = [_set_policy(tid, os.SCHED_BATCH) for tid in _thread_ids(pid) or [pid]]
    return any(results)


def prioritise_calling_thread(env: dict[str, str] | None = None) -> bool:
    """In this process: the calling thread and native threads get the normal policy, every other
    Python thread SCHED_BATCH. True when the policies were set.

    Threads the calling thread starts afterwards (torch's intra-op pool, if not started yet)
    inherit the normal policy; Python threads started by the batch ones inherit batch.
    """
    if not _supported() or not batch_scheduling_enabled(env):
        return False
    caller = threading.get_native_id()
    helpers = {thread.native_id for thread in threading.enumerate()} - {caller, None}
    results = [
        _set_policy(tid, os.SCHED_BATCH if tid in helpers else os.SCHED_OTHER) for tid in _thread_ids("self")
    ]
    return all(results)


def schedule_this_thread_as_batch(env: dict[str, str] | None = None) -> bool:
    """The calling thread (a helper that only waits on I/O) under SCHED_BATCH."""
    if not _supported() or not batch_scheduling_enabled(env):
        return False
    return _set_policy(threading.get_native_id(), os.SCHED_BATCH)
