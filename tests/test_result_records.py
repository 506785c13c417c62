"""The control tier's cached results are JSON only: a pickle record planted in the store is never unpickled.

A GPU stage (a job's own code) can write to the artifact store, and the gpu-stage task's cache record
lives there too (``prefect-results/<job_id>``). Prefect deserializes a record with the serializer the
record names, so a planted pickle record would run code on the control worker at the next cache hit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import CompressedSerializer, JSONSerializer, PickleSerializer

from blocks.storage import (
    RESULTS_PREFIX,
    ArtifactStoreBlock,
    UnsafeResultRecordError,
    check_json_result_record,
)

JOB_ID = "ftjob-" + "5" * 64


class CreatesFileWhenUnpickled:
    """What an attacker pickles: unpickling calls ``Path.touch(path)``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def record_bytes(result, serializer) -> bytes:
    return ResultRecord(metadata=ResultRecordMetadata(storage_key=JOB_ID, serializer=serializer), result=result).serialize()


def forged_json_record(result_text: str = '{"ok": true}', **serializer_fields) -> bytes:
    """A record as Prefect writes one with its json serializer, with serializer fields changed by hand."""
    record = json.loads(record_bytes({"ok": True}, JSONSerializer()))
    record["metadata"]["serializer"].update(serializer_fields)
    record["result"] = result_text
    return json.dumps(record).encode()


def test_a_planted_pickle_record_is_refused_at_the_cache_hit_and_never_unpickled(prefect_server, tmp_path):
    from prefect import flow, task

    from tasks.job_control import _job_id_cache_key

    ArtifactStoreBlock(base_url=str(tmp_path / "store")).save("result-records-test", overwrite=True)
    block = ArtifactStoreBlock.load("result-records-test")
    marker = tmp_path / "pwned"
    planted = record_bytes(CreatesFileWhenUnpickled(marker), PickleSerializer())
    block.artifact_store().write_bytes(f"{RESULTS_PREFIX}/{JOB_ID}", planted)

    with pytest.raises(UnsafeResultRecordError, match=rf"^refusing the result record {RESULTS_PREFIX}/{JOB_ID}: it names the 'pickle' serializer"):
        block.read_path(JOB_ID)

    runs = []

    # The gpu-stage task's caching, as tasks.job_control.launch_gpu_stage declares it.
    @task(cache_key_fn=_job_id_cache_key, persist_result=True, result_serializer="json")
    def gpu_stage_task(job_id: str) -> dict:
        runs.append(job_id)
        return {"job_id": job_id, "status": "completed"}

    @flow
    def control(job_id: str) -> dict:
        return gpu_stage_task.with_options(result_storage=block)(job_id)

    assert control(JOB_ID) == {"job_id": JOB_ID, "status": "completed"}
    assert not marker.exists(), "the planted record was unpickled on the control tier"
    assert runs == [JOB_ID]  # not a cache hit: the stage's own result was computed and stored
    rewritten = json.loads(block.read_path(JOB_ID))
    assert rewritten["metadata"]["serializer"]["type"] == "json"
    assert control(JOB_ID) == {"job_id": JOB_ID, "status": "completed"} and runs == [JOB_ID]  # now a real cache hit


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (record_bytes({"ok": True}, PickleSerializer()), "it names the 'pickle' serializer"),
        (record_bytes({"ok": True}, CompressedSerializer(serializer=PickleSerializer())), "it names the 'compressed' serializer"),
        (json.dumps({"metadata": {"storage_key": JOB_ID}, "result": "gAR9lC4="}).encode(), "names no serializer, so Prefect would unpickle"),
        (json.dumps({"serializer": {"type": "pickle"}, "data": "gAR9lC4="}).encode(), "it names the 'pickle' serializer"),
        (forged_json_record(jsonlib="pickle"), "sets jsonlib='pickle'"),
        (forged_json_record(object_decoder="subprocess.run"), "sets object_decoder='subprocess.run'"),
        (forged_json_record(loads_kwargs={"parse_int": "os.system"}), "sets loads_kwargs="),
        (forged_json_record(json.dumps({"a": [{"__class__": "os.Foo", "data": 1}]})), "build a Python object of type 'os.Foo'"),
        (forged_json_record("not json"), "its result is not JSON"),
        (b"\x80\x04\x95 not json at all", "it is not a JSON result record"),
        (b"[" * 100_000 + b"]" * 100_000, "it is not a JSON result record"),
    ],
)
def test_records_prefect_would_not_read_as_plain_json_are_refused(content, expected):
    with pytest.raises(UnsafeResultRecordError, match="^refusing the result record prefect-results/x: ") as caught:
        check_json_result_record(content, "prefect-results/x")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "result", [{"job_id": JOB_ID, "outputs": {"adapter": "s3://b/x"}, "metrics": {"loss": 0.5}}, RuntimeError("stage failed"), None]
)
def test_records_prefect_itself_writes_for_the_gpu_stage_task_are_accepted(result):
    content = record_bytes(result, JSONSerializer())
    assert check_json_result_record(content, "prefect-results/x") is content
    assert ResultRecord.deserialize(content).result is not None or result is None
