"""`vllm serve` as a child process, with the same lifecycle as the transformers server.

``start()`` launches the argv of :func:`compute.serving.vllm_command.build_vllm_serve_command`
(token in ``VLLM_API_KEY``, never in argv) and returns once ``/health`` answers; ``stop()``
terminates the process group. Idle time comes from vLLM's Prometheus ``/metrics``: requests
running or waiting, or a change in the finished-request counter, count as activity.

Runs only where vLLM and a CUDA GPU exist; nothing here imports vLLM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from compute.serving.lifetime import ShutdownReason, shutdown_reason, wait_until_shutdown
from compute.serving.vllm_command import build_vllm_serve_command, vllm_serve_environment
from jobs.serve import ServeConfig

_ACTIVITY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
_FINISHED_COUNTER = "vllm:request_success_total"


def parse_vllm_metrics(text: str) -> tuple[float, float]:
    """``(requests running or waiting, requests finished)`` from vLLM's Prometheus text."""
    busy = finished = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        if metric in _ACTIVITY_GAUGES:
            busy += number
        elif metric == _FINISHED_COUNTER:
            finished += number
    return busy, finished


class VllmServer:
    def __init__(
        self,
        config: ServeConfig,
        *,
        model_path: str | Path,
        adapter_paths: dict[str, str | Path],
        api_key: str,
        host: str,
        port: int,
        log_path: Path,
    ):
        self.config = config
        self.argv = build_vllm_serve_command(config, model_path=model_path, adapter_paths=adapter_paths, host=host, port=port)
        self._env = vllm_serve_environment(api_key)
        self.host = host
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.last_activity = 0.0
        self._finished = 0.0

    def __repr__(self) -> str:  # never show the token
        return f"VllmServer(model={self.config.model!r}, port={self.port})"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 1800.0) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self.argv, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout  # loading weights and compiling can take many minutes
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"vllm serve exited with code {self._process.returncode}; see {self.log_path}")
            try:
                with urlopen(f"{self.url}/health", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        self.started_at = self.last_activity = time.time()
                        return self
            except (URLError, OSError):
                pass
            time.sleep(2)
        self.stop()
        raise TimeoutError(f"vllm serve did not become healthy within {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if not self.running:
            return
        os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def _observe_activity(self) -> bool:
        try:
            with urlopen(f"{self.url}/metrics", timeout=5) as response:  # noqa: S310 - loopback
                busy, finished = parse_vllm_metrics(response.read().decode())
        except (URLError, OSError):
            return False
        if busy or finished != self._finished:
            self._finished = finished
            self.last_activity = time.time()
        return bool(busy)

    def shutdown_reason(self, now: float | None = None) -> ShutdownReason | None:
        busy = self._observe_activity()
        return shutdown_reason(
            now=time.time() if now is None else now,
            started_at=self.started_at,
            last_activity=self.last_activity,
            busy=busy,
            idle_timeout_seconds=self.config.idle_timeout_seconds,
            hard_timeout_seconds=self.config.hard_timeout_seconds,
        )

    def wait_until_shutdown(self, poll_seconds: float = 5.0) -> ShutdownReason | str:
        """Until the config's timeouts say to stop, or the server exited (see ``lifetime.wait_until_shutdown``)."""
        return wait_until_shutdown(self, poll_seconds)
