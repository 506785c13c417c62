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

from infra.local.cpu_policy import batch_scheduling_enabled, schedule_as_batch_work

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

    The server runs under SCHED_BATCH (see :mod:`infra.local.cpu_policy`) unless ``OW_BATCH_SCHEDULING=0``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = server_env(prefect_home, base_env)
    command = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    command.append("--ui" if ui else "--no-ui")
    return _spawn(command, env, log_path, detach=detach)


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

    The worker, and so the flow runs it starts, run under SCHED_BATCH (see :mod:`infra.local.cpu_policy`)
    unless ``OW_BATCH_SCHEDULING=0``; the GPU stage gives its compute thread the normal policy back.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [*PREFECT, "worker", "start", "--pool", pool, "--type", worker_type]
    if name:
        command += ["--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    command += extra_args or []
    return _spawn(command, env, log_path, detach=detach)


def _spawn(command: list[str], env: dict[str, str], log_path: Path, *, detach: bool) -> subprocess.Popen:
    """Start a long-lived orchestration process with its output appended to ``log_path``, under
    SCHED_BATCH unless ``OW_BATCH_SCHEDULING=0``."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
    if batch_scheduling_enabled(env):
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
# The control flows run as threads of one worker process (infra.worker.thread_worker): a job waiting
# for its GPU stage costs a thread, not a process.
CONTROL_WORKER_TYPE = "threads"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    env.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK telemetry, in the workers and their flow runs
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


def ensure_control_pool() -> bool:
    """Create the ``ow-control`` pool (type :data:`CONTROL_WORKER_TYPE`) unless it exists; True if created.

    A ``process`` pool of that name (made before the control flows ran as threads) is replaced: Prefect
    cannot change a pool's type, and its job template does not fit the ``threads`` worker. Deploying
    the project afterwards attaches the control deployments to the new pool.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from infra.worker.thread_worker import ThreadWorker

    with get_client(sync_client=True) as client:
        try:
            if client.read_work_pool(CONTROL_POOL).type != CONTROL_WORKER_TYPE:
                client.delete_work_pool(CONTROL_POOL)
        except ObjectNotFound:
            pass
    return _ensure_pool(CONTROL_POOL, CONTROL_WORKER_TYPE, ThreadWorker.get_default_base_job_template(), None)


def ensure_process_pool(name: str, concurrency_limit: int | None = None) -> bool:
    """Create a ``process`` work pool unless it exists; True if it was created."""
    return _ensure_pool(name, "process", process_pool_template(), concurrency_limit)


def _ensure_pool(name: str, pool_type: str, template: dict, concurrency_limit: int | None) -> bool:
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
                    type=pool_type,
                    base_job_template=template,
                    concurrency_limit=concurrency_limit,
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


LOCAL_PROFILE = "ow-local"
# The profile Prefect makes active on a fresh installation (its bundled profiles.toml).
PREFECT_DEFAULT_PROFILE = "ephemeral"


def local_profile_settings(url: str) -> dict[str, str]:
    """What a client of the embedded default at ``url`` needs: the URL, analytics off, and never a
    temporary server (Prefect's default profile starts one, with an empty database, when no URL is set)."""
    return {
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }


def activate_local_profile(url: str, profiles_path: Path | None = None) -> tuple[Path, str]:
    """Save the Prefect profile ``ow-local`` (:func:`local_profile_settings`) and make it the active one,
    so that ``prefect`` and ``ow`` in any new shell reach the server at ``url``.

    ``profiles_path`` is the profiles file to update (default: the current one, from ``PREFECT_HOME``
    or ``PREFECT_PROFILES_PATH``); its other profiles are kept. Written through Prefect's own profile
    API, as ``prefect profile create`` / ``prefect profile use`` do. Returns the file and the profile
    to switch back to with ``prefect profile use``.
    """
    from contextlib import nullcontext

    from prefect.settings import PREFECT_PROFILES_PATH, get_current_settings, temporary_settings
    from prefect.settings.profiles import load_profiles, save_profiles

    override = temporary_settings(updates={PREFECT_PROFILES_PATH: profiles_path}) if profiles_path else nullcontext()
    with override:
        profiles = load_profiles()
        previous = profiles.active_name
        profiles.update_profile(LOCAL_PROFILE, local_profile_settings(url))
        profiles.set_active(LOCAL_PROFILE)
        save_profiles(profiles)
        written = get_current_settings().profiles_path
    if previous in (None, LOCAL_PROFILE):
        previous = PREFECT_DEFAULT_PROFILE
    return written, previous


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
