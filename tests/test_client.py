"""The OpenWeights-style client and the `ow` command line against the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from client.jobs import CANCELED, COMPLETED, FAILED, IN_PROGRESS, PENDING, job_status
from tests.fixtures.jobs import FAST_SFT

OW = str(Path(sys.executable).parent / "ow")


@pytest.mark.parametrize(
    ("state", "has_result", "status"),
    [
        (None, False, PENDING),
        (StateType.SCHEDULED, False, PENDING),
        (StateType.PENDING, False, PENDING),
        (StateType.RUNNING, False, IN_PROGRESS),
        (StateType.COMPLETED, True, COMPLETED),
        (StateType.FAILED, False, FAILED),
        (StateType.CRASHED, False, FAILED),
        (StateType.CANCELLED, False, CANCELED),
        (StateType.FAILED, True, COMPLETED),  # a stored result wins over a later failed resubmission
        (StateType.CANCELLED, True, COMPLETED),
        (StateType.RUNNING, True, IN_PROGRESS),  # a forced re-run, or one replacing outputs that are gone
        (StateType.SCHEDULED, True, PENDING),
    ],
)
def test_status_mapping_from_prefect_states(state, has_result, status):
    assert job_status(state, has_result) == status


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


def test_files_are_content_addressed(ow, conversations_path):
    first = ow.files.upload(conversations_path, purpose="conversations")
    with open(conversations_path, "rb") as handle:
        second = ow.files.create(handle, purpose="conversations")
    assert first["id"] == second["id"]
    assert ow.files.content(first["id"]) == conversations_path.read_bytes()


def test_identical_job_is_returned_as_is_and_a_canceled_one_runs_again(ow, ow_stack, tiny_model_dir, conversations_file):
    params = {"model": str(tiny_model_dir), "training_file": conversations_file, **FAST_SFT, "seed": 77}
    job = ow.fine_tuning.create(**params)
    assert job.id.startswith("ftjob-") and job.status == PENDING
    same = ow.fine_tuning.create(**params)
    assert same.id == job.id and len([r for r in same.flow_runs if not r.name.startswith("ftjob")]) == 1  # no second submission
    job.cancel()
    deadline = time.monotonic() + 120
    while job.refresh().status != CANCELED:
        assert time.monotonic() < deadline, job.status
        time.sleep(1)
    again = ow.fine_tuning.create(**params)
    assert again.id == job.id and again.status == PENDING
    assert again.wait(timeout=600).status == COMPLETED
    assert ow.jobs.retrieve(job.id).outputs["adapter"].endswith(f"jobs/{job.id}/adapter")
    logs = again.logs()
    assert "job ID " + job.id in logs
    # Read at the moment of completion, the logs still hold each run's last line, which its engine
    # sends after the final state: the control flow's and its GPU stage's.
    assert logs.count("Finished in state Completed()") >= 2, logs[-3000:]
    assert ow.fine_tuning.create(**params).status == COMPLETED  # and now identical means done


def test_bad_parameters_are_refused_by_the_client_before_submission(ow, ow_stack, tiny_model_dir, conversations_file):
    from jobs.validation import InvalidJobError

    before = len(ow_stack.flow_runs())
    with pytest.raises(InvalidJobError, match="lora_dropout: Dropout rate must be between 0 and 1"):
        ow.fine_tuning.create(model=str(tiny_model_dir), training_file=conversations_file, lora_dropout=2.0)
    with pytest.raises(InvalidJobError, match="training_file: unknown file ID"):
        ow.fine_tuning.create(model=str(tiny_model_dir), training_file="conversations:file-" + "9" * 64)
    assert len(ow_stack.flow_runs()) == before


def run_ow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OW, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_ow_ls_logs_fetch_and_cancel(ow, ow_stack, trained_sft, tmp_path):
    _, job_id, record = trained_sft
    listed = run_ow("ls", "--limit", "200")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["JOB", "ID", "TYPE", "STATUS", "MODEL", "AGE", "COST"]
    mine = [row for row in rows if row.startswith(job_id)]
    assert mine and mine[0].split()[1:3] == ["finetune", "completed"]
    assert mine[0].endswith("$0 (local)")  # the process pool rents no GPU
    only_failed = run_ow("ls", "--status", "failed", "--limit", "200")
    assert job_id not in only_failed.stdout

    logs = run_ow("logs", job_id)
    assert logs.returncode == 0 and "step 1:" in logs.stdout

    fetched = run_ow("fetch", job_id, "-o", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    file_id = record["params"]["training_file"]
    content = run_ow("fetch", file_id)
    assert content.returncode == 0 and json.loads(content.stdout.splitlines()[0])["messages"]

    missing = run_ow("cancel", "ftjob-" + "0" * 64)
    assert missing.returncode == 1 and "no job" in missing.stderr
    assert run_ow("logs", "ftjob-" + "0" * 64).returncode == 1
    assert run_ow("fetch", "conversations:file-" + "0" * 64).returncode == 1


def test_ow_help_is_accurate_for_every_subcommand():
    top = run_ow("--help")
    assert top.returncode == 0
    for command in ("files", "ls", "costs", "budgets", "cancel", "logs", "fetch", "ttl", "dev-pod"):
        assert command in top.stdout
        sub = run_ow(command, "--help")
        assert sub.returncode == 0, (command, sub.stderr)
        assert "usage:" in sub.stdout.lower()
