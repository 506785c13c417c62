"""The MMLU-Pro runner end to end: a real tiny model through a transformers generate callable, and
scripted callables for the outcomes a random model cannot show (all correct, misbehaving backends)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest

from compute.evals.mmlu_pro import (
    FewshotShortageError,
    MmluProFormatError,
    SamplingParams,
    run_mmlu_pro,
    summarize,
)
from compute.evals.mmlu_pro.prompts import Prompt
from compute.sample_datasets import mmlu_pro_rows, write_jsonl
from jobs.evals import MmluProConfig


class TransformersGreedyGenerate:
    """Test-local generate callable: batched greedy decoding with a local transformers model.

    Records every call so the test can check what the runner asked for.
    """

    def __init__(self, model_dir):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.calls: list[tuple[list[Prompt], SamplingParams]] = []

    def __call__(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[str]:
        self.calls.append((list(prompts), sampling))
        assert sampling.temperature == 0.0  # this helper only decodes greedily
        texts = [
            p if isinstance(p, str) else self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        # Chat renderings already start with the BOS token; plain text gets it from the tokenizer.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=isinstance(prompts[0], str))
        with self.torch.no_grad():
            output = self.model.generate(
                **batch, max_new_tokens=sampling.max_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        completions = self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [_cut_at_stop(c, sampling.stop) for c in completions]


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


@pytest.fixture
def dataset_path(tmp_path):
    return write_jsonl(tmp_path / "mmlu_pro.jsonl", mmlu_pro_rows(questions_per_category=3, fewshot_per_category=2))


@pytest.mark.slow
@pytest.mark.parametrize("prompt_format", ["chat", "text"])
def test_tiny_model_end_to_end_writes_per_question_results_and_summary(
    tiny_model_dir, dataset_path, tmp_path, prompt_format
):
    generate = TransformersGreedyGenerate(tiny_model_dir)
    config = MmluProConfig(
        model="tiny", dataset_file="file-x", num_fewshot=2, max_tokens=12, prompt_format=prompt_format,
        categories=["math", "physics"],
    )
    progress: list[tuple[int, int]] = []
    result = run_mmlu_pro(
        config, dataset_path=dataset_path, generate=generate, output_dir=tmp_path / "out", batch_size=4,
        on_progress=lambda done, total: progress.append((done, total)),
    )

    test_rows = [r for r in mmlu_pro_rows(3, 2) if r["split"] == "test" and r["category"] in {"math", "physics"}]
    assert [r.question_id for r in result.results] == [r["question_id"] for r in test_rows]
    assert progress == [(4, 6), (6, 6)]
    assert [len(prompts) for prompts, _ in generate.calls] == [4, 2]
    sampling = generate.calls[0][1]
    assert sampling == SamplingParams(max_tokens=12, temperature=0.0, stop=("Question:",) if prompt_format == "text" else ())

    # every prompt is 2-shot: two worked examples, then the question
    for prompts, _ in generate.calls:
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            assert text.count("Question:\n") == 3 and len(re.findall(r"The answer is \([A-J]\)\.", text)) == 2

    # the files hold exactly what was returned
    lines = [json.loads(line) for line in result.results_path.read_text(encoding="utf-8").splitlines()]
    assert lines == [r.to_json() for r in result.results]
    for line, row in zip(lines, test_rows, strict=True):
        assert line["correct_answer"] == row["answer"] and line["category"] == row["category"]
        assert line["correct"] == (line["extracted_answer"] == row["answer"])
        assert isinstance(line["raw_answer"], str) and line["raw_answer"]
    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert summary["overall"] == summarize(result.results).overall.to_json()
    assert summary["overall"]["n"] == 6 and summary["settings"]["num_fewshot"] == 2
    assert [c["category"] for c in summary["categories"]] == ["math", "physics"]


def _oracle(rows: list[dict]):
    """A generate callable that answers every question right, in a different format each time."""
    answer_by_question = {r["question"]: r["answer"] for r in rows}
    formats = ["The answer is ({})", "{}", "answer: {}", "**{}**"]

    def generate(prompts: Sequence[Prompt], sampling: SamplingParams) -> list[str]:
        replies = []
        for i, prompt in enumerate(prompts):
            last_question = re.findall(r"Question:\n(.*)\n", prompt if isinstance(prompt, str) else prompt[-1]["content"])[-1]
            replies.append(formats[i % len(formats)].format(answer_by_question[last_question]))
        return replies

    return generate


def test_right_answers_in_any_usual_format_score_full_accuracy(tmp_path):
    rows = mmlu_pro_rows(questions_per_category=5, fewshot_per_category=0)
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    config = MmluProConfig(model="m", dataset_file="f", chain_of_thought=False, prompt_format="text", max_tokens=8)
    result = run_mmlu_pro(config, dataset_path=path, generate=_oracle(rows), output_dir=tmp_path / "out", batch_size=7)
    assert result.summary.overall.n == 15 and result.summary.overall.correct == 15
    assert result.summary.overall.unparsable == 0 and result.summary.overall.accuracy == 1.0


def test_fewshot_examples_come_from_a_separate_file_when_given(tmp_path):
    rows = mmlu_pro_rows(questions_per_category=2, fewshot_per_category=0)
    shots = [dict(r, question_id=100 + i, split="test") for i, r in enumerate(mmlu_pro_rows(0, 1))]
    path, shots_path = write_jsonl(tmp_path / "data.jsonl", rows), write_jsonl(tmp_path / "shots.jsonl", shots)
    config = MmluProConfig(model="m", dataset_file="f", fewshot_file="g", num_fewshot=1, max_tokens=8)
    result = run_mmlu_pro(config, dataset_path=path, fewshot_path=shots_path, generate=_oracle(rows),
                          output_dir=tmp_path / "out")
    assert result.summary.overall.n == 6 and result.summary.overall.accuracy == 1.0


def _never_called(prompts, sampling):
    raise AssertionError("generate must not be called when the data does not fit the config")


@pytest.mark.parametrize(
    ("rows", "overrides", "error", "message"),
    [
        (mmlu_pro_rows(2, 1), {"num_fewshot": 2}, FewshotShortageError, "num_fewshot=2 needs 2 few-shot examples"),
        (mmlu_pro_rows(2, 0), {"num_fewshot": 1}, FewshotShortageError, "only 0 are available"),
        (mmlu_pro_rows(2, 0), {"categories": ["law"]}, ValueError, r"categories \['law'\] have no questions"),
        (mmlu_pro_rows(2, 0) + [{"question": "Q"}], {}, MmluProFormatError, r"data.jsonl:7: "),
    ],
)
def test_data_that_does_not_fit_fails_before_generating(tmp_path, rows, overrides, error, message):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    config = MmluProConfig(model="m", dataset_file="f", max_tokens=8, **overrides)
    with pytest.raises(error, match=message):
        run_mmlu_pro(config, dataset_path=path, generate=_never_called, output_dir=tmp_path / "out")


def test_a_backend_returning_the_wrong_number_of_completions_is_an_error(tmp_path, dataset_path):
    config = MmluProConfig(model="m", dataset_file="f", max_tokens=8)
    with pytest.raises(RuntimeError, match="generate returned 1 completions for 5 prompts"):
        run_mmlu_pro(config, dataset_path=dataset_path, generate=lambda prompts, sampling: ["A"],
                     output_dir=tmp_path / "out", batch_size=5)
