"""Evaluations through their deployments: inspect-ai, MMLU-Pro, and the sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from compute.sample_datasets import mmlu_pro_rows, write_jsonl

TASK_FILE = Path(__file__).parent / "data" / "inspect_tasks" / "arithmetic_tasks.py"


@pytest.fixture(scope="module")
def task_file(ow_stack):
    return ow_stack.upload(TASK_FILE, "inspect_task")


@pytest.fixture(scope="module")
def mmlu_file(ow_stack, tmp_path_factory):
    return ow_stack.upload(write_jsonl(tmp_path_factory.mktemp("mmlu") / "mmlu-pro.jsonl", mmlu_pro_rows()), "mmlu_pro")


def table_rows(artifact) -> list[dict]:
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def test_inspect_eval_runs_a_real_task_through_the_server_and_stores_a_readable_log(ow_stack, tiny_model_dir, trained_sft, task_file, tmp_path):
    from inspect_ai.log import read_eval_log

    _, adapter_job, _ = trained_sft
    params = {
        "model": str(tiny_model_dir),
        "lora_adapters": [adapter_job],
        "include_base_model": True,
        "eval_name": f"{task_file}@arithmetic",
        "task_args": {"count": 3},
        "max_tokens": 6,
        "temperature": 0,
        "max_model_len": 512,
    }
    run = ow_stack.run("eval/inspect", params)
    assert run.state.type == StateType.COMPLETED, run.state.message
    job_id = ow_stack.job_id_of(run)
    record = ow_stack.store.read_json(f"jobs/{job_id}/result.json")
    assert set(record["metrics"]["scores"]) == {str(tiny_model_dir), adapter_job}
    logs = [key for key in ow_stack.store.list(f"jobs/{job_id}/inspect-logs") if key.endswith(".eval")]
    assert len(logs) == 2  # one per evaluated model
    local = ow_stack.store.download_file(logs[0], tmp_path / Path(logs[0]).name)
    log = read_eval_log(str(local))
    assert log.status == "success" and log.eval.task.endswith("arithmetic") and len(log.samples) == 3
    [stage] = ow_stack.gpu_stage_runs(job_id)
    scores = next(a for a in ow_stack.artifacts(stage.id) if a.key and a.key.endswith("-scores"))
    assert ow_stack.noisy_log_lines(stage.id) == []
    assert {"model", "scorer", "metric", "value"} <= set(table_rows(scores)[0])


def test_mmlu_pro_stores_each_answer_and_a_table_that_matches_a_recount(ow_stack, tiny_model_dir, mmlu_file):
    params = {"model": str(tiny_model_dir), "dataset_file": mmlu_file, "max_tokens": 12, "chain_of_thought": False, "num_fewshot": 1, "max_model_len": 1024}
    run = ow_stack.run("eval/mmlu-pro", params)
    assert run.state.type == StateType.COMPLETED, run.state.message
    job_id = ow_stack.job_id_of(run)
    results = [json.loads(line) for line in ow_stack.store.read_bytes(f"jobs/{job_id}/mmlu-pro/model-0/results.jsonl").decode().splitlines()]
    assert len(results) == 12  # 4 test questions in each of 3 categories
    for row in results:
        assert {"raw_answer", "extracted_answer", "correct_answer", "correct", "category"} <= set(row), row
    recount = defaultdict(lambda: [0, 0, 0])
    for row in results:
        for key in (row["category"], "overall"):
            recount[key][0] += 1
            recount[key][1] += bool(row["correct"])
            recount[key][2] += row["extracted_answer"] is None
    [stage] = ow_stack.gpu_stage_runs(job_id)
    table = table_rows(next(a for a in ow_stack.artifacts(stage.id) if a.key and a.key.endswith("-accuracy")))
    assert {row["category"] for row in table} == set(recount)
    assert ow_stack.noisy_log_lines(stage.id) == []
    for row in table:
        n, correct, unparsable = recount[row["category"]]
        assert (row["n"], row["correct"], row["unparsable"]) == (n, correct, unparsable)
        assert row["accuracy"] == pytest.approx(correct / n)


def test_sweep_runs_each_pair_once_and_publishes_a_comparison_table(ow_stack, tiny_model_dir, trained_sft, task_file, mmlu_file):
    _, adapter_job, _ = trained_sft
    models = [str(tiny_model_dir), adapter_job]
    evals = [
        {"name": "arithmetic", "kind": "inspect", "params": {"eval_name": f"{task_file}@arithmetic_exact", "task_args": {"count": 4}, "max_tokens": 4, "temperature": 0, "max_model_len": 512}},
        {"name": "mmlu-pro", "kind": "mmlu-pro", "params": {"dataset_file": mmlu_file, "max_tokens": 8, "chain_of_thought": False, "limit": 6, "max_model_len": 1024}},
    ]
    first = ow_stack.run("eval/sweep", {"sweep_name": "test-sweep", "models": models, "evals": evals})
    assert first.state.type == StateType.COMPLETED, first.state.message
    evaluation_runs = ow_stack.flow_runs(tag="ow-sweep:test-sweep")
    assert len(evaluation_runs) == 2  # one job per evaluation, each scoring both models (grouped by base)
    versions = sweep_tables()
    assert len(versions) == 1
    table = versions[0]
    assert [row["model"] for row in table] == models
    assert all(isinstance(row[name], float) for row in table for name in ("arithmetic", "mmlu-pro"))  # 2 × 2 cells

    second = ow_stack.run("eval/sweep", {"sweep_name": "test-sweep", "models": models, "evals": evals})
    assert second.state.type == StateType.COMPLETED
    assert len(ow_stack.flow_runs(tag="ow-sweep:test-sweep")) == 2  # nothing re-run
    versions = sweep_tables()
    assert len(versions) == 2 and versions[0] == table  # a new version of the same table


def sweep_tables() -> list[list[dict]]:
    """Every version of the sweep's comparison table, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-sweep-test-sweep"])), sort=ArtifactSort.CREATED_DESC
        )
    return [table_rows(artifact) for artifact in artifacts]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"eval_name": "no_such_package/no_task"}, "eval_name:"),
        ({"eval_name": "TASK@missing_task"}, "has no @task named 'missing_task'"),
        ({"eval_name": "/tmp/tasks.py@arithmetic"}, "is a local path; upload the task file"),
        ({"eval_name": "TASK@arithmetic", "task_args": {"bogus": 1}}, "bogus"),
    ],
)
def test_bad_inspect_input_fails_before_any_gpu_stage(ow_stack, tiny_model_dir, task_file, change, expected):
    change = {key: value.replace("TASK", task_file) if isinstance(value, str) else value for key, value in change.items()}
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    run = ow_stack.run("eval/inspect", {"model": str(tiny_model_dir), "eval_name": f"{task_file}@arithmetic", **change})
    assert run.state.type == StateType.FAILED
    assert expected in run.state.message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before


def test_missing_dataset_and_malformed_mmlu_rows_are_refused(ow_stack, tiny_model_dir, tmp_path):
    from jobs.datasets import DatasetError

    rows = mmlu_pro_rows()
    rows[2] = {**rows[2], "answer": "Z"}
    with pytest.raises(DatasetError, match=r"mmlu.jsonl, line 3: .*answer"):
        ow_stack.upload(write_jsonl(tmp_path / "mmlu.jsonl", rows), "mmlu_pro")
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    run = ow_stack.run("eval/mmlu-pro", {"model": str(tiny_model_dir), "dataset_file": "mmlu_pro:file-" + "3" * 64})
    assert run.state.type == StateType.FAILED and "dataset_file: unknown file ID" in run.state.message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before


def test_prefect_deploy_creates_the_scheduled_sweep(ow_stack):
    inspected = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "inspect", "eval/sweep"], capture_output=True, text=True, check=True
    )
    assert "0 2 * * *" in inspected.stdout
    assert "nightly" in inspected.stdout
