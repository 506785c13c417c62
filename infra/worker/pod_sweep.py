"""The orphan sweep: pods a ``runpod`` worker of this pool started that no flow run needs any more.

A worker that is killed (even with SIGKILL) stops watching its pods. Most of them end themselves
(the pod entrypoint terminates its pod when the flow run ends, the TTL watchdog when time runs
out), but not all: a pod whose key may only *stop* it, a pod whose flow run was ended from outside,
a pod from a create whose answer never arrived, a pod that never reaches our entrypoint (a bad image,
an early crash: no watchdog runs in it). Every worker therefore sweeps its pool's pods on start and
periodically, using the naming convention of :mod:`infra.worker.pod_spec`, and applies to the pods
nobody watches the bounds written on them at launch — the start timeout and ``max_run_hours`` —
from their age, whatever their run's state.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

import anyio
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed
from prefect.utilities.engine import propose_state

from infra.runpod.api import RunPodApiError, RunPodClient
from infra.runpod.models import Pod, PodStatus
from infra.worker.pod_outcome import FlowRunPhase, flow_run_phase
from infra.worker.pod_spec import (
    MAX_RUN_HOURS_ENV,
    START_TIMEOUT_ENV,
    belongs_to_pool,
    flow_run_id_of,
    launch_bound_seconds,
)

# A pod of a run whose infrastructure PID names another pod is a doubled create, once older than
# this: a run's new pod is young until the worker records its id (seconds after the create).
DOUBLED_POD_GRACE_S = 120.0
# A pod whose run has just ended may still be watched by the worker that launched it (another worker of
# the pool): that worker gives it up to final_state_grace_seconds (at most 600) to end itself before it
# terminates it. The sweep leaves such a pod, while it still runs, alone until then, so it never cuts an engine's last logs or
# completion hooks short; an orphan of a finished run bills at most this much longer.
FINISHED_RUN_GRACE_S = 660.0


@dataclass(frozen=True)
class SweepDecision:
    reason: str
    crash_message: str | None = None  # also mark the flow run Crashed with this message


def judge(
    pod: Pod,
    *,
    flow_run_id: uuid.UUID | None,
    flow_run_exists: bool,
    state: StateType | None,
    flow_run_started: bool | None = False,
    infrastructure_pid: str | None = None,
    final_for_seconds: float | None = None,
    now: dt.datetime | None = None,
) -> SweepDecision | None:
    """Whether to terminate one of the pool's pods nobody in this worker watches; None: leave it.

    ``state`` None with ``flow_run_exists`` (and ``flow_run_started`` None) means Prefect did not
    answer: the run-state rules never terminate on a guess, and neither does the start timeout (which
    needs to know whether the run started); ``max_run_hours`` depends on the pod's age alone and
    applies whatever Prefect says.
    """
    if flow_run_id is None:
        return SweepDecision("it names no flow run")
    if not flow_run_exists:
        return SweepDecision(f"flow run {flow_run_id} no longer exists")
    phase = flow_run_phase(state)
    if phase is FlowRunPhase.FINISHED:
        still_up = pod.status not in (PodStatus.EXITED, PodStatus.ERROR)
        if still_up and final_for_seconds is not None and final_for_seconds < FINISHED_RUN_GRACE_S:
            return None  # its engine may still be finishing, its own worker giving it its final-state grace
        return SweepDecision(f"flow run {flow_run_id} is already {state.value if state else 'final'}")
    age = pod.age_seconds(now or dt.datetime.now(dt.UTC))
    if (
        infrastructure_pid
        and infrastructure_pid != pod.id
        and phase is not FlowRunPhase.WAITING
        and age is not None
        and age > DOUBLED_POD_GRACE_S
    ):
        return SweepDecision(f"flow run {flow_run_id} runs in pod {infrastructure_pid}; this one is a double")
    overrun = _overran_launch_bounds(pod, age, flow_run_started=flow_run_started)
    if overrun is not None:
        crash = None
        if phase in (FlowRunPhase.ACTIVE, FlowRunPhase.CANCELLING):
            crash = f"RunPod pod {pod.id} {overrun} while no worker was watching it; it was terminated."
        return SweepDecision(f"it {overrun}", crash_message=crash)
    if pod.status is PodStatus.ERROR and state is not None:
        return SweepDecision(
            f"it failed (RunPod status ERROR) while flow run {flow_run_id} was {state.value}",
            crash_message=(
                f"RunPod pod {pod.id} failed (RunPod status ERROR: a bad image or a host failure) while no "
                "worker was watching; the flow run cannot continue in it."
            )
            if phase is FlowRunPhase.ACTIVE
            else None,
        )
    if pod.status is PodStatus.EXITED:
        if phase is FlowRunPhase.ACTIVE:
            return SweepDecision(
                f"it stopped while flow run {flow_run_id} was active and no worker watched it",
                crash_message=(
                    f"RunPod pod {pod.id} stopped (last status {pod.describe()}) while no worker was watching; "
                    "the flow run cannot continue in it."
                ),
            )
        if phase is FlowRunPhase.WAITING:
            return SweepDecision(f"it stopped and flow run {flow_run_id} waits to be scheduled again")
    return None


def _overran_launch_bounds(pod: Pod, age: float | None, *, flow_run_started: bool | None) -> str | None:
    """What bound the pod (``age`` seconds old) overran, or None."""
    if age is None:
        return None
    max_run = launch_bound_seconds(pod, MAX_RUN_HOURS_ENV)
    if max_run is not None and age > max_run:
        return f"ran past max_run_hours={max_run / 3600:g} ({age / 3600:.2f} h since launch)"
    start_timeout = launch_bound_seconds(pod, START_TIMEOUT_ENV)
    if start_timeout is not None and flow_run_started is False and age > start_timeout:
        return f"did not start its flow run within pod_start_timeout_seconds={start_timeout:g} ({age:.0f} s since launch)"
    return None


async def sweep_orphaned_pods(
    *,
    runpod_client: RunPodClient,
    prefect_client: PrefectClient,
    work_pool_name: str,
    watched_pod_ids: Collection[str],
    logger: logging.Logger | logging.LoggerAdapter,
    on_terminated: Callable[[Pod, float], None] | None = None,
) -> list[tuple[Pod, SweepDecision]]:
    """Terminate the pool's unwatched pods that :func:`judge` condemns; return what was done.

    ``on_terminated(pod, at)`` hears of each pod as soon as RunPod accepted its terminate (``at``, Unix
    time), which is where the pod's charge ends (:mod:`infra.worker.open_charges`)."""
    swept: list[tuple[Pod, SweepDecision]] = []
    pods = await anyio.to_thread.run_sync(runpod_client.list_pods)
    for pod in pods:
        if pod.id in watched_pod_ids or not belongs_to_pool(pod, work_pool_name):
            continue
        flow_run_id = flow_run_id_of(pod)
        exists, state, started, infrastructure_pid, final_for = True, None, None, None, None
        if flow_run_id is not None:
            try:
                flow_run = await prefect_client.read_flow_run(flow_run_id)
                state = flow_run.state.type if flow_run.state else None
                started = flow_run.start_time is not None
                infrastructure_pid = flow_run.infrastructure_pid
                if flow_run.state is not None and flow_run.state.is_final() and flow_run.state.timestamp:
                    final_for = (dt.datetime.now(dt.UTC) - flow_run.state.timestamp).total_seconds()
            except ObjectNotFound:
                exists = False
            except Exception as exc:  # noqa: BLE001 - Prefect unreachable: only max_run_hours applies
                logger.debug("Sweep: cannot read flow run %s (%s)", flow_run_id, exc)
        decision = judge(
            pod,
            flow_run_id=flow_run_id,
            flow_run_exists=exists,
            state=state,
            flow_run_started=started,
            infrastructure_pid=infrastructure_pid,
            final_for_seconds=final_for,
        )
        if decision is None:
            continue
        logger.warning("Terminating orphaned RunPod pod %s (%s): %s", pod.id, pod.name, decision.reason)
        try:
            await anyio.to_thread.run_sync(runpod_client.terminate_pod, pod.id)
        except RunPodApiError as exc:
            logger.error("Could not terminate orphaned pod %s: %s; will retry at the next sweep", pod.id, exc)
            continue
        if on_terminated is not None:
            on_terminated(pod, time.time())
        if decision.crash_message and flow_run_id is not None:
            try:
                await propose_state(
                    prefect_client, Crashed(message=decision.crash_message), flow_run_id=flow_run_id
                )
            except (Abort, ObjectNotFound):
                pass
            except Exception as exc:  # noqa: BLE001 - the pod is gone; the rest of the sweep goes on
                logger.warning("Could not mark flow run %s Crashed: %s", flow_run_id, exc)
        swept.append((pod, decision))
    return swept
