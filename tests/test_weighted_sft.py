"""Weighted SFT (OpenWeights' ``weighted_sft``): the row format, its tokens' weights, the loss, and a job."""

from __future__ import annotations

import json

import pytest

from compute.training.examples import IGNORE_INDEX, sft_examples, tokenize_weighted_conversation
from jobs.datasets import (
    WEIGHTED_CONVERSATIONS,
    DatasetError,
    RowError,
    validate_lines,
    weighted_blocks,
    weighted_training_row_check,
)
from jobs.finetune import TrainingConfig, openweights_weighted_sft_params
from tests.fixtures.jobs import FAST_SFT

CONV = "conversations:file-" + "a" * 64
WEIGHTED = "weighted_conversations:file-" + "b" * 64


def weighted_row(a: int, b: int, answer_weight: float = 1, hedge_weight: float = -1) -> dict:
    """A user question (weight 0) and an answer in two blocks: the right sum and a wrong hedge."""
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"What is {a} plus {b}?", "weight": 0}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": f"{a} plus {b} is {a + b}.", "weight": answer_weight, "tag": "answer"},
                    {"type": "text", "text": f" Or {a + b + 3}?", "weight": hedge_weight, "tag": "hedge"},
                ],
            },
        ]
    }


def jsonl(*rows) -> list[bytes]:
    return [(row if isinstance(row, str) else json.dumps(row)).encode() + b"\n" for row in rows]


# -- the row format ----------------------------------------------------------------------------


def _with_answer_weight(weight) -> str:
    row = weighted_row(1, 2)
    row["messages"][1]["content"][1]["weight"] = "__WEIGHT__"
    return json.dumps(row).replace('"__WEIGHT__"', weight)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_with_answer_weight('"heavy"'), 'messages[1].content[1].weight must be a finite number (a 32-bit float), got "heavy"'),
        (_with_answer_weight("NaN"), "messages[1].content[1].weight must be a finite number (a 32-bit float), got NaN"),
        (_with_answer_weight("-Infinity"), "messages[1].content[1].weight must be a finite number (a 32-bit float), got -Infinity"),
        (_with_answer_weight("1e39"), "messages[1].content[1].weight must be a finite number (a 32-bit float), got 1e+39"),
        (_with_answer_weight("1" + "0" * 400), "messages[1].content[1].weight must be a finite number (a 32-bit float), got 1000"),
        (_with_answer_weight("true"), "messages[1].content[1].weight must be a finite number (a 32-bit float), got true"),
        (_with_answer_weight("[1]"), "messages[1].content[1].weight must be a finite number (a 32-bit float), got [1]"),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": "2"}]}),
            'messages[1].weight must be a finite number (a 32-bit float), got "2"',
        ),
        (json.dumps({"text": "a base-model row"}), "a weighted conversations row needs 'messages'"),
    ],
)
def test_a_bad_weight_is_refused_naming_the_file_line_message_and_block(line, message):
    with pytest.raises(DatasetError) as caught:
        validate_lines(jsonl(weighted_row(1, 2), line), WEIGHTED_CONVERSATIONS, "weighted.jsonl")
    assert str(caught.value).startswith(f"weighted.jsonl, line 2: {message}"), str(caught.value)


def test_negative_zero_and_missing_weights_are_valid():
    row = weighted_row(1, 2, answer_weight=2.5, hedge_weight=-1e6)
    row["messages"].append({"role": "user", "content": "and then?", "weight": None})
    row["messages"].append({"role": "assistant", "content": "nothing.", "weight": -3})
    assert validate_lines(jsonl(row, weighted_row(3, 4)), WEIGHTED_CONVERSATIONS, "weighted.jsonl") == 2


