"""Budgets and cost estimates, the pure parts: the variable's entries, calendar periods, spend, the
decision, a job's estimated run time and the cheapest pod that fits."""

from __future__ import annotations

import datetime as dt

import pytest

from client.costs import parse_when
from jobs.budgets import (
    Budget,
    BudgetConfigError,
    BudgetHold,
    budget_status,
    decision,
    job_scopes,
    parse_budgets,
    period_window,
    spent,
)
from jobs.cost_estimate import (
    STARTUP_HOURS,
    TRAIN_TOKENS_PER_SECOND,
    CostEstimate,
    InputSize,
    PoolPricing,
    cheapest_fitting_pod,
    estimate_job_cost,
    estimated_run_time,
)
from jobs.costs import PodCharge

NOW = dt.datetime(2025, 6, 18, 15, 30, tzinfo=dt.UTC)  # a Wednesday


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def charge(pod_id: str, created: str, usd: float, *, pool: str = "ow-gpu", submitter: str | None = "ann") -> PodCharge:
    start = at(created)
    return PodCharge(
        pod_id=pod_id,
        flow_run_id="00000000-0000-0000-0000-000000000001",
        work_pool=pool,
        submitter=submitter,
        created_at=start,
        ended_at=start + 600,
        billed_usd=usd,
    )


# -- the variable --------------------------------------------------------------------------------


def test_budgets_read_from_a_json_list_or_its_text():
    entries = [
        {"name": "all", "period": "month", "usd": 500},
        {"name": "ann", "scope": "submitter:ann", "period": "day", "usd": 20.5},
    ]
    budgets = parse_budgets(entries)
    assert [(b.name, b.scope, b.period, b.usd) for b in budgets] == [
        ("all", "global", "month", 500.0),
        ("ann", "submitter:ann", "day", 20.5),
    ]
    assert parse_budgets('[{"name": "all", "period": "week", "usd": 1}]')[0].period == "week"
    assert parse_budgets(None) == [] and parse_budgets([]) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "Prefect variable ow_budgets is not JSON"),
        ({"name": "all"}, "Prefect variable ow_budgets must be a JSON list of budgets"),
        ([{"name": "all", "period": "year", "usd": 5}], "ow_budgets, entry 0 ('all'): period: Input should be 'day', 'week' or 'month'"),
        ([{"name": "a", "period": "day", "usd": 1}, {"name": "b", "period": "day", "usd": -1}], "entry 1 ('b'): usd: Input should be greater than or equal to 0"),
        ([{"name": "a", "period": "day", "usd": 1, "scope": "team:x"}], "entry 0 ('a'): scope: 'team:x' must be \"global\", \"pool:<work pool name>\""),
        ([{"name": "a", "period": "day", "usd": 1, "scope": "pool:"}], "entry 0 ('a'): scope:"),
        ([{"period": "day", "usd": 1}], "entry 0: name: Field required"),
        ([{"name": "a", "period": "day", "usd": 1, "dollars": 3}], "entry 0 ('a'): dollars: Extra inputs are not permitted"),
        ([{"name": "a", "period": "day", "usd": 1}, {"name": "a", "period": "week", "usd": 2}], "entry 1 ('a'): name: 'a' is used by an earlier entry"),
        (["a"], "entry 0: entry: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_budgets_variable_names_the_variable_entry_and_field(value, message):
    with pytest.raises(BudgetConfigError) as raised:
        parse_budgets(value)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# -- periods and spend ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2025-06-18T15:30", "2025-06-18T00:00", "2025-06-19T00:00"),
        ("week", "2025-06-18T15:30", "2025-06-16T00:00", "2025-06-23T00:00"),  # Monday to Monday
        ("week", "2025-06-16T00:00", "2025-06-16T00:00", "2025-06-23T00:00"),
        ("month", "2025-06-18T15:30", "2025-06-01T00:00", "2025-07-01T00:00"),
        ("month", "2025-12-31T23:59", "2025-12-01T00:00", "2026-01-01T00:00"),
    ],
)
def test_periods_are_calendar_windows_in_utc(period, now, start, end):
    window = period_window(period, dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC))
    assert [moment.timestamp() for moment in window] == [at(start), at(end)]


