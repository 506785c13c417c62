"""TTL: shutdown-file arithmetic, the TTL manager command and the watchdog that ends the pod."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from infra.pod import ttl
from infra.pod.ttl_watchdog import TtlWatchdog

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
    assert "hours" in capsys.readouterr().err
    assert not (home / "shutdown.txt").exists()


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


@pytest.mark.parametrize(
    ("name", "value"), [("TTL_HOURS", "soon"), ("TTL_HOURS", "-2"), ("OW_TTL_CHECK_SECONDS", "0")]
)
def test_bad_watchdog_settings_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        TtlWatchdog.from_environment(end_pod=lambda reason: True, environ={name: value})