@pytest.mark.parametrize(
    ("message", "responses_only", "weights"),
    [
        ({"role": "assistant", "content": "a"}, True, [1.0]),
        ({"role": "user", "content": "a"}, True, [0.0]),
        ({"role": "user", "content": "a"}, False, [1.0]),
        ({"role": "user", "content": "a", "weight": 0.5}, True, [0.5]),
        ({"role": "assistant", "content": "a", "weight": -2}, True, [-2.0]),
        # a block's own weight wins, then the message's, then the role's default
        ({"role": "assistant", "content": [{"text": "a", "weight": -1}, {"text": "b"}]}, True, [-1.0, 1.0]),
        ({"role": "system", "content": [{"text": "a", "weight": 3}, {"text": "b", "weight": None}]}, True, [3.0, 0.0]),
        ({"role": "user", "weight": 0.25, "content": [{"text": "a"}, {"text": "b", "weight": 0}]}, True, [0.25, 0.0]),
    ],
)
def test_a_block_weighs_its_own_weight_else_its_messages_else_the_default_of_its_role(message, responses_only, weights):
    assert [weight for _, weight in weighted_blocks(message, responses_only)] == weights


def test_a_training_row_whose_every_block_weighs_zero_is_refused():
    check = weighted_training_row_check(responses_only=True)
    check(weighted_row(1, 2))
    with pytest.raises(RowError, match="weighs 0"):
        check(weighted_row(1, 2, answer_weight=0, hedge_weight=0))
    with pytest.raises(RowError, match="weighs 0"):  # response-only: the unweighted user turn weighs 0
        check({"messages": [{"role": "user", "content": "only a question"}]})
    weighted_training_row_check(responses_only=False)({"messages": [{"role": "user", "content": "only a question"}]})


def test_openweights_spellings_make_a_weighted_finetune_job():
    params = openweights_weighted_sft_params(
        {"model": "org/base", "training_file": CONV, "loss": "sft", "ft_id_suffix": "v2", "eval_every_n_steps": "log", "logging_steps": 3}
    )
    config = TrainingConfig(**params, optim="adamw_torch")
    assert config.loss == "weighted_sft"
    assert config.finetuned_model_id == "{org_id}/{model_name}-{job_id}-v2"
    assert config.eval_every_n_steps == 3
    with pytest.raises(ValueError, match="loss: weighted_sft trains with loss='sft'"):
        openweights_weighted_sft_params({"loss": "dpo"})
    assert TrainingConfig(model="org/base", training_file=WEIGHTED, loss="weighted_sft").training_file == WEIGHTED

    from jobs.registry import get_job_spec

    assert get_job_spec("finetune").control_deployment(config) == "finetune/weighted-sft"
    with pytest.raises(ValueError, match="weighted conversations file"):
        TrainingConfig(model="org/base", training_file="preference:file-" + "c" * 64, loss="weighted_sft")
    with pytest.raises(ValueError, match="packing: not supported"):
        TrainingConfig(model="org/base", training_file=WEIGHTED, loss="weighted_sft", packing=True)


# -- tokens and their weights --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def text_by_weight(tokenizer, example) -> dict[float, str]:
    texts: dict[float, list[int]] = {}
    for token, weight in zip(example["input_ids"], example["token_weights"], strict=True):
        texts.setdefault(weight, []).append(token)
    return {weight: tokenizer.decode(tokens) for weight, tokens in texts.items() if weight}


def test_each_token_carries_the_weight_of_its_block_and_the_end_of_turn_that_of_the_last(tokenizer):
    example = tokenize_weighted_conversation(tokenizer, weighted_row(2, 3, 1, -0.5)["messages"], True, 512)
    assert text_by_weight(tokenizer, example) == {1.0: "2 plus 3 is 5.", -0.5: " Or 8?<|eot_id|>"}
    assert all((label == IGNORE_INDEX) == (weight == 0) for label, weight in zip(example["labels"], example["token_weights"], strict=True))


def test_a_template_that_trims_content_still_places_the_blocks(tokenizer):
    trimming = tokenizer.chat_template.replace("{{ message['content'] }}", "{{ message['content'] | trim }}")
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, chat_template=trimming)
    row = weighted_row(2, 3, 1, -0.5)
    row["messages"][1]["content"][0]["text"] = "  2 plus 3 is 5."
    row["messages"][1]["content"][1]["text"] = " Or 8?  "
    example = tokenize_weighted_conversation(tokenizer, row["messages"], True, 512)
    assert text_by_weight(tokenizer, example) == {1.0: "2 plus 3 is 5.", -0.5: " Or 8?<|eot_id|>"}


