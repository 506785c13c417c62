"""End to end through a real Prefect server and workers: `finetune/sft` as a user runs it."""

from __future__ import annotations

import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from tests.fixtures.jobs import assert_trained_once, submit_at_once
from tests.model_loss import mean_response_loss, read_rows


@pytest.fixture
def trained(trained_sft):
    return trained_sft


def test_sft_deployment_stores_an_adapter_that_lowers_the_loss(ow_stack, trained, tiny_model_dir, conversations_path, tmp_path):
    run, job_id, record = trained
    assert job_id.startswith("ftjob-")
    [stage] = ow_stack.gpu_stage_runs(job_id)
    assert stage.state.type == StateType.COMPLETED
    assert record["outputs"]["adapter"].endswith(f"jobs/{job_id}/adapter")
    adapter = ow_stack.store.download_tree(f"jobs/{job_id}/adapter", tmp_path / "adapter")
    assert (adapter / "adapter_config.json").exists() and (adapter / "tokenizer.json").exists()
    assert (adapter / "chat_template.jinja").exists()
    rows = read_rows(conversations_path)
    before = mean_response_loss(tiny_model_dir, rows)
    after = mean_response_loss(tiny_model_dir, rows, adapter)
    assert after < before - 0.1, (before, after)
    assert record["metrics"]["final_loss"] is not None
    assert ow_stack.store.list(f"jobs/{job_id}/checkpoints") == []  # removed once the adapter is stored
    assert record["cost"]["usd"] == 0 and not record["cost"]["billed"] and "local process pool" in record["cost"]["note"]


def test_training_shows_progress_metrics_and_summary_in_the_flow_run(ow_stack, trained):
    _, job_id, _ = trained
    [stage] = ow_stack.gpu_stage_runs(job_id)
    artifacts = {artifact.type: artifact for artifact in ow_stack.artifacts(stage.id)}
    assert {"progress", "table", "markdown"} <= set(artifacts)
    assert artifacts["progress"].data == 100.0
    table = artifacts["table"].data
    rows = table if isinstance(table, list) else __import__("json").loads(table)
    assert rows and {"step", "loss", "learning_rate", "grad_norm"} <= set(rows[0])
    summaries = [a for a in ow_stack.artifacts(stage.id) if a.key and a.key.endswith("-summary")]
    assert summaries and job_id in summaries[0].data
    assert "step 1:" in ow_stack.logs(stage.id)  # the trainer's metrics reach the Prefect logs


def test_training_logs_carry_no_library_noise(ow_stack, trained):
    """What a person scrolls through: the trainer's steps and the job's messages, not bytecode that
    dill disassembles to find a function's globals (datasets fingerprints its map functions that way)
    nor progress bars redrawn with carriage returns."""
    _, job_id, _ = trained
    [stage] = ow_stack.gpu_stage_runs(job_id)
    logs = ow_stack.logs(stage.id)
    assert "step 1:" in logs and "training backend:" in logs
    assert ow_stack.noisy_log_lines(stage.id) == []


def test_identical_resubmission_is_a_cache_hit_and_starts_no_gpu_stage(ow_stack, trained, sft_params):
    first, job_id, record = trained
    again = ow_stack.run("finetune/sft", sft_params())
    assert again.state.type == StateType.COMPLETED
    assert ow_stack.job_id_of(again) == job_id
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in ow_stack.task_runs(again.id, expect=("launch-gpu-stage",))}
    assert states["launch-gpu-stage"] == "Cached"
    assert len(ow_stack.gpu_stage_runs(job_id)) == 1
    with get_client(sync_client=True) as client:
        result = client.read_flow_run(again.id).state
    assert result.is_completed()


def test_changed_parameter_is_a_new_job(ow_stack, trained, sft_params):
    _, job_id, _ = trained
    from jobs.registry import get_job_spec
    from jobs.validation import check_inputs, validate_params

    spec = get_job_spec("finetune")
    changed = validate_params(spec, sft_params(seed=7))
    assert spec.job_id(changed, check_inputs(spec, changed, ow_stack.store).inputs) != job_id


def test_concurrent_identical_submissions_train_once(ow_stack, sft_params):
    assert_trained_once(ow_stack, submit_at_once(ow_stack, sft_params(seed=11)))


def test_resubmission_after_a_failure_trains_again(ow_stack, sft_params):
    # Long enough (360 steps) that the cancellation (the worker checks every 5 s) lands mid-run, even
    # on a loaded machine: with 120 steps a stage once finished first and stored its result.
    params = sft_params(seed=23, epochs=60)
    first = ow_stack.submit("finetune/sft", params)
    stage = _wait_for_running_gpu_stage(ow_stack, first.id)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(stage.id, Cancelling(message="cancelled by the test"), force=True)
    failed = ow_stack.wait(first.id)
    assert failed.state.type == StateType.FAILED
    assert "ended Cancelled" in failed.state.message or "Cancelled" in ow_stack.logs(first.id)
    job_id = ow_stack.job_id_of(failed)
    assert not ow_stack.store.exists(f"jobs/{job_id}/result.json")

    second = ow_stack.run("finetune/sft", params)
    assert second.state.type == StateType.COMPLETED, second.state.message
    stages = sorted(ow_stack.gpu_stage_runs(job_id), key=lambda run: run.created)
    assert [run.state.type for run in stages] == [StateType.CANCELLED, StateType.COMPLETED]
    assert ow_stack.store.exists(f"jobs/{job_id}/result.json")


def _wait_for_running_gpu_stage(ow_stack, control_run_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            control = client.read_flow_run(control_run_id)
        job_tags = [t for t in control.tags if t.startswith("ow-job:")]
        if job_tags:
            for stage in ow_stack.gpu_stage_runs(job_tags[0].split(":", 1)[1]):
                if stage.state.type == StateType.RUNNING:
                    return stage
        time.sleep(0.3)
    raise TimeoutError("the GPU stage never started running")
