"""The embedded default: a local Prefect server (SQLite) and workers as child processes.

Used by ``make demo`` (through ``scripts/services.py``, which keeps them running between
commands) and by the test suite (which starts its own on a free port). One implementation,
so the tests exercise exactly what the demo runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers its health check at ``url`` (…/api)."""
    try:
        with urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except (URLError, OSError, ValueError):
        return False


def wait_healthy(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    """Block until the API at ``url`` answers; raise with a useful message if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {process.returncode} before becoming healthy")
        time.sleep(0.3)
    raise TimeoutError(f"Prefect API at {url} did not become healthy within {timeout:.0f}s")


def server_env(prefect_home: Path, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a server whose state (SQLite database) lives under ``prefect_home``."""
    env = dict(base_env if base_env is not None else os.environ)
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        }
    )
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to itself as a client
    return env


# The embedded default shares the machine's CPUs with the jobs it runs. Its server, and the control
# worker with the control flows it starts, only answer polls, store logs and events and wait; when they
# wake they need not preempt a training or generation step whose torch threads occupy every core
# (one stalled thread stalls the others at the next sync). Linux's SCHED_BATCH policy says exactly
# that: still a fair share of CPU (so nothing is recorded late, unlike a lower nice value, which was
# tried and starved the server on a loaded machine), but no preemption on wake-up.
BATCH_SCHEDULING_VARIABLE = "OW_BATCH_SCHEDULING"


def batch_scheduling_enabled(env: dict[str, str] | None = None) -> bool:
    """``OW_BATCH_SCHEDULING`` (default ``1``); ``0`` leaves the orchestration processes' policy alone."""
    value = (env if env is not None else os.environ).get(BATCH_SCHEDULING_VARIABLE, "1").strip().lower()
    if value not in {"0", "1", "true", "false"}:
        raise ValueError(f"{BATCH_SCHEDULING_VARIABLE} must be 1 or 0, got {value!r}")
    return value in {"1", "true"}


def schedule_as_batch_work(pid: int) -> bool:
    """Put every thread of process ``pid`` (and so what it starts later) under SCHED_BATCH.

    False where the policy does not exist (not Linux) or the process is gone. Threads and child
    processes inherit the policy, so setting it right after start covers what the process creates.
    """
    if not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    done = False
    for tid in threads:
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
            done = True
        except (ProcessLookupError, PermissionError):
            continue
    return done


def start_server(
    prefect_home: Path,
    port: int,
    log_path: Path,
    *,
    ui: bool = True,
    base_env: dict[str, str] | None = None,
    detach: bool = False,
) -> subprocess.Popen:
    """Start ``prefect server start`` on loopback; the caller waits with :func:`wait_healthy`.

    The server runs under SCHED_BATCH (see :func:`schedule_as_batch_work`) unless ``OW_BATCH_SCHEDULING=0``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = server_env(prefect_home, base_env)
    command = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    command.append("--ui" if ui else "--no-ui")
    return _spawn(command, env, log_path, detach=detach, batch_work=True)


def start_worker(
    pool: str,
    worker_type: str,
    log_path: Path,
    *,
    env: dict[str, str],
    name: str | None = None,
    limit: int | None = None,
    detach: bool = False,
    extra_args: list[str] | None = None,
) -> subprocess.Popen:
    """Start ``prefect worker start`` for ``pool`` (created with ``worker_type`` if missing).

    The control pool's worker, and so the control flows it starts, run under SCHED_BATCH (see
    :func:`schedule_as_batch_work`) unless ``OW_BATCH_SCHEDULING=0``; other pools' workers start
    the jobs themselves and keep the normal policy.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [*PREFECT, "worker", "start", "--pool", pool, "--type", worker_type]
    if name:
        command += ["--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    command += extra_args or []
    return _spawn(command, env, log_path, detach=detach, batch_work=pool == CONTROL_POOL)


def _spawn(command: list[str], env: dict[str, str], log_path: Path, *, detach: bool, batch_work: bool) -> subprocess.Popen:
    """Start a long-lived orchestration process with its output appended to ``log_path``;
    ``batch_work`` puts it under SCHED_BATCH unless ``OW_BATCH_SCHEDULING=0``."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
    if batch_work and batch_scheduling_enabled(env):
        schedule_as_batch_work(process.pid)
    return process


def stop_process(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM a process group (falling back to SIGKILL); True if something was stopped."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    target = pgid if pgid == pid else None
    try:
        if target is not None:
            os.killpg(target, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Reap our own child if it is one, so it does not linger as a zombie.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        if target is not None:
            os.killpg(target, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


CONTROL_POOL = "ow-control"
GPU_POOL = "ow-gpu"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# What a local process pool starts for each flow run. Prefect's process worker, left to generate the
# command, starts a workspace supervisor (a Python process importing Prefect, ≈ 2 s here) that then
# starts this same engine; a job starts two flow runs, so naming the command saves ≈ 4 s a job. The
# engine still runs the deployment's pull steps itself. `python` is the workers' interpreter:
# worker_env puts its directory first on PATH.
ENGINE_COMMAND = "python -m prefect.engine"


def worker_env(base_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of local workers (and so of the flow runs they start)."""
    env = dict(base_env if base_env is not None else os.environ)
    interpreter_dir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != interpreter_dir:
        env["PATH"] = os.pathsep.join(filter(None, [interpreter_dir, env.get("PATH")]))
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
    env.setdefault("PREFECT_WORKER_PREFETCH_SECONDS", "5")
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "compute")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A run cancelled while still Pending (picked up, process not started) has nobody else to end it:
    # without this, it stays Cancelling. Prefect's worker handles it when asked to.
    env.setdefault("PREFECT_WORKER_ENABLE_CANCELLATION", "true")
    env.setdefault("PREFECT_WORKER_CANCELLATION_POLL_SECONDS", "5")
    return env


def process_pool_template() -> dict:
    """Prefect's process-pool job template, with :data:`ENGINE_COMMAND` as the default command."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = ENGINE_COMMAND
    return template


def ensure_process_pool(name: str, concurrency_limit: int | None = None) -> bool:
    """Create a ``process`` work pool unless it exists; True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=process_pool_template(),
                    concurrency_limit=concurrency_limit,
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


def deploy_project(env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """``prefect deploy --all`` from the project's prefect.yaml (non-interactive)."""
    return subprocess.run(
        [*PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
