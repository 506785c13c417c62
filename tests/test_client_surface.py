"""OpenWeights' client surface on one job: `ow cancel` mid-training, restart, runs, download, find, validated_params.

One fine-tune serves every test here: it is cancelled through `ow cancel` while its GPU stage trains,
restarted, and then read back (its two runs, their logs, its outputs, its parameters).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from client.jobs import CANCELED, COMPLETED, FAILED, PENDING

OW = str(Path(sys.executable).parent / "ow")
SEED = 9151  # this module's job, told apart from every other test's
META = {"group": "client-surface", "try": 1}


def run_ow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


def _wait_for_training(ow_stack, job_id: str, timeout: float = 300):
    """The job's GPU stage, once its process runs (the training has started or is about to)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stage in ow_stack.gpu_stage_runs(job_id):
            if stage.state.type == StateType.RUNNING and stage.infrastructure_pid:
                return stage
        time.sleep(0.3)
    raise TimeoutError(f"the GPU stage of {job_id} never ran")


@pytest.fixture(scope="module")
def cancelled_by_cli(ow, ow_stack, sft_params):
    """A longer fine-tune cancelled with `ow cancel` while its GPU stage runs: (job, cancelled stage, ow's output)."""
    job = ow.fine_tuning.create(**sft_params(seed=SEED, epochs=1, max_steps=60, per_device_train_batch_size=4, meta=META))
    stage = _wait_for_training(ow_stack, job.id)
    cancelled = run_ow("cancel", job.id)
    stage = ow_stack.wait(stage.id, timeout=120)
    deadline = time.monotonic() + 120
    while job.refresh().status not in (CANCELED, FAILED):
        assert time.monotonic() < deadline, job.status
        time.sleep(0.5)
    return job, stage, cancelled


@pytest.fixture(scope="module")
def restarted(ow, cancelled_by_cli):
    job, _, _ = cancelled_by_cli
    again = job.restart()
    assert again.id == job.id and again.status == PENDING
    return again.wait(timeout=600)


def test_ow_cancel_stops_a_running_gpu_stage(cancelled_by_cli):
    job, stage, cancelled = cancelled_by_cli
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{job.id}:" in cancelled.stdout
    assert stage.state.type == StateType.CANCELLED, stage.state
    assert job.status in (CANCELED, FAILED)
    [run] = job.runs
    assert run.status == CANCELED and run.state_name == "Cancelled"


def test_restart_runs_the_job_again_as_a_second_run(ow, restarted):
    assert restarted.status == COMPLETED
    first, second = restarted.runs  # oldest first: runs[-1] is the latest, as in OpenWeights
    assert (first.status, second.status) == (CANCELED, COMPLETED)
    assert first.job_id == second.job_id == restarted.id and first["id"] != second.id
    assert "step 1:" in second.logs()
    assert "job " + restarted.id + " completed" in second.logs()
    # Restarting a completed job runs it again, as in OpenWeights: tests/test_run_events.py.


def test_download_takes_the_last_run_or_every_run(restarted, tmp_path):
    first, second = restarted.runs
    last = restarted.download(tmp_path / "last")
    assert (last / "adapter" / "adapter_config.json").exists()
    assert sorted(path.name for path in last.glob("*.log")) == [f"{second.id}.log"]
    every = restarted.download(tmp_path / "every", only_last_run=False)
    assert (every / "adapter" / "adapter_config.json").exists()
    assert (every / first.id / f"{first.id}.log").exists() and (every / second.id / f"{second.id}.log").exists()
    assert "step 1:" in (every / second.id / f"{second.id}.log").read_text()


