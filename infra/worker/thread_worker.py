"""The ``threads`` worker: each flow run of its pool runs as a thread of the worker's own process.

The control flows (pool ``ow-control``) validate, hash and look up the cache in seconds, and then
wait — for as long as the job's GPU stage runs, hours for a fine-tune. Prefect's ``process`` worker
gives every flow run a Python process of its own (≈ 100 MB, seconds of CPU to import Prefect and the
project): 500 fine-tunes in flight are 500 processes on the control host doing nothing. This worker
runs them in one process instead; a waiting control flow costs a thread blocked on an event (its
wait shares the process's one subscription to the server's events, :mod:`tasks.run_waits`), and a new
job costs no interpreter start-up. To start one::

    prefect work-pool create ow-control --type threads
    prefect worker start --pool ow-control --type threads

What changes for a flow run, and what does not:

- its state, logs, retries, results, ``--watch`` and the UI are Prefect's, unchanged: the flow runs
  under Prefect's own flow engine (``prefect.flow_engine.run_flow``), as ``prefect flow-run execute``
  would run it;
- cancelling it: no process receives a signal, so the run stops itself — its wait for its GPU stage
  watches its own state and raises on Cancelling (:class:`tasks.run_waits.ControlRunCancelled`); the
  control flow then cancels its stage (unless another submission waits on it) and ends Cancelled. A
  run cancelled before its thread started is ended by the worker; one cancelled while it was handed
  over, which Prefect then lets its engine set Running, stops before it launches anything
  (:func:`tasks.run_waits.stop_if_cancelled_before_running`);
- ``os.environ`` is the worker's, shared by every run; a run's ``env`` job variables (the pool's and
  its deployment's or its own, ``PREFECT_*`` aside) reach the project's settings through
  :mod:`jobs.environment`, for that run's thread only (e.g. ``OW_MAX_RECOVERIES`` for one job).
  ``--limit`` bounds the threads;
- a run cannot be suspended from outside (Prefect's per-run suspension observer is left out, see
  :func:`_share_nothing_per_run_with_the_server`); control flows never are;
- a flow run does not outlive the worker: should the worker die, the runs it held stay Running until
  the next ``threads`` worker of the pool starts on the same host, which marks them Crashed (a
  resubmission of the job joins its GPU stage if that still runs, or is served from the cache).

Only flows that are made for it belong on such a pool: code that changes process-wide state (the
working directory, ``os.environ``, signal handlers) would change it for every other run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotFound
from prefect.states import Crashed
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import WorkerFlowRunResponse

THREADS_WORKER_TYPE = "threads"
_SUBMISSIONS_PER_POLL = 20  # new runs taken per poll (see ThreadWorker._get_scheduled_flow_runs)
_MAX_THREADS = 10_000  # without --limit; anyio's default of 40 threads would queue the 41st waiting job


def infrastructure_id(host: str, pid: int, flow_run_id: object) -> str:
    """What a ``threads`` worker records as a run's infrastructure: ``threads:<host>:<pid>:<run>``. Pure."""
    return f"{THREADS_WORKER_TYPE}:{host}:{pid}:{flow_run_id}"


