"""``eval/multiple-choice``: each choice's probability by log-probability, then accuracy and calibration.

For every question and every choice, the conversation ``context + [user: question] + [assistant:
answer naming the choice]`` is scored with a :mod:`compute.logprobs` scorer; the choice's
log-probability is that of the answer turn (its tokens and the end-of-turn token, the rule of
:mod:`compute.logprobs.spans`). Nothing is sampled.

Per question: ``probabilities`` (the choices' probabilities normalised over the choices), the
prediction (the most probable choice; the first on a tie), ``p_any_choice`` (how much probability
the model puts on answering with any of the choices at all, OpenWeights' metric).

Per category and overall (:func:`summary_table`): accuracy; ``p_correct`` (mean normalised
probability of the right choice, OpenWeights' ``p_correct|any_choice``); ``confidence`` (mean
probability of the predicted choice); ``ece`` (expected calibration error: confidence against
accuracy in ten equal-width bins, weighted by questions); ``brier`` (mean squared error of the
normalised probabilities against the one-hot answer).

In the GPU stage every scored choice sequence is journaled to the store as its batch finishes
(:mod:`compute.row_journal`, stream ``multiple-choice/model-<n>``, one row per sequence), so an
attempt started after a lost pod scores only the sequences left, in the same batches as an
uninterrupted run (hence the same numbers).
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.logprobs.runner import tokenize_row
from compute.logprobs.scorers import Scorer
from compute.row_journal import RowJournal, journal_root, open_stage_journal
from compute.stage import StageContext, StageResult
from compute.training.examples import normalise_messages
from jobs.datasets import validate_lines
from jobs.multiple_choice import QUESTIONS_PURPOSE, MultipleChoiceConfig, Question, parse_question

LETTERS = string.ascii_uppercase
ALL_CATEGORIES = "all"
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class QuestionScore:
    """A question as presented (``order[i]`` is the file index of the i-th choice shown) and its choices' log-probabilities."""

    question: Question
    order: tuple[int, ...]
    logprobs: tuple[float, ...]  # per presented choice

    @property
    def answer(self) -> int:
        """Position of the correct choice as presented."""
        return self.order.index(self.question.answer)

    @property
    def probabilities(self) -> list[float]:
        top = max(self.logprobs)
        weights = [math.exp(logprob - top) for logprob in self.logprobs]
        return [weight / sum(weights) for weight in weights]

    @property
    def predicted(self) -> int:
        return self.logprobs.index(max(self.logprobs))

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer

    @property
    def p_any_choice(self) -> float:
        return sum(math.exp(logprob) for logprob in self.logprobs)

    def to_json(self) -> dict[str, Any]:
        choices = [self.question.choices[index] for index in self.order]
        return {
            "id": self.question.id,
            "line": self.question.line,
            "category": self.question.category,
            "question": self.question.question,
            "choices": choices,
            "order": list(self.order),
            "answer": self.answer,
            "answer_text": choices[self.answer],
            "logprobs": list(self.logprobs),
            "probabilities": self.probabilities,
            "p_any_choice": self.p_any_choice,
            "predicted": self.predicted,
            "correct": self.correct,
        }


def read_questions(path: str | Path) -> list[Question]:
    """Every question of a ``multiple_choice`` file, checked as at upload (errors name the line)."""
    path = Path(path)
    with path.open("rb") as handle:
        validate_lines(handle, QUESTIONS_PURPOSE, str(path))
    with path.open("rb") as handle:
        return [parse_question(json.loads(raw), number) for number, raw in enumerate(handle, start=1) if raw.strip()]


def presented_order(question: Question, randomize: bool, seed: int) -> tuple[int, ...]:
    """The order the choices are shown in: file order, or a shuffle fixed by ``seed`` and the question's id."""
    order = list(range(len(question.choices)))
    if randomize:
        random.Random(f"{seed}:{question.id}").shuffle(order)  # a str seed is hashed with SHA-512: stable across runs
    return tuple(order)


