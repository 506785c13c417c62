"""Generation with vLLM's offline engine (``vllm.LLM``): the CUDA backend.

Written against vLLM's current API (``LLM``, ``SamplingParams``, ``vllm.lora.request.LoRARequest``);
vLLM is imported only inside :class:`VllmGenerator`, after :func:`compute.backend.select_backend`
picked it. The arguments it passes are built by the pure functions :func:`engine_kwargs` and
:func:`sampling_kwargs` (unit-tested without vLLM), and its results are turned into the shared
:class:`~compute.generation.completions.Completion` by :func:`completion_from_vllm`.

Prompts go in as token IDs (``{"prompt_token_ids": [...]}``), rendered by the same code as the
transformers backend, so both see byte-identical prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compute.generation.completions import Completion, FinishReason, TokenLogprob, TopLogprob
from compute.generation.context_length import completion_budget, effective_max_model_len
from compute.generation.sampling import SamplingSettings
from jobs.adapter_config import adapter_rank
from jobs.serve import VLLM_LORA_RANKS

logger = logging.getLogger(__name__)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts for ``--max-lora-rank`` / ``max_lora_rank`` that holds ``rank``."""
    if rank < 1:
        raise ValueError(f"a LoRA rank is at least 1, got {rank}")
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


def engine_kwargs(
    model_path: str | Path,
    *,
    max_model_len: int,
    adapter_ranks: Sequence[int] = (),
    quantization: str | None = None,
    load_format: str | None = None,
    tensor_parallel_size: int = 1,
    max_num_seqs: int = 256,
    gpu_memory_utilization: float = 0.9,
    seed: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM(...)`` for a model and the ranks of the adapters it will apply."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "enable_prefix_caching": True,
    }
    if seed is not None:
        kwargs["seed"] = seed
    if quantization is not None:
        kwargs["quantization"] = quantization
    if load_format is not None:
        kwargs["load_format"] = load_format
    if adapter_ranks:
        kwargs["enable_lora"] = True
        kwargs["max_lora_rank"] = vllm_lora_rank(max(adapter_ranks))
        kwargs["max_loras"] = len(adapter_ranks)
    return kwargs


def sampling_kwargs(settings: SamplingSettings, max_tokens: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams(...)``; ``max_tokens`` overrides the settings' (context limit)."""
    kwargs: dict[str, Any] = {
        "n": settings.n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": max_tokens if max_tokens is not None else settings.max_tokens,
        "min_tokens": settings.min_tokens,
        "stop": list(settings.stop),
        "logprobs": settings.logprobs,
        "seed": settings.seed,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    return kwargs


def completion_from_vllm(output: Any, top_k: int | None) -> Completion:
    """A shared Completion from a vLLM ``CompletionOutput`` (``text``, ``token_ids``, ``finish_reason``, ``logprobs``).

    vLLM's per-token logprobs are ``{token_id: Logprob(logprob, rank, decoded_token)}`` holding the
    top-k and the sampled token; the sampled one is taken by ID, the alternatives by rank.
    """
    token_ids = tuple(int(token) for token in output.token_ids)
    finish: FinishReason = "length" if output.finish_reason == "length" else "stop"
    logprobs = None
    if top_k is not None and output.logprobs is not None:
        entries = []
        for token, candidates in zip(token_ids, output.logprobs, strict=False):
            chosen = candidates[token]
            ranked = sorted(candidates.items(), key=lambda item: (item[1].rank or 0, -item[1].logprob))
            alternatives = tuple(
                TopLogprob(candidate.decoded_token or "", int(candidate_id), float(candidate.logprob))
                for candidate_id, candidate in ranked[:top_k]
            )
            entries.append(TokenLogprob(chosen.decoded_token or "", token, float(chosen.logprob), alternatives))
        logprobs = tuple(entries)
    return Completion(output.text, token_ids, finish, logprobs)


class VllmGenerator:
    """A model (and optional LoRA adapters) in vLLM's offline engine, generating from token IDs."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        *,
        adapters: Mapping[str, str | Path] | None = None,
        tokenizer_path: str | Path | None = None,
        max_model_len: int = 8192,
        quantization: str | None = None,
        load_format: str | None = None,
        seed: int | None = None,
        tensor_parallel_size: int | None = None,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.9,
    ):
        import torch
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or model_path))
        self.max_model_len = effective_max_model_len(max_model_len, model_path)
        adapters = dict(adapters or {})
        # bitsandbytes checkpoints are not sharded by tensor parallelism.
        default_parallel = 1 if load_format == "bitsandbytes" else max(1, torch.cuda.device_count())
        kwargs = engine_kwargs(
            model_path,
            max_model_len=self.max_model_len,
            adapter_ranks=[adapter_rank(path) for path in adapters.values()],
            quantization=quantization,
            load_format=load_format,
            tensor_parallel_size=tensor_parallel_size or default_parallel,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
        )
        logger.info("starting vLLM: %s", kwargs)
        self.llm = LLM(**kwargs)
        self._lora_requests = {
            name: LoRARequest(lora_name=name, lora_int_id=index, lora_path=str(path))
            for index, (name, path) in enumerate(adapters.items(), start=1)
        }

    @property
    def adapter_names(self) -> list[str]:
        return list(self._lora_requests)

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, adapter: str | None = None
    ) -> list[list[Completion]]:
        """``settings.n`` completions for each prompt (token IDs), in prompt order."""
        from vllm import SamplingParams

        if not prompts:
            return []
        lora_request = None
        if adapter is not None:
            if adapter not in self._lora_requests:
                raise KeyError(f"adapter {adapter!r} is not loaded; loaded: {', '.join(self._lora_requests) or 'none'}")
            lora_request = self._lora_requests[adapter]
        # Same context rule as the transformers backend: a too-long prompt is an error, a long completion is cut.
        budgets = [completion_budget(len(prompt), settings.max_tokens, self.max_model_len) for prompt in prompts]
        params = [SamplingParams(**sampling_kwargs(settings, budget)) for budget in budgets]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(prompt)} for prompt in prompts],
            params,
            use_tqdm=False,
            lora_request=lora_request,
        )
        return [[completion_from_vllm(output, settings.logprobs) for output in result.outputs] for result in outputs]
