"""The orphan sweep: pods a ``runpod`` worker of this pool started that no flow run needs any more.

A worker that is killed (even with SIGKILL) stops watching its pods. Most of them end themselves
(the pod entrypoint terminates its pod when the flow run ends, the TTL watchdog when time runs
out), but not all: a pod whose key may only *stop* it, a pod whose flow run was ended from outside,
a pod from a create whose answer never arrived. Every worker therefore sweeps its pool's pods on
start and periodically, using the naming convention of :mod:`infra.worker.pod_spec`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass

import anyio
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed
from prefect.utilities.engine import propose_state

from infra.runpod.api import RunPodApiError, RunPodClient
from infra.runpod.models import Pod
from infra.worker.pod_outcome import FlowRunPhase, flow_run_phase
from infra.worker.pod_spec import belongs_to_pool, flow_run_id_of


@dataclass(frozen=True)
class SweepDecision:
    reason: str
    crash_message: str | None = None  # also mark the flow run Crashed with this message


def judge(
    pod: Pod, *, flow_run_id: uuid.UUID | None, flow_run_exists: bool, state: StateType | None
) -> SweepDecision | None:
    """Whether to terminate one of the pool's pods nobody in this worker watches; None: leave it.

    ``state`` None with ``flow_run_exists`` means Prefect did not answer: never terminate on a guess.
    """
    if flow_run_id is None:
        return SweepDecision("it names no flow run")
    if not flow_run_exists:
        return SweepDecision(f"flow run {flow_run_id} no longer exists")
    phase = flow_run_phase(state)
    if phase is FlowRunPhase.FINISHED:
        return SweepDecision(f"flow run {flow_run_id} is already {state.value if state else 'final'}")
    if pod.desired_status == "EXITED":
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


async def sweep_orphaned_pods(
    *,
    runpod_client: RunPodClient,
    prefect_client: PrefectClient,
    work_pool_name: str,
    watched_pod_ids: Collection[str],
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[tuple[Pod, SweepDecision]]:
    """Terminate the pool's unwatched pods that :func:`judge` condemns; return what was done."""
    swept: list[tuple[Pod, SweepDecision]] = []
    pods = await anyio.to_thread.run_sync(runpod_client.list_pods)
    for pod in pods:
        if pod.id in watched_pod_ids or not belongs_to_pool(pod, work_pool_name):
            continue
        flow_run_id = flow_run_id_of(pod)
        exists, state = True, None
        if flow_run_id is not None:
            try:
                flow_run = await prefect_client.read_flow_run(flow_run_id)
                state = flow_run.state.type if flow_run.state else None
            except ObjectNotFound:
                exists = False
            except Exception as exc:  # noqa: BLE001 - Prefect unreachable: decide next sweep
                logger.debug("Sweep: cannot read flow run %s (%s); leaving pod %s", flow_run_id, exc, pod.id)
                continue
            if exists and state is None:
                continue
        decision = judge(pod, flow_run_id=flow_run_id, flow_run_exists=exists, state=state)
        if decision is None:
            continue
        logger.warning("Terminating orphaned RunPod pod %s (%s): %s", pod.id, pod.name, decision.reason)
        try:
            await anyio.to_thread.run_sync(runpod_client.terminate_pod, pod.id)
        except RunPodApiError as exc:
            logger.error("Could not terminate orphaned pod %s: %s; will retry at the next sweep", pod.id, exc)
            continue
        if decision.crash_message and flow_run_id is not None:
            try:
                await propose_state(
                    prefect_client, Crashed(message=decision.crash_message), flow_run_id=flow_run_id
                )
            except (Abort, ObjectNotFound):
                pass
        swept.append((pod, decision))
    return swept
