"""The OpenWeights-style client, over the Prefect API and the artifact store.

    from client import OpenWeights          # was: from openweights import OpenWeights
    ow = OpenWeights()
    training_file = ow.files.upload("train.jsonl", purpose="conversations")["id"]
    job = ow.fine_tuning.create(model=…, training_file=training_file, loss="sft", epochs=1, learning_rate=1e-4, r=32)
    job.wait(); print(job.status, job.outputs)
    ow.costs.report(by="job_type", since="7d")   # GPU spend from the cost ledger
    ow.events.list(job_id=job.id)                # what the job's code logged with ow.run.log({...})

Talks to the Prefect server at ``PREFECT_API_URL`` and to the store configured there (the
``ow-artifact-store`` block, ``OW_STORE_BLOCK`` or ``store_block`` to pick another). The store is
loaded when first used: a job's own code constructs ``OpenWeights()`` to call ``ow.run.log``,
with no Prefect settings to load a store from (:mod:`client.events`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.chat import AsyncChatCompletions, ChatCompletions, RateLimiter, ResponseCache
from client.costs import Costs
from client.custom_jobs import registered_jobs
from client.events import CurrentRun, Events
from client.files import Files
from client.jobs import Job, JobFactory, Jobs


class _Namespace:
    def __init__(self, **members: Any):
        self.__dict__.update(members)


class Api:
    """``ow.api``: API deployments as context managers (sync and async)."""

    job_type = "api"  # what deploy() submits (client.api.ApiDeployment)

    def __init__(self, ow: OpenWeights):
        self._ow = ow

    def deploy(self, model: str, lora_adapters: list[str] | None = None, **serve_options: Any):
        from client.api import ApiDeployment

        return self._ow._track(ApiDeployment(model, lora_adapters or [], **serve_options))

    def multi_deploy(self, models: list[str], **serve_options: Any):
        """OpenWeights' ``multi_deploy``: each requested model (and each base model) → the API object
        serving it (``base_url``, ``api_key`` once up; ``with apis[model] as client:``), one server
        per base model. ``with ow.api.multi_deploy(models) as apis:`` brings them all up."""
        from client.api import MultiDeployment

        return self._ow._track(MultiDeployment(models, **serve_options))


class WeightedSftJobs(JobFactory):
    """``ow.weighted_sft``: OpenWeights' token-weighted SFT, a ``finetune`` job with ``loss="weighted_sft"``
    (deployment ``finetune/weighted-sft``); takes OpenWeights' spellings (``loss="sft"``, ``ft_id_suffix``,
    ``eval_every_n_steps="log"``)."""

    def create(self, **params: Any) -> Job:
        from jobs.finetune import openweights_weighted_sft_params

        return super().create(**openweights_weighted_sft_params(params))


class OpenWeights:
    """The client. ``ow.chat.completions.create(model=…)`` deploys a model no open deployment serves
    (OpenWeights' behaviour), with ``deploy_kwargs`` as its ``multi_deploy`` options; requests are
    retried with backoff on transient errors."""

    def __init__(
        self,
        store_block: str | None = None,
        cache_dir: str | Path | None = None,
        requests_per_second: float | None = None,
        max_concurrent: int | None = None,
        deploy_kwargs: dict[str, Any] | None = None,
        deploy_gather_seconds: float = 5.0,
    ):
        from blocks.storage import ow_home
        from client.api import OnDemandDeployments

        self._store = _StoreOnFirstUse(store_block)
        self.files = Files(self._store)
        self.jobs = Jobs(self._store, self.files, store_block=store_block)
        self.fine_tuning = JobFactory(self.jobs, "finetune")
        self.weighted_sft = WeightedSftJobs(self.jobs, "finetune")
        self.inference = JobFactory(self.jobs, "inference", renamed={"input_file_id": "input_file"})
        self.inspect_ai = JobFactory(self.jobs, "eval-inspect")
        self.mmlu_pro = JobFactory(self.jobs, "eval-mmlu-pro")
        # OpenWeights' names
        self.logprob = JobFactory(self.jobs, "logprobs", renamed={"dataset": "input_file"})
        self.multiple_choice = JobFactory(self.jobs, "eval-multiple-choice")
        self.custom = JobFactory(self.jobs, "custom")
        self.events = Events()
        self._current_run: CurrentRun | None = None
        self.api = Api(self)
        self.costs = Costs()
        self._deployments: list = []
        self.deploy_kwargs: dict[str, Any] = dict(deploy_kwargs or {})
        self._on_demand = OnDemandDeployments(
            self.api.multi_deploy, self.deploy_kwargs, deploy_gather_seconds
        )
        cache = ResponseCache(Path(cache_dir) if cache_dir else ow_home() / "cache" / "chat")
        limiter = RateLimiter(requests_per_second=requests_per_second, max_concurrent=max_concurrent)
        self.chat = _Namespace(
            completions=ChatCompletions(self._route, cache, limiter, kill=self._on_demand.kill)
        )
        self.async_chat = _Namespace(
            completions=AsyncChatCompletions(
                self._route_async, cache, max_concurrent or 32, kill=self._on_demand.kill
            )
        )

    @property
    def run(self) -> CurrentRun:
        """The run whose code calls this (inside a job): ``ow.run.log({...})`` records one of its events."""
        if self._current_run is None:
            self._current_run = CurrentRun()
        return self._current_run

    def __getattr__(self, name: str):
        jobs = registered_jobs()
        if name in jobs:
            return jobs[name](self)
        raise AttributeError(
            f"OpenWeights has no attribute {name!r} (custom jobs: {sorted(jobs) or 'none registered'})"
        )

    # -- routing chat requests to the deployment serving a model -------------------------------

    def _track(self, deployment):
        self._deployments.append(deployment)
        return deployment

    def _endpoint_for(self, model: str):
        """The deployment serving ``model`` and the name to request: an open one, else one deployed now."""
        from client.api import ApiDeployment, MultiDeployment

        for deployment in reversed(self._deployments):
            if isinstance(deployment, ApiDeployment) and _serves(deployment, model):
                return deployment, model
            if (
                isinstance(deployment, MultiDeployment)
                and model in deployment
                and _serves(deployment[model], None)
            ):
                return deployment[model], deployment.served_name(model)
        return self._on_demand.deployment_for(model)

    def _route(self, model: str):
        deployment, served_name = self._endpoint_for(model)
        return deployment.client(), served_name

    def _route_async(self, model: str):
        deployment, served_name = self._endpoint_for(model)
        return deployment.async_client(), served_name


class _StoreOnFirstUse:
    """The client's artifact store, loaded from its Prefect block when first used (see the module docstring)."""

    def __init__(self, store_block: str | None):
        self._block = store_block
        self._loaded = None

    def __getattr__(self, name: str):
        if self._loaded is None:
            from blocks.storage import load_artifact_store

            self._loaded = load_artifact_store(self._block)
        return getattr(self._loaded, name)


def _serves(deployment, model: str | None) -> bool:
    """Whether an API deployment is up, has not ended, and (``model`` given) serves ``model``."""
    if deployment.endpoint is None or deployment.ended:
        return False
    return model is None or model in deployment.endpoint.models
