"""API deployments from the client side: bring `api/serve` up, hand out an OpenAI client, take it down.

    with ApiDeployment("meta-llama/Llama-3.1-8B", lora_adapters=["ftjob-…"]) as client:
        client.chat.completions.create(model="ftjob-…", messages=[…])

OpenWeights' ``TemporaryApi``: entering submits the deployment, waits until the server answers
its health check and yields an ``openai.OpenAI`` (``openai.AsyncOpenAI`` with ``async with``)
pointed at it, with the deployment's bearer token read from its Prefect Secret; leaving cancels
the deployment's flow runs (and so the server and its pod). The server also stops by itself
when idle for ``idle_timeout_seconds``. ``base_url`` and ``api_key`` are there once it is up.

The clients follow the deployment across a lost pod (:mod:`client.endpoint_follower`): a request
that finds no server waits for the recovered one and is sent there, with the same key.

:class:`MultiDeployment` (OpenWeights' ``multi_deploy``) groups models by base model, one server per
base model, and maps each requested model to the :class:`ApiDeployment` serving it.
:class:`OnDemandDeployments` brings up what ``ow.chat`` is asked for and no open deployment serves.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from client import runs
from client.endpoint_follower import EndpointFollower, async_following_transport, following_transport, healthy

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
    """One `api/serve` deployment: a base model and its adapters behind one OpenAI-compatible server.

    ``recovery_timeout`` bounds how long a request waits for the deployment to serve again after
    its pod was lost (Prefect starts the stage on a new pod; loading the model takes most of it).
    """

    def __init__(
        self,
        model: str,
        lora_adapters: Sequence[str] = (),
        *,
        startup_timeout: float = 1800.0,
        recovery_timeout: float = 1800.0,
        **serve_options: Any,
    ):
        self.parameters = {"model": model, "lora_adapters": list(lora_adapters), **serve_options}
        self.startup_timeout = startup_timeout
        self.recovery_timeout = recovery_timeout
        self.flow_run_id: UUID | None = None
        self.job_id: str | None = None
        self.endpoint: Endpoint | None = None
        self.follower: EndpointFollower | None = None
        self._client = None

    def __repr__(self) -> str:
        return f"ApiDeployment(model={self.parameters['model']!r}, job_id={self.job_id!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str | None:
        """The OpenAI base URL the deployment serves at now (None until it is up)."""
        return self.endpoint.base_url if self.endpoint else None

    @property
    def api_key(self) -> str | None:
        """The deployment's bearer token (None until it is up)."""
        return self.endpoint.api_key if self.endpoint else None

    @property
    def ended(self) -> bool:
        """True once the deployment is known to serve no more (closed, idle, failed, or never recovered)."""
        return self.follower is not None and self.follower.ended is not None

    # -- lifecycle ------------------------------------------------------------------------------

    def submit(self) -> None:
        """Submit the deployment without waiting for it (``up()`` waits); once only."""
        if self.flow_run_id is None:
            self.flow_run_id = runs.submit(SERVE_DEPLOYMENT, self.parameters).id

    def up(self) -> Endpoint:
        """Submit the deployment (unless :meth:`submit` did) and block until its server answers."""
        from blocks.secrets import read_secret

        deadline = time.monotonic() + self.startup_timeout
        self.submit()
        try:
            self.job_id = runs.wait_for_job_id(self.flow_run_id, timeout=self.startup_timeout)
        except RuntimeError as exc:  # refused in the control tier (bad input): nothing was started
            raise DeploymentError(str(exc)) from None
        while True:
            control = runs.read(self.flow_run_id)
            if control.state is not None and control.state.is_final():
                raise DeploymentError(
                    f"the API deployment {self.job_id} ended {control.state_name}: {control.state.message}"
                )
            record = self._read_record()
            if record is not None and record.get("status") == "serving" and healthy(record["base_url"]):
                api_key = read_secret(record["token_secret"])
                self.endpoint = Endpoint(self.job_id, record["base_url"], api_key, record["models"])
                self.follower = self._make_follower(self.endpoint)
                return self.endpoint
            if time.monotonic() > deadline:
                self.down()
                raise DeploymentError(
                    f"the API deployment {self.job_id} did not come up within {self.startup_timeout:.0f}s"
                )
            time.sleep(0.5)

    def down(self, timeout: float = 120.0) -> None:
        """Cancel the deployment (control flow and GPU stage), wait until it has stopped, delete its token."""
        if self.flow_run_id is None:
            return
        if self.follower is not None:
            self.follower.close()
        runs.cancel(self.flow_run_id, message="API deployment closed by the client")
        runs.wait(self.flow_run_id, timeout=timeout)
        if self.job_id is not None:
            from blocks.secrets import delete_secret
            from compute.serving.stage import token_secret_name

            for stage in runs.job_runs(self.job_id, gpu_stage=True):
                runs.cancel(stage.id, message="API deployment closed by the client")
                runs.wait(stage.id, timeout=timeout)
            # A stage stopped from outside leaves the token for a recovery; none follows a closed deployment.
            delete_secret(token_secret_name(self.job_id))

    def client(self):
        """An ``openai.OpenAI`` for the deployment (one per deployment) that follows it across a recovery."""
        import openai

        if self._client is None:
            base_url = self._require_up().base_url
            transport = following_transport(self.follower, base_url)
            self._client = openai.OpenAI(
                base_url=base_url,
                api_key=self.api_key,
                http_client=openai.DefaultHttpxClient(transport=transport),
            )
        return self._client

    def async_client(self):
        """A new ``openai.AsyncOpenAI`` for the deployment that follows it across a recovery."""
        import openai

        base_url = self._require_up().base_url
        transport = async_following_transport(self.follower, base_url)
        return openai.AsyncOpenAI(
            base_url=base_url,
            api_key=self.api_key,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),
        )

    async def async_up(self):
        """OpenWeights' ``TemporaryApi.async_up``: bring the deployment up; returns an async client."""
        await asyncio.to_thread(self.up)
        return self.async_client()

    def __enter__(self):
        self.up()
        return self.client()

    def __exit__(self, *exc_info) -> None:
        self.down()

    async def __aenter__(self):
        return await self.async_up()

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.down)

    # -- following the endpoint record ----------------------------------------------------------

    def _require_up(self) -> Endpoint:
        if self.endpoint is None:
            raise DeploymentError("the API deployment is not up: call up() or enter it with `with` first")
        return self.endpoint

    def _read_record(self) -> dict | None:
        from blocks.storage import load_artifact_store
        from store.layout import endpoint_key

        store = load_artifact_store()
        key = endpoint_key(self.job_id)
        return store.read_json(key) if store.exists(key) else None

    def _control_run_ended(self) -> str | None:
        control = runs.read(self.flow_run_id)
        if control.state is not None and control.state.is_final():
            return f"its control flow run ended {control.state_name}"
        return None

    def _make_follower(self, endpoint: Endpoint) -> EndpointFollower:
        from blocks.secrets import load_secrets

        def followed(base_url: str, api_key: str) -> None:
            self.endpoint = Endpoint(endpoint.job_id, base_url, api_key, endpoint.models)

        return EndpointFollower(
            endpoint.job_id,
            endpoint.base_url,
            endpoint.api_key,
            read_record=self._read_record,
            read_token=lambda name: load_secrets([name]).get(name),
            deployment_ended=self._control_run_ended,
            recovery_timeout=self.recovery_timeout,
            on_follow=followed,
        )


