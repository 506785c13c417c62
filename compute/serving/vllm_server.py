"""`vllm serve` as a child process behind our bearer-token proxy, with the transformers server's lifecycle.

``start()`` launches the argv of :func:`compute.serving.vllm_command.build_vllm_serve_command`
(token in ``VLLM_API_KEY``, never in argv) on ``127.0.0.1`` and a free port of its own, waits
until its ``/health`` answers, then starts :class:`~compute.serving.proxy.AuthProxy` on the
``host:port`` the caller publishes; :attr:`url` and :attr:`base_url` are the proxy's. ``stop()``
stops the proxy, then terminates vLLM's process group. Idle time comes from vLLM's Prometheus
``/metrics``, read on loopback (the proxy does not forward it): requests running or waiting, or a
change in the finished-request counter, count as activity.

Runs only where vLLM and a CUDA GPU exist; nothing here imports vLLM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from compute.serving.lifetime import ShutdownReason, shutdown_reason, wait_until_shutdown
from compute.serving.protocol import RequestLimits
from compute.serving.vllm_command import VLLM_HOST, build_vllm_serve_command, vllm_serve_environment
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
    """vLLM on loopback, published on ``host:port`` through the bearer-token proxy."""

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
        limits: RequestLimits | None = None,
        executable: Sequence[str] = ("vllm",),
    ):
        """``host:port`` is where clients connect (the proxy); vLLM itself gets a free loopback port.
        ``executable`` is what runs ``serve`` (tests put a stand-in there)."""
        self.config = config
        self.upstream_port = _free_loopback_port()
        self.argv = build_vllm_serve_command(
            config,
            model_path=model_path,
            adapter_paths=adapter_paths,
            port=self.upstream_port,
            executable=executable,
        )
        self._env = vllm_serve_environment(api_key)
        self._api_key = api_key
        self._limits = limits
        self.host = host
        self._requested_port = port
        self.log_path = log_path
        self._process: subprocess.Popen | None = None
        self._proxy = None
        self.started_at = 0.0
        self.last_activity = 0.0
        self._finished = 0.0

    def __repr__(self) -> str:  # never show the token
        return f"VllmServer(model={self.config.model!r}, port={self.port})"

    @property
    def port(self) -> int:
        """The published port (the proxy's; the one chosen when ``port=0`` was asked for, once started)."""
        return self._proxy.port if self._proxy is not None else self._requested_port

    @property
    def upstream_url(self) -> str:
        """vLLM itself, on loopback: for this machine's own reads (health, metrics), never published."""
        return f"http://{VLLM_HOST}:{self.upstream_port}"

    @property
    def url(self) -> str:
        """The proxy's root URL (``/health`` lives here); what clients use."""
        if self._proxy is not None:
            return self._proxy.url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 1800.0) -> VllmServer:
        from compute.serving.proxy import AuthProxy

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout  # loading weights and compiling can take many minutes
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"vllm serve exited with code {self._process.returncode}; see {self.log_path}"
                )
            try:
                with urlopen(f"{self.upstream_url}/health", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except (URLError, OSError):
                pass
            time.sleep(2)
        else:
            self.stop()
            raise TimeoutError(
                f"vllm serve did not become healthy within {timeout:.0f}s; see {self.log_path}"
            )
        try:
            self._proxy = AuthProxy(
                self.upstream_url,
                token=self._api_key,
                host=self.host,
                port=self._requested_port,
                limits=self._limits,
            ).start()
        except Exception:
            self.stop()
            raise
        self.started_at = self.last_activity = time.time()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._proxy is not None:
            self._proxy.stop()
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
            with urlopen(f"{self.upstream_url}/metrics", timeout=5) as response:  # noqa: S310 - loopback
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


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((VLLM_HOST, 0))
        return sock.getsockname()[1]
