"""Waiting for a flow run to end (tasks.run_waits): woken by the run's state event, bounded by a timeout."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Running

from tasks.run_waits import wait_until_final


@flow
def waited_on() -> None:
    """Never runs: its runs' states are set by hand."""


def _new_run():
    with get_client(sync_client=True) as client:
        return client.create_flow_run(waited_on)


def _set_state_later(flow_run_id, state, seconds: float) -> threading.Thread:
    def later():
        time.sleep(seconds)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, state, force=True)

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    return thread


def test_the_wait_ends_when_the_run_does_well_before_a_poll_would(prefect_server):
    run = _new_run()
    _set_state_later(run.id, Running(), 0.5)
    _set_state_later(run.id, Completed(), 2.0)
    started = time.monotonic()
    final = wait_until_final(run.id, timeout=60, recheck_seconds=60, poll_seconds=30)
    assert final.state.is_completed()
    assert time.monotonic() - started < 15  # the state event woke it; a 30 s poll would not have yet


def test_a_run_already_final_is_returned_at_once(prefect_server):
    run = _new_run()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Completed(), force=True)
    assert wait_until_final(run.id, timeout=30).state.is_completed()


def test_the_timeout_names_the_run_and_its_state(prefect_server):
    run = _new_run()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"flow run {run.name} \({run.id}\) is still {run.state_name}"):
        wait_until_final(run.id, timeout=3)
    assert time.monotonic() - started < 10
