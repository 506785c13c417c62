"""Start, stop or show the production profile: a Prefect server on PostgreSQL and Redis, and the workers.

    python scripts/production.py start --database-url postgresql://user:password@host:5432/prefect \\
                                       --redis-url redis://host:6379/0 [--api-workers 2] [--port 4200]
    python scripts/production.py stop
    python scripts/production.py status
    python scripts/production.py setup [--gpu-pool-type runpod]   # pools, store block, deployments only
    python scripts/production.py worker control|gpu [--gpu-pool-type runpod]   # one worker, in the foreground

`make production DATABASE_URL=… REDIS_URL=…` runs `start`. It prepares the database (migrations, block
types; once), starts `--api-workers` API processes behind one URL and the background services in a
process of their own (infra/production/server.py), then, as `make start` does for the embedded
default, the store block, the `ow-control` and `ow-gpu` process pools, `prefect deploy --all` and a
worker for each pool (unless `--no-workers`: workers elsewhere, say a `runpod` worker for `ow-gpu`).
`setup` does only the pools, the store block and the deployments, against $PREFECT_API_URL.

The database must exist and be empty or a Prefect database (PostgreSQL ≥ 14.9); the Redis database
is the server's alone (Prefect's keys have fixed names). State lives under $OW_HOME/production: logs
in logs/, pid files in run/, the artifact store in store/ (until you save an S3 store block).
`make demo`, `make start` and `make stop` keep using the embedded SQLite default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.local import stack as local_stack  # noqa: E402
from infra.local.pid_files import forget_pid, running_pid, write_pid  # noqa: E402
from infra.production import server as production_server  # noqa: E402
from infra.production.settings import ProductionSettingsError, server_settings  # noqa: E402

STATE = Path(os.environ.get("OW_HOME") or ROOT / ".ow") / "production"
RUN_DIR = STATE / "run"
LOG_DIR = STATE / "logs"
PORT = int(os.environ.get("OW_PREFECT_PORT", "4200"))
# Stopped in this order: workers first, so no run starts on a server going away.
PROCESSES = ["worker-control", "worker-gpu", "services", "api"]


def start(database_url: str, redis_url: str, *, port: int, host: str, api_workers: int, workers: bool) -> None:
    try:
        server_settings(database_url, redis_url)  # refuse unusable URLs before stopping or starting anything
    except ProductionSettingsError as exc:
        sys.exit(str(exc))
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/api"
    if running_pid(RUN_DIR, "api") and local_stack.is_healthy(url):
        print(f"Prefect server (production profile): already running at {url}; `{Path(__file__).name} stop` first to restart it")
    else:
        stop()
        print(f"Prefect server (production profile): preparing the database, starting {api_workers} API processes and the services")
        try:
            server = production_server.start_production_server(
                database_url,
                redis_url,
                prefect_home=STATE / "prefect",
                log_dir=LOG_DIR,
                port=port,
                host=host,
                api_workers=api_workers,
                detach=True,
            )
        except (RuntimeError, TimeoutError) as exc:
            sys.exit(f"{exc}\nLogs: {LOG_DIR}. Is port {port} taken? Use --port or OW_PREFECT_PORT.")
        write_pid(RUN_DIR, "api", server.api.pid)
        write_pid(RUN_DIR, "services", server.services.pid)
        print(f"Prefect server: {server.url} (logs: {LOG_DIR})")

    os.environ["PREFECT_API_URL"] = url
    os.environ["OW_HOME"] = str(STATE)  # the default store block's directory
    if not workers:
        print(f"no workers started (--no-workers); point them at PREFECT_API_URL={url}")
        return
    setup("process")
    env = local_stack.worker_env()
    for name, pool in (("control", local_stack.CONTROL_POOL), ("gpu", local_stack.GPU_POOL)):
        if running_pid(RUN_DIR, f"worker-{name}"):
            print(f"worker for {pool}: already running")
            continue
        log = LOG_DIR / f"worker-{name}.log"
        worker_type = local_stack.CONTROL_WORKER_TYPE if name == "control" else "process"
        process = local_stack.start_worker(pool, worker_type, log, env=env, name=f"production-{name}", detach=True)
        write_pid(RUN_DIR, f"worker-{name}", process.pid)
        print(f"worker for {pool}: started (log: {log})")
    print(f"export PREFECT_API_URL={url}   # for prefect and ow in your shell")


def setup(gpu_pool_type: str) -> None:
    """What the project needs on the server at $PREFECT_API_URL: the store block, the two pools (``ow-gpu``
    a ``process`` or a ``runpod`` pool), the deployments of prefect.yaml. Existing ones are kept."""
    from blocks.storage import load_store_block

    print(f"artifact store: {load_store_block().base_url}")
    local_stack.ensure_control_pool()
    if gpu_pool_type == "process":
        local_stack.ensure_process_pool(local_stack.GPU_POOL)
    elif _ensure_runpod_pool(local_stack.GPU_POOL):
        print(f"work pool {local_stack.GPU_POOL}: created as a runpod pool; set its image, runpod_credentials and gpu_types")
    local_stack.deploy_project(env=local_stack.worker_env())
    print("deployments: created from prefect.yaml")


def run_worker(tier: str, worker_type: str) -> None:
    """Become ``prefect worker start`` for the tier's pool, with the local workers' environment (what a
    container runs; signals then reach the worker directly)."""
    pool = {"control": local_stack.CONTROL_POOL, "gpu": local_stack.GPU_POOL}[tier]
    command = [*local_stack.PREFECT, "worker", "start", "--pool", pool, "--type", worker_type]
    os.execvpe(command[0], command, local_stack.worker_env())


def _ensure_runpod_pool(name: str) -> bool:
    """Create a ``runpod`` pool with the worker's default job template unless ``name`` exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from infra.worker.runpod_worker import RunPodWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = RunPodWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="runpod", base_job_template=template))
            return True


