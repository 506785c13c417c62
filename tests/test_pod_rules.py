"""Pure rules around a flow run's pod: naming, env, start command, status → outcome, and the sweep's judgement."""

from __future__ import annotations

import datetime as dt
import shlex
import uuid

import pytest
from prefect.client.schemas.objects import StateType

from infra.runpod.models import Pod
from infra.worker.pod_outcome import (
    FlowRunPhase,
    PodPhase,
    PodWatch,
    Verdict,
    crash_message,
    decide,
    flow_run_phase,
    pod_phase,
)
from infra.worker.pod_spec import (
    MAX_RUN_HOURS_ENV,
    START_TIMEOUT_ENV,
    belongs_to_pool,
    flow_run_id_of,
    pod_env,
    pod_name_for,
    pod_start_command,
    pool_slug,
)
from infra.worker.pod_sweep import judge

RUN_ID = uuid.UUID("8fb29b23-ff36-4015-8deb-4054608413f6")


@pytest.mark.parametrize(
    ("pool", "slug"),
    [
        ("gpu", "gpu"),
        ("GPU Pool #1", "gpu-pool-1"),
        ("!!!", "pool"),
        ("a" * 40, "a" * 24),
        ("x-" * 20, "x-x-x-x-x-x-x-x-x-x-x-x"),
    ],
)
def test_pool_slugs_are_short_and_safe(pool, slug):
    assert pool_slug(pool) == slug


def test_pod_name_is_the_same_on_every_attempt_and_names_pool_and_flow_run():
    assert pod_name_for("gpu", RUN_ID) == pod_name_for("gpu", RUN_ID) == f"ow-gpu-{RUN_ID}"


@pytest.mark.parametrize(
    ("pod", "pool", "belongs"),
    [
        (Pod(id="p", name=f"ow-gpu-{RUN_ID}", env={"OW_RUNPOD_WORK_POOL": "gpu"}), "gpu", True),
        (
            Pod(id="p", name=f"ow-gpu-{RUN_ID}", env={"OW_RUNPOD_WORK_POOL": "GPU"}),
            "gpu",
            False,
        ),  # slug collision
        (Pod(id="p", name=f"ow-gpu-{RUN_ID}", env={}), "gpu", False),
        (Pod(id="p", name="ow-dev-me-abc123", env={}), "gpu", False),
        (Pod(id="p", name=f"my-own-{RUN_ID}", env={"OW_RUNPOD_WORK_POOL": "gpu"}), "gpu", False),
    ],
)
def test_only_pods_a_worker_of_this_pool_started_belong_to_it(pod, pool, belongs):
    assert belongs_to_pool(pod, pool) is belongs


@pytest.mark.parametrize(
    ("pod", "flow_run_id"),
    [
        (Pod(id="p", name="x", env={"PREFECT__FLOW_RUN_ID": str(RUN_ID)}), RUN_ID),
        (Pod(id="p", name=f"ow-gpu-{RUN_ID}"), RUN_ID),
        (Pod(id="p", name=f"ow-gpu-{RUN_ID}", env={"PREFECT__FLOW_RUN_ID": "garbage"}), RUN_ID),
        (Pod(id="p", name="ow-gpu-nothing"), None),
    ],
)
def test_the_flow_run_of_a_pod_is_read_from_env_then_name(pod, flow_run_id):
    assert flow_run_id_of(pod) == flow_run_id


@pytest.mark.parametrize(
    "command",
    [
        "prefect flow-run execute",
        "python -m prefect.engine",
        "prefect flow-run execute --x 'two words' \"q'uote\"",
    ],
)
def test_start_command_runs_the_entrypoint_then_the_flow_run_command_with_quoting_intact(command):
    arguments = shlex.split(pod_start_command(command))
    assert arguments[:4] == ["python", "-m", "infra.pod.entrypoint", "--"]
    assert arguments[4:] == shlex.split(command)


def test_an_empty_flow_run_command_is_refused():
    with pytest.raises(ValueError, match="flow-run command is empty"):
        pod_start_command("  ")


