"""Pid files of the long-running processes ``make start`` and ``scripts/production.py`` leave behind.

One file per process, ``<run dir>/<name>.pid``; a file whose process is gone is removed when read,
so a stale file never makes a stopped process look alive.
"""

from __future__ import annotations

import os
from pathlib import Path


def running_pid(run_dir: Path, name: str) -> int | None:
    """The pid recorded for ``name`` if that process is alive; else None."""
    path = run_dir / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pid


def write_pid(run_dir: Path, name: str, pid: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}.pid").write_text(str(pid))


def forget_pid(run_dir: Path, name: str) -> None:
    (run_dir / f"{name}.pid").unlink(missing_ok=True)
