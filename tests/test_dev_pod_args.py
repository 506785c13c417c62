"""``ow dev-pod`` arguments: time settings are checked before anything talks to RunPod."""

from __future__ import annotations

import pytest

from infra.bounds import DEFAULT_TTL_HOURS
from infra.runpod import dev_pod


class ReachedTheApi(ValueError):
    """Raised by the stand-in client: the arguments passed validation and the command went on."""


@pytest.fixture
def api_calls(monkeypatch) -> list[str | None]:
    """Every attempt to build a RunPod client; the stand-in stops the command right there."""
    calls: list[str | None] = []

    def client(block_name):
        calls.append(block_name)
        raise ReachedTheApi("reached the RunPod API")

    monkeypatch.setattr(dev_pod, "_client", client)
    return calls


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--ttl-hours", "inf", "greater than 0 and at most 720"),
        ("--ttl-hours", "nan", "greater than 0 and at most 720"),
        ("--ttl-hours", "1e8", "greater than 0 and at most 720"),
        ("--ttl-hours", "721", "greater than 0 and at most 720"),
        ("--ttl-hours", "0", "greater than 0 and at most 720"),
        ("--ttl-hours", "-1", "greater than 0 and at most 720"),
        ("--wait-seconds", "inf", "from 0 to 86400"),
        ("--wait-seconds", "nan", "from 0 to 86400"),
        ("--wait-seconds", "1e8", "from 0 to 86400"),
        ("--wait-seconds", "-1", "from 0 to 86400"),
    ],
)
def test_time_arguments_out_of_bounds_fail_in_one_line_before_any_api_call(
    api_calls, capsys, option, value, allowed
):
    assert dev_pod.main([option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} must be a number {allowed}, got ")
    assert err.count("\n") == 1
    assert api_calls == []


@pytest.mark.parametrize("option", ["--ttl-hours", "--wait-seconds"])
def test_a_time_argument_that_is_no_number_is_an_argument_error(api_calls, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        dev_pod.main([option, "soon"])
    assert exit_info.value.code == 2
    assert f"argument {option}: invalid float value: 'soon'" in capsys.readouterr().err
    assert api_calls == []


@pytest.mark.parametrize(
    "argv",
    [["--ttl-hours", "720"], ["--ttl-hours", "0.0015"], ["--wait-seconds", "0"], ["--wait-seconds", "86400"]],
)
def test_time_arguments_within_bounds_go_on_to_the_api(api_calls, capsys, argv):
    assert dev_pod.main(argv) == 1
    assert "reached the RunPod API" in capsys.readouterr().err
    assert len(api_calls) == 1


def test_a_dev_pod_gets_the_one_default_ttl():
    assert dev_pod._parser().parse_args([]).ttl_hours == DEFAULT_TTL_HOURS