def test_unweighted_conversations_train_the_tokens_response_only_sft_trains(tokenizer):
    messages = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
        {"role": "user", "content": [{"type": "text", "text": "And 4 plus 4?"}]},
        {"role": "assistant", "content": "4 plus 4 is 8."},
    ]
    weighted = tokenize_weighted_conversation(tokenizer, messages, True, 512)
    [plain] = sft_examples(tokenizer, [{"messages": messages}], responses_only=True, max_length=512)
    assert weighted["input_ids"] == plain["input_ids"]
    assert weighted["labels"] == plain["labels"]
    assert set(weighted["token_weights"]) == {0.0, 1.0}


# -- the loss --------------------------------------------------------------------------------------


def recount(model, rows: list[tuple[list[int], list[float]]]) -> float:
    """Σ w_t·nll_t / Σ|w_t| from scratch: each row on its own (no padding), in float64, token by token."""
    import torch

    total, norm = 0.0, 0.0
    with torch.no_grad():
        for ids, weights in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            for t in range(1, len(ids)):
                nll = -torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
                total += weights[t] * nll
                norm += abs(weights[t])
    return total / norm


@pytest.fixture(scope="module")
def weighted_trainer(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, TrainingArguments

    from compute.training.weighted import WeightedSFTTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    arguments = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("weighted")), use_cpu=True, report_to=[], remove_unused_columns=False)
    return WeightedSFTTrainer(model=model, args=arguments)


def test_the_weighted_loss_equals_a_recount_from_the_models_logits_on_a_hand_built_batch(weighted_trainer):
    import torch

    from compute.training.weighted import WeightedCollator

    # Two rows of different lengths; weights by hand: zero, positive, fractional and negative. The
    # weight of position 0 never counts (nothing predicts the first token).
    rows = [
        ([0, 17, 42, 99, 7, 130, 5], [5.0, 0.0, 1.0, 2.0, -1.0, 0.5, 1.0]),
        ([0, 64, 3, 250, 5], [0.0, 0.0, -0.25, 1.5, 0.0]),
    ]
    features = [{"input_ids": ids, "labels": [i if w else IGNORE_INDEX for i, w in zip(ids, weights, strict=True)], "token_weights": weights} for ids, weights in rows]
    batch = WeightedCollator(pad_token_id=2, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8)
    model = weighted_trainer.model
    loss = weighted_trainer.compute_loss(model, batch)
    expected = recount(model, rows)
    # Hand check of the normaliser: Σ|w| over positions ≥ 1 = (1+2+1+0.5+1) + (0.25+1.5) = 7.25
    assert sum(abs(w) for _, weights in rows for w in weights[1:]) == 7.25
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.requires_grad

    # All weights 1 on the labelled tokens: the model's own mean token loss.
    unit = [{**f, "token_weights": [1.0 if label != IGNORE_INDEX else 0.0 for label in f["labels"]]} for f in features]
    unit_batch = WeightedCollator(pad_token_id=2)(unit)
    with torch.no_grad():
        own = model(input_ids=unit_batch["input_ids"], attention_mask=unit_batch["attention_mask"], labels=unit_batch["labels"]).loss
    assert weighted_trainer.compute_loss(model, unit_batch).item() == pytest.approx(own.item(), abs=1e-5)

    # Every weight 0: loss 0, and still a graph to step through.
    zero = WeightedCollator(pad_token_id=2)([{**f, "token_weights": [0.0] * len(f["input_ids"])} for f in features])
    zero_loss = weighted_trainer.compute_loss(model, zero)
    assert zero_loss.item() == 0.0
    zero_loss.backward()


