"""Our typed view of RunPod pods: what we ask for (:class:`PodSpec`) and what RunPod reports (:class:`Pod`).

Plain data, free of the wire format: :mod:`infra.runpod.api` builds them from (and turns them into)
what the SDK sends and reads, so the rest of the project never sees GraphQL field names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PodPort(BaseModel):
    ip: str | None = None
    is_public: bool = False
    private_port: int | None = None
    public_port: int | None = None
    type: str | None = None


class Pod(BaseModel):
    """A pod as RunPod reports it (``pod`` / ``myself { pods }``)."""

    id: str
    name: str = ""
    desired_status: str = Field(default="UNKNOWN", description="RUNNING, EXITED or TERMINATED.")
    image_name: str | None = None
    # Env holds Prefect's API settings; keep it out of reprs so a logged Pod leaks nothing.
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    docker_args: str | None = Field(default=None, repr=False)
    gpu_count: int | None = None
    gpu_display_name: str | None = None
    cost_per_hr: float | None = None
    uptime_seconds: int | None = None
    runtime_up: bool = Field(default=False, description="The container is up (RunPod's `runtime` is set).")
    ports: list[PodPort] = Field(default_factory=list)

    @property
    def is_running(self) -> bool:
        return self.desired_status == "RUNNING"

    def describe(self) -> str:
        container = "container up" if self.runtime_up else "container not up"
        if self.runtime_up and self.uptime_seconds is not None:
            container += f" {self.uptime_seconds} s"
        return f"{self.desired_status} ({container})"


class PodSpec(BaseModel):
    """Everything ``create_pod`` needs for one GPU pod, in plain (unencoded) values."""

    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    gpu_type_id: str | None = Field(
        default=None, description="Required to create; the launcher sets it per attempt."
    )
    cloud_type: Literal["SECURE", "COMMUNITY", "ALL"] = "ALL"
    gpu_count: int = Field(default=1, ge=1)
    container_disk_gb: int = Field(default=50, ge=1)
    volume_gb: int = Field(default=0, ge=0)
    volume_mount_path: str = "/workspace"
    network_volume_id: str | None = None
    data_center_id: str | None = None
    ports: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    docker_args: str = Field(default="", repr=False)
    allowed_cuda_versions: list[str] = Field(default_factory=list)
    min_vcpu_count: int = Field(default=1, ge=1)
    min_memory_gb: int = Field(default=1, ge=1)
    support_public_ip: bool = True
    start_ssh: bool = True
