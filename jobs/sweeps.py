"""Evaluation sweeps: models × evaluations, planned as the fewest evaluation jobs.

Pure planning (the flow in ``flows/evals.py`` runs it): models are grouped by base model with
:func:`jobs.server_plan.plan_servers`, so each evaluation runs once per base model with that
base's adapters in ``lora_adapters`` — one server (or one loaded model) for all of them. Each
planned job goes through the same validation and identity as a submitted job, so the sweep knows
its job ID and can reuse a stored result instead of running it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.model_refs import adapter_base
from jobs.registry import get_job_spec
from jobs.server_plan import plan_servers
from jobs.validation import check_inputs, validate_params

EVAL_KINDS = {
    "inspect": ("eval-inspect", "eval/inspect"),
    "mmlu-pro": ("eval-mmlu-pro", "eval/mmlu-pro"),
    "multiple-choice": ("eval-multiple-choice", "eval/multiple-choice"),  # score: accuracy by log-probability
}
MODEL_FIELDS = ("model", "lora_adapters", "include_base_model")


class SweepEval(BaseModel):
    """One evaluation of a sweep: a column of the comparison table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Column name in the comparison table.")
    kind: Literal["inspect", "mmlu-pro", "multiple-choice"] = Field(description="Which evaluation job runs it.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of that job (eval_name, dataset_file, …) except the model fields, which the sweep sets.",
    )

    @field_validator("params")
    @classmethod
    def _no_model_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        given = sorted(set(value) & set(MODEL_FIELDS))
        if given:
            raise ValueError(f"params may not set {given}: the sweep sets them from its list of models")
        return value


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sweep_name: str
    models: list[str] = Field(default_factory=list)
    evals: list[SweepEval] = Field(default_factory=list)

    @field_validator("evals")
    @classmethod
    def _unique_names(cls, value: list[SweepEval]) -> list[SweepEval]:
        names = [entry.name for entry in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"evaluation names must be unique (they are the table's columns): {duplicates}")
        return value

    @property
    def variable_name(self) -> str:
        return self.variable_for(self.sweep_name)

    @staticmethod
    def variable_for(sweep_name: str) -> str:
        return f"ow-eval-sweep-{sweep_name}".lower().replace("_", "-")


@dataclass(frozen=True)
class PlannedEvaluation:
    eval: SweepEval
    deployment: str
    parameters: dict[str, Any]
    job_id: str
    served_names: dict[str, str]  # requested model → the name it is served (and scored) under

    @property
    def models(self) -> list[str]:
        return list(self.served_names)


def evaluation_jobs(config: SweepConfig, store) -> list[PlannedEvaluation]:
    """The evaluation jobs of a sweep, with their job IDs (so stored results can be reused)."""
    plan = plan_servers(config.models, {model: adapter_base(model, store) for model in config.models})
    planned = []
    for entry in config.evals:
        job_type, deployment = EVAL_KINDS[entry.kind]
        spec = get_job_spec(job_type)
        for number, group in enumerate(plan.servers):
            members = [model for model, route in plan.routes.items() if route.server == number]
            base_requested = any(route.served_name == group.base_model for model, route in plan.routes.items() if model in members)
            parameters = {**entry.params, "model": group.base_model, "lora_adapters": list(group.lora_adapters)}
            if group.lora_adapters:
                parameters["include_base_model"] = base_requested
            params = validate_params(spec, parameters)
            job_id = spec.job_id(params, check_inputs(spec, params, store).inputs)
            served = {model: plan.routes[model].served_name for model in members}
            planned.append(PlannedEvaluation(entry, deployment, parameters, job_id, served))
    return planned
