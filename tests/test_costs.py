"""What a job cost: the pure pieces. A pod's charge as the worker builds it, the job's sum, the
report groups, the ledger artifact's round trip, and how the cost reads in the job's summary. The
end-to-end figures (emulated pods, recoveries, the local default) are in ``test_runpod_finetune.py``
and ``test_finetune_flow.py``."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from prefect.client.schemas.objects import Artifact

from flows.gpu_stage import summary_markdown
from infra.runpod.gpu_choice import GpuCandidate
from infra.worker.pod_charge import billed_figure, describe_charge, pod_charge, pod_created_at
from jobs.costs import LOCAL_NOTE, PodCharge, cost_line, cost_report, job_cost, local_cost
from jobs.records import JobRecord
from tasks.cost_ledger import CHARGE_KEY_PREFIX, charge_artifact, charge_key, charges_from
from tasks.job_cost import CHARGE_WAIT_SLACK_SECONDS, charge_wait_seconds, pods_without_charge

DAY = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
A40 = GpuCandidate(
    gpu_type_id="NVIDIA A40", cloud_type="SECURE", memory_gb=48, price_per_gpu_hour=0.4, gpu_count=2
)


def charge(pod_id: str = "pod1", *, seconds: float = 3600, price: float | None = 0.8, **fields) -> PodCharge:
    values = {
        "pod_id": pod_id,
        "flow_run_id": str(uuid.uuid4()),
        "job_id": "ftjob-1",
        "job_type": "finetune",
        "price_per_hour": price,
        "created_at": DAY,
        "ended_at": DAY + seconds,
        **fields,
    }
    return PodCharge(**values)


# -- a pod's charge, as the worker builds it -------------------------------------------------------


def test_a_pod_charge_takes_the_job_from_the_stage_tags_and_the_price_from_the_launch():
    built = pod_charge(
        pod_id="abc",
        flow_run_id="2f1b6c0e-0000-4000-8000-000000000001",
        tags=["ow-job:ftjob-9", "ow-type:finetune", "ow-deployment:finetune/sft", "submitter:ada"],
        parameters={"job_type": "finetune", "params": {"model": "Qwen/Qwen3-0.6B"}, "store_block": "s"},
        work_pool="gpu",
        candidate=A40,
        created_at=DAY,
        ended_at=DAY + 90,
    )

    assert (built.job_id, built.job_type, built.deployment, built.submitter, built.model) == (
        "ftjob-9",
        "finetune",
        "finetune/sft",
        "ada",
        "Qwen/Qwen3-0.6B",
    )
    assert (built.gpu_type_id, built.gpu_count, built.cloud, built.work_pool) == (
        "NVIDIA A40",
        2,
        "SECURE",
        "gpu",
    )
    assert built.price_per_hour == pytest.approx(0.8)  # the pod's price: per-GPU price × count
    assert built.seconds == 90 and built.usd == pytest.approx(0.8 * 90 / 3600)
    assert describe_charge(built) == "Pod abc cost $0.0200 (90 s at $0.8/h)"


def test_a_run_that_is_no_job_still_gets_a_charge_without_job_fields():
    built = pod_charge(
        pod_id="abc",
        flow_run_id=str(uuid.uuid4()),
        tags=[],
        parameters={"name": "world"},
        work_pool="gpu",
        candidate=A40.model_copy(update={"price_per_gpu_hour": None}),
        created_at=DAY,
        ended_at=DAY + 10,
    )
    assert (built.job_id, built.model, built.price_per_hour, built.usd) == (None, None, None, 0.0)
    assert describe_charge(built) == "Pod abc cost $0.0000 (10 s at an unknown price)"


def test_runpods_bill_wins_over_price_times_time_once_it_has_one():
    built = pod_charge(
        pod_id="abc",
        flow_run_id=str(uuid.uuid4()),
        tags=[],
        parameters={},
        work_pool="gpu",
        candidate=A40,
        created_at=DAY,
        ended_at=DAY + 3600,
        billed_usd=0.75,
    )
    assert built.usd == 0.75 and built.measured_usd == pytest.approx(0.8)
    assert describe_charge(built).endswith("(3600 s at $0.8/h, as RunPod billed)")


@pytest.mark.parametrize(
    ("billed", "seconds", "price", "kept"),
    [
        (0.5, 60, 0.8, 0.5),
        (None, 60, 0.8, None),
        (0.0, 60, 0.8, None),  # billing not caught up yet: not a free pod
        (0.0, 0, 0.8, 0.0),  # a pod that never ran
        (0.0, 60, None, 0.0),  # no price of ours to fall back on
        (-1.0, 60, 0.8, None),
    ],
)
def test_billed_figure(billed, seconds, price, kept):
    assert billed_figure(billed, seconds=seconds, price_per_hour=price) == kept


def test_pod_creation_time_is_runpods_unless_it_lies_in_our_future():
    launched_at = DAY + 5
    assert pod_created_at(None, launched_at) == launched_at
    assert pod_created_at(dt.datetime.fromtimestamp(DAY + 2, dt.UTC), launched_at) == DAY + 2
    assert pod_created_at(dt.datetime.fromtimestamp(DAY + 60, dt.UTC), launched_at) == launched_at


def test_a_pod_seen_gone_before_its_creation_time_costs_nothing_not_a_negative_figure():
    built = pod_charge(
        pod_id="abc",
        flow_run_id=str(uuid.uuid4()),
        tags=[],
        parameters=None,
        work_pool=None,
        candidate=A40,
        created_at=DAY,
        ended_at=DAY - 5,
    )
    assert built.seconds == 0 and built.usd == 0


# -- a job's cost ------------------------------------------------------------------------------------


def test_a_jobs_cost_is_the_sum_of_its_pods_oldest_first():
    lost = charge("lost", seconds=1800, price=0.8)  # $0.40
    resumed = charge(
        "resumed", seconds=900, price=0.8, billed_usd=0.21, created_at=DAY + 2000, ended_at=DAY + 2900
    )

    cost = job_cost([resumed, lost])

    assert cost.usd == pytest.approx(0.61) and cost.billed
    assert [pod.pod_id for pod in cost.pods] == ["lost", "resumed"]
    assert cost.note == ""
    assert cost.gpu_seconds == 2700


def test_a_job_with_an_unpriced_or_missing_pod_says_so():
    cost = job_cost([charge("free", price=None)], missing=2)
    assert cost.usd == 0 and cost.billed
    assert cost.note == "no price known for pod(s) free: counted as $0; 2 pod(s) not yet accounted for"


def test_the_local_default_costs_nothing_and_says_why():
    cost = local_cost()
    assert (cost.usd, cost.billed, cost.pods) == (0.0, False, [])
    assert "local process pool" in cost.note
    assert cost_line(cost) == f"cost: none — {LOCAL_NOTE}"


def test_cost_line():
    two = job_cost([charge("a", seconds=1800, gpu_count=2), charge("b", seconds=1800)])
    assert cost_line(two) == "cost: $0.8000 over 2 pods (1.50 GPU-h)"
    assert (
        cost_line(job_cost([], missing=1))
        == "cost: $0.0000 over 0 pods (0.00 GPU-h); 1 pod(s) not yet accounted for"
    )


@pytest.mark.parametrize(
    ("by", "groups"),
    [
        ("job_type", [("finetune", 1.2, 2, 2), ("inference", 0.4, 1, 1)]),
        ("submitter", [("ada", 1.2, 2, 2), ("-", 0.4, 1, 1)]),
        ("day", [("2026-06-01", 1.2, 2, 2), ("2026-06-02", 0.4, 1, 1)]),
        ("model", [("m2", 0.8, 1, 1), ("m1", 0.4, 1, 1), ("m3", 0.4, 1, 1)]),
    ],
)
def test_cost_report_groups_biggest_first(by, groups):
    charges = [
        charge("a", job_id="j1", submitter="ada", model="m1", seconds=1800),
        charge("b", job_id="j2", submitter="ada", model="m2", seconds=3600),
        charge(
            "c",
            job_id="j3",
            job_type="inference",
            model="m3",
            created_at=DAY + 86400,
            ended_at=DAY + 86400 + 1800,
        ),
    ]
    rows = cost_report(charges, by)
    assert [(row.group, round(row.usd, 6), row.pods, row.jobs) for row in rows] == groups


# -- the ledger ----------------------------------------------------------------------------------------


def test_a_charge_artifact_reads_back_as_the_same_charge():
    original = charge("Pod_X1", billed_usd=0.5, gpu_type_id="NVIDIA A40", cloud="SECURE", gpu_count=2)
    created = charge_artifact(original)

    stored = Artifact(
        key=created.key,
        type=created.type,
        data=created.data,
        description=created.description,
        flow_run_id=created.flow_run_id,
    )
    (read,) = charges_from([stored, Artifact(key="something-else", type="table", data="[]")])

    assert read == original
    assert created.key == charge_key("Pod_X1") == f"{CHARGE_KEY_PREFIX}pod-x1"
    assert created.type == "table" and str(created.flow_run_id) == original.flow_run_id
    assert "2× NVIDIA A40 (SECURE), $0.8/h, 3600 s, $0.5000" in created.description


def test_a_broken_charge_artifact_is_skipped_not_fatal():
    broken = Artifact(key=f"{CHARGE_KEY_PREFIX}x", type="table", data="not json")
    assert charges_from([broken]) == []


# -- the control tier's wait ---------------------------------------------------------------------------


def test_pods_without_charge_ignores_attempts_that_never_got_a_pod():
    assert pods_without_charge(["a", None, "", "b"], [charge("a")]) == {"b"}
    assert pods_without_charge([None], []) == set()


def test_the_wait_for_charges_is_the_pools_grace_and_poll_unless_job_variables_say_otherwise():
    template = {
        "variables": {
            "properties": {
                "final_state_grace_seconds": {"default": 30},
                "poll_interval_seconds": {"default": 1},
            }
        }
    }
    assert charge_wait_seconds(template) == 31 + CHARGE_WAIT_SLACK_SECONDS
    assert charge_wait_seconds(
        template, {"final_state_grace_seconds": 100}, {"poll_interval_seconds": 5}
    ) == (105 + CHARGE_WAIT_SLACK_SECONDS)
    assert charge_wait_seconds({}) == 30 + 10 + CHARGE_WAIT_SLACK_SECONDS  # the settings' own defaults
    assert (
        charge_wait_seconds(template, {"final_state_grace_seconds": "{{ bad }}"})
        == 31 + CHARGE_WAIT_SLACK_SECONDS
    )


# -- the summary -----------------------------------------------------------------------------------------


def record(cost) -> JobRecord:
    return JobRecord(
        job_id="ftjob-1",
        job_type="finetune",
        params={},
        code_version="v",
        started_at=DAY,
        completed_at=DAY + 10,
        cost=cost,
    )


def test_the_summary_shows_what_the_job_cost_pod_by_pod():
    cost = job_cost(
        [
            charge("lost", seconds=60, gpu_type_id="NVIDIA A40", cloud="SECURE"),
            charge("b", seconds=30, billed_usd=0.01),
        ]
    )
    summary = summary_markdown(record(cost))
    assert "- cost: $0.0233 over 2 pods (0.03 GPU-h)" in summary
    assert "| `lost` | 1× NVIDIA A40 | SECURE | 0.8 | 60 | 0.0133 |" in summary
    assert "| `b` | 1× ? | - | 0.8 | 30 | 0.0100 (billed) |" in summary


def test_the_summary_of_a_local_job_says_it_cost_nothing_and_why():
    assert f"- cost: none — {LOCAL_NOTE}" in summary_markdown(record(local_cost()))


def test_a_cache_hit_summary_says_the_cost_was_the_original_runs():
    summary = summary_markdown(record(job_cost([charge("a")])), cached=True)
    assert (
        "- cost: $0.8000 over 1 pod (1.00 GPU-h) (the original run; this cache hit cost nothing)" in summary
    )


def test_a_record_without_a_cost_shows_no_cost_line():
    assert "cost" not in summary_markdown(record(None))
