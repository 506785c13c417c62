"""Journaled rows outlive a lost GPU-stage attempt and are deleted once the job's result record exists."""

from __future__ import annotations

import json

import pytest

from compute.sample_datasets import write_jsonl


class PodLost(Exception):
    """Stands in for the pod disappearing between two batches."""


def test_a_recovered_inference_stage_resumes_its_rows_and_deletes_them_after_the_record(
    ow_stack, tiny_model_dir, tmp_path, monkeypatch
):
    import compute.generation.batch
    import compute.row_journal
    from flows.gpu_stage import gpu_stage
    from tasks.reporting import PrefectReporter

    monkeypatch.setattr(compute.row_journal, "DEFAULT_CHUNK_ROWS", 1)  # a chunk per batch
    monkeypatch.setitem(compute.generation.batch.DEFAULT_BATCH_SIZE, "transformers", 2)
    rows = [{"text": f"{number} plus 1 is", "id": number} for number in range(6)]
    input_file = ow_stack.upload(write_jsonl(tmp_path / "prompts.jsonl", rows), "conversations")
    params = {"model": str(tiny_model_dir), "input_file": input_file, "max_tokens": 3, "temperature": 0}
    job_id = "inferencejob-" + "0" * 64 + "-resumed-rows"  # the shape the GPU stage accepts
    real_progress = PrefectReporter.progress

    def progress_until_the_pod_is_lost(self, done, total, description=""):
        if done >= 4:
            raise PodLost(f"the pod was lost after {done} of {total} rows")
        return real_progress(self, done, total, description)

    monkeypatch.setattr(PrefectReporter, "progress", progress_until_the_pod_is_lost)
    with pytest.raises(PodLost):
        gpu_stage(job_type="inference", job_id=job_id, params=params)
    assert len(ow_stack.store.list(f"jobs/{job_id}/partial/outputs")) == 2  # rows 0-1 and 2-3
    assert not ow_stack.store.exists(f"jobs/{job_id}/result.json")

    monkeypatch.setattr(PrefectReporter, "progress", real_progress)
    record = gpu_stage(job_type="inference", job_id=job_id, params=params)
    assert record["metrics"]["resumed_rows"] == 4 and record["metrics"]["rows"] == 6
    assert ow_stack.store.list(f"jobs/{job_id}/partial") == []  # gone once the record exists
    lines = ow_stack.store.read_bytes(f"jobs/{job_id}/outputs.jsonl").decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(6))