def test_periods_use_utc_whatever_the_clock_zone():
    tokyo = dt.timezone(dt.timedelta(hours=9))
    start, _ = period_window("day", dt.datetime(2025, 6, 19, 2, 0, tzinfo=tokyo))  # 17:00 UTC on the 18th
    assert start.timestamp() == at("2025-06-18T00:00")


def test_spend_counts_the_charges_of_the_scope_created_in_the_period():
    charges = [
        charge("p1", "2025-06-18T01:00", 3.0),
        charge("p2", "2025-06-17T23:59", 4.0),  # yesterday
        charge("p3", "2025-06-16T00:00", 5.0, submitter="bob"),  # this week, not ann's
        charge("p4", "2025-06-18T09:00", 7.0, pool="other-gpu"),
        charge("p5", "2025-05-31T12:00", 100.0),  # last month
    ]
    assert spent(charges, Budget(name="d", period="day", usd=10), NOW) == 10.0
    assert spent(charges, Budget(name="w", period="week", usd=10), NOW) == 19.0
    assert spent(charges, Budget(name="m", period="month", usd=10), NOW) == 19.0
    assert spent(charges, Budget(name="p", scope="pool:ow-gpu", period="week", usd=10), NOW) == 12.0
    assert spent(charges, Budget(name="a", scope="submitter:ann", period="week", usd=10), NOW) == 14.0
    assert spent(charges, Budget(name="b", scope="submitter:bob", period="day", usd=10), NOW) == 0.0


def test_what_is_left_is_never_below_zero():
    [status] = budget_status([Budget(name="d", period="day", usd=2)], [charge("p1", "2025-06-18T01:00", 3.0)], NOW)
    assert (status.spent, status.left) == (3.0, 0.0)


# -- the decision --------------------------------------------------------------------------------

ESTIMATE = CostEstimate(usd=4.0, basis="1x NVIDIA A40 at $0.40/h × 10.00 h")


def test_a_job_within_every_budget_covering_it_is_allowed():
    budgets = [Budget(name="all", period="day", usd=20), Budget(name="bob", scope="submitter:bob", period="day", usd=0)]
    charges = [charge("p1", "2025-06-18T01:00", 15.0)]
    assert decision(budgets, charges, ESTIMATE, job_scopes("ow-gpu", "ann"), NOW) is None


def test_a_job_over_what_is_left_is_refused_naming_budget_period_spent_left_and_estimate():
    budgets = [
        Budget(name="all", period="month", usd=1000),
        Budget(name="ann-daily", scope="submitter:ann", period="day", usd=10),
    ]
    charges = [charge("p1", "2025-06-18T01:00", 7.5)]
    message = decision(budgets, charges, ESTIMATE, job_scopes("ow-gpu", "ann"), NOW)
    assert message is not None
    for part in (
        "budget 'ann-daily' (submitter:ann, $10.00 per day)",
        "$7.50 spent this day",
        "$2.50 left",
        "estimated cost is $4.00 (1x NVIDIA A40 at $0.40/h × 10.00 h)",
        "ow_budgets",
    ):
        assert part in message, message


def hold(job_id: str, usd: float, admitted: str = "2025-06-18T09:00", *, submitter: str | None = "ann") -> BudgetHold:
    return BudgetHold(job_id=job_id, usd=usd, work_pool="ow-gpu", submitter=submitter, created_at=at(admitted))


def test_jobs_admitted_and_still_running_hold_their_estimate_so_a_sweep_cannot_spend_the_same_money_twice():
    budgets = [Budget(name="ann-daily", scope="submitter:ann", period="day", usd=10)]
    scopes = job_scopes("ow-gpu", "ann")
    # Nothing charged yet: two $4 jobs were admitted a moment ago and are running; a third does not fit.
    running = [hold("ftjob-a", 4.0), hold("ftjob-b", 4.0)]
    message = decision(budgets, [], ESTIMATE, scopes, NOW, running)
    assert message is not None
    assert "$0.00 spent this day and $8.00 held by jobs still running" in message and "$2.00 left" in message
    # Without the holds (the old check) it would have been admitted.
    assert decision(budgets, [], ESTIMATE, scopes, NOW) is None


