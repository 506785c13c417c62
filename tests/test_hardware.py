"""Per-job hardware: parsing ``allowed_hardware``, the job fields, the job ID, the GPU stage's job variables."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from infra.runpod.hardware import (
    GPU_ALIASES,
    MAX_GPUS_PER_POD,
    HardwareOption,
    canonical_allowed_hardware,
    parse_allowed_hardware,
    parse_hardware,
)
from jobs.hardware import (
    FORCE_FIELD,
    MAX_COST_FIELD,
    NOT_IN_JOB_ID,
    PLACEMENT_FIELDS,
    HardwareRequest,
    describe_hardware_request,
    gpu_stage_job_variables,
)
from jobs.registry import get_job_spec, identity_params, job_types
from jobs.validation import InvalidJobError, validate_params

A100 = ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB")
CONVERSATIONS = "conversations:file-" + "ab" * 32
MMLU_FILE = "mmlu_pro:file-" + "cd" * 32

# The smallest valid parameters of every GPU job type.
MINIMAL_PARAMS = {
    "finetune": {"model": "org/base", "training_file": CONVERSATIONS},
    "inference": {"model": "org/base", "input_file": CONVERSATIONS},
    "api": {"model": "org/base"},
    "eval-inspect": {"model": "org/base", "eval_name": "inspect_evals/gpqa_diamond"},
    "eval-mmlu-pro": {"model": "org/base", "dataset_file": MMLU_FILE},
    "custom": {"name": "word_count", "entrypoint": ["python", "word_count.py"]},
    "logprobs": {"model": "org/base", "input_file": CONVERSATIONS},
    "eval-multiple-choice": {"model": "org/base", "questions_file": "multiple_choice:file-" + "ef" * 32},
}


# -- the parser ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gpu_count", "gpu_type_ids"),
    [
        ("2x A100", 2, A100),
        ("2 x A100", 2, A100),
        ("2xA100", 2, A100),
        ("  4X h100  ", 4, ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe")),
        ("A40", 1, ("NVIDIA A40",)),
        ("a6000", 1, ("NVIDIA RTX A6000",)),
        ("1x A100S", 1, ("NVIDIA A100-SXM4-80GB",)),
        ("1x H100S", 1, ("NVIDIA H100 80GB HBM3",)),
        ("1x H100N", 1, ("NVIDIA H100 NVL",)),
        ("8x H200", 8, ("NVIDIA H200",)),
        ("L40S", 1, ("NVIDIA L40S",)),
        ("4090", 1, ("NVIDIA GeForce RTX 4090",)),
        ("1x RTX4090", 1, ("NVIDIA GeForce RTX 4090",)),
        ("A5000", 1, ("NVIDIA RTX A5000",)),
        ("1x NVIDIA A40", 1, ("NVIDIA A40",)),  # a full RunPod id
        ("nvidia  a40", 1, ("NVIDIA A40",)),  # a known id in another spelling: RunPod's spelling
        ("2x NVIDIA B200", 2, ("NVIDIA B200",)),  # an id the table does not know: RunPod's catalog decides
        ("AMD Instinct MI300X OAM", 1, ("AMD Instinct MI300X OAM",)),
    ],
)
def test_parse_hardware_reads_counts_short_names_and_runpod_ids(text, gpu_count, gpu_type_ids):
    assert parse_hardware(text) == HardwareOption(gpu_count=gpu_count, gpu_type_ids=gpu_type_ids)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3y A100", '"3y A100": expected "<count>x <GPU type>", e.g. "2x A100"'),
        ("2 A100", '"2 A100": expected "<count>x <GPU type>"'),
        ("", '"": is empty; expected "<count>x <GPU type>"'),
        ("2x", '"2x": names no GPU type'),
        ("0x A40", "the GPU count must be 1 to 8 (GPUs in one pod), got 0"),
        ("9x A40", "got 9"),
        ("1x B300", 'unknown GPU type "B300"; use a short name (4090, RTX4090'),
        ("A100 80GB", 'or a full RunPod GPU type id such as "NVIDIA A40" (it starts with NVIDIA, AMD or Tesla)'),
        ("nvidia b200", 'unknown GPU type "nvidia b200"'),  # an unknown id must be spelled as RunPod does
    ],
)
def test_parse_hardware_refuses_bad_entries_saying_what_would_be_valid(text, message):
    with pytest.raises(ValueError) as raised:
        parse_hardware(text)
    assert message in str(raised.value)


def test_parse_allowed_hardware_names_the_bad_entry_by_its_index():
    with pytest.raises(ValueError) as raised:
        parse_allowed_hardware(["1x A40", "3y A100"])
    assert str(raised.value) == 'allowed_hardware[1] = "3y A100": expected "<count>x <GPU type>", e.g. "2x A100"'


def test_parse_allowed_hardware_refuses_an_option_listed_twice_in_any_spelling():
    with pytest.raises(ValueError, match=r'allowed_hardware\[2\] = "2 x a100" repeats allowed_hardware\[0\] \("2x A100"\)'):
        parse_allowed_hardware(["2x A100", "1x A100", "2 x a100"])


def test_parse_allowed_hardware_refuses_a_bare_string_instead_of_a_list():
    with pytest.raises(ValueError, match=r'must be a list of entries such as \["2x A100"\]'):
        parse_allowed_hardware("2x A100")


def test_an_empty_list_means_the_pools_defaults():
    assert parse_allowed_hardware([]) == []


def test_hardware_option_bounds_and_repeated_ids():
    assert HardwareOption(gpu_count=1, gpu_type_ids=("NVIDIA A40", "NVIDIA A40")).gpu_type_ids == ("NVIDIA A40",)
    for bad in ({"gpu_count": 0, "gpu_type_ids": ("NVIDIA A40",)}, {"gpu_count": MAX_GPUS_PER_POD + 1, "gpu_type_ids": ("NVIDIA A40",)},
                {"gpu_count": 1, "gpu_type_ids": ()}, {"gpu_count": 1, "gpu_type_ids": (" ",)}):
        with pytest.raises(ValidationError):
            HardwareOption(**bad)


def test_every_alias_names_runpod_ids_and_every_default_and_catalogue_type_has_an_alias():
    from infra.worker.pod_spec import DEFAULT_GPU_TYPES
    from tests.fixtures.runpod_schema import DEFAULT_GPU_CATALOGUE

    aliased = {gpu_id for ids in GPU_ALIASES.values() for gpu_id in ids}
    assert all(gpu_id.startswith(("NVIDIA ", "AMD ", "Tesla ")) for gpu_id in aliased)
    assert set(DEFAULT_GPU_TYPES) <= aliased
    assert {gpu.id for gpu in DEFAULT_GPU_CATALOGUE} <= aliased


@pytest.mark.parametrize(
    ("entries", "canonical"),
    [
        ([], []),
        (["2x A100"], ["2x NVIDIA A100 80GB PCIe", "2x NVIDIA A100-SXM4-80GB"]),
        (["A40", "2 x a6000"], ["1x NVIDIA A40", "2x NVIDIA RTX A6000"]),
        (["1x A100", "1x A100S"], ["1x NVIDIA A100 80GB PCIe", "1x NVIDIA A100-SXM4-80GB"]),  # overlap once
        (["1x NVIDIA B200"], ["1x NVIDIA B200"]),
    ],
)
def test_canonical_strings_name_runpod_ids_and_parse_back_to_the_same_choices(entries, canonical):
    options = parse_allowed_hardware(entries)
    assert canonical_allowed_hardware(options) == canonical
    reparsed = parse_allowed_hardware(canonical)
    pairs = {(option.gpu_count, gpu_id) for option in options for gpu_id in option.gpu_type_ids}
    assert {(option.gpu_count, gpu_id) for option in reparsed for gpu_id in option.gpu_type_ids} == pairs
    assert canonical_allowed_hardware(reparsed) == canonical  # a fixed point


# -- the job fields ------------------------------------------------------------------------------


def test_every_gpu_job_type_takes_the_hardware_request_and_max_cost_last_and_described():
    assert set(job_types()) == set(MINIMAL_PARAMS)
    for job_type in job_types():
        model = get_job_spec(job_type).params_model
        assert issubclass(model, HardwareRequest), job_type
        assert tuple(model.model_fields)[-len(NOT_IN_JOB_ID):] == (*PLACEMENT_FIELDS, FORCE_FIELD, MAX_COST_FIELD), job_type
        assert all(model.model_fields[name].description for name in NOT_IN_JOB_ID), job_type


def test_the_flow_form_lists_max_cost_after_the_job_own_parameters():
    from flows.job_flow import signature_from_model

    names = list(signature_from_model(get_job_spec("finetune").params_model).parameters)
    assert names[0] == "model" and names[-1] == MAX_COST_FIELD


@pytest.mark.parametrize("job_type", sorted(MINIMAL_PARAMS))
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "max_cost_usd: Input should be greater than 0"),
        (-5, "max_cost_usd: Input should be greater than 0"),
        (float("nan"), "max_cost_usd: Input should be a finite number"),
        ("lots", "max_cost_usd: Input should be a valid number"),
    ],
)
def test_a_bad_max_cost_fails_validation_naming_the_field(job_type, value, problem):
    with pytest.raises(InvalidJobError) as raised:
        validate_params(get_job_spec(job_type), {**MINIMAL_PARAMS[job_type], MAX_COST_FIELD: value})
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_a_job_model_missing_a_hardware_field_is_refused_when_defined():
    with pytest.raises(TypeError, match="must declare allowed_hardware, requires_vram_gb, image"):

        class Incomplete(HardwareRequest):
            model: str


@pytest.mark.parametrize("job_type", sorted(MINIMAL_PARAMS))
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"allowed_hardware": ["1x A40", "3y A100"]}, 'allowed_hardware: allowed_hardware[1] = "3y A100": expected'),
        ({"allowed_hardware": ["1x B300"]}, 'allowed_hardware: allowed_hardware[0] = "1x B300": unknown GPU type'),
        ({"allowed_hardware": ["A40", "1x a40"]}, "allowed_hardware: allowed_hardware[1] = \"1x a40\" repeats"),
        ({"allowed_hardware": "2x A100"}, "allowed_hardware: Input should be a valid list"),
        ({"requires_vram_gb": -1}, "requires_vram_gb: Input should be greater than or equal to 0"),
        ({"requires_vram_gb": float("inf")}, "requires_vram_gb: Input should be a finite number"),
        ({"image": "  "}, "image: image is empty"),
        ({"image": "ghcr.io/org/ow prefect:1"}, "image: image 'ghcr.io/org/ow prefect:1' is not a container image"),
        ({"image": "ghcr.io/org/ow-prefect:1\n"}, "no spaces or control characters"),
    ],
)
def test_bad_hardware_requests_fail_validation_naming_the_field(job_type, change, problem):
    with pytest.raises(InvalidJobError) as raised:
        validate_params(get_job_spec(job_type), {**MINIMAL_PARAMS[job_type], **change})
    assert any(problem in line for line in raised.value.problems), raised.value.problems


@pytest.mark.parametrize("job_type", sorted(MINIMAL_PARAMS))
def test_good_hardware_requests_are_kept_as_written(job_type):
    request = {"allowed_hardware": ["2x A100", "1x NVIDIA H200"], "requires_vram_gb": 120, "image": "ghcr.io/org/ow-prefect:1.4"}
    config = validate_params(get_job_spec(job_type), {**MINIMAL_PARAMS[job_type], **request})
    assert {name: getattr(config, name) for name in PLACEMENT_FIELDS} == request


def test_custom_jobs_keep_their_own_vram_default():
    config = validate_params(get_job_spec("custom"), MINIMAL_PARAMS["custom"])
    assert config.requires_vram_gb == 24.0
    assert get_job_spec("custom").vram_gb(config, None) == 24.0


# -- the job ID ----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_type", sorted(MINIMAL_PARAMS))
def test_the_hardware_request_does_not_change_the_job_id(job_type):
    spec = get_job_spec(job_type)
    plain = validate_params(spec, MINIMAL_PARAMS[job_type])
    placed = validate_params(
        spec,
        {**MINIMAL_PARAMS[job_type], "allowed_hardware": ["2x A100"], "requires_vram_gb": 160, "image": "ghcr.io/org/other:2"},
    )
    assert spec.job_id(placed, [CONVERSATIONS]) == spec.job_id(plain, [CONVERSATIONS])
    assert not set(PLACEMENT_FIELDS) & set(identity_params(placed))


@pytest.mark.parametrize("job_type", sorted(MINIMAL_PARAMS))
def test_max_cost_does_not_change_the_job_id(job_type):
    spec = get_job_spec(job_type)
    plain = validate_params(spec, MINIMAL_PARAMS[job_type])
    capped = validate_params(spec, {**MINIMAL_PARAMS[job_type], MAX_COST_FIELD: 12.5})
    assert capped.max_cost_usd == 12.5
    assert spec.job_id(capped, [CONVERSATIONS]) == spec.job_id(plain, [CONVERSATIONS])
    assert MAX_COST_FIELD not in identity_params(capped)


def test_a_real_parameter_still_changes_the_job_id():
    spec = get_job_spec("finetune")
    plain = validate_params(spec, MINIMAL_PARAMS["finetune"])
    changed = validate_params(spec, {**MINIMAL_PARAMS["finetune"], "epochs": 2, "allowed_hardware": ["1x A40"]})
    assert spec.job_id(changed, [CONVERSATIONS]) != spec.job_id(plain, [CONVERSATIONS])


def test_models_without_a_hardware_request_hash_every_field():
    class Plain(BaseModel):
        image: str = "a picture, a parameter like any other"

    assert identity_params(Plain()) == {"image": "a picture, a parameter like any other"}


# -- the GPU stage's job variables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "estimate", "job_variables"),
    [
        ({}, 40.0, {"min_vram_gb": 40.0}),
        ({}, None, {}),
        ({"requires_vram_gb": 100}, 40.0, {"min_vram_gb": 100.0}),
        ({"requires_vram_gb": 0}, 40.0, {"min_vram_gb": 0.0}),  # "any GPU" is a request too
        ({"requires_vram_gb": 100}, None, {"min_vram_gb": 100.0}),
        (
            {"allowed_hardware": ["2x A100"]},
            40.0,
            {"min_vram_gb": 40.0, "allowed_hardware": ["2x NVIDIA A100 80GB PCIe", "2x NVIDIA A100-SXM4-80GB"]},
        ),
        (
            {"allowed_hardware": ["A40", "2x a6000"], "image": "ghcr.io/org/ow-prefect:1.4"},
            None,
            {"allowed_hardware": ["1x NVIDIA A40", "2x NVIDIA RTX A6000"], "image": "ghcr.io/org/ow-prefect:1.4"},
        ),
    ],
)
def test_gpu_stage_job_variables(request_fields, estimate, job_variables):
    config = validate_params(get_job_spec("inference"), {**MINIMAL_PARAMS["inference"], **request_fields})
    assert gpu_stage_job_variables(config, estimate) == job_variables


def test_custom_jobs_send_their_vram_requirement():
    config = validate_params(get_job_spec("custom"), {**MINIMAL_PARAMS["custom"], "requires_vram_gb": 0})
    assert gpu_stage_job_variables(config, 0.0) == {"min_vram_gb": 0.0}


def test_a_model_without_a_hardware_request_sends_only_the_estimate():
    class Plain(BaseModel):
        image: str = "not a container"

    assert gpu_stage_job_variables(Plain(), 12.5) == {"min_vram_gb": 12.5}


def test_the_runpod_pool_accepts_the_job_variables_and_plans_exactly_the_requested_hardware():
    """The variable names and formats are the work pool's (its settings are the contract)."""
    from infra.worker.pool_settings import RunPodPodSettings

    config = validate_params(
        get_job_spec("finetune"),
        {**MINIMAL_PARAMS["finetune"], "allowed_hardware": ["2x A100"], "requires_vram_gb": 100, "image": "ghcr.io/org/x:1"},
    )
    job_variables = gpu_stage_job_variables(config, 42.0)
    assert set(job_variables) <= set(RunPodPodSettings.model_fields)
    settings = RunPodPodSettings.model_validate(job_variables)
    assert (settings.min_vram_gb, settings.image) == (100.0, "ghcr.io/org/x:1")
    options = parse_allowed_hardware(settings.allowed_hardware)
    assert {(option.gpu_count, option.gpu_type_ids) for option in options} == {(2, (gpu_id,)) for gpu_id in A100}


