"""What the vLLM paths would run, checked without vLLM: the serve argv, LLM / SamplingParams arguments, ranks."""

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from compute.generation.completions import TokenLogprob, TopLogprob
from compute.generation.sampling import SamplingSettings
from compute.generation.vllm_backend import (
    completion_from_vllm,
    engine_kwargs,
    sampling_kwargs,
    vllm_lora_rank,
)
from compute.serving.vllm_command import API_KEY_VARIABLE, build_vllm_serve_command, vllm_serve_environment
from jobs.serve import ServeConfig

BASE = "meta-llama/Llama-3.1-8B-Instruct"
JOB = "ftjob-" + "e" * 64


def write_adapter(directory: Path, r: int, **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(
        json.dumps({"r": r, "base_model_name_or_path": BASE, **extra})
    )
    return directory


def write_model(directory: Path, positions: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"max_position_embeddings": positions}))
    return directory


@pytest.mark.parametrize(
    ("rank", "vllm_rank"),
    [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (33, 64), (128, 128), (200, 256), (300, 320), (512, 512)],
)
def test_lora_rank_is_rounded_up_to_a_rank_vllm_accepts(rank, vllm_rank):
    assert vllm_lora_rank(rank) == vllm_rank


@pytest.mark.parametrize(
    ("rank", "message"), [(0, "at least 1"), (513, "exceeds the largest rank vLLM serves (512)")]
)
def test_impossible_lora_ranks_are_refused(rank, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vllm_lora_rank(rank)


def test_serve_command_without_adapters(tmp_path):
    model = write_model(tmp_path / "model", 131072)
    config = ServeConfig(model=BASE, max_model_len=4096, max_num_seqs=32)
    argv = build_vllm_serve_command(config, model_path=model, adapter_paths={}, port=8000)
    assert argv == [
        "vllm", "serve", str(model),
        "--served-model-name", BASE,
        "--host", "127.0.0.1",
        "--port", "8000",
        "--max-model-len", "4096",
        "--max-num-seqs", "32",
        "--tensor-parallel-size", "1",
    ]  # fmt: skip


def test_vllm_listens_on_loopback_only_whatever_the_deployment_publishes(tmp_path):
    """vLLM's key guards only /v1/*: its /invocations, /tokenize, /metrics must not face the network."""
    argv = build_vllm_serve_command(ServeConfig(model=BASE), model_path=tmp_path, adapter_paths={}, port=8001)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv.count("--host") == 1
    with pytest.raises(TypeError, match="host"):
        build_vllm_serve_command(
            ServeConfig(model=BASE), model_path=tmp_path, adapter_paths={}, host="0.0.0.0", port=8000
        )


def test_serve_command_with_adapters_enables_lora_with_the_rank_they_need(tmp_path):
    model = write_model(tmp_path / "model", 131072)
    adapters = {
        "org/a": write_adapter(tmp_path / "a", 8),
        JOB: write_adapter(tmp_path / "b", 16, rank_pattern={"q_proj": 24}),
    }
    config = ServeConfig(model=BASE, lora_adapters=["org/a", JOB], quantization="fp8", kv_cache_dtype="fp8")
    argv = build_vllm_serve_command(
        config, model_path=model, adapter_paths=adapters, port=9000, tensor_parallel_size=2
    )
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--quantization") + 1] == "fp8"
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "32"  # rank_pattern's 24, rounded up
    assert argv[argv.index("--max-loras") + 1] == "2"
    modules = [json.loads(value) for value in argv[argv.index("--lora-modules") + 1 :]]
    assert modules == [
        {"name": "org/a", "path": str(adapters["org/a"]), "base_model_name": BASE},
        {"name": JOB, "path": str(adapters[JOB]), "base_model_name": BASE},
    ]


def test_every_argument_is_its_own_list_item_even_with_spaces_in_paths(tmp_path):
    model = write_model(tmp_path / "my model", 2048)
    adapter = write_adapter(tmp_path / "an adapter; rm -rf ~", 8)
    config = ServeConfig(model=BASE, lora_adapters=["org/a"])
    argv = build_vllm_serve_command(config, model_path=model, adapter_paths={"org/a": adapter}, port=8000)
    assert argv[2] == str(model)
    assert json.loads(argv[-1])["path"] == str(adapter)
    assert shlex.split(shlex.join(argv)) == argv


def test_max_model_len_is_capped_at_the_model_positions(tmp_path):
    config = ServeConfig(model=BASE, max_model_len=8192)
    argv = build_vllm_serve_command(
        config, model_path=write_model(tmp_path / "m", 2048), adapter_paths={}, port=1
    )
    assert argv[argv.index("--max-model-len") + 1] == "2048"


def test_explicit_max_lora_rank_and_max_loras_are_used(tmp_path):
    config = ServeConfig(model=BASE, lora_adapters=["org/a"], max_lora_rank=64, max_loras=4)
    argv = build_vllm_serve_command(
        config,
        model_path=write_model(tmp_path / "m", 4096),
        adapter_paths={"org/a": write_adapter(tmp_path / "a", 8)},
        port=1,
    )
    assert (argv[argv.index("--max-lora-rank") + 1], argv[argv.index("--max-loras") + 1]) == ("64", "4")


def test_explicit_max_lora_rank_below_an_adapter_rank_is_refused(tmp_path):
    config = ServeConfig(model=BASE, lora_adapters=["org/a"], max_lora_rank=8)
    with pytest.raises(
        ValueError, match=r"max_lora_rank \(8\) is smaller than the rank of adapter 'org/a' \(32\); use 32"
    ):
        build_vllm_serve_command(
            config, model_path=tmp_path, adapter_paths={"org/a": write_adapter(tmp_path / "a", 32)}, port=1
        )


def test_adapter_paths_must_match_the_configured_adapters(tmp_path):
    config = ServeConfig(model=BASE, lora_adapters=["org/a"])
    with pytest.raises(ValueError, match=r"no local path for 'org/a'; 'org/b' not in lora_adapters"):
        build_vllm_serve_command(config, model_path=tmp_path, adapter_paths={"org/b": tmp_path}, port=1)


def test_the_api_key_travels_in_the_environment_never_in_argv(tmp_path):
    config = ServeConfig(model=BASE)
    argv = build_vllm_serve_command(config, model_path=tmp_path, adapter_paths={}, port=8000)
    env = vllm_serve_environment("s3cret-token", base_env={"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", API_KEY_VARIABLE: "s3cret-token"}
    assert not any("s3cret" in value or "api-key" in value for value in argv)


@pytest.mark.parametrize("bad_key", ["", "two words", "line\nbreak"])
def test_a_malformed_api_key_is_refused(bad_key):
    with pytest.raises(ValueError, match="non-empty token without whitespace"):
        vllm_serve_environment(bad_key, base_env={})


def test_bad_port_is_refused(tmp_path):
    with pytest.raises(ValueError, match="port must be between 1 and 65535"):
        build_vllm_serve_command(ServeConfig(model=BASE), model_path=tmp_path, adapter_paths={}, port=0)


# -- offline engine arguments --------------------------------------------------------------------


def test_engine_kwargs_for_a_base_model():
    assert engine_kwargs("/m", max_model_len=4096) == {
        "model": "/m",
        "max_model_len": 4096,
        "max_num_seqs": 256,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": True,
    }


def test_engine_kwargs_with_adapters_quantization_and_seed():
    kwargs = engine_kwargs(
        "/m",
        max_model_len=2048,
        adapter_ranks=[8, 20],
        quantization="bitsandbytes",
        load_format="bitsandbytes",
        seed=3,
    )
    assert {
        key: kwargs[key]
        for key in ("enable_lora", "max_lora_rank", "max_loras", "quantization", "load_format", "seed")
    } == {
        "enable_lora": True,
        "max_lora_rank": 32,
        "max_loras": 2,
        "quantization": "bitsandbytes",
        "load_format": "bitsandbytes",
        "seed": 3,
    }


def test_sampling_kwargs_carry_every_setting():
    settings = SamplingSettings(
        max_tokens=50, min_tokens=2, temperature=0, top_p=0.8, stop=("###",), n=3, logprobs=5, seed=9
    )
    assert sampling_kwargs(settings, max_tokens=40) == {
        "n": 3,
        "temperature": 0,
        "top_p": 0.8,
        "max_tokens": 40,
        "min_tokens": 2,
        "stop": ["###"],
        "logprobs": 5,
        "seed": 9,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }


def test_vllm_outputs_become_completions_with_ranked_alternatives():
    # Shaped like vllm.outputs.CompletionOutput / vllm.logprobs.Logprob: the sampled token (rank 3) is
    # reported beside the top-2.
    def logprob(value, rank, text):
        return SimpleNamespace(logprob=value, rank=rank, decoded_token=text)

    output = SimpleNamespace(
        text="Hi",
        token_ids=[7, 9],
        finish_reason="length",
        logprobs=[
            {7: logprob(-0.1, 1, "H"), 8: logprob(-2.5, 2, "h")},
            {4: logprob(-0.3, 1, "!"), 5: logprob(-1.0, 2, "?"), 9: logprob(-3.0, 3, "i")},
        ],
    )
    completion = completion_from_vllm(output, top_k=2)
    assert (completion.text, completion.token_ids, completion.finish_reason) == ("Hi", (7, 9), "length")
    assert completion.logprobs == (
        TokenLogprob("H", 7, -0.1, (TopLogprob("H", 7, -0.1), TopLogprob("h", 8, -2.5))),
        TokenLogprob("i", 9, -3.0, (TopLogprob("!", 4, -0.3), TopLogprob("?", 5, -1.0))),
    )
    assert (
        completion_from_vllm(
            SimpleNamespace(**{**vars(output), "finish_reason": "stop"}), top_k=None
        ).logprobs
        is None
    )
