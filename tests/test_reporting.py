"""The Prefect reporter's plumbing: the background sender and the metrics table's pace."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from tasks.reporting import ReportSender, metrics_table_interval


def test_reports_are_sent_in_order_off_the_calling_thread_and_a_failure_is_logged_not_raised(caplog):
    sent: list[tuple[int, int, int]] = []

    def record(number: int) -> None:
        sent.append((number, threading.get_ident(), os.sched_getscheduler(0) if hasattr(os, "SCHED_BATCH") else -1))

    def fail() -> None:
        raise ConnectionError("server busy")

    sender = ReportSender(logging.getLogger("test-sender"))
    with caplog.at_level(logging.WARNING, logger="test-sender"):
        sender.send(record, 1)
        sender.send(fail)
        sender.send(record, 2)
        sender.drain(timeout=10)
    assert [number for number, _, _ in sent] == [1, 2]
    assert {ident for _, ident, _ in sent} != {threading.get_ident()}
    assert "could not send fail to the Prefect API: server busy" in caplog.text


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_the_sender_thread_does_not_preempt_the_jobs_threads():
    policies: list[int] = []
    sender = ReportSender(logging.getLogger("test-sender"))
    sender.send(lambda: policies.append(os.sched_getscheduler(0)))
    sender.drain(timeout=10)
    assert policies == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own policy is untouched


def test_metrics_table_keeps_its_minimum_interval_while_short():
    assert metrics_table_interval(0, 15.0) == 15.0
    assert metrics_table_interval(150, 15.0) == 15.0


def stored_rows(rows_per_second: float, seconds: int, minimum: float) -> tuple[int, int]:
    """(rows stored over all versions, final rows) when rows arrive steadily and a version is
    written whenever the interval has passed, as PrefectReporter.metrics does."""
    stored, rows, last = 0, 0.0, float("-inf")
    for now in range(seconds):
        rows += rows_per_second
        if now - last >= metrics_table_interval(int(rows), minimum):
            stored += int(rows)
            last = now
    return stored + int(rows), int(rows)  # the final version at the end of the run


def test_a_long_runs_metrics_table_versions_stay_a_small_multiple_of_the_final_table():
    """A 3-hour job logging a step a second: a version every 15 s would store ~360 × the final
    table in Prefect's database; growing the interval with the table keeps it linear."""
    stored, final = stored_rows(rows_per_second=1.0, seconds=3 * 3600, minimum=15.0)
    assert final == 3 * 3600
    assert stored <= 25 * final, stored / final
    stored, final = stored_rows(rows_per_second=5.0, seconds=3600, minimum=15.0)
    assert stored <= 10 * final, stored / final
