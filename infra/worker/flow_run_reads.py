"""Reading the flow runs of many watched pods with few requests: one query a poll for all of them.

A ``runpod`` worker watches every pod it launched, and each watch reads its flow run every
``poll_interval_seconds``: at a pool limit of 100 pods and a 10 s poll that is 10 requests a second to
the Prefect API (100 at the emulator's 1 s), each a full request for a run that mostly has not changed.
Like the pod list (:mod:`infra.runpod.pod_reads`), the watches share one read: :class:`FlowRunReads`
answers from the last read of every watched run when that read started after the asker saw its pod,
and reads them all again otherwise.

That order is the one rule: a watch decides from pod and run together, and a pod gone because its run
finished must be seen together with the run's final state (:func:`infra.worker.pod_outcome.decide`).
A run read that started after the pod was seen gone shows the final state the run reached before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import anyio
from prefect.client.schemas.objects import FlowRun

READ_BATCH = 200  # runs per request (a pool limit above it takes several)


class FlowRunReads:
    """The watched flow runs as of the last read that started after the asker saw its pod."""

    def __init__(
        self,
        read_many: Callable[[list[UUID]], Awaitable[list[FlowRun]]],
        read_one: Callable[[UUID], Awaitable[FlowRun]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._read_many = read_many
        self._read_one = read_one  # raises ObjectNotFound for a deleted run
        self._clock = clock
        self._lock = anyio.Lock()
        self._watched: set[UUID] = set()
        self._runs: dict[UUID, FlowRun] = {}
        self._covered: set[UUID] = set()  # the ids the last read asked for
        self._read_started = float("-inf")

    def watch(self, flow_run_id: UUID) -> None:
        self._watched.add(flow_run_id)

    def unwatch(self, flow_run_id: UUID) -> None:
        self._watched.discard(flow_run_id)

    async def read(self, flow_run_id: UUID, seen_pod_at: float) -> FlowRun:
        """The run as read after ``seen_pod_at`` (this object's clock). A run the shared read did not
        return is read by itself, so a deleted run raises ObjectNotFound as a direct read does."""
        async with self._lock:  # one read at a time; the others then take its answer
            if self._read_started <= seen_pod_at or flow_run_id not in self._covered:
                ids = sorted(self._watched | {flow_run_id})
                started = self._clock()
                runs: dict[UUID, FlowRun] = {}
                for start in range(0, len(ids), READ_BATCH):
                    runs.update({run.id: run for run in await self._read_many(ids[start : start + READ_BATCH])})
                self._runs, self._covered, self._read_started = runs, set(ids), started
            run = self._runs.get(flow_run_id)
        return run if run is not None else await self._read_one(flow_run_id)
