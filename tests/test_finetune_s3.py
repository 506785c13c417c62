"""A fine-tuning job whose artifact store (and Prefect result storage) is S3 on a loopback server."""

from __future__ import annotations

import pytest

from blocks.storage import ArtifactStoreBlock


@pytest.fixture
def s3_store_block(prefect_server, s3_server, monkeypatch):
    block = ArtifactStoreBlock(
        base_url=f"s3://{s3_server.bucket}/e2e",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
    )
    block.save("s3-e2e", overwrite=True)
    monkeypatch.setenv("OW_STORE_BLOCK", "s3-e2e")
    return block


def test_sft_job_on_s3_stores_adapter_result_and_cache_in_the_bucket(ow_stack, s3_store_block, s3_server, sft_params, conversations_path):
    from flows.finetune import finetune
    from store.files import upload_file

    store = s3_store_block.artifact_store()
    file_id = upload_file(store, conversations_path, "conversations").id
    params = sft_params(training_file=file_id, epochs=1, seed=5)

    first = finetune(**params)  # control tier here; the GPU stage runs on the ow-gpu worker
    job_id = first["job_id"]
    keys = s3_server.keys("e2e/")
    assert f"e2e/jobs/{job_id}/result.json" in keys
    assert f"e2e/jobs/{job_id}/adapter/adapter_model.safetensors" in keys
    assert f"e2e/prefect-results/{job_id}" in keys  # the cache record lives in the same bucket
    assert first["outputs"]["adapter"] == f"s3://{s3_server.bucket}/e2e/jobs/{job_id}/adapter"
    assert first["cached"] is False

    again = finetune(**params)
    assert again["cached"] is True and again["job_id"] == job_id
    assert len(ow_stack.gpu_stage_runs(job_id)) == 1
    # The S3 secret never reaches logs of either tier.
    [stage] = ow_stack.gpu_stage_runs(job_id)
    assert s3_server.secret_key not in ow_stack.logs(stage.id)
