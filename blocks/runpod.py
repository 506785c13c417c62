"""RunPod credentials as a Prefect block, so the API key lives in Prefect's secret store.

The ``runpod`` work pool refers to a saved document of this block (variable ``runpod_credentials``);
the worker reads it when it launches, watches or terminates pods. The key never reaches a pod, a
flow-run parameter or a log line: inside a pod, RunPod injects its own pod-scoped ``RUNPOD_API_KEY``.

Save one with::

    RunPodCredentials(api_key="rpa_...").save("my-account")

and reference it from a work pool or deployment as
``{{ prefect.blocks.ow-runpod-credentials.my-account }}``.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator


class RunPodCredentials(Block):
    """An API key for the RunPod account that pays for the pods, and which API to send it to."""

    _block_type_name: ClassVar[str] = "RunPod Credentials"
    _block_type_slug: ClassVar[str] = "ow-runpod-credentials"
    _description: ClassVar[str] = (
        "API key (and optionally API address) of the RunPod account the `runpod` work pool launches pods in."
    )

    api_key: SecretStr = Field(
        description="RunPod API key (Settings → API Keys in the RunPod console). Stored as a secret.",
    )
    api_base_url: str | None = Field(
        default=None,
        description=(
            "Base URL of RunPod's REST API v2, without a trailing slash or `/v2`. Leave empty for "
            "https://api.runpod.io; set it to talk to an emulator or a proxy (the worker uses it, and the "
            "pods it starts get it as RUNPOD_API_BASE_URL to end themselves through the same API)."
        ),
    )

    @field_validator("api_base_url")
    @classmethod
    def _strip_base_url(cls, value: str | None) -> str | None:
        # The client appends "/v2/…" paths, so "http://host/" would become "http://host//v2/…".
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/").removesuffix("/v2").removesuffix("/graphql")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_base_url must start with http:// or https://, got {value!r}")
        return value
