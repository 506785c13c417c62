"""Group models into servers: one per base model, serving all of that base's adapters.

OpenWeights' ``multi_deploy``: asked for a mix of base models and LoRA adapters, it starts one
server per base model and loads every adapter of that base into it, so N fine-tunes of one
model cost one GPU, not N. :func:`plan_servers` makes that decision as a pure function; the
caller supplies each reference's base model (an adapter's comes from its ``adapter_config.json``,
:func:`jobs.adapter_config.adapter_base_model`; a base model has none).

:func:`check_adapter_bases` guards a single :class:`~jobs.serve.ServeConfig`: a server can only
load adapters of the base model it serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.model_refs import parse_model_ref
from jobs.serve import ServeConfig


class MixedBaseModelsError(ValueError):
    """Adapters of different base models where one server was asked for."""


@dataclass(frozen=True)
class PlannedServer:
    """One server: a base model and the adapters loaded into it."""

    base_model: str
    lora_adapters: tuple[str, ...] = ()

    def serve_config(self, **options: Any) -> ServeConfig:
        """The server's parameters; ``options`` are the other :class:`ServeConfig` fields."""
        return ServeConfig(model=self.base_model, lora_adapters=list(self.lora_adapters), **options)


@dataclass(frozen=True)
class Route:
    """Where a requested model is served: the server (its index in the plan) and the model name to request."""

    server: int
    served_name: str


@dataclass(frozen=True)
class ServerPlan:
    servers: tuple[PlannedServer, ...]
    routes: Mapping[str, Route]  # requested reference → where it is served


def same_model_key(reference: str) -> str:
    """A key under which two spellings of one model compare equal (local paths are made absolute)."""
    reference = reference.strip().rstrip("/") or reference.strip()
    try:
        ref = parse_model_ref(reference)
    except ValueError:
        return reference  # e.g. a bare relative path written by an old trainer: compare as written
    return ref.value


def plan_servers(models: Sequence[str], base_models: Mapping[str, str | None]) -> ServerPlan:
    """Group ``models`` by base model; returns the servers to start and which one serves each model.

    ``base_models`` maps each requested reference to its adapter's base model, or to ``None``
    when the reference is a base model itself. Servers and their adapters keep the order in
    which they were first requested; a model requested twice is served once.
    """
    missing = [model for model in models if model not in base_models]
    if missing:
        raise ValueError(
            f"the base model of {', '.join(map(repr, missing))} is not known; map each reference to its "
            "adapter's base_model_name_or_path, or to None for a base model"
        )
    order: list[str] = []  # base-model keys in first-seen order
    base_name: dict[str, str] = {}  # key → the spelling the server is started with
    adapters: dict[str, list[str]] = {}
    for model in dict.fromkeys(models):
        base = base_models[model]
        key = same_model_key(base if base is not None else model)
        if key not in adapters:
            order.append(key)
            adapters[key] = []
            base_name[key] = base if base is not None else model
        if base is None:
            base_name[key] = model  # the spelling the user asked for wins over an adapter's record
        else:
            adapters[key].append(model)

    servers = tuple(PlannedServer(base_name[key], tuple(adapters[key])) for key in order)
    index = {key: number for number, key in enumerate(order)}
    routes: dict[str, Route] = {}
    for model in models:
        base = base_models[model]
        number = index[same_model_key(base if base is not None else model)]
        routes[model] = Route(number, servers[number].base_model if base is None else model)
    return ServerPlan(servers, routes)


def check_adapter_bases(config: ServeConfig, base_models: Mapping[str, str | None]) -> None:
    """Raise :class:`MixedBaseModelsError` unless every adapter of ``config`` belongs to ``config.model``.

    ``base_models`` maps each adapter reference to its ``base_model_name_or_path`` (``None`` when
    the reference is not an adapter at all).
    """
    expected = same_model_key(config.model)
    problems = []
    for index, adapter in enumerate(config.lora_adapters):
        if adapter not in base_models:
            problems.append(f"lora_adapters[{index}] ({adapter!r}): its base model is not known")
            continue
        base = base_models[adapter]
        if base is None:
            problems.append(f"lora_adapters[{index}] ({adapter!r}) is not a LoRA adapter (no adapter_config.json)")
        elif same_model_key(base) != expected:
            problems.append(
                f"lora_adapters[{index}] ({adapter!r}) is an adapter of {base!r}, not of model {config.model!r}"
            )
    if problems:
        raise MixedBaseModelsError(
            "one server serves one base model and its own adapters: "
            + "; ".join(problems)
            + ". Serve adapters of different base models in separate deployments (ow.api.multi_deploy groups them by base model)."
        )
