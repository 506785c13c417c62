"""Trainer callbacks: progress and metrics to the reporter, checkpoints to the artifact store."""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from compute.reporting import Reporter
from compute.training.checkpoints import CheckpointStore
from compute.training.stop_request import StopRequest


class ReportingCallback(TrainerCallback):
    """Forwards the Trainer's progress and logged metrics (loss, lr, grad norm, eval loss)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.reporter.progress(state.global_step, state.max_steps, "training")

    def on_step_end(self, args, state, control, **kwargs):
        self.reporter.progress(state.global_step, state.max_steps, "training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {
            key: float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if not values:
            return
        self.history.append({"step": state.global_step, **values})
        self.reporter.metrics(state.global_step, values)


class CheckpointSyncCallback(TrainerCallback):
    """Copies each checkpoint the Trainer writes to the store; forces one every N minutes too.

    Step-based saving alone loses up to ``save_steps`` of work when steps are slow; the time
    bound caps what a lost pod can cost.
    """

    def __init__(self, checkpoints: CheckpointStore, reporter: Reporter, interval_minutes: float):
        self.checkpoints = checkpoints
        self.reporter = reporter
        self.interval_seconds = interval_minutes * 60
        self._last_save = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            # The recipe stores the final adapter itself; a last checkpoint (with optimiser
            # state) would only be uploaded to be deleted.
            control.should_save = False
        elif time.monotonic() - self._last_save >= self.interval_seconds:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not local.is_dir():
            return
        uri = self.checkpoints.save(local, state.global_step)
        self._last_save = time.monotonic()
        self.reporter.event("checkpoint.saved", {"step": state.global_step, "uri": uri})
        self.reporter.log(f"checkpoint at step {state.global_step} saved to {uri}")


class StopRequestCallback(TrainerCallback):
    """Once a stop is requested (:mod:`compute.training.stop_request`), ends training at the next
    step end with a checkpoint of that step, which :class:`CheckpointSyncCallback` uploads.

    It must come after :class:`CheckpointSyncCallback`, which skips the checkpoint of the last step:
    a stopped run never gets to store its final adapter, so that checkpoint is kept too.
    """

    def __init__(self, stop: StopRequest, reporter: Reporter):
        self.stop = stop
        self.reporter = reporter
        self._stopping = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested and not self._stopping:
            self._stopping = True
            self.reporter.log(f"{self.stop.reason}: saving a checkpoint at step {state.global_step}, then stopping")
            self.reporter.event("training.stopping", {"step": state.global_step, "reason": self.stop.reason})
            control.should_save = True
            control.should_training_stop = True
        return control


class LogProbabilityCallback(TrainerCallback):
    """Tracks loss and log-probability of named datasets every N steps (OpenWeights' logp callback).

    Each dataset is a list of tokenised examples (labels -100 outside the tracked tokens); the
    metrics ``<name>_loss`` (mean token loss) and ``<name>_logp`` (mean per-example summed
    log-probability) join the run's metrics table.
    """

    def __init__(self, datasets: dict[str, list[dict]], every_n_steps: int, batch_size: int, reporter: Reporter, pad_token_id: int):
        self.datasets = datasets
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.reporter = reporter
        self.pad_token_id = pad_token_id

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0 or state.global_step == state.max_steps:
            self.reporter.metrics(state.global_step, self.evaluate(model))

    def evaluate(self, model) -> dict[str, float]:
        import torch

        was_training = model.training
        model.eval()
        values: dict[str, float] = {}
        try:
            with torch.no_grad():
                for name, examples in self.datasets.items():
                    token_logps, sequence_logps = [], []
                    for start in range(0, len(examples), self.batch_size):
                        batch = examples[start : start + self.batch_size]
                        per_token, per_sequence = _label_log_probabilities(model, batch, self.pad_token_id)
                        token_logps.extend(per_token)
                        sequence_logps.extend(per_sequence)
                    if token_logps:
                        values[f"{name}_loss"] = -sum(token_logps) / len(token_logps)
                        values[f"{name}_logp"] = sum(sequence_logps) / len(sequence_logps)
        finally:
            if was_training:
                model.train()
        return values


def _label_log_probabilities(model, batch: list[dict], pad_token_id: int) -> tuple[list[float], list[float]]:
    """Log-probabilities of each labelled token, and their sum per example."""
    import torch

    width = max(len(example["input_ids"]) for example in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example["input_ids"])
        ids[row, :length] = torch.tensor(example["input_ids"])
        labels[row, :length] = torch.tensor(example["labels"])
        attention[row, :length] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1].float()
    targets = labels[:, 1:].to(device)
    log_probs = torch.log_softmax(logits, dim=-1)
    mask = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    per_token = picked[mask].tolist()
    per_sequence = picked.sum(dim=-1).tolist()
    return per_token, per_sequence


class SamplingCallback(TrainerCallback):
    """Generates completions for a dataset's prompts during training and publishes them as a table."""

    def __init__(self, prompts: list[str], eval_steps, tag: str, temperature: float, max_tokens: int, batch_size: int, reporter: Reporter, tokenizer):
        self.prompts = prompts
        self.eval_steps = eval_steps
        self.tag = tag
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.reporter = reporter
        self.tokenizer = tokenizer
        self.rows: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_steps != "log" and (state.global_step % self.eval_steps == 0 or state.global_step == state.max_steps):
            self.sample(model, state.global_step)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if self.eval_steps == "log" and logs and "loss" in logs:
            self.sample(model, state.global_step)

    def sample(self, model, step: int) -> None:
        import torch

        was_training = model.training
        model.eval()
        tokenizer = self.tokenizer
        padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            for start in range(0, len(self.prompts), self.batch_size):
                prompts = self.prompts[start : start + self.batch_size]
                encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                encoded = {key: value.to(next(model.parameters()).device) for key, value in encoded.items()}
                with torch.no_grad():
                    output = model.generate(
                        **encoded,
                        max_new_tokens=self.max_tokens,
                        do_sample=self.temperature > 0,
                        temperature=self.temperature if self.temperature > 0 else None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
                self.rows.extend({"step": step, "prompt": p, "completion": c} for p, c in zip(prompts, completions, strict=True))
        finally:
            tokenizer.padding_side = padding_side
            if was_training:
                model.train()
        self.reporter.table(self.tag, list(self.rows), description=f"Samples generated during training (tag {self.tag})")
