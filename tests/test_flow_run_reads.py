"""A runpod worker's watches read their flow runs together: one request a poll, not one per pod, and
never a read older than the pod it is judged with."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Running

from infra.worker.flow_run_reads import FlowRunReads


@flow
def watched() -> None:
    """Never runs: its runs' states are set by hand."""


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def _reads(client, clock):
    requests = []

    async def read_many(ids):
        requests.append(list(ids))
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))

    return FlowRunReads(read_many, client.read_flow_run, clock=clock), requests


def test_many_watches_share_one_read_and_never_get_a_run_older_than_their_pod(prefect_server):
    async def scenario():
        async with get_client() as client:
            runs = [await client.create_flow_run(watched) for _ in range(20)]
            clock = Clock()
            reads, requests = await _reads(client, clock)
            for run in runs:
                reads.watch(run.id)

            seen_pod_at = clock.now  # every watch saw its pod in the same pod list
            clock.now += 0.01
            answers = await asyncio.gather(*(reads.read(run.id, seen_pod_at) for run in runs))
            assert [answer.id for answer in answers] == [run.id for run in runs]
            assert len(requests) == 1 and sorted(requests[0]) == sorted(run.id for run in runs)

            # The run ends; a pod seen after the last read (gone, say) must be judged with the new state.
            await client.set_flow_run_state(runs[0].id, Running(), force=True)
            await client.set_flow_run_state(runs[0].id, Completed(), force=True)
            clock.now += 1
            later = await reads.read(runs[0].id, seen_pod_at=clock.now)
            assert later.state.is_completed()
            assert len(requests) == 2
            # A watch whose pod was seen before that read takes its answer: no third request.
            assert (await reads.read(runs[1].id, seen_pod_at=clock.now - 0.5)).id == runs[1].id
            assert len(requests) == 2

    asyncio.run(scenario())


def test_a_run_not_in_the_shared_read_is_read_alone_and_a_deleted_one_is_not_found(prefect_server):
    async def scenario():
        async with get_client() as client:
            kept, deleted = [await client.create_flow_run(watched) for _ in range(2)]
            reads, requests = await _reads(client, Clock())
            reads.watch(kept.id)
            reads.watch(deleted.id)
            await client.delete_flow_run(deleted.id)
            assert (await reads.read(kept.id, seen_pod_at=0)).id == kept.id
            with pytest.raises(ObjectNotFound):
                await reads.read(deleted.id, seen_pod_at=0)
            with pytest.raises(ObjectNotFound):
                await reads.read(uuid.uuid4(), seen_pod_at=0)  # never watched: read (and not found) at once

    asyncio.run(scenario())
