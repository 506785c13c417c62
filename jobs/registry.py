"""The job registry: what makes a job type, in one declaration.

A job type is a parameter model, the input files and models it reads, the function that does
the work in the GPU stage, and the source files whose content is its code version. Everything
else — validation in the control tier, the content-hash ID, the cache, the GPU stage, the
artifacts — is the same mechanism for every type (``flows/job_flow.py``, ``flows/gpu_stage.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobs.code_version import import_closure
from jobs.datasets import RowValidator
from jobs.hardware import NOT_IN_JOB_ID, HardwareRequest
from jobs.identity import compute_job_id, source_digest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GPU_STAGE_FLOW_NAME = "gpu-stage"  # the flow (flows/gpu_stage.py) of every job type's GPU-stage deployment


def gpu_deployment_name(job_type: str) -> str:
    """The deployment the control tier runs a job type's GPU stage through (one per type in prefect.yaml)."""
    return f"{GPU_STAGE_FLOW_NAME}/{job_type}"


@dataclass(frozen=True)
class InputFile:
    """A file a job reads, named by the parameter it came from (for error messages)."""

    field: str
    file_id: str
    purposes: tuple[str, ...]
    row_check: RowValidator | None = None  # a job-specific check on top of the purpose's own


@dataclass(frozen=True)
class InputModel:
    """A model reference a job loads, named by its parameter."""

    field: str
    reference: str


@dataclass(frozen=True)
class JobSpec:
    job_type: str
    id_prefix: str
    params_model: type[BaseModel]
    stage: str  # "module:function" run in the GPU stage: (params, StageContext) -> StageResult
    # Source files the job's results depend on beyond what its modules import (jobs.code_version derives
    # those): files loaded by path or by a computed name; globs relative to the project root.
    code_paths: tuple[str, ...] = ()
    input_files: Callable[[Any], list[InputFile]] = lambda params: []
    input_models: Callable[[Any], list[InputModel]] = lambda params: []
    # (params, base model config.json or None) -> GB; drives the RunPod worker's GPU choice
    vram_gb: Callable[[Any, dict | None], float] | None = None
    # (params, store) -> problems ("field: what is wrong"): checks that need the store, run in the control tier
    extra_checks: Callable[[Any, Any], list[str]] | None = None
    # False for services (api/serve): every submission is its own run, never served from cache
    cacheable: bool = True
    id_suffix: Callable[[Any], str | None] = lambda params: None
    secrets: tuple[str, ...] = ()  # Prefect Secret block names the stage may need
    # The control-flow deployment that runs this job type ("finetune/sft", …), given its parameters
    control_deployment: Callable[[Any], str] = lambda params: ""
    description: str = ""

    @cached_property
    def code_files(self) -> list[Path]:
        """The source files of the job type: its stage's and parameter model's modules with every project
        module they import, transitively (:mod:`jobs.code_version`), and :attr:`code_paths`."""
        extra = [path for pattern in self.code_paths for path in PROJECT_ROOT.glob(pattern) if path.is_file()]
        if self.code_paths and not extra:
            raise RuntimeError(f"job type {self.job_type}: no source files match {self.code_paths}")
        entry_modules = [self.stage.partition(":")[0], self.params_model.__module__]
        return sorted({*import_closure(entry_modules, PROJECT_ROOT), *extra})

    @cached_property
    def code_version(self) -> str:
        return source_digest(self.code_files, PROJECT_ROOT)

    def job_id(self, params: BaseModel, inputs: list[str]) -> str:
        """The content-hash ID: parameters with defaults (see :func:`identity_params`), input contents, code version."""
        job_id = compute_job_id(
            self.job_type,
            identity_params(params),
            inputs,
            self.code_version,
            prefix=self.id_prefix,
        )
        suffix = self.id_suffix(params)
        return f"{job_id}-{suffix}" if suffix else job_id

    def stage_function(self) -> Callable:
        module, _, name = self.stage.partition(":")
        return getattr(importlib.import_module(module), name)


def identity_params(params: BaseModel) -> dict[str, Any]:
    """The parameters a job ID covers: every field with its default filled in, except the hardware request.

    ``allowed_hardware``, ``requires_vram_gb``, ``image``, ``max_cost_usd`` and ``force`` (:mod:`jobs.hardware`)
    say where the job runs, what it may cost and whether a stored result may be reused, not what it
    computes: the same job on other hardware, or with another cost cap, is the same job, and a cache hit.
    """
    hardware = set(NOT_IN_JOB_ID) if isinstance(params, HardwareRequest) else set()
    return params.model_dump(mode="json", exclude=hardware)


_REGISTRY: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    _REGISTRY[spec.job_type] = spec
    return spec


def get_job_spec(job_type: str) -> JobSpec:
    _load_builtin_specs()
    try:
        return _REGISTRY[job_type]
    except KeyError:
        raise ValueError(f"unknown job type {job_type!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def job_types() -> list[str]:
    _load_builtin_specs()
    return sorted(_REGISTRY)


def _load_builtin_specs() -> None:
    # The built-in job types register themselves on import; importing is cheap (pydantic only).
    importlib.import_module("jobs.specs")
