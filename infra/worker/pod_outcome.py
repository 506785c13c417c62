"""What a flow run's pod means for the run: the one place pod status becomes a Prefect outcome.

The worker observes two things every poll, the pod (through RunPod) and the flow run (through
Prefect), and :func:`decide` turns them into a verdict. Kept pure so the whole table is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prefect.client.schemas.objects import StateType

from infra.runpod.models import Pod, PodStatus


class PodPhase(StrEnum):
    UP = "up"  # PROVISIONING, STARTING or RUNNING: on its way, or running
    STOPPED = "stopped"  # EXITED or ERROR: the container is not running and will not on its own
    GONE = "gone"  # RunPod no longer knows the pod (terminated)
    UNKNOWN = "unknown"  # RunPod did not answer


class FlowRunPhase(StrEnum):
    ACTIVE = "active"  # pending or running: the pod should be doing it
    WAITING = "waiting"  # paused or scheduled again: work continues elsewhere or later
    CANCELLING = "cancelling"
    FINISHED = "finished"  # a final state, set by the pod's engine or by someone else
    DELETED = "deleted"
    UNKNOWN = "unknown"  # Prefect did not answer


class Verdict(StrEnum):
    KEEP_WATCHING = "keep_watching"
    FLOW_RUN_FINISHED = "flow_run_finished"  # terminate the pod; the run's state stands
    CANCEL = "cancel"  # terminate the pod, then mark the run Cancelled
    POD_LOST = "pod_lost"  # the pod vanished or stopped under an active run: Crashed
    RUN_ELSEWHERE = "run_elsewhere"  # pod gone while the run waits (paused/rescheduled): not a crash
    MAX_RUN_TIME = "max_run_time"  # terminate: Crashed
    START_TIMEOUT = "start_timeout"  # the pod never started the flow run: terminate, Crashed

    @property
    def crashes_run(self) -> bool:
        return self in (Verdict.POD_LOST, Verdict.MAX_RUN_TIME, Verdict.START_TIMEOUT)


def pod_phase(pod: Pod | None) -> PodPhase:
    if pod is None or pod.status is PodStatus.TERMINATED:
        return PodPhase.GONE
    if pod.status in (PodStatus.EXITED, PodStatus.ERROR):
        return PodPhase.STOPPED
    return PodPhase.UP


def flow_run_phase(state_type: StateType | None) -> FlowRunPhase:
    if state_type is None:
        return FlowRunPhase.UNKNOWN
    if state_type in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
        return FlowRunPhase.FINISHED
    if state_type is StateType.CANCELLING:
        return FlowRunPhase.CANCELLING
    if state_type in (StateType.PAUSED, StateType.SCHEDULED):
        return FlowRunPhase.WAITING
    return FlowRunPhase.ACTIVE


def decide(
    pod: PodPhase,
    flow_run: FlowRunPhase,
    *,
    flow_run_started: bool,
    seconds_since_launch: float,
    max_run_seconds: float | None,
    start_timeout_seconds: float,
) -> Verdict:
    """The verdict for one observation. The flow run is read *after* the pod, so a pod that is gone
    because its run just finished is seen with the run's final state, never as a crash."""
    if flow_run in (FlowRunPhase.FINISHED, FlowRunPhase.DELETED):
        return Verdict.FLOW_RUN_FINISHED
    if flow_run is FlowRunPhase.CANCELLING:
        return Verdict.CANCEL
    if pod in (PodPhase.GONE, PodPhase.STOPPED):
        if flow_run is FlowRunPhase.WAITING:
            return Verdict.RUN_ELSEWHERE
        if flow_run is FlowRunPhase.ACTIVE:
            return Verdict.POD_LOST
        return Verdict.KEEP_WATCHING  # Prefect unreachable: do not crash a run that may have finished
    if max_run_seconds is not None and seconds_since_launch > max_run_seconds:
        return Verdict.MAX_RUN_TIME
    if (
        flow_run is FlowRunPhase.ACTIVE
        and not flow_run_started
        and seconds_since_launch > start_timeout_seconds
    ):
        return Verdict.START_TIMEOUT
    return Verdict.KEEP_WATCHING


@dataclass
class PodWatch:
    """What the worker has learnt about one flow run's pod so far."""

    pod_id: str
    placement: str  # GPU type, cloud, memory and price the pod got
    last_seen: Pod | None = None  # the latest answer RunPod gave about the pod
    pod: PodPhase = PodPhase.UNKNOWN
    flow_run_state: StateType | None = None

    @property
    def last_status(self) -> str:
        """The pod's status as RunPod last described it, for messages."""
        return self.last_seen.describe() if self.last_seen is not None else "never seen"

    def observe(self, pod: Pod | None, phase: PodPhase) -> None:
        self.pod = phase
        if pod is not None:
            self.last_seen = pod


