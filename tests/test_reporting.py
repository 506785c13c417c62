"""The Prefect reporter's plumbing (the background sender, the metrics table's pace) and what
its artifacts read like: rounded numbers, short job IDs in headings, links a browser can open."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import threading

import pytest

from flows.gpu_stage import summary_markdown
from jobs.records import JobRecord
from tasks.reporting import (
    ReportSender,
    artifact_key,
    metrics_table_interval,
    opens_in_a_browser,
    short_job_id,
    significant,
)

JOB_ID = "ftjob-3f2a9c1b7d0e" + "5" * 52


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


# -- readable artifacts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.123456789, 0.1235),
        (2.9473e-05, 2.947e-05),
        (1234567.0, 1235000.0),
        (0.0, 0.0),
        (7, 7),  # a step or a count stays an exact integer
        (None, None),
        ("text", "text"),
        (float("nan"), "nan"),
    ],
)
def test_table_numbers_keep_four_significant_digits(value, shown):
    rounded = significant(value)
    assert str(rounded) == str(shown) and type(rounded) is type(value)


def test_the_short_job_id_is_the_prefix_and_twelve_hex_digits_and_keys_keep_using_it():
    assert short_job_id(JOB_ID) == "ftjob-3f2a9c1b7d0e"
    assert artifact_key(JOB_ID, "loss-curve") == "ftjob-3f2a9c1b7d0e-loss-curve"
    assert artifact_key(JOB_ID, "Arith Samples") == "ftjob-3f2a9c1b7d0e-arith-samples"
    assert short_job_id("custom") == "custom" and artifact_key("custom", "summary") == "custom-summary"


@pytest.mark.parametrize(
    ("uri", "opens"),
    [
        ("https://huggingface.co/org/model", True),
        ("http://127.0.0.1:8000/v1", True),
        ("file:///home/me/.ow/store/jobs/ftjob-1/adapter", False),
        ("s3://bucket/ow/jobs/ftjob-1/adapter", False),
        ("conversations:file-0123", False),
    ],
)
def test_only_web_urls_count_as_links_a_browser_can_open(uri, opens):
    assert opens_in_a_browser(uri) is opens


def summary_of(**fields) -> str:
    record = {
        "job_id": JOB_ID,
        "job_type": "finetune",
        "params": {},
        "code_version": "v",
        "started_at": 1_000.0,
        "completed_at": 1_012.25,
        **fields,
    }
    return summary_markdown(JobRecord(**record))


def test_the_summary_heading_shows_the_short_job_id_and_the_full_one_is_there_to_copy():
    summary = summary_of()
    assert summary.startswith("# finetune job ftjob-3f2a9c1b7d0e\n")
    assert f"- job ID: `{JOB_ID}`" in summary
    assert JOB_ID not in summary.splitlines()[0]


def test_a_cache_hit_summary_still_names_the_full_job_id():
    summary = summary_markdown(JobRecord(job_id=JOB_ID, job_type="finetune", params={}, code_version="v", started_at=0, completed_at=1), cached=True)
    assert "**Cache hit**" in summary and f"- job ID: `{JOB_ID}`" in summary


def test_summary_metrics_are_rounded_to_four_significant_digits():
    summary = summary_of(metrics={"final_loss": 0.123456789, "steps": 18, "backend": "transformers"})
    assert "| final_loss | 0.1235 |" in summary and "| steps | 18 |" in summary


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(12.25, "12.2 s"), (89.9, "89.9 s"), (725.0, "12 min 5 s"), (3 * 3600 + 4 * 60 + 20, "3 h 04 min")],
)
def test_the_summary_says_how_long_the_job_took_as_a_person_reads_it(seconds, shown):
    assert f"- took: {shown}" in summary_of(started_at=0.0, completed_at=seconds)


def test_outputs_on_a_local_store_say_where_they_are_and_how_to_fetch_them_not_a_dead_file_link():
    summary = summary_of(outputs={"adapter": "file:///srv/ow/store/jobs/ftjob-1/adapter"})
    assert "- **adapter**: `/srv/ow/store/jobs/ftjob-1/adapter` (a directory on the machine that holds the local store)" in summary
    assert f"`ow fetch {JOB_ID} -o DIRECTORY`" in summary
    assert "file://" not in summary and "](" not in summary


def test_web_outputs_are_links_and_need_no_fetch_hint():
    summary = summary_of(outputs={"hub": "https://huggingface.co/org/model"})
    assert "- **hub**: [https://huggingface.co/org/model](https://huggingface.co/org/model)" in summary
    assert "ow fetch" not in summary


def test_s3_outputs_are_shown_as_text_with_the_fetch_hint():
    summary = summary_of(outputs={"adapter": "s3://bucket/ow/jobs/ftjob-1/adapter"})
    assert "- **adapter**: `s3://bucket/ow/jobs/ftjob-1/adapter`" in summary and "ow fetch" in summary


# -- the reporter against a real Prefect server ----------------------------------------------------


def test_the_loss_curve_is_redrawn_in_place_with_each_metrics_table_and_numbers_are_rounded(prefect_server):
    """Each flush writes a new version of the metrics table and redraws the one loss-curve artifact
    (updated, not versioned: every version would store the whole image again)."""
    from PIL import Image
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    from tasks.reporting import PrefectReporter

    @flow(name="reporter-charts")
    def report_three_steps() -> str:
        reporter = PrefectReporter(JOB_ID, "finetune", table_interval=3600)
        reporter.metrics(1, {"learning_rate": 0.001})  # nothing to draw yet: no loss
        reporter.flush_metrics()
        for step in (2, 3):
            reporter.metrics(step, {"loss": 2.0 / step + 1e-9, "learning_rate": 0.001 / 3 * step})
            reporter.flush_metrics()
        reporter.drain()
        return str(flow_run.get_id())

    run_id = report_three_steps()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    curves = [a for a in artifacts if a.key == artifact_key(JOB_ID, "loss-curve")]
    tables = sorted((a for a in artifacts if a.key == artifact_key(JOB_ID, "metrics")), key=lambda a: a.created)
    assert len(curves) == 1 and len(tables) == 4  # the first row is shown at once, then each flush
    [curve] = curves
    assert curve.type == "markdown" and curve.description == "Loss curve of ftjob-3f2a9c1b7d0e, up to step 3"
    encoded = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", curve.data).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"
    latest = tables[-1].data if isinstance(tables[-1].data, list) else json.loads(tables[-1].data)
    assert [row["loss"] for row in latest] == [None, 1.0, 0.6667]
    assert [row["learning_rate"] for row in latest] == [0.001, 0.0006667, 0.001]
