"""The fine-tuning family through its deployments: DPO, ORPO, chaining, callbacks, events, resume."""

from __future__ import annotations

import os
import signal
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from compute.sample_datasets import preference_rows
from tests.fixtures.jobs import FAST_SFT
from tests.model_loss import preference_losses


def preference_params(tiny_model_dir, preference_file, **overrides):
    return {"model": str(tiny_model_dir), "training_file": preference_file, **FAST_SFT, "learning_rate": 0.005, **overrides}


@pytest.mark.parametrize("loss", ["dpo", "orpo"])
def test_preference_deployment_lowers_its_loss_on_the_training_data(ow_stack, tiny_model_dir, preference_file, loss, tmp_path):
    run = ow_stack.run(f"finetune/{loss}", preference_params(tiny_model_dir, preference_file))
    assert run.state.type == StateType.COMPLETED, run.state.message
    job_id = ow_stack.job_id_of(run)
    record = ow_stack.store.read_json(f"jobs/{job_id}/result.json")
    assert record["params"]["loss"] == loss
    adapter = ow_stack.store.download_tree(f"jobs/{job_id}/adapter", tmp_path / "adapter")
    rows = preference_rows(48)
    before = preference_losses(tiny_model_dir, rows)[loss]
    after = preference_losses(tiny_model_dir, rows, adapter)[loss]
    assert after < before, (loss, before, after)


def test_a_later_sft_job_can_start_from_an_earlier_jobs_output(ow_stack, trained_sft, sft_params):
    _, parent_id, parent = trained_sft
    run = ow_stack.run("finetune/sft", sft_params(model=parent_id, epochs=1))
    assert run.state.type == StateType.COMPLETED, run.state.message
    child_id = ow_stack.job_id_of(run)
    record = ow_stack.store.read_json(f"jobs/{child_id}/result.json")
    assert child_id != parent_id
    assert record["base_model"] == parent_id
    assert ow_stack.store.exists(f"jobs/{child_id}/adapter/adapter_model.safetensors")


def test_callbacks_eval_and_events_show_up_in_the_flow_run(ow_stack, sft_params, conversations_file):
    params = sft_params(
        seed=31,
        test_file=conversations_file,
        test_file_eval_strategy="steps",
        test_file_eval_steps=4,
        logp_callback_datasets={"heldout": conversations_file},
        eval_every_n_steps=3,
        sampling_callbacks=[{"dataset": conversations_file, "eval_steps": 6, "max_tokens": 6, "tag": "arith-samples"}],
        save_steps=5,
    )
    run = ow_stack.run("finetune/sft", params)
    assert run.state.type == StateType.COMPLETED, run.state.message
    job_id = ow_stack.job_id_of(run)
    [stage] = ow_stack.gpu_stage_runs(job_id)
    artifacts = ow_stack.artifacts(stage.id)
    *_, metrics = (a for a in artifacts if a.key and a.key.endswith("-metrics"))  # the latest version
    columns = set(metrics.data[0]) if isinstance(metrics.data, list) else set(__import__("json").loads(metrics.data)[0])
    assert {"eval_loss", "heldout_loss", "heldout_logp"} <= columns
    samples = next(a for a in artifacts if a.key and a.key.endswith("-arith-samples"))
    sample_rows = samples.data if isinstance(samples.data, list) else __import__("json").loads(samples.data)
    assert sample_rows and {"step", "prompt", "completion"} <= set(sample_rows[0])

    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = {"ow.job.started", "ow.job.checkpoint.saved", "ow.job.completed"}
    deadline = time.monotonic() + 60  # the server persists events asynchronously
    names: set[str] = set()
    while not wanted <= names and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                EventFilter(event=EventNameFilter(prefix=["ow.job."]), resource=EventResourceFilter(id=[f"ow.job.{job_id}"])),
                limit=50,
            )
        names = {event.event for event in page.events}
        time.sleep(1)
    assert wanted <= names


def test_killed_training_is_recovered_and_resumes_from_its_last_checkpoint(ow_stack, sft_params):
    """The stage's process is killed (its pod lost) mid-training: the control flow starts the stage
    again by itself, under the same job ID, and training resumes from the last complete checkpoint."""
    params = sft_params(seed=47, epochs=1, max_steps=160, save_steps=5, per_device_train_batch_size=4)
    first = ow_stack.submit("finetune/sft", params)
    stage, job_id = _running_stage(ow_stack, first.id)
    checkpoints = f"jobs/{job_id}/checkpoints"
    deadline = time.monotonic() + 300
    while not any(key.endswith("/COMPLETE") for key in ow_stack.store.list(checkpoints)):
        assert time.monotonic() < deadline, "no checkpoint was ever completed"
        time.sleep(0.1)
    with get_client(sync_client=True) as client:
        pid = int(str(client.read_flow_run(stage.id).infrastructure_pid).rsplit(":", 1)[-1])
    os.kill(pid, signal.SIGKILL)  # the pod is lost mid-training
    crashed = ow_stack.wait(stage.id)
    assert crashed.state.type == StateType.CRASHED
    complete = sorted(int(k.split("checkpoint-")[1].split("/")[0]) for k in ow_stack.store.list(checkpoints) if k.endswith("/COMPLETE"))
    assert complete and complete[-1] < 160

    recovered = ow_stack.wait(first.id)  # no new submission

    assert recovered.state.type == StateType.COMPLETED, recovered.state.message
    assert "Recovering job" in ow_stack.logs(first.id)
    stages = sorted(ow_stack.gpu_stage_runs(job_id), key=lambda run: run.created)
    assert [run.state.type for run in stages] == [StateType.CRASHED, StateType.COMPLETED]
    record = ow_stack.store.read_json(f"jobs/{job_id}/result.json")
    resumed = record["details"]["resumed_from_step"]
    assert resumed == complete[-1]
    assert record["metrics"]["global_step"] == 160
    logged_steps = [entry["step"] for entry in record["details"]["metrics_history"] if "loss" in entry]
    assert logged_steps[0] == resumed + 1  # training continued after the checkpoint, not from step 0
    adapter_files = ow_stack.store.list(f"jobs/{job_id}/adapter")
    assert [key for key in adapter_files if key.endswith(".safetensors")] == [f"jobs/{job_id}/adapter/adapter_model.safetensors"]
    assert ow_stack.store.list(checkpoints) == []


def _running_stage(ow_stack, control_run_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            control = client.read_flow_run(control_run_id)
        tags = [tag for tag in control.tags if tag.startswith("ow-job:")]
        if tags:
            job_id = tags[0].split(":", 1)[1]
            for stage in ow_stack.gpu_stage_runs(job_id):
                if stage.state.type == StateType.RUNNING and stage.infrastructure_pid:
                    return stage, job_id
        time.sleep(0.2)
    raise TimeoutError("the GPU stage never started")
