"""GPU choice: which (GPU type, cloud) pairs a job may use, and in which order they are tried."""

from __future__ import annotations

import pytest

from infra.runpod.gpu_choice import (
    AvailabilityLevel,
    GpuTypeInfo,
    merge_plans,
    plan_gpu_candidates,
    vram_per_gpu_gb,
)

A6000 = GpuTypeInfo(gpu_type_id="A6000", memory_gb=48, secure_price=0.49, community_price=0.33)
A40 = GpuTypeInfo(gpu_type_id="A40", memory_gb=48, secure_price=0.40, community_price=0.35)
RTX4090 = GpuTypeInfo(gpu_type_id="4090", memory_gb=24, secure_price=0.69, community_price=0.34)
H100 = GpuTypeInfo(gpu_type_id="H100", memory_gb=80, secure_price=2.99, community_price=2.69, max_gpu_count=8)
SECURE_ONLY = GpuTypeInfo(gpu_type_id="L40S", memory_gb=48, community_cloud=False, secure_price=0.86)
UNPRICED = GpuTypeInfo(gpu_type_id="mystery", memory_gb=96)
CATALOGUE = {gpu.gpu_type_id: gpu for gpu in (A6000, A40, RTX4090, H100, SECURE_ONLY, UNPRICED)}


def order(min_vram_gb=0.0, gpu_count=1, preferences=("A6000", "A40"), cloud_type="SECURE", prices=None):
    plan = plan_gpu_candidates(
        min_vram_gb=min_vram_gb,
        gpu_count=gpu_count,
        preferences=list(preferences),
        cloud_type=cloud_type,
        gpu_types=CATALOGUE,
        price_overrides=prices,
    )
    return [(c.gpu_type_id, c.cloud_type) for c in plan.candidates], plan


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        ("cheapest first, not preference order", {}, [("A40", "SECURE"), ("A6000", "SECURE")]),
        (
            "community prices differ",
            {"cloud_type": "COMMUNITY"},
            [("A6000", "COMMUNITY"), ("A40", "COMMUNITY")],
        ),
        (
            "ALL tries every cloud, cheapest pair first",
            {"cloud_type": "ALL"},
            [("A6000", "COMMUNITY"), ("A40", "COMMUNITY"), ("A40", "SECURE"), ("A6000", "SECURE")],
        ),
        (
            "too small for the job is left out",
            {"min_vram_gb": 40, "preferences": ("4090", "A40")},
            [("A40", "SECURE")],
        ),
        (
            "VRAM spread over GPUs",
            {"min_vram_gb": 40, "gpu_count": 2, "preferences": ("4090",)},
            [("4090", "SECURE")],
        ),
        ("exactly enough fits", {"min_vram_gb": 48, "preferences": ("A40",)}, [("A40", "SECURE")]),
        ("configured price wins", {"prices": {"A6000": 0.10}}, [("A6000", "SECURE"), ("A40", "SECURE")]),
        (
            "equal prices keep preference order",
            {"prices": {"A6000": 1, "A40": 1}},
            [("A6000", "SECURE"), ("A40", "SECURE")],
        ),
        (
            "unpriced types go last",
            {"preferences": ("mystery", "A40")},
            [("A40", "SECURE"), ("mystery", "SECURE")],
        ),
        (
            "a type missing from a cloud is skipped there",
            {"preferences": ("L40S",), "cloud_type": "ALL"},
            [("L40S", "SECURE")],
        ),
        ("duplicates are tried once", {"preferences": ("A40", "A40")}, [("A40", "SECURE")]),
        (
            "zero VRAM estimate fits everything",
            {"preferences": ("4090", "H100")},
            [("4090", "SECURE"), ("H100", "SECURE")],
        ),
    ],
)
def test_candidates_are_the_fitting_preferences_cheapest_first(case, kwargs, expected):
    assert order(**kwargs)[0] == expected, case


@pytest.mark.parametrize(
    ("kwargs", "rejected"),
    [
        ({"preferences": ("B200",)}, [("B200", "unknown to RunPod")]),
        ({"preferences": ("4090",), "min_vram_gb": 30}, [("4090", "24 GB per GPU, 30 GB needed")]),
        ({"preferences": ("H100",), "gpu_count": 9}, [("H100", "at most 8 per pod, 9 requested")]),
        (
            {"preferences": ("L40S",), "cloud_type": "COMMUNITY"},
            [("L40S", "not offered in cloud_type COMMUNITY")],
        ),
    ],
)
def test_preferences_that_cannot_work_are_reported_with_a_reason(kwargs, rejected):
    candidates, plan = order(**kwargs)
    assert candidates == []
    assert plan.rejected == rejected
    assert rejected[0][0] in plan.explain_empty() and rejected[0][1] in plan.explain_empty()


