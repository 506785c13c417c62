"""Two identical submissions share one GPU stage; one submitter cancelling must not fail the other.

Through the real `finetune/sft` deployment on the embedded stack. The fault before: the cancelled
control flow cancelled the shared GPU stage on its way out, so the other submission ended Failed.
"""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling


def _running_gpu_stage(ow_stack, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [run for run in ow_stack.gpu_stage_runs(job_id) if run.state and run.state.type == StateType.RUNNING]
        if running:
            return running[0]
        time.sleep(1)
    raise AssertionError(f"no GPU stage of {job_id} ran within {timeout}s")


def _job_id(ow_stack, control_id, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(control_id).tags
        found = [tag.split(":", 1)[1] for tag in tags if tag.startswith("ow-job:")]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError("the control run did not identify its job")


def _waiting_on_its_gpu_stage(ow_stack, control_id, timeout: float = 300) -> None:
    """Until the control run says it waits on its GPU stage (it has launched or joined it)."""
    deadline = time.monotonic() + timeout
    while "waiting for GPU stage" not in ow_stack.logs(control_id):
        assert time.monotonic() < deadline, f"control run {control_id} never waited on a GPU stage"
        time.sleep(1)


def test_cancelling_one_of_two_identical_submissions_leaves_the_shared_gpu_stage_to_the_other(ow_stack, sft_params):
    params = sft_params(seed=31, epochs=40)  # 240 steps: still training when the cancellation lands
    first, second = (ow_stack.submit("finetune/sft", params) for _ in range(2))
    job_id = _job_id(ow_stack, first.id)
    assert _job_id(ow_stack, second.id) == job_id
    stage = _running_gpu_stage(ow_stack, job_id)
    for control in (first, second):  # both share the stage (not one still on its way to it)
        _waiting_on_its_gpu_stage(ow_stack, control.id)

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first.id, Cancelling(message="cancelled by one submitter"), force=True)

    assert ow_stack.wait(first.id, timeout=120).state.type == StateType.CANCELLED
    finished = ow_stack.wait(second.id)
    assert finished.state.type == StateType.COMPLETED, finished.state.message
    assert ow_stack.wait(stage.id).state.type == StateType.COMPLETED
    assert len(ow_stack.gpu_stage_runs(job_id)) == 1
    assert ow_stack.store.exists(f"jobs/{job_id}/result.json")
    assert "another submission of job" in ow_stack.logs(first.id)


def test_cancelling_the_only_submission_still_cancels_its_gpu_stage(ow_stack, sft_params):
    control = ow_stack.submit("finetune/sft", sft_params(seed=32, epochs=40))
    stage = _running_gpu_stage(ow_stack, _job_id(ow_stack, control.id))
    _waiting_on_its_gpu_stage(ow_stack, control.id)  # cancelled while it waits, not on its way to the stage
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(control.id, Cancelling(message="cancelled by the submitter"), force=True)
    assert ow_stack.wait(control.id, timeout=120).state.type == StateType.CANCELLED
    assert ow_stack.wait(stage.id, timeout=120).state.type == StateType.CANCELLED