def test_pod_env_passes_job_env_through_and_adds_ttl_pool_and_api():
    job_env = {
        "PREFECT_API_URL": "http://h/api",
        "OW_STORE_BLOCK": "s3",
        "OW_OTHER": "1",
        "UNSET": None,
        "RUNPOD_API_KEY": "account-key",
    }
    env = pod_env(job_env, ttl_hours=0.5, work_pool_name="gpu", api_base_url="http://emulator:1")
    assert env == {
        "PREFECT_API_URL": "http://h/api",
        "OW_STORE_BLOCK": "s3",
        "OW_OTHER": "1",
        "TTL_HOURS": "0.5",
        "OW_RUNPOD_WORK_POOL": "gpu",
        "RUNPOD_API_BASE_URL": "http://emulator:1",
    }
    assert "RUNPOD_API_BASE_URL" not in pod_env({}, ttl_hours=24, work_pool_name="gpu", api_base_url=None)


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (None, FlowRunPhase.UNKNOWN),
        (StateType.PENDING, FlowRunPhase.ACTIVE),
        (StateType.RUNNING, FlowRunPhase.ACTIVE),
        (StateType.SCHEDULED, FlowRunPhase.WAITING),
        (StateType.PAUSED, FlowRunPhase.WAITING),
        (StateType.CANCELLING, FlowRunPhase.CANCELLING),
        (StateType.COMPLETED, FlowRunPhase.FINISHED),
        (StateType.FAILED, FlowRunPhase.FINISHED),
        (StateType.CRASHED, FlowRunPhase.FINISHED),
        (StateType.CANCELLED, FlowRunPhase.FINISHED),
    ],
)
def test_flow_run_states_map_to_phases(state, phase):
    assert flow_run_phase(state) is phase


@pytest.mark.parametrize(
    ("pod", "phase"),
    [
        (None, PodPhase.GONE),
        (Pod(id="p", status="TERMINATED"), PodPhase.GONE),
        (Pod(id="p", status="EXITED"), PodPhase.STOPPED),
        (Pod(id="p", status="RUNNING"), PodPhase.UP),
    ],
)
def test_pod_states_map_to_phases(pod, phase):
    assert pod_phase(pod) is phase


UP, STOPPED, GONE, POD_UNKNOWN = PodPhase.UP, PodPhase.STOPPED, PodPhase.GONE, PodPhase.UNKNOWN
ACTIVE, WAITING, CANCELLING, FINISHED, DELETED, RUN_UNKNOWN = (
    FlowRunPhase.ACTIVE,
    FlowRunPhase.WAITING,
    FlowRunPhase.CANCELLING,
    FlowRunPhase.FINISHED,
    FlowRunPhase.DELETED,
    FlowRunPhase.UNKNOWN,
)


@pytest.mark.parametrize(
    ("pod", "run", "started", "seconds", "max_run", "verdict"),
    [
        (UP, ACTIVE, True, 10, None, Verdict.KEEP_WATCHING),
        (UP, ACTIVE, False, 10, None, Verdict.KEEP_WATCHING),  # still booting
        (UP, FINISHED, True, 10, None, Verdict.FLOW_RUN_FINISHED),
        (GONE, FINISHED, True, 10, None, Verdict.FLOW_RUN_FINISHED),  # the pod ended itself after the run
        (POD_UNKNOWN, FINISHED, True, 10, None, Verdict.FLOW_RUN_FINISHED),
        (UP, DELETED, True, 10, None, Verdict.FLOW_RUN_FINISHED),
        (UP, CANCELLING, True, 10, None, Verdict.CANCEL),
        (GONE, CANCELLING, True, 10, None, Verdict.CANCEL),
        (GONE, ACTIVE, True, 10, None, Verdict.POD_LOST),
        (STOPPED, ACTIVE, True, 10, None, Verdict.POD_LOST),
        (GONE, ACTIVE, False, 10, None, Verdict.POD_LOST),
        (GONE, WAITING, True, 10, None, Verdict.RUN_ELSEWHERE),
        (STOPPED, WAITING, True, 10, None, Verdict.RUN_ELSEWHERE),
        (UP, WAITING, True, 10, None, Verdict.KEEP_WATCHING),  # paused in place
        (GONE, RUN_UNKNOWN, True, 10, None, Verdict.KEEP_WATCHING),  # never crash on a guess
        (POD_UNKNOWN, ACTIVE, True, 10, None, Verdict.KEEP_WATCHING),
        (UP, ACTIVE, True, 3601, 3600, Verdict.MAX_RUN_TIME),
        (POD_UNKNOWN, ACTIVE, True, 3601, 3600, Verdict.MAX_RUN_TIME),
        (UP, ACTIVE, True, 3599, 3600, Verdict.KEEP_WATCHING),
        (UP, ACTIVE, False, 1801, None, Verdict.START_TIMEOUT),
        (UP, ACTIVE, True, 1801, None, Verdict.KEEP_WATCHING),
    ],
)
def test_every_observation_has_one_verdict(pod, run, started, seconds, max_run, verdict):
    assert (
        decide(
            pod,
            run,
            flow_run_started=started,
            seconds_since_launch=seconds,
            max_run_seconds=max_run,
            start_timeout_seconds=1800,
        )
        is verdict
    )