@pytest.mark.parametrize(
    ("min_vram_gb", "gpu_count", "per_gpu"),
    [(0, 1, 0), (40, 1, 40), (40, 2, 20), (70, 4, 17.5)],
)
def test_vram_need_is_spread_evenly_over_gpus(min_vram_gb, gpu_count, per_gpu):
    assert vram_per_gpu_gb(min_vram_gb, gpu_count) == per_gpu


@pytest.mark.parametrize(("min_vram_gb", "gpu_count"), [(-1, 1), (10, 0), (float("nan"), 1)])
def test_impossible_vram_requests_are_refused(min_vram_gb, gpu_count):
    with pytest.raises(ValueError):
        vram_per_gpu_gb(min_vram_gb, gpu_count)


def test_a_zero_price_from_runpod_means_unknown_not_free():
    free_looking = GpuTypeInfo(gpu_type_id="odd", memory_gb=48, secure_price=0.0)
    plan = plan_gpu_candidates(
        min_vram_gb=0,
        gpu_count=1,
        preferences=["odd", "A40"],
        cloud_type="SECURE",
        gpu_types={"odd": free_looking, "A40": A40},
    )
    assert [c.gpu_type_id for c in plan.candidates] == ["A40", "odd"]
    assert plan.candidates[1].price_per_gpu_hour is None


def stocked(info: GpuTypeInfo, secure=None, community=None) -> GpuTypeInfo:
    return info.model_copy(update={"secure_availability": secure, "community_availability": community})


def test_types_the_catalog_reports_out_of_stock_are_set_aside_not_tried():
    catalogue = {**CATALOGUE, "A40": stocked(A40, secure=AvailabilityLevel.NONE, community=AvailabilityLevel.LOW)}
    plan = plan_gpu_candidates(
        min_vram_gb=0, gpu_count=1, preferences=["A6000", "A40"], cloud_type="ALL", gpu_types=catalogue
    )
    assert [(c.gpu_type_id, c.cloud_type) for c in plan.candidates] == [
        ("A6000", "COMMUNITY"),
        ("A40", "COMMUNITY"),
        ("A6000", "SECURE"),
    ]
    assert [(c.gpu_type_id, c.cloud_type) for c in plan.out_of_stock] == [("A40", "SECURE")]
    assert plan.can_ever_run and "no stock of 1x A40 (SECURE)" in plan.explain_out_of_stock()


def test_nothing_in_stock_still_can_run_later_but_nothing_fitting_never_can():
    empty = {gpu: stocked(info, AvailabilityLevel.NONE, AvailabilityLevel.NONE) for gpu, info in CATALOGUE.items()}
    waiting = plan_gpu_candidates(
        min_vram_gb=0, gpu_count=1, preferences=["A40"], cloud_type="SECURE", gpu_types=empty
    )
    assert waiting.candidates == [] and waiting.can_ever_run
    impossible = plan_gpu_candidates(
        min_vram_gb=500, gpu_count=1, preferences=["A40"], cloud_type="SECURE", gpu_types=CATALOGUE
    )
    assert not impossible.can_ever_run


def test_hardware_options_merge_by_the_pods_price_not_the_gpus():
    one_h100 = plan_gpu_candidates(
        min_vram_gb=80, gpu_count=1, preferences=["H100"], cloud_type="SECURE", gpu_types=CATALOGUE
    )
    two_a40 = plan_gpu_candidates(
        min_vram_gb=80, gpu_count=2, preferences=["A40"], cloud_type="SECURE", gpu_types=CATALOGUE
    )
    merged = merge_plans([one_h100, two_a40])
    # 2 × $0.40 = $0.80 per hour beats 1 × $2.99
    assert [(c.hardware, c.price_per_hour) for c in merged.candidates] == [("2x A40", 0.8), ("1x H100", 2.99)]


def test_cooling_down_pairs_leave_the_candidates_for_the_waiting_list():
    plan = plan_gpu_candidates(
        min_vram_gb=0, gpu_count=1, preferences=["A6000", "A40"], cloud_type="SECURE", gpu_types=CATALOGUE
    )
    cooled = plan.without({("A40", "SECURE")})
    assert [c.gpu_type_id for c in cooled.candidates] == ["A6000"]
    assert [c.gpu_type_id for c in cooled.out_of_stock] == ["A40"]
