"""Job identity: fixed test vectors and what must (and must not) change an ID."""

import hashlib
import math

import pytest

from jobs.finetune import TrainingConfig
from jobs.identity import canonical_json, compute_job_id, source_digest
from jobs.specs import FINETUNE

FILE_A = "conversations:file-" + "ab" * 32
FILE_B = "conversations:file-" + "cd" * 32


@pytest.mark.parametrize(
    ("job_type", "params", "inputs", "code_version", "prefix", "expected"),
    [
        (
            "finetune",
            {"model": "org/base", "epochs": 1, "learning_rate": 0.0001, "target_modules": ["q_proj", "v_proj"], "meta": None},
            [FILE_A],
            "code-v1",
            "ftjob",
            "ftjob-e2399483747553603a0f55b6db831cfe6babb161fa4cd6162b2b218eb8321b04",
        ),
        (
            "inference",
            {"prompt": "héllo ✓", "temperature": 1.0},
            [],
            "0" * 64,
            "job",
            "job-3d2986ab9c691e6b9575c3f09ef107bc0b7443d8bae5d2fce8ee3f04c21eb467",
        ),
        ("finetune", {}, ["b", "a", "a"], "c", "ftjob", "ftjob-819a94741826752fd3d5649bf0ae972cb98049dc5139866a744afc0ef6e5f7f0"),
    ],
)
def test_job_id_test_vectors(job_type, params, inputs, code_version, prefix, expected):
    assert compute_job_id(job_type, params, inputs, code_version, prefix=prefix) == expected


def test_first_vector_is_plain_sha256_of_the_documented_canonical_json():
    document = (
        '{"code_version":"code-v1","inputs":["' + FILE_A + '"],"job_type":"finetune",'
        '"params":{"epochs":1,"learning_rate":0.0001,"meta":null,"model":"org/base","target_modules":["q_proj","v_proj"]}}'
    )
    digest = hashlib.sha256(document.encode()).hexdigest()
    assert f"ftjob-{digest}" == compute_job_id(
        "finetune",
        {"model": "org/base", "epochs": 1, "learning_rate": 0.0001, "target_modules": ["q_proj", "v_proj"], "meta": None},
        [FILE_A],
        "code-v1",
        prefix="ftjob",
    )


def test_canonical_json_sorts_keys_and_keeps_unicode():
    assert canonical_json({"b": 1, "a": [1.5, "é", None]}) == '{"a":[1.5,"é",null],"b":1}'.encode()


def test_canonical_json_refuses_nan():
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})


def _finetune_id(inputs=(FILE_A,), **overrides):
    config = TrainingConfig(model="org/base", training_file=FILE_A, **overrides)
    return FINETUNE.job_id(config, list(inputs))


def test_explicit_defaults_give_the_same_id_as_implicit_ones():
    assert _finetune_id() == _finetune_id(r=16, lora_alpha=16, learning_rate=1e-4, seed=3407, epochs=1)


@pytest.mark.parametrize(
    "change",
    [
        {"r": 32},
        {"learning_rate": 2e-4},
        {"epochs": 2},
        {"seed": 1},
        {"target_modules": ["q_proj"]},
        {"train_on_responses_only": False},
        {"meta": {"note": "x"}},
    ],
)
def test_changing_any_parameter_changes_the_id(change):
    assert _finetune_id(**change) != _finetune_id()


def test_changing_an_input_file_byte_changes_the_id(tmp_path):
    from store.artifact_store import ArtifactStore
    from store.files import upload_file

    store = ArtifactStore(tmp_path / "store")
    original = tmp_path / "a.jsonl"
    original.write_text('{"text": "one"}\n')
    changed = tmp_path / "b.jsonl"
    changed.write_text('{"text": "onE"}\n')
    first = upload_file(store, original, "conversations").id
    second = upload_file(store, changed, "conversations").id
    assert first != second
    assert _finetune_id(inputs=[first]) != _finetune_id(inputs=[second])


def test_changing_the_job_code_changes_the_id(tmp_path):
    module = tmp_path / "jobs" / "finetune.py"
    module.parent.mkdir()
    module.write_text("A = 1\n")
    before = source_digest([module], tmp_path)
    module.write_text("A = 2\n")
    after = source_digest([module], tmp_path)
    assert before != after
    params = {"model": "org/base"}
    assert compute_job_id("finetune", params, [], before) != compute_job_id("finetune", params, [], after)


def test_code_version_covers_the_finetune_sources():
    from jobs.registry import PROJECT_ROOT

    covered = {p.relative_to(PROJECT_ROOT).as_posix() for p in FINETUNE.code_files}
    assert {"jobs/finetune.py", "compute/training/recipe.py", "compute/training/examples.py"} <= covered
    assert len(FINETUNE.code_version) == 64


def test_input_order_and_duplicates_do_not_matter():
    assert compute_job_id("t", {}, [FILE_A, FILE_B], "v") == compute_job_id("t", {}, [FILE_B, FILE_A, FILE_A], "v")


def test_job_id_suffix_is_appended():
    assert _finetune_id(job_id_suffix="try2").endswith("-try2")


@pytest.mark.parametrize("spelling", ["2e-4", "1e-4*2", "1e-4 * 2", "0.0002", 2e-4])
def test_spellings_of_one_learning_rate_are_one_job(spelling):
    """As the control tier does it: validate, dump to JSON (what the GPU stage gets), validate again, hash."""
    from jobs.validation import validate_params

    def control_tier_id(learning_rate) -> str:
        validated = validate_params(FINETUNE, {"model": "org/base", "training_file": FILE_A, "learning_rate": learning_rate})
        again = FINETUNE.params_model.model_validate(validated.model_dump(mode="json"))
        return FINETUNE.job_id(again, [FILE_A])

    assert control_tier_id(spelling) == control_tier_id(2e-4)


def test_every_job_id_a_spec_makes_has_the_job_id_shape():
    from jobs.identity import check_job_id
    from jobs.specs import INFERENCE

    plain = _finetune_id()
    suffixed = _finetune_id(job_id_suffix="try-2.b_c")
    service = compute_job_id("api", {}, [], "v", prefix="apijob") + "-0a1b2c3d"
    for job_id, prefix in ((plain, "ftjob"), (suffixed, "ftjob"), (service, "apijob")):
        assert check_job_id(job_id, prefix=prefix) == job_id
    assert INFERENCE.id_prefix == "inferencejob"


@pytest.mark.parametrize(
    "job_id",
    ["/", "..", "../x", "", "ftjob-x", "ftjob-" + "a" * 63, "FTJOB-" + "a" * 64, "ftjob-" + "a" * 64 + "/x", "ftjob-" + "a" * 64 + "-a b", None, 7],
)
def test_anything_else_is_not_a_job_id(job_id):
    from jobs.identity import check_job_id

    with pytest.raises(ValueError, match=r"^job_id: .* is not a job ID"):
        check_job_id(job_id)
