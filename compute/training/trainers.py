"""Build the trainer for a loss (trl's for SFT, DPO, ORPO; :mod:`compute.training.weighted` for weighted SFT).

The same trainers serve both backends: unsloth patches trl's trainers in place when it is
imported, so the GPU path differs only in how the model was loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compute.training.examples import preference_examples, sft_examples
from jobs.finetune import TrainingConfig

logger = logging.getLogger(__name__)

# OpenWeights' optimiser names → Hugging Face Trainer names, per device. OpenWeights passes its
# names through unchanged, so 'adam' and 'adamw' (not Trainer names) fail there; we map them. On CUDA
# AdamW is the fused kernel, the Trainer's own default there.
_OPTIMIZERS = {
    ("adamw_8bit", "cuda"): "adamw_8bit",
    ("adamw_8bit", "cpu"): "adamw_torch",
    ("adamw", "cuda"): "adamw_torch_fused",
    ("adamw", "cpu"): "adamw_torch",
    ("adam", "cuda"): "adamw_torch_fused",
    ("adam", "cpu"): "adamw_torch",
    ("sgd", "cuda"): "sgd",
    ("sgd", "cpu"): "sgd",
    ("adamw_torch", "cuda"): "adamw_torch",  # OpenWeights' weighted_sft passes this Trainer name through
    ("adamw_torch", "cpu"): "adamw_torch",
}
_OPTIMIZER_NOTES = {
    ("adamw_8bit", "cpu"): "8-bit AdamW needs bitsandbytes on a CUDA GPU",
    ("adam", "cuda"): "the Trainer has no plain Adam; AdamW with the configured weight_decay is used",
    ("adam", "cpu"): "the Trainer has no plain Adam; AdamW with the configured weight_decay is used",
}
_NO_BITSANDBYTES_NOTE = (
    "8-bit AdamW needs the bitsandbytes package, which is not installed here (it comes with the gpu "
    "extra); the fused 32-bit AdamW is used instead"
)


def bitsandbytes_installed() -> bool:
    """Whether 8-bit optimisers can be built here (without importing bitsandbytes, which is slow)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def trainer_optimizer(optim: str, device: str, *, has_bitsandbytes: bool = True) -> tuple[str, str | None]:
    """``(Trainer optimiser name, reason it differs from the request or None)``. Pure.

    Without bitsandbytes the Trainer would stop at the first step with an ImportError, after the
    model is loaded and the pod paid for; falling back to AdamW (with a logged reason) trains instead.
    """
    device = "cuda" if device == "cuda" else "cpu"
    if (optim, device) == ("adamw_8bit", "cuda") and not has_bitsandbytes:
        return "adamw_torch_fused", _NO_BITSANDBYTES_NOTE
    return _OPTIMIZERS[(optim, device)], _OPTIMIZER_NOTES.get((optim, device))


def common_arguments(config: TrainingConfig, output_dir: Path, device: str, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments shared by every loss."""
    optim, note = trainer_optimizer(
        config.optim, device, has_bitsandbytes=device != "cuda" or bitsandbytes_installed()
    )
    if note:
        logger.warning("optim: %r → %r (%s)", config.optim, optim, note)
    bf16 = False
    if device == "cuda":
        import torch

        bf16 = torch.cuda.is_bf16_supported()
    eval_strategy = (config.test_file_eval_strategy or "no") if has_eval else "no"
    arguments: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "warmup_steps": config.warmup_steps,
        "learning_rate": config.learning_rate_value,
        "logging_steps": config.logging_steps,
        "optim": optim,
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": config.lr_scheduler_type,
        "seed": config.seed,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "per_device_eval_batch_size": config.eval_batch_size,
        "eval_strategy": eval_strategy,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "bf16": bf16,
        "fp16": device == "cuda" and not bf16,
        "use_cpu": device != "cuda",
    }
    if eval_strategy == "steps":
        arguments["eval_steps"] = config.test_file_eval_steps or config.logging_steps
    return arguments


def build_trainer(
    config: TrainingConfig,
    model,
    tokenizer,
    train_rows: list[dict],
    eval_rows: list[dict] | None,
    output_dir: Path,
    device: str,
    callbacks: list,
):
    """The trainer for ``config.loss``, with its dataset prepared."""
    from datasets import Dataset

    arguments = common_arguments(config, output_dir, device, has_eval=bool(eval_rows))
    if config.loss == "weighted_sft":
        from compute.training.weighted import build_weighted_trainer

        return build_weighted_trainer(config, model, tokenizer, train_rows, eval_rows, arguments, callbacks)
    if config.loss == "sft":
        from trl import SFTConfig, SFTTrainer

        def prepare(rows):
            return Dataset.from_list(sft_examples(tokenizer, rows, config.train_on_responses_only, config.max_seq_length))

        train_dataset = prepare(train_rows)
        if len(train_dataset) == 0:
            raise ValueError("training_file: no row has a token to train on (check max_seq_length and the assistant turns)")
        return SFTTrainer(
            model=model,
            # Tokens are counted so throughput (tokens/s) can be compared with other ways of training.
            args=SFTConfig(
                **arguments,
                max_length=config.max_seq_length,
                packing=config.packing,
                include_num_input_tokens_seen="non_padding",
            ),
            train_dataset=train_dataset,
            eval_dataset=prepare(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    def prepare_preferences(rows):
        return Dataset.from_list(preference_examples(rows))

    if config.loss == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(
            model=model,
            ref_model=None,  # with a LoRA model, the adapter-disabled model is the reference
            args=DPOConfig(**arguments, beta=config.beta, max_length=config.max_seq_length),
            train_dataset=prepare_preferences(train_rows),
            eval_dataset=prepare_preferences(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    if config.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(
            model=model,
            args=ORPOConfig(**arguments, beta=config.beta, max_length=config.max_seq_length),
            train_dataset=prepare_preferences(train_rows),
            eval_dataset=prepare_preferences(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    raise ValueError(f"loss: unsupported training objective {config.loss!r}")
