"""TTL: shutdown-file arithmetic, the TTL manager command and the watchdog that ends the pod."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from infra.bounds import DEFAULT_TTL_HOURS
from infra.pod import ttl
from infra.pod.ttl_watchdog import DEFAULT_CHECK_SECONDS, DEFAULT_WARNING_SECONDS, TtlWatchdog

NOON = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def hours(value: float) -> dt.timedelta:
    return dt.timedelta(hours=value)


@pytest.mark.parametrize(
    ("current", "now", "extra", "expected"),
    [
        (NOON + hours(2), NOON, 5, NOON + hours(7)),  # extends the deadline, not now
        (NOON - hours(1), NOON, 5, NOON + hours(5)),  # a passed deadline extends from now
        (NOON, NOON, 0, NOON),
        (NOON + hours(1), NOON, 0.5, NOON + hours(1.5)),
    ],
)
def test_extending_moves_the_later_of_deadline_and_now(current, now, extra, expected):
    assert ttl.extended_deadline(current, now, extra) == expected


@pytest.mark.parametrize(
    ("ttl_hours", "expected"), [(24, NOON + hours(24)), (0.25, NOON + hours(0.25)), (0, NOON)]
)
def test_a_ttl_counts_from_now(ttl_hours, expected):
    assert ttl.deadline_after(NOON, ttl_hours) == expected


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_impossible_hours_are_refused(bad):
    with pytest.raises(ValueError, match="hours"):
        ttl.deadline_after(NOON, bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T12:00:00+00:00", NOON),
        ("2030-01-01T13:00:00+01:00\n", NOON),
        (" 2030-01-01T12:00:00Z ", NOON),
    ],
)
def test_shutdown_times_are_read_with_their_zone(text, expected):
    assert ttl.parse_deadline(text) == expected


def test_a_time_without_zone_is_local_time_as_a_hand_edit_writes_it():
    naive = dt.datetime(2030, 1, 1, 12, 0)
    assert ttl.parse_deadline(naive.isoformat()) == naive.astimezone()


def test_garbage_in_the_file_is_an_error_naming_the_file():
    with pytest.raises(ttl.TtlFileError, match=r"/x/shutdown.txt: line 1 holds 'tomorrow'"):
        ttl.parse_deadline("tomorrow", source="/x/shutdown.txt")


@pytest.mark.parametrize(
    ("deadline", "now", "text"),
    [
        (
            NOON + hours(3) + dt.timedelta(minutes=5),
            NOON,
            "shuts down at 2030-01-01T15:05:00+00:00 (in 3h 05m)",
        ),
        (
            NOON - dt.timedelta(minutes=2),
            NOON,
            "shuts down at 2030-01-01T11:58:00+00:00 (0h 02m ago; shutting down)",
        ),
    ],
)
def test_the_status_line_says_when_and_how_long(deadline, now, text):
    assert ttl.describe(deadline, now) == text


def test_written_deadlines_read_back_in_utc_to_the_second(tmp_path):
    path = tmp_path / "shutdown.txt"
    ttl.write_deadline(path, NOON + dt.timedelta(microseconds=7))
    assert path.read_text() == "2030-01-01T12:00:00+00:00\n"
    assert ttl.read_deadline(path) == NOON


# -- the TTL manager command ----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_set_then_check_then_extend(home, capsys):
    assert ttl.main(["--set", "2"]) == 0
    first = ttl.read_deadline(home / "shutdown.txt")
    assert abs((first - ttl.utc_now()) - hours(2)) < dt.timedelta(seconds=5)
    assert ttl.main(["--check"]) == 0
    assert "shuts down at" in capsys.readouterr().out
    assert ttl.main(["--extend", "3"]) == 0
    assert ttl.read_deadline(home / "shutdown.txt") == first + hours(3)


@pytest.mark.parametrize("argv", [["--check"], ["--extend", "1"]])
def test_without_a_shutdown_file_check_and_extend_fail_with_a_reason(home, capsys, argv):
    assert ttl.main(argv) == 1
    assert "shutdown.txt does not exist" in capsys.readouterr().err


def test_a_corrupt_shutdown_file_is_reported_not_overwritten_by_extend(home, capsys):
    (home / "shutdown.txt").write_text("soon")
    assert ttl.main(["--extend", "1"]) == 1
    assert "not an ISO-8601 time" in capsys.readouterr().err
    assert (home / "shutdown.txt").read_text() == "soon"


def test_negative_hours_are_refused(home, capsys):
    assert ttl.main(["--set", "-1"]) == 1
    assert "--set HOURS must be a number from 0 to 720, got '-1'" in capsys.readouterr().err
    assert not (home / "shutdown.txt").exists()


@pytest.mark.parametrize("action", ["--extend", "--set"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e8", "721", "abc", ""])
def test_hours_that_are_no_finite_number_up_to_30_days_are_refused_in_one_line(home, capsys, action, value):
    ttl.write_deadline(home / "shutdown.txt", NOON)
    assert ttl.main([action, value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {action} HOURS ")
    assert f"must be a number from 0 to 720, got {value!r}" in err
    assert ttl.read_deadline(home / "shutdown.txt") == NOON  # left as it was


@pytest.mark.parametrize(("action", "value"), [("--set", "0"), ("--extend", "0"), ("--set", "720")])
def test_zero_and_the_maximum_are_accepted(home, action, value):
    ttl.write_deadline(home / "shutdown.txt", ttl.utc_now())
    assert ttl.main([action, value]) == 0


def test_the_ttl_command_refuses_infinite_hours_without_a_traceback(home):
    ttl.write_deadline(home / "shutdown.txt", NOON)
    result = subprocess.run(
        [sys.executable, "-m", "infra.pod.ttl", "--extend", "inf"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --extend HOURS must be a number") and "'inf'" in result.stderr
    assert ttl.read_deadline(home / "shutdown.txt") == NOON


def test_extending_a_deadline_at_the_end_of_time_is_an_error_not_a_crash(home, capsys):
    (home / "shutdown.txt").write_text("9999-12-31T23:00:00+00:00")
    assert ttl.main(["--extend", "5"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_exactly_one_action_is_required(home):
    with pytest.raises(SystemExit) as exit_info:
        ttl.main(["--check", "--set", "1"])
    assert exit_info.value.code == 2


# -- the watchdog ---------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def watchdog(path: Path, clock: FakeClock, outcomes: list[bool] | None = None, ttl_hours: float = 1):
    calls: list[str] = []
    answers = list(outcomes or [True])

    def end_pod(reason: str) -> bool:
        calls.append(reason)
        return answers.pop(0) if answers else True

    dog = TtlWatchdog(
        shutdown_file=path, ttl_hours=ttl_hours, check_interval_s=0.01, end_pod=end_pod, clock=clock
    )
    return dog, calls


def test_the_watchdog_writes_the_first_deadline_and_ends_the_pod_only_after_it(tmp_path):
    clock = FakeClock(NOON)
    dog, calls = watchdog(tmp_path / "shutdown.txt", clock)
    assert dog.initialize() == NOON + hours(1)
    assert ttl.read_deadline(tmp_path / "shutdown.txt") == NOON + hours(1)
    clock.now = NOON + dt.timedelta(minutes=59)
    assert dog.check_once() is False and calls == []
    clock.now = NOON + hours(1)
    assert dog.check_once() is True
    assert calls == ["TTL expired at 2030-01-01T13:00:00+00:00"]


def test_a_restarted_container_keeps_its_deadline(tmp_path):
    ttl.write_deadline(tmp_path / "shutdown.txt", NOON + dt.timedelta(minutes=10))
    dog, _ = watchdog(tmp_path / "shutdown.txt", FakeClock(NOON), ttl_hours=24)
    assert dog.initialize() == NOON + dt.timedelta(minutes=10)


def test_an_extension_written_to_the_file_is_honoured(tmp_path):
    clock = FakeClock(NOON)
    dog, calls = watchdog(tmp_path / "shutdown.txt", clock)
    dog.initialize()
    ttl.write_deadline(tmp_path / "shutdown.txt", NOON + hours(5))
    clock.now = NOON + hours(2)
    assert dog.check_once() is False and calls == []


def test_a_corrupt_file_keeps_the_last_good_deadline(tmp_path):
    clock = FakeClock(NOON)
    dog, calls = watchdog(tmp_path / "shutdown.txt", clock)
    dog.initialize()
    (tmp_path / "shutdown.txt").write_text("forever")
    clock.now = NOON + hours(0.5)
    assert dog.check_once() is False
    clock.now = NOON + hours(1)
    assert dog.check_once() is True and len(calls) == 1


def test_a_failed_termination_is_retried_at_the_next_check(tmp_path):
    clock = FakeClock(NOON + hours(2))
    path = tmp_path / "shutdown.txt"
    ttl.write_deadline(path, NOON)
    dog, calls = watchdog(path, clock, outcomes=[False, False, True])
    done = threading.Event()
    original = dog._end_pod

    def end_pod(reason: str) -> bool:
        accepted = original(reason)
        if accepted:
            done.set()
            dog.stop()
        return accepted

    dog._end_pod = end_pod
    thread = threading.Thread(target=dog.run, daemon=True)
    thread.start()
    assert done.wait(5)
    thread.join(5)
    assert len(calls) == 3


# -- the TTL warning: the flow-run command is told to stop (and checkpoint) before the pod is ended --


def warned_watchdog(path: Path, clock: FakeClock, ttl_hours: float = 1, warning_s: float = 300):
    warnings: list[str] = []
    ends: list[str] = []

    def end_pod(reason: str) -> bool:
        ends.append(reason)
        return True

    dog = TtlWatchdog(
        shutdown_file=path,
        ttl_hours=ttl_hours,
        check_interval_s=0.01,
        end_pod=end_pod,
        warning_s=warning_s,
        on_warning=warnings.append,
        clock=clock,
    )
    return dog, warnings, ends


def test_the_watchdog_warns_once_minutes_before_the_deadline_then_ends_the_pod_at_it(tmp_path, caplog):
    clock = FakeClock(NOON)
    dog, warnings, ends = warned_watchdog(tmp_path / "shutdown.txt", clock)
    dog.initialize()
    clock.now = NOON + dt.timedelta(minutes=54, seconds=59)
    assert dog.check_once() is False and warnings == []
    clock.now = NOON + dt.timedelta(minutes=55)
    assert dog.check_once() is False
    assert warnings == ["TTL warning: this pod shuts down at 2030-01-01T13:00:00+00:00 (in 0h 05m)"]
    assert "TTL warning" in caplog.text and "--extend" in caplog.text
    clock.now = NOON + dt.timedelta(minutes=58)
    assert dog.check_once() is False and len(warnings) == 1  # a second SIGTERM would cut the checkpoint short
    clock.now = NOON + hours(1)
    assert dog.check_once() is True
    assert len(warnings) == 1 and ends == ["TTL expired at 2030-01-01T13:00:00+00:00"]


def test_a_watchdog_that_checks_only_after_the_deadline_still_warns_before_ending_the_pod(tmp_path):
    clock = FakeClock(NOON)
    dog, warnings, ends = warned_watchdog(tmp_path / "shutdown.txt", clock)
    dog.initialize()
    clock.now = NOON + hours(2)
    assert dog.check_once() is True
    assert len(warnings) == 1 and len(ends) == 1


def test_an_extended_deadline_is_warned_about_again_before_it_passes(tmp_path):
    clock = FakeClock(NOON)
    path = tmp_path / "shutdown.txt"
    dog, warnings, _ = warned_watchdog(path, clock)
    dog.initialize()
    clock.now = NOON + dt.timedelta(minutes=56)
    dog.check_once()
    ttl.write_deadline(path, NOON + hours(3))  # `ow ttl --extend 2` after the warning
    clock.now = NOON + dt.timedelta(minutes=59)
    assert dog.check_once() is False and len(warnings) == 1
    clock.now = NOON + hours(3) - dt.timedelta(minutes=4)
    assert dog.check_once() is False and len(warnings) == 2


def test_a_ttl_that_fits_in_the_warning_window_gets_no_warning(tmp_path):
    # A 4-minute pod warned 5 minutes ahead would be told to stop as it starts.
    clock = FakeClock(NOON)
    dog, warnings, ends = warned_watchdog(tmp_path / "shutdown.txt", clock, ttl_hours=4 / 60)
    dog.initialize()
    clock.now = NOON + dt.timedelta(minutes=3)
    assert dog.check_once() is False and warnings == []
    clock.now = NOON + dt.timedelta(minutes=4)
    assert dog.check_once() is True and warnings == [] and len(ends) == 1


def test_a_warning_of_zero_seconds_turns_the_warning_off(tmp_path):
    clock = FakeClock(NOON)
    dog, warnings, ends = warned_watchdog(tmp_path / "shutdown.txt", clock, warning_s=0)
    dog.initialize()
    clock.now = NOON + hours(1)
    assert dog.check_once() is True and warnings == [] and len(ends) == 1


# -- watchdog settings: a bad value falls back to the default, never crashes, never drops the TTL -----


def never_ends(reason: str) -> bool:
    return False


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e8", "721", "0", "-1", "abc"])
def test_a_watchdog_with_an_unusable_ttl_hours_logs_it_and_uses_the_default_ttl(home, caplog, value):
    dog = TtlWatchdog.from_environment(end_pod=never_ends, environ={"TTL_HOURS": value})
    before = ttl.utc_now()
    deadline = dog.initialize()
    assert dog.ttl_hours == DEFAULT_TTL_HOURS
    assert abs((deadline - before) - hours(DEFAULT_TTL_HOURS)) < dt.timedelta(seconds=5)
    assert ttl.read_deadline(home / "shutdown.txt") == deadline.replace(microsecond=0)
    (error,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "TTL_HOURS" in error.getMessage() and repr(value) in error.getMessage()
    assert "24" in error.getMessage()


@pytest.mark.parametrize("environ", [{}, {"TTL_HOURS": ""}, {"TTL_HOURS": "  "}])
def test_an_unset_or_empty_ttl_hours_is_the_default_without_an_error(home, caplog, environ):
    dog = TtlWatchdog.from_environment(end_pod=never_ends, environ=environ)
    assert dog.ttl_hours == DEFAULT_TTL_HOURS
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


@pytest.mark.parametrize(("value", "expected"), [("0.0004", 0.0004), ("2", 2.0), ("720", 720.0)])
def test_a_usable_ttl_hours_is_taken_as_given(home, value, expected):
    assert TtlWatchdog.from_environment(end_pod=never_ends, environ={"TTL_HOURS": value}).ttl_hours == expected


@pytest.mark.parametrize("value", ["inf", "nan", "1e8", "3601", "0", "-1", "abc"])
def test_an_unusable_check_interval_logs_it_and_uses_the_default_interval(home, caplog, value):
    dog = TtlWatchdog.from_environment(end_pod=never_ends, environ={"OW_TTL_CHECK_SECONDS": value})
    assert dog.check_interval_s == DEFAULT_CHECK_SECONDS
    (error,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "OW_TTL_CHECK_SECONDS" in error.getMessage() and repr(value) in error.getMessage()


@pytest.mark.parametrize("value", ["inf", "nan", "1e8", "3601", "-1", "abc"])
def test_an_unusable_warning_time_logs_it_and_uses_the_default(home, caplog, value):
    dog = TtlWatchdog.from_environment(end_pod=never_ends, environ={"OW_TTL_WARNING_SECONDS": value})
    assert dog.warning_s == DEFAULT_WARNING_SECONDS == 300
    (error,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert "OW_TTL_WARNING_SECONDS" in error.getMessage() and repr(value) in error.getMessage()


@pytest.mark.parametrize(("value", "expected"), [("", 300.0), ("0", 0.0), ("600", 600.0), ("3600", 3600.0)])
def test_a_usable_warning_time_is_taken_as_given(home, value, expected):
    assert TtlWatchdog.from_environment(end_pod=never_ends, environ={"OW_TTL_WARNING_SECONDS": value}).warning_s == expected


def test_a_deadline_written_far_in_the_future_by_hand_is_still_honoured(home):
    far = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    (home / "shutdown.txt").write_text(far.isoformat())
    clock = FakeClock(NOON)
    dog, calls = watchdog(home / "shutdown.txt", clock)
    assert dog.initialize() == far
    clock.now = NOON + hours(10_000)
    assert dog.check_once() is False and calls == []
    assert "2999-01-01" in ttl.describe(far, NOON)


def test_the_pod_entrypoint_with_an_infinite_ttl_runs_its_command_under_the_default_ttl(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPOD_")}
    env.update(HOME=str(tmp_path), TTL_HOURS="inf", OW_TTL_CHECK_SECONDS="60")
    before = ttl.utc_now()
    result = subprocess.run(
        [sys.executable, "-m", "infra.pod.entrypoint", "--", sys.executable, "-c", "raise SystemExit(3)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "TTL_HOURS" in result.stderr
    deadline = ttl.read_deadline(tmp_path / "shutdown.txt")
    assert abs((deadline - before) - hours(DEFAULT_TTL_HOURS)) < dt.timedelta(seconds=30)