def choice_conversations(question: Question, order: tuple[int, ...], config: MultipleChoiceConfig) -> list[list[dict]]:
    """One conversation per presented choice, ending in the assistant answer that names it."""
    shown = [(LETTERS[position], question.choices[index]) for position, index in enumerate(order)]
    choices_text = "\n".join(config.choice_template.format(choice_char=char, choice_text=text) for char, text in shown)
    user = config.question_template.format(question_text=question.question, choices_text=choices_text)
    prompt = [*normalise_messages(list(question.context)), {"role": "user", "content": user}]
    return [
        prompt + [{"role": "assistant", "content": config.answer_template.format(choice_char=char, choice_text=text)}]
        for char, text in shown
    ]


def score_questions(
    scorer: Scorer,
    questions: list[Question],
    config: MultipleChoiceConfig,
    *,
    source: str | Path,
    adapter: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    journal: RowJournal | None = None,
) -> list[QuestionScore]:
    """Each question's choices scored under ``scorer`` (with ``adapter``), ``config.batch_size`` sequences a pass.

    With a ``journal``, the sequences it resumes are not scored again, and each scored batch is
    recorded in it (a row per sequence: the question's number and id, the choice's position, its
    log-probability).
    """
    requests = []  # (question number, input IDs, answer start, answer end)
    orders = []
    for number, question in enumerate(questions):
        order = presented_order(question, config.randomize, config.seed)
        orders.append(order)
        for messages in choice_conversations(question, order, config):
            conversation = tokenize_row(scorer, Path(source), question.line, {"messages": messages})
            answer = conversation.turns[-1]
            requests.append((number, conversation.input_ids, answer.start, answer.end))
    totals = _resumed_totals(journal, questions, [number for number, _, _, _ in requests])
    done = 0

    def report_finished() -> None:
        nonlocal done
        finished = done
        while finished < len(questions) and len(totals[finished]) == len(questions[finished].choices):
            finished += 1  # requests come in question order, so finished questions are a prefix
        if progress and finished > done:
            progress(finished, len(questions))
        done = finished

    resumed = sum(len(total) for total in totals)
    if resumed:
        report_finished()
    # A journal's chunks end on batches, so the batches from ``resumed`` on are an uninterrupted run's.
    for start in range(resumed, len(requests), config.batch_size):
        batch = requests[start : start + config.batch_size]
        scores = scorer.token_logprobs([ids for _, ids, _, _ in batch], adapter=adapter)
        lines = []
        for (number, _, first, end), row_scores in zip(batch, scores, strict=True):
            totals[number].append(sum(row_scores[first - 1 : end - 1]))
            choice = len(totals[number]) - 1
            row = {"question": number, "id": questions[number].id, "choice": choice, "logprob": totals[number][-1]}
            lines.append(json.dumps(row, ensure_ascii=False))
        if journal is not None:
            journal.record(lines)
        report_finished()
    if journal is not None:
        journal.flush()
    return [QuestionScore(question, order, tuple(total)) for question, order, total in zip(questions, orders, totals, strict=True)]


def _resumed_totals(
    journal: RowJournal | None, questions: list[Question], request_questions: list[int]
) -> list[list[float]]:
    """Per question, its choices' log-probabilities the journal holds (in request order); cleared unless they fit."""
    totals: list[list[float]] = [[] for _ in questions]
    if journal is None or not journal.resumed_rows:
        return totals
    fits = journal.resumed_rows <= len(request_questions)
    if fits:
        try:
            for index, line in enumerate(journal.resumed_lines()):
                row = json.loads(line)
                number = request_questions[index]
                expected = (number, questions[number].id, len(totals[number]))
                if (row["question"], row["id"], row["choice"]) != expected:
                    fits = False
                    break
                totals[number].append(float(row["logprob"]))
        except (KeyError, TypeError, ValueError):  # rows of another shape: not this function's
            fits = False
    if not fits:
        journal.discard()
        return [[] for _ in questions]
    return totals