def held_by_dead_worker(infrastructure_pid: str | None, host: str, pid_alive) -> bool:
    """Whether a run's infrastructure is a ``threads`` worker on ``host`` whose process is gone. Pure
    but for ``pid_alive(pid) -> bool``."""
    parts = (infrastructure_pid or "").split(":")
    if len(parts) != 4 or parts[0] != THREADS_WORKER_TYPE or parts[1] != host or not parts[2].isdigit():
        return False
    return not pid_alive(int(parts[2]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _no_suspension_observer(flow_run_id, suspension_request, polling_interval: float = 10):
    return contextlib.nullcontext()


def _share_nothing_per_run_with_the_server() -> None:
    """Prefect's flow engine gives each deployment run a thread of its own with an event loop, a
    websocket subscription and a poll every 10 s, to notice a suspension requested from outside
    (``prefect._flow_run_suspension.observe_flow_run_suspension``). In a process of its own that is
    one connection; here it would be one per waiting job — 1,000 websockets and 100 reads a second for
    1,000 jobs, which is what made the embedded SQLite server answer "database is locked". Control
    flows are never suspended, so this worker's runs go without it (the run's heartbeat stays: it is
    how a run whose worker died is noticed)."""
    from prefect import flow_engine

    if hasattr(flow_engine, "observe_flow_run_suspension"):
        flow_engine.observe_flow_run_suspension = _no_suspension_observer


class ThreadJobConfiguration(BaseJobConfiguration):
    """Nothing to configure per run: the flow shares the worker's process and environment."""


class ThreadVariables(BaseVariables):
    pass


class ThreadWorkerResult(BaseWorkerResult):
    """``identifier``: :func:`infrastructure_id`; ``status_code`` 0 when the run reached a final state."""


class ThreadWorker(BaseWorker[ThreadJobConfiguration, ThreadVariables, ThreadWorkerResult]):
    type = THREADS_WORKER_TYPE
    job_configuration = ThreadJobConfiguration
    job_configuration_variables = ThreadVariables
    _display_name = "Threads"
    _description = (
        "Run each flow run as a thread of the worker's process: for many light flows that mostly wait "
        "(the control flows of ow-prefect jobs)."
    )
    _documentation_url = "https://docs.prefect.io/v3/deploy/infrastructure-concepts/workers"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._threads = anyio.CapacityLimiter(self._limit or _MAX_THREADS)
        self._not_to_start: set[str] = set()  # runs cancelled between pickup and their thread starting
        self._lock = threading.Lock()

    async def setup(self) -> None:
        _share_nothing_per_run_with_the_server()
        await super().setup()
        await self._crash_runs_of_dead_workers()

    async def _get_scheduled_flow_runs(self) -> list[WorkerFlowRunResponse]:
        """At most :data:`_SUBMISSIONS_PER_POLL` runs not already being submitted, per poll.

        Prefect's worker submits every scheduled run it finds at once, each with ~8 requests through
        one client of 16 connections. A process worker never finds hundreds (each would be a process);
        this one does, when a sweep submits 1,000 jobs, and 600 runs submitted together wedged that
        client's connection pool (requests waiting for a connection, none coming back). Taking a
        batch per poll (every ``PREFECT_WORKER_QUERY_SECONDS``) keeps the pool flowing; the rest stay
        Scheduled for the next poll."""
        runs = await super()._get_scheduled_flow_runs()
        fresh = [run for run in runs if run.flow_run.id not in self._submitting_flow_run_ids]
        return fresh[:_SUBMISSIONS_PER_POLL]

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ThreadJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> ThreadWorkerResult:
        from prefect.flows import load_flow_from_flow_run

        identifier = infrastructure_id(socket.gethostname(), os.getpid(), flow_run.id)
        flow = await load_flow_from_flow_run(flow_run)
        (task_status or anyio.TASK_STATUS_IGNORED).started(identifier)
        env = {key: value for key, value in configuration.env.items() if not key.startswith("PREFECT_")}
        final = await anyio.to_thread.run_sync(self._run_flow, flow, flow_run, env, limiter=self._threads)
        return ThreadWorkerResult(identifier=identifier, status_code=0 if final else 1)

    def _run_flow(self, flow, flow_run: FlowRun, env: dict[str, str | None]) -> bool:
        """Run the flow under Prefect's engine in this thread, its ``env`` job variables seen by the
        project's settings (:mod:`jobs.environment`); whether its run reached a final state."""
        from prefect.flow_engine import run_flow

        from jobs.environment import run_environment

        with self._lock:
            if str(flow_run.id) in self._not_to_start:
                self._not_to_start.discard(str(flow_run.id))
                return True
        logger = self.get_flow_run_logger(flow_run)
        try:
            with run_environment(env):
                state = run_flow(flow, flow_run=flow_run, return_type="state", error_logger=logger)
        except BaseException as exc:  # noqa: BLE001 - one run's failure must not end the others
            logger.error("the flow run's engine stopped: %s: %s", type(exc).__name__, exc)
            return False
        return state is not None and state.is_final()

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: ThreadJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Prefect asks this only for a run cancelled before it started: its thread must not start."""
        parts = infrastructure_pid.split(":")
        if len(parts) != 4 or parts[2] != str(os.getpid()):
            raise InfrastructureNotFound(f"{infrastructure_pid} is not a thread of this worker")
        with self._lock:
            self._not_to_start.add(parts[3])

    async def _crash_runs_of_dead_workers(self) -> None:
        """Mark Crashed the pool's Running runs whose ``threads`` worker on this host is gone: no one
        else would end them (their thread died with that worker's process)."""
        host = socket.gethostname()
        try:
            runs = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    )
                ),
            )
        except Exception as exc:  # noqa: BLE001 - a sweep must not stop the worker from starting
            self._logger.warning("could not look for runs of a stopped threads worker: %s", exc)
            return
        for run in runs:
            if held_by_dead_worker(run.infrastructure_pid, host, _pid_alive):
                pid = run.infrastructure_pid.split(":")[2]
                await self.client.set_flow_run_state(
                    run.id,
                    Crashed(
                        message=f"The threads worker that ran it (process {pid} on {host}) stopped; "
                        "submit the job again to join its GPU stage or get its stored result."
                    ),
                    force=True,
                )
                self._logger.warning("marked flow run %s Crashed: its threads worker %s is gone", run.name, pid)
