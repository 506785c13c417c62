"""Worker scale: many flow runs through one ``runpod`` worker into emulated pods, with a concurrency limit.

Starts its own Prefect server (``infra.local.stack``), RunPod emulator and ``runpod`` worker, deploys a
tiny flow to a ``runpod`` pool whose concurrency limit is ``--limit``, submits ``--runs`` flow runs and
waits for all of them. Reports how many completed, how many pods are left, the median time from
submission to pod creation (queueing behind the limit included) and from the worker's Pending to pod
creation (the worker's own latency), and the worker's peak resident memory. The last line of output
is one JSON object.

A stock-out is injected on the way: ``--stockout-after`` seconds after the first submission every GPU
type of the pool goes out of stock in the emulator for ``--stockout-seconds`` (0 disables it). Runs
that find no stock wait (``AwaitingCapacity``) instead of crashing; the report says how many waited
and for how long (first wait to pod creation).

    python bench/worker_scale.py [--runs 200] [--limit 20] [--pod-command "python -m prefect.engine"]
                                 [--stockout-after 20] [--stockout-seconds 90]

Pods run on this machine, at niceness 10 so they do not starve the worker and server (on RunPod they
run elsewhere). By default their flow-run command is ``python -m prefect.engine`` (one Python process
per run) rather than the worker's default ``prefect flow-run execute`` (three: supervisor, workspace
supervisor, engine): what is measured is the worker, and the lighter command keeps a 2-core machine
and its SQLite Prefect database from becoming the bottleneck. The tests cover the default command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT = Path(tempfile.mkdtemp(prefix="ow-bench-worker-scale-"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def configure_environment() -> str:
    """Settings Prefect reads at import, so this runs before anything imports Prefect."""
    sys.path.insert(0, str(REPO_ROOT))
    from infra.local import stack as local_stack

    port = local_stack.free_port()
    (ROOT / "home").mkdir(parents=True)
    os.environ.update(
        {
            "PREFECT_HOME": str(ROOT / "prefect-client"),
            "PREFECT_API_URL": local_stack.api_url(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "1",
            "HOME": str(ROOT / "home"),
        }
    )
    os.chdir(REPO_ROOT)  # deployment entrypoints are relative to here, as in the pod's working directory
    return local_stack.api_url(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20, help="work pool concurrency limit")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for all runs")
    parser.add_argument(
        "--pod-command", default="python -m prefect.engine", help="the flow-run command in pods"
    )
    parser.add_argument("--stockout-after", type=float, default=20, help="seconds after the first submission")
    parser.add_argument(
        "--stockout-seconds", type=float, default=90, help="length of the stock-out (0: none)"
    )
    args = parser.parse_args()

    api_url = configure_environment()
    from infra.local import stack as local_stack

    server = local_stack.start_server(
        ROOT / "server", int(api_url.rsplit(":", 1)[1].split("/")[0]), ROOT / "server.log", ui=False
    )
    try:
        local_stack.wait_healthy(api_url, timeout=180, process=server)
        log(f"Prefect server up at {api_url}; state in {ROOT}")
        result = run_benchmark(
            args.runs, args.limit, args.timeout, args.pod_command, args.stockout_after, args.stockout_seconds
        )
    finally:
        local_stack.stop_process(server.pid)
    print(json.dumps(result))


def inject_stockout(emulator, gpu_types: list[str], after_s: float, seconds: float) -> threading.Thread:
    """Take every GPU type of the pool out of stock ``after_s`` from now, for ``seconds``."""

    def stock_out() -> None:
        time.sleep(after_s)
        for gpu in gpu_types:
            emulator.set_capacity(gpu, 0)
        log(f"stock-out: no {', '.join(gpu_types)} for {seconds:.0f} s")
        time.sleep(seconds)
        emulator.capacity.clear()
        log("stock-out over: GPUs are back in stock")

    thread = threading.Thread(target=stock_out, name="stock-out", daemon=True)
    thread.start()
    return thread


def capacity_waits(client, flow_run_ids, pod_created: dict[str, float]) -> list[float]:
    """For each run that waited for capacity: seconds from its first AwaitingCapacity state to its pod."""
    from infra.runpod.capacity import AWAITING_CAPACITY

    waits = []
    for run_id in flow_run_ids:
        first = [s.timestamp for s in client.read_flow_run_states(run_id) if s.name == AWAITING_CAPACITY]
        if first and str(run_id) in pod_created:
            waits.append(pod_created[str(run_id)] - min(first).timestamp())
    return waits


def run_benchmark(
    runs: int, limit: int, timeout: float, pod_command: str, stockout_after: float, stockout_seconds: float
) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from tests import runpod_flows
    from tests.fixtures.runpod import (
        TEST_GPU_TYPES,
        create_runpod_pool,
        deploy_to_pool,
        make_emulator,
        start_worker_process,
    )

    with make_emulator(ROOT, pod_niceness=10) as emulator:
        log(f"RunPod emulator at {emulator.url}")
        pool = create_runpod_pool(
            emulator, poll_interval_seconds=5, command=pod_command, capacity_retry_seconds=5
        )
        with get_client(sync_client=True) as client:
            client.update_work_pool(pool.name, WorkPoolUpdate(concurrency_limit=limit))
        deployment_name = deploy_to_pool(runpod_flows.say_hello, pool.name)
        log(f"deployed {deployment_name}")
        worker = start_worker_process(
            pool.name,
            ROOT / "workers",
            OW_RUNPOD_SWEEP_INTERVAL_SECONDS="30",
            PREFECT_WORKER_QUERY_SECONDS="2",
        )
        log(f"worker {worker.name} online for pool {pool.name} (concurrency limit {limit})")
        try:
            if stockout_seconds > 0:
                inject_stockout(emulator, TEST_GPU_TYPES, stockout_after, stockout_seconds)
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(deployment_name)
                submitted = {}
                for index in range(runs):
                    flow_run = create_flow_run(client, deployment.id, {"name": f"run-{index}"})
                    submitted[flow_run.id] = flow_run.created.timestamp()
                log(f"submitted {runs} flow runs in {time.time() - min(submitted.values()):.0f} s")
                final = wait_for_all(
                    client, DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])), runs, timeout
                )
                pending_at = {run_id: first_pending_time(client, run_id) for run_id in submitted}
            deadline = time.monotonic() + 60  # the worker terminates the last pods within a poll or two
            while emulator.pods() and time.monotonic() < deadline:
                time.sleep(1)
            peak_rss_mb = worker.peak_rss_mb()
        finally:
            worker.stop()
        pods_left = len(emulator.pods())
        pod_created = {
            p.env.get("PREFECT__FLOW_RUN_ID"): p.created_at for p in emulator.pods(include_terminated=True)
        }
        with get_client(sync_client=True) as client:
            waits = capacity_waits(client, list(submitted), pod_created)

    submit_to_pod = [pod_created[str(i)] - t for i, t in submitted.items() if str(i) in pod_created]
    pending_to_pod = [
        pod_created[str(i)] - pending_at[i] for i in submitted if str(i) in pod_created and pending_at[i]
    ]
    completed = sum(1 for state in final.values() if state == "COMPLETED")
    median_submit_to_pod = round(statistics.median(submit_to_pod), 2) if submit_to_pod else None
    return {
        "metric": "median_submit_to_pod_s",
        "value": median_submit_to_pod,
        "unit": "s",
        "submitted": runs,
        "completed": completed,
        "pods_left": pods_left,
        "median_submit_to_pod_s": median_submit_to_pod,
        "median_pending_to_pod_s": round(statistics.median(pending_to_pod), 2) if pending_to_pod else None,
        "p95_pending_to_pod_s": round(sorted(pending_to_pod)[int(0.95 * (len(pending_to_pod) - 1))], 2)
        if pending_to_pod
        else None,
        "worker_peak_rss_mb": round(peak_rss_mb, 1),
        "pods_created": len(pod_created),
        "runs_waited_for_capacity": len(waits),
        "median_capacity_wait_s": round(statistics.median(waits), 1) if waits else None,
        "max_capacity_wait_s": round(max(waits), 1) if waits else None,
        "stockout": {"after_s": stockout_after, "seconds": stockout_seconds},
        "concurrency_limit": limit,
        "pod_command": pod_command,
        "final_states": {
            state: sum(1 for s in final.values() if s == state) for state in sorted(set(final.values()))
        },
    }


def create_flow_run(client, deployment_id, parameters: dict):
    """Create a flow run, retrying what the SQLite-backed server answers while it is busy (503)."""
    import httpx

    for attempt in range(8):
        try:
            return client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code < 500 or attempt == 7:
                raise
            log(f"server busy ({exc.response.status_code}); retrying the submission")
            time.sleep(2**attempt)


def wait_for_all(client, deployment_filter, runs: int, timeout: float) -> dict:
    """Poll until every flow run of the deployment is final; their final state types by id."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    final_types = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
    started, last_report = time.monotonic(), 0.0
    while True:
        final = {}
        offset = 0
        while True:
            page = client.read_flow_runs(
                deployment_filter=deployment_filter,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=final_types))
                ),
                limit=200,
                offset=offset,
            )
            final.update({run.id: run.state.type.value for run in page})
            offset += len(page)
            if len(page) < 200:
                break
        elapsed = time.monotonic() - started
        if len(final) >= runs or elapsed > timeout:
            log(f"{len(final)}/{runs} flow runs final after {elapsed:.0f} s")
            return final
        if elapsed - last_report >= 15:
            last_report = elapsed
            log(f"{len(final)}/{runs} flow runs final after {elapsed:.0f} s")
        time.sleep(2)


def first_pending_time(client, flow_run_id) -> float | None:
    pending = [s.timestamp for s in client.read_flow_run_states(flow_run_id) if s.type.value == "PENDING"]
    return min(pending).timestamp() if pending else None


if __name__ == "__main__":
    main()
