"""API deployments from the client side: bring `api/serve` up, hand out an OpenAI client, take it down.

    with ApiDeployment("meta-llama/Llama-3.1-8B", lora_adapters=["ftjob-…"]) as client:
        client.chat.completions.create(model="ftjob-…", messages=[…])

OpenWeights' ``TemporaryApi``: entering submits the deployment, waits until the server answers
its health check and yields an ``openai.OpenAI`` (``openai.AsyncOpenAI`` with ``async with``)
pointed at it, with the deployment's bearer token read from its Prefect Secret; leaving cancels
the deployment's flow runs (and so the server and its pod). The server also stops by itself
when idle for ``idle_timeout_seconds``.

:class:`MultiDeployment` (OpenWeights' ``multi_deploy``) groups models by base model, brings up
one server per base model, and routes each requested model to its server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen
from uuid import UUID

from client import runs

SERVE_DEPLOYMENT = "api/serve"


class DeploymentError(RuntimeError):
    """The API deployment failed to come up."""


@dataclass
class Endpoint:
    job_id: str
    base_url: str
    api_key: str
    models: list[str]

    def __repr__(self) -> str:  # never show the token
        return f"Endpoint(job_id={self.job_id!r}, base_url={self.base_url!r}, models={self.models!r})"


class ApiDeployment:
    """One `api/serve` deployment: a base model and its adapters behind one OpenAI-compatible server."""

    def __init__(self, model: str, lora_adapters: Sequence[str] = (), *, startup_timeout: float = 1800.0, **serve_options: Any):
        self.parameters = {"model": model, "lora_adapters": list(lora_adapters), **serve_options}
        self.startup_timeout = startup_timeout
        self.flow_run_id: UUID | None = None
        self.endpoint: Endpoint | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def up(self) -> Endpoint:
        """Submit the deployment and block until its server answers."""
        from blocks.secrets import read_secret
        from blocks.storage import load_artifact_store
        from compute.serving.stage import endpoint_key

        deadline = time.monotonic() + self.startup_timeout
        self.flow_run_id = runs.submit(SERVE_DEPLOYMENT, self.parameters).id
        try:
            job_id = runs.wait_for_job_id(self.flow_run_id, timeout=self.startup_timeout)
        except RuntimeError as exc:  # refused in the control tier (bad input): nothing was started
            raise DeploymentError(str(exc)) from None
        store = load_artifact_store()
        while True:
            control = runs.read(self.flow_run_id)
            if control.state is not None and control.state.is_final():
                raise DeploymentError(f"the API deployment {job_id} ended {control.state_name}: {control.state.message}")
            if store.exists(endpoint_key(job_id)):
                record = store.read_json(endpoint_key(job_id))
                if record.get("status") == "serving" and _healthy(record["base_url"]):
                    self.endpoint = Endpoint(job_id, record["base_url"], read_secret(record["token_secret"]), record["models"])
                    return self.endpoint
            if time.monotonic() > deadline:
                self.down()
                raise DeploymentError(f"the API deployment {job_id} did not come up within {self.startup_timeout:.0f}s")
            time.sleep(0.5)

    def down(self, timeout: float = 120.0) -> None:
        """Cancel the deployment (control flow and GPU stage) and wait until it has stopped."""
        if self.flow_run_id is None:
            return
        runs.cancel(self.flow_run_id, message="API deployment closed by the client")
        runs.wait(self.flow_run_id, timeout=timeout)
        if self.endpoint is not None:
            for stage in runs.job_runs(self.endpoint.job_id, gpu_stage=True):
                runs.cancel(stage.id, message="API deployment closed by the client")
                runs.wait(stage.id, timeout=timeout)

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.endpoint.base_url, api_key=self.endpoint.api_key)

    def async_client(self):
        import openai

        return openai.AsyncOpenAI(base_url=self.endpoint.base_url, api_key=self.endpoint.api_key)

    def __enter__(self):
        self.up()
        return self.client()

    def __exit__(self, *exc_info) -> None:
        self.down()

    async def __aenter__(self):
        await asyncio.to_thread(self.up)
        return self.async_client()

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.down)


def _healthy(base_url: str) -> bool:
    root = base_url.removesuffix("/").removesuffix("/v1")
    try:
        with urlopen(f"{root}/health", timeout=5) as response:  # noqa: S310 - the deployment's own URL
            return response.status == 200
    except (URLError, OSError, ValueError):
        return False


class MultiDeployment:
    """Serve many models with as few servers as possible: one per base model, adapters grouped."""

    def __init__(self, models: Sequence[str], **serve_options: Any):
        from blocks.storage import load_artifact_store
        from jobs.deployments import plan_deployments
        from jobs.model_refs import adapter_base

        store = load_artifact_store()
        self.models = list(models)
        self.plan = plan_deployments(self.models, {model: adapter_base(model, store) for model in self.models})
        self.deployments = [
            ApiDeployment(plan.base_model, plan.lora_adapters, **serve_options) for plan in self.plan.deployments
        ]

    def up(self) -> dict[str, tuple[Endpoint, str]]:
        """Bring every server up; returns requested model → (endpoint, name to request)."""
        try:
            for deployment in self.deployments:
                deployment.up()
        except BaseException:
            self.down()
            raise
        return self.routes()

    def routes(self) -> dict[str, tuple[Endpoint, str]]:
        return {
            model: (self.deployments[route.deployment].endpoint, route.served_name)
            for model, route in self.plan.routes.items()
        }

    def down(self) -> None:
        for deployment in self.deployments:
            deployment.down()

    def __enter__(self) -> dict[str, tuple[Endpoint, str]]:
        return self.up()

    def __exit__(self, *exc_info) -> None:
        self.down()

    async def __aenter__(self) -> dict[str, tuple[Endpoint, str]]:
        return await asyncio.to_thread(self.up)

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.down)
