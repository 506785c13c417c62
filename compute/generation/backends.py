"""The one interface of the generation backends, and loading the backend this machine supports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from compute.backend import BackendChoice
from compute.generation.completions import Completion
from compute.generation.sampling import SamplingSettings

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class Generator(Protocol):
    """What the batch runner (and benchmarks) need from a backend."""

    name: str
    tokenizer: Any  # a transformers tokenizer: renders chat templates and counts prompt tokens
    max_model_len: int

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, adapter: str | None = None
    ) -> list[list[Completion]]:
        """``settings.n`` completions per prompt (token IDs), in prompt order."""
        ...


def tokenizer_source(model_path: str | Path, adapter_path: str | Path | None) -> Path:
    """Where the tokenizer comes from: an adapter that carries one (maybe with its own chat template), else the model."""
    if adapter_path is not None and any((Path(adapter_path) / name).exists() for name in TOKENIZER_FILES):
        return Path(adapter_path)
    return Path(model_path)


def load_generator(
    backend: BackendChoice,
    model_path: str | Path,
    *,
    adapters: Mapping[str, str | Path] | None = None,
    merge_adapter_paths: Sequence[str | Path] = (),
    tokenizer_path: str | Path | None = None,
    max_model_len: int = 8192,
    quantization: str | None = None,
    load_format: str | None = None,
    seed: int | None = None,
) -> Generator:
    """Load ``model_path`` (plus adapters) with the backend :func:`compute.backend.select_backend` chose.

    vLLM cannot stack adapters, so adapters to merge first need the transformers backend; the
    quantization options are vLLM's and are refused elsewhere rather than silently ignored.
    """
    if backend.name == "vllm":
        if merge_adapter_paths:
            raise ValueError(
                "this model is an adapter trained on top of another adapter; vLLM applies one adapter per request. "
                "Store merged weights for the parent fine-tune (merge_before_push) or run on the transformers backend"
            )
        from compute.generation.vllm_backend import VllmGenerator

        return VllmGenerator(
            model_path,
            adapters=adapters,
            tokenizer_path=tokenizer_path,
            max_model_len=max_model_len,
            quantization=quantization,
            load_format=load_format,
            seed=seed,
        )
    for field, value in (("quantization", quantization), ("load_format", load_format)):
        if value is not None:
            raise ValueError(
                f"{field}={value!r} is a vLLM option, and this machine runs the {backend.name} backend on "
                f"{backend.device} ({backend.reason}); unset it or run on a CUDA GPU with vLLM"
            )
    from compute.generation.transformers_backend import TransformersGenerator

    return TransformersGenerator(
        model_path,
        adapters=adapters,
        merge_adapter_paths=merge_adapter_paths,
        tokenizer_path=tokenizer_path,
        device=backend.device,
        max_model_len=max_model_len,
    )
