"""Our typed view of RunPod pods, and their REST API v2 wire shapes.

:class:`PodSpec` is what we ask for, :class:`Pod` what RunPod reports. Both are plain data in our
names; :meth:`PodSpec.create_request` and :func:`pod_from_wire` are the only places that know the
v2 field names (``CreatePodRequest`` and ``Pod`` of RunPod's OpenAPI schema, ``api-reference-v2``),
so the rest of the project never sees them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

Cloud = Literal["SECURE", "COMMUNITY"]


class PodStatus(StrEnum):
    """RunPod's pod lifecycle (``PodStatus``): real states, so a pod that will never run can be seen."""

    PROVISIONING = "PROVISIONING"  # being allocated a machine
    STARTING = "STARTING"  # image pulled, container starting
    RUNNING = "RUNNING"  # container up
    EXITED = "EXITED"  # stopped: no compute billing, the disk still bills
    ERROR = "ERROR"  # the container cannot run (bad image, host failure); it bills until terminated
    TERMINATED = "TERMINATED"  # gone for good

    @classmethod
    def from_wire(cls, value: Any) -> PodStatus:
        try:
            return cls(str(value).upper())
        except ValueError:
            # A status added after this code was written: treat it as "not running yet" rather than
            # failing every read; the start timeout still bounds a pod that never gets further.
            return cls.PROVISIONING


class PodPort(BaseModel):
    ip: str | None = None
    private_port: int | None = None
    public_port: int | None = None
    type: str | None = None


class Pod(BaseModel):
    """A pod as RunPod reports it (``GET /v2/pods/{id}``)."""

    id: str
    name: str = ""
    status: PodStatus = PodStatus.PROVISIONING
    image: str | None = None
    # Env holds Prefect's API settings; keep it out of reprs so a logged Pod leaks nothing.
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    args: str | None = Field(default=None, repr=False)
    gpu_type_id: str | None = None
    gpu_count: int | None = None
    cloud: str | None = None
    data_center_id: str | None = None
    cost_per_hr: float | None = Field(default=None, description="USD per hour now (0 when stopped).")
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    uptime_seconds: int | None = None
    runtime_up: bool = Field(default=False, description="The container is up (RunPod's `runtime` is set).")
    ports: list[PodPort] = Field(default_factory=list)

    @property
    def is_running(self) -> bool:
        return self.status is PodStatus.RUNNING

    def age_seconds(self, now: dt.datetime) -> float | None:
        """Seconds since RunPod created the pod, or None when it did not say."""
        return None if self.created_at is None else (now - self.created_at).total_seconds()

    def describe(self) -> str:
        container = "container up" if self.runtime_up else "container not up"
        if self.runtime_up and self.uptime_seconds is not None:
            container += f" {self.uptime_seconds} s"
        return f"{self.status.value} ({container})"


class PodSpec(BaseModel):
    """Everything a create needs for one GPU pod, in plain values (see :meth:`create_request`)."""

    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    gpu_type_id: str | None = Field(
        default=None, description="Required to create; the launcher sets it per attempt."
    )
    cloud: Cloud = "SECURE"
    gpu_count: int = Field(default=1, ge=1)
    container_disk_gb: int = Field(default=50, ge=1)
    volume_gb: int = Field(default=0, ge=0)
    volume_mount_path: str = "/workspace"
    network_volume_id: str | None = None
    data_center_ids: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    args: str = Field(default="", repr=False, description="The container's start command (dockerArgs).")
    allowed_cuda_versions: list[str] = Field(default_factory=list)
    start_ssh: bool = False

    def create_request(self) -> dict[str, Any]:
        """The ``CreatePodRequest`` body. Only fields the schema knows: RunPod refuses unknown ones."""
        if not self.gpu_type_id:
            raise ValueError(f"pod {self.name}: gpu_type_id is required (CPU pods are not supported)")
        gpu: dict[str, Any] = {"id": self.gpu_type_id, "count": self.gpu_count}
        if self.allowed_cuda_versions:
            gpu["allowedCudaVersions"] = list(self.allowed_cuda_versions)
        body: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "gpu": gpu,
            "cloud": self.cloud,
            "disk": self.container_disk_gb,
            "env": dict(self.env),
            "args": self.args,
            "ports": list(self.ports),
            "startSsh": self.start_ssh,
        }
        if self.data_center_ids:
            body["dataCenterIds"] = list(self.data_center_ids)
        if self.network_volume_id:
            body["mounts"] = {
                "network": [{"volumeId": self.network_volume_id, "path": self.volume_mount_path}]
            }
        elif self.volume_gb:
            body["mounts"] = {"persistent": {"size": self.volume_gb, "path": self.volume_mount_path}}
        return body


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def pod_from_wire(answer: Mapping[str, Any]) -> Pod:
    """Our :class:`Pod` from a v2 ``Pod`` object. Tolerant of missing optional parts."""
    runtime = answer.get("runtime") or None
    gpu = answer.get("gpu") or {}
    env = answer.get("env") or {}
    ports = [
        PodPort(
            ip=port.get("ip"),
            private_port=port.get("private"),
            public_port=port.get("public"),
            type=port.get("type"),
        )
        for port in ((runtime or {}).get("ports") or [])
        if isinstance(port, Mapping)
    ]
    status = PodStatus.from_wire(answer.get("status"))
    cost = answer.get("cost")
    return Pod(
        id=str(answer["id"]),
        name=str(answer.get("name") or ""),
        status=status,
        image=answer.get("image"),
        env={str(key): str(value) for key, value in env.items()} if isinstance(env, Mapping) else {},
        args=answer.get("args"),
        gpu_type_id=gpu.get("id"),
        gpu_count=gpu.get("count"),
        cloud=answer.get("cloud"),
        data_center_id=answer.get("dataCenterId"),
        cost_per_hr=float(cost) if isinstance(cost, int | float) else None,
        created_at=_timestamp(answer.get("createdAt")),
        started_at=_timestamp(answer.get("startedAt")),
        uptime_seconds=(runtime or {}).get("uptime"),
        runtime_up=status is PodStatus.RUNNING and runtime is not None,
        ports=ports,
    )
