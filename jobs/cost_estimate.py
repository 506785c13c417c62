"""A job's cost before it runs: the cheapest GPU that fits × an estimate of its run time. Pure: no I/O.

Budgets (:mod:`jobs.budgets`) refuse a job whose estimate exceeds what is left, so the estimate is made
in the control tier, from what it knows before any pod: the job's parameters, the size of its input
files (rows and bytes, from their upload records), its GPU memory need and the work pool's GPU types
and prices. A user who knows better gives ``max_cost_usd``, which is then the estimate.

Run time is a fixed start-up (:data:`STARTUP_HOURS`) plus the job's work at an assumed throughput:

- ``finetune``: training tokens (examples seen × tokens per example, from the training file's bytes
  per row at :data:`CHARS_PER_TOKEN`, at most ``max_seq_length``) at :data:`TRAIN_TOKENS_PER_SECOND`;
- ``inference``: generated tokens (rows × completions × ``max_tokens``, an upper bound) at
  :data:`GENERATE_TOKENS_PER_SECOND`;
- ``eval-mmlu-pro``: questions × ``max_tokens`` per evaluated model, at the same rate; ``eval-inspect``
  likewise when ``limit`` bounds its samples;
- ``serve``: its ``idle_timeout_seconds`` (the least a service runs);
- otherwise (``custom``, an unbounded inspect eval): the start-up alone, and the basis says so.

The throughputs are those of a LoRA on a 7–8B model on one A100-class GPU; they are rough by design,
and the estimate is for budgets only (what a job cost is measured, :mod:`jobs.costs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from infra.runpod.gpu_choice import CloudType, GpuCandidate, GpuTypeInfo, merge_plans, plan_gpu_candidates
from infra.runpod.hardware import HardwareOption, parse_allowed_hardware
from infra.runpod.list_prices import LIST_PRICES

STARTUP_HOURS = 0.25  # pod start, image pull, model download, output upload: 5–20 minutes on RunPod
CHARS_PER_TOKEN = 4.0
TRAIN_TOKENS_PER_SECOND = 2_000.0
GENERATE_TOKENS_PER_SECOND = 1_000.0
UNBOUNDED_EVAL_MAX_TOKENS = 1_024  # an inspect eval that keeps its task's own max_tokens


class InputSize(BaseModel):
    """What an input file's upload record says about its size."""

    rows: int | None = None
    bytes: int = 0


class CostEstimate(BaseModel):
    usd: float = Field(ge=0)
    basis: str = Field(description="How the figure was made, for the log and a refusal message.")


class RunTime(BaseModel):
    hours: float
    basis: str


class PoolPricing(BaseModel):
    """The pod settings of a ``runpod`` work pool that decide what a pod costs."""

    gpu_types: list[str] = Field(default_factory=list)
    gpu_count: int = 1
    gpu_prices: dict[str, float] = Field(default_factory=dict)
    cloud_type: CloudType = "ALL"


def estimated_run_time(job_type: str, params: Mapping[str, Any], inputs: Mapping[str, InputSize]) -> RunTime:
    """Hours the job's GPU stage is expected to run: start-up plus its work (see the module docstring)."""
    work = _work(job_type, params, inputs)
    if work is None:
        return RunTime(
            hours=STARTUP_HOURS,
            basis=f"start-up {STARTUP_HOURS:g} h only: the work of a {job_type} job is not known in advance",
        )
    seconds, what = work
    hours = STARTUP_HOURS + seconds / 3600
    return RunTime(hours=hours, basis=f"{hours:.2f} h = start-up {STARTUP_HOURS:g} h + {what}")


