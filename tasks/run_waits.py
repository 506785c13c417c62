"""Waiting for a flow run to end: the one way the control tier, the sweep flow, the client and the
benchmarks wait.

A process may hold hundreds of waits at once: the control worker runs every job's control flow as a
thread of one process (:mod:`infra.worker.thread_worker`), and each of them waits for its GPU stage
for as long as the stage runs. So the waits of a process share one :class:`RunWatcher`: one
subscription to the server's flow-run state events, and one read each ``RECHECK_SECONDS`` of the
watched runs that ended or are being cancelled, in case an event was missed. A waiting thread costs
a ``threading.Event``, not a websocket or a poll of its own, and the server sees one subscriber per
process however many jobs wait.

Inside a flow run the wait also watches that run: when it is being cancelled (Cancelling), the wait
raises :class:`ControlRunCancelled`, so a control flow with no signal to receive (a thread of the
control worker) still stops and still cancels what it started.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.logging import get_logger

RECHECK_SECONDS = 10.0  # how stale a wait can be when the event of a run's final state was missed
_READ_BATCH = 200
_FINAL_TYPES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
_WAKE_TYPES = [*_FINAL_TYPES, StateType.CANCELLING]  # what a wait is woken for


class ControlRunCancelled(Exception):
    """The flow run that was waiting is being cancelled; it should stop and end Cancelled."""


def wait_until_final(
    flow_run_id: UUID | str,
    timeout: float | None = None,
    *,
    recheck_seconds: float | None = None,
    poll_seconds: float | None = None,
) -> FlowRun:
    """The flow run once its state is final; TimeoutError naming the run after ``timeout`` seconds.

    Called inside a flow run, raises :class:`ControlRunCancelled` once that run is Cancelling.
    ``recheck_seconds``/``poll_seconds``: kept for callers; the process's watcher reads every watched
    run each :data:`RECHECK_SECONDS` (events wake waits sooner).
    """
    del recheck_seconds, poll_seconds
    flow_run_id = UUID(str(flow_run_id))
    own_run_id = _current_flow_run_id()
    deadline = None if timeout is None else time.monotonic() + timeout
    watcher = RunWatcher.shared()
    wake = watcher.watch([flow_run_id] + ([own_run_id] if own_run_id else []))
    try:
        while True:
            wake.clear()
            runs = _read_runs([flow_run_id] + ([own_run_id] if own_run_id else []))
            flow_run = runs[flow_run_id]
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            own = runs.get(own_run_id) if own_run_id else None
            if own is not None and own.state is not None and own.state.type is StateType.CANCELLING:
                raise ControlRunCancelled(
                    f"flow run {own.name} is being cancelled; it stopped waiting for {flow_run.name}"
                )
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise TimeoutError(
                    f"flow run {flow_run.name} ({flow_run_id}) is still {flow_run.state_name}"
                )
            _sleep_until_woken(wake, watcher, deadline)
    finally:
        watcher.unwatch(wake)


def cancelled_since_scheduled(state_types: list[StateType]) -> bool:
    """Whether a run whose states were ``state_types`` (oldest first) was cancelled (Cancelling or
    Cancelled) after it was last scheduled. Pure."""
    last_scheduled = max((i for i, kind in enumerate(state_types) if kind is StateType.SCHEDULED), default=-1)
    return any(kind in (StateType.CANCELLING, StateType.CANCELLED) for kind in state_types[last_scheduled + 1 :])


def stop_if_cancelled_before_running() -> None:
    """Raise :class:`ControlRunCancelled` when the current flow run was cancelled before its engine set
    it Running: call it before starting anything that costs (a GPU stage, a sweep's jobs).

    A run cancelled while a worker hands it over has no infrastructure yet, so Prefect's worker marks
    it Cancelled at once; a ``threads`` worker's engine, handed the run a moment before, then sets it
    Running, and Prefect accepts Cancelled → Running. Its state no longer says it was cancelled; its
    history does (one read of it per run)."""
    own_run_id = _current_flow_run_id()
    if own_run_id is None:
        return
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(own_run_id), key=lambda state: state.timestamp)
    if cancelled_since_scheduled([state.type for state in states]):
        raise ControlRunCancelled(f"flow run {own_run_id} was cancelled before it started running")


def _sleep_until_woken(wake: threading.Event, watcher: RunWatcher, deadline: float | None) -> None:
    """Until the watcher wakes this wait, the deadline passes, or the watcher is not keeping up (its
    thread died, or its reads fail): then the wait reads its own runs every ``3 × RECHECK_SECONDS``.
    A wait reads nothing while the watcher works, so a thousand waiting jobs cost the server one read
    per ``RECHECK_SECONDS``, not one per job."""
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        step = RECHECK_SECONDS * 3 if remaining is None else min(RECHECK_SECONDS * 3, remaining)
        if wake.wait(step) or not watcher.healthy():
            return


def _current_flow_run_id() -> UUID | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def _read_runs(run_ids: list[UUID]) -> dict[UUID, FlowRun]:
    with get_client(sync_client=True) as client:
        if len(run_ids) == 1:
            return {run_ids[0]: client.read_flow_run(run_ids[0])}
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
    found = {run.id: run for run in runs}
    missing = [run_id for run_id in run_ids if run_id not in found]
    if missing:
        with get_client(sync_client=True) as client:
            client.read_flow_run(missing[0])  # raises ObjectNotFound naming it
    return found


class RunWatcher:
    """Wakes the waits of one process when a run they watch changes to a final state or Cancelling.

    One daemon thread runs an event loop with two loops: a subscription to every flow-run state event
    (reconnecting with backoff), and a read every :data:`RECHECK_SECONDS` of the watched runs that are
    final or Cancelling. Either sets the ``threading.Event`` of each wait watching the run; the wait
    then reads its runs itself.
    """

    _shared: dict[str, RunWatcher] = {}
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watching: dict[UUID, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._last_recheck = time.monotonic()  # when the watcher last read the watched runs
        self._logger = get_logger("ow.run_waits")

    @classmethod
    def shared(cls) -> RunWatcher:
        """This process's watcher for the Prefect API in use (a process can talk to several in turn)."""
        from prefect.settings import PREFECT_API_URL

        with cls._shared_lock:
            return cls._shared.setdefault(str(PREFECT_API_URL.value()), cls())

    def watch(self, run_ids: list[UUID]) -> threading.Event:
        wake = threading.Event()
        wake.run_ids = list(run_ids)  # type: ignore[attr-defined]
        with self._lock:
            for run_id in run_ids:
                self._watching.setdefault(run_id, set()).add(wake)
            self._ensure_thread()
        return wake

    def _ensure_thread(self) -> None:
        """Start the watcher's thread unless it runs; called with ``_lock`` held, in a waiting thread
        (whose context carries the settings, API URL and auth, the watcher talks to the server with)."""
        if self._thread is None or not self._thread.is_alive():
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._serve,), name="ow-run-watcher", daemon=True
            )
            self._last_recheck = time.monotonic()
            self._thread.start()

    def healthy(self) -> bool:
        """Whether the watcher's reads keep up (one succeeded within ``3 × RECHECK_SECONDS``). A thread
        that died is started again; until then the waits read their runs themselves."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._ensure_thread()
                return False
            return time.monotonic() - self._last_recheck < RECHECK_SECONDS * 3

    def unwatch(self, wake: threading.Event) -> None:
        with self._lock:
            for run_id in wake.run_ids:  # type: ignore[attr-defined]
                waits = self._watching.get(run_id)
                if waits is not None:
                    waits.discard(wake)
                    if not waits:
                        del self._watching[run_id]

    def watched(self) -> int:
        with self._lock:
            return len(self._watching)

    def _wake(self, run_id: UUID) -> None:
        with self._lock:
            waits = list(self._watching.get(run_id, ()))
        for wake in waits:
            wake.set()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        await asyncio.gather(self._follow_events(), self._recheck())

    async def _follow_events(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        event_filter = EventFilter(event=EventNameFilter(prefix=["prefect.flow-run."]))
        backoff = 1.0
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    backoff = 1.0
                    async for event in subscriber:
                        state_type = event.resource.get("prefect.state-type")
                        if state_type is None:
                            continue
                        if StateType(state_type) in _FINAL_TYPES or state_type == StateType.CANCELLING.value:
                            self._wake(UUID(event.resource.id.rsplit(".", 1)[-1]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the recheck still wakes every wait; reconnect
                self._logger.debug("flow-run event subscription lost (%s); reconnecting", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            with self._lock:
                run_ids = list(self._watching)
                if not run_ids:
                    self._last_recheck = time.monotonic()
                    continue
            try:
                async with get_client() as client:
                    for start in range(0, len(run_ids), _READ_BATCH):
                        batch = run_ids[start : start + _READ_BATCH]
                        # Only the runs a wait must wake for: the server filters, so a thousand runs
                        # still going cost a query, not a thousand serialised flow runs.
                        runs = await client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(
                                id=FlowRunFilterId(any_=batch),
                                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_WAKE_TYPES)),
                            ),
                            limit=len(batch),
                        )
                        for run in runs:
                            self._wake(run.id)
                with self._lock:
                    self._last_recheck = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the server may be restarting; try again next time
                self._logger.debug("could not read watched flow runs (%s)", exc)
