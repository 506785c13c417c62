"""MMLU-Pro prompts: zero-shot or k-shot, with or without chain of thought, as chat messages or text.

The layout follows MMLU-Pro's evaluation scripts: an instruction naming the category, then each
worked example and the question as ``Question:`` / ``Options:`` with lettered options, and answers
that end in "The answer is (X)". Few-shot examples are the first k examples of the question's
category (file order, so prompts are reproducible), never the question itself.

* ``text``: one string; each example ends ``Answer: <answer>`` and the question ends
  ``Answer: Let's think step by step.`` (chain of thought) or ``Answer:`` so the model continues it.
* ``chat``: alternating user/assistant messages, one pair per example, then the question as the last
  user message; the instruction opens the first user message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal, TypedDict

from compute.evals.mmlu_pro.answers import extract_answer
from compute.evals.mmlu_pro.dataset import LETTERS, MmluProQuestion

PromptFormat = Literal["chat", "text"]


class ChatMessage(TypedDict):
    """One OpenAI-style chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


Prompt = str | list[ChatMessage]

COT_START = "Let's think step by step."
# MMLU-Pro's cot_content opens with "A: Let's think step by step."; the "A:" is its answer label, not a letter.
_COT_LABEL = re.compile(r"^\s*(?:A|Answer)\s*:\s*")


class FewshotShortageError(ValueError):
    """Not enough few-shot examples of a category for the requested ``num_fewshot``."""


def instruction(category: str, chain_of_thought: bool) -> str:
    """The task instruction that opens every prompt."""
    how = (
        'Think step by step and then finish your answer with "The answer is (X)" where X is the correct letter choice.'
        if chain_of_thought
        else 'Answer with "The answer is (X)" where X is the correct letter choice.'
    )
    return f"The following are multiple choice questions (with answers) about {category}. {how}"


def format_question(question: MmluProQuestion) -> str:
    """The question and its lettered options."""
    options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(question.options))
    return f"Question:\n{question.question}\nOptions:\n{options}"


def example_answer(example: MmluProQuestion, chain_of_thought: bool) -> str:
    """A worked example's answer: its reasoning (``cot_content``) when asked for, ending in its letter.

    An example without ``cot_content`` shows only "The answer is (X)." even with chain of thought.
    """
    final = f"The answer is ({example.answer})."
    if not chain_of_thought or not (example.cot_content or "").strip():
        return final
    reasoning = _COT_LABEL.sub("", example.cot_content.strip(), count=1)
    if extract_answer(reasoning, len(example.options)) is None:
        reasoning = f"{reasoning} {final}"
    return reasoning


def _same_question(a: MmluProQuestion, b: MmluProQuestion) -> bool:
    return str(a.question_id) == str(b.question_id) or a.question.strip() == b.question.strip()


def select_examples(
    question: MmluProQuestion, examples_by_category: Mapping[str, Sequence[MmluProQuestion]], k: int
) -> list[MmluProQuestion]:
    """The first ``k`` examples of the question's category that are not the question itself.

    Raises ``FewshotShortageError`` naming the category when fewer than ``k`` are available.
    """
    if k == 0:
        return []
    pool = [ex for ex in examples_by_category.get(question.category, ()) if not _same_question(ex, question)]
    if len(pool) < k:
        raise FewshotShortageError(
            f"num_fewshot={k} needs {k} few-shot examples of category {question.category!r} "
            f"(other than question {question.question_id!r}), but only {len(pool)} are available"
        )
    return pool[:k]


def build_prompt(
    question: MmluProQuestion,
    examples: Sequence[MmluProQuestion],
    *,
    chain_of_thought: bool,
    prompt_format: PromptFormat,
) -> Prompt:
    """The prompt for one question after the given worked examples (zero-shot when there are none)."""
    header = instruction(question.category, chain_of_thought)
    if prompt_format == "text":
        blocks = [header]
        blocks += [f"{format_question(ex)}\nAnswer: {example_answer(ex, chain_of_thought)}" for ex in examples]
        blocks.append(f"{format_question(question)}\nAnswer:" + (f" {COT_START}" if chain_of_thought else ""))
        return "\n\n".join(blocks)
    if prompt_format != "chat":
        raise ValueError(f"prompt_format must be 'chat' or 'text', got {prompt_format!r}")
    turns = [format_question(ex) for ex in examples] + [format_question(question)]
    turns[0] = f"{header}\n\n{turns[0]}"
    messages: list[ChatMessage] = []
    for i, ex in enumerate(examples):
        messages.append({"role": "user", "content": turns[i]})
        messages.append({"role": "assistant", "content": example_answer(ex, chain_of_thought)})
    messages.append({"role": "user", "content": turns[-1]})
    return messages
