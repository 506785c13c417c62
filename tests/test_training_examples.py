"""Response-only training: prompt tokens carry no loss, assistant tokens (and end-of-turn) do."""

import pytest

from compute.training.examples import IGNORE_INDEX, sft_examples, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
    {"role": "user", "content": [{"type": "text", "text": "And 4 plus 4?"}]},
    {"role": "assistant", "content": "4 plus 4 is 8."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX])


def test_only_assistant_turns_carry_loss(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION, responses_only=True, max_length=512)
    assert trained_text(tokenizer, example) == "2 plus 3 is 5.<|eot_id|>4 plus 4 is 8.<|eot_id|>"
    masked = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE_INDEX])
    for prompt_text in ("You add numbers.", "What is 2 plus 3?", "And 4 plus 4?", "<|start_header_id|>assistant"):
        assert prompt_text in masked


def test_without_responses_only_every_token_is_trained(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION, responses_only=False, max_length=512)
    assert example["labels"] == example["input_ids"]


def test_prompt_tokens_carry_no_loss_in_the_trainer_batch(tokenizer, tiny_model_dir, tmp_path):
    """Through the real trl collator and model: changing the prompt's labels cannot change the loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    examples = sft_examples(tokenizer, [{"messages": CONVERSATION}], responses_only=True, max_length=512)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_length=512, per_device_train_batch_size=1),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    assert tokenizer.decode(ids[labels != IGNORE_INDEX]) == "2 plus 3 is 5.<|eot_id|>4 plus 4 is 8.<|eot_id|>"
    model = trainer.model.eval()
    with torch.no_grad():
        masked_loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        full_loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    assert masked_loss != full_loss  # the prompt tokens really were excluded


def test_rows_with_nothing_to_train_are_dropped(tokenizer):
    rows = [{"messages": [{"role": "user", "content": "only a question"}]}, {"text": "a base-model row"}]
    examples = sft_examples(tokenizer, rows, responses_only=True, max_length=512)
    assert len(examples) == 1
    assert examples[0]["labels"] == examples[0]["input_ids"]
    assert examples[0]["input_ids"][0] == tokenizer.bos_token_id
    assert examples[0]["input_ids"][-1] == tokenizer.eos_token_id