@pytest.mark.parametrize(
    ("request_fields", "estimate", "line"),
    [
        ({}, 40.0, "hardware: the work pool's GPU types; 40.0 GB of GPU memory (estimated); image: the work pool's"),
        ({}, None, "hardware: the work pool's GPU types; no GPU memory requirement; image: the work pool's"),
        (
            {"allowed_hardware": ["2x A100", "1x H200"], "requires_vram_gb": 80, "image": "ghcr.io/org/x:1"},
            42.0,
            "hardware: 2x NVIDIA A100 80GB PCIe or NVIDIA A100-SXM4-80GB or 1x NVIDIA H200; "
            "80.0 GB of GPU memory (requested, estimate 42.0 GB); image: ghcr.io/org/x:1",
        ),
    ],
)
def test_the_hardware_log_line(request_fields, estimate, line):
    config = validate_params(get_job_spec("inference"), {**MINIMAL_PARAMS["inference"], **request_fields})
    assert describe_hardware_request(config, estimate) == line


# -- the client ----------------------------------------------------------------------------------


def test_custom_job_clients_take_hardware_keywords_out_of_the_jobs_parameters():
    from client.custom_jobs import CustomJob

    class WordCountParams(BaseModel):
        min_length: int = 3

    class WordCount(CustomJob):
        name = "word_count"
        params = WordCountParams
        requires_vram_gb = 0
        allowed_hardware = ["1x A40"]

        def get_entrypoint(self, params):
            return ["python", "word_count.py"]

    assert WordCount(ow=None).definition(min_length=4)["allowed_hardware"] == ["1x A40"]
    definition = WordCount(ow=None).definition(min_length=4, allowed_hardware=["2x A100"], image="ghcr.io/org/x:1")
    assert definition["params"] == {"min_length": 4}
    assert (definition["allowed_hardware"], definition["image"], definition["requires_vram_gb"]) == (["2x A100"], "ghcr.io/org/x:1", 0.0)
    validate_params(get_job_spec("custom"), definition)  # what the control tier will accept