def summary_table(scores: Iterable[QuestionScore]) -> list[dict[str, Any]]:
    """One row per category (sorted), then ``all``: accuracy and calibration (see the module docstring)."""
    scores = list(scores)
    categories = sorted({score.question.category for score in scores})
    groups = [(category, [s for s in scores if s.question.category == category]) for category in categories]
    return [summary_row(category, group) for category, group in [*groups, (ALL_CATEGORIES, scores)] if group]


def summary_row(category: str, scores: list[QuestionScore]) -> dict[str, Any]:
    count = len(scores)
    correct = sum(score.correct for score in scores)
    return {
        "category": category,
        "questions": count,
        "correct": correct,
        "accuracy": correct / count,
        "p_correct": sum(score.probabilities[score.answer] for score in scores) / count,
        "p_any_choice": sum(score.p_any_choice for score in scores) / count,
        "confidence": sum(max(score.probabilities) for score in scores) / count,
        "ece": expected_calibration_error(scores),
        "brier": sum(brier_score(score) for score in scores) / count,
    }


def expected_calibration_error(scores: list[QuestionScore], bins: int = CALIBRATION_BINS) -> float:
    """Σ over confidence bins of (questions in bin / questions) × |accuracy − mean confidence| in the bin."""
    binned: dict[int, list[QuestionScore]] = {}
    for score in scores:
        confidence = max(score.probabilities)
        binned.setdefault(min(int(confidence * bins), bins - 1), []).append(score)
    error = 0.0
    for members in binned.values():
        accuracy = sum(member.correct for member in members) / len(members)
        confidence = sum(max(member.probabilities) for member in members) / len(members)
        error += len(members) / len(scores) * abs(accuracy - confidence)
    return error


def brier_score(score: QuestionScore) -> float:
    return sum((p - (1.0 if position == score.answer else 0.0)) ** 2 for position, p in enumerate(score.probabilities))


# -- the GPU stage -------------------------------------------------------------------------------------


def run_multiple_choice_stage(config: MultipleChoiceConfig, context: StageContext) -> StageResult:
    from compute.backend import select_backend
    from compute.generation.backends import tokenizer_source
    from compute.logprobs.scorers import load_scorer

    base = context.local_model(config.model)
    adapters = {reference: context.local_adapter(reference) for reference in config.lora_adapters}
    questions_path = context.local_file(config.questions_file)
    questions = read_questions(questions_path)  # before loading a model: a stage may be started by hand
    backend = select_backend("generation")
    scorer = load_scorer(
        backend,
        base.base_path,
        adapters=adapters,
        merge_adapter_paths=base.merge_adapter_paths,
        tokenizer_path=tokenizer_source(base.base_path, None),
        max_model_len=config.max_model_len,
    )
    outputs: dict[str, str] = {}
    accuracy: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    resumed: dict[str, int] = {}  # scored choice sequences taken from an earlier attempt, per model
    for number, model in enumerate(config.models_to_evaluate()):
        stream = f"multiple-choice/model-{number}"
        journal = open_stage_journal(context, stream, config, files=[questions_path], extra=[model])
        scores = score_questions(
            scorer,
            questions,
            config,
            source=questions_path,
            adapter=model if model in adapters else None,
            progress=lambda done, total, model=model: context.reporter.progress(done, total, f"multiple choice, {model}"),
            journal=journal,
        )
        resumed[model] = journal.resumed_rows
        results_path = context.work_dir / f"model-{number}" / "results.jsonl"
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text("".join(json.dumps(score.to_json(), ensure_ascii=False) + "\n" for score in scores), encoding="utf-8")
        outputs[f"results-model-{number}"] = context.store.put_file(
            results_path, f"{context.job_prefix}/multiple-choice/model-{number}/results.jsonl"
        )
        rows = summary_table(scores)
        accuracy[model] = rows[-1]["accuracy"]
        table += [{"model": model, **row} for row in rows]
    context.reporter.table("accuracy", table, description="Multiple-choice accuracy and calibration per category, by log-probability")
    return StageResult(
        outputs=outputs,
        metrics={"scores": accuracy, "resumed_rows": sum(resumed.values())},
        details={"table": table, "backend": scorer.name, "resumed_rows": resumed},
        disposable_prefixes=[journal_root(context.job_prefix)],
    )
