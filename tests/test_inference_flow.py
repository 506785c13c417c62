"""`inference/batch` through the deployment, with a tiny adapter trained in the tests."""

from __future__ import annotations

import json

import pytest
from prefect.client.schemas.objects import StateType

ROWS = [
    {"messages": [{"role": "user", "content": "What is 1 plus 2?"}]},
    {"text": "3 plus 4 is"},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 5 plus 1?"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2 plus 2?"}]}], "meta": {"id": 4}},
    {"text": "9 plus 0 is"},
]


@pytest.fixture(scope="module")
def input_file(ow_stack, tmp_path_factory):
    path = tmp_path_factory.mktemp("inference") / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return ow_stack.upload(path, "conversations")


def outputs_of(ow_stack, run):
    job_id = ow_stack.job_id_of(run)
    record = ow_stack.store.read_json(f"jobs/{job_id}/result.json")
    assert record["outputs"]["outputs"].endswith(f"jobs/{job_id}/outputs.jsonl")
    lines = ow_stack.store.read_bytes(f"jobs/{job_id}/outputs.jsonl").decode().splitlines()
    return job_id, record, [json.loads(line) for line in lines]


def test_batch_inference_with_a_trained_adapter_honours_the_sampling_options(ow_stack, trained_sft, input_file):
    _, adapter_job, _ = trained_sft
    params = {
        "model": adapter_job,
        "input_file": input_file,
        "max_tokens": 5,
        "temperature": 1.0,
        "n_completions_per_prompt": 2,
        "logprobs": 2,
        "stop": ["."],
        "seed": 3,
    }
    run = ow_stack.run("inference/batch", params)
    assert run.state.type == StateType.COMPLETED, run.state.message
    job_id, record, outputs = outputs_of(ow_stack, run)
    assert len(outputs) == len(ROWS)
    for source, row in zip(ROWS, outputs, strict=True):
        assert {key: row[key] for key in source} == source  # input kept, in input order
        assert isinstance(row["completion"], list) and len(row["completion"]) == 2
        assert all("." not in completion for completion in row["completion"])
        assert len(row["logprobs"]) == 2
        for tokens in row["logprobs"]:
            assert 1 <= len(tokens) <= 5
            assert all(len(token["top_logprobs"]) == 2 and token["logprob"] <= 0 for token in tokens)
    assert record["metrics"]["rows"] == len(ROWS)
    [stage] = ow_stack.gpu_stage_runs(job_id)
    assert any(a.key and a.key.endswith("-preview") for a in ow_stack.artifacts(stage.id))
    assert ow_stack.noisy_log_lines(stage.id) == []

    again = ow_stack.run("inference/batch", params)
    assert again.state.type == StateType.COMPLETED
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in ow_stack.task_runs(again.id, expect=("launch-gpu-stage",))}
    assert states["launch-gpu-stage"] == "Cached"
    assert len(ow_stack.gpu_stage_runs(job_id)) == 1


def test_greedy_max_tokens_bounds_every_completion(ow_stack, tiny_model_dir, input_file):
    run = ow_stack.run("inference/batch", {"model": str(tiny_model_dir), "input_file": input_file, "max_tokens": 3, "temperature": 0, "logprobs": 1})
    assert run.state.type == StateType.COMPLETED, run.state.message
    _, _, outputs = outputs_of(ow_stack, run)
    assert [len(row["logprobs"]) for row in outputs] == [3] * len(ROWS)
    assert all(isinstance(row["completion"], str) for row in outputs)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": "/nonexistent/model"}, "model: local path /nonexistent/model does not exist"),
        ({"input_file": "conversations:file-" + "1" * 64}, "input_file: unknown file ID"),
    ],
)
def test_bad_inference_input_is_rejected_before_any_gpu_stage(ow_stack, tiny_model_dir, input_file, change, expected):
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    run = ow_stack.run("inference/batch", {"model": str(tiny_model_dir), "input_file": input_file, **change})
    assert run.state.type == StateType.FAILED
    assert expected in run.state.message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before


def test_malformed_rows_and_non_positive_max_tokens_are_refused(ow_stack, tiny_model_dir, tmp_path):
    from prefect.exceptions import PrefectHTTPStatusError

    from jobs.datasets import DatasetError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": 7}]}) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 2: messages\[0\].content"):
        ow_stack.upload(bad, "conversations")
    with pytest.raises(PrefectHTTPStatusError, match="max_tokens"):
        ow_stack.submit("inference/batch", {"model": str(tiny_model_dir), "input_file": "conversations:file-" + "2" * 64, "max_tokens": 0})
