"""Trainer callbacks: progress and metrics to the reporter, checkpoints to the artifact store."""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from compute.reporting import Reporter
from compute.training.checkpoints import CheckpointStore


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
        if time.monotonic() - self._last_save >= self.interval_seconds and state.global_step < state.max_steps:
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
