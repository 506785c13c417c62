"""Batch inference: stream a prompt file through a generation backend into a completions file.

:func:`run_inference` is the job's entry point (a typed config and local paths in, a result
with counts out). It checks every row before loading a model, then reads, generates and writes
one batch at a time, so memory is bounded by the batch size, not the file; it reports progress
after every batch and counts generated tokens so callers can compute throughput.

Output rows keep the input order and every key of the input row, plus (as OpenWeights writes them)

- ``completion``: the generated text, or a list of texts when ``n_completions_per_prompt > 1``;
- ``logprobs``: ``None`` unless asked for; else per generated token ``{"token", "token_id",
  "logprob", "top_logprobs": [{"token", "token_id", "logprob"}, ...]}``, as a list per
  completion when there are several.

The output file appears only when complete (written beside it, then renamed). Given a
:class:`compute.row_journal.RowJournal`, the finished rows are also stored in chunks as they are
written, and the rows an earlier attempt of the job stored are written first and not generated
again; the file is the same as an uninterrupted run's (with ``seed`` set, sampled rows too: chunks
end on batch boundaries, and each batch is seeded alike).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from compute.backend import BackendChoice, select_backend
from compute.generation.backends import Generator, load_generator, tokenizer_source
from compute.generation.completions import Completion
from compute.generation.prompts import ChatTemplateMissingError, encode_row
from compute.generation.rows import PromptRow, batched, read_prompt_rows, validate_prompt_file
from compute.generation.sampling import SamplingSettings
from compute.row_journal import RowJournal
from jobs.chat_template import chosen_chat_template
from jobs.datasets import DatasetError
from jobs.inference import InferenceConfig
from jobs.model_refs import ResolvedModel

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (rows done, rows in total); ``Reporter.progress`` fits."""

DEFAULT_BATCH_SIZE = {"vllm": 1024, "transformers": 8}
ADAPTER_NAME = "adapter"  # the single adapter of a batch job, as the backend knows it


@dataclass(frozen=True)
class InferenceResult:
    """What a batch run produced: counts for the job record, tokens/s for benchmarks."""

    output_path: Path
    rows: int
    completions: int
    prompt_tokens: int
    generated_tokens: int
    seconds: float  # generation only: reading, tokenising, generating and writing; not model loading or progress reports
    backend: str
    resumed_rows: int = 0  # of ``rows``, those an earlier attempt generated (taken from the row journal)
    resumed_generated_tokens: int = 0  # of ``generated_tokens``, those of the resumed rows

    @property
    def tokens_per_second(self) -> float:
        """Throughput of this run: the tokens it generated itself, over its generation time."""
        generated = self.generated_tokens - self.resumed_generated_tokens
        return generated / self.seconds if self.seconds > 0 else 0.0


def run_inference(
    config: InferenceConfig,
    model: ResolvedModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    backend: BackendChoice | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    journal: RowJournal | None = None,
) -> InferenceResult:
    """Generate completions for every row of ``input_path`` with ``model``; write them to ``output_path``.

    ``model`` holds local directories (the flow resolved ``config.model``); ``backend`` defaults
    to :func:`compute.backend.select_backend` for generation; ``batch_size`` to 8 prompts on
    transformers and 1024 on vLLM (which batches internally; the chunks only bound memory and
    set how often progress is reported).
    """
    total = validate_prompt_file(input_path, config.prefill)  # fail on a bad row before loading a model
    backend = backend or select_backend("generation")
    adapters = {ADAPTER_NAME: model.adapter_path} if model.adapter_path else None
    generator = load_generator(
        backend,
        model.base_path,
        adapters=adapters,
        merge_adapter_paths=model.merge_adapter_paths,
        tokenizer_path=tokenizer_source(model.base_path, model.adapter_path),
        max_model_len=config.max_model_len,
        quantization=config.quantization,
        load_format=config.load_format,
        seed=config.seed,
    )
    if template := chosen_chat_template(config.chat_template):
        generator.tokenizer.chat_template = template  # chat rows are rendered with it (compute.generation.prompts)
    return generate_file(
        generator,
        input_path,
        output_path,
        SamplingSettings.from_inference_config(config),
        prefill=config.prefill,
        adapter=ADAPTER_NAME if adapters else None,
        batch_size=batch_size,
        progress=progress,
        total_rows=total,
        journal=journal,
    )


