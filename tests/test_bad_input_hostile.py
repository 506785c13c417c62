"""Hostile input is refused with one line naming the field (or file and line), before any GPU.

Each case is the attack itself: a row nested 10,000 levels deep, an integer of 5,000 digits, a
job ID suffix that is a path, a name template that reaches into Python objects, a NUL byte in a
task file, and a hand-started GPU stage whose job ID is ``"/"``.
"""

from __future__ import annotations

import pytest

from jobs.datasets import DatasetError
from jobs.registry import get_job_spec
from jobs.validation import InvalidJobError, validate_params
from store.artifact_store import ArtifactStore
from store.files import upload_file

CONV = "conversations:file-" + "a" * 64
DIGEST = "0" * 64
HUGE_INTEGER = 10**5000  # past Python's 4300-digit limit for int <-> str
FINETUNE = {"model": "org/base", "training_file": CONV}
INFERENCE = {"model": "org/base", "input_file": CONV}
CUSTOM = {"name": "word_count", "entrypoint": ["python", "count.py"]}


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def refusal(job_type: str, raw: dict) -> list[str]:
    with pytest.raises(InvalidJobError) as caught:
        validate_params(get_job_spec(job_type), raw)
    return caught.value.problems


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "line", "expected"),
    [
        ("conversations", b'{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "line 2: the row is nested more than 64 levels deep"),
        ("conversations", b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}", "line 2: the row is nested more than 64 levels deep"),
        ("preference", b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "line 2: the row is nested more than 64 levels deep"),
        ("conversations", b'{"text": "hi", "id": ' + b"9" * 5000 + b"}", "line 2: a number has more digits than Python reads"),
        ("mmlu_pro", b'{"question_id": ' + b"9" * 5000 + b"}", "line 2: a number has more digits than Python reads"),
        ("inspect_task", b"def task():\x00 pass", "line 2: contains a NUL byte (column 12)"),
    ],
)
def test_hostile_rows_are_refused_at_upload_naming_file_and_line(tmp_path, purpose, line, expected):
    first = {
        "conversations": b'{"text": "a fine row"}',
        "preference": b'{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],'
        b' "rejected": [{"role": "assistant", "content": "b"}]}',
        "mmlu_pro": b"",
        "inspect_task": b"from inspect_ai import task",
    }[purpose]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(first + b"\n" + line + b"\n")
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(DatasetError) as caught:
        upload_file(store, path, purpose)
    message = str(caught.value)
    assert f"hostile.jsonl, {expected}" in message, message
    assert "Traceback" not in message and "sys.set_int_max_str_digits" not in message
    assert store.list("") == []  # nothing was stored


# -- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_type", "raw", "expected"),
    [
        ("finetune", {**FINETUNE, "seed": HUGE_INTEGER}, "seed: integer of 16610 bits is out of range"),
        ("finetune", {**FINETUNE, "meta": {"note": nested_list(10_000)}}, "meta: nested more than 64 levels deep"),
        ("finetune", {**FINETUNE, "meta": {"note": [1, HUGE_INTEGER]}}, "meta.note[1]: integer of 16610 bits"),
        ("inference", {**INFERENCE, "max_tokens": HUGE_INTEGER}, "max_tokens: integer of 16610 bits is out of range"),
        ("inference", {**INFERENCE, "temperature": float("inf")}, "temperature: inf is not a finite number"),
        ("custom", {**CUSTOM, "params": {"rows": nested_list(10_000)}}, "params: nested more than 64 levels deep"),
        ("custom", {**CUSTOM, "params": {"count": -HUGE_INTEGER}}, "params.count: integer of 16610 bits"),
    ],
)
def test_hostile_parameter_values_are_refused_naming_the_field(job_type, raw, expected):
    problems = refusal(job_type, raw)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"mounted_files": {"count\x00.py": CONV}}, "mounted_files: 'count\\x00.py' must be a relative path"),
        ({"mounted_files": {"count.py\n../../x": CONV}}, "mounted_files: 'count.py\\n../../x' must be a relative path"),
        ({"entrypoint": ["python", "count.py\x00"]}, "entrypoint: argument 1 ('count.py\\x00') contains a NUL byte"),
    ],
)
def test_custom_job_paths_and_arguments_the_os_cannot_take_are_refused(change, expected):
    problems = refusal("custom", {**CUSTOM, **change})
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@pytest.mark.parametrize("job_type", ["finetune", "inference"])
@pytest.mark.parametrize("suffix", ["a/b", "../../etc", "try2\n", "try 2", "", "x" * 65])
def test_a_job_id_suffix_that_is_not_a_plain_name_is_refused(job_type, suffix):
    raw = {**(FINETUNE if job_type == "finetune" else INFERENCE), "job_id_suffix": suffix}
    problems = refusal(job_type, raw)
    assert len(problems) == 1 and problems[0].startswith("job_id_suffix: "), problems


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{}/model", "{} is not a placeholder"),
        ("{0}/model", "{0} is not a placeholder"),
        ("{org_id}/{model_name.__class__}", "{model_name.__class__} is not a placeholder"),
        ("{org_id}/{model_name.__class__.__init__.__globals__}", "is not a placeholder"),
        ("{org_id}/{tag[0]}", "{tag[0]} is not a placeholder"),
        ("{org_id}/{model_name:>999999999}", "placeholders take no format spec or conversion"),
        ("{org_id}/{model_name!r}", "placeholders take no format spec or conversion"),
        ("{org_id}/{job_id:x}", "placeholders take no format spec or conversion"),
        ("{org_id/model", "is not a valid template"),
    ],
)
def test_finetuned_model_id_templates_reaching_into_python_are_refused(template, expected):
    raw = {**FINETUNE, "finetuned_model_id": template, "model_naming_extra_parameters": {"tag": "v2"}}
    problems = refusal("finetune", raw)
    assert len(problems) == 1 and problems[0].startswith("finetuned_model_id: "), problems
    assert expected in problems[0]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (float("nan"), "Learning rate must be a finite number"),
        (float("inf"), "Learning rate must be a finite number"),
        ("1e308 * 10", "Learning rate must be a finite number"),
        ("10 ** 400", "is not valid"),
        ("0", "Learning rate must be positive"),
        ("-" * 100_000 + "1", "longer than 100 characters"),
        ("(" * 300 + "1" + ")" * 300, "longer than 100 characters"),
    ],
)
def test_learning_rates_that_are_not_a_positive_finite_number_are_refused(rate, expected):
    problems = refusal("finetune", {**FINETUNE, "learning_rate": rate})
    assert len(problems) == 1 and problems[0].startswith("learning_rate: "), problems
    assert expected in problems[0]