def test_a_hold_shrinks_by_what_its_job_was_charged_and_counts_once_per_job():
    budgets = [Budget(name="ann-daily", scope="submitter:ann", period="day", usd=10)]
    scopes = job_scopes("ow-gpu", "ann")
    spent_a = charge("p1", "2025-06-18T09:01", 3.0).model_copy(update={"job_id": "ftjob-a"})
    # Identical submissions admit one job twice: it holds $4 once; $3 of it is charged already.
    holds = [hold("ftjob-a", 4.0), hold("ftjob-a", 4.0)]
    [status] = budget_status(budgets, [spent_a], NOW, holds)
    assert (status.spent, status.held, status.left) == (3.0, 1.0, 6.0)
    assert decision(budgets, [spent_a], ESTIMATE, scopes, NOW, holds) is None
    # A job that overran its estimate holds nothing more; its charges count in full.
    overran = spent_a.model_copy(update={"billed_usd": 9.0})
    [status] = budget_status(budgets, [overran], NOW, holds)
    assert (status.spent, status.held, status.left) == (9.0, 0.0, 1.0)


def test_holds_count_only_in_their_scope_and_period():
    budgets = [Budget(name="ann-daily", scope="submitter:ann", period="day", usd=10)]
    holds = [hold("ftjob-bob", 9.0, submitter="bob"), hold("ftjob-old", 9.0, "2025-06-17T23:00")]
    [status] = budget_status(budgets, [], NOW, holds)
    assert status.held == 0.0 and status.left == 10.0


def test_a_pool_budget_covers_only_jobs_on_that_pool():
    budgets = [Budget(name="gpu", scope="pool:ow-gpu", period="week", usd=1)]
    assert decision(budgets, [], ESTIMATE, job_scopes("ow-gpu", None), NOW) is not None
    assert decision(budgets, [], ESTIMATE, job_scopes("cheap-gpu", None), NOW) is None


# -- the estimate --------------------------------------------------------------------------------

FINETUNE = {"max_seq_length": 2048, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "epochs": 3}


@pytest.mark.parametrize(
    ("job_type", "params", "inputs", "hours"),
    [
        # 1,000 rows × 800 bytes = 200 tokens a row; 3 epochs: 600,000 tokens at 2,000/s = 300 s
        ("finetune", FINETUNE, {"training_file": InputSize(rows=1000, bytes=800_000)}, STARTUP_HOURS + 300 / 3600),
        # max_steps: 100 steps × 16 examples × 200 tokens = 320,000 tokens = 160 s
        ("finetune", {**FINETUNE, "max_steps": 100}, {"training_file": InputSize(rows=1000, bytes=800_000)}, STARTUP_HOURS + 160 / 3600),
        # long rows are cut at max_seq_length: 1 row × 10,000 tokens → 128 tokens
        ("finetune", {**FINETUNE, "epochs": 1, "max_seq_length": 128}, {"training_file": InputSize(rows=1, bytes=40_000)}, STARTUP_HOURS + 128 / TRAIN_TOKENS_PER_SECOND / 3600),
        # 100 prompts × 2 completions × 600 tokens = 120,000 tokens at 1,000/s = 120 s
        ("inference", {"max_tokens": 600, "n_completions_per_prompt": 2}, {"input_file": InputSize(rows=100, bytes=1)}, STARTUP_HOURS + 120 / 3600),
        # 50 questions × 2 models × 100 tokens = 10 s
        ("eval-mmlu-pro", {"max_tokens": 100, "limit": 50, "lora_adapters": ["a"], "include_base_model": True}, {}, STARTUP_HOURS + 10 / 3600),
        ("eval-mmlu-pro", {"max_tokens": 100, "limit": None}, {"dataset_file": InputSize(rows=36, bytes=1)}, STARTUP_HOURS + 3.6 / 3600),
        ("api", {"idle_timeout_seconds": 900}, {}, STARTUP_HOURS + 0.25),
        ("custom", {"entrypoint": ["python", "x.py"]}, {}, STARTUP_HOURS),
        ("eval-inspect", {"limit": None}, {}, STARTUP_HOURS),
    ],
)
def test_run_time_is_start_up_plus_the_work_at_the_assumed_throughput(job_type, params, inputs, hours):
    assert estimated_run_time(job_type, params, inputs).hours == pytest.approx(hours)


