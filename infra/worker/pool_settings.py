"""The pod settings of a ``runpod`` work pool: what its UI form shows and deployments override.

One model shared by the worker's job configuration and its variables (:mod:`infra.worker.runpod_worker`),
so each setting and its description is written once. Every field has a default or is optional,
and a description, because they become the work pool's form.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from blocks.runpod import RunPodCredentials
from infra.bounds import (
    DEFAULT_TTL_HOURS,
    MAX_RUN_HOURS_MAX,
    POD_START_TIMEOUT_SECONDS_MAX,
    POLL_INTERVAL_SECONDS_MAX,
    TTL_HOURS_MAX,
)
from infra.runpod.gpu_choice import CloudType
from infra.runpod.hardware import MAX_GPUS_PER_POD
from infra.worker.pod_spec import DEFAULT_GPU_TYPES, DEFAULT_IMAGE

_PORT = r"^\d{1,5}/(tcp|http|udp)$"


class RunPodPodSettings(BaseModel):
    """The pod settings a ``runpod`` work pool exposes; shared by the job configuration and its variables."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        description="Container image of the pod: infra/Dockerfile built and pushed to a registry RunPod can pull.",
    )
    gpu_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GPU_TYPES),
        min_length=1,
        title="GPU types",
        description=(
            "RunPod GPU type ids the pool may use, most preferred first. Those with enough VRAM are tried "
            "cheapest first (ties in this order); when RunPod has none available the next is tried."
        ),
    )
    gpu_count: int = Field(default=1, ge=1, le=MAX_GPUS_PER_POD, title="GPU count", description="GPUs per pod.")
    min_vram_gb: float = Field(
        default=0,
        ge=0,
        title="Minimum VRAM (GB)",
        description="The job's VRAM estimate in GB, spread over gpu_count GPUs; set per flow run by the job's flow.",
    )
    cloud_type: CloudType = Field(
        default="ALL",
        description="SECURE (RunPod data centres), COMMUNITY (hosts), or ALL (both, each tried at its own price).",
    )
    gpu_prices: dict[str, float] = Field(
        default_factory=dict,
        title="GPU prices (USD per GPU-hour)",
        description="Price per GPU type used to order candidates; types not listed use RunPod's current price.",
    )
    container_disk_gb: int = Field(
        default=50, ge=1, description="Container disk in GB (lost when the pod ends)."
    )
    volume_gb: int = Field(
        default=0, ge=0, description="Pod volume in GB (0: none). It bills until the pod is terminated."
    )
    volume_mount_path: str = Field(
        default="/workspace", description="Where the pod volume or network volume is mounted."
    )
    network_volume_id: str | None = Field(
        default=None, description="RunPod network volume to attach (pins the data centre)."
    )
    data_center_id: str | None = Field(
        default=None, description="RunPod data centre id, e.g. EU-RO-1; empty: any."
    )
    ports: list[str] = Field(
        default_factory=list, description='Ports to expose, e.g. ["22/tcp", "8000/http"].'
    )
    allowed_cuda_versions: list[str] = Field(
        default_factory=list, title="Allowed CUDA versions", description='e.g. ["12.4", "12.6"]; empty: any.'
    )
    ttl_hours: float = Field(
        default=DEFAULT_TTL_HOURS,
        gt=0,
        le=TTL_HOURS_MAX,
        allow_inf_nan=False,
        title="TTL (hours)",
        description=(
            "The pod terminates itself this long after it starts, whatever happens (extend with `ow ttl`). "
            f"More than 0, at most {TTL_HOURS_MAX:g}."
        ),
    )
    max_run_hours: float | None = Field(
        default=None,
        gt=0,
        le=MAX_RUN_HOURS_MAX,
        allow_inf_nan=False,
        title="Maximum run time (hours)",
        description=(
            "The worker terminates the pod and crashes the run after this long; empty: no limit. "
            f"More than 0, at most {MAX_RUN_HOURS_MAX:g}."
        ),
    )
    pod_start_timeout_seconds: float = Field(
        default=1800,
        gt=0,
        le=POD_START_TIMEOUT_SECONDS_MAX,
        allow_inf_nan=False,
        description=(
            "Crash the run and terminate the pod if the flow run has not started this long after launch. "
            f"More than 0, at most {POD_START_TIMEOUT_SECONDS_MAX:g}."
        ),
    )
    poll_interval_seconds: float = Field(
        default=10,
        gt=0,
        le=POLL_INTERVAL_SECONDS_MAX,
        allow_inf_nan=False,
        description=(
            "How often the worker checks pod and flow run (also the delay before billing stops). "
            f"More than 0, at most {POLL_INTERVAL_SECONDS_MAX:g}."
        ),
    )
    allowed_hardware: list[str] = Field(
        default_factory=list,
        title="Allowed hardware",
        description=(
            'GPU counts and types this run may use, e.g. ["1x H100", "2x A100"] (short names or RunPod ids); '
            "set per job. Empty: gpu_types × gpu_count."
        ),
    )
    capacity_wait_minutes: float = Field(
        default=240,
        ge=0,
        le=7 * 24 * 60,
        allow_inf_nan=False,
        title="Capacity wait (minutes)",
        description=(
            "How long a run waits (Scheduled, AwaitingCapacity) for a fitting GPU to come into stock, or for a "
            "billing refusal to clear, before it ends. 0: do not wait."
        ),
    )
    capacity_retry_seconds: float = Field(
        default=60,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        title="Capacity check interval (seconds)",
        description="First delay between capacity checks of a waiting run; it doubles per check, up to 8×.",
    )
    final_state_grace_seconds: float = Field(
        default=30,
        ge=0,
        le=600,
        allow_inf_nan=False,
        description=(
            "After the flow run reaches a final state, how long the pod may take to end itself (its engine "
            "sends its last logs first) before the worker terminates it."
        ),
    )
    runpod_credentials: RunPodCredentials | None = Field(
        default=None,
        title="RunPod credentials",
        description="The ow-runpod-credentials block of the account to launch pods in.",
    )

    @field_validator("gpu_types")
    @classmethod
    def _gpu_types_named(cls, value: list[str]) -> list[str]:
        if any(not gpu.strip() for gpu in value):
            raise ValueError("gpu_types holds an empty name; use RunPod ids such as 'NVIDIA A40'")
        return value

    @field_validator("allowed_hardware")
    @classmethod
    def _hardware_well_formed(cls, value: list[str]) -> list[str]:
        from infra.runpod.hardware import parse_allowed_hardware

        parse_allowed_hardware(value)  # raises ValueError naming the entry
        return value

    @field_validator("ports")
    @classmethod
    def _ports_well_formed(cls, value: list[str]) -> list[str]:
        bad = [port for port in value if not re.match(_PORT, port)]
        if bad:
            raise ValueError(f"ports {bad} must look like '22/tcp' or '8000/http'")
        return value

    @field_validator("gpu_prices")
    @classmethod
    def _prices_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {gpu: price for gpu, price in value.items() if price < 0}
        if negative:
            raise ValueError(f"gpu_prices must be 0 or more, got {negative}")
        return value