def _work(job_type: str, params: Mapping[str, Any], inputs: Mapping[str, InputSize]) -> tuple[float, str] | None:
    """(seconds, description) of the job's work, or None when its parameters do not bound it."""
    if job_type == "finetune":
        data = inputs.get("training_file")
        if data is None or not data.rows:
            return None
        per_row = min(data.bytes / data.rows / CHARS_PER_TOKEN, float(params.get("max_seq_length") or math.inf))
        batch = int(params.get("per_device_train_batch_size") or 1) * int(params.get("gradient_accumulation_steps") or 1)
        max_steps = params.get("max_steps")
        examples = int(max_steps) * batch if max_steps else int(params.get("epochs") or 1) * data.rows
        tokens = examples * per_row
        return tokens / TRAIN_TOKENS_PER_SECOND, f"{tokens:,.0f} training tokens at {TRAIN_TOKENS_PER_SECOND:,.0f}/s"
    if job_type == "inference":
        data = inputs.get("input_file")
        if data is None or not data.rows:
            return None
        tokens = data.rows * int(params.get("n_completions_per_prompt") or 1) * int(params["max_tokens"])
        return tokens / GENERATE_TOKENS_PER_SECOND, f"≤{tokens:,.0f} generated tokens at {GENERATE_TOKENS_PER_SECOND:,.0f}/s"
    if job_type in ("eval-mmlu-pro", "eval-inspect"):
        questions = params.get("limit")
        if job_type == "eval-mmlu-pro" and questions is None:
            questions = (inputs.get("dataset_file") or InputSize()).rows
        if not questions:
            return None
        samples = int(questions) * int(params.get("epochs") or 1) * _models_evaluated(params)
        tokens = samples * int(params.get("max_tokens") or UNBOUNDED_EVAL_MAX_TOKENS)
        return tokens / GENERATE_TOKENS_PER_SECOND, f"≤{tokens:,.0f} generated tokens at {GENERATE_TOKENS_PER_SECOND:,.0f}/s"
    if job_type == "api":
        idle = float(params.get("idle_timeout_seconds") or 0)
        return idle, f"{idle / 3600:.2f} h idle timeout (the least a service runs)"
    return None


def _models_evaluated(params: Mapping[str, Any]) -> int:
    adapters = len(params.get("lora_adapters") or [])
    return adapters + (1 if params.get("include_base_model") or not adapters else 0)


def cheapest_fitting_pod(
    pricing: PoolPricing, min_vram_gb: float, allowed_hardware: Sequence[str] = ()
) -> GpuCandidate | None:
    """The cheapest pod the worker could launch for the job, priced by the pool's ``gpu_prices`` or the
    list prices; None when no fitting type has a known price. A type only the pool's ``gpu_prices``
    names is assumed to fit (the table does not know its memory)."""
    options = (
        parse_allowed_hardware(allowed_hardware)
        if allowed_hardware
        else [HardwareOption(gpu_count=pricing.gpu_count, gpu_type_ids=tuple(pricing.gpu_types))]
        if pricing.gpu_types
        else []
    )
    catalog = {
        gpu_id: GpuTypeInfo(
            gpu_type_id=gpu_id, memory_gb=listed.memory_gb, secure_price=listed.usd_per_gpu_hour,
            community_price=listed.usd_per_gpu_hour,
        )
        for gpu_id, listed in LIST_PRICES.items()
    }
    for gpu_id in pricing.gpu_prices.keys() - catalog.keys():
        # A type the pool prices but the table does not know: the pool's own choice, assumed to fit.
        catalog[gpu_id] = GpuTypeInfo(gpu_type_id=gpu_id, memory_gb=math.inf)
    plans = [
        plan_gpu_candidates(
            min_vram_gb=min_vram_gb,
            gpu_count=option.gpu_count,
            preferences=option.gpu_type_ids,
            cloud_type=pricing.cloud_type,
            gpu_types=catalog,
            price_overrides=pricing.gpu_prices,
        )
        for option in options
    ]
    priced = [candidate for candidate in merge_plans(plans).candidates if candidate.price_per_hour is not None]
    return min(priced, key=lambda candidate: candidate.price_per_hour, default=None)


def estimate_job_cost(
    run_time: RunTime, pod: GpuCandidate | None, max_cost_usd: float | None = None
) -> CostEstimate | None:
    """The job's estimated cost: ``max_cost_usd`` when the user gave it, else pod price × run time;
    None when neither is known."""
    if max_cost_usd is not None:
        return CostEstimate(usd=max_cost_usd, basis=f"max_cost_usd ${max_cost_usd:.2f}, given with the job")
    if pod is None or pod.price_per_hour is None:
        return None
    usd = pod.price_per_hour * run_time.hours
    return CostEstimate(
        usd=usd,
        basis=f"{pod.hardware} at ${pod.price_per_hour:.2f}/h × {run_time.basis}",
    )
