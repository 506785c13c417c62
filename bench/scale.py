"""Scale: N short custom jobs through the whole control tier and server, production profile against the
embedded default.

Each profile runs in a child process of its own (fresh Prefect settings, fresh state), one after the other:

- ``production``: the production profile's server (``infra.production.server``, what ``scripts/production.py
  start`` runs: migrations, ``--api-workers`` API processes behind one URL, the services in a process of
  their own) on a fresh PostgreSQL database and a Redis database of its own, both dropped afterwards;
- ``embedded``: the embedded default's server (``prefect server start`` on SQLite, ``infra.local.stack``).

On each: the store block, the ``ow-control`` pool with one control worker (``local_stack.CONTROL_WORKER_TYPE``,
no limit), ``ow-gpu`` a ``runpod`` pool on the RunPod emulator with a concurrency limit of ``--limit`` and a
``runpod`` worker, and ``prefect deploy --all`` from prefect.yaml. Then ``--jobs`` runs of ``custom/run``
(the ``custom`` control flow; its GPU stage ``gpu-stage/custom`` runs ``python -c "print(...)"`` in an
emulated pod) are created through the Prefect client from ``--submitters`` threads, each with distinct
parameters (so a distinct job ID and never a cache hit), and waited for. Reported per profile:

- ``submissions_per_second``: jobs ÷ (end of the last submission − start of the first); ``submit_call_*_s``
  the seconds one ``create_flow_run_from_deployment`` call took (p50, p95, max: a busy SQLite shows there);
- ``completed`` of ``submitted`` (final states of the control runs), ``pods_created``, ``pods_left`` (pods
  still in the emulator once every run is final and the worker had a minute to clean up);
- ``submit_to_pod_p50_s`` / ``_p95_s``: control run created → first pod of its job. A pod names its GPU
  stage's flow run (``PREFECT__FLOW_RUN_ID`` in its env), the stage run and the control run both carry the
  job's tag ``ow-job:<job id>``, so pod → stage run → job → control run;
- ``pickup_p95_s`` against ``worker_poll_interval_s``: how long the ``runpod`` worker took to take a stage run
  (first Pending) from the moment it could have (Scheduled, and a slot free under the pool's concurrency
  limit: fewer than ``limit`` stage runs Pending or Running). ``scheduled_to_pending_p95_s`` is the same
  without discounting the wait for a slot, ``pending_to_pod_p95_s`` the worker's own launch time;
- ``control_tier_peak_rss_mb``: the control worker and all its child processes, sampled every 0.5 s;
  ``control_tier_idle_rss_mb`` the same before the first submission; ``peak_in_flight`` the most control
  runs Running at once (from their start and end times; ``in_flight_at_peak_rss`` those Running when the
  peak was sampled); ``mb_per_job_in_flight`` = (peak − idle) ÷ peak in flight;
- ``server_cpu_s``: user + system CPU of the server's process trees (API processes and services) from the
  first submission to the end (``server_peak_rss_mb`` their memory); ``database_cpu_s`` (production) that of
  PostgreSQL and Redis on this machine over the same time, whoever else used them;
- ``wall_s``: first submission → every control run final.

The last line is one JSON object: ``metric`` ``submissions_per_second_ratio`` (production ÷ embedded),
``baseline`` the embedded default's submissions per second, ``target`` 10, and each profile's figures.
Acceptance: on PostgreSQL every job completes, no pod is left, and submissions are ≥ 10× faster.

    python bench/scale.py [--profile production|embedded|both] [--jobs 1000] [--embedded-jobs 200]
                          [--limit 100] [--submitters 8] [--poll-seconds 2] [--api-workers 2] [--timeout 5400]
                          [--control-worker-type process] [--keep]

``--control-worker-type process`` runs the control tier as it was (one process per control flow run) for
comparison. ``--poll-seconds`` is both workers' ``PREFECT_WORKER_QUERY_SECONDS``. Ctrl-C or SIGTERM stops
everything the run started (servers, workers, pods, the emulator) and drops its databases.

Pods are local processes here, at niceness 10 (``--pod-niceness``; a niced pod stays in the emulator's
session, where niceness counts: see ``tests/fixtures/emulated_pods.py``), and run Prefect's engine
directly (``python -m prefect.engine``, as ``bench/worker_scale.py`` does) rather than the worker's
default three-process command, so that the machine's cores go to what is measured: the control tier
and the server. At 19 the pods starved (400 jobs: 100 pods up, none done after 6 min).
State (logs) lives in a temporary directory, removed unless the run fell short or ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_right
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTROL_DEPLOYMENT = "custom/run"
STAGE_DEPLOYMENT = "gpu-stage/custom"
FINAL_TYPES = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
TARGET_RATIO = 10
SAMPLE_SECONDS = 0.5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the parent: one child process per profile, then the comparison ------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=["production", "embedded", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs on the production profile")
    parser.add_argument("--embedded-jobs", type=int, default=200, help="jobs on the embedded default")
    parser.add_argument("--limit", type=int, default=100, help="concurrency limit of the runpod pool ow-gpu")
    parser.add_argument("--submitters", type=int, default=8, help="threads creating flow runs at once")
    parser.add_argument(
        "--poll-seconds", type=float, default=2, help="the workers' PREFECT_WORKER_QUERY_SECONDS"
    )
    parser.add_argument(
        "--api-workers", type=int, default=2, help="production: API processes behind the one URL"
    )
    parser.add_argument("--timeout", type=float, default=5400, help="seconds to wait for a profile's runs")
    parser.add_argument(
        "--pod-command", default="python -m prefect.engine", help="the flow-run command in pods"
    )
    parser.add_argument(
        "--pod-niceness",
        type=int,
        default=10,
        help="niceness of the emulated pods' processes (they stand for other machines)",
    )
    parser.add_argument(
        "--control-worker-type",
        default=None,
        help="the control pool's worker type (default: local_stack.CONTROL_WORKER_TYPE; 'process' for the old tier)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each profile's state directory (logs)")
    parser.add_argument("--child", choices=["production", "embedded"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    try:
        if args.child:
            _unwind_on_signals()
            print(json.dumps(run_profile(args.child, args)), flush=True)
            return
        signal.signal(signal.SIGTERM, _interrupted)  # the child tears its profile down (see run_child)
        profiles = ["production", "embedded"] if args.profile == "both" else [args.profile]
        results = {profile: run_child(profile, args) for profile in profiles}
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'}); everything started was stopped")
        sys.exit(130)
    print(json.dumps(summary(results)), flush=True)


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _unwind_on_signals() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (servers, workers, pods, databases) runs; once
    unwinding, further SIGINTs and SIGTERMs (a second Ctrl-C, the parent passing one on) are ignored so
    that they cannot cut the tear-down short."""

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _interrupted(signum, frame)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def run_child(profile: str, args: argparse.Namespace) -> dict:
    """Run one profile in a child process, passing its output through; its result (last line)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", profile]
    for name in (
        "jobs",
        "embedded_jobs",
        "limit",
        "submitters",
        "poll_seconds",
        "api_workers",
        "timeout",
        "pod_command",
        "pod_niceness",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.control_worker_type:
        command += ["--control-worker-type", args.control_worker_type]
    if args.keep:
        command.append("--keep")
    log(f"profile {profile}: starting")
    lines: list[str] = []
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=REPO_ROOT)

    def pass_through() -> None:  # in a thread, so the child's lines keep coming while it tears down
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip():
                lines.append(line.strip())

    pump = threading.Thread(target=pass_through, name=f"{profile}-output", daemon=True)
    pump.start()
    try:
        child.wait()
    finally:
        if child.poll() is None:  # interrupted: the child tears its stack down (it ignores more signals)
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=300)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        pump.join(timeout=10)
    last = lines[-1] if lines else ""
    try:
        result = json.loads(last)
    except ValueError:
        result = {"error": f"the {profile} run printed no result (exit code {child.returncode})"}
    if child.returncode != 0:
        result.setdefault("error", f"the {profile} run exited with code {child.returncode}")
    return result


def summary(results: dict[str, dict]) -> dict:
    production = results.get("production", {})
    embedded = results.get("embedded", {})
    prod_rate = production.get("submissions_per_second")
    emb_rate = embedded.get("submissions_per_second")
    ratio = round(prod_rate / emb_rate, 2) if prod_rate and emb_rate else None
    if "production" in results and "embedded" in results:
        head = {
            "metric": "submissions_per_second_ratio",
            "value": ratio,
            "unit": "ratio",
            "baseline": emb_rate,
        }
        head["ratio"] = ratio
    else:
        ((profile, only),) = results.items()
        head = {
            "metric": f"submissions_per_second_{profile}",
            "value": only.get("submissions_per_second"),
            "unit": "submissions/s",
            "baseline": None,
            "ratio": None,
        }
    accepted = None
    if production and "error" not in production:
        accepted = (
            production.get("completed") == production.get("submitted")
            and production.get("pods_left") == 0
            and ratio is not None  # without the embedded default run there is nothing to compare
            and ratio >= TARGET_RATIO
        )
    return {**head, "target": TARGET_RATIO, "acceptance_met": accepted, **results}


# -- the child: one profile, start to end ---------------------------------------------------------------


def configure_environment(root: Path) -> str:
    """Settings Prefect reads at import, so this runs before anything imports Prefect; the API's URL."""
    sys.path.insert(0, str(REPO_ROOT))
    from infra.local import stack as local_stack

    url = local_stack.api_url(local_stack.free_port())
    (root / "home").mkdir(parents=True)
    os.environ.update(
        {
            "PREFECT_HOME": str(root / "prefect-client"),
            "PREFECT_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "OW_HOME": str(root / "ow"),
            "HOME": str(root / "home"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    os.chdir(REPO_ROOT)
    return url


def run_profile(profile: str, args: argparse.Namespace) -> dict:
    jobs = args.jobs if profile == "production" else args.embedded_jobs
    root = Path(tempfile.mkdtemp(prefix=f"ow-bench-scale-{profile}-"))
    url = configure_environment(root)
    started = time.monotonic()
    log(
        f"{profile}: {jobs} jobs, runpod pool limit {args.limit}, {args.submitters} submitters; state in {root}"
    )
    result: dict = {"profile": profile, "submitted": jobs}
    with ExitStack() as stack:
        try:
            server_pids = start_server(profile, url, root, args, stack)
            result.update(measure(profile, url, root, jobs, server_pids, args, stack))
        except KeyboardInterrupt:
            log(f"{profile}: interrupted (logs in {root / 'logs'})")
            raise
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{profile}: FAILED: {result['error']} (logs in {root / 'logs'})")
        finally:
            log(f"{profile}: stopping everything")
    result["total_s"] = round(time.monotonic() - started, 1)
    short = "error" in result or result.get("completed") != jobs or result.get("pods_left") != 0
    if args.keep or short:
        result["state_dir"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    log(f"{profile}: done in {result['total_s']:.0f} s")
    return result


def start_server(profile: str, url: str, root: Path, args: argparse.Namespace, stack: ExitStack) -> list[int]:
    """The profile's server, stopped (and its databases dropped) when ``stack`` closes; its root pids."""
    from infra.local import stack as local_stack

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    if profile == "embedded":
        server = local_stack.start_server(
            root / "prefect-server", port, root / "logs" / "server.log", ui=False
        )
        stack.callback(_stop, server)
        local_stack.wait_healthy(url, timeout=180, process=server)
        log(f"embedded default (SQLite) up at {url}")
        return [server.pid]

    from infra.production.server import start_production_server
    from tests.fixtures.production import fresh_postgres_database, fresh_redis_database

    database_url = stack.enter_context(fresh_postgres_database())
    redis_url = stack.enter_context(fresh_redis_database())
    log(f"production profile: database {database_url.rsplit('/', 1)[1]}, Redis {redis_url}; migrating")
    server = start_production_server(
        database_url,
        redis_url,
        prefect_home=root / "prefect-server",
        log_dir=root / "logs",
        port=port,
        api_workers=args.api_workers,
        ui=False,
    )
    stack.callback(server.stop)
    log(f"production profile up at {url} ({args.api_workers} API processes + services)")
    return [server.api.pid, server.services.pid]


def _stop(process: subprocess.Popen) -> None:
    from infra.local import stack as local_stack

    local_stack.stop_process(process.pid)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def start_project(root: Path, args: argparse.Namespace, stack: ExitStack):
    """Store block, pools, workers, deployments; the emulator, the control worker and the runpod worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from blocks.storage import load_store_block
    from infra.local import stack as local_stack
    from tests.fixtures.runpod import create_runpod_pool, make_emulator, start_worker_process

    load_store_block()  # this server's default store: a fresh directory under $OW_HOME
    emulator = stack.enter_context(make_emulator(root, pod_niceness=args.pod_niceness))
    create_runpod_pool(
        emulator,
        name=local_stack.GPU_POOL,
        command=args.pod_command,
        poll_interval_seconds=5,
        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    with get_client(sync_client=True) as client:
        client.update_work_pool(local_stack.GPU_POOL, WorkPoolUpdate(concurrency_limit=args.limit))

    control_type = args.control_worker_type or getattr(local_stack, "CONTROL_WORKER_TYPE", "process")
    if control_type == getattr(local_stack, "CONTROL_WORKER_TYPE", None) and hasattr(
        local_stack, "ensure_control_pool"
    ):
        local_stack.ensure_control_pool()
    elif control_type == "process":
        local_stack.ensure_process_pool(local_stack.CONTROL_POOL)
    else:
        raise ValueError(
            f"--control-worker-type {control_type!r}: this bench knows how to make its pool only for process"
        )
    poll = _seconds(args.poll_seconds)
    env = local_stack.worker_env({**os.environ, "PREFECT_WORKER_QUERY_SECONDS": poll})
    control_name = f"bench-control-{uuid.uuid4().hex[:6]}"
    control = local_stack.start_worker(
        local_stack.CONTROL_POOL,
        control_type,
        root / "logs" / "worker-control.log",
        env=env,
        name=control_name,
        limit=None,
    )
    stack.callback(_stop, control)
    try:
        local_stack.deploy_project(env=env)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"prefect deploy --all failed:\n{(exc.stdout or '')[-2000:]}\n{(exc.stderr or '')[-2000:]}"
        ) from None
    log(f"deployments created; control worker ({control_type}) pid {control.pid}")
    wait_worker_online(local_stack.CONTROL_POOL, control_name, control)

    runpod_worker = start_worker_process(
        local_stack.GPU_POOL,
        root / "logs",
        PREFECT_WORKER_QUERY_SECONDS=poll,
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        OW_RUNPOD_SWEEP_INTERVAL_SECONDS="30",
        OW_RUNPOD_CATALOG_MAX_AGE_SECONDS="300",
    )
    stack.callback(runpod_worker.stop)
    log(f"runpod worker {runpod_worker.name} online; RunPod emulator at {emulator.url}")
    return emulator, control, runpod_worker, control_type


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def wait_worker_online(pool: str, name: str, process: subprocess.Popen, timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the {pool} worker exited with code {process.returncode}")
            if any(w.name == name and w.status == "ONLINE" for w in client.read_workers_for_work_pool(pool)):
                return
            time.sleep(0.5)
    raise TimeoutError(f"the {pool} worker did not come online within {timeout:.0f} s")


def measure(
    profile: str,
    url: str,
    root: Path,
    jobs: int,
    server_pids: list[int],
    args: argparse.Namespace,
    stack: ExitStack,
) -> dict:
    from prefect.client.orchestration import get_client

    emulator, control, runpod_worker, control_type = start_project(root, args, stack)
    with get_client(sync_client=True) as client:
        control_deployment = client.read_deployment_by_name(CONTROL_DEPLOYMENT)
        stage_deployment = client.read_deployment_by_name(STAGE_DEPLOYMENT)

    sampler = Sampler(control.pid, server_pids)
    idle_rss_mb = sampler.idle_rss_mb()
    log(f"control tier at rest: {idle_rss_mb:.0f} MB")
    database_cpu_before = database_cpu_s() if profile == "production" else None
    server_cpu_before = sum(tree_cpu_s(pid) for pid in server_pids)
    sampler.start()
    stack.callback(sampler.stop)

    submitted, latencies, retries, submit_started, submit_ended = submit_all(
        control_deployment.id, jobs, args.submitters
    )
    rate = jobs / (submit_ended - submit_started)
    log(f"submitted {jobs} jobs in {submit_ended - submit_started:.1f} s ({rate:.1f}/s, {retries} retried)")

    all_final_at = wait_for_all(control_deployment.id, jobs, args.timeout, submit_started, emulator)
    drain_deadline = time.monotonic() + 60  # the worker ends the last pods within a poll or two
    while emulator.pods() and time.monotonic() < drain_deadline:
        time.sleep(1)
    server_cpu = sum(tree_cpu_s(pid) for pid in server_pids) - server_cpu_before
    database_cpu = database_cpu_s() - database_cpu_before if database_cpu_before is not None else None
    samples = sampler.stop()
    pods = emulator.pods(include_terminated=True)
    pods_left = len(emulator.pods())
    runpod_worker_rss = runpod_worker.peak_rss_mb()

    log("reading back runs and states")
    with get_client(sync_client=True) as client:
        controls = read_runs_by_id(client, list(submitted))
        stages = read_deployment_runs(client, stage_deployment.id)
        stage_states = {run.id: client.read_flow_run_states(run.id) for run in stages}

    figures = compute(
        submitted=submitted,
        controls=controls,
        stages=stages,
        stage_states=stage_states,
        pods=pods,
        samples=samples,
        idle_rss_mb=idle_rss_mb,
        limit=args.limit,
    )
    final = [run.state.type.value if run.state else "NONE" for run in controls]
    return {
        "api_url": url,
        "control_worker_type": control_type,
        "completed": final.count("COMPLETED"),
        "final_states": {state: final.count(state) for state in sorted(set(final))},
        "pods_created": len(pods),
        "pods_left": pods_left,
        "submissions_per_second": round(rate, 2),
        "submit_s": round(submit_ended - submit_started, 2),
        "submit_call_p50_s": _pct(latencies, 50),
        "submit_call_p95_s": _pct(latencies, 95),
        "submit_call_max_s": round(max(latencies), 2),
        "submit_retries": retries,
        "submitters": args.submitters,
        **figures,
        "worker_poll_interval_s": args.poll_seconds,
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_s_per_job": round(server_cpu / jobs, 3),
        "database_cpu_s": round(database_cpu, 1) if database_cpu is not None else None,
        "runpod_worker_peak_rss_mb": round(runpod_worker_rss, 1),
        "wall_s": round(all_final_at - submit_started, 1),
        "concurrency_limit": args.limit,
        "pod_command": args.pod_command,
    }


# -- submitting and waiting ------------------------------------------------------------------------------


def job_parameters(index: int, token: str) -> dict:
    """``custom/run`` parameters of a short custom job; ``index`` and ``token`` make its job ID its own."""
    return {
        "name": "bench_scale",
        "params": {"index": index, "bench": token},
        "entrypoint": ["python", "-c", f"print('bench job {index}')"],
        "requires_vram_gb": 0,
    }


def submit_all(deployment_id, jobs: int, submitters: int) -> tuple[dict, list[float], int, float, float]:
    """Create ``jobs`` flow runs from ``submitters`` threads, each with a client of its own opened before
    the clock starts; {run id: created (epoch s)}, each call's seconds, retries, and when the first began
    and the last ended."""
    from prefect.client.orchestration import get_client

    token = uuid.uuid4().hex[:12]
    submitted: dict = {}
    latencies: list[float] = []
    retries = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []
    ready = threading.Barrier(submitters + 1)

    def submit(indices: range) -> None:
        try:
            with get_client(sync_client=True) as client:
                client.api_healthcheck()  # connected before the clock starts
                ready.wait()
                for index in indices:
                    began = time.monotonic()
                    run, retried = create_flow_run(client, deployment_id, job_parameters(index, token))
                    with lock:
                        submitted[run.id] = run.created.timestamp()
                        latencies.append(time.monotonic() - began)
                        retries[0] += retried
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)
            ready.abort()

    threads = [
        threading.Thread(
            target=submit, args=(range(k, jobs, submitters),), name=f"submitter-{k}", daemon=True
        )
        for k in range(submitters)
    ]
    for thread in threads:
        thread.start()
    try:
        ready.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    started = time.time()
    for thread in threads:
        thread.join()
    ended = time.time()
    if errors:
        raise RuntimeError(f"{len(errors)} submitter(s) failed; first: {errors[0]!r}") from errors[0]
    return submitted, latencies, retries[0], started, ended


def create_flow_run(client, deployment_id, parameters: dict):
    """Create a flow run, retrying what a busy server answers (5xx, a dropped connection); (run, retries)."""
    import httpx

    for attempt in range(8):
        try:
            return client.create_flow_run_from_deployment(deployment_id, parameters=parameters), attempt
        except (httpx.HTTPStatusError, httpx.TransportError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", 0)
            if (status and status < 500) or attempt == 7:
                raise
            time.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable")


def wait_for_all(deployment_id, jobs: int, timeout: float, since: float, emulator) -> float:
    """Poll until every control run of the deployment is final (or ``timeout``); when that was (epoch s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    deployments = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))

    def count(client, types: list[str]) -> int:
        state = FlowRunFilterState(type=FlowRunFilterStateType(any_=types))
        return client.count_flow_runs(
            deployment_filter=deployments, flow_run_filter=FlowRunFilter(state=state)
        )

    last_report = 0.0
    with get_client(sync_client=True) as client:
        while True:
            elapsed = time.time() - since
            try:
                final = count(client, FINAL_TYPES)
                running = count(client, ["RUNNING"]) if elapsed - last_report >= 15 else None
            except Exception as exc:  # noqa: BLE001 - the bench's own look; an overloaded server may 500
                # (measured: QueuePool timeouts at 1,000 jobs). The jobs' fate is read at the end.
                log(f"progress not readable ({type(exc).__name__}: {str(exc)[:120]}); looking again")
                time.sleep(5)
                continue
            if final >= jobs or elapsed > timeout:
                log(f"{final}/{jobs} jobs final after {elapsed:.0f} s")
                return time.time()
            if running is not None:
                last_report = elapsed
                live = len(emulator.pods())
                made = len(emulator.pods(include_terminated=True))
                log(
                    f"{final}/{jobs} jobs final, {running} control runs running, {live} pods up, {made} made ({elapsed:.0f} s)"
                )
            time.sleep(2)


def read_runs_by_id(client, run_ids: list) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = []
    for start in range(0, len(run_ids), 200):
        chunk = run_ids[start : start + 200]
        runs += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=200
        )
    return runs


def read_deployment_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deployments = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    runs: list = []
    while True:
        page = client.read_flow_runs(
            deployment_filter=deployments, sort=FlowRunSort.ID_DESC, limit=200, offset=len(runs)
        )
        runs += page
        if len(page) < 200:
            return runs


# -- the figures -----------------------------------------------------------------------------------------


def compute(*, submitted, controls, stages, stage_states, pods, samples, idle_rss_mb, limit) -> dict:
    def job_of(run) -> str | None:
        return next((tag.split(":", 1)[1] for tag in run.tags or [] if tag.startswith("ow-job:")), None)

    # pod → stage run → job → control run: submit → first pod of the job
    first_pod_of_run: dict[str, float] = {}
    for pod in pods:
        run_id = pod.env.get("PREFECT__FLOW_RUN_ID")
        if run_id:
            first_pod_of_run[run_id] = min(pod.created_at, first_pod_of_run.get(run_id, float("inf")))
    first_pod_of_job: dict[str, float] = {}
    for stage in stages:
        job = job_of(stage)
        if job and str(stage.id) in first_pod_of_run:
            first_pod_of_job[job] = min(
                first_pod_of_run[str(stage.id)], first_pod_of_job.get(job, float("inf"))
            )
    submit_to_pod = [
        first_pod_of_job[job] - submitted[run.id]
        for run in controls
        if (job := job_of(run)) in first_pod_of_job
    ]

    # The runpod worker's pickup, discounting the wait for a slot under the pool's concurrency limit.
    timeline = []  # (scheduled, pending, end) of every stage run
    for stage in stages:
        states = stage_states[stage.id]
        scheduled = _first(states, "SCHEDULED") or stage.created.timestamp()
        pending = _first(states, "PENDING")
        end = min(
            (s.timestamp.timestamp() for s in states if s.type.value in FINAL_TYPES), default=float("inf")
        )
        timeline.append((scheduled, pending, end))
    slots = SlotTimeline([(p, e) for _, p, e in timeline if p is not None])
    pickup = [p - slots.free_slot_at(s, p, limit) for s, p, _ in timeline if p is not None]
    scheduled_to_pending = [p - s for s, p, _ in timeline if p is not None]
    pending_to_pod = [
        first_pod_of_run[str(stage.id)] - pending
        for stage, (_, pending, _) in zip(stages, timeline, strict=True)
        if pending is not None and str(stage.id) in first_pod_of_run
    ]

    # Control runs in flight (Running): from their start and end times.
    intervals = [
        (run.start_time.timestamp(), run.end_time.timestamp() if run.end_time else float("inf"))
        for run in controls
        if run.start_time
    ]
    peak_in_flight = max_overlap(intervals)
    peak_sample = max(samples, key=lambda s: s[1], default=None)
    peak_rss = peak_sample[1] if peak_sample else None
    in_flight_at_peak = sum(1 for a, b in intervals if a <= peak_sample[0] < b) if peak_sample else None
    return {
        "submit_to_pod_p50_s": _pct(submit_to_pod, 50),
        "submit_to_pod_p95_s": _pct(submit_to_pod, 95),
        "jobs_with_pod": len(submit_to_pod),
        "gpu_stage_runs": len(stages),
        "pickup_p95_s": _pct(pickup, 95),
        "pickup_p50_s": _pct(pickup, 50),
        "scheduled_to_pending_p95_s": _pct(scheduled_to_pending, 95),
        "pending_to_pod_p95_s": _pct(pending_to_pod, 95),
        "control_tier_idle_rss_mb": round(idle_rss_mb, 1),
        "control_tier_peak_rss_mb": round(peak_rss, 1) if peak_rss is not None else None,
        "control_tier_peak_processes": max((s[2] for s in samples), default=None),
        "peak_in_flight": peak_in_flight,
        "in_flight_at_peak_rss": in_flight_at_peak,
        "mb_per_job_in_flight": round((peak_rss - idle_rss_mb) / peak_in_flight, 2)
        if peak_rss is not None and peak_in_flight
        else None,
        "server_peak_rss_mb": round(max((s[3] for s in samples), default=0), 1),
    }


def _first(states, state_type: str) -> float | None:
    times = [s.timestamp.timestamp() for s in states if s.type.value == state_type]
    return min(times) if times else None


def _pct(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1], 2)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1])
    )
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