def test_an_unbounded_job_says_its_estimate_is_the_start_up_only():
    assert "not known in advance" in estimated_run_time("custom", {}, {}).basis


POOL = PoolPricing(gpu_types=["NVIDIA RTX A4500", "NVIDIA A40", "NVIDIA H100 80GB HBM3"], gpu_count=1)


@pytest.mark.parametrize(
    ("pricing", "min_vram_gb", "allowed", "hardware", "price"),
    [
        (POOL, 16, (), "1x NVIDIA RTX A4500", 0.25),  # the cheapest that fits
        (POOL, 40, (), "1x NVIDIA A40", 0.40),  # the A4500 has 20 GB
        (POOL, 60, (), "1x NVIDIA H100 80GB HBM3", 2.69),
        (POOL, 200, (), None, None),  # nothing fits
        (POOL.model_copy(update={"gpu_count": 2}), 60, (), "2x NVIDIA A40", 0.80),  # 30 GB a GPU
        (POOL.model_copy(update={"gpu_prices": {"NVIDIA A40": 0.1}}), 16, (), "1x NVIDIA A40", 0.1),  # the pool's price
        (POOL, 16, ("2x NVIDIA H200",), "2x NVIDIA H200", 7.18),  # the job's allowed_hardware
        (PoolPricing(gpu_types=["NVIDIA B300 Ultra"]), 16, (), None, None),  # no price known
        (PoolPricing(gpu_types=["NVIDIA B300 Ultra"], gpu_prices={"NVIDIA B300 Ultra": 6.0}), 16, (), "1x NVIDIA B300 Ultra", 6.0),
    ],
)
def test_the_price_is_that_of_the_cheapest_gpu_that_fits(pricing, min_vram_gb, allowed, hardware, price):
    pod = cheapest_fitting_pod(pricing, min_vram_gb, allowed)
    assert (pod.hardware if pod else None) == hardware
    assert (pod.price_per_hour if pod else None) == (pytest.approx(price) if price is not None else None)


def test_the_estimate_is_price_times_hours_or_the_users_max_cost():
    run_time = estimated_run_time("api", {"idle_timeout_seconds": 2700}, {})  # 1 h with start-up
    pod = cheapest_fitting_pod(POOL, 40)
    estimate = estimate_job_cost(run_time, pod)
    assert estimate.usd == pytest.approx(0.40)
    assert estimate.basis.startswith("1x NVIDIA A40 at $0.40/h × 1.00 h = start-up")
    capped = estimate_job_cost(run_time, pod, max_cost_usd=2.5)
    assert (capped.usd, capped.basis) == (2.5, "max_cost_usd $2.50, given with the job")
    assert estimate_job_cost(run_time, None) is None


# -- the report window ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "end_of_day", "expected"),
    [
        ("2025-06-01", False, "2025-06-01T00:00"),
        ("2025-06-01", True, "2025-06-02T00:00"),
        ("7d", False, "2025-06-11T15:30"),
        (dt.date(2025, 6, 3), False, "2025-06-03T00:00"),
        (dt.datetime(2025, 6, 3, 12), False, "2025-06-03T12:00"),  # naive: UTC
    ],
)
def test_report_windows_read_dates_and_days_back(value, end_of_day, expected):
    assert parse_when(value, "since", NOW, end_of_day=end_of_day).timestamp() == at(expected)


def test_a_bad_report_window_names_the_option():
    with pytest.raises(ValueError, match="since '7x' is not a date: give YYYY-MM-DD"):
        parse_when("7x", "since", NOW)