@pytest.mark.parametrize(
    ("verdict", "crashes"),
    [
        (Verdict.POD_LOST, True),
        (Verdict.MAX_RUN_TIME, True),
        (Verdict.START_TIMEOUT, True),
        (Verdict.FLOW_RUN_FINISHED, False),
        (Verdict.CANCEL, False),
        (Verdict.RUN_ELSEWHERE, False),
    ],
)
def test_only_the_worker_ending_an_active_run_crashes_it(verdict, crashes):
    assert verdict.crashes_run is crashes


NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
BOUNDS = {START_TIMEOUT_ENV: "600", MAX_RUN_HOURS_ENV: "2"}
RUNNING_POD = Pod(id="p", name=f"ow-gpu-{RUN_ID}", status="RUNNING")
STOPPED_POD = Pod(id="p", name=f"ow-gpu-{RUN_ID}", status="EXITED")
FAILED_POD = Pod(id="p", name=f"ow-gpu-{RUN_ID}", status="ERROR")
YOUNG_POD = RUNNING_POD.model_copy(update={"env": BOUNDS, "created_at": NOW - dt.timedelta(seconds=60)})
STARTING_TOO_LONG = Pod(
    id="p", name=f"ow-gpu-{RUN_ID}", status="STARTING", env=BOUNDS, created_at=NOW - dt.timedelta(seconds=900)
)
RUNNING_TOO_LONG = RUNNING_POD.model_copy(update={"env": BOUNDS, "created_at": NOW - dt.timedelta(hours=3)})


@pytest.mark.parametrize(
    ("pod", "flow_run_id", "exists", "state", "terminate", "crash"),
    [
        (RUNNING_POD, None, True, None, True, False),
        (RUNNING_POD, RUN_ID, False, None, True, False),
        (RUNNING_POD, RUN_ID, True, StateType.COMPLETED, True, False),
        (RUNNING_POD, RUN_ID, True, StateType.CRASHED, True, False),
        (RUNNING_POD, RUN_ID, True, StateType.RUNNING, False, False),  # still working: leave it
        (RUNNING_POD, RUN_ID, True, StateType.PENDING, False, False),
        (RUNNING_POD, RUN_ID, True, None, False, False),  # Prefect did not answer
        (STOPPED_POD, RUN_ID, True, StateType.RUNNING, True, True),
        (STOPPED_POD, RUN_ID, True, StateType.SCHEDULED, True, False),
        (STOPPED_POD, RUN_ID, True, StateType.CANCELLED, True, False),
        # (a) a pod that never reaches our entrypoint: no watchdog runs in it, so the sweep must end it
        (FAILED_POD, RUN_ID, True, StateType.PENDING, True, True),
        (FAILED_POD, RUN_ID, True, None, False, False),  # Prefect did not answer: the age rules below apply
        (YOUNG_POD, RUN_ID, True, StateType.PENDING, False, False),
        (STARTING_TOO_LONG, RUN_ID, True, StateType.PENDING, True, True),
        (STARTING_TOO_LONG, RUN_ID, True, None, False, False),  # Prefect away: did it start? unknown
        (RUNNING_TOO_LONG, RUN_ID, True, None, True, False),  # max_run_hours holds even when Prefect is away
        (STARTING_TOO_LONG, RUN_ID, True, StateType.SCHEDULED, True, False),
        (RUNNING_TOO_LONG, RUN_ID, True, StateType.RUNNING, True, True),  # max_run_hours from its age
    ],
)
def test_the_sweep_ends_pods_no_flow_run_needs_and_nothing_else(
    pod, flow_run_id, exists, state, terminate, crash
):
    started = None if state is None else state is StateType.RUNNING
    decision = judge(
        pod, flow_run_id=flow_run_id, flow_run_exists=exists, state=state, flow_run_started=started, now=NOW
    )
    assert (decision is not None) is terminate
    assert bool(decision and decision.crash_message) is crash


