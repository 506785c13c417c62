"""The OpenWeights quickstart with two lines changed, and every example in examples/, against the stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_python(script: Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)


def test_openweights_quickstart_runs_with_only_the_import_and_model_changed(ow_stack, tiny_model_dir, tmp_path):
    original = (Path(__file__).parent / "data" / "openweights_quickstart.py").read_text()
    ported = original.replace("from openweights import OpenWeights", "from client import OpenWeights")
    ported = ported.replace('model="unsloth/Qwen3-4B"', f"model={str(tiny_model_dir)!r}")
    changed = [line for line in ported.splitlines() if line not in original.splitlines()]
    assert len(changed) == 2  # the import line and the model line, nothing else
    (tmp_path / "data").mkdir()
    shutil.copy(EXAMPLES / "data" / "train.jsonl", tmp_path / "data" / "train.jsonl")
    (tmp_path / "quickstart.py").write_text(ported)
    result = run_python(tmp_path / "quickstart.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status, adapter = result.stdout.strip().splitlines()[-2:]
    assert status == "completed" and adapter.endswith("/adapter")


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("quickstart.py", "completed"),
        ("inference.py", '"completion"'),
        ("api_deployment.py", "ChatCompletionMessage"),
        ("inspect_eval.py", "output"),
        ("custom_job/run.py", '"distinct"'),
        ("logprobs.py", '"logprob"'),
        ("multiple_choice.py", "accuracy:"),
        ("weighted_sft.py", "completed"),
        ("mmlu_pro.py", "accuracy:"),
    ],
)
def test_every_example_runs(ow_stack, script, expected):
    result = run_python(EXAMPLES / script, EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout


def test_examples_folder_has_no_example_left_untested():
    tested = {"quickstart.py", "inference.py", "api_deployment.py", "inspect_eval.py", "custom_job/run.py"}
    tested |= {"logprobs.py", "multiple_choice.py"}
    tested |= {"weighted_sft.py", "mmlu_pro.py"}
    scripts = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")}
    helpers = {"tiny_model.py", "custom_job/word_count.py"}
    assert scripts - helpers == tested
