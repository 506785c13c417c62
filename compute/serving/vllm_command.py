"""The ``vllm serve`` command for a deployment: an argument list, never a shell string.

:func:`build_vllm_serve_command` turns a :class:`~jobs.serve.ServeConfig` plus local paths into
the argv of vLLM's OpenAI-compatible server; :func:`vllm_serve_environment` adds the bearer token
as ``VLLM_API_KEY``, where vLLM reads it (``--api-key`` would show the secret to anyone who can
list processes). The caller runs ``subprocess.Popen(argv, env=env)`` and polls ``/health``
(which vLLM serves without authentication) until the server is up.

vLLM always listens on loopback (:data:`VLLM_HOST`): its key guards only ``/v1/*``, and routes
such as ``/invocations``, ``/tokenize``, ``/pooling`` and ``/metrics`` answer anyone who reaches the
port. Clients reach it through :mod:`compute.serving.proxy`, which checks the token on every path.

Names match the transformers server (:mod:`compute.serving.server`): the base model is served
under ``config.model`` (``--served-model-name``), each adapter under its reference
(``--lora-modules``, in the JSON form that also records the adapter's base model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from compute.generation.context_length import effective_max_model_len
from compute.generation.vllm_backend import vllm_lora_rank
from jobs.adapter_config import adapter_rank
from jobs.serve import ServeConfig

API_KEY_VARIABLE = "VLLM_API_KEY"
VLLM_HOST = "127.0.0.1"  # never a public address: see the module docstring


def build_vllm_serve_command(
    config: ServeConfig,
    *,
    model_path: str | Path,
    adapter_paths: Mapping[str, str | Path],
    port: int,
    tensor_parallel_size: int = 1,
    executable: Sequence[str] = ("vllm",),
) -> list[str]:
    """The argv of ``vllm serve`` for ``config``, listening on ``127.0.0.1:<port>``.

    ``model_path`` is the local directory of ``config.model``; ``adapter_paths`` maps each of
    ``config.lora_adapters`` to its local directory. Reads only ``config.json`` (to keep
    ``--max-model-len`` within the model's positions) and each ``adapter_config.json`` (for
    ``--max-lora-rank``: the largest adapter rank, rounded up to a rank vLLM accepts).
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    adapters = config.ordered_adapter_paths(adapter_paths)
    argv = [
        *executable,
        "serve",
        str(model_path),
        "--served-model-name",
        config.model,
        "--host",
        VLLM_HOST,
        "--port",
        str(port),
        "--max-model-len",
        str(effective_max_model_len(config.max_model_len, model_path)),
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
    ]
    if config.quantization:
        argv += ["--quantization", config.quantization]
    if config.kv_cache_dtype:
        argv += ["--kv-cache-dtype", config.kv_cache_dtype]
    if adapters:
        argv += [
            "--enable-lora",
            "--max-lora-rank",
            str(max_lora_rank(config, adapters)),
            "--max-loras",
            str(config.max_loras or len(adapters)),
            "--lora-modules",
            *(
                json.dumps({"name": name, "path": str(path), "base_model_name": config.model})
                for name, path in adapters.items()
            ),
        ]
    return argv


def vllm_serve_environment(api_key: str, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``vllm serve``: ``base_env`` (default: this process's) plus the bearer token."""
    if not api_key or any(character.isspace() for character in api_key):
        raise ValueError("the API key must be a non-empty token without whitespace")
    env = dict(os.environ if base_env is None else base_env)
    env[API_KEY_VARIABLE] = api_key
    return env


def max_lora_rank(config: ServeConfig, adapters: Mapping[str, Path]) -> int:
    """``config.max_lora_rank``, or the largest adapter rank rounded up to one vLLM accepts."""
    ranks = {name: adapter_rank(path) for name, path in adapters.items()}
    largest_name = max(ranks, key=ranks.__getitem__)
    largest = ranks[largest_name]
    if config.max_lora_rank is None:
        return vllm_lora_rank(largest)
    if config.max_lora_rank < largest:
        raise ValueError(
            f"max_lora_rank ({config.max_lora_rank}) is smaller than the rank of adapter {largest_name!r} ({largest}); "
            f"use {vllm_lora_rank(largest)} or leave max_lora_rank unset"
        )
    return config.max_lora_rank
