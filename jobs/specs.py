"""The built-in job types, declared once each (see :mod:`jobs.registry`)."""

from __future__ import annotations

from jobs.datasets import RowError
from jobs.finetune import TrainingConfig
from jobs.registry import InputFile, InputModel, JobSpec, register

# -- fine-tuning ---------------------------------------------------------------------------------


def _sft_row_needs_assistant_turn(row: dict) -> None:
    """With response-only loss, a chat row without an assistant turn trains nothing."""
    if "messages" in row and not any(message.get("role") == "assistant" for message in row["messages"]):
        raise RowError("messages has no assistant turn, so train_on_responses_only leaves nothing to train on")


def _finetune_input_files(config: TrainingConfig) -> list[InputFile]:
    training_purposes = ("conversations",) if config.loss == "sft" else ("preference",)
    row_check = _sft_row_needs_assistant_turn if config.loss == "sft" and config.train_on_responses_only else None
    files = [InputFile("training_file", config.training_file, training_purposes, row_check)]
    if config.test_file:
        files.append(InputFile("test_file", config.test_file, training_purposes, row_check))
    for name, file_id in config.logp_callback_datasets.items():
        files.append(InputFile(f"logp_callback_datasets.{name}", file_id, ("conversations", "preference")))
    for index, callback in enumerate(config.sampling_callbacks or []):
        files.append(InputFile(f"sampling_callbacks[{index}].dataset", callback.dataset, ("conversations",)))
    return files


def _finetune_vram_gb(config: TrainingConfig, model_config: dict | None) -> float:
    from compute.vram import estimate_training_vram_gb

    return estimate_training_vram_gb(config, model_config)


FINETUNE = register(
    JobSpec(
        job_type="finetune",
        id_prefix="ftjob",
        params_model=TrainingConfig,
        stage="compute.training.stage:run_finetune_stage",
        code_paths=(
            "jobs/finetune.py",
            "jobs/model_refs.py",
            "compute/backend.py",
            "compute/training/*.py",
        ),
        input_files=_finetune_input_files,
        input_models=lambda config: [InputModel("model", config.model)],
        vram_gb=_finetune_vram_gb,
        id_suffix=lambda config: config.job_id_suffix,
        secrets=("hf-token",),
        description="LoRA fine-tuning (SFT, DPO, ORPO) with OpenWeights' parameters.",
    )
)