@pytest.mark.parametrize(
    ("pod", "infrastructure_pid", "state", "terminate"),
    [
        (YOUNG_POD, "other", StateType.RUNNING, False),  # young: may be a new pod not yet recorded
        (RUNNING_POD.model_copy(update={"created_at": NOW - dt.timedelta(minutes=5)}), "other", StateType.RUNNING, True),
        (RUNNING_POD.model_copy(update={"created_at": NOW - dt.timedelta(minutes=5)}), "p", StateType.RUNNING, False),
        (RUNNING_POD.model_copy(update={"created_at": NOW - dt.timedelta(minutes=5)}), "other", StateType.SCHEDULED, False),
    ],
)
def test_the_sweep_ends_a_doubled_pod_of_a_run_that_runs_elsewhere(pod, infrastructure_pid, state, terminate):
    decision = judge(
        pod,
        flow_run_id=RUN_ID,
        flow_run_exists=True,
        state=state,
        flow_run_started=True,
        infrastructure_pid=infrastructure_pid,
        now=NOW,
    )
    assert (decision is not None) is terminate



@pytest.mark.parametrize(
    ("status", "final_for", "terminate"),
    [
        ("RUNNING", 5.0, False),  # another worker may be giving it its final-state grace
        ("RUNNING", 700.0, True),  # past any grace: an orphan
        ("RUNNING", None, True),  # when the run ended is unknown: as before
        ("EXITED", 5.0, True),  # stopped: nothing left in it to wait for
    ],
)
def test_the_sweep_leaves_a_finished_runs_running_pod_its_final_state_grace(status, final_for, terminate):
    pod = RUNNING_POD.model_copy(update={"status": status, "created_at": NOW - dt.timedelta(minutes=5)})
    decision = judge(
        pod,
        flow_run_id=RUN_ID,
        flow_run_exists=True,
        state=StateType.COMPLETED,
        flow_run_started=True,
        final_for_seconds=final_for,
        now=NOW,
    )
    assert (decision is not None) is terminate


LAST_SEEN = Pod(id="abc", status="RUNNING", runtime_up=True, uptime_seconds=42)


@pytest.mark.parametrize(
    ("verdict", "pod", "state", "seconds", "expected"),
    [
        (
            Verdict.POD_LOST,
            PodPhase.GONE,
            StateType.RUNNING,
            60,
            "RunPod pod abc on A40 (SECURE) disappeared while the flow run was Running; last known status RUNNING "
            "(container up 42 s). It was terminated outside Prefect, or its container crashed.",
        ),
        (
            Verdict.POD_LOST,
            PodPhase.STOPPED,
            StateType.PENDING,
            60,
            "RunPod pod abc on A40 (SECURE) stopped while the flow run was Pending; last known status RUNNING "
            "(container up 42 s). It was terminated outside Prefect, or its container crashed.",
        ),
        (
            Verdict.POD_LOST,
            PodPhase.GONE,
            StateType.RUNNING,
            7200,
            "RunPod pod abc on A40 (SECURE) disappeared while the flow run was Running; last known status RUNNING "
            "(container up 42 s). It had reached its TTL of 2 h (ttl_hours).",
        ),
        (
            Verdict.MAX_RUN_TIME,
            PodPhase.UP,
            StateType.RUNNING,
            3700,
            "The flow run exceeded max_run_hours=1; RunPod pod abc on A40 (SECURE) was terminated "
            "(last known status RUNNING (container up 42 s)).",
        ),
        (
            Verdict.START_TIMEOUT,
            PodPhase.UP,
            StateType.PENDING,
            1900,
            "RunPod pod abc on A40 (SECURE) did not start the flow run within pod_start_timeout_seconds=1800 "
            "(last known status RUNNING (container up 42 s)); it was terminated.",
        ),
    ],
)
def test_crash_messages_name_the_pod_what_happened_and_its_last_status(
    verdict, pod, state, seconds, expected
):
    watch = PodWatch(
        pod_id="abc", placement="A40 (SECURE)", last_seen=LAST_SEEN, pod=pod, flow_run_state=state
    )
    message = crash_message(
        verdict, watch, seconds_since_launch=seconds, ttl_hours=2, max_run_hours=1, start_timeout_seconds=1800
    )
    assert message == expected


def test_verdicts_that_do_not_crash_have_no_crash_message():
    with pytest.raises(ValueError):
        crash_message(
            Verdict.CANCEL,
            PodWatch(pod_id="abc", placement="A40"),
            seconds_since_launch=1,
            ttl_hours=1,
            max_run_hours=None,
            start_timeout_seconds=1,
        )
