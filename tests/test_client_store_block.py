"""``OpenWeights(store_block=…)``: the job runs against the store the client hashed and validated
against, not the worker's default; and the client itself re-submits a forced or stale job.

The fault before: the client uploaded and validated against its block, the control tier (and so the
GPU stage) ran against the worker's default store, and the job failed there: its input was not found.
"""

from __future__ import annotations

import json

from prefect.client.schemas.objects import StateType

from client.jobs import COMPLETED


def test_a_job_submitted_with_another_store_block_reads_and_writes_that_store(ow_stack, tiny_model_dir, tmp_path):
    from blocks.storage import ArtifactStoreBlock
    from client import OpenWeights

    other_root = tmp_path / "team-store"
    ArtifactStoreBlock(base_url=str(other_root)).save("team-local", overwrite=True)
    ow = OpenWeights(store_block="team-local")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Say hi"}]}) + "\n")
    file_id = ow.files.upload(prompts, purpose="conversations")["id"]
    assert not ow_stack.store.exists(f"files/{file_id.split('-', 1)[1]}")  # only in the team's store

    job = ow.inference.create(model=str(tiny_model_dir), input_file=file_id, max_tokens=2, temperature=0).wait(timeout=600)
    assert job.status == COMPLETED, job.logs()[-3000:]
    assert (other_root / "jobs" / job.id / "result.json").is_file()
    assert (other_root / "jobs" / job.id / "outputs.jsonl").is_file()
    assert not ow_stack.store.exists(f"jobs/{job.id}/result.json")
    [stage] = ow_stack.gpu_stage_runs(job.id)
    assert stage.state.type == StateType.COMPLETED and stage.parameters["store_block"] == "team-local"

    # The client's own check: a completed job is returned as it is, unless forced or its output is gone.
    assert ow.inference.create(model=str(tiny_model_dir), input_file=file_id, max_tokens=2, temperature=0).status == COMPLETED
    (other_root / "jobs" / job.id / "outputs.jsonl").unlink()
    rerun = ow.inference.create(model=str(tiny_model_dir), input_file=file_id, max_tokens=2, temperature=0)
    assert rerun.id == job.id and rerun.status != COMPLETED  # submitted again, not the stale record
    assert rerun.wait(timeout=600).status == COMPLETED
    assert (other_root / "jobs" / job.id / "outputs.jsonl").is_file()
    forced = ow.inference.create(model=str(tiny_model_dir), input_file=file_id, max_tokens=2, temperature=0, force=True)
    assert forced.status != COMPLETED and forced.wait(timeout=600).status == COMPLETED
    assert len(ow_stack.gpu_stage_runs(job.id)) == 3
