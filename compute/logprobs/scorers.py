"""Per-token log-probabilities of given token sequences: one forward pass, no sampling.

A scorer is the transformers generation backend with one more method, :meth:`Scorer.token_logprobs`.
It subclasses :class:`~compute.generation.transformers_backend.TransformersGenerator`, so a model and
its adapters load exactly as they do for generation (same dtype, adapter handling and context
limit), and ``scores[t - 1]`` is log p(token t | tokens before t) under the raw model distribution
(no temperature, no top-p). The batch is right-padded; the log-softmax over the vocabulary is taken
in float32, one row at a time (memory holds one row's ``length × vocab`` at full precision).

Why not vLLM on a GPU, as batch inference does: vLLM's prompt log-probabilities
(``SamplingParams(prompt_logprobs=0)``) need its prefix cache off — with it on, the values for a
cached prefix can come from an earlier request (vllm-project/vllm#42019), and multiple-choice
scoring sends many prompts sharing a prefix — while :class:`compute.generation.vllm_backend.VllmGenerator`
always turns it on. Scoring is one forward pass per batch, with no decoding loop (where vLLM gains
most), so the backend rule's device (:func:`compute.backend.select_backend`) is kept and the library
is transformers on CPU and GPU alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from compute.backend import BackendChoice
from compute.generation.transformers_backend import TransformersGenerator

logger = logging.getLogger(__name__)


class Scorer(Protocol):
    name: str
    tokenizer: Any
    max_model_len: int

    def token_logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        """For each sequence of n tokens, n - 1 values: entry t - 1 is log p(token t | tokens before t)."""
        ...


class TransformersScorer(TransformersGenerator):
    """Scores with transformers (and peft for adapters), on the CPU or a GPU."""

    def token_logprobs(self, sequences: Sequence[Sequence[int]], adapter: str | None = None) -> list[list[float]]:
        import torch

        if not sequences:
            return []
        width = max(len(sequence) for sequence in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            # Right padding: positions count from 0 in every row without passing position IDs.
            ids[row, : len(sequence)] = torch.tensor(list(sequence), dtype=torch.long)
            mask[row, : len(sequence)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with self._using(adapter), torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            scores = []
            for row, sequence in enumerate(sequences):
                length = len(sequence)
                log_probs = torch.log_softmax(logits[row, : length - 1].float(), dim=-1)
                picked = log_probs.gather(-1, ids[row, 1:length].unsqueeze(-1)).squeeze(-1)
                scores.append(picked.tolist())
        return scores


def load_scorer(
    backend: BackendChoice,
    model_path: str | Path,
    *,
    adapters: Mapping[str, str | Path] | None = None,
    merge_adapter_paths: Sequence[str | Path] = (),
    tokenizer_path: str | Path | None = None,
    max_model_len: int = 8192,
) -> Scorer:
    """Load ``model_path`` (plus adapters; ``merge_adapter_paths`` baked in first) on ``backend``'s device."""
    if backend.name == "vllm":
        logger.info("scoring with transformers on %s: vLLM's prompt log-probabilities need its prefix cache off", backend.device)
    return TransformersScorer(
        model_path,
        adapters=adapters,
        merge_adapter_paths=merge_adapter_paths,
        tokenizer_path=tokenizer_path,
        device=backend.device,
        max_model_len=max_model_len,
    )
