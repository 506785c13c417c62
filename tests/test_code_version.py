"""A job type's code version covers every project module its code imports, however deep or lazy.

The fault: a job type's results depend on a module nobody listed (the inference stage formats
conversations with ``compute/training/examples.py``); editing it must change every job ID of the
type, or the cache serves what the old code computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.code_version import import_closure, imported_modules
from jobs.identity import source_digest
from jobs.registry import _REGISTRY, PROJECT_ROOT, get_job_spec

get_job_spec("finetune")  # loads the built-in specs
JOB_TYPES = sorted(_REGISTRY)


def _relative(paths) -> set[str]:
    return {Path(path).relative_to(PROJECT_ROOT).as_posix() for path in paths}


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_modules_imported_lazily_relatively_and_through_packages_are_followed(tmp_path):
    _write(tmp_path, "pkg/__init__.py", "")
    _write(tmp_path, "pkg/stage.py", "def run():\n    from pkg.deep import helper\n    return helper()\n")
    _write(tmp_path, "pkg/deep/__init__.py", "from . import formats\n")
    _write(tmp_path, "pkg/deep/helper.py", "from ..util import VALUE\n\ndef helper():\n    return VALUE\n")
    _write(tmp_path, "pkg/deep/formats.py", "import json\n")
    _write(tmp_path, "pkg/util.py", "VALUE = 1\n")
    _write(tmp_path, "pkg/unrelated.py", "VALUE = 2\n")
    closure = {path.relative_to(tmp_path).as_posix() for path in import_closure(["pkg.stage"], tmp_path)}
    assert closure == {
        "pkg/__init__.py",
        "pkg/stage.py",
        "pkg/deep/__init__.py",
        "pkg/deep/helper.py",
        "pkg/deep/formats.py",
        "pkg/util.py",
    }
    before = source_digest(import_closure(["pkg.stage"], tmp_path), tmp_path)
    _write(tmp_path, "pkg/util.py", "VALUE = 3\n")  # two imports away, inside a function
    assert source_digest(import_closure(["pkg.stage"], tmp_path), tmp_path) != before
    _write(tmp_path, "pkg/unrelated.py", "VALUE = 4\n")
    after_util = source_digest(import_closure(["pkg.stage"], tmp_path), tmp_path)
    _write(tmp_path, "pkg/unrelated.py", "VALUE = 5\n")
    assert source_digest(import_closure(["pkg.stage"], tmp_path), tmp_path) == after_util


def test_relative_imports_resolve_against_the_package():
    assert "compute.stage" in imported_modules(PROJECT_ROOT / "compute/generation/stage.py", PROJECT_ROOT)


@pytest.mark.parametrize(
    ("job_type", "files"),
    [
        # What the review found missing from the hand-kept lists.
        (
            "inference",
            {"compute/training/examples.py", "jobs/datasets.py", "jobs/adapter_config.py", "jobs/serve.py"},
        ),
        (
            "eval-inspect",
            {
                "compute/generation/backends.py",
                "compute/generation/prompts.py",
                "compute/evals/inspect_tasks.py",
            },
        ),
        ("finetune", {"jobs/finetune.py", "compute/training/recipe.py", "compute/training/examples.py"}),
    ],
)
def test_the_files_a_job_type_was_found_to_depend_on_are_in_its_code_version(job_type, files):
    spec = get_job_spec(job_type)
    assert files <= _relative(spec.code_files)


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_every_project_module_the_stage_loads_when_imported_is_in_the_code_version(job_type):
    """What Python actually loads from this project when the stage module is imported (in a fresh
    interpreter) is covered: the static reading misses nothing the interpreter sees."""
    spec = get_job_spec(job_type)
    module = spec.stage.partition(":")[0]
    script = (
        "import json, sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        f"importlib.import_module({spec.params_model.__module__!r})\n"
        f"root = {str(PROJECT_ROOT)!r}\n"
        "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None) and m.__file__.startswith(root + '/') and '/.venv/' not in m.__file__)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert _relative(json.loads(loaded.stdout)) <= _relative(spec.code_files)


def test_editing_a_module_the_inference_stage_reaches_only_transitively_changes_inference_ids(
    tmp_path, monkeypatch
):
    """The scenario of the review: ``compute/training/examples.py`` changes; inference job IDs must too."""
    import shutil

    from jobs import registry

    copy = tmp_path / "project"
    for top in ("jobs", "compute", "store", "infra", "blocks"):
        shutil.copytree(PROJECT_ROOT / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(registry, "PROJECT_ROOT", copy)
    spec = get_job_spec("inference")
    before = _recomputed(spec)
    examples = copy / "compute/training/examples.py"
    examples.write_text(examples.read_text() + "\n# a change in how conversations are formatted\n")
    assert _recomputed(spec) != before


def _recomputed(spec) -> str:
    from dataclasses import fields

    from jobs.registry import JobSpec

    clone = JobSpec(
        **{field.name: getattr(spec, field.name) for field in fields(spec)}
    )  # a new cached_property
    return clone.code_version
