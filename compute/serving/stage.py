"""The API job's GPU-stage function: serve a base model and its adapters until idle or timed out.

The stage generates the deployment's bearer token, keeps it where clients can read it (a Prefect
Secret in the flow) and nowhere else, starts the server (vLLM on a GPU, transformers otherwise),
publishes the endpoint (``jobs/<job_id>/endpoint.json`` and a link), and blocks until the idle or
hard timeout.

A deployment survives a lost pod: the control flow starts the stage again on a new pod under the
same job ID (``tasks/job_control.py``), and that attempt serves under the token the lost one saved
(clients hold it) and updates the same endpoint record in place: ``status`` goes ``recovering``
while the model loads, then ``serving`` at the new ``base_url``, with ``attempt`` and
``recovered_at``. Clients from :mod:`client.api` follow the record to the new URL.

The token is deleted when the deployment ends: idle or hard timeout, or a failure of its own
(``status`` ``stopped`` / ``failed``). A stage stopped from outside (a cancellation, a pod stopping)
leaves it for a recovery (``status`` ``interrupted``); the client that closes a deployment deletes it.
"""

from __future__ import annotations

import secrets
import socket
import time

from compute.backend import select_backend
from compute.stage import StageContext, StageResult
from jobs.serve import ServeConfig
from store.layout import endpoint_key

POD_PORT = 8000  # the port a RunPod pod exposes for API deployments (prefect.yaml job variables)


def token_secret_name(job_id: str) -> str:
    """Prefect Secret block names: lower-case letters, digits and dashes."""
    return f"ow-api-token-{job_id.replace('_', '-').lower()}"[:120]


# The endpoint record's statuses: clients send requests only while it is serving, and stop
# waiting for a recovery once it has ended.
STARTING, RECOVERING, SERVING, INTERRUPTED = "starting", "recovering", "serving", "interrupted"
ENDED_STATUSES = ("stopped", "failed", "cancelled")


def run_serve_stage(config: ServeConfig, context: StageContext) -> StageResult:
    backend = select_backend("generation")
    base = context.local_model(config.model)
    if base.adapter_path or base.merge_adapter_paths:
        raise ValueError(
            f"model: {config.model!r} resolves to an adapter; serve its base model and list it in lora_adapters"
        )
    adapters = {reference: context.local_adapter(reference) for reference in config.lora_adapters}
    secret_name = token_secret_name(context.job_id)
    # A recovered attempt keeps the lost one's token: clients hold it, so their keys stay valid.
    token = context.read_secret(secret_name) or secrets.token_urlsafe(32)
    context.save_secret(secret_name, token)
    key = endpoint_key(context.job_id)
    previous = context.store.read_json(key) if context.store.exists(key) else None
    endpoint = attempt_record(
        previous,
        job_id=context.job_id,
        models=config.served_model_names(),
        token_secret=secret_name,
        backend=backend.name,
        now=time.time(),
    )
    context.store.write_json(key, endpoint)  # "recovering" tells waiting clients a new server is on its way
    if previous is not None:
        context.reporter.log(
            f"recovering the deployment: attempt {endpoint['attempt']}, same token and endpoint record"
        )
    host, port = ("0.0.0.0", POD_PORT) if context.pod_id else ("127.0.0.1", 0)
    server = make_server(backend.name, config, base.base_path, adapters, token, host, port, context.work_dir)
    reason, ended = None, "failed"
    try:
        server.start()
        base_url = (
            f"https://{context.pod_id}-{port}.proxy.runpod.net/v1" if context.pod_id else server.base_url
        )
        endpoint.update(base_url=base_url, status=SERVING, serving_since=time.time())
        context.store.write_json(key, endpoint)
        context.reporter.link("endpoint", base_url, f"OpenAI-compatible API: {base_url}")
        context.reporter.event(
            "serving", {"base_url": base_url, "models": endpoint["models"], "attempt": endpoint["attempt"]}
        )
        context.reporter.log(f"serving {', '.join(endpoint['models'])} at {base_url}")
        reason = server.wait_until_shutdown(poll_seconds=1)
        ended = "stopped"
    except BaseException as exc:
        # The deployment's own failure is never recovered, nor is a cancellation: it ends here, and its
        # token with it. Stopped from outside otherwise (its pod or machine went away), a recovery may
        # follow: the token stays for it.
        if isinstance(exc, Exception):
            ended = "failed"
        else:
            ended = "cancelled" if context.cancelling() else None
        raise
    finally:
        server.stop()
        if ended is not None:
            context.delete_secret(secret_name)
        endpoint.update(status=ended or INTERRUPTED, stopped_at=time.time())
        context.store.write_json(key, endpoint)
    context.reporter.log(f"server stopped: {reason}")
    return StageResult(
        outputs={"endpoint": endpoint["base_url"]},
        metrics={"served_seconds": round(endpoint["stopped_at"] - endpoint["serving_since"], 1)},
        details={
            "shutdown_reason": reason,
            "models": endpoint["models"],
            "backend": backend.name,
            "attempt": endpoint["attempt"],
        },
    )


def attempt_record(
    previous: dict | None, *, job_id: str, models: list[str], token_secret: str, backend: str, now: float
) -> dict:
    """The endpoint record as an attempt starts (pure): a new one, or the record of the attempt that
    was lost, updated in place (``attempt`` + 1, ``recovered_at``) so clients holding it can follow."""
    fields = {"job_id": job_id, "models": models, "token_secret": token_secret, "backend": backend}
    if previous is None:
        return {**fields, "started_at": now, "attempt": 1, "status": STARTING}
    kept = {name: value for name, value in previous.items() if name not in ("stopped_at", "serving_since")}
    return {
        **kept,
        **fields,
        "attempt": int(previous.get("attempt", 1)) + 1,
        "recovered_at": now,
        "status": RECOVERING,
    }


def make_server(
    backend: str, config: ServeConfig, model_path, adapters: dict, token: str, host: str, port: int, work_dir
):
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

    return TransformersOpenAIServer(
        config, model_path=model_path, adapter_paths=adapters, api_key=token, host=host, port=port
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
