"""`eval/multiple-choice`: choices scored by log-probability; accuracy and calibration that match a recount."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from jobs.datasets import DatasetError, RowError

QUESTIONS = [
    {"question": "What is 2 plus 2?", "choices": ["4", "5", "22"], "answer": "4", "category": "arithmetic"},
    {"question": "What is 3 plus 4?", "choices": ["7", "8"], "answer": "7", "category": "arithmetic"},
    {"question": "What is 6 plus 3?", "choices": ["9", "63", "10", "8"], "answer": "9", "category": "arithmetic"},
    {
        "question": "What color is the sky?",
        "choices": [{"text": "blue", "is_correct": True}, {"text": "green", "is_correct": False}, {"text": "red", "is_correct": False}],
        "category": "world",
    },
    {"id": "woof", "question": "Which animal says woof?", "choices": ["cat", "dog"], "answer": "dog", "category": "world"},
    {"question": "Is 1 plus 1 two?", "choices": ["yes", "no"], "answer": "yes", "context": [{"role": "system", "content": "Answer with a letter."}]},
]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- questions and parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"question": "Q?", "choices": ["only"], "answer": "only"}, "at least 2 choices"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": "c"}, "answer 'c' is not among the choices"),
        ({"question": "Q?", "choices": ["a", "b"]}, "'answer' is missing"),
        ({"question": "Q?", "choices": ["a", "a"], "answer": "a"}, "more than once"),
        ({"question": "Q?", "choices": [{"text": "a", "is_correct": True}, {"text": "b", "is_correct": True}]}, "exactly one choice"),
        ({"question": "Q?", "choices": [{"text": "a", "is_correct": True}, {"text": "b", "is_correct": False}], "answer": "b"}, "disagrees"),
        ({"question": "", "choices": ["a", "b"], "answer": "a"}, "'question' must be a non-empty string"),
        ({"question": "Q?", "choices": ["a", "b"], "answer": "a", "context": [{"role": "robot", "content": "x"}]}, "context"),
    ],
)
def test_bad_questions_are_refused_with_what_is_wrong(row, problem):
    from jobs.multiple_choice import check_question_row

    with pytest.raises(RowError, match=problem):
        check_question_row(row)


def test_a_bad_questions_file_is_refused_at_upload_naming_file_and_line(tmp_path):
    from store.files import check_file

    rows = [QUESTIONS[0], {"question": "Q?", "choices": ["a", "b"], "answer": "c"}, {"question": "Q?", "choices": ["x"], "answer": "x"}]
    with pytest.raises(DatasetError) as refused:
        check_file(write_rows(tmp_path / "questions.jsonl", rows), "multiple_choice")
    assert "questions.jsonl, line 2: answer 'c' is not among the choices" in str(refused.value)
    assert "questions.jsonl, line 3: 'choices' must list at least 2 choices" in str(refused.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"answer_template": "The answer"}, "answer_template: must contain {choice_char} or {choice_text}"),
        ({"choice_template": "{letter}: {choice_text}"}, "choice_template: unknown field(s) {letter}"),
        ({"question_template": "{question_text"}, "question_template:"),
        ({"questions_file": "conversations:file-" + "0" * 64}, "questions_file must be a multiple_choice file"),
    ],
)
def test_templates_and_the_questions_file_are_checked_by_field(change, problem):
    from jobs.registry import get_job_spec
    from jobs.validation import InvalidJobError, validate_params

    params = {"model": "org/base", "questions_file": "multiple_choice:file-" + "0" * 64, **change}
    with pytest.raises(InvalidJobError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")):
        validate_params(get_job_spec("eval-multiple-choice"), params)


def test_the_choice_shuffle_is_a_permutation_fixed_by_seed_and_question():
    from compute.evals.multiple_choice import presented_order
    from jobs.multiple_choice import parse_question

    question = parse_question(QUESTIONS[2], 3)
    assert presented_order(question, randomize=False, seed=0) == (0, 1, 2, 3)
    shuffles = {presented_order(question, randomize=True, seed=seed) for seed in range(20)}
    assert all(sorted(order) == [0, 1, 2, 3] for order in shuffles) and len(shuffles) > 1
    assert presented_order(question, randomize=True, seed=5) == presented_order(question, randomize=True, seed=5)


def test_accuracy_and_calibration_of_known_probabilities():
    from compute.evals.multiple_choice import QuestionScore, summary_table
    from jobs.multiple_choice import Question

    def scored(category: str, probabilities: list[float], answer: int) -> QuestionScore:
        question = Question("q", "?", tuple("abcd"[: len(probabilities)]), answer, category)
        return QuestionScore(question, tuple(range(len(probabilities))), tuple(math.log(p) for p in probabilities))

    scores = [scored("x", [0.9, 0.1], 0), scored("x", [0.6, 0.4], 1), scored("y", [0.25, 0.25, 0.5], 2)]
    rows = {row["category"]: row for row in summary_table(scores)}
    assert list(rows) == ["x", "y", "all"]
    assert (rows["x"]["questions"], rows["x"]["correct"], rows["x"]["accuracy"]) == (2, 1, 0.5)
    assert rows["x"]["p_correct"] == pytest.approx((0.9 + 0.4) / 2)
    assert rows["x"]["confidence"] == pytest.approx((0.9 + 0.6) / 2)
    assert rows["x"]["ece"] == pytest.approx(0.5 * abs(1 - 0.9) + 0.5 * abs(0 - 0.6))  # bins 0.9 and 0.6
    assert rows["x"]["brier"] == pytest.approx(((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2)) / 2)
    assert rows["y"]["accuracy"] == 1.0 and rows["y"]["p_any_choice"] == pytest.approx(1.0)
    assert rows["all"]["accuracy"] == pytest.approx(2 / 3)


# -- through the embedded default: a sweep column, and the client --------------------------------------


@pytest.fixture(scope="module")
def questions_file(ow_stack, tmp_path_factory):
    return ow_stack.upload(write_rows(tmp_path_factory.mktemp("mc") / "questions.jsonl", QUESTIONS), "multiple_choice")


@pytest.fixture(scope="module")
def swept(ow_stack, tiny_model_dir, tiny_lora_adapters, questions_file):
    """One sweep of the base model and an adapter on one multiple-choice evaluation (one job, both models)."""
    models = [str(tiny_model_dir), str(tiny_lora_adapters["tests/tiny-lora-a"])]
    evals = [{"name": "mc", "kind": "multiple-choice", "params": {"questions_file": questions_file, "max_model_len": 512, "batch_size": 4}}]
    run = ow_stack.run("eval/sweep", {"sweep_name": "mc-sweep", "models": models, "evals": evals})
    assert run.state.type == StateType.COMPLETED, run.state.message
    [evaluation] = ow_stack.flow_runs(tag="ow-sweep:mc-sweep")
    return models, ow_stack.job_id_of(evaluation), run


def plain_answer_logprob(model_dir: Path, prompt: list[dict], answer: str) -> float:
    """log p(answer turn | prompt) from one unbatched forward pass: the tokens after the generation prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(prefix_ids)] == prefix_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(len(prefix_ids), len(ids)))


