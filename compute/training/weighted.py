"""Weighted SFT (OpenWeights' ``weighted_sft``): every token's loss scaled by the weight of its text.

The data are chat rows whose messages or content blocks carry a ``weight`` (see
:func:`jobs.datasets.weighted_blocks`); :func:`compute.training.examples.weighted_examples` turns
them into ``input_ids``, ``labels`` and ``token_weights``. A negative weight pushes the likelihood
of its tokens down.

The loss of a batch is OpenWeights' normalisation::

    loss = Σ_t w_t · nll_t / Σ_t |w_t|

over the predicted tokens t of the micro-batch (token t is predicted from tokens < t, so the
first token of a row never counts), ``nll_t`` the token's cross-entropy in float32. Dividing by
the sum of *absolute* weights keeps the scale of plain SFT (all weights 1: the mean token loss)
however the weights are signed. With gradient accumulation each micro-batch is normalised on its
own and the Trainer averages the micro-batches (``loss_is_scaled_for_ga = False``). A batch whose
weights are all 0 has loss 0.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from compute.training.examples import IGNORE_INDEX


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """``Σ w_t·nll_t / Σ |w_t|`` of a batch: ``logits`` (B, L, V), ``labels`` and ``token_weights`` (B, L).

    Position t of ``labels``/``token_weights`` is the token predicted from ``logits[:, t-1]``;
    tokens labelled −100 (padding, weight 0) do not count.
    """
    targets = labels[:, 1:]
    weights = token_weights[:, 1:].to(torch.float32).masked_fill(targets == IGNORE_INDEX, 0.0)
    shifted = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)
    normaliser = weights.abs().sum()
    # All weights 0: the weighted sum is 0 as well; dividing by 1 keeps it 0 and in the graph.
    return (weights * nll).sum() / torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))


class WeightedCollator:
    """Right-pads examples into a batch: ``input_ids`` (pad token), ``attention_mask``, ``labels`` (−100)
    and ``token_weights`` (0)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
            "token_weights": torch.zeros((len(features), width), dtype=torch.float32),
        }
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            batch["input_ids"][row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            batch["attention_mask"][row, :length] = 1
            batch["labels"][row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            batch["token_weights"][row, :length] = torch.tensor(feature["token_weights"], dtype=torch.float32)
        return batch


class WeightedSFTTrainer(Trainer):
    """A transformers Trainer whose loss is :func:`weighted_token_loss` (training and evaluation)."""

    # The loss is normalised per micro-batch, so the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model gets no labels: its own (unweighted) loss is not wanted, and a fused-loss backend
        # such as unsloth returns the logits only when it is not computing a loss itself.
        forward = {key: value for key, value in inputs.items() if key not in ("labels", "token_weights")}
        outputs = model(**forward)
        loss = weighted_token_loss(outputs.logits, inputs["labels"], inputs["token_weights"])
        return (loss, outputs) if return_outputs else loss


def build_weighted_trainer(config, model, tokenizer, train_rows, eval_rows, arguments: dict[str, Any], callbacks: list):
    """The weighted-SFT trainer for ``config`` (a TrainingConfig with ``loss="weighted_sft"``), data prepared."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from compute.training.examples import weighted_examples

    def prepare(rows):
        return Dataset.from_list(weighted_examples(tokenizer, rows, config.train_on_responses_only, config.max_seq_length))

    train_dataset = prepare(train_rows)
    if len(train_dataset) == 0:
        raise ValueError("training_file: no row has a token with a non-zero weight (check max_seq_length and the weights)")
    return WeightedSFTTrainer(
        model=model,
        args=TrainingArguments(
            **arguments,
            remove_unused_columns=False,  # token_weights is no argument of the model's forward
            label_names=["labels"],
            gradient_checkpointing=True,  # as trl's SFTConfig and OpenWeights; the VRAM estimate assumes it
            include_num_input_tokens_seen="non_padding",
            prediction_loss_only=True,  # evaluation needs the weighted loss, not every row's logits
        ),
        train_dataset=train_dataset,
        eval_dataset=prepare(eval_rows) if eval_rows else None,
        data_collator=WeightedCollator(tokenizer.pad_token_id, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
