"""A cache hit is served only while what it lists still exists; a user can force a re-run.

Through the real `finetune/sft` and `inference/batch` deployments on the embedded stack: the stored
adapter of a completed job is deleted (as a bucket lifecycle rule or a cleanup script would), then
the job is resubmitted and chained from.
"""

from __future__ import annotations

import json

from prefect.client.schemas.objects import StateType

SEED = 7311  # a job of this module's own: the session's shared trained job stays untouched


def _cached(ow_stack, run) -> bool:
    """Whether the control run's launch-gpu-stage task was served from the cache."""
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in ow_stack.task_runs(run.id, expect=("launch-gpu-stage",))}
    return states["launch-gpu-stage"] == "Cached"


def _gpu_stage_states(ow_stack, job_id: str) -> list[str]:
    return sorted(run.state.name for run in ow_stack.gpu_stage_runs(job_id))


def test_forced_rerun_and_a_job_whose_adapter_is_gone_runs_again_instead_of_a_stale_cache_hit(
    ow_stack, sft_params, tiny_model_dir, tmp_path
):
    params = sft_params(seed=SEED)
    first = ow_stack.run("finetune/sft", params)
    assert first.state.type == StateType.COMPLETED, first.state.message
    job_id = ow_stack.job_id_of(first)
    assert _gpu_stage_states(ow_stack, job_id) == ["Completed"]

    # force=true: the same job ID, a new GPU stage, the stored result replaced.
    forced = ow_stack.run("finetune/sft", {**params, "force": True})
    assert forced.state.type == StateType.COMPLETED, forced.state.message
    assert ow_stack.job_id_of(forced) == job_id
    assert _gpu_stage_states(ow_stack, job_id) == ["Completed", "Completed"]
    assert "runs again, not from the cache: force=true was given" in ow_stack.logs(forced.id)
    assert not _cached(ow_stack, forced)

    # The adapter disappears from the store.
    adapter_key = f"jobs/{job_id}/adapter"
    ow_stack.store.delete(adapter_key)
    assert not ow_stack.store.exists(adapter_key)

    # A job chained from it is refused before any GPU stage, naming the missing output.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    stages_before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    chained = ow_stack.run(
        "inference/batch", {"model": job_id, "input_file": ow_stack.upload(prompts, "conversations"), "max_tokens": 2}
    )
    assert chained.state.type == StateType.FAILED
    message = chained.state.message or ""
    assert f"fine-tuning job {job_id} completed, but its adapter" in message, message
    assert "no longer in the artifact store" in message, message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == stages_before

    # Resubmitting the job runs it again (no stale cache hit) and puts the adapter back.
    again = ow_stack.run("finetune/sft", params)
    assert again.state.type == StateType.COMPLETED, again.state.message
    assert not _cached(ow_stack, again)
    assert "no longer in the artifact store" in ow_stack.logs(again.id)
    assert _gpu_stage_states(ow_stack, job_id) == ["Completed"] * 3
    assert ow_stack.store.exists(f"{adapter_key}/adapter_config.json")

    # Now whole again: an identical submission is a cache hit with no new GPU stage.
    cached = ow_stack.run("finetune/sft", params)
    assert cached.state.type == StateType.COMPLETED
    assert _cached(ow_stack, cached)
    assert len(ow_stack.gpu_stage_runs(job_id)) == 3
