"""The production profile's server processes, on PostgreSQL and Redis.

What Prefect's self-hosting guide describes, as child processes:

1. ``python -m infra.production.database``: migrate the database and register block types, once;
2. ``prefect server start --no-services --workers N``: N API processes (uvicorn workers) behind one
   port, so one URL; Prefect refuses ``--workers`` above 1 unless the database is PostgreSQL and
   messaging, ordering and leases are in Redis;
3. ``prefect server services start``: the background services (scheduler, late runs, event
   persister, triggers, cancellation clean-up) in one process of their own.

More API processes on other hosts or ports (:func:`start_api`) join the same server: everything
they share is in PostgreSQL and Redis. Used by ``scripts/production.py`` and the tests; ``compose.yaml``
runs each part in a container through :func:`main` (``python -m infra.production.server api``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from infra.local import stack as local_stack
from infra.production.settings import ProductionSettingsError, server_settings

DEFAULT_API_WORKERS = 2


def server_env(
    database_url: str, redis_url: str, prefect_home: Path, base_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of every process of a production server (see ``settings.server_settings``)."""
    env = dict(base_env if base_env is not None else os.environ)
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(server_settings(database_url, redis_url))
    env.update({"PREFECT_HOME": str(prefect_home), "DO_NOT_TRACK": "1"})
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to itself as a client
    return env


def prepare_database(env: dict[str, str], timeout: float = 600) -> None:
    """Migrate the database and register block types (``infra.production.database``), once."""
    completed = subprocess.run(
        [sys.executable, "-m", "infra.production.database"],
        env=env,
        cwd=local_stack.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            "preparing the Prefect database failed (is PostgreSQL reachable, and may this user create "
            f"tables?):\n{completed.stderr[-3000:]}"
        )


def api_command(port: int, *, host: str = "127.0.0.1", workers: int = DEFAULT_API_WORKERS, ui: bool = True) -> list[str]:
    """``prefect server start --no-services --workers <workers>``: the API processes, on ``host:port``."""
    command = [*local_stack.PREFECT, "server", "start", "--no-services", "--host", host, "--port", str(port)]
    return command + ["--workers", str(workers), "--ui" if ui else "--no-ui"]


# The background services (scheduler, late runs, event persister, triggers, …), in one process.
SERVICES_COMMAND = [*local_stack.PREFECT, "server", "services", "start"]


def start_api(
    env: dict[str, str],
    port: int,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    workers: int = DEFAULT_API_WORKERS,
    ui: bool = True,
    detach: bool = False,
) -> subprocess.Popen:
    """Start :func:`api_command` as a child process; wait with ``local_stack.wait_healthy``."""
    command = api_command(port, host=host, workers=workers, ui=ui)
    return local_stack._spawn(command, env, _log(log_path), detach=detach)


def start_services(env: dict[str, str], log_path: Path, *, detach: bool = False) -> subprocess.Popen:
    """Start :data:`SERVICES_COMMAND` as a child process."""
    return local_stack._spawn(SERVICES_COMMAND, env, _log(log_path), detach=detach)


@dataclass
class ProductionServer:
    """A running production server: its URL and the processes behind it."""

    url: str
    env: dict[str, str] = field(repr=False)
    api: subprocess.Popen
    services: subprocess.Popen

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [self.api, self.services]

    def stop(self) -> None:
        for process in (self.services, self.api):
            local_stack.stop_process(process.pid)
            try:
                process.wait(timeout=10)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass


def start_production_server(
    database_url: str,
    redis_url: str,
    *,
    prefect_home: Path,
    log_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    api_workers: int = DEFAULT_API_WORKERS,
    ui: bool = True,
    base_env: dict[str, str] | None = None,
    detach: bool = False,
    timeout: float = 180,
) -> ProductionServer:
    """Prepare the database, start the API processes and the services; return once the API answers.

    ``host`` is where the API listens; the URL returned is on loopback when that is every interface.
    """
    env = server_env(database_url, redis_url, prefect_home, base_env)
    prepare_database(env)
    api = start_api(env, port, log_dir / "prefect-api.log", host=host, workers=api_workers, ui=ui, detach=detach)
    services = start_services(env, log_dir / "prefect-services.log", detach=detach)
    reachable_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    server = ProductionServer(url=f"http://{reachable_host}:{port}/api", env=env, api=api, services=services)
    try:
        local_stack.wait_healthy(server.url, timeout=timeout, process=api)
        if services.poll() is not None:
            raise RuntimeError(f"the Prefect services process exited with code {services.returncode}")
    except BaseException:
        server.stop()
        raise
    return server


def _log(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """One part of the server in the foreground, as a container runs it (``compose.yaml``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m infra.production.server",
        description="Run one part of the production profile's Prefect server in the foreground.",
    )
    parser.add_argument("part", choices=["prepare", "api", "services"], help="prepare: migrate and register blocks, then exit")
    parser.add_argument("--database-url", default=os.environ.get("OW_DATABASE_URL"), help="default: $OW_DATABASE_URL")
    parser.add_argument("--redis-url", default=os.environ.get("OW_REDIS_URL"), help="default: $OW_REDIS_URL")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--api-workers", type=int, default=DEFAULT_API_WORKERS)
    args = parser.parse_args(argv)
    if not args.database_url or not args.redis_url:
        parser.error("set --database-url and --redis-url (or OW_DATABASE_URL and OW_REDIS_URL)")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        env = server_env(args.database_url, args.redis_url, home)
    except ProductionSettingsError as exc:
        parser.exit(2, f"{exc}\n")
    if args.part == "prepare":
        prepare_database(env)
        return 0
    command = api_command(args.port, host=args.host, workers=args.api_workers) if args.part == "api" else SERVICES_COMMAND
    os.execvpe(command[0], command, env)  # Prefect's own process from here: signals reach it directly


if __name__ == "__main__":
    raise SystemExit(main())
