"""Open pod charges, the pure pieces: what an open charge counts (up to its reader's now, never past the
pod's bound), how a pod found gone is closed (RunPod's bill, else its run's end, else its bound), which
version of a pod's charge the ledger reads, and how a job's cost treats a charge still open. The
end-to-end scenario (a worker SIGKILLed mid-run) is ``test_runpod_open_charges.py``."""

from __future__ import annotations

import datetime as dt
import uuid
from types import SimpleNamespace

import pytest
from prefect.client.schemas.objects import Artifact

from infra.runpod.gpu_choice import GpuCandidate
from infra.worker.open_charges import WINDOW_SLACK_HOURS, window_start
from infra.worker.pod_charge import (
    close_charge,
    close_gone_charge,
    describe_charge,
    longest_pod_hours,
    pod_bound,
    pod_charge,
)
from jobs.costs import PodCharge, cost_line, cost_report, job_cost
from tasks.cost_ledger import charge_artifact, read_charges, read_open_charges
from tasks.job_cost import reckon_job_cost

DAY = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0
A40 = GpuCandidate(
    gpu_type_id="NVIDIA A40", cloud_type="SECURE", memory_gb=48, price_per_gpu_hour=0.4, gpu_count=2
)  # $0.80 an hour for the pod


def opened(
    pod_id: str = "pod1", *, bound_hours: float | None = 24, price: float | None = 0.8, **fields
) -> PodCharge:
    """An open charge of a pod created at DAY, as the worker writes it at launch."""
    values = {
        "pod_id": pod_id,
        "flow_run_id": str(uuid.uuid4()),
        "job_id": "ftjob-1",
        "work_pool": "gpu",
        "price_per_hour": price,
        "created_at": DAY,
        "ended_at": None,
        "bound_at": None if bound_hours is None else DAY + bound_hours * HOUR,
        **fields,
    }
    return PodCharge(**values)


# -- what an open charge counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "bound_hours", "seconds"),
    [
        (DAY + 1800, 24, 1800),  # half an hour so far
        (DAY + 30 * HOUR, 24, 24 * HOUR),  # never past the pod's bound
        (DAY + 30 * HOUR, None, 30 * HOUR),  # no bound known: up to now
        (DAY - 60, 24, 0),  # a reader's clock behind the pod's creation: nothing, not a negative figure
    ],
)
def test_an_open_charge_counts_up_to_its_readers_now_capped_at_the_pods_bound(now, bound_hours, seconds):
    charge = opened(bound_hours=bound_hours).at(now)

    assert charge.is_open and charge.seconds == seconds
    assert charge.usd == pytest.approx(0.8 * seconds / HOUR)


def test_an_open_charge_nobody_dated_counts_nothing_and_a_closed_one_ignores_the_readers_now():
    assert opened().seconds == 0 and opened().usd == 0
    closed = close_charge(opened(), ended_at=DAY + 600, ended_by="worker", billed_usd=None)
    assert closed.at(DAY + 10 * HOUR) == closed and closed.seconds == 600 and not closed.is_open


@pytest.mark.parametrize(
    ("max_run_hours", "ttl_hours", "bound"),
    [
        (None, 24, DAY + 24 * HOUR),
        (2, 24, DAY + 2 * HOUR),
        (48, 24, DAY + 48 * HOUR),
        (None, 0.5, DAY + 1800),
    ],
)
def test_a_pods_bound_is_its_max_run_hours_else_its_ttl(max_run_hours, ttl_hours, bound):
    assert pod_bound(DAY, max_run_hours=max_run_hours, ttl_hours=ttl_hours) == bound


def test_the_worker_writes_an_open_charge_at_launch_and_closes_it_with_the_bill():
    common = {
        "pod_id": "abc",
        "flow_run_id": str(uuid.uuid4()),
        "tags": ["ow-job:ftjob-9", "ow-type:finetune"],
        "parameters": {"params": {"model": "m"}},
        "work_pool": "gpu",
        "candidate": A40,
        "created_at": DAY,
        "bound_at": DAY + 24 * HOUR,
    }
    at_launch = pod_charge(**common, ended_at=None, billed_usd=0.5)
    at_end = pod_charge(**common, ended_at=DAY + 90, billed_usd=0.02)

    assert at_launch.is_open and at_launch.ended_by is None and at_launch.billed_usd is None
    assert (at_launch.job_id, at_launch.model, at_launch.price_per_hour) == (
        "ftjob-9",
        "m",
        pytest.approx(0.8),
    )
    assert describe_charge(at_launch.at(DAY + 90)) == "Pod abc has cost $0.0200 so far (90 s at $0.8/h)"
    assert (at_end.ended_at, at_end.ended_by, at_end.billed_usd, at_end.bound_at) == (
        DAY + 90,
        "worker",
        0.02,
        DAY + 24 * HOUR,
    )


