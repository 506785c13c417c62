"""ServeConfig, adapter_config.json facts, and grouping models into one server per base model."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.adapter_config import AdapterConfigError, adapter_base_model, adapter_rank
from jobs.serve import ServeConfig
from jobs.server_plan import MixedBaseModelsError, PlannedServer, Route, check_adapter_bases, plan_servers

BASE = "meta-llama/Llama-3.1-8B-Instruct"
OTHER = "Qwen/Qwen2.5-7B-Instruct"


def test_defaults_and_served_names():
    config = ServeConfig(model=BASE, lora_adapters=["org/a", "org/b"])
    assert (config.max_model_len, config.max_num_seqs, config.max_lora_rank, config.max_loras) == (2048, 100, None, None)
    assert (config.idle_timeout_seconds, config.hard_timeout_seconds) == (900.0, 86_400.0)
    assert config.served_model_names() == [BASE, "org/a", "org/b"]


def test_every_field_has_a_description():
    assert all(field.description for field in ServeConfig.model_fields.values())


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"lora_adapters": ["org/a", "org/a"]}, "lora_adapters", "lora_adapters[1] repeats lora_adapters[0]"),
        ({"lora_adapters": ["org/a", "not valid"]}, "lora_adapters", "lora_adapters[1]: 'not valid' is not"),
        ({"lora_adapters": [BASE]}, "lora_adapters", "lora_adapters[0] is the base model itself"),
        ({"max_lora_rank": 12}, "max_lora_rank", "max_lora_rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512"),
        ({"max_model_len": 0}, "max_model_len", "greater than or equal to 16"),
        ({"max_num_seqs": 0}, "max_num_seqs", "greater than or equal to 1"),
        ({"max_loras": 0}, "max_loras", "greater than or equal to 1"),
        ({"idle_timeout_seconds": 0}, "idle_timeout_seconds", "greater than 0"),
        ({"hard_timeout_seconds": -1}, "hard_timeout_seconds", "greater than 0"),
        (
            {"idle_timeout_seconds": 100, "hard_timeout_seconds": 50},
            "idle_timeout_seconds",
            "idle_timeout_seconds (100) exceeds hard_timeout_seconds (50)",
        ),
        ({"kv_cache_dtype": "FP 8"}, "kv_cache_dtype", "kv_cache_dtype must be one lowercase word"),
        ({"api_key": "secret"}, "api_key", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(change, field, message):
    with pytest.raises(ValidationError) as caught:
        ServeConfig(**{"model": BASE, **change})
    assert field in str(caught.value)
    assert message in str(caught.value)


# -- adapter_config.json ---------------------------------------------------------------------------


def write_adapter(directory: Path, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("config", "rank"),
    [
        ({"r": 16}, 16),
        ({"r": 8, "rank_pattern": {"q_proj": 32}}, 32),
        ({"r": 64, "rank_pattern": {"q_proj": 4}}, 64),
        ({"r": 1, "rank_pattern": {}}, 1),
    ],
)
def test_adapter_rank_is_the_largest_rank_in_the_config(tmp_path, config, rank):
    assert adapter_rank(write_adapter(tmp_path / "adapter", **config)) == rank


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "'r' must be a positive integer"),
        ({"r": 0}, "'r' must be a positive integer"),
        ({"r": "16"}, "'r' must be a positive integer"),
        ({"r": 8, "rank_pattern": {"q_proj": -2}}, "rank_pattern['q_proj'] must be a positive integer"),
    ],
)
def test_bad_adapter_rank_names_the_file_and_key(tmp_path, config, message):
    adapter = write_adapter(tmp_path / "adapter", **config)
    with pytest.raises(AdapterConfigError) as caught:
        adapter_rank(adapter)
    assert str(adapter / "adapter_config.json") in str(caught.value)
    assert message in str(caught.value)


def test_adapter_base_model_comes_from_adapter_config(tmp_path):
    assert adapter_base_model(write_adapter(tmp_path / "a", r=8, base_model_name_or_path=BASE)) == BASE


def test_a_directory_without_adapter_config_is_not_an_adapter(tmp_path):
    with pytest.raises(AdapterConfigError, match="not a peft LoRA adapter directory"):
        adapter_base_model(tmp_path)


def test_adapter_config_without_base_model_is_rejected(tmp_path):
    with pytest.raises(AdapterConfigError, match="base_model_name_or_path is missing"):
        adapter_base_model(write_adapter(tmp_path / "a", r=8))


def test_malformed_adapter_config_names_the_file_and_line(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 8,\n "base_model_name_or_path": }')
    with pytest.raises(AdapterConfigError) as caught:
        adapter_base_model(tmp_path)
    assert "adapter_config.json: not valid JSON" in str(caught.value)
    assert "line 2" in str(caught.value)


# -- grouping -------------------------------------------------------------------------------------

GROUPING_CASES = {
    "one base model alone": (
        [BASE],
        {BASE: None},
        [PlannedServer(BASE)],
        {BASE: Route(0, BASE)},
    ),
    "adapters of one base share its server, with the base": (
        ["org/a", BASE, "org/b"],
        {"org/a": BASE, BASE: None, "org/b": BASE},
        [PlannedServer(BASE, ("org/a", "org/b"))],
        {"org/a": Route(0, "org/a"), BASE: Route(0, BASE), "org/b": Route(0, "org/b")},
    ),
    "adapters of two bases get two servers, in first-requested order": (
        ["org/q1", "org/l1", "org/q2"],
        {"org/q1": OTHER, "org/l1": BASE, "org/q2": OTHER},
        [PlannedServer(OTHER, ("org/q1", "org/q2")), PlannedServer(BASE, ("org/l1",))],
        {"org/q1": Route(0, "org/q1"), "org/l1": Route(1, "org/l1"), "org/q2": Route(0, "org/q2")},
    ),
    "a model requested twice is served once": (
        ["org/a", "org/a"],
        {"org/a": BASE},
        [PlannedServer(BASE, ("org/a",))],
        {"org/a": Route(0, "org/a")},
    ),
    "two spellings of one local base path are one base": (
        ["/models/tiny", "ftjob-" + "d" * 64],
        {"/models/tiny": None, "ftjob-" + "d" * 64: "/models/tiny/"},
        [PlannedServer("/models/tiny", ("ftjob-" + "d" * 64,))],
        {"/models/tiny": Route(0, "/models/tiny"), "ftjob-" + "d" * 64: Route(0, "ftjob-" + "d" * 64)},
    ),
}


@pytest.mark.parametrize(("models", "bases", "servers", "routes"), GROUPING_CASES.values(), ids=GROUPING_CASES)
def test_plan_servers_groups_adapters_by_base_model(models, bases, servers, routes):
    plan = plan_servers(models, bases)
    assert list(plan.servers) == servers
    assert dict(plan.routes) == routes


def test_plan_servers_needs_every_base_model():
    with pytest.raises(ValueError, match="the base model of 'org/x' is not known"):
        plan_servers(["org/x"], {})


def test_deployment_becomes_a_serve_config():
    config = PlannedServer(BASE, ("org/a",)).serve_config(max_model_len=4096)
    assert (config.model, config.lora_adapters, config.max_model_len) == (BASE, ["org/a"], 4096)


def test_adapters_of_their_own_base_model_pass():
    check_adapter_bases(ServeConfig(model=BASE, lora_adapters=["org/a"]), {"org/a": BASE})


def test_adapters_of_different_base_models_in_one_server_are_rejected():
    config = ServeConfig(model=BASE, lora_adapters=["org/a", "org/q"])
    with pytest.raises(MixedBaseModelsError) as caught:
        check_adapter_bases(config, {"org/a": BASE, "org/q": OTHER})
    message = str(caught.value)
    assert f"lora_adapters[1] ('org/q') is an adapter of '{OTHER}', not of model '{BASE}'" in message
    assert "lora_adapters[0]" not in message
    assert "separate deployments" in message


def test_a_base_model_listed_as_adapter_is_rejected():
    config = ServeConfig(model=BASE, lora_adapters=[OTHER])
    with pytest.raises(MixedBaseModelsError, match=r"lora_adapters\[0\] .* is not a LoRA adapter"):
        check_adapter_bases(config, {OTHER: None})