def test_a_sweep_scores_each_model_by_logprobs_and_its_tables_match_a_recount(ow_stack, swept, tiny_model_dir):
    models, job_id, _ = swept
    record = ow_stack.store.read_json(f"jobs/{job_id}/result.json")
    assert job_id.startswith("mcjob-") and record["job_type"] == "eval-multiple-choice"
    recount: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for number, model in enumerate(models):
        key = f"jobs/{job_id}/multiple-choice/model-{number}/results.jsonl"
        results = [json.loads(line) for line in ow_stack.store.read_bytes(key).decode().splitlines()]
        assert [row["question"] for row in results] == [q["question"] for q in QUESTIONS]
        for row in results:
            assert len(row["logprobs"]) == len(row["choices"]) and sorted(row["order"]) == list(range(len(row["choices"])))
            best = max(range(len(row["logprobs"])), key=lambda position: row["logprobs"][position])
            assert row["predicted"] == best and row["correct"] == (best == row["answer"])
            assert sum(row["probabilities"]) == pytest.approx(1.0)
            for category in (row["category"], "all"):
                recount[(model, category)][0] += 1
                recount[(model, category)][1] += best == row["answer"]
        assert record["metrics"]["scores"][model] == pytest.approx(recount[(model, "all")][1] / len(QUESTIONS))

    # The numbers themselves: the first question's choices under the base model, by a plain forward pass.
    first = json.loads(ow_stack.store.read_bytes(f"jobs/{job_id}/multiple-choice/model-0/results.jsonl").decode().splitlines()[0])
    lines = "\n".join(f"{'ABCD'[position]}: {choice}" for position, choice in enumerate(first["choices"]))
    prompt = [{"role": "user", "content": f"{QUESTIONS[0]['question']}\n{lines}"}]
    expected = [plain_answer_logprob(tiny_model_dir, prompt, "ABCD"[position]) for position in range(len(first["choices"]))]
    assert first["logprobs"] == pytest.approx(expected, abs=1e-3)

    [stage] = ow_stack.gpu_stage_runs(job_id)
    table = table_rows(next(a for a in ow_stack.artifacts(stage.id) if a.key and a.key.endswith("-accuracy")))
    assert {(row["model"], row["category"]) for row in table} == set(recount)
    assert ow_stack.noisy_log_lines(stage.id) == []
    for row in table:
        count, correct = recount[(row["model"], row["category"])]
        assert (row["questions"], row["correct"]) == (count, correct)
        assert row["accuracy"] == pytest.approx(correct / count)
        assert 0 <= row["ece"] <= 1 and 0 <= row["brier"] <= 2 and 0 < row["p_any_choice"] <= 1

    comparison = latest_table("eval-sweep-mc-sweep")
    assert [row["model"] for row in comparison] == models
    assert [row["mc"] for row in comparison] == [pytest.approx(recount[(m, "all")][1] / len(QUESTIONS)) for m in models]


def test_ow_multiple_choice_names_the_same_job_as_the_sweep(swept, ow_stack, questions_file):
    from client import OpenWeights

    models, job_id, _ = swept
    ow = OpenWeights()
    job = ow.multiple_choice.create(
        model=models[0], lora_adapters=models[1:], include_base_model=True, questions_file=questions_file, max_model_len=512, batch_size=4
    )
    assert job.id == job_id and job.status == "completed"  # identical to the sweep's job: returned, not run again
    assert len(ow_stack.gpu_stage_runs(job_id)) == 1


def table_rows(artifact) -> list[dict]:
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def latest_table(key: str) -> list[dict]:
    """The newest version of a table artifact (the sweep publishes one version per run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1)
    return table_rows(artifact)