# -- closing the charge of a pod found gone --------------------------------------------------------------


@pytest.mark.parametrize(
    ("billed", "run_end", "now", "price", "ended_at", "ended_by", "usd"),
    [
        # RunPod billed $0.40 at $0.80/h: the pod stopped billing half an hour after its creation.
        (0.4, DAY + 600, DAY + 2 * HOUR, 0.8, DAY + 1800, "billing", 0.4),
        # No bill (or one that has not caught up: $0): the run's end, when the pod's entrypoint ended it.
        (None, DAY + 600, DAY + 2 * HOUR, 0.8, DAY + 600, "flow_run_end", pytest.approx(0.8 * 600 / HOUR)),
        (0.0, DAY + 600, DAY + 2 * HOUR, 0.8, DAY + 600, "flow_run_end", pytest.approx(0.8 * 600 / HOUR)),
        # No bill, no run end (a pod lost under a run nobody ended), past the bound: the bound.
        (None, None, DAY + 25 * HOUR, 0.8, DAY + 24 * HOUR, "bound", pytest.approx(0.8 * 24)),
        # A bill with no price to read time from: the bill is the cost, the run's end the time.
        (0.3, DAY + 600, DAY + 2 * HOUR, None, DAY + 600, "flow_run_end", 0.3),
        # An end never lies in the closer's future (a bill that counts more than GPU time).
        (4.0, None, DAY + 2 * HOUR, 0.8, DAY + 2 * HOUR, "billing", 4.0),
    ],
)
def test_a_pod_found_gone_is_closed_at_the_best_end_known(
    billed, run_end, now, price, ended_at, ended_by, usd
):
    closed = close_gone_charge(opened(price=price), billed_usd=billed, flow_run_end=run_end, now=now)

    assert closed is not None and not closed.is_open
    assert (closed.ended_at, closed.ended_by, closed.usd) == (pytest.approx(ended_at), ended_by, usd)


def test_a_pod_gone_under_a_run_still_going_with_no_bill_stays_open_until_its_bound():
    charge = opened()
    assert close_gone_charge(charge, billed_usd=None, flow_run_end=None, now=DAY + HOUR) is None
    assert close_gone_charge(charge, billed_usd=0.0, flow_run_end=None, now=DAY + HOUR) is None
    assert (
        close_gone_charge(opened(bound_hours=None), billed_usd=None, flow_run_end=None, now=DAY + 99 * HOUR)
        is None
    )


def test_the_sweep_closes_a_pod_it_terminated_at_its_terminate_with_the_bill():
    closed = close_charge(opened(), ended_at=DAY + 3 * HOUR, ended_by="sweep", billed_usd=2.5)
    assert (closed.seconds, closed.ended_by, closed.usd) == (3 * HOUR, "sweep", 2.5)


@pytest.mark.parametrize(
    ("defaults", "deployments", "hours"),
    [
        ({}, [], 24),  # the TTL default
        ({"ttl_hours": 6}, [], 6),
        ({"ttl_hours": 6, "max_run_hours": 2}, [], 2),
        ({"ttl_hours": 6}, [{"ttl_hours": 48}, {"max_run_hours": 1}], 48),
        ({"ttl_hours": 6}, [{"max_run_hours": "{{ not a number }}"}], 6),
        ({"ttl_hours": 6}, [{"max_run_hours": 1e9}], 720),
    ],
)
def test_the_search_for_open_charges_is_bounded_by_the_pools_longest_pod(defaults, deployments, hours):
    template = {"variables": {"properties": {name: {"default": value} for name, value in defaults.items()}}}
    assert longest_pod_hours(template, deployments) == hours
    now = dt.datetime.fromtimestamp(DAY, dt.UTC)
    assert window_start(hours, now) == now - dt.timedelta(hours=hours + WINDOW_SLACK_HOURS)


# -- the ledger: the newest version of a pod's charge ----------------------------------------------------


class LedgerClient:
    """Prefect's artifact reads over a list of artifacts, newest first, as the API sorts them."""

    def __init__(self, charges: list[PodCharge]):
        self.artifacts = []
        for index, charge in enumerate(charges):  # oldest first
            created = charge_artifact(charge)
            self.artifacts.insert(
                0,
                Artifact(
                    key=created.key,
                    type=created.type,
                    data=created.data,
                    flow_run_id=created.flow_run_id,
                    created=dt.datetime.fromtimestamp(DAY + index, dt.UTC),
                ),
            )

    def read_artifacts(self, *, artifact_filter, sort, limit, offset):
        wanted = artifact_filter.flow_run_id.any_ if artifact_filter.flow_run_id else None
        matching = [a for a in self.artifacts if wanted is None or a.flow_run_id in wanted]
        return matching[offset : offset + limit]


