"""Which ended GPU stages are recovered automatically, and how many times."""

from __future__ import annotations

import pytest
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Failed

from tasks.job_control import (
    DEFAULT_MAX_RECOVERIES,
    StageAttempt,
    crash_account,
    describe_lost_attempts,
    infrastructure_was_lost,
    lost_stage_outcome,
    max_recoveries,
    recovery_delays,
)


@pytest.mark.parametrize(
    ("state_type", "message", "recovered"),
    [
        (StateType.CRASHED, "RunPod pod abc on 1x NVIDIA A40 disappeared while the flow run was Running", True),
        (StateType.CRASHED, "RunPod pod abc stopped while no worker was watching", True),
        (StateType.CRASHED, "Flow run infrastructure exited with non-zero status code -9.", True),
        (StateType.FAILED, "Flow run encountered an exception: ValueError: bad row", False),  # the job's code
        (StateType.CANCELLED, "Cancelled by the user", False),
        (StateType.CRASHED, "The flow run exceeded max_run_hours=2; RunPod pod abc was terminated", False),
        (StateType.CRASHED, "It had reached its TTL of 24 h (ttl_hours).", False),
        (StateType.CRASHED, "did not start the flow run within pod_start_timeout_seconds=1800", False),
        (StateType.CRASHED, "Failed to submit flow run to infrastructure: CapacityUnavailable: ...", False),
    ],
)
def test_only_a_stage_whose_infrastructure_was_lost_is_recovered(state_type, message, recovered):
    assert infrastructure_was_lost(state_type, message) is recovered


ENGINE = "Execution was aborted by a termination signal."
TTL = "RunPod pod abc reached its TTL of 0.5 h (ttl_hours); the flow run was cut off (Execution was aborted ...)."
MAX_RUN = "The flow run exceeded max_run_hours=2; RunPod pod abc was terminated (last known status RUNNING)."
LOST = "The flow run crashed inside RunPod pod abc: Execution was aborted ... (RunPod reclaimed the pod)."


@pytest.mark.parametrize(
    ("messages", "account", "recovered"),
    [
        ([ENGINE, TTL], TTL, False),  # the TTL's warning stopped the engine, which reported first
        ([MAX_RUN, ENGINE, MAX_RUN], MAX_RUN, False),  # the engine's report landed between the worker's
        ([MAX_RUN, ENGINE], MAX_RUN, False),  # ... and the worker had not put its own back yet
        ([ENGINE, LOST], LOST, True),  # stopped from outside: the worker's account of a lost pod
        ([ENGINE], ENGINE, True),  # the worker never said more (it died): a lost pod
        ([], "", True),
    ],
)
def test_a_crashed_stage_is_judged_by_the_workers_account_whatever_order_the_reports_came_in(
    messages, account, recovered
):
    assert crash_account(messages) == account
    assert infrastructure_was_lost(StateType.CRASHED, crash_account(messages)) is recovered


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, DEFAULT_MAX_RECOVERIES), ("", DEFAULT_MAX_RECOVERIES), ("0", 0), ("5", 5)],
)
def test_max_recoveries_comes_from_the_environment(raw, expected):
    environ = {} if raw is None else {"OW_MAX_RECOVERIES": raw}
    assert max_recoveries(environ) == expected


@pytest.mark.parametrize("raw", ["-1", "11", "three", "1.5"])
def test_a_bad_max_recoveries_is_refused_naming_the_variable(raw):
    with pytest.raises(ValueError, match="OW_MAX_RECOVERIES"):
        max_recoveries({"OW_MAX_RECOVERIES": raw})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, [10, 60, 300]), ("", [10, 60, 300]), ("1", [1]), ("0", [0]), ("2, 5.5", [2, 5.5])],
)
def test_recovery_delays_come_from_the_environment(raw, expected):
    environ = {} if raw is None else {"OW_RECOVERY_DELAY_SECONDS": raw}
    assert recovery_delays(environ) == expected


@pytest.mark.parametrize("raw", ["-1", "3601", "soon", "1,,2", "nan", "inf"])
def test_a_bad_recovery_delay_is_refused_naming_the_variable(raw):
    with pytest.raises(ValueError, match="OW_RECOVERY_DELAY_SECONDS"):
        recovery_delays({"OW_RECOVERY_DELAY_SECONDS": raw})


