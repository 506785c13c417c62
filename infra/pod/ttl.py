"""A pod's time to live: the shutdown time in ``~/shutdown.txt``, and the TTL manager command.

Every pod we start runs a watchdog (:mod:`infra.pod.ttl_watchdog`) that terminates the pod once the time
written in ``~/shutdown.txt`` has passed, so a forgotten dev pod or a hung job stops billing. The file
holds one ISO-8601 timestamp; anyone in the pod can move it::

    python -m infra.pod.ttl --check        # when will this pod shut down?
    python -m infra.pod.ttl --extend 5     # five more hours
    python -m infra.pod.ttl --set 10       # ten hours from now

(The ``ow`` command line exposes the same as ``ow ttl``, through :func:`main`.) HOURS is a number from 0
to 720 (30 days, :data:`infra.bounds.TTL_HOURS_MAX`) per call. The watchdog re-reads
the file on every check, so a change takes effect within one check interval. A timestamp without a
time zone (as a hand edit with ``datetime.now().isoformat()`` produces) is read as local time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from infra.bounds import TTL_HOURS_MAX, bounded_positive, parse_bounded_positive

SHUTDOWN_FILE_NAME = "shutdown.txt"


class TtlFileError(ValueError):
    """The shutdown file is missing or does not hold a timestamp."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def shutdown_file() -> Path:
    """``~/shutdown.txt`` of the current user (``HOME``), where the pod's shutdown time lives."""
    return Path.home() / SHUTDOWN_FILE_NAME


def _later(start: dt.datetime, hours: float) -> dt.datetime:
    span = dt.timedelta(hours=bounded_positive(hours, name="hours", maximum=TTL_HOURS_MAX, allow_zero=True))
    try:
        return start + span
    except OverflowError:
        # Only a deadline written by hand near year 9999 gets here.
        raise ValueError(
            f"{format_deadline(start)} + {hours:g} h is past year 9999, the latest time a deadline can hold"
        ) from None


def deadline_after(now: dt.datetime, hours: float) -> dt.datetime:
    """The shutdown time ``hours`` (0 to :data:`TTL_HOURS_MAX`) after ``now``."""
    return _later(now, hours)


def extended_deadline(current: dt.datetime, now: dt.datetime, hours: float) -> dt.datetime:
    """``current`` moved ``hours`` (0 to :data:`TTL_HOURS_MAX`) later; a deadline already passed is
    extended from ``now`` instead, so extending a pod about to shut down always buys the full ``hours``."""
    return _later(max(current, now), hours)


def remaining(deadline: dt.datetime, now: dt.datetime) -> dt.timedelta:
    """Time left until ``deadline`` (negative once passed)."""
    return deadline - now


def parse_deadline(text: str, *, source: str = SHUTDOWN_FILE_NAME) -> dt.datetime:
    """Read an ISO-8601 timestamp; naive ones are local time. Raise :class:`TtlFileError` naming ``source``."""
    stripped = text.strip()
    try:
        parsed = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise TtlFileError(
            f"{source}: line 1 holds {stripped[:60]!r}, not an ISO-8601 time such as 2030-01-31T18:00:00+00:00"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def format_deadline(deadline: dt.datetime) -> str:
    """How the file stores a deadline: ISO-8601 in UTC, to the second."""
    return deadline.astimezone(dt.UTC).replace(microsecond=0).isoformat()


def describe(deadline: dt.datetime, now: dt.datetime) -> str:
    """A human line such as ``shuts down at 2030-01-01T10:00:00+00:00 (in 3h 05m)``."""
    left = remaining(deadline, now)
    seconds = int(abs(left).total_seconds())
    span = f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    when = f"in {span}" if left.total_seconds() > 0 else f"{span} ago; shutting down"
    return f"shuts down at {format_deadline(deadline)} ({when})"


def read_deadline(path: Path) -> dt.datetime:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TtlFileError(
            f"{path} does not exist; this pod has no TTL set (is the TTL watchdog running?)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TtlFileError(f"{path} cannot be read: {exc}") from None
    return parse_deadline(text, source=str(path))


def write_deadline(path: Path, deadline: dt.datetime) -> None:
    """Replace the file atomically, so the watchdog never reads half a timestamp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=".shutdown-", delete=False, encoding="utf-8"
    ) as tmp:
        tmp.write(format_deadline(deadline) + "\n")
    os.replace(tmp.name, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ow ttl",
        description="Check or change when this pod terminates itself (the time in ~/shutdown.txt).",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="print the shutdown time and the time left")
    # Text, not type=float: the number is checked in main so that every bad value ("inf", "abc")
    # gets the same one-line error and exit status 1.
    action.add_argument(
        "--extend", metavar="HOURS", help=f"move the shutdown time HOURS (0 to {TTL_HOURS_MAX:g}) later"
    )
    action.add_argument("--set", metavar="HOURS", help=f"shut down HOURS (0 to {TTL_HOURS_MAX:g}) from now")
    parser.add_argument(
        "--file", type=Path, default=None, help=f"shutdown file (default ~/{SHUTDOWN_FILE_NAME})"
    )
    return parser


def _hours_argument(option: str, text: str) -> float:
    return parse_bounded_positive(
        text, name=f"{option} HOURS", default=None, maximum=TTL_HOURS_MAX, allow_zero=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The TTL manager command; returns the process exit status."""
    args = _parser().parse_args(argv)
    path = args.file or shutdown_file()
    now = utc_now()
    try:
        if args.check:
            deadline = read_deadline(path)
        elif args.extend is not None:
            hours = _hours_argument("--extend", args.extend)
            deadline = extended_deadline(read_deadline(path), now, hours)
            write_deadline(path, deadline)
        else:
            deadline = deadline_after(now, _hours_argument("--set", args.set))
            write_deadline(path, deadline)
    except (TtlFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"This pod {describe(deadline, now)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