def stop() -> None:
    for name in PROCESSES:
        pid = running_pid(RUN_DIR, name)
        if pid and local_stack.stop_process(pid):
            print(f"stopped {name} (pid {pid})")
        forget_pid(RUN_DIR, name)


def status(port: int) -> int:
    url = local_stack.api_url(port)
    healthy = local_stack.is_healthy(url)
    print(f"Prefect server at {url}: {'healthy' if healthy else 'not answering'}")
    for name in PROCESSES:
        pid = running_pid(RUN_DIR, name)
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "setup", "worker"])
    parser.add_argument("tier", nargs="?", choices=["control", "gpu"], help="worker: the pool to work for")
    parser.add_argument("--database-url", help="PostgreSQL: postgresql://user:password@host:5432/database")
    parser.add_argument("--redis-url", help="Redis, a database of the server's own: redis://host:6379/0")
    parser.add_argument("--port", type=int, default=PORT, help="the API's port (default $OW_PREFECT_PORT or 4200)")
    parser.add_argument("--host", default="127.0.0.1", help="where the API listens (0.0.0.0: every interface)")
    parser.add_argument("--api-workers", type=int, default=production_server.DEFAULT_API_WORKERS, help="API processes behind the one URL")
    parser.add_argument("--no-workers", dest="workers", action="store_false", help="start the server only")
    parser.add_argument(
        "--gpu-pool-type", choices=["process", "runpod"], default="process", help="setup, worker: the type of the ow-gpu pool"
    )
    args = parser.parse_args(argv)
    if args.command == "start":
        if not args.database_url or not args.redis_url:
            parser.error("start needs --database-url and --redis-url (make production DATABASE_URL=… REDIS_URL=…)")
        if args.api_workers < 1:
            parser.error(f"--api-workers must be at least 1, got {args.api_workers}")
        start(args.database_url, args.redis_url, port=args.port, host=args.host, api_workers=args.api_workers, workers=args.workers)
    elif args.command == "setup":
        setup(args.gpu_pool_type)
    elif args.command == "worker":
        if args.tier is None:
            parser.error("worker needs a tier: control or gpu")
        run_worker(args.tier, local_stack.CONTROL_WORKER_TYPE if args.tier == "control" else args.gpu_pool_type)
    elif args.command == "stop":
        stop()
    else:
        return status(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