class MultiDeployment(dict):
    """OpenWeights' ``multi_deploy``: requested model → the :class:`ApiDeployment` that serves it.

    One server per base model, loaded with every requested adapter of that base, so models of one
    base share an API object (and its ``base_url`` and ``api_key`` once up); each base model is a key
    too. Bring one API up with ``with apis[model] as client:``, or all of them with ``with apis:``.
    """

    def __init__(self, models: Sequence[str], **serve_options: Any):
        from blocks.storage import load_artifact_store
        from jobs.model_refs import adapter_base
        from jobs.server_plan import plan_servers

        super().__init__()
        store = load_artifact_store()
        self.models = list(models)
        self.plan = plan_servers(
            self.models, {model: adapter_base(model, store) for model in self.models}
        )
        self.deployments = [
            ApiDeployment(plan.base_model, plan.lora_adapters, **serve_options)
            for plan in self.plan.servers
        ]
        self._served_names: dict[str, str] = {}
        for deployment, plan in zip(self.deployments, self.plan.servers, strict=True):
            self.setdefault(plan.base_model, deployment)
            self._served_names.setdefault(plan.base_model, plan.base_model)
        for model, route in self.plan.routes.items():
            self[model] = self.deployments[route.server]
            self._served_names[model] = route.served_name

    def __repr__(self) -> str:
        return f"MultiDeployment({dict.__repr__(self)})"

    def served_name(self, model: str) -> str:
        """The model name to request from ``self[model]``'s server (a base model's spelling may differ)."""
        return self._served_names[model]

    def up(self) -> MultiDeployment:
        """Bring every server up: all are submitted first, so they start side by side."""
        try:
            for deployment in self.deployments:
                deployment.submit()
            for deployment in self.deployments:
                deployment.up()
        except BaseException:
            self.down()
            raise
        return self

    def routes(self) -> dict[str, tuple[Endpoint, str]]:
        """Requested model → (endpoint, name to request), once up."""
        return {model: (self[model].endpoint, self.served_name(model)) for model in self.plan.routes}

    def down(self) -> None:
        for deployment in self.deployments:
            deployment.down()

    def __enter__(self) -> MultiDeployment:
        return self.up()

    def __exit__(self, *exc_info) -> None:
        self.down()

    async def __aenter__(self) -> MultiDeployment:
        return await asyncio.to_thread(self.up)

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.to_thread(self.down)


