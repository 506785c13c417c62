"""The API job's GPU-stage function: serve a base model and its adapters until idle or timed out.

The stage generates the deployment's bearer token, keeps it where clients can read it (a Prefect
Secret in the flow) and nowhere else, starts the server (vLLM on a GPU, transformers otherwise),
publishes the endpoint (``jobs/<job_id>/endpoint.json`` and a link), and blocks until the idle or
hard timeout. Cancelling the flow run interrupts the wait; the server and the token go with it.
"""

from __future__ import annotations

import secrets
import socket
import time

from compute.backend import select_backend
from compute.stage import StageContext, StageResult
from jobs.serve import ServeConfig

POD_PORT = 8000  # the port a RunPod pod exposes for API deployments (prefect.yaml job variables)


def token_secret_name(job_id: str) -> str:
    """Prefect Secret block names: lower-case letters, digits and dashes."""
    return f"ow-api-token-{job_id.replace('_', '-').lower()}"[:120]


def endpoint_key(job_id: str) -> str:
    return f"jobs/{job_id}/endpoint.json"


def run_serve_stage(config: ServeConfig, context: StageContext) -> StageResult:
    backend = select_backend("generation")
    base = context.local_model(config.model)
    if base.adapter_path or base.merge_adapter_paths:
        raise ValueError(f"model: {config.model!r} resolves to an adapter; serve its base model and list it in lora_adapters")
    adapters = {reference: context.local_adapter(reference) for reference in config.lora_adapters}
    token = secrets.token_urlsafe(32)
    secret_name = token_secret_name(context.job_id)
    context.save_secret(secret_name, token)
    host, port = ("0.0.0.0", POD_PORT) if context.pod_id else ("127.0.0.1", 0)
    server = make_server(backend.name, config, base.base_path, adapters, token, host, port, context.work_dir)
    endpoint = {}
    try:
        server.start()
        base_url = f"https://{context.pod_id}-{port}.proxy.runpod.net/v1" if context.pod_id else server.base_url
        endpoint = {
            "job_id": context.job_id,
            "base_url": base_url,
            "models": config.served_model_names(),
            "token_secret": secret_name,
            "backend": backend.name,
            "started_at": time.time(),
            "status": "serving",
        }
        context.store.write_json(endpoint_key(context.job_id), endpoint)
        context.reporter.link("endpoint", base_url, f"OpenAI-compatible API: {base_url}")
        context.reporter.event("serving", {"base_url": base_url, "models": endpoint["models"]})
        context.reporter.log(f"serving {', '.join(endpoint['models'])} at {base_url}")
        reason = server.wait_until_shutdown(poll_seconds=1)
    finally:
        server.stop()
        context.delete_secret(secret_name)
        if endpoint:
            endpoint.update(status="stopped", stopped_at=time.time())
            context.store.write_json(endpoint_key(context.job_id), endpoint)
    context.reporter.log(f"server stopped: {reason}")
    return StageResult(
        outputs={"endpoint": endpoint["base_url"]},
        metrics={"served_seconds": round(endpoint["stopped_at"] - endpoint["started_at"], 1)},
        details={"shutdown_reason": reason, "models": endpoint["models"], "backend": backend.name},
    )


def make_server(backend: str, config: ServeConfig, model_path, adapters: dict, token: str, host: str, port: int, work_dir):
    """An OpenAI-compatible server for ``config`` (not started): vLLM's, or ours over transformers."""
    if backend == "vllm":
        from compute.serving.vllm_server import VllmServer

        return VllmServer(
            config,
            model_path=model_path,
            adapter_paths=adapters,
            api_key=token,
            host=host,
            port=port or _free_port(),
            log_path=work_dir / "vllm.log",
        )
    from compute.serving.server import TransformersOpenAIServer

    return TransformersOpenAIServer(config, model_path=model_path, adapter_paths=adapters, api_key=token, host=host, port=port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
