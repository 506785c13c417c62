"""Run MMLU-Pro: select questions, build prompts, generate through a given callable, score, write results.

Generation is the caller's: ``generate(prompts, sampling)`` returns one completion per prompt, in
order. The flow passes the project's batch-generation backend or a client of an OpenAI-compatible
endpoint; tests pass a small transformers loop. Everything that can fail on the data (format,
unknown categories, too few few-shot examples) fails before the first call to ``generate``.

Outputs in ``output_dir``: ``results.jsonl`` (one ``QuestionResult`` per line, appended batch by
batch) and ``summary.json`` (the configuration's evaluation settings and the per-category scores).
Given a :class:`compute.row_journal.RowJournal`, each scored batch is also stored in it, and the
questions an earlier attempt of the job scored are taken from it, not asked again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from compute.evals.mmlu_pro.dataset import MmluProQuestion, load_mmlu_pro_file
from compute.evals.mmlu_pro.prompts import Prompt, build_prompt, select_examples
from compute.evals.mmlu_pro.scoring import MmluProSummary, QuestionResult, score_reply, summarize
from compute.row_journal import RowJournal
from jobs.evals import MmluProConfig

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
TEXT_STOP = ("Question:",)  # a base model continuing a text prompt starts the next question here


@dataclass(frozen=True)
class SamplingParams:
    """How to sample each completion; the runner derives it from the config."""

    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()


class GenerateFn(Protocol):
    """Generates one completion per prompt, in order.

    Prompts of one call are all plain strings or all chat-message lists (``prompt_format``).
    A completion is the generated text only, without the prompt.
    """

    def __call__(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> Sequence[str]: ...


@dataclass(frozen=True)
class MmluProResult:
    """Per-question results, their summary and the files they were written to."""

    results: list[QuestionResult]
    summary: MmluProSummary
    results_path: Path
    summary_path: Path
    resumed: int = 0  # of ``results``, those an earlier attempt scored (taken from its row journal)


def select_questions(
    questions: Sequence[MmluProQuestion], categories: Sequence[str], limit: int | None
) -> list[MmluProQuestion]:
    """The evaluated questions: test-split rows, of ``categories`` (case-insensitive; empty: all), first ``limit``.

    Raises ``ValueError`` naming a requested category that no evaluated question has, with those available.
    """
    evaluated = [q for q in questions if not q.is_fewshot_example]
    if categories:
        available = sorted({q.category for q in evaluated})
        folded = {c.casefold() for c in available}
        unknown = [c for c in categories if c.casefold() not in folded]
        if unknown:
            raise ValueError(f"categories {unknown} have no questions in the dataset; available: {available}")
        wanted = {c.casefold() for c in categories}
        evaluated = [q for q in evaluated if q.category.casefold() in wanted]
    if limit is not None:
        evaluated = evaluated[:limit]
    if not evaluated:
        raise ValueError("the dataset has no questions to evaluate (every row is a few-shot example)")
    return evaluated


def build_prompts(
    questions: Sequence[MmluProQuestion],
    examples: Sequence[MmluProQuestion],
    config: MmluProConfig,
) -> list[Prompt]:
    """One prompt per question, with ``config.num_fewshot`` examples of its category from ``examples``."""
    by_category: dict[str, list[MmluProQuestion]] = {}
    for example in examples:
        by_category.setdefault(example.category, []).append(example)
    return [
        build_prompt(
            question,
            select_examples(question, by_category, config.num_fewshot),
            chain_of_thought=config.chain_of_thought,
            prompt_format=config.prompt_format,
        )
        for question in questions
    ]


def sampling_params(config: MmluProConfig) -> SamplingParams:
    """Sampling settings of a config; text prompts stop before the model invents the next question."""
    return SamplingParams(
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        stop=TEXT_STOP if config.prompt_format == "text" else (),
    )


def run_mmlu_pro(
    config: MmluProConfig,
    *,
    dataset_path: str | Path,
    generate: GenerateFn,
    output_dir: str | Path,
    fewshot_path: str | Path | None = None,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    journal: RowJournal | None = None,
) -> MmluProResult:
    """Evaluate ``config`` on a local MMLU-Pro file; ``dataset_path``/``fewshot_path`` are the resolved files.

    ``on_progress(done, total)`` is called after each batch (e.g. to update a progress artifact).
    ``journal`` (opened for this model and these inputs) resumes the questions it holds and records
    each new batch.
    Raises ``MmluProFormatError``, ``FewshotShortageError`` or ``ValueError`` before generating when the
    data does not fit the config, and ``RuntimeError`` when ``generate`` returns the wrong number of completions.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if config.fewshot_file is not None and fewshot_path is None:
        raise ValueError("config.fewshot_file is set, so fewshot_path (its local copy) must be given")
    dataset_path, output_dir = Path(dataset_path), Path(output_dir)

    questions = load_mmlu_pro_file(dataset_path)
    selected = select_questions(questions, config.categories, config.limit)
    if fewshot_path is not None:
        examples = load_mmlu_pro_file(fewshot_path)  # every row of a separate few-shot file is an example
    else:
        examples = [q for q in questions if q.is_fewshot_example]
    prompts = build_prompts(selected, examples, config)
    sampling = sampling_params(config)
    logger.info(
        "MMLU-Pro: %d questions from %s, %d-shot, %s prompts, chain of thought %s",
        len(selected), dataset_path, config.num_fewshot, config.prompt_format, config.chain_of_thought,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / RESULTS_FILE
    results = _resumed_results(journal, selected)
    with results_path.open("w", encoding="utf-8") as results_file:
        results_file.writelines(json.dumps(result.to_json(), ensure_ascii=False) + "\n" for result in results)
        if results:
            logger.info("MMLU-Pro: %d/%d questions resumed from the row journal", len(results), len(selected))
            if on_progress is not None:
                on_progress(len(results), len(selected))
        for start in range(len(results), len(selected), batch_size):
            batch = selected[start : start + batch_size]
            completions = list(generate(prompts[start : start + batch_size], sampling))
            if len(completions) != len(batch) or not all(isinstance(c, str) for c in completions):
                raise RuntimeError(
                    f"generate returned {len(completions)} completions for {len(batch)} prompts "
                    f"(questions {start + 1}-{start + len(batch)}); expected one string per prompt"
                )
            lines = []
            for question, completion in zip(batch, completions, strict=True):
                result = score_reply(question, completion)
                results.append(result)
                lines.append(json.dumps(result.to_json(), ensure_ascii=False))
            results_file.writelines(line + "\n" for line in lines)
            results_file.flush()
            if journal is not None:
                journal.record(lines)
            if on_progress is not None:
                on_progress(len(results), len(selected))
            logger.info("MMLU-Pro: %d/%d questions answered", len(results), len(selected))
        if journal is not None:
            journal.flush()

    summary = summarize(results)
    summary_path = output_dir / SUMMARY_FILE
    settings = config.model_dump(include={"num_fewshot", "chain_of_thought", "prompt_format", "max_tokens",
                                          "temperature", "categories", "limit"})
    summary_path.write_text(json.dumps({"settings": settings, **summary.to_json()}, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "MMLU-Pro: accuracy %.4f over %d questions, %d unparsable",
        summary.overall.accuracy, summary.overall.n, summary.overall.unparsable,
    )
    resumed = journal.resumed_rows if journal is not None else 0
    return MmluProResult(
        results=results, summary=summary, results_path=results_path, summary_path=summary_path, resumed=resumed
    )


def _resumed_results(journal: RowJournal | None, selected: Sequence[MmluProQuestion]) -> list[QuestionResult]:
    """The results the journal holds if they answer the first selected questions; else none (it is cleared)."""
    if journal is None or not journal.resumed_rows:
        return []
    try:
        results = [QuestionResult(**json.loads(line)) for line in journal.resumed_lines()]
        fits = len(results) <= len(selected) and all(
            result.question_id == question.question_id
            for result, question in zip(results, selected, strict=False)
        )
    except (TypeError, ValueError):  # rows of another shape: not this runner's
        fits = False
    if not fits:
        logger.warning("MMLU-Pro: the row journal holds other questions than those selected; asking them all again")
        journal.discard()
        return []
    return results
