"""Which GPU types (and RunPod clouds) to try for a job: in stock first, cheapest first. Pure: no I/O.

Inputs are the job's VRAM estimate, the work pool's ordered GPU preferences (or the job's
``allowed_hardware``) and what RunPod's catalog says about each type (memory, which clouds offer it,
prices, and current pod stock per cloud from ``GET /v2/catalog/gpus?include=AVAILABILITY``). Prices
come from the catalog or from the pool's ``gpu_prices`` configuration; nothing here knows what a GPU costs.

The launcher walks the returned candidates in order and moves on when RunPod answers "no instances
available", so the order *is* the fallback order. The catalog is a hint, not a reservation (RunPod's
own words): a type reported out of stock is not tried, but one reported in stock can still fail at
create time, which is why the fallback stays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CloudType = Literal["SECURE", "COMMUNITY", "ALL"]
ConcreteCloud = Literal["SECURE", "COMMUNITY"]

# When a pool accepts any cloud, each GPU type becomes one candidate per cloud: the clouds have
# different prices and separate capacity, so "no capacity" in one is worth retrying in the other.
CLOUDS_FOR: dict[str, tuple[ConcreteCloud, ...]] = {
    "SECURE": ("SECURE",),
    "COMMUNITY": ("COMMUNITY",),
    "ALL": ("SECURE", "COMMUNITY"),
}


class AvailabilityLevel(StrEnum):
    """RunPod's catalog stock level for pods (``AvailabilityLevel``)."""

    NONE = "NONE"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class GpuTypeInfo(BaseModel):
    """What RunPod's catalog reports about one GPU type, in our names."""

    model_config = ConfigDict(frozen=True)

    gpu_type_id: str = Field(description="RunPod's id, e.g. 'NVIDIA A40'.")
    memory_gb: float = Field(ge=0, description="VRAM of one GPU in GB.")
    max_gpu_count: int | None = Field(default=None, description="Most GPUs of this type one pod can have.")
    secure_cloud: bool = Field(default=True, description="Offered in the secure cloud.")
    community_cloud: bool = Field(default=True, description="Offered in the community cloud.")
    secure_price: float | None = Field(default=None, description="USD per GPU-hour in the secure cloud.")
    community_price: float | None = Field(
        default=None, description="USD per GPU-hour in the community cloud."
    )

    secure_availability: AvailabilityLevel | None = Field(
        default=None, description="Pod stock in the secure cloud; None when the catalog did not say."
    )
    community_availability: AvailabilityLevel | None = Field(
        default=None, description="Pod stock in the community cloud; None when the catalog did not say."
    )

    def offered_in(self, cloud: ConcreteCloud) -> bool:
        return self.secure_cloud if cloud == "SECURE" else self.community_cloud

    def in_stock(self, cloud: ConcreteCloud) -> bool:
        """False only when the catalog says NONE: an unknown level is worth a try."""
        level = self.secure_availability if cloud == "SECURE" else self.community_availability
        return level is not AvailabilityLevel.NONE

    def merged(self, other: GpuTypeInfo) -> GpuTypeInfo:
        """This answer with the stock levels ``other`` knows and this one does not (one catalog read per cloud)."""
        return self.model_copy(
            update={
                "secure_availability": self.secure_availability or other.secure_availability,
                "community_availability": self.community_availability or other.community_availability,
            }
        )

    def price_in(self, cloud: ConcreteCloud) -> float | None:
        price = self.secure_price if cloud == "SECURE" else self.community_price
        # RunPod reports 0 for a cloud that has no price listed; that is "unknown", not "free".
        return price if price else None


class GpuCandidate(BaseModel):
    """One (GPU type, cloud) pair to ask RunPod for, in the order they should be tried."""

    model_config = ConfigDict(frozen=True)

    gpu_type_id: str
    cloud_type: ConcreteCloud
    memory_gb: float
    price_per_gpu_hour: float | None = Field(
        description="None when neither RunPod nor the pool gives a price."
    )
    gpu_count: int = Field(default=1, ge=1)
    in_stock: bool = Field(default=True, description="False when RunPod's catalog reports no stock.")

    @property
    def price_per_hour(self) -> float | None:
        """The pod's price: per-GPU price times the count."""
        return None if self.price_per_gpu_hour is None else self.price_per_gpu_hour * self.gpu_count

    @property
    def hardware(self) -> str:
        return f"{self.gpu_count}x {self.gpu_type_id}"

    def describe(self) -> str:
        price = (
            "unknown price" if self.price_per_gpu_hour is None else f"${self.price_per_gpu_hour:.2f}/GPU-h"
        )
        return f"{self.hardware} ({self.cloud_type}, {self.memory_gb:g} GB, {price})"


