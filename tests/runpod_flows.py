"""Tiny flows the ``runpod`` worker tests deploy; they run inside emulated pods (cwd = repo root).

Not a test module: the pod's ``prefect flow-run execute`` loads them by entrypoint path
(``tests/runpod_flows.py:<name>``), so they import nothing from the test suite.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger


@flow
def say_hello(name: str = "pod") -> str:
    """Logs where it runs; the test reads the line back through the Prefect API."""
    get_run_logger().info("hello %s from RunPod pod %s", name, os.environ.get("RUNPOD_POD_ID"))
    return f"hello {name}"


@flow
def sleep_for(seconds: float) -> None:
    """Stays running long enough for a test to cancel it, kill things under it or let its TTL run out."""
    get_run_logger().info("sleeping %s s in pod %s", seconds, os.environ.get("RUNPOD_POD_ID"))
    time.sleep(seconds)


@flow
def record_env(names: list[str], out_path: str) -> None:
    """Writes the named environment variables, as the flow sees them, to ``out_path`` as JSON."""
    Path(out_path).write_text(json.dumps({name: os.environ.get(name) for name in names}), encoding="utf-8")


def _slow_completion_hook(flow, flow_run, state) -> None:
    """Runs after the run is Completed, while the engine is still up (as a log flush or an upload does)."""
    time.sleep(float(flow_run.parameters.get("hook_seconds", 6)))
    get_run_logger().info("completion hook done in pod %s", os.environ.get("RUNPOD_POD_ID"))


@flow(on_completion=[_slow_completion_hook])
def finish_slowly(hook_seconds: float = 6) -> str:
    """Reaches Completed, then keeps its engine busy for ``hook_seconds``: a pod terminated as soon as
    the run is final kills the engine mid-shutdown, which then reports Crashed over Completed."""
    return "done"