def test_validated_params_fill_defaults_and_name_the_model_under_the_configured_organisation(ow, restarted, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("OW_HF_ORG", "surface-org")
    validated = ow.jobs.retrieve(restarted.id).params["validated_params"]
    assert validated["max_steps"] == 60 and validated["seed"] == SEED
    assert validated["packing"] is True and validated["lora_dropout"] == 0.0  # defaults filled
    assert validated["finetuned_model_id"] == f"surface-org/{tiny_model_dir.name}-{restarted.id}"


def test_find_filters_jobs_by_their_parameters(ow, restarted):
    assert [job.id for job in ow.jobs.find(seed=SEED)] == [restarted.id]
    assert [job.id for job in ow.jobs.find(meta={"group": "client-surface"})] == [restarted.id]
    assert [job.id for job in ow.jobs.find(validated_params={"seed": SEED, "max_steps": 60})] == [restarted.id]
    assert ow.jobs.find(seed=SEED, max_steps=61) == []
    assert ow.jobs.find(meta={"group": "client-surface", "try": 2}) == []


def test_files_get_by_id_and_the_preferences_purpose(ow, conversations_path, tmp_path):
    from compute.sample_datasets import preference_rows, write_jsonl

    uploaded = ow.files.upload(conversations_path, purpose="conversations")
    record = ow.files.get_by_id(uploaded["id"])
    assert record["id"] == uploaded["id"] and record["purpose"] == "conversations"
    assert record["filename"] == conversations_path.name and record["bytes"] == conversations_path.stat().st_size
    assert record["rows"] == 48
    with pytest.raises(LookupError, match="unknown file ID"):
        ow.files.get_by_id("conversations:file-" + "7" * 64)

    path = write_jsonl(tmp_path / "preferences.jsonl", preference_rows(4))
    as_alias = ow.files.upload(path, purpose="preferences")  # OpenWeights' cookbook spelling
    assert as_alias["id"].startswith("preference:file-")
    assert ow.files.upload(path, purpose="preference")["id"] == as_alias["id"]
    uploaded_by_cli = run_ow("files", "upload", str(path), "--purpose", "preferences")
    assert uploaded_by_cli.returncode == 0, uploaded_by_cli.stderr
    assert uploaded_by_cli.stdout.splitlines()[-1] == as_alias["id"]


def test_inference_takes_a_chat_template_and_a_broken_one_is_refused_before_any_run(ow, tiny_model_dir, tmp_path):
    """``ow.inference.create(chat_template=…)``: the job's chat rows are rendered with it, and a template
    Jinja cannot parse is refused at submission, naming the field."""
    from compute.sample_datasets import conversations_rows, write_jsonl
    from jobs.validation import InvalidJobError

    prompts = [{"messages": row["messages"][:1]} for row in conversations_rows(3)]
    file_id = ow.files.upload(write_jsonl(tmp_path / "prompts.jsonl", prompts), purpose="conversations")["id"]
    params = {"model": str(tiny_model_dir), "input_file": file_id, "max_tokens": 2, "temperature": 0}
    twice = "{% for m in messages %}{{ m['content'] }} {{ m['content'] }}\n{% endfor %}Answer:"
    default, templated = (
        ow.inference.create(**params).wait(timeout=600),
        ow.inference.create(**params, chat_template=twice).wait(timeout=600),
    )
    assert (default.status, templated.status) == (COMPLETED, COMPLETED)
    assert templated.id != default.id and templated.params["chat_template"] == twice
    # The prompts the model saw are the template's, token for token.
    from transformers import AutoTokenizer

    from compute.generation.prompts import encode_chat

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert default.metrics["prompt_tokens"] == sum(len(encode_chat(tokenizer, row["messages"])) for row in prompts)
    tokenizer.chat_template = twice
    assert templated.metrics["prompt_tokens"] == sum(len(encode_chat(tokenizer, row["messages"])) for row in prompts)
    assert templated.metrics["prompt_tokens"] != default.metrics["prompt_tokens"]

    with pytest.raises(InvalidJobError, match="chat_template") as refused:
        ow.inference.create(**params, chat_template="{% for m in messages %}{{ m }")
    assert "not a Jinja template" in str(refused.value)