class GpuPlan(BaseModel):
    """The candidates to try, and why every other preferred type was left out."""

    model_config = ConfigDict(frozen=True)

    vram_per_gpu_gb: float
    candidates: list[GpuCandidate] = Field(description="In stock (or stock unknown), in the order to try.")
    rejected: list[tuple[str, str]] = Field(
        description="(GPU type id, reason) for preferences that cannot work."
    )
    out_of_stock: list[GpuCandidate] = Field(
        default_factory=list, description="Would fit, but RunPod's catalog reports no stock now."
    )

    @property
    def can_ever_run(self) -> bool:
        """Something fits: waiting for stock can help. False means the request itself cannot be met."""
        return bool(self.candidates or self.out_of_stock)

    def explain_empty(self) -> str:
        """The message for a job that no preferred GPU type can run."""
        reasons = "; ".join(f"{gpu}: {why}" for gpu, why in self.rejected) or "gpu_types is empty"
        return f"No preferred GPU type can provide {self.vram_per_gpu_gb:g} GB per GPU ({reasons})."

    def explain_out_of_stock(self) -> str:
        names = ", ".join(dict.fromkeys(f"{c.hardware} ({c.cloud_type})" for c in self.out_of_stock))
        return f"no stock of {names}" if names else "nothing in stock"

    def without(self, excluded: set[tuple[str, str]]) -> GpuPlan:
        """The plan minus the (GPU type, cloud) pairs in ``excluded`` (cooling down after failures)."""
        kept = [c for c in self.candidates if (c.gpu_type_id, c.cloud_type) not in excluded]
        cooling = [c for c in self.candidates if (c.gpu_type_id, c.cloud_type) in excluded]
        return self.model_copy(update={"candidates": kept, "out_of_stock": [*self.out_of_stock, *cooling]})


def merge_plans(plans: Sequence[GpuPlan]) -> GpuPlan:
    """One plan from the plans of several hardware options (e.g. ``1x H100`` or ``2x A100``): in
    stock first, then cheapest pod (price × count), then option order."""
    indexed = [(index, candidate) for index, plan in enumerate(plans) for candidate in plan.candidates]
    indexed.sort(key=lambda item: (*_price_key(item[1]), item[0]))
    return GpuPlan(
        vram_per_gpu_gb=min((plan.vram_per_gpu_gb for plan in plans), default=0.0),
        candidates=[candidate for _, candidate in indexed],
        rejected=[reason for plan in plans for reason in plan.rejected],
        out_of_stock=[candidate for plan in plans for candidate in plan.out_of_stock],
    )


def _price_key(candidate: GpuCandidate) -> tuple[bool, float]:
    price = candidate.price_per_hour
    return (price is None, price if price is not None else 0.0)


def vram_per_gpu_gb(min_vram_gb: float, gpu_count: int) -> float:
    """VRAM each GPU must have when the job's estimate is spread evenly over ``gpu_count`` GPUs."""
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be at least 1, got {gpu_count}")
    if min_vram_gb < 0 or math.isnan(min_vram_gb):
        raise ValueError(f"min_vram_gb must be 0 or more, got {min_vram_gb}")
    return min_vram_gb / gpu_count


def plan_gpu_candidates(
    *,
    min_vram_gb: float,
    gpu_count: int,
    preferences: Sequence[str],
    cloud_type: CloudType,
    gpu_types: Mapping[str, GpuTypeInfo],
    price_overrides: Mapping[str, float] | None = None,
) -> GpuPlan:
    """Order the preferred GPU types that fit and are in stock, cheapest first; preference order breaks ties.

    ``gpu_types`` holds RunPod's answer for each preference it knows (a missing entry means RunPod does
    not know that id). ``price_overrides`` (USD per GPU-hour, from pool configuration) replace RunPod's
    prices for the types they name, in every cloud. Candidates without any price go last, in preference
    order, so a pool that configures no prices simply gets its preference order. Candidates the catalog
    reports out of stock go to ``out_of_stock`` instead, in the same order.
    """
    need = vram_per_gpu_gb(min_vram_gb, gpu_count)
    overrides = dict(price_overrides or {})
    ranked: list[tuple[tuple[bool, float, int, int], GpuCandidate]] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()

    for preference_index, gpu_type_id in enumerate(preferences):
        if gpu_type_id in seen:
            continue
        seen.add(gpu_type_id)
        info = gpu_types.get(gpu_type_id)
        if info is None:
            rejected.append((gpu_type_id, "unknown to RunPod"))
            continue
        if info.memory_gb < need:
            rejected.append((gpu_type_id, f"{info.memory_gb:g} GB per GPU, {need:g} GB needed"))
            continue
        if info.max_gpu_count is not None and gpu_count > info.max_gpu_count:
            rejected.append((gpu_type_id, f"at most {info.max_gpu_count} per pod, {gpu_count} requested"))
            continue
        clouds = [cloud for cloud in CLOUDS_FOR[cloud_type] if info.offered_in(cloud)]
        if not clouds:
            rejected.append((gpu_type_id, f"not offered in cloud_type {cloud_type}"))
            continue
        for cloud_index, cloud in enumerate(clouds):
            price = overrides.get(gpu_type_id, info.price_in(cloud))
            candidate = GpuCandidate(
                gpu_type_id=gpu_type_id,
                cloud_type=cloud,
                memory_gb=info.memory_gb,
                price_per_gpu_hour=price,
                gpu_count=gpu_count,
                in_stock=info.in_stock(cloud),
            )
            sort_key = (price is None, price if price is not None else 0.0, preference_index, cloud_index)
            ranked.append((sort_key, candidate))

    ranked.sort(key=lambda item: item[0])
    ordered = [candidate for _, candidate in ranked]
    return GpuPlan(
        vram_per_gpu_gb=need,
        candidates=[candidate for candidate in ordered if candidate.in_stock],
        rejected=rejected,
        out_of_stock=[candidate for candidate in ordered if not candidate.in_stock],
    )
