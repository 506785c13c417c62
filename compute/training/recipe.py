"""The fine-tuning recipe: setup → train → save → cleanup, with resume designed in.

Plain Python (no Prefect): the GPU-stage flow calls :func:`run_finetune`, and so can a test
or a script. Everything the recipe needs comes in through :class:`FinetuneInputs`; it never
reads the environment mid-run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.backend import BackendChoice, select_backend
from compute.reporting import LoggingReporter, Reporter
from compute.training.callbacks import (
    CheckpointSyncCallback,
    LogProbabilityCallback,
    ReportingCallback,
    SamplingCallback,
    StopRequestCallback,
)
from compute.training.checkpoints import CheckpointStore
from compute.training.stop_request import StopRequest, run_until_stopped
from jobs.finetune import TrainingConfig
from jobs.model_refs import ResolvedModel
from store import layout
from store.artifact_store import ArtifactStore

logger = logging.getLogger(__name__)


@dataclass
class FinetuneInputs:
    job_id: str
    model: ResolvedModel
    training_path: Path
    work_dir: Path
    store: ArtifactStore
    test_path: Path | None = None
    reporter: Reporter = field(default_factory=LoggingReporter)
    backend: BackendChoice | None = None
    hf_token: str | None = None
    output_model_name: str | None = None
    logp_paths: dict[str, Path] = field(default_factory=dict)  # logp_callback_datasets, local copies
    sampling_paths: list[Path] = field(default_factory=list)  # one per sampling callback

    @property
    def job_prefix(self) -> str:
        return layout.job_prefix(self.job_id)


@dataclass
class FinetuneOutputs:
    outputs: dict[str, str]
    metrics: dict[str, Any]
    backend: str
    resumed_from_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class FinetuneRecipe:
    def __init__(self, config: TrainingConfig, inputs: FinetuneInputs):
        self.config = config
        self.inputs = inputs
        self.checkpoints = CheckpointStore(inputs.store, inputs.job_prefix)
        self.reporting = ReportingCallback(inputs.reporter)
        self.stop = StopRequest()  # set by a SIGTERM while training; see compute.training.stop_request
        self.resume_dir: Path | None = None
        self.resumed_from_step = 0
        self.trainer = None
        self.loaded = None
        self.train_result = None

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self) -> None:
        from compute.training.model_setup import load_for_training
        from compute.training.trainers import build_trainer

        backend = self.inputs.backend or select_backend("training")
        self.inputs.reporter.log(f"training backend: {backend.name} on {backend.device} ({backend.reason})")
        self.loaded = load_for_training(self.config, self.inputs.model, backend)
        train_rows = read_jsonl(self.inputs.training_path)
        eval_rows = read_jsonl(self.inputs.test_path) if self.inputs.test_path else None
        output_dir = self.inputs.work_dir / "checkpoints"
        callbacks = [
            self.reporting,
            CheckpointSyncCallback(self.checkpoints, self.inputs.reporter, self.config.checkpoint_interval_minutes),
            StopRequestCallback(self.stop, self.inputs.reporter),  # after the sync: it may re-enable a save
            *self._evaluation_callbacks(),
        ]
        self.trainer = build_trainer(
            self.config,
            self.loaded.model,
            self.loaded.tokenizer,
            train_rows,
            eval_rows,
            output_dir,
            backend.device,
            callbacks,
        )
        from transformers import PrinterCallback

        # Our reporter logs every metric already; the Trainer's printer would repeat them.
        self.trainer.remove_callback(PrinterCallback)
        step = self.checkpoints.latest_complete()
        if step is not None:
            self.resume_dir = self.checkpoints.download(step, self.inputs.work_dir / "resume")
            self.resumed_from_step = step
            self.inputs.reporter.log(f"resuming from the checkpoint at step {step}")
            self.inputs.reporter.event("training.resumed", {"step": step})

    def train(self) -> None:
        """Train to the end; told to stop (SIGTERM) on the way, checkpoint the step reached and end as told."""
        started = time.monotonic()
        resume = str(self.resume_dir) if self.resume_dir else None
        self.train_result = run_until_stopped(
            lambda: self.trainer.train(resume_from_checkpoint=resume), self.stop, self.inputs.reporter.log
        )
        self.wall_seconds = time.monotonic() - started

    def save(self) -> FinetuneOutputs:
        store = self.inputs.store
        prefix = self.inputs.job_prefix
        export_dir = self.inputs.work_dir / "export"
        model, tokenizer = self.trainer.model, self.loaded.tokenizer
        outputs: dict[str, str] = {}
        if self.config.is_peft:
            self._portable_base_reference(model)
            model.save_pretrained(export_dir / "adapter")
            tokenizer.save_pretrained(export_dir / "adapter")
            outputs["adapter"] = store.upload_tree(export_dir / "adapter", f"{prefix}/adapter")
            if self.config.merge_before_push:
                merged = self._save_merged(model, tokenizer, export_dir / "merged")
                if merged:
                    outputs["merged"] = store.upload_tree(merged, f"{prefix}/merged")
        else:
            model.save_pretrained(export_dir / "model")
            tokenizer.save_pretrained(export_dir / "model")
            # Full weights are a plain model: later jobs use them as they would merged weights.
            outputs["merged"] = store.upload_tree(export_dir / "model", f"{prefix}/model")
        if self.config.push_to_hub:
            outputs["hub"] = self._push_to_hub(export_dir / ("merged" if "merged" in outputs else "adapter"))
        return FinetuneOutputs(
            outputs=outputs,
            metrics=self._final_metrics(),
            backend=self.loaded.backend.name,
            resumed_from_step=self.resumed_from_step,
            history=list(self.reporting.history),
        )

    def cleanup(self) -> None:
        self.trainer = None
        self.loaded = None
        shutil.rmtree(self.inputs.work_dir / "export", ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------

    def _evaluation_callbacks(self) -> list:
        from compute.training.examples import sft_examples

        tokenizer = self.loaded.tokenizer
        callbacks = []
        if self.inputs.logp_paths:
            datasets = {}
            for name, path in self.inputs.logp_paths.items():
                rows = [_as_conversation(row) for row in read_jsonl(path)]
                datasets[name] = sft_examples(tokenizer, rows, responses_only=True, max_length=self.config.max_seq_length)
            callbacks.append(
                LogProbabilityCallback(
                    datasets,
                    self.config.eval_every_n_steps,
                    self.config.eval_batch_size,
                    self.inputs.reporter,
                    tokenizer.pad_token_id,
                )
            )
        for callback_config, path in zip(self.config.sampling_callbacks or [], self.inputs.sampling_paths, strict=True):
            prompts = [_generation_prompt(tokenizer, row) for row in read_jsonl(path)]
            callbacks.append(
                SamplingCallback(
                    [prompt for prompt in prompts if prompt is not None],
                    callback_config.eval_steps,
                    callback_config.tag,
                    callback_config.temperature,
                    callback_config.max_tokens,
                    callback_config.batch_size,
                    self.inputs.reporter,
                    tokenizer,
                )
            )
        return callbacks

    def _portable_base_reference(self, model) -> None:
        """Record the model *reference* (hub ID, job ID, URI) as the adapter's base, not a
        machine-local cache path, so the adapter can be loaded on another machine."""
        for peft_config in getattr(model, "peft_config", {}).values():
            peft_config.base_model_name_or_path = self.config.model

    def _save_merged(self, model, tokenizer, directory: Path) -> Path | None:
        if self.config.load_in_4bit:
            self.inputs.reporter.log("merge_before_push: skipped, 4-bit weights cannot be merged losslessly")
            return None
        if self.loaded.backend.name == "unsloth":
            model.save_pretrained_merged(str(directory), tokenizer, save_method="merged_16bit")
            return directory
        merged = model.merge_and_unload()
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    def _push_to_hub(self, directory: Path) -> str:
        from huggingface_hub import HfApi

        from jobs.finetune import configured_hf_org, missing_hub_org

        if not self.inputs.hf_token:
            raise RuntimeError("push_to_hub: no Hugging Face token (save one in the Prefect secret block 'hf-token')")
        # The organisation the user configured (OW_HF_ORG, or the ow-hf-org Prefect variable), never a fixed one.
        org_id = configured_hf_org()
        problem = missing_hub_org(self.config, org_id)
        if problem:
            raise RuntimeError(problem)
        repo_id = self.config.output_model_name(job_id=self.inputs.job_id, org_id=org_id or "")
        api = HfApi(token=self.inputs.hf_token)
        api.create_repo(repo_id, private=self.config.push_to_private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(directory))
        return f"https://huggingface.co/{repo_id}"

    def _final_metrics(self) -> dict[str, Any]:
        state = self.trainer.state
        logged = [entry for entry in self.reporting.history if "loss" in entry]
        metrics: dict[str, Any] = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "train_loss": getattr(self.train_result, "training_loss", None),
            "final_loss": logged[-1]["loss"] if logged else None,
            "wall_seconds": round(self.wall_seconds, 3),
            "num_input_tokens_seen": int(state.num_input_tokens_seen or 0),
        }
        evals = [entry for entry in self.reporting.history if "eval_loss" in entry]
        if evals:
            metrics["eval_loss"] = evals[-1]["eval_loss"]
        runtime = (self.train_result.metrics or {}).get("train_runtime") if self.train_result else None
        if runtime:
            metrics["train_runtime"] = runtime
            metrics["train_tokens_per_second"] = metrics["num_input_tokens_seen"] / runtime if runtime else None
        return metrics


def _as_conversation(row: dict) -> dict:
    """Preference rows are tracked on their chosen answer."""
    if "prompt" in row and "chosen" in row:
        return {"messages": row["prompt"] + row["chosen"]}
    return row


def _generation_prompt(tokenizer, row: dict) -> str | None:
    """The rendered prompt of a conversations row: everything before its last assistant turn."""
    from compute.training.examples import normalise_messages

    if "text" in row:
        return row["text"]
    messages = normalise_messages(row["prompt"] if "prompt" in row else row["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        return None
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run_finetune(config: TrainingConfig, inputs: FinetuneInputs) -> FinetuneOutputs:
    """Run a fine-tuning job end to end; resumes from the store's newest complete checkpoint."""
    inputs.work_dir.mkdir(parents=True, exist_ok=True)
    recipe = FinetuneRecipe(config, inputs)
    try:
        recipe.setup()
        recipe.train()
        return recipe.save()
    finally:
        recipe.cleanup()
