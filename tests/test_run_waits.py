"""Waiting for a flow run to end (tasks.run_waits): woken by the run's state event, bounded by a timeout."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Running

from tasks.run_waits import cancelled_since_scheduled, wait_until_final


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


def test_a_waiting_run_reads_nothing_itself_while_the_watcher_keeps_up(prefect_server, monkeypatch):
    """A thousand waiting jobs must not cost the server a read each: only the process's watcher reads
    (one query for all of them), and a wait reads its run when woken or at its deadline."""
    from tasks import run_waits

    monkeypatch.setattr(run_waits, "RECHECK_SECONDS", 2.0)
    monkeypatch.setattr(run_waits.RunWatcher, "_shared", {})  # a watcher of its own, reading every 2 s
    reads = []
    read_runs = run_waits._read_runs
    monkeypatch.setattr(run_waits, "_read_runs", lambda run_ids: reads.append(run_ids) or read_runs(run_ids))
    run = _new_run()
    with pytest.raises(TimeoutError):
        wait_until_final(run.id, timeout=10)
    assert len(reads) == 2  # when it started, and at its deadline (not every 6 s in between)


def test_the_watcher_wakes_a_wait_whose_run_ended_without_an_event(prefect_server, monkeypatch):
    """The watcher's periodic read finds a run that ended while no event reached it (the subscription
    dropped, say), and wakes its wait."""
    from tasks import run_waits

    async def no_events(self):  # a subscription that never delivers anything
        await run_waits.asyncio.Event().wait()

    monkeypatch.setattr(run_waits, "RECHECK_SECONDS", 1.0)
    monkeypatch.setattr(run_waits.RunWatcher, "_shared", {})
    monkeypatch.setattr(run_waits.RunWatcher, "_follow_events", no_events)
    run = _new_run()
    _set_state_later(run.id, Completed(), 1.0)
    started = time.monotonic()
    assert wait_until_final(run.id, timeout=60).state.is_completed()
    assert time.monotonic() - started < 2.9  # the 1 s read woke it; a wait's own read comes at 3 s


S, P, R, CG, CD, C = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.CANCELLING,
                      StateType.CANCELLED, StateType.COMPLETED)


@pytest.mark.parametrize(
    ("history", "cancelled"),
    [
        ([S, P, P, CG, CD, R], True),  # cancelled while handed over, then started by its engine
        ([S, P, CG, R], True),
        ([P, CG, CD, R], True),  # created Pending: its whole history counts
        ([S, P, R], False),
        ([S, P, R, CG], True),  # cancelled while it runs: the waits see it too
        ([S, P, CG, CD, S, P, R], False),  # cancelled once, then scheduled again (a retry from the UI)
        ([S, P, R, C], False),
    ],
)
def test_a_run_counts_as_cancelled_only_for_a_cancellation_since_it_was_last_scheduled(history, cancelled):
    assert cancelled_since_scheduled(history) is cancelled
