"""Closing the charges of pods no worker watched to their end, and reading what RunPod billed for a pod.

The ``runpod`` worker writes a pod's charge open as soon as the pod exists and closes it once it sees
the pod gone (:mod:`infra.worker.runpod_worker`). A worker killed mid-run (SIGKILL, a lost host) never
closes it, so every worker of the pool, on each orphan sweep, closes the open charges of the pool's pods
that nobody in it watches (:func:`close_open_charges`):

* a pod its sweep has just terminated: ended when RunPod accepted the terminate, with RunPod's bill;
* a pod that is gone from every RunPod account the pool uses (it ended itself with its run, its TTL
  ran out, its host was lost): ended where :func:`infra.worker.pod_charge.close_gone_charge` puts it —
  RunPod's bill, else its flow run's end, else its bound — or left open until one of those is known.

Charges are read for pods created within :func:`window_start` of now: the longest a pod of the pool may
run plus a day, so the read stays bounded. Before a worker writes a closed charge it reads the pod's
charge again and leaves it if someone (the pod's own worker, still alive) closed it meanwhile; should
both write, the newer version wins, and either is a closed charge of the same pod.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

import anyio
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound

from infra.runpod.api import RunPodClient
from infra.runpod.pod_reads import PodListCache
from infra.worker.pod_charge import close_charge, close_gone_charge, describe_charge
from jobs.costs import PodCharge
from tasks.cost_ledger import charge_artifact, read_open_charges, still_open

# How long the worker waits for RunPod's billing record of a gone pod before charging price × time.
BILLING_READ_SECONDS = 20.0
# Open charges are looked for among pods created up to this long before the pool's longest bound.
WINDOW_SLACK_HOURS = 24.0
# How recent a list of an account's pods tells whether an open charge's pod is still there.
POD_LIST_MAX_AGE_S = 5.0

Logger = logging.Logger | logging.LoggerAdapter
T = TypeVar("T")


async def read_pod_bill(client: RunPodClient, pod_id: str, logger: Logger) -> float | None:
    """RunPod's billed total for the pod (``GET /v2/billing/pods``), or None when it does not answer
    within :data:`BILLING_READ_SECONDS`. Never raises: price × time stands in for the bill."""
    billed = None
    with anyio.move_on_after(BILLING_READ_SECONDS) as billing_read:
        try:
            billed = await anyio.to_thread.run_sync(client.pod_billing_usd, pod_id, abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 - price × time stands in for the bill
            logger.warning("Cannot read RunPod's bill for pod %s (%s); charging price × time", pod_id, exc)
    if billing_read.cancelled_caught:
        logger.warning("RunPod's bill for pod %s did not come; charging price × time", pod_id)
    return billed


def window_start(longest_pod_hours: float, now: dt.datetime | None = None) -> dt.datetime:
    """The earliest creation time of a pod whose charge may still be open: the pool's longest bound
    (max_run_hours, else ttl_hours, over its defaults and deployments) plus a day."""
    now = now or dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=longest_pod_hours + WINDOW_SLACK_HOURS)


async def close_open_charges(
    *,
    prefect_client: PrefectClient,
    pod_lists: Mapping[RunPodClient, PodListCache],
    work_pool_name: str,
    watched_pod_ids: Collection[str],
    terminated: Mapping[str, tuple[RunPodClient, float]],
    since: dt.datetime,
    logger: Logger,
) -> list[PodCharge]:
    """Close the open charges of ``work_pool_name``'s pods created since ``since`` that nobody here
    watches and that are gone: ``terminated`` maps the pods the sweep just terminated to the account's
    client and the Unix time RunPod accepted the terminate. ``pod_lists`` are the accounts the pool
    uses. Returns the charges written."""
    charges = await _with_ledger(
        lambda ledger: read_open_charges(ledger, work_pool=work_pool_name, since=since)
    )
    closed: list[PodCharge] = []
    for charge in charges:
        if charge.pod_id in watched_pod_ids:
            continue
        if charge.pod_id in terminated:
            client, terminated_at = terminated[charge.pod_id]
            billed = await read_pod_bill(client, charge.pod_id, logger)
            done = close_charge(charge, ended_at=terminated_at, ended_by="sweep", billed_usd=billed)
        else:
            done = await _close_if_gone(prefect_client, pod_lists, charge, logger)
        if done is None:
            continue
        if not await _with_ledger(lambda ledger, charge=charge: still_open(ledger, charge)):
            continue  # its own worker closed it meanwhile
        try:
            await prefect_client.create_artifact(charge_artifact(done))
        except Exception as exc:  # noqa: BLE001 - tried again at the next sweep: the charge is still open
            logger.warning("Could not record the cost of pod %s in Prefect (%s)", charge.pod_id, exc)
            continue
        logger.info(
            "%s; recorded for a pod no worker watched to its end (%s)", describe_charge(done), done.ended_by
        )
        closed.append(done)
    return closed


async def _close_if_gone(
    prefect_client: PrefectClient,
    pod_lists: Mapping[RunPodClient, PodListCache],
    charge: PodCharge,
    logger: Logger,
) -> PodCharge | None:
    """The charge closed if its pod is gone from every account and its end can be told; else None."""
    if not pod_lists:
        return None  # no account known yet: nothing says the pod is gone
    for pod_list in pod_lists.values():
        try:
            pod = await anyio.to_thread.run_sync(pod_list.get_pod, charge.pod_id, POD_LIST_MAX_AGE_S)
        except Exception as exc:  # noqa: BLE001 - unreadable now: not gone, as far as we know
            logger.debug("Cannot tell whether pod %s is gone (%s)", charge.pod_id, exc)
            return None
        if pod is not None:
            return None  # still there: its worker, or the sweep, ends it
    billed = None
    for client in pod_lists:
        billed = await read_pod_bill(client, charge.pod_id, logger)
        if billed:
            break  # the pod's account; the others bill nothing for it
    return close_gone_charge(
        charge,
        billed_usd=billed,
        flow_run_end=await _flow_run_end(prefect_client, charge.flow_run_id, logger),
        now=time.time(),
    )


async def _flow_run_end(prefect_client: PrefectClient, flow_run_id: str, logger: Logger) -> float | None:
    """Unix time the flow run reached its final state; None while it has not (or cannot be read)."""
    try:
        flow_run = await prefect_client.read_flow_run(uuid.UUID(flow_run_id))
    except ObjectNotFound:
        return None
    except Exception as exc:  # noqa: BLE001 - looked at again at the next sweep
        logger.debug("Cannot read flow run %s (%s)", flow_run_id, exc)
        return None
    if flow_run.state is None or not flow_run.state.is_final() or flow_run.end_time is None:
        return None
    return flow_run.end_time.timestamp()


async def _with_ledger(read: Callable[[SyncPrefectClient], T]) -> T:
    """Run a ledger read (:mod:`tasks.cost_ledger` reads through Prefect's sync client) off the loop."""

    def in_thread() -> T:
        with get_client(sync_client=True) as ledger:
            return read(ledger)

    return await anyio.to_thread.run_sync(in_thread)