class OnDemandDeployments:
    """Bring up the models chat requests ask for that no open deployment serves (OpenWeights' ``ow.chat``).

    Models asked for within ``gather_seconds`` of each other are deployed together with
    ``multi_deploy``, so adapters of one base model requested at once share one server. A request
    waits until its model's server is up; a model whose deployment has ended is deployed again.
    The servers stop when idle (``idle_timeout_seconds`` among ``deploy_options``) or with :meth:`kill`.
    """

    def __init__(
        self,
        multi_deploy: Callable[..., MultiDeployment],
        deploy_options: dict[str, Any],
        gather_seconds: float = 5.0,
    ):
        self._multi_deploy = multi_deploy
        self.deploy_options = deploy_options  # shared with the caller: changes apply to later deployments
        self.gather_seconds = gather_seconds
        self._lock = threading.Lock()
        self._deployed: dict[str, Future] = {}  # model → Future of (deployment, name to request)
        self._gathering: list[str] = []

    def deployment_for(self, model: str) -> tuple[ApiDeployment, str]:
        """The deployment serving ``model`` and the name to request, deploying it first if need be."""
        with self._lock:
            future = self._deployed.get(model)
            if future is None or _failed_or_ended(future):
                future = self._deployed[model] = Future()
                self._gathering.append(model)
                if len(self._gathering) == 1:
                    threading.Thread(
                        target=self._deploy_gathered, name="ow-deploy-on-demand", daemon=True
                    ).start()
        return future.result()

    def kill(self, model: str) -> None:
        """Take down the on-demand deployment serving ``model`` (and the other models it serves)."""
        with self._lock:
            deployment = _deployment_of(self._deployed.get(model))
            if deployment is None:
                return
            self._deployed = {
                name: future
                for name, future in self._deployed.items()
                if _deployment_of(future) is not deployment
            }
        deployment.down()

    def _deploy_gathered(self) -> None:
        time.sleep(self.gather_seconds)
        with self._lock:
            models, self._gathering = self._gathering, []
            futures = {model: self._deployed[model] for model in models}
        try:
            apis = self._multi_deploy(models, **self.deploy_options)
            apis.up()
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for future in futures.values():
                future.set_exception(exc)
            return
        for model, future in futures.items():
            future.set_result((apis[model], apis.served_name(model)))


def _deployment_of(future: Future | None) -> ApiDeployment | None:
    """The deployment a request's future resolved to; None while it is pending, or if it failed."""
    if future is None or not future.done() or future.exception() is not None:
        return None
    return future.result()[0]


def _failed_or_ended(future: Future) -> bool:
    if not future.done():
        return False
    deployment = _deployment_of(future)
    return deployment is None or deployment.ended
