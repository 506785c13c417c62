"""The ``inference/logprobs`` job: every assistant token's log-probability, for every row of a file.

:func:`run_logprobs` is the entry point (a typed config and local paths in, counts out). It checks
every row before loading a model (the control tier's own check, :func:`jobs.datasets.validate_lines`
with :func:`jobs.logprobs.check_logprobs_row`), then reads, scores and writes one batch at a time.

Output rows keep the input order and every key of the input row, plus

- ``logprobs``: one entry per assistant message, in order: ``{"message": <index in messages>,
  "range": [start, end], "logprob": <sum over its tokens>, "tokens": [{"token", "token_id",
  "logprob"}, ...]}``; ``range`` is the tokens' positions in the rendered conversation
  (:mod:`compute.logprobs.spans`: the content and the end-of-turn token);
- ``total_logprob``: the sum over all assistant messages of the row.

The output file appears only when complete (written beside it, then renamed). Given a
:class:`compute.row_journal.RowJournal`, finished rows are also stored in chunks as they are
written, and the rows an earlier attempt of the job stored are written first and not scored again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from compute.backend import BackendChoice, select_backend
from compute.generation.backends import tokenizer_source
from compute.generation.rows import batched
from compute.logprobs.scorers import Scorer, load_scorer
from compute.logprobs.spans import TokenizedConversation, tokenize_conversation
from compute.row_journal import RowJournal
from compute.training.examples import TemplateError
from jobs.datasets import DatasetError, validate_lines
from jobs.logprobs import LogprobsConfig, check_logprobs_row
from jobs.model_refs import ResolvedModel

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
ADAPTER_NAME = "adapter"  # the single adapter of a logprobs job, as the scorer knows it


@dataclass(frozen=True)
class LogprobsResult:
    output_path: Path
    rows: int
    assistant_messages: int
    scored_tokens: int
    total_logprob: float
    seconds: float  # tokenising, scoring and writing; not model loading
    backend: str
    resumed_rows: int = 0  # of ``rows``, those an earlier attempt scored (taken from the row journal)


def validate_logprobs_file(path: str | Path) -> int:
    """Check every row of ``path`` as the control tier does; returns the number of rows."""
    with Path(path).open("rb") as handle:
        return validate_lines(handle, "conversations", str(path), check_logprobs_row)


def run_logprobs(
    config: LogprobsConfig,
    model: ResolvedModel,
    input_path: str | Path,
    output_path: str | Path,
    *,
    backend: BackendChoice | None = None,
    progress: ProgressCallback | None = None,
    journal: RowJournal | None = None,
) -> LogprobsResult:
    """Score every assistant turn of ``input_path`` with ``model``; write the rows to ``output_path``."""
    total = validate_logprobs_file(input_path)  # fail on a bad row before loading a model
    backend = backend or select_backend("generation")
    adapters = {ADAPTER_NAME: model.adapter_path} if model.adapter_path else None
    scorer = load_scorer(
        backend,
        model.base_path,
        adapters=adapters,
        merge_adapter_paths=model.merge_adapter_paths,
        tokenizer_path=tokenizer_source(model.base_path, model.adapter_path),
        max_model_len=config.max_model_len,
    )
    return score_file(
        scorer,
        input_path,
        output_path,
        batch_size=config.batch_size,
        adapter=ADAPTER_NAME if adapters else None,
        progress=progress,
        total_rows=total,
        journal=journal,
    )


def score_file(
    scorer: Scorer,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 8,
    adapter: str | None = None,
    progress: ProgressCallback | None = None,
    total_rows: int | None = None,
    journal: RowJournal | None = None,
) -> LogprobsResult:
    """Stream ``input_path`` through an already loaded ``scorer``, ``batch_size`` rows per forward pass.

    With a ``journal``, the rows it resumes are written first (their totals read back from them) and
    skipped in the input, and every scored batch is recorded in it.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    total = total_rows if total_rows is not None else validate_logprobs_file(input_path)
    if journal is not None and journal.resumed_rows > total:  # cannot happen with a fingerprint of the input
        journal.discard()
    resumed = journal.resumed_rows if journal is not None else 0
    output_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = messages = tokens = 0
    total_logprob = 0.0
    if progress:
        progress(0, total)
    descriptor, partial = tempfile.mkstemp(prefix=f".{output_path.name}.", dir=output_path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            if resumed:
                for line in journal.resumed_lines():
                    handle.write(line + "\n")
                    scored = json.loads(line)  # the totals are summed row by row, as an uninterrupted run does
                    messages += len(scored["logprobs"])
                    tokens += sum(len(turn["tokens"]) for turn in scored["logprobs"])
                    total_logprob += scored["total_logprob"]
                rows = resumed
                logger.info("resumed %d of %d rows from the row journal; scoring the rest", resumed, total)
                if progress:
                    progress(rows, total)
            for batch in batched(islice(_read_rows(input_path), resumed, None), batch_size):
                encoded = [tokenize_row(scorer, input_path, line, row) for line, row in batch]
                scores = scorer.token_logprobs([conversation.input_ids for conversation in encoded], adapter=adapter)
                lines = []
                for (_, row), conversation, row_scores in zip(batch, encoded, scores, strict=True):
                    scored = output_row(row, conversation, row_scores, scorer.tokenizer)
                    lines.append(json.dumps(scored, ensure_ascii=False))
                    handle.write(lines[-1] + "\n")
                    messages += len(scored["logprobs"])
                    tokens += sum(len(turn["tokens"]) for turn in scored["logprobs"])
                    total_logprob += scored["total_logprob"]
                if journal is not None:
                    journal.record(lines)
                rows += len(batch)
                if progress:
                    progress(rows, total)
            if journal is not None:
                journal.flush()
        os.replace(partial, output_path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - started
    logger.info("scored %d assistant tokens in %d rows in %.1fs (%s)", tokens, rows, seconds, scorer.name)
    return LogprobsResult(output_path, rows, messages, tokens, total_logprob, seconds, scorer.name, resumed)


def tokenize_row(scorer: Scorer, path: Path, line: int, row: dict[str, Any]) -> TokenizedConversation:
    """The row's tokens and assistant turns; a template failure or an over-long row names its line."""
    try:
        conversation = tokenize_conversation(scorer.tokenizer, row["messages"])
    except TemplateError as exc:
        raise DatasetError(str(path), [(line, str(exc))]) from None
    except Exception as exc:  # noqa: BLE001 - templates raise their own errors, e.g. "roles must alternate"
        raise DatasetError(str(path), [(line, f"the chat template cannot render this row: {exc}")]) from exc
    if len(conversation.input_ids) >= scorer.max_model_len:
        raise DatasetError(
            str(path),
            [(line, f"the conversation has {len(conversation.input_ids)} tokens; max_model_len={scorer.max_model_len} "
                    f"scores at most {scorer.max_model_len - 1}. Raise max_model_len or shorten the row (rows are not "
                    "cut: a cut row would be scored as a different text)")],
        )
    return conversation


def output_row(row: dict[str, Any], conversation: TokenizedConversation, scores: list[float], tokenizer: Any) -> dict[str, Any]:
    """The input row with each assistant turn's token log-probabilities and totals added."""
    ids = conversation.input_ids
    turns = []
    for turn in conversation.turns:
        tokens = [
            {"token": tokenizer.decode([ids[position]]), "token_id": ids[position], "logprob": scores[position - 1]}
            for position in range(turn.start, turn.end)
        ]
        turns.append(
            {"message": turn.message, "range": [turn.start, turn.end], "logprob": sum(t["logprob"] for t in tokens), "tokens": tokens}
        )
    return {**row, "logprobs": turns, "total_logprob": sum(turn["logprob"] for turn in turns)}


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` for every non-blank line of an already validated file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, json.loads(raw)