# -- a hand-started GPU stage -----------------------------------------------------------------------


@pytest.fixture
def ow_home_with_sentinel(tmp_path, monkeypatch):
    """A fresh OW_HOME with a work root and, beside it, a directory nothing may delete."""
    home = tmp_path / "ow"
    (home / "work").mkdir(parents=True)
    sentinel = home / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("still here")
    monkeypatch.setenv("OW_HOME", str(home))
    return sentinel


def test_a_gpu_stage_started_by_hand_with_a_path_as_job_id_deletes_nothing(prefect_server, ow_home_with_sentinel):
    from flows.gpu_stage import gpu_stage

    with pytest.raises(ValueError, match=r"^job_id: '\.\./sentinel' is not a job ID; expected <type prefix>-<64 hex digits>"):
        gpu_stage(job_type="finetune", job_id="../sentinel", params=FINETUNE)
    assert (ow_home_with_sentinel / "keep.txt").read_text() == "still here"


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("/", r"job_id: '/' is not a job ID"),
        ("..", r"job_id: '\.\.' is not a job ID"),
        (f"ftjob-{DIGEST}/../../sentinel", r"is not a job ID"),
        (f"ftjob-{DIGEST}\n", r"is not a job ID"),
        (f"inferencejob-{DIGEST}", r"is not the ID of this job type \(IDs start with ftjob-\)"),
    ],
)
def test_the_gpu_stage_checks_its_job_id_before_anything_else(ow_home_with_sentinel, job_id, expected):
    """The flow's own code, called without a run: the job ID is refused before the run logger or the store
    are touched (so this is safe to run even where that check is missing: no run context, nothing deleted)."""
    from flows.gpu_stage import gpu_stage

    with pytest.raises(ValueError, match=expected):
        gpu_stage.fn(job_type="finetune", job_id=job_id, params=FINETUNE)
    assert (ow_home_with_sentinel / "keep.txt").read_text() == "still here"


def test_a_work_directory_that_links_out_of_the_work_root_is_not_removed(tmp_path):
    from compute.work_dirs import UnsafeWorkDirError, job_work_dir, remove_work_dir

    root = tmp_path / "work"
    root.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("still here")
    job_id = f"ftjob-{DIGEST}"
    (root / job_id).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeWorkDirError, match="not to a directory strictly under"):
        job_work_dir(root, job_id)
    for path in (root / job_id, root, tmp_path, root / ".." / "precious"):
        with pytest.raises(UnsafeWorkDirError):
            remove_work_dir(root, path)
    assert (outside / "keep.txt").read_text() == "still here"
    (root / job_id).unlink()
    (root / job_id / "scratch").mkdir(parents=True)
    remove_work_dir(root, job_work_dir(root, job_id))  # a job's own directory still goes
    assert not (root / job_id).exists()
