"""Waiting for a flow run to end: the one way the control tier, the sweep flow, the client and the
benchmarks wait.

A wait that polls once a second for an hour-long run loads the server for nothing, and on the
embedded default that server shares the CPUs the run trains on. Prefect's ``wait_for_flow_run``
subscribes to the run's state events (reading the run once after subscribing, so a run that ended
first is seen); it is re-armed every ``recheck_seconds``, so a missed event costs at most that long.
Where the event stream cannot be reached, the run is read every ``poll_seconds`` instead.
"""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import FlowRunWaitTimeout
from prefect.flow_runs import wait_for_flow_run
from prefect.utilities.asyncutils import run_coro_as_sync


def wait_until_final(
    flow_run_id: UUID | str,
    timeout: float | None = None,
    *,
    recheck_seconds: float = 60,
    poll_seconds: float = 5,
) -> FlowRun:
    """The flow run once its state is final; TimeoutError naming the run after ``timeout`` seconds."""
    flow_run_id = UUID(str(flow_run_id))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            raise TimeoutError(f"flow run {flow_run.name} ({flow_run_id}) is still {flow_run.state_name}")
        window = recheck_seconds if remaining is None else max(1.0, min(recheck_seconds, remaining))
        try:
            return run_coro_as_sync(wait_for_flow_run(flow_run_id, timeout=int(window)))
        except FlowRunWaitTimeout:
            continue
        except Exception:  # noqa: BLE001 - the event stream is an optimisation; reading the run still works
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(poll_seconds if remaining is None else max(0.0, min(poll_seconds, remaining)))