def test_a_custom_jobs_own_field_named_like_a_hardware_keyword_stays_a_parameter():
    from client.custom_jobs import CustomJob

    class Drawing(BaseModel):
        image: str

    class Draw(CustomJob):
        name = "draw"
        params = Drawing

        def get_entrypoint(self, params):
            return ["python", "draw.py"]

    definition = Draw(ow=None).definition(image="a cat")
    assert definition["params"] == {"image": "a cat"} and "image" not in definition


# -- end to end: the request reaches the GPU stage's flow run ------------------------------------


def test_a_jobs_hardware_request_reaches_its_gpu_stage_as_job_variables(ow_stack, tmp_path):
    """On the local (process) pool the variables are carried but unused; a runpod pool acts on them."""
    from prefect.client.schemas.objects import StateType

    script = tmp_path / "hello.py"
    script.write_text("print('hello from the gpu stage')\n")
    definition = {
        "name": "hardware_hello",
        "mounted_files": {"hello.py": ow_stack.upload(script, "custom_job_file")},
        "entrypoint": ["python", "hello.py"],
        "requires_vram_gb": 30,
        "allowed_hardware": ["2x A100"],
        "image": "ghcr.io/org/ow-prefect:1.4",
    }
    run = ow_stack.run("custom/run", definition, timeout=600)
    assert run.state.type == StateType.COMPLETED, run.state.message
    (stage,) = ow_stack.gpu_stage_runs(ow_stack.job_id_of(run))
    assert stage.job_variables == {
        "min_vram_gb": 30.0,
        "allowed_hardware": ["2x NVIDIA A100 80GB PCIe", "2x NVIDIA A100-SXM4-80GB"],
        "image": "ghcr.io/org/ow-prefect:1.4",
    }
