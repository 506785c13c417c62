"""Bounded positive numbers: the one checker and parser for TTL, poll, timeout and interval settings."""

from __future__ import annotations

import math

import pytest

from infra import bounds
from infra.bounds import bounded_positive, parse_bounded_positive


@pytest.mark.parametrize(
    ("value", "allow_zero", "expected"),
    [
        (1, False, 1.0),
        (0.0004, False, 0.0004),
        (720, False, 720.0),  # the maximum itself is allowed
        (24.5, False, 24.5),
        (0, True, 0.0),
        (0.0, True, 0.0),
    ],
)
def test_numbers_within_the_range_come_back_as_floats(value, allow_zero, expected):
    result = bounded_positive(value, name="ttl_hours", maximum=720, allow_zero=allow_zero)
    assert result == expected and type(result) is float


@pytest.mark.parametrize(
    ("value", "allow_zero"),
    [
        (math.inf, False),
        (-math.inf, False),
        (math.nan, False),
        (math.inf, True),
        (math.nan, True),
        (1e8, False),
        (720.001, False),
        (0, False),
        (0.0, False),
        (-0.0, False),
        (-1, False),
        (-1, True),
        (-1e-9, True),
        (True, False),
        (False, True),
        ("5", False),
        (None, False),
        ([5], False),
    ],
)
def test_values_outside_the_range_or_not_numbers_are_refused_naming_the_field_value_and_range(
    value, allow_zero
):
    with pytest.raises(ValueError) as refused:
        bounded_positive(value, name="ttl_hours", maximum=720, allow_zero=allow_zero)
    message = str(refused.value)
    assert message.startswith("ttl_hours ")
    assert repr(value) in message
    assert "at most 720" in message or "from 0 to 720" in message


def test_the_message_says_whether_zero_is_allowed():
    with pytest.raises(ValueError, match="greater than 0 and at most 720"):
        bounded_positive(0, name="ttl_hours", maximum=720)
    with pytest.raises(ValueError, match="from 0 to 720"):
        bounded_positive(-1, name="--set", maximum=720, allow_zero=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 24.0),
        ("", 24.0),
        ("   ", 24.0),
        ("2", 2.0),
        (" 0.5 ", 0.5),
        ("1e2", 100.0),
        ("720", 720.0),
    ],
)
def test_text_is_parsed_and_empty_text_means_the_default(raw, expected):
    assert parse_bounded_positive(raw, name="TTL_HOURS", default=24.0, maximum=720) == expected


@pytest.mark.parametrize(
    "raw", ["inf", "-inf", "Infinity", "nan", "NaN", "1e8", "721", "0", "-1", "abc", "1,5", "True"]
)
def test_text_that_is_no_number_in_range_is_refused_naming_the_variable_and_its_text(raw):
    with pytest.raises(ValueError) as refused:
        parse_bounded_positive(raw, name="TTL_HOURS", default=24.0, maximum=720)
    message = str(refused.value)
    assert message.startswith("TTL_HOURS ") and repr(raw) in message and "at most 720" in message


def test_without_a_default_empty_text_is_refused():
    with pytest.raises(ValueError, match=r"--set .*a number"):
        parse_bounded_positive("", name="--set", default=None, maximum=720)


def test_a_default_outside_the_range_is_a_programming_error():
    with pytest.raises(ValueError, match="TTL_HOURS"):
        parse_bounded_positive(None, name="TTL_HOURS", default=math.inf, maximum=720)


@pytest.mark.parametrize(
    ("maximum", "expected"),
    [
        (bounds.TTL_HOURS_MAX, 720),
        (bounds.MAX_RUN_HOURS_MAX, 720),
        (bounds.POLL_INTERVAL_SECONDS_MAX, 600),
        (bounds.POD_START_TIMEOUT_SECONDS_MAX, 24 * 3600),
        (bounds.SWEEP_INTERVAL_SECONDS_MAX, 3600),
        (bounds.TTL_CHECK_SECONDS_MAX, 3600),
    ],
)
def test_the_sane_maxima(maximum, expected):
    assert maximum == expected


def test_the_default_ttl_is_within_its_own_bounds():
    assert bounds.DEFAULT_TTL_HOURS == 24
    assert bounded_positive(bounds.DEFAULT_TTL_HOURS, name="ttl", maximum=bounds.TTL_HOURS_MAX) == 24
