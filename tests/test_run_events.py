"""``ow.run.log`` inside a job's code and ``ow.events`` outside it; ``job.restart()`` of a completed job;
a custom job declared the OpenWeights way, run with only its imports changed.

The job's code holds no Prefect setting: it appends events to the file its stage names, and the
stage reports them as the run's events table artifact, which ``ow.events`` reads back.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from client.events import CurrentRun
from client.jobs import COMPLETED, FAILED, PENDING
from compute.custom_stage import run_custom_stage
from compute.reporting import LoggingReporter
from compute.run_events import (
    EVENTS_TABLE,
    RUN_EVENTS_ENV,
    RunEventForwarder,
    append_run_event,
    decode_run_event,
    encode_run_event,
    report_interval,
)
from compute.stage import StageContext
from jobs.custom import CustomJobConfig
from store.artifact_store import ArtifactStore
from store.files import upload_file
from tests.fixtures.jobs import register_script_job

COOKBOOK = Path(__file__).parent / "data" / "openweights_custom_job"

# A job's code, as OpenWeights' users write it: the client, constructed in the job, logs two steps.
LOGGING_SCRIPT = (
    "from client import OpenWeights\n"
    "ow = OpenWeights()\n"
    "ow.run.log({'step': 1, 'loss': 0.5})\n"
    "ow.run.log({'step': 2, 'loss': 0.25, 'note': None})\n"
    "print('logged two steps')\n"
)


class CollectingReporter(LoggingReporter):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[dict]]] = []
        self.lines: list[str] = []

    def table(self, name: str, rows: list[dict], description: str = "") -> None:
        self.tables.append((name, rows))

    def log(self, message: str) -> None:
        self.lines.append(message)


# --- the events file: pure parts ------------------------------------------------------------------


def test_an_event_is_one_json_line_with_its_time_and_data():
    when = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    line = encode_run_event({"step": 3, "loss": 0.125, "tags": ["a"], "nested": {"x": None}}, created_at=when)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_run_event(line) == {
        "created_at": "2025-03-01T12:00:00+00:00",
        "data": {"step": 3, "loss": 0.125, "tags": ["a"], "nested": {"x": None}},
    }


class _Scalar:
    """Stands in for a numpy or torch scalar: not JSON itself, convertible with tolist()."""

    def tolist(self):
        return 1.5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "ow.run.log takes a dict of JSON values, got list"),
        ({1: "x"}, "key 1 is a int; keys must be strings"),
        ({"model": object()}, r"'model' is a object, not a JSON value"),
        ({"fine": 1, "path": Path("/x")}, r"'path' is a PosixPath, not a JSON value"),
    ],
)
def test_what_is_not_json_is_refused_naming_the_key(data, message):
    with pytest.raises(TypeError, match=message):
        encode_run_event(data)


def test_scalars_of_array_libraries_are_logged_as_numbers():
    assert decode_run_event(encode_run_event({"loss": _Scalar()}))["data"] == {"loss": 1.5}


@pytest.mark.parametrize(
    "line", [b"not json", b"[1, 2]", b'{"data": {"x": 1}}', b'{"created_at": "t", "data": 3}']
)
def test_lines_that_are_not_events_are_not_decoded(line):
    assert decode_run_event(line) is None


def test_the_report_interval_grows_with_the_table():
    assert report_interval(0) == report_interval(50) == 5.0
    assert report_interval(1000) == pytest.approx(50.0)


def test_the_forwarder_reports_complete_lines_and_names_a_bad_one(tmp_path):
    path = tmp_path / "events.jsonl"
    reporter = CollectingReporter()
    forwarder = RunEventForwarder(path, reporter, min_interval=3600, poll_seconds=0)
    forwarder.poll()  # no file yet: nothing to report
    append_run_event(path, {"step": 1})
    with path.open("ab") as handle:  # a bad line, then an event still being written
        handle.write(b"garbage\n" + encode_run_event({"step": 2})[:-5])
    forwarder.poll()
    assert [[row["data"] for row in rows] for _, rows in reporter.tables] == [[{"step": 1}]]
    assert reporter.lines == ["events.jsonl, line 2: not an event written by ow.run.log; skipped"]
    with path.open("ab") as handle:
        handle.write(encode_run_event({"step": 2})[-5:])
    append_run_event(path, {"step": 3})
    forwarder.poll()  # within the interval: not reported yet
    assert len(reporter.tables) == 1
    assert [event["data"] for event in forwarder.close()] == [{"step": 1}, {"step": 2}, {"step": 3}]
    name, rows = reporter.tables[-1]
    assert name == EVENTS_TABLE and [row["data"]["step"] for row in rows] == [1, 2, 3]
    forwarder.close()  # nothing new: no new version of the table
    assert len(reporter.tables) == 2


def test_outside_a_job_ow_run_log_says_where_it_works():
    with pytest.raises(RuntimeError, match="ow.run.log works inside a job's code, where OW_RUN_EVENTS"):
        CurrentRun(environ={}).log({"step": 1})
    with pytest.raises(ValueError, match="write the file into OW_OUTPUT_DIR"):
        CurrentRun(environ={RUN_EVENTS_ENV: "/tmp/x"}).log({"step": 1}, file=object())


# --- the custom stage, called directly ------------------------------------------------------------


def test_a_custom_scripts_events_reach_the_stages_reporter_without_any_prefect_setting(tmp_path, monkeypatch):
    """The script constructs OpenWeights() and logs; the stage strips PREFECT_* from its environment."""
    # Unreachable: the script must not need it (and does not get it).
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    store = ArtifactStore(str(tmp_path / "store"))
    script = tmp_path / "train.py"
    script.write_text(LOGGING_SCRIPT)
    context = StageContext(
        job_id="customjob-0123456789abcdef",
        store=store,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        reporter=CollectingReporter(),
    )
    config = CustomJobConfig(
        name="logs_steps",
        mounted_files={"train.py": upload_file(store, script, "custom_job_file").id},
        entrypoint=["python", "train.py"],
    )
    run_custom_stage(config, context)
    name, rows = context.reporter.tables[-1]
    assert name == EVENTS_TABLE
    assert [row["data"] for row in rows] == [
        {"step": 1, "loss": 0.5},
        {"step": 2, "loss": 0.25, "note": None},
    ]
    assert rows[0]["created_at"] <= rows[1]["created_at"]
    assert "logged two steps" in context.reporter.lines


# --- through the embedded default -----------------------------------------------------------------


class NoParams(BaseModel):
    run: int = 1


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


@pytest.fixture(scope="module")
def logged_job(ow, tmp_path_factory):
    """A custom job whose script logs two steps, completed."""
    script = tmp_path_factory.mktemp("events") / "log_steps.py"
    script.write_text(LOGGING_SCRIPT)
    register_script_job("log_steps", script, NoParams)
    job = ow.log_steps.create(run=1).wait(timeout=600)
    assert job.status == COMPLETED, job.logs()[-2000:]
    return job


def test_events_logged_by_a_jobs_script_are_listed_in_order_with_their_data(ow, logged_job):
    events = ow.events.list(job_id=logged_job.id)
    assert [event["data"] for event in events] == [
        {"step": 1, "loss": 0.5},
        {"step": 2, "loss": 0.25, "note": None},
    ]
    [run] = logged_job.runs
    assert {event["run_id"] for event in events} == {run.id}
    assert {event["job_id"] for event in events} == {logged_job.id}
    assert events[0]["created_at"] <= events[1]["created_at"] and events[0]["id"] != events[1]["id"]
    assert all(event["file"] is None for event in events)
    assert ow.events.list(run_id=run.id) == events


def test_latest_gives_the_newest_value_of_each_field(ow, logged_job):
    assert ow.events.latest("*", job_id=logged_job.id) == {"step": 2, "loss": 0.25}  # None values left out
    assert ow.events.latest(["loss"], job_id=logged_job.id) == {"loss": 0.25}
    assert ow.events.latest(["note", "missing"], job_id=logged_job.id) == {"note": None}
    assert ow.events.latest("step", run_id=logged_job.runs[-1].id) == {"step": 2}


def test_events_need_a_job_or_a_run_that_exists(ow):
    with pytest.raises(ValueError, match="Either job_id or run_id must be provided"):
        ow.events.list()
    with pytest.raises(ValueError, match="is not a run ID"):
        ow.events.list(run_id="run-1")
    with pytest.raises(LookupError, match="no run 00000000-0000-4000-8000-000000000000"):
        ow.events.list(run_id="00000000-0000-4000-8000-000000000000")


def test_restart_of_a_completed_job_runs_it_again_as_openweights_does(ow, logged_job):
    job = ow.jobs.retrieve(logged_job.id)
    assert job.restart() is job and job.status == PENDING  # the job object itself is updated
    job.wait(timeout=600)
    assert job.status == COMPLETED, job.logs()[-2000:]
    first, second = job.runs
    assert (first.status, second.status) == (COMPLETED, COMPLETED)
    assert job.params["force"] is True  # how it ran again: its stored result was not served
    events = ow.events.list(job_id=job.id)
    assert [(event["run_id"], event["data"]["step"]) for event in events] == [
        (first.id, 1), (first.id, 2), (second.id, 1), (second.id, 2)
    ]  # fmt: skip
    assert [event["data"]["step"] for event in ow.events.list(run_id=second.id)] == [1, 2]
    # An identical job created without force is its own stored result: no third run.
    again = ow.log_steps.create(run=1)
    assert again.id == job.id and again.status == COMPLETED and len(again.runs) == 2


def test_a_failing_script_keeps_the_events_it_logged(ow, tmp_path):
    script = tmp_path / "log_then_fail.py"
    script.write_text(
        "from client import OpenWeights\n"
        "OpenWeights().run.log({'stage': 'loading'})\n"
        "raise SystemExit('out of memory')\n"
    )
    register_script_job("log_then_fail", script, NoParams)
    job = ow.log_then_fail.create().wait(timeout=600)
    assert job.status == FAILED
    assert [event["data"] for event in ow.events.list(job_id=job.id)] == [{"stage": "loading"}]


def test_an_openweights_cookbook_style_custom_job_runs_with_only_its_imports_changed(ow_stack, tmp_path):
    changed_lines = 0
    for name in ("client_side.py", "worker_side.py"):
        original = (COOKBOOK / name).read_text()
        ported = original.replace("from openweights import", "from client import")
        changed_lines += sum(line not in original.splitlines() for line in ported.splitlines())
        (tmp_path / name).write_text(ported)
    assert changed_lines == 2  # one import line in each file, nothing else
    result = subprocess.run(
        [sys.executable, str(tmp_path / "client_side.py")],
        cwd=tmp_path,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("created customjob-")
    assert lines[1:] == [
        "completed",
        json.dumps({"text": "multiplying"}),
        json.dumps({"product": 42.0}),
        json.dumps({"product": 42.0, "text": "multiplying"}),
        "2",
    ]


def test_the_events_of_a_fine_tune_are_the_metrics_its_stage_logged(ow, trained_sft):
    _, job_id, _ = trained_sft
    events = ow.events.list(job_id=job_id)
    steps = [event["data"]["step"] for event in events]
    assert steps and steps == sorted(steps)
    assert any("loss" in event["data"] for event in events)
    latest = ow.events.latest(["step", "loss"], job_id=job_id)
    assert latest["step"] == steps[-1]
    assert math.isfinite(latest["loss"])
