"""`ow costs`, `ow budgets` and budgets in the control tier, end to end.

The first test runs on the session's embedded default (a process pool: nothing is charged). The others
share one module-scoped production shape with a Prefect server of its own: prefect.yaml deployed
unchanged, ``ow-gpu`` a ``runpod`` work pool launching into the RunPod emulator, a process worker for the
control tier. Charges are written the way the worker writes them (a table artifact on a real flow run).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.schemas.objects import StateType

from infra.local import stack as local_stack
from jobs.costs import GROUP_BY_CHOICES, PodCharge, group_key
from tests.fixtures.jobs import FAST_SFT
from tests.fixtures.runpod import RunPodProject, runpod_project_stack

OW = str(Path(sys.executable).parent / "ow")
SUBMITTER = "budget-tester"


def run_ow(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([OW, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def write_charge(charge: PodCharge) -> None:
    """Record a pod's charge as the runpod worker does: the ledger's own write path."""
    from prefect.client.orchestration import get_client

    from tasks.cost_ledger import charge_artifact

    with get_client(sync_client=True) as client:
        client.create_artifact(charge_artifact(charge))


@flow
def ledger_subject() -> None:
    """Never runs: a flow whose runs the charges of the report test are attached to."""


def new_flow_run_id() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(ledger_subject, name=f"charged-{uuid.uuid4().hex[:6]}").id)


# -- the embedded default ------------------------------------------------------------------------


def test_on_the_local_process_pool_ow_costs_says_nothing_is_charged(ow_stack):
    # A window no charge of the session falls in: on the process pool, the report says why it is empty.
    report = run_ow("costs", "--since", "1990-01-01", "--until", "1990-01-31")
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip() == "no GPU spend recorded: jobs on the local process pool cost nothing"
    set_budget = run_ow("budgets", "set", "local-cap", "--usd", "1", "--period", "day")
    try:
        assert set_budget.returncode == 0, set_budget.stderr
        assert "budgets are inert: the GPU stage runs on the local process pool" in set_budget.stdout
    finally:
        assert run_ow("budgets", "rm", "local-cap").returncode == 0


# -- the production shape ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def billed_project(prefect_server, conversations_path: Path, tmp_path_factory) -> Iterator[RunPodProject]:
    """The production shape, its client submitting as ``SUBMITTER``."""
    with runpod_project_stack(
        tmp_path_factory.mktemp("billed-project"), conversations_path, OW_SUBMITTER=SUBMITTER
    ) as project:
        yield project


def report_charges() -> list[PodCharge]:
    """Charges of January 2020 (so no pod of the other tests falls in the window) on real flow runs."""
    runs = [new_flow_run_id() for _ in range(3)]

    def make(pod: str, run: int, day: int, usd: float | None, **fields) -> PodCharge:
        created = dt.datetime(2020, 1, day, 10, tzinfo=dt.UTC).timestamp()
        return PodCharge(
            pod_id=pod, flow_run_id=runs[run], created_at=created, ended_at=created + 1800, billed_usd=usd, **fields
        )

    ft = {"job_type": "finetune", "deployment": "finetune/sft", "model": "org/llama-8b", "work_pool": "ow-gpu"}
    return [
        make("pod-a", 0, 5, 1.25, job_id="ftjob-a", submitter="ann", gpu_count=2, **ft),
        make("pod-b", 0, 5, 0.5, job_id="ftjob-a", submitter="ann", **ft),  # a recovery of the same job
        make("pod-c", 1, 6, 2.75, job_id="ftjob-c", submitter="bob", **ft),
        make(
            "pod-d", 2, 6, None, job_id="infjob-d", submitter="ann", price_per_hour=1.5,  # measured: 1.5/h × 0.5 h
            job_type="inference", deployment="inference/batch", model="org/qwen-7b", work_pool="ow-gpu",
        ),
        make("pod-e", 2, 31, 0.125),  # nothing known but the bill: grouped under "-"
    ]


def parse_table(stdout: str) -> tuple[list[str], dict[str, list[str]], list[str]]:
    lines = stdout.splitlines()
    header, *rows, total = lines
    return header.split("  "), {row.split()[0]: row.split()[1:] for row in rows}, total.split()


def test_ow_costs_sums_match_the_ledger_by_every_dimension_as_table_and_csv(billed_project):
    charges = report_charges()
    for charge in charges:
        write_charge(charge)
    window = ("--since", "2020-01-01", "--until", "2020-01-31")
    total_usd = sum(charge.usd for charge in charges)
    assert total_usd == pytest.approx(5.375)

    for by in GROUP_BY_CHOICES:
        expected: dict[str, list[PodCharge]] = {}
        for charge in charges:
            expected.setdefault(group_key(charge, by), []).append(charge)

        table = run_ow("costs", "--by", by, *window)
        assert table.returncode == 0, table.stderr
        header, rows, total = parse_table(table.stdout)
        assert [name.strip() for name in header if name.strip()] == [by.upper().replace("_", " "), "USD", "PODS", "JOBS", "GPU HOURS"]
        assert set(rows) == set(expected), (by, table.stdout)
        for group, members in expected.items():
            usd, pods, jobs, _ = rows[group]
            assert float(usd) == pytest.approx(sum(charge.usd for charge in members), abs=1e-4), (by, group)
            assert int(pods) == len(members)
            assert int(jobs) == len({charge.job_id for charge in members if charge.job_id})
        assert total[0] == "TOTAL" and float(total[1]) == pytest.approx(total_usd, abs=1e-4)
        assert sum(float(row[0]) for row in rows.values()) == pytest.approx(float(total[1]), abs=1e-3)
        assert int(total[2]) == len(charges) and int(total[3]) == 3  # pod-e names no job

        as_csv = run_ow("costs", "--by", by, "--csv", *window)
        assert as_csv.returncode == 0, as_csv.stderr
        parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        assert {row[by]: float(row["usd"]) for row in parsed} == {
            group: pytest.approx(sum(charge.usd for charge in members)) for group, members in expected.items()
        }
        assert sum(int(row["pods"]) for row in parsed) == len(charges)

    # Per day: the pod of 5 January counts on that day, 2× GPUs for half an hour is one GPU-hour.
    by_day = {row.group: row for row in _client().costs.report(by="day", since="2020-01-01", until="2020-01-31")}
    assert sorted(by_day) == ["2020-01-05", "2020-01-06", "2020-01-31"]
    assert (by_day["2020-01-05"].usd, by_day["2020-01-05"].gpu_hours) == (1.75, 1.5)
    assert by_day["2020-01-06"].usd == pytest.approx(3.5)
    # --until is inclusive of its day, --since of its own; outside the window nothing is counted.
    assert {row.group for row in _client().costs.report(by="day", since="2020-01-06", until="2020-01-06")} == {"2020-01-06"}

    empty = run_ow("costs", "--since", "1990-01-01", "--until", "1990-01-31")
    assert empty.stdout.strip() == "no GPU spend recorded since 1990-01-01 until 1990-01-31"


def test_bad_report_options_are_refused_in_one_line_naming_the_option(billed_project):
    bad_since = run_ow("costs", "--since", "last week")
    assert bad_since.returncode == 1
    assert bad_since.stderr.strip() == (
        "ow: since 'last week' is not a date: give YYYY-MM-DD (UTC) or a number of days back such as 7d"
    )
    bad_by = run_ow("costs", "--by", "colour")
    assert bad_by.returncode == 2 and "invalid choice: 'colour'" in bad_by.stderr
    bad_budget = run_ow("budgets", "set", "x", "--usd", "-3", "--period", "day")
    assert bad_budget.returncode == 1
    assert bad_budget.stderr.strip() == "ow: usd: Input should be greater than or equal to 0"


def test_a_job_over_its_budget_is_refused_before_any_pod_and_a_cache_hit_is_still_served(
    billed_project, tiny_model_dir
):
    from prefect.variables import Variable

    stack, emulator = billed_project.stack, billed_project.emulator
    ow = _client()
    params = {"model": str(tiny_model_dir), "training_file": billed_project.training_file, **FAST_SFT}

    # A costly job: it runs on a pod while no budget is set.
    first = ow.fine_tuning.create(**params).wait(timeout=600)
    assert first.status == "completed", first.logs()[-3000:]
    [stage] = stack.gpu_stage_runs(first.id)
    pods = len(emulator.all_pods)
    assert pods == 1

    # Today this submitter spent $5 (a charge on that job's GPU stage), and may spend $1 a day.
    now = time.time()
    write_charge(
        PodCharge(
            pod_id=f"spent-{uuid.uuid4().hex[:8]}", flow_run_id=str(stage.id), job_id=first.id, job_type="finetune",
            submitter=SUBMITTER, work_pool=local_stack.GPU_POOL, created_at=now - 120, ended_at=now - 60, billed_usd=5.0,
        )
    )
    assert run_ow("budgets", "set", "everyone", "--usd", "1000", "--period", "month").returncode == 0
    assert run_ow("budgets", "set", "tester-daily", "--usd", "1", "--period", "day", "--scope", f"submitter:{SUBMITTER}").returncode == 0
    assert [budget["name"] for budget in Variable.get("ow_budgets")] == ["everyone", "tester-daily"]
    listed = run_ow("budgets")
    assert listed.returncode == 0, listed.stderr
    tester_row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("tester-daily"))
    assert tester_row[1:4] == [f"submitter:{SUBMITTER}", "day", "1.00"] and float(tester_row[5]) == 0

    # A new job (another seed) is refused by the control tier: no GPU stage, no pod.
    refused = ow.fine_tuning.create(**params, seed=4242).wait(timeout=300)
    assert refused.status == "failed"
    [control] = [run for run in refused.flow_runs if not run.name.startswith("ftjob")]
    message = control.state.message or ""
    for part in (
        "BudgetExceeded",
        "refused by budget 'tester-daily' (submitter:budget-tester, $1.00 per day)",
        "spent this day",
        "$0.00 left",
        "estimated cost is $",
        "1x NVIDIA A40 at $0.40/h",  # the cheapest of the pool's GPU types that fits, at its list price
    ):
        assert part in message, message
    assert stack.gpu_stage_runs(refused.id) == []
    assert len(emulator.all_pods) == pods

    # With max_cost_usd the user's figure is the estimate, and it is refused just the same.
    capped = ow.fine_tuning.create(**params, seed=4243, max_cost_usd=0.5).wait(timeout=300)
    assert capped.status == "failed"
    [capped_control] = [run for run in capped.flow_runs if not run.name.startswith("ftjob")]
    assert "estimated cost is $0.50 (max_cost_usd $0.50, given with the job)" in capped_control.state.message
    assert stack.gpu_stage_runs(capped.id) == [] and len(emulator.all_pods) == pods

    # The costly job again: a cache hit costs nothing and is served whatever the budget.
    again = stack.run("finetune/sft", params, timeout=300)
    assert again.state.type == StateType.COMPLETED, again.state.message
    assert stack.job_id_of(again) == first.id
    assert len(emulator.all_pods) == pods
    assert len(stack.gpu_stage_runs(first.id)) == 1

    # `ow ls` shows what each job cost: the trained one its pod, the refused ones nothing yet.
    listing = run_ow("ls", "--limit", "50")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[-1] == "COST"
    cost_of = {line.split()[0]: line.split()[-1] for line in listing.stdout.splitlines()[1:]}
    assert cost_of[refused.id] == "-"
    record_cost = stack.store.read_json(f"jobs/{first.id}/result.json")["cost"]  # the pod's charge, summed
    assert record_cost["billed"] and record_cost["usd"] > 0
    assert cost_of[first.id] == f"${record_cost['usd']:.4f}"
    assert first.refresh().cost.usd == record_cost["usd"]


def _client():
    from client import OpenWeights

    return OpenWeights()


def test_jobs_submitted_together_are_admitted_only_as_far_as_the_budget_goes(billed_project, tiny_model_dir):
    """A sweep submitted at once: each job holds its estimate from admission until it ends, and
    admissions are one at a time, so three $0.40 jobs against $1.00 left start two pods, not three."""
    from prefect.variables import Variable

    stack, emulator = billed_project.stack, billed_project.emulator
    ow = _client()
    Variable.set("ow_budgets", [{"name": "sweep-day", "period": "day", "usd": 1_000_000}], overwrite=True)
    [status] = ow.costs.budgets()
    spent_today = status.spent + status.held  # what earlier tests of the module left on today's books
    Variable.set("ow_budgets", [{"name": "sweep-day", "period": "day", "usd": round(spent_today + 1.0, 6)}], overwrite=True)
    pods_before = len(emulator.all_pods)

    params = {"model": str(tiny_model_dir), "training_file": billed_project.training_file, **FAST_SFT, "epochs": 6}
    # The admitted jobs' pods stay provisioning until the third job is decided, so all three are admitted
    # while the first two hold their estimates, however slowly this machine runs the control flows.
    emulator.hold_provisioning()
    try:
        jobs = [ow.fine_tuning.create(**params, seed=5100 + index, max_cost_usd=0.4) for index in range(3)]
        # While the admitted ones run, `ow budgets` shows what they hold: one estimate as soon as the first
        # is admitted, two once the second is, never three.
        deadline, shown = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            listed = run_ow("budgets")
            row = next((line.split() for line in listed.stdout.splitlines() if line.startswith("sweep-day")), None)
            held = float(row[6]) if row else 0.0
            shown.append(held)
            assert held <= 0.8 + 0.05, listed.stdout
            one_refused = any(job.refresh().status == "failed" for job in jobs)
            if held == pytest.approx(0.8, abs=0.05) and one_refused:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"two jobs were never seen holding their estimates with the third refused: held {shown}")
        emulator.wait_until(lambda: len(emulator.all_pods) == pods_before + 2, 120, "the admitted jobs' pods")
    finally:
        emulator.hold_provisioning(False)

    finished = [job.wait(timeout=900) for job in jobs]
    statuses = sorted(job.status for job in finished)
    assert statuses == ["completed", "completed", "failed"], [(job.id, job.status) for job in finished]
    [refused] = [job for job in finished if job.status == "failed"]
    [control] = [run for run in refused.flow_runs if not run.name.startswith("ftjob")]
    message = control.state.message or ""
    assert "refused by budget 'sweep-day'" in message and "held by jobs still running" in message, message
    assert stack.gpu_stage_runs(refused.id) == []
    assert len(emulator.all_pods) == pods_before + 2
    # Once they ended, they hold nothing: their pods' charges count instead.
    [after] = ow.costs.budgets()
    assert after.held == 0 and after.spent > status.spent
