"""`inference/logprobs`: every assistant token's log-probability equals a plain forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from compute.backend import BackendChoice
from jobs.datasets import RowError
from tests.fixtures.stack import noisy_lines

ROWS = [
    {"messages": [{"role": "user", "content": "What is 1 plus 2?"}, {"role": "assistant", "content": "1 plus 2 is 3."}]},
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 5 plus 1?"},
            {"role": "assistant", "content": "6."},
            {"role": "user", "content": "And 6 plus 1?"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "7."}]},
        ],
        "meta": {"id": 2},
    },
    {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]},
]
CPU = BackendChoice("transformers", "cpu", "tests")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def plain_forward_logprobs(model_dir: Path, messages: list[dict], adapter_dir: Path | None = None) -> tuple[list[int], list[float]]:
    """The rendered conversation's token IDs and, for t >= 1, log p(token t | before), from one unbatched forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])} for m in messages]
    ids = tokenizer(tokenizer.apply_chat_template(flat, tokenize=False), add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    return ids, [log_probs[t - 1, ids[t]].item() for t in range(1, len(ids))]


def assert_matches_forward_pass(model_dir: Path, source: dict, scored: dict, adapter_dir: Path | None = None) -> None:
    ids, expected = plain_forward_logprobs(model_dir, source["messages"], adapter_dir)
    assistant = [index for index, message in enumerate(source["messages"]) if message["role"] == "assistant"]
    assert [turn["message"] for turn in scored["logprobs"]] == assistant
    for turn in scored["logprobs"]:
        start, end = turn["range"]
        assert [token["token_id"] for token in turn["tokens"]] == ids[start:end]
        assert [token["logprob"] for token in turn["tokens"]] == pytest.approx(expected[start - 1 : end - 1], abs=1e-4)
        assert turn["logprob"] == pytest.approx(sum(expected[start - 1 : end - 1]), abs=1e-3)
        content = source["messages"][turn["message"]]["content"]
        text = content if isinstance(content, str) else "".join(part["text"] for part in content)
        assert "".join(token["token"] for token in turn["tokens"]) == text + "<|eot_id|>"  # the turn and its end
    assert scored["total_logprob"] == pytest.approx(sum(turn["logprob"] for turn in scored["logprobs"]))
    assert {key: scored[key] for key in source} == source  # the input row is kept


# -- rows ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "messages has no assistant turn"),
        ({"text": "Once upon a time"}, "a 'text' row has no assistant turn"),
        ({"prompt": [], "chosen": [], "rejected": []}, "needs 'messages'"),
        ({"messages": []}, "non-empty list of messages"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_rows_without_an_assistant_turn_to_score_are_refused(row, problem):
    from jobs.logprobs import check_logprobs_row

    with pytest.raises(RowError, match=problem):
        check_logprobs_row(row)


# -- the computation, without Prefect ----------------------------------------------------------------


def test_batched_scores_equal_a_plain_forward_pass_for_a_model_and_an_adapter(tiny_model_dir, tiny_lora_adapters, tmp_path):
    from compute.logprobs.runner import run_logprobs
    from jobs.logprobs import LogprobsConfig
    from jobs.model_refs import ResolvedModel

    source = write_rows(tmp_path / "rows.jsonl", ROWS)
    config = LogprobsConfig(model=str(tiny_model_dir), input_file="conversations:file-" + "0" * 64, batch_size=2)
    adapter = tiny_lora_adapters["tests/tiny-lora-a"]
    for adapter_dir in (None, adapter):
        model = ResolvedModel(str(tiny_model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
        output = tmp_path / f"out-{adapter_dir is not None}.jsonl"
        result = run_logprobs(config, model, source, output, backend=CPU)  # batches of 2 rows of unequal length
        scored = [json.loads(line) for line in output.read_text().splitlines()]
        assert result.rows == len(ROWS) and result.assistant_messages == 4
        for row, out in zip(ROWS, scored, strict=True):
            assert_matches_forward_pass(tiny_model_dir, row, out, adapter_dir)


def test_a_conversation_longer_than_max_model_len_is_refused_naming_its_line(tiny_model_dir, tmp_path):
    from compute.logprobs.runner import run_logprobs
    from jobs.datasets import DatasetError
    from jobs.logprobs import LogprobsConfig
    from jobs.model_refs import ResolvedModel

    long = {"messages": [{"role": "user", "content": "one two three " * 20}, {"role": "assistant", "content": "ok"}]}
    source = write_rows(tmp_path / "long.jsonl", [ROWS[0], long])
    config = LogprobsConfig(model=str(tiny_model_dir), input_file="conversations:file-" + "0" * 64, max_model_len=40)
    with pytest.raises(DatasetError, match=r"long.jsonl, line 2: the conversation has \d+ tokens; max_model_len=40"):
        run_logprobs(config, ResolvedModel(str(tiny_model_dir)), source, tmp_path / "out.jsonl", backend=CPU)
    assert not (tmp_path / "out.jsonl").exists()


# -- through the embedded default ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


def test_ow_logprob_stores_the_forward_pass_numbers(ow, tiny_model_dir, tmp_path):
    file_id = ow.files.upload(write_rows(tmp_path / "conversations.jsonl", ROWS), purpose="conversations")["id"]
    job = ow.logprob.create(model=str(tiny_model_dir), dataset=file_id, batch_size=2)  # OpenWeights' names
    assert job.id.startswith("lpjob-")
    job.wait(timeout=600)
    assert job.status == "completed", job.logs()[-3000:]
    assert noisy_lines(job.logs()) == []
    assert job.outputs["logprobs"].endswith(f"jobs/{job.id}/logprobs.jsonl")
    scored = [json.loads(line) for line in ow.files.content(job.outputs["file"]).decode().splitlines()]
    for row, out in zip(ROWS, scored, strict=True):
        assert_matches_forward_pass(tiny_model_dir, row, out)
    assert job.metrics["scored_tokens"] == sum(len(turn["tokens"]) for out in scored for turn in out["logprobs"])


def test_a_row_without_an_assistant_turn_is_refused_before_any_gpu_stage(ow, ow_stack, tiny_model_dir, tmp_path):
    from jobs.validation import InvalidJobError

    rows = [ROWS[0], {"messages": [{"role": "user", "content": "No answer here."}]}]
    file_id = ow_stack.upload(write_rows(tmp_path / "unanswered.jsonl", rows), "conversations")  # fine for inference
    expected = "input_file: unanswered.jsonl (" + file_id + "), line 2: messages has no assistant turn"
    with pytest.raises(InvalidJobError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ow.logprob.create(model=str(tiny_model_dir), input_file=file_id)
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    run = ow_stack.run("inference/logprobs", {"model": str(tiny_model_dir), "input_file": file_id})
    assert run.state.type == StateType.FAILED
    assert expected in run.state.message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before
