"""The artifact store on a real S3-protocol server (moto, loopback), configured by a Prefect block."""

import json

import pytest

from blocks.storage import ArtifactStoreBlock


@pytest.fixture
def s3_block(s3_server, request):
    return ArtifactStoreBlock(
        base_url=f"s3://{s3_server.bucket}/{request.node.name}",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
    )


def test_objects_round_trip_through_s3(s3_server, s3_block, tmp_path):
    store = s3_block.artifact_store()
    store.write_json("jobs/x/result.json", {"ok": True})
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"\x00" * 1000)
    uri = store.upload_tree(tmp_path / "adapter", "jobs/x/adapter")
    assert uri == f"s3://{s3_server.bucket}/test_objects_round_trip_through_s3/jobs/x/adapter"
    assert store.read_json("jobs/x/result.json") == {"ok": True}
    assert store.list("jobs/x") == ["jobs/x/adapter/adapter_config.json", "jobs/x/adapter/weights.bin", "jobs/x/result.json"]
    assert s3_server.keys("test_objects_round_trip_through_s3/") == [
        "test_objects_round_trip_through_s3/jobs/x/adapter/adapter_config.json",
        "test_objects_round_trip_through_s3/jobs/x/adapter/weights.bin",
        "test_objects_round_trip_through_s3/jobs/x/result.json",
    ]
    store.download_tree("jobs/x/adapter", tmp_path / "back")
    assert (tmp_path / "back" / "weights.bin").read_bytes() == b"\x00" * 1000


def test_uploads_to_s3_are_content_addressed_and_stored_once(s3_server, s3_block, tmp_path):
    from store.files import read_file_bytes, upload_file

    store = s3_block.artifact_store()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    first = upload_file(store, path, "conversations")
    second = upload_file(store, path, "conversations")
    assert first.id == second.id
    contents = [k for k in s3_server.keys("test_uploads_to_s3") if k.endswith("/content")]
    assert len(contents) == 1
    assert read_file_bytes(store, first.id) == path.read_bytes()


def test_credentials_are_secret_in_the_block(s3_block, s3_server):
    assert s3_server.secret_key not in repr(s3_block)
    assert s3_server.secret_key not in s3_block.model_dump_json()
    assert s3_server.secret_key not in repr(s3_block.artifact_store())


def test_prefect_results_are_stored_in_s3_through_the_block(prefect_server, s3_server, s3_block):
    from prefect import flow, task

    s3_block.save("s3-results-test", overwrite=True)
    block = ArtifactStoreBlock.load("s3-results-test")
    calls = []

    @task(cache_key_fn=lambda context, parameters: f"answer-{parameters['x']}", persist_result=True, result_serializer="json")
    def answer(x: int) -> dict:
        calls.append(x)
        return {"answer": x * 2}

    @flow
    def uses_cache(x: int) -> dict:
        return answer.with_options(result_storage=block)(x)

    assert uses_cache(21) == {"answer": 42}
    assert uses_cache(21) == {"answer": 42}
    assert calls == [21]  # the second call was a cache hit, read back from S3
    assert "test_prefect_results_are_stored_in_s3_through_the_block/prefect-results/answer-21" in s3_server.keys()


def test_a_file_changed_before_its_upload_to_s3_is_refused_and_stores_nothing(s3_server, s3_block, tmp_path):
    from store.files import FileChangedError, check_file, store_checked_file

    store = s3_block.artifact_store()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    record = check_file(path, "conversations")  # what `ow files upload` hashes and validates
    path.write_text(json.dumps({"text": "hello, changed"}) + "\n")  # the file changes before it is sent
    with pytest.raises(FileChangedError, match="d.jsonl changed while it was being uploaded"):
        store_checked_file(store, record, path)
    assert s3_server.keys("test_a_file_changed_before_its_upload_to_s3") == []


def test_bad_content_on_s3_is_repaired_by_the_next_upload(s3_server, s3_block, tmp_path):
    import hashlib

    from store.files import read_file_bytes, upload_file

    store = s3_block.artifact_store()
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store.write_bytes(f"files/{digest}/content", path.read_bytes()[:5])  # what a non-atomic write left behind
    record = upload_file(store, path, "conversations")
    assert read_file_bytes(store, record.id) == path.read_bytes()


def test_the_store_takes_its_keys_from_a_prefect_aws_credentials_block_and_follows_its_rotation(prefect_server, s3_server):
    """One credential, kept in prefect-aws' AwsCredentials block (endpoint URL in its client parameters):
    the store block holds a reference to it, not a copy of the keys, and a rotation reaches the store."""
    from prefect.client.orchestration import get_client
    from prefect_aws import AwsClientParameters, AwsCredentials

    from blocks.storage import load_artifact_store, load_store_block

    AwsCredentials(
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint_url),
    ).save("team-aws", overwrite=True)
    ArtifactStoreBlock(
        base_url=f"s3://{s3_server.bucket}/aws-credentials-block", aws_credentials=AwsCredentials.load("team-aws")
    ).save("s3-with-aws-credentials", overwrite=True)

    store = load_store_block("s3-with-aws-credentials").artifact_store()
    store.write_json("jobs/y/result.json", {"ok": True})
    assert "aws-credentials-block/jobs/y/result.json" in s3_server.keys("aws-credentials-block/")
    assert store.read_json("jobs/y/result.json") == {"ok": True}
    assert load_artifact_store("s3-with-aws-credentials").read_json("jobs/y/result.json") == {"ok": True}  # as ow reads it

    with get_client(sync_client=True) as client:  # what the server keeps for the store block: a reference
        document = client.read_block_document_by_name("s3-with-aws-credentials", "ow-artifact-store")
        credentials = client.read_block_document_by_name("team-aws", "aws-credentials")
    assert str(document.block_document_references["aws_credentials"]["block_document"]["id"]) == str(credentials.id)

    rotated = AwsCredentials.load("team-aws")
    rotated.aws_access_key_id = "rotated-access-key"
    rotated.save("team-aws", overwrite=True)
    assert load_store_block("s3-with-aws-credentials").storage_options()["key"] == "rotated-access-key"
    assert s3_server.secret_key not in repr(load_store_block("s3-with-aws-credentials"))  # the secret stays secret


def test_a_store_block_with_both_kinds_of_credentials_is_refused_naming_the_fields(s3_server):
    from prefect_aws import AwsCredentials

    with pytest.raises(ValueError, match="aws_credentials: set either an AwsCredentials block or aws_access_key_id"):
        ArtifactStoreBlock(
            base_url=f"s3://{s3_server.bucket}/both",
            aws_access_key_id="key",
            aws_credentials=AwsCredentials(aws_access_key_id="other"),
        )


def test_ow_reads_a_store_block_with_its_own_keys_as_the_block_would(prefect_server, s3_server, s3_block):
    """``ow`` builds such a store from the saved block document, without the block class (and prefect-aws):
    the same bucket, prefix, keys and endpoint."""
    from blocks.storage import load_artifact_store

    s3_block.save("s3-with-own-keys", overwrite=True)
    s3_block.artifact_store().write_json("jobs/z/result.json", {"ok": True})
    store = load_artifact_store("s3-with-own-keys")
    assert store.read_json("jobs/z/result.json") == {"ok": True}
    assert store.write_json("jobs/z/more.json", {}) == f"{s3_block.base_url}/jobs/z/more.json"