class SlotTimeline:
    """How many stage runs hold a slot of the pool's concurrency limit (Pending to final) over time."""

    def __init__(self, occupied: list[tuple[float, float]]):
        # ends before starts at the same instant: a slot freed and taken at once was free
        self.events = sorted(
            [(p, 1) for p, _ in occupied] + [(e, -1) for _, e in occupied if e != float("inf")]
        )
        self.times = [t for t, _ in self.events]
        self.held_after = []
        held = 0
        for _, step in self.events:
            held += step
            self.held_after.append(held)

    def free_slot_at(self, scheduled: float, pending: float, limit: int) -> float:
        """The first moment from ``scheduled`` on (and not after the run's own ``pending``) at which fewer
        than ``limit`` stage runs held a slot: when the pool's limit would let a worker take one more run."""
        index = bisect_right(self.times, scheduled)
        held = self.held_after[index - 1] if index else 0
        if held < limit:
            return scheduled
        for position in range(index, len(self.events)):
            t = self.events[position][0]
            if t >= pending:
                break
            if self.held_after[position] < limit:
                return t
        return pending


# -- processes: memory and CPU ---------------------------------------------------------------------------


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """Resident memory of a process and all its descendants (MB), and how many processes that is."""
    import psutil

    total, count = 0, 0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20, count


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process tree: the live processes' and what its reaped children used."""
    import psutil

    total = 0.0
    tree = _tree(pid)
    for process in tree:
        try:
            times = process.cpu_times()
            total += times.user + times.system
            if process is tree[0]:
                total += times.children_user + times.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def database_cpu_s() -> float:
    """CPU seconds PostgreSQL and Redis on this machine have used (every client's, not only ours)."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["name", "ppid"]):
        name = process.info["name"] or ""
        if name.startswith("redis-server") or (name == "postgres" and process.info["ppid"] == 1):
            total += tree_cpu_s(process.pid)
    return total


class Sampler:
    """Samples the control tier's and the servers' resident memory every :data:`SAMPLE_SECONDS`."""

    def __init__(self, control_pid: int, server_pids: list[int]):
        self.control_pid = control_pid
        self.server_pids = server_pids
        self.samples: list[tuple[float, float, int, float]] = []  # (time, control MB, processes, server MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def idle_rss_mb(self, seconds: float = 3) -> float:
        readings = []
        for _ in range(max(1, int(seconds / SAMPLE_SECONDS))):
            readings.append(tree_rss_mb(self.control_pid)[0])
            time.sleep(SAMPLE_SECONDS)
        return statistics.median(readings)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            control_mb, processes = tree_rss_mb(self.control_pid)
            server_mb = sum(tree_rss_mb(pid)[0] for pid in self.server_pids)
            self.samples.append((time.time(), control_mb, processes, server_mb))
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> list[tuple[float, float, int, float]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        return self.samples


if __name__ == "__main__":
    main()