def generate_file(
    generator: Generator,
    input_path: str | Path,
    output_path: str | Path,
    settings: SamplingSettings,
    *,
    prefill: str = "",
    adapter: str | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    total_rows: int | None = None,
    journal: RowJournal | None = None,
) -> InferenceResult:
    """Stream ``input_path`` through an already loaded ``generator`` in batches of ``batch_size`` rows.

    With a ``journal``, the rows it resumes are written first and skipped in the input, and every
    generated batch is recorded in it (with its token counts, which the rows do not carry).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    total = total_rows if total_rows is not None else validate_prompt_file(input_path, prefill)
    if journal is not None and journal.resumed_rows > total:  # cannot happen with a fingerprint of the input
        journal.discard()
    size = batch_size or DEFAULT_BATCH_SIZE.get(generator.name, 8)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reporting = 0.0  # time spent reporting progress (API calls), which is not generation

    def report(done: int) -> None:
        nonlocal reporting
        if progress:
            began = time.monotonic()
            progress(done, total)
            reporting += time.monotonic() - began

    rows = completions = prompt_tokens = generated_tokens = 0
    report(0)
    resumed = journal.resumed_rows if journal is not None else 0
    resumed_counts = journal.resumed_counts if journal is not None else {}
    descriptor, partial = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            if resumed:
                handle.writelines(line + "\n" for line in journal.resumed_lines())
                rows = resumed
                completions = int(resumed_counts.get("completions", 0))
                prompt_tokens = int(resumed_counts.get("prompt_tokens", 0))
                generated_tokens = int(resumed_counts.get("generated_tokens", 0))
                logger.info("resumed %d of %d rows from the row journal; generating the rest", resumed, total)
                report(rows)
                started, reporting = time.monotonic(), 0.0  # copying the resumed rows is not generation
            for batch in batched(islice(read_prompt_rows(input_path, prefill), resumed, None), size):
                prompts = [_encode(generator, input_path, row, prefill) for row in batch]
                results = generator.generate(prompts, settings, adapter=adapter)
                lines = [
                    json.dumps(output_row(row, samples, settings), ensure_ascii=False)
                    for row, samples in zip(batch, results, strict=True)
                ]
                handle.writelines(line + "\n" for line in lines)
                counts = {
                    "completions": sum(len(samples) for samples in results),
                    "prompt_tokens": sum(len(prompt) for prompt in prompts),
                    "generated_tokens": sum(len(sample.token_ids) for each in results for sample in each),
                }
                completions += counts["completions"]
                prompt_tokens += counts["prompt_tokens"]
                generated_tokens += counts["generated_tokens"]
                if journal is not None:
                    journal.record(lines, counts)
                rows += len(batch)
                report(rows)
            if journal is not None:
                journal.flush()
        os.replace(partial, output_path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    result = InferenceResult(
        output_path=output_path,
        rows=rows,
        completions=completions,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        seconds=time.monotonic() - started - reporting,
        backend=generator.name,
        resumed_rows=resumed,
        resumed_generated_tokens=int(resumed_counts.get("generated_tokens", 0)),
    )
    logger.info(
        "generated %d completions for %d rows: %d tokens in %.1fs (%.1f tokens/s, %s)",
        completions,
        rows,
        generated_tokens,
        result.seconds,
        result.tokens_per_second,
        generator.name,
    )
    return result


def output_row(row: PromptRow, samples: list[Completion], settings: SamplingSettings) -> dict[str, Any]:
    """The input row with its completion(s) and log-probabilities added."""
    with_logprobs = settings.logprobs is not None
    if settings.n == 1:
        completion: Any = samples[0].text
        logprobs: Any = samples[0].logprobs_json() if with_logprobs else None
    else:
        completion = [sample.text for sample in samples]
        logprobs = [sample.logprobs_json() for sample in samples] if with_logprobs else None
    return {**row.row, "completion": completion, "logprobs": logprobs}


def _encode(generator: Generator, path: Path, row: PromptRow, prefill: str) -> list[int]:
    """The row's prompt tokens; a prompt that cannot fit the context is reported with its line."""
    try:
        ids = encode_row(generator.tokenizer, row, prefill)
    except ChatTemplateMissingError as exc:
        raise DatasetError(str(path), [(row.line, str(exc))]) from None
    except Exception as exc:  # noqa: BLE001 - templates raise their own errors, e.g. "roles must alternate"
        raise DatasetError(str(path), [(row.line, f"the chat template cannot render this row: {exc}")]) from exc
    if len(ids) >= generator.max_model_len:
        raise DatasetError(
            str(path),
            [(row.line, f"the prompt has {len(ids)} tokens, which leaves no room to generate within "
                        f"max_model_len={generator.max_model_len}; shorten it or raise max_model_len")],
        )
    return ids
