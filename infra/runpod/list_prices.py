"""What a GPU type has and costs, for estimates made before RunPod is asked: memory and list price. Pure.

The control tier estimates a job's cost before it starts a GPU stage (budgets, :mod:`jobs.cost_estimate`)
and cannot ask RunPod's catalog for each job. It uses a ``runpod`` work pool's own ``gpu_prices`` where the
pool sets them, and this table otherwise: RunPod's on-demand secure-cloud list prices in USD per GPU-hour,
as published in mid-2025, rounded. They are estimates, never charges: what a pod cost is measured by the
worker (:mod:`jobs.costs`). A type missing here has no known price unless the pool's ``gpu_prices`` gives one.
"""

from __future__ import annotations

from typing import NamedTuple


class ListedGpu(NamedTuple):
    memory_gb: float  # of one GPU
    usd_per_gpu_hour: float


LIST_PRICES: dict[str, ListedGpu] = {
    "NVIDIA RTX A4500": ListedGpu(20, 0.25),
    "NVIDIA RTX A5000": ListedGpu(24, 0.27),
    "NVIDIA GeForce RTX 3090": ListedGpu(24, 0.46),
    "NVIDIA GeForce RTX 4090": ListedGpu(24, 0.69),
    "NVIDIA RTX A6000": ListedGpu(48, 0.49),
    "NVIDIA A40": ListedGpu(48, 0.40),
    "NVIDIA RTX 6000 Ada Generation": ListedGpu(48, 0.77),
    "NVIDIA L40": ListedGpu(48, 0.99),
    "NVIDIA L40S": ListedGpu(48, 0.86),
    "NVIDIA A100 80GB PCIe": ListedGpu(80, 1.64),
    "NVIDIA A100-SXM4-80GB": ListedGpu(80, 1.74),
    "NVIDIA H100 PCIe": ListedGpu(80, 2.39),
    "NVIDIA H100 80GB HBM3": ListedGpu(80, 2.69),
    "NVIDIA H100 NVL": ListedGpu(94, 2.79),
    "NVIDIA H200": ListedGpu(141, 3.59),
}
