"""Which ended GPU stages are recovered automatically, and how many times."""

from __future__ import annotations

import pytest
from prefect.client.schemas.objects import StateType

from tasks.job_control import DEFAULT_MAX_RECOVERIES, infrastructure_was_lost, max_recoveries


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
