"""Bad input fails the control flow before any GPU stage, naming the field, file and line,
and touches nothing already stored."""

from __future__ import annotations

import json

import pytest
from prefect.client.schemas.objects import StateType


def store_snapshot(store) -> dict[str, int]:
    return {key: store.size(key) for key in store.list("")}


def gpu_stage_count(ow_stack) -> int:
    return len(ow_stack.flow_runs(flow_name="gpu-stage"))


@pytest.fixture(scope="module")
def job_level_bad_file(ow_stack, tmp_path_factory) -> str:
    """Valid for upload (conversations), but line 3 has no assistant turn to train on."""
    path = tmp_path_factory.mktemp("bad") / "no-answer.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "3+3?"}]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ow_stack.upload(path, "conversations")


CASES = {
    "invalid parameter": ({"lora_dropout": 3.0}, ["lora_dropout: Dropout rate must be between 0 and 1"]),
    "unknown file ID": ({"training_file": "conversations:file-" + "e" * 64}, ["training_file: unknown file ID"]),
    "malformed file ID": ({"training_file": "file-123"}, ["training_file", "'file-123' is not a file ID"]),
    "missing model path": ({"model": "/nonexistent/models/llama"}, ["model: local path /nonexistent/models/llama does not exist"]),
    "name template reaching into Python": (
        {"finetuned_model_id": "{org_id}/{model_name.__class__.__init__.__globals__}"},
        ["finetuned_model_id: {model_name.__class__.__init__.__globals__} is not a placeholder"],
    ),
    # The server's schema check (Python's re, where $ also matches before a final newline) lets this one
    # through; the flow's own parameter validation refuses it.
    "job ID suffix with a newline": ({"job_id_suffix": "try2\n"}, ["job_id_suffix", "String should match pattern"]),
    "learning rate that is not finite": ({"learning_rate": "1e308 * 10"}, ["learning_rate: Learning rate must be a finite number"]),
    "preference file for SFT": (
        {"training_file": "preference:file-" + "f" * 64},
        ["training_file: loss='sft' trains on a conversations file"],
    ),
}


def test_bad_input_fails_before_any_gpu_stage_and_touches_nothing(ow_stack, sft_params, job_level_bad_file):
    cases = dict(CASES)
    cases["malformed dataset for the job"] = (
        {"training_file": job_level_bad_file},
        ["training_file:", "no-answer.jsonl", "line 3: messages has no assistant turn"],
    )
    before_store = store_snapshot(ow_stack.store)
    before_stages = gpu_stage_count(ow_stack)
    submitted = {name: ow_stack.submit("finetune/sft", sft_params(**change)) for name, (change, _) in cases.items()}
    for name, run in submitted.items():
        finished = ow_stack.wait(run.id, timeout=300)
        assert finished.state.type == StateType.FAILED, name
        message = finished.state.message + "\n" + ow_stack.logs(run.id)
        for expected in cases[name][1]:
            assert expected in message, f"{name}: {expected!r} not in {message!r}"
        task_states = {task.name.rsplit("-", 1)[0]: task.state.type for task in ow_stack.task_runs(run.id)}
        assert "launch-gpu-stage" not in task_states, name
    assert gpu_stage_count(ow_stack) == before_stages
    assert store_snapshot(ow_stack.store) == before_store


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"epochs": "many"}, "epochs"),
        ({"r": 0}, "r"),
        ({"lora_bias": "some"}, "lora_bias"),
        ({"job_id_suffix": "../../x"}, "job_id_suffix"),
    ],
)
def test_parameters_breaking_the_deployment_schema_are_refused_at_submission(ow_stack, sft_params, change, field):
    """The deployment's parameter schema (typed, bounded) is enforced by the server itself."""
    from prefect.exceptions import PrefectHTTPStatusError

    before_stages = gpu_stage_count(ow_stack)
    with pytest.raises(PrefectHTTPStatusError) as refused:
        ow_stack.submit("finetune/sft", sft_params(**change))
    assert f"Validation failed for field '{field}'" in str(refused.value)
    assert gpu_stage_count(ow_stack) == before_stages