def test_a_stage_lost_on_every_attempt_is_reported_attempt_by_attempt():
    attempts = [
        StageAttempt("ftjob-1", "run-a", "pod-a", "Crashed", "RunPod pod pod-a disappeared\nwhile Running"),
        StageAttempt("ftjob-1", "run-b", None, "Crashed", ""),
    ]

    message = describe_lost_attempts("ftjob-1", attempts)

    assert message.splitlines() == [
        "The GPU stage of job ftjob-1 lost its infrastructure on every attempt (2: the first and 1 recovery, "
        "the most OW_MAX_RECOVERIES allows); it was not started again. Resubmit the job to try again "
        "(fine-tuning resumes from its last checkpoint).",
        "- attempt 1: stage run ftjob-1 (run-a) in pod pod-a: Crashed: RunPod pod pod-a disappeared while Running",
        "- attempt 2: stage run ftjob-1 (run-b) in pod (none): Crashed: no message",
    ]


@pytest.mark.parametrize(
    "stage_state",
    [
        Completed(),
        Failed(message="Task run encountered an exception GpuStageFailed: GPU stage x (1) ended Failed: ValueError"),
        Failed(message="Task run encountered an exception GpuStageFailed: GPU stage x (1) ended Cancelled: by you"),
    ],
    ids=["completed", "the job's code failed", "cancelled"],
)
def test_only_a_stage_lost_on_its_last_attempt_turns_the_job_crashed(stage_state):
    assert lost_stage_outcome("ftjob-1", "finetune", stage_state) is None  # the task's own outcome stands


@pytest.mark.parametrize(
    ("seconds", "ttl_hours", "env", "by_ttl"),
    [
        (3600 - 300 - 60, 1, {}, True),  # stopped at the default warning, 5 min + one check before the TTL
        (3600 - 300 - 61, 1, {}, False),  # earlier than any warning: lost, worth recovering
        (3600 - 30 - 60, 1, {"OW_TTL_WARNING_SECONDS": "30"}, True),
        (3600 - 300, 1, {"OW_TTL_WARNING_SECONDS": "0"}, False),  # no warning: only the TTL itself
        (3600, 1, {"OW_TTL_WARNING_SECONDS": "0"}, True),
        (5, 0.004, {}, False),  # a 14.4 s TTL gets no 300 s warning: a crash at 5 s is a crash
        (14.4, 0.004, {}, True),
        (3600 - 360, 1, {"OW_TTL_WARNING_SECONDS": "nan"}, True),  # a bad value: the watchdog's default
    ],
)
def test_a_run_stopped_by_its_ttl_warning_counts_as_the_ttl_not_as_a_lost_pod(seconds, ttl_hours, env, by_ttl):
    from infra.worker.pod_outcome import ended_by_ttl

    assert ended_by_ttl(seconds, ttl_hours, env) is by_ttl


@pytest.mark.parametrize(
    ("seconds", "recovered", "names"),
    [
        (600, True, "stopped from outside the run"),  # a spot pod reclaimed mid-run: lost, recovered
        (3600 - 300, False, "reached its TTL of 1 h"),  # stopped by the TTL warning: the user's bound
    ],
)
def test_an_engine_that_reports_its_own_crash_gets_the_workers_account_naming_the_pod(seconds, recovered, names):
    """The pod's engine got SIGTERM and said only "aborted by a termination signal" before the worker
    saw the pod go: the worker's message names the pod and whether the control tier should recover."""
    from infra.worker.pod_outcome import PodWatch, engine_crash_message

    watch = PodWatch(pod_id="pod123", placement="1x NVIDIA A40 (SECURE)")
    message = engine_crash_message(
        watch,
        "Execution was aborted by a\ntermination signal.",
        ttl_hours=1,
        pod_env={},
        seconds_since_launch=seconds,
    )
    assert "pod123" in message and names in message
    assert "Execution was aborted by a termination signal." in message  # the engine's own words, on one line
    assert infrastructure_was_lost(StateType.CRASHED, message) is recovered
