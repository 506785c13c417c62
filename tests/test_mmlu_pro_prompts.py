"""MMLU-Pro prompts: k-shot prompts hold k examples of the category and never the question itself."""

from __future__ import annotations

import pytest

from compute.evals.mmlu_pro import FewshotShortageError, MmluProQuestion, build_prompt
from compute.evals.mmlu_pro.prompts import example_answer, select_examples
from compute.evals.mmlu_pro.runner import build_prompts, select_questions
from jobs.evals import MmluProConfig


def _q(i: int, category: str = "math", split: str = "test", cot: str | None = None) -> MmluProQuestion:
    return MmluProQuestion(
        question_id=i,
        question=f"What is question number {i}?",
        options=("alpha", "beta", "gamma", "delta"),
        answer="ABCD"[i % 4],
        category=category,
        split=split,
        cot_content=cot,
    )


def _config(**overrides) -> MmluProConfig:
    return MmluProConfig(model="m", dataset_file="f", **overrides)


def test_zero_shot_text_prompt_holds_instruction_question_and_lettered_options():
    prompt = build_prompt(_q(1), [], chain_of_thought=True, prompt_format="text")
    assert prompt == (
        "The following are multiple choice questions (with answers) about math. Think step by step and then "
        'finish your answer with "The answer is (X)" where X is the correct letter choice.\n\n'
        "Question:\nWhat is question number 1?\nOptions:\nA. alpha\nB. beta\nC. gamma\nD. delta\n"
        "Answer: Let's think step by step."
    )
    direct = build_prompt(_q(1), [], chain_of_thought=False, prompt_format="text")
    assert direct.endswith("D. delta\nAnswer:") and "Think step by step" not in direct


@pytest.mark.parametrize("prompt_format", ["text", "chat"])
@pytest.mark.parametrize("k", [1, 3])
def test_k_shot_prompt_holds_k_examples_of_the_category_and_not_the_question(prompt_format, k):
    question = _q(2)
    pool = [_q(i, split="validation") for i in (2, 5, 6, 7, 8)] + [_q(9, category="law", split="validation")]
    config = _config(num_fewshot=k, prompt_format=prompt_format)
    [prompt] = build_prompts([question], pool, config)
    text = prompt if prompt_format == "text" else "\n".join(m["content"] for m in prompt)

    assert text.count("Question:\n") == k + 1  # k examples, then the question
    assert text.count(question.question) == 1  # the question appears once: as the question, not as an example
    expected_examples = [5, 6, 7, 8][:k]  # the same question (id 2) is skipped; the law example never used
    for i in expected_examples:
        assert f"What is question number {i}?" in text
    assert "number 9?" not in text
    if prompt_format == "chat":
        assert [m["role"] for m in prompt] == ["user", "assistant"] * k + ["user"]
        assert prompt[0]["content"].startswith("The following are multiple choice questions")
        assert prompt[-1]["content"].startswith("Question:\nWhat is question number 2?")
        assert all(m["content"].endswith(".") for m in prompt if m["role"] == "assistant")


def test_examples_show_their_reasoning_only_with_chain_of_thought():
    reasoned = _q(5, split="validation", cot="A: Let's think step by step. Beta is second. The answer is (B).")
    assert example_answer(reasoned, chain_of_thought=True) == "Let's think step by step. Beta is second. The answer is (B)."
    assert example_answer(reasoned, chain_of_thought=False) == "The answer is (B)."
    unfinished = _q(5, split="validation", cot="A: Let's think step by step. Beta is second.")
    assert example_answer(unfinished, chain_of_thought=True).endswith("Beta is second. The answer is (B).")
    assert example_answer(_q(5, split="validation"), chain_of_thought=True) == "The answer is (B)."


def test_too_few_examples_of_a_category_fails_naming_it():
    with pytest.raises(FewshotShortageError, match="num_fewshot=2 needs 2 few-shot examples of category 'math'.*only 1"):
        select_examples(_q(1), {"math": [_q(1, split="validation"), _q(3, split="validation")]}, 2)


def test_question_selection_by_category_and_limit():
    questions = [_q(1, "Math"), _q(2, "law"), _q(3, "Math", split="validation"), _q(4, "Math"), _q(5, "bio")]
    assert [q.question_id for q in select_questions(questions, [], None)] == [1, 2, 4, 5]
    assert [q.question_id for q in select_questions(questions, ["math"], None)] == [1, 4]
    assert [q.question_id for q in select_questions(questions, ["math", "BIO"], 2)] == [1, 4]
    with pytest.raises(ValueError, match=r"categories \['physics'\] have no questions.*available: \['Math', 'bio', 'law'\]"):
        select_questions(questions, ["physics"], None)
    with pytest.raises(ValueError, match="no questions to evaluate"):
        select_questions([_q(3, split="dev")], [], None)
