"""Waiting for RunPod capacity: when to check again, when to give up, cooldowns and the billing pause."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.runpod.capacity import (
    AWAITING_CAPACITY,
    COOLDOWN_BASE_S,
    COOLDOWN_MAX_S,
    LaunchGate,
    capacity_wait_started,
    capacity_waits_so_far,
    decide_capacity_wait,
)

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def test_the_wait_began_at_the_first_awaiting_capacity_state_of_the_history():
    history = [
        ("Scheduled", T0 - minutes(5)),
        (AWAITING_CAPACITY, T0 + minutes(3)),
        ("Pending", T0 + minutes(4)),
        (AWAITING_CAPACITY, T0 + minutes(1)),
    ]
    assert capacity_wait_started(history) == T0 + minutes(1)
    assert capacity_waits_so_far(history) == 2
    assert capacity_wait_started([("Scheduled", T0)]) is None


def test_a_run_that_ran_and_came_back_starts_a_new_wait():
    history = [
        (AWAITING_CAPACITY, T0),
        ("Running", T0 + minutes(30)),
        ("Crashed", T0 + minutes(40)),
        (AWAITING_CAPACITY, T0 + minutes(300)),
    ]
    assert capacity_wait_started(history) == T0 + minutes(300)
    assert capacity_waits_so_far(history) == 1


@pytest.mark.parametrize(
    ("case", "waited_min", "waits", "limit_min", "expected_delay_s"),
    [
        ("first wait: the base delay", 0, 0, 240, 60),
        ("doubles per wait", 3, 2, 240, 240),
        ("capped at 8x the base", 100, 9, 240, 480),
        ("never past the limit", 239, 5, 240, 60),
        ("limit spent: give up", 240, 5, 240, None),
        ("a limit of 0: no wait at all", 0, 0, 0, None),
    ],
)
def test_capacity_checks_back_off_and_stop_at_the_limit(case, waited_min, waits, limit_min, expected_delay_s):
    now = T0 + minutes(waited_min)
    decision = decide_capacity_wait(
        now=now,
        wait_started=T0 if waits else None,
        waits_so_far=waits,
        wait_limit_s=limit_min * 60,
        retry_base_s=60,
    )
    if expected_delay_s is None:
        assert decision.retry_at is None, case
    else:
        assert decision.retry_at == now + dt.timedelta(seconds=expected_delay_s), case


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_type_that_keeps_failing_for_capacity_cools_down_on_a_ladder():
    clock = Clock()
    gate = LaunchGate(clock=clock)
    assert gate.capacity_failed("A40", "SECURE") == 0  # one failure: the catalog may just be late
    assert gate.cooling_down() == set()
    assert gate.capacity_failed("A40", "SECURE") == COOLDOWN_BASE_S
    assert gate.cooling_down() == {("A40", "SECURE")}
    assert gate.capacity_failed("A40", "SECURE") == 2 * COOLDOWN_BASE_S
    for _ in range(10):
        last = gate.capacity_failed("A40", "SECURE")
    assert last == COOLDOWN_MAX_S
    clock.now += COOLDOWN_MAX_S + 1
    assert gate.cooling_down() == set()
    gate.launched("A40", "SECURE")  # stock came back: the ladder starts over
    assert gate.capacity_failed("A40", "SECURE") == 0


def test_a_billing_refusal_pauses_launches_and_is_announced_once_each_way():
    clock = Clock()
    gate = LaunchGate(clock=clock)
    assert gate.billing_pause() is None
    assert gate.pause_for_billing("HTTP 402: insufficient balance", 60) is True
    assert gate.pause_for_billing("HTTP 402: insufficient balance", 60) is False  # still the same pause
    assert gate.billing_pause() == "HTTP 402: insufficient balance"
    clock.now += 61
    assert gate.billing_pause() is None  # time to try again
    assert gate.launched("A40", "SECURE") is True  # the resumption is announced
    assert gate.launched("A40", "SECURE") is False
