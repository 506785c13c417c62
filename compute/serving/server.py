"""An OpenAI-compatible server over transformers, started and stopped from Python.

For machines where vLLM cannot run (CPU, tests, the embedded default). It serves the same names
as ``vllm serve`` with :func:`~compute.serving.vllm_command.build_vllm_serve_command`: the base
model under ``config.model``, each adapter under its reference.

    server = TransformersOpenAIServer(config, model_path=..., adapter_paths={...}, api_key=token)
    with server:                       # loads the model, then listens; stop() closes the port
        client = openai.OpenAI(base_url=server.base_url, api_key=token)
        ...
        reason = server.wait_until_shutdown()   # "idle" or "hard_timeout", from the config

uvicorn runs in a background thread on a socket this class binds itself
(:class:`BackgroundHTTPServer`), so ``port=0`` picks a free port with no race, and :attr:`base_url`
is known as soon as :meth:`start` returns.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from compute.serving.lifetime import ShutdownReason, shutdown_reason, wait_until_shutdown
from compute.serving.protocol import RequestLimits
from jobs.serve import ServeConfig

logger = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The HTTP server did not come up."""


class TransformersOpenAIServer:
    """Serves a base model and its LoRA adapters (peft, switched per request) over OpenAI's HTTP API."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        model_path: str | Path,
        api_key: str,
        adapter_paths: Mapping[str, str | Path] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        device: str | None = None,
        limits: RequestLimits | None = None,
    ):
        """``model_path`` is the local directory of ``config.model``; ``adapter_paths`` maps each of
        ``config.lora_adapters`` to its directory. ``port=0`` picks a free port. ``limits`` bounds
        what one request may ask for (default: :class:`RequestLimits`' defaults)."""
        if not api_key or any(character.isspace() for character in api_key):
            raise ValueError("api_key must be a non-empty token without whitespace")
        for field in ("quantization", "kv_cache_dtype"):
            if getattr(config, field) is not None:
                raise ValueError(
                    f"{field}={getattr(config, field)!r} is a vLLM option; the transformers server cannot apply it. "
                    "Unset it, or serve on a CUDA GPU with vllm serve"
                )
        self.config = config
        self.model_path = Path(model_path)
        self.adapter_paths = config.ordered_adapter_paths(adapter_paths or {})
        self.host = host
        self._device = device
        self._api_key = api_key
        self.limits = limits or RequestLimits()
        self._engine = None
        self._http = BackgroundHTTPServer(host, port, name="ow-openai-server")

    def __repr__(self) -> str:  # never show the token
        return f"TransformersOpenAIServer(model={self.config.model!r}, url={self.url if self.running else None!r})"

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> TransformersOpenAIServer:
        """Load the model and adapters, then listen; returns once requests are accepted."""
        if self._http.running:
            raise RuntimeError("the server is already started")
        from compute.generation.transformers_backend import TransformersGenerator
        from compute.serving.app import build_app
        from compute.serving.engine import ServingEngine

        generator = TransformersGenerator(
            self.model_path,
            adapters=self.adapter_paths,
            device=self._device,
            max_model_len=self.config.max_model_len,
        )
        self._engine = ServingEngine(generator, self.config.model, limits=self.limits)
        self._http.start(build_app(self._engine, self._api_key), timeout)
        logger.info("serving %s at %s", ", ".join(self._engine.model_names), self.base_url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let running ones finish (up to ``timeout``), and close the port."""
        self._http.stop(timeout)

    def __enter__(self) -> TransformersOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._http.running

    # -- where and how busy ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when ``port=0`` was asked for, once started)."""
        return self._http.port

    @property
    def url(self) -> str:
        """The server's root URL (``/health`` lives here)."""
        return self._http.url

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``…/v1``), what ``openai.OpenAI(base_url=…)`` takes."""
        return f"{self.url}/v1"

    @property
    def model_names(self) -> list[str]:
        return self.config.served_model_names()

    @property
    def started_at(self) -> float:
        """When the model finished loading (``time.time()`` seconds)."""
        self._require_started()
        return self._engine.started_at

    @property
    def last_activity(self) -> float:
        """When an authenticated request last arrived, streamed or finished (``time.time()`` seconds)."""
        self._require_started()
        return self._engine.last_activity

    @property
    def in_flight(self) -> int:
        """Requests being generated or waiting for their turn."""
        self._require_started()
        return self._engine.in_flight

    def idle_seconds(self, now: float | None = None) -> float:
        """Seconds since the last activity; 0 while a request is in flight."""
        if self.in_flight:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.last_activity)

    def shutdown_reason(self, now: float | None = None) -> ShutdownReason | None:
        """Why the server should stop now according to its config's timeouts, or None."""
        return shutdown_reason(
            now=time.time() if now is None else now,
            started_at=self.started_at,
            last_activity=self.last_activity,
            busy=self.in_flight > 0,
            idle_timeout_seconds=self.config.idle_timeout_seconds,
            hard_timeout_seconds=self.config.hard_timeout_seconds,
        )

    def wait_until_shutdown(self, poll_seconds: float = 5.0) -> ShutdownReason | str:
        """Until the config's timeouts say to stop, or the server exited (see ``lifetime.wait_until_shutdown``)."""
        return wait_until_shutdown(self, poll_seconds)

    def _require_started(self) -> None:
        if self._engine is None:
            raise RuntimeError("the server has not been started")


class BackgroundHTTPServer:
    """An ASGI application served by uvicorn on a thread of its own, on a socket bound here, so that
    ``port=0`` picks a free port with no race and :attr:`url` is known once :meth:`start` returns.
    Used by the transformers server and by the proxy in front of vLLM (:mod:`compute.serving.proxy`)."""

    def __init__(self, host: str, port: int, *, name: str, lifespan: str = "off"):
        if not 0 <= port < 65536:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        self.host = host
        self._requested_port = port
        self._name = name
        self._lifespan = lifespan
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None

    def start(self, app, timeout: float = 60.0) -> None:
        """Listen and serve ``app``; returns once requests are accepted."""
        import uvicorn

        self._socket = _bind(self.host, self._requested_port)
        self._bound_port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan=self._lifespan,
                ws="none",
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=self._name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._release()
                raise ServerStartError(f"the HTTP server on {self.host}:{self.port} exited while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"the HTTP server on {self.host}:{self.port} did not start within {timeout:g}s"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, let running ones finish (up to ``timeout``), and close the port."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        self._release()

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock
