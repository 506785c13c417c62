"""Start, stop or show the embedded default: a local Prefect server and two process workers.

    python scripts/services.py start    # idempotent: reuses a healthy server and live workers
    python scripts/services.py stop
    python scripts/services.py status

State lives under $OW_HOME (default: the project's .ow, as under the Makefile): the SQLite
database in prefect/, logs in logs/, pid files in run/, the artifact store in store/.

`start` also saves the Prefect profile ow-local (this server's API URL, analytics off, never a
temporary server) and makes it the active one, so `prefect …` and `ow …` in a new terminal use
this server. It lands in $OW_PREFECT_PROFILES_PATH when set (the Makefile sets it: the PREFECT_HOME
it exports is the project's own, not the one a new terminal reads), else in Prefect's profiles file.
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

OW_HOME = Path(os.environ.get("OW_HOME") or ROOT / ".ow")
RUN_DIR = OW_HOME / "run"
LOG_DIR = OW_HOME / "logs"
PORT = int(os.environ.get("OW_PREFECT_PORT", "4200"))
API_URL = os.environ.get("PREFECT_API_URL") or local_stack.api_url(PORT)
PROFILES_PATH = os.environ.get("OW_PREFECT_PROFILES_PATH")
WORKERS = {
    "control": (local_stack.CONTROL_POOL, local_stack.CONTROL_WORKER_TYPE),
    "gpu": (local_stack.GPU_POOL, "process"),
}


def start() -> None:
    os.environ["PREFECT_API_URL"] = API_URL
    os.environ["OW_HOME"] = str(OW_HOME)  # the store block's default directory and the workers' state
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK telemetry, here and in the workers
    if local_stack.is_healthy(API_URL):
        print(f"Prefect server: already running at {API_URL}")
    else:
        if running_pid(RUN_DIR, "server"):
            local_stack.stop_process(running_pid(RUN_DIR, "server"))
        process = local_stack.start_server(
            OW_HOME / "prefect", PORT, LOG_DIR / "prefect-server.log", ui=True, detach=True
        )
        write_pid(RUN_DIR, "server", process.pid)
        print(f"Prefect server: starting at {API_URL} (log: {LOG_DIR / 'prefect-server.log'})")
        try:
            local_stack.wait_healthy(API_URL, timeout=120, process=process)
        except (RuntimeError, TimeoutError) as exc:
            sys.exit(f"{exc}. Is port {PORT} taken? Set OW_PREFECT_PORT to another port.")

    from blocks.storage import load_store_block

    block = load_store_block()
    print(f"artifact store: {block.base_url} (block ow-artifact-store/{os.environ.get('OW_STORE_BLOCK', 'default')})")

    env = local_stack.worker_env()
    for name, (pool, worker_type) in WORKERS.items():
        if pool == local_stack.CONTROL_POOL:
            local_stack.ensure_control_pool()
        else:
            local_stack.ensure_process_pool(pool)
        if running_pid(RUN_DIR, f"worker-{name}"):
            print(f"worker for {pool}: already running")
            continue
        process = local_stack.start_worker(
            pool, worker_type, LOG_DIR / f"worker-{name}.log", env=env, name=f"local-{name}", detach=True
        )
        write_pid(RUN_DIR, f"worker-{name}", process.pid)
        print(f"worker for {pool}: started (log: {LOG_DIR / f'worker-{name}.log'})")

    local_stack.deploy_project(env=env)
    print("deployments: created from prefect.yaml")

    profiles, previous = local_stack.activate_local_profile(
        API_URL, Path(PROFILES_PATH).expanduser() if PROFILES_PATH else None
    )
    print(
        f"Prefect profile {local_stack.LOCAL_PROFILE} is active ({profiles}): new terminals use this server; "
        f"`prefect profile use {previous}` switches back"
    )


def stop() -> None:
    for name in ["worker-control", "worker-gpu", "server"]:
        pid = running_pid(RUN_DIR, name)
        if pid and local_stack.stop_process(pid):
            print(f"stopped {name} (pid {pid})")
        forget_pid(RUN_DIR, name)


def status() -> int:
    healthy = local_stack.is_healthy(API_URL)
    print(f"Prefect server at {API_URL}: {'healthy' if healthy else 'not answering'}")
    for name in ["worker-control", "worker-gpu"]:
        pid = running_pid(RUN_DIR, name)
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    if args.command == "start":
        start()
    elif args.command == "stop":
        stop()
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