def test_the_ledger_reads_the_newest_version_of_a_pods_charge_and_dates_open_ones():
    launched = opened("a")
    finished = close_charge(launched, ended_at=DAY + 600, ended_by="worker", billed_usd=None)
    running = opened("b", work_pool="gpu")
    elsewhere = opened("c", work_pool="other-pool")
    client = LedgerClient([launched, running, finished, elsewhere])

    by_pod = {charge.pod_id: charge for charge in read_charges(client, now=DAY + 1200)}

    assert by_pod["a"] == finished
    assert by_pod["b"].is_open and by_pod["b"].seconds == 1200 and by_pod["b"].as_of == DAY + 1200
    since = dt.datetime.fromtimestamp(DAY - 60, dt.UTC)
    assert [c.pod_id for c in read_open_charges(client, work_pool="gpu", since=since, now=DAY + 1200)] == [
        "b"
    ]


def test_an_open_charge_reads_back_from_its_artifact_as_open():
    artifact = charge_artifact(opened("Pod_Y").at(DAY + 60))
    assert "so far (open: the pod may still run)" in artifact.description
    (read,) = read_charges(LedgerClient([opened("Pod_Y")]), now=DAY + 60)
    assert read.is_open and read.ended_at is None and read.seconds == 60


# -- a job's cost ----------------------------------------------------------------------------------------


def test_a_job_whose_pod_is_still_open_costs_what_it_cost_so_far_and_says_so():
    done = close_charge(opened("done"), ended_at=DAY + 1800, ended_by="worker", billed_usd=None)
    cost = job_cost([done, opened("going").at(DAY + 900)])

    assert cost.usd == pytest.approx(0.4 + 0.2) and cost.provisional and not job_cost([done]).provisional
    assert cost.note == "provisional: pod(s) going not known to have ended, counted so far"
    assert cost_line(cost).endswith("; provisional: pod(s) going not known to have ended, counted so far")


def test_reports_count_an_open_charge_up_to_their_readers_now():
    (row,) = cost_report([opened("a").at(DAY + HOUR), opened("b").at(DAY + 2 * HOUR)], "job")
    assert (row.usd, row.pods, row.gpu_hours) == (pytest.approx(0.8 * 3), 2, 3.0)


class JobLedgerClient(LedgerClient):
    """Enough of Prefect for :func:`reckon_job_cost`: a runpod pool, the job's one attempt, its charges."""

    def __init__(self, charges_by_read: list[list[PodCharge]], attempt):
        super().__init__([])
        self.reads = charges_by_read
        self.attempt = attempt

    def read_work_pool(self, name):
        return SimpleNamespace(type="runpod", base_job_template={})

    def read_deployment_by_name(self, name):
        return SimpleNamespace(id=uuid.uuid4(), job_variables={})

    def read_flow_runs(self, **filters):
        current = self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]
        self.artifacts = LedgerClient(current).artifacts
        return [self.attempt]


def reckon(charges_by_read, attempt, clock_values):
    client = JobLedgerClient(charges_by_read, attempt)
    clock = iter(clock_values)
    return reckon_job_cost(
        client,
        "ftjob-1",
        deployment_name="gpu-stage/finetune",
        stage=attempt,
        job_variables={},
        clock=lambda: next(clock),
        sleep=lambda seconds: None,
    )


def test_the_control_tier_waits_for_an_open_charge_to_close(monkeypatch):
    import logging

    monkeypatch.setattr("tasks.job_cost.get_run_logger", lambda: logging.getLogger("test"))
    attempt = SimpleNamespace(id=uuid.uuid4(), work_pool_name="gpu", infrastructure_pid="pod1")
    launched = opened("pod1", flow_run_id=str(attempt.id))
    finished = close_charge(launched, ended_at=DAY + 600, ended_by="worker", billed_usd=0.13)

    cost = reckon([[launched], [launched, finished]], attempt, [0, 1, 2, 3])

    assert (cost.usd, cost.note, cost.provisional) == (0.13, "", False)


def test_the_control_tier_reports_a_charge_still_open_after_its_wait_as_provisional():
    attempt = SimpleNamespace(id=uuid.uuid4(), work_pool_name="gpu", infrastructure_pid="pod1")
    a_minute_ago = dt.datetime.now(dt.UTC).timestamp() - 60
    launched = opened("pod1", bound_hours=None, flow_run_id=str(attempt.id), created_at=a_minute_ago)

    cost = reckon([[launched]], attempt, [0, 10**9])

    assert (
        cost.provisional and "provisional: pod(s) pod1" in cost.note and "not yet accounted" not in cost.note
    )
    assert cost.pods[0].seconds == pytest.approx(60, abs=5) and cost.usd == pytest.approx(
        0.8 * 60 / HOUR, rel=0.1
    )