def test_the_job_trainer_batches_carry_the_weights_of_the_rows(tiny_model_dir, tokenizer, tmp_path):
    """Through build_trainer and its dataloader: the weights reach the batch aligned with the tokens."""
    from compute.backend import BackendChoice
    from compute.training.model_setup import load_for_training
    from compute.training.trainers import build_trainer
    from jobs.model_refs import ResolvedModel

    config = TrainingConfig(model=str(tiny_model_dir), training_file=WEIGHTED, loss="weighted_sft", **FAST_SFT)
    loaded = load_for_training(config, ResolvedModel(base_path=str(tiny_model_dir)), BackendChoice("transformers", "cpu", "test"))
    rows = [weighted_row(1, 2, 1, -1), weighted_row(4, 4, 2, -0.5)]
    trainer = build_trainer(config, loaded.model, loaded.tokenizer, rows, None, tmp_path, "cpu", [])
    batch = next(iter(trainer.get_train_dataloader()))
    texts = sorted(
        tuple(sorted(text_by_weight(tokenizer, {"input_ids": ids.tolist(), "token_weights": weights.tolist()}).items()))
        for ids, weights in zip(batch["input_ids"], batch["token_weights"], strict=True)
    )
    assert texts == [((-1.0, " Or 6?<|eot_id|>"), (1.0, "1 plus 2 is 3.")), ((-0.5, " Or 11?<|eot_id|>"), (2.0, "4 plus 4 is 8."))]
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    unpadded = [
        (ids[:n].tolist(), weights[:n].tolist())
        for ids, weights, n in zip(batch["input_ids"], batch["token_weights"], lengths, strict=True)
    ]
    model = trainer.model.eval()
    assert trainer.compute_loss(model, batch).item() == pytest.approx(recount(model, unpadded), abs=1e-5)


# -- the job, through the client -----------------------------------------------------------------


def mean_logp_by_sign(model_dir, rows, adapter_dir=None) -> dict[str, float]:
    """Mean log-probability of the tokens with positive and with negative weight."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    picked: dict[str, list[float]] = {"up": [], "down": []}
    with torch.no_grad():
        for row in rows:
            example = tokenize_weighted_conversation(tokenizer, row["messages"], True, 512)
            ids = example["input_ids"]
            logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
            for t in range(1, len(ids)):
                weight = example["token_weights"][t]
                if weight:
                    picked["up" if weight > 0 else "down"].append(logps[t - 1, ids[t]].item())
    return {sign: sum(values) / len(values) for sign, values in picked.items()}


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


def test_ow_weighted_sft_trains_weighted_text_up_and_negatively_weighted_text_down(ow, ow_stack, tiny_model_dir, tmp_path):
    from prefect.client.orchestration import get_client

    from compute.sample_datasets import write_jsonl
    from jobs.validation import InvalidJobError

    rows = [weighted_row(i % 10, (i * 3) % 10, 1, -0.5) for i in range(24)]
    # As OpenWeights' cookbook does: weighted rows uploaded as "conversations".
    training_file = ow.files.upload(write_jsonl(tmp_path / "weighted.jsonl", rows), purpose="conversations")["id"]
    params = {**FAST_SFT, "model": str(tiny_model_dir), "training_file": training_file, "loss": "sft", "seed": 5}

    bad = [weighted_row(1, 2), {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"text": "yo", "weight": "much"}]}]}]
    bad_file = ow.files.upload(write_jsonl(tmp_path / "bad.jsonl", bad), purpose="conversations")["id"]
    with pytest.raises(InvalidJobError, match=r"line 2: messages\[1\]\.content\[0\]\.weight must be a finite number"):
        ow.weighted_sft.create(**{**params, "training_file": bad_file})

    job = ow.weighted_sft.create(**params).wait(timeout=900)
    assert job.status == "completed", job.logs()[-3000:]
    assert job.params["loss"] == "weighted_sft"
    control = next(run for run in job.flow_runs if run.deployment_id and "loss" in run.parameters)
    with get_client(sync_client=True) as client:
        assert client.read_deployment(control.deployment_id).name == "weighted-sft"
    history = [entry["loss"] for entry in ow_stack.store.read_json(f"jobs/{job.id}/result.json")["details"]["metrics_history"] if "loss" in entry]
    assert history[-1] < history[0]

    adapter = ow_stack.store.download_tree(f"jobs/{job.id}/adapter", tmp_path / "adapter")
    before = mean_logp_by_sign(tiny_model_dir, rows)
    after = mean_logp_by_sign(tiny_model_dir, rows, adapter)
    assert after["up"] > before["up"] + 0.1, (before, after)
    assert after["down"] < before["down"] - 0.1, (before, after)