def crash_message(
    verdict: Verdict,
    watch: PodWatch,
    *,
    seconds_since_launch: float,
    ttl_hours: float,
    max_run_hours: float | None,
    start_timeout_seconds: float,
) -> str:
    """The Crashed state's message for a verdict that crashes the run: which pod, what happened, and
    the pod's last known status, naming the job variable involved."""
    last_status = watch.last_status
    pod = f"RunPod pod {watch.pod_id} on {watch.placement}"
    if verdict is Verdict.POD_LOST:
        failed = watch.last_seen is not None and watch.last_seen.status is PodStatus.ERROR
        what = "disappeared" if watch.pod is PodPhase.GONE else "failed (RunPod status ERROR)" if failed else "stopped"
        state = watch.flow_run_state.value.title() if watch.flow_run_state else "active"
        message = f"{pod} {what} while the flow run was {state}; last known status {last_status}."
        if seconds_since_launch >= ttl_hours * 3600:
            return message + f" It had reached its TTL of {ttl_hours:g} h (ttl_hours)."
        return message + " It was terminated outside Prefect, or its container crashed."
    if verdict is Verdict.MAX_RUN_TIME:
        return f"The flow run exceeded max_run_hours={max_run_hours:g}; {pod} was terminated (last known status {last_status})."
    if verdict is Verdict.START_TIMEOUT:
        return (
            f"{pod} did not start the flow run within pod_start_timeout_seconds={start_timeout_seconds:g} "
            f"(last known status {last_status}); it was terminated."
        )
    raise ValueError(f"verdict {verdict} does not crash a run")


def engine_crash_message(
    watch: PodWatch,
    engine_message: str | None,
    *,
    ttl_hours: float,
    pod_env: dict[str, str | None],
    seconds_since_launch: float,
) -> str:
    """The Crashed state's message for a run whose own engine reported Crashed inside its pod before
    the worker saw anything wrong (the engine says only "aborted by a termination signal"): which pod,
    why, and the engine's own words.

    The TTL watchdog's warning stops the run (training checkpoints) and the engine forces a bare
    Crashed: say it was the TTL, a bound the user set, so it is not recovered. An engine that got a
    SIGTERM that neither the TTL, the worker nor a cancellation sent was stopped from outside (a spot
    pod reclaimed, the pod stopped in RunPod's console, a host drained): a lost pod, recovered. Pure.
    """
    said = " ".join((engine_message or "no message").split())
    if ended_by_ttl(seconds_since_launch, ttl_hours, pod_env):
        return (
            f"RunPod pod {watch.pod_id} reached its TTL of {ttl_hours:g} h (ttl_hours; the run is stopped at "
            f"the TTL warning, OW_TTL_WARNING_SECONDS before it); the flow run was cut off ({said})."
        )
    last_status = watch.last_status
    message = f"The flow run crashed inside RunPod pod {watch.pod_id} on {watch.placement}: {said}"
    if "termination signal" in said:
        message += (
            " Its processes were stopped from outside the run (RunPod reclaimed or stopped the pod, "
            "or its host failed)"
        )
    return message + f"; last known status {last_status}."


def ended_by_ttl(seconds_since_launch: float, ttl_hours: float, pod_env: dict[str, str | None]) -> bool:
    """Whether a run whose engine crashed ``seconds_since_launch`` after launch was ended by its pod's TTL.

    The watchdog warns ``OW_TTL_WARNING_SECONDS`` before the deadline (the flow-run command gets SIGTERM
    and training checkpoints), so a run stopped by the warning ends up to that long, plus one check
    interval, before the TTL. It is the TTL all the same, a bound the user set: another pod would end
    the same way, so such a run is not recovered. A TTL too short for a warning gets none. Pure.
    """
    from infra.bounds import TTL_CHECK_SECONDS_MAX, TTL_WARNING_SECONDS_MAX, parse_bounded_positive
    from infra.pod.ttl_watchdog import DEFAULT_CHECK_SECONDS, DEFAULT_WARNING_SECONDS

    ttl_s = ttl_hours * 3600
    try:
        warning_s = parse_bounded_positive(
            pod_env.get("OW_TTL_WARNING_SECONDS"),
            name="OW_TTL_WARNING_SECONDS",
            default=DEFAULT_WARNING_SECONDS,
            maximum=TTL_WARNING_SECONDS_MAX,
            allow_zero=True,
        )
        check_s = parse_bounded_positive(
            pod_env.get("OW_TTL_CHECK_SECONDS"),
            name="OW_TTL_CHECK_SECONDS",
            default=DEFAULT_CHECK_SECONDS,
            maximum=TTL_CHECK_SECONDS_MAX,
        )
    except ValueError:  # the watchdog falls back to its defaults for a bad value, and so do we
        warning_s, check_s = DEFAULT_WARNING_SECONDS, DEFAULT_CHECK_SECONDS
    if warning_s and ttl_s > warning_s:
        return seconds_since_launch >= ttl_s - warning_s - check_s
    return seconds_since_launch >= ttl_s
