"""Checkpoints outlive the job until its result record exists: a crash in between resumes, not restarts."""

from __future__ import annotations

import pytest

from store.artifact_store import ArtifactStore


def test_checkpoints_survive_a_crash_while_the_result_record_is_written(ow_stack, sft_params, monkeypatch):
    from flows.gpu_stage import gpu_stage

    job_id = "ftjob-" + "0" * 64 + "-record-after-checkpoints"  # the shape the GPU stage accepts
    params = sft_params(seed=53, epochs=1, max_steps=12, save_steps=4, per_device_train_batch_size=4)
    real_write_json = ArtifactStore.write_json

    def write_json_but_not_the_record(self, key, value):
        if key.endswith("/result.json"):
            raise OSError("the pod was lost while writing the result record")
        return real_write_json(self, key, value)

    monkeypatch.setattr(ArtifactStore, "write_json", write_json_but_not_the_record)
    with pytest.raises(OSError, match="result record"):
        gpu_stage(job_type="finetune", job_id=job_id, params=params)

    checkpoints = ow_stack.store.list(f"jobs/{job_id}/checkpoints")
    complete = [int(key.rsplit("checkpoint-", 1)[1].split("/")[0]) for key in checkpoints if key.endswith("/COMPLETE")]
    assert complete, "the checkpoints were deleted before the result record existed"

    monkeypatch.setattr(ArtifactStore, "write_json", real_write_json)
    record = gpu_stage(job_type="finetune", job_id=job_id, params=params)
    assert record["details"]["resumed_from_step"] == max(complete)  # not from scratch
    assert ow_stack.store.list(f"jobs/{job_id}/checkpoints") == []  # gone once the record exists
