"""The one rule that picks a compute backend: a GPU library only where a CUDA GPU and it exist.

Training uses unsloth on a GPU and trl + peft otherwise; generation and serving use vLLM on a
GPU and transformers otherwise. ``OW_BACKEND=transformers`` forces the portable backend (for
debugging a GPU pod with the CPU code path); nothing ever silently picks a GPU library that
is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

Workload = Literal["training", "generation"]
GPU_LIBRARY = {"training": "unsloth", "generation": "vllm"}


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "unsloth" | "vllm" | "transformers"
    device: str  # "cuda" | "cpu"
    reason: str


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def choose_backend(workload: Workload, *, has_cuda: bool, installed: set[str], forced: str | None = None) -> BackendChoice:
    """Pure decision, table-tested: which backend runs ``workload`` on this machine."""
    library = GPU_LIBRARY[workload]
    device = "cuda" if has_cuda else "cpu"
    if forced == "transformers":
        return BackendChoice("transformers", device, "forced by OW_BACKEND=transformers")
    if forced and forced != library:
        raise ValueError(f"OW_BACKEND={forced!r} cannot run {workload}; use 'transformers' or {library!r}")
    if forced == library and not (has_cuda and library in installed):
        raise RuntimeError(f"OW_BACKEND={library} needs a CUDA GPU and the {library} package (the 'gpu' extra)")
    if has_cuda and library in installed:
        return BackendChoice(library, "cuda", f"CUDA GPU and {library} available")
    if has_cuda:
        return BackendChoice("transformers", "cuda", f"{library} not installed (install the 'gpu' extra)")
    return BackendChoice("transformers", "cpu", "no CUDA GPU")


def select_backend(workload: Workload) -> BackendChoice:
    """The backend for ``workload`` on this machine; logs the choice and why."""
    library = GPU_LIBRARY[workload]
    choice = choose_backend(
        workload,
        has_cuda=cuda_available(),
        installed={library} if module_installed(library) else set(),
        forced=os.environ.get("OW_BACKEND") or None,
    )
    logger.info("%s backend: %s on %s (%s)", workload, choice.name, choice.device, choice.reason)
    return choice
