"""Parameters of an API deployment: one base model and its LoRA adapters behind an OpenAI-compatible server.

The counterpart of OpenWeights' ``ApiConfig`` / ``ow.api.deploy``: the base model is served under
its reference, each adapter under its own reference, so a client picks one with the request's
``model`` field. On a GPU the server is ``vllm serve`` (:mod:`compute.serving.vllm_command`);
elsewhere it is the transformers server of :mod:`compute.serving.server`.

Differences from OpenWeights, on purpose:

- the timeouts are part of the deployment (OpenWeights keeps them in the client that polls it):
  ``idle_timeout_seconds`` stops a server nobody uses, ``hard_timeout_seconds`` bounds its life;
- ``max_lora_rank`` is derived from the adapters' ``adapter_config.json`` when unset, and must
  be a rank vLLM accepts when set;
- the bearer token is never a parameter: the flow creates it and hands it to the server through
  the environment (a parameter would be stored in plain text with the flow run).

Pure pydantic (no torch): imported by the control tier and the Prefect UI form.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb
from jobs.inference import check_model_reference, check_vllm_option

# vLLM's LoRAConfig.max_lora_rank is Literal[1, 8, 16, 32, 64, 128, 256, 320, 512].
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServeConfig(HardwareRequest):
    """Serve a base model and any number of its LoRA adapters through one OpenAI-compatible API."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Base model: a Hugging Face model ID, a local path or an artifact URI. Served under this name.",
    )
    lora_adapters: list[str] = Field(
        default_factory=list,
        description="LoRA adapters of the base model (Hub IDs, local paths, fine-tuning job IDs or artifact URIs); "
        "each is served under its reference as the model name.",
    )
    max_model_len: int = Field(
        2048, ge=16, le=1_048_576, description="Context length (prompt + completion tokens) per request."
    )
    max_num_seqs: int = Field(100, ge=1, le=65_536, description="Maximum number of sequences processed concurrently.")
    max_lora_rank: int | None = Field(
        None,
        description="Largest LoRA rank the server can load, one of "
        f"{', '.join(map(str, VLLM_LORA_RANKS))}; unset derives it from the adapters' ranks.",
    )
    max_loras: int | None = Field(
        None, ge=1, description="Adapters usable in one batch (vLLM --max-loras); unset allows all of them."
    )
    quantization: str | None = Field(None, description="vLLM --quantization method (e.g. 'fp8', 'awq'); GPU only.")
    kv_cache_dtype: str | None = Field(None, description="vLLM --kv-cache-dtype (e.g. 'fp8'); GPU only.")
    idle_timeout_seconds: float = Field(
        900.0, gt=0, description="Stop the server after this many seconds without an authenticated request."
    )
    hard_timeout_seconds: float = Field(
        86_400.0, gt=0, description="Stop the server this many seconds after it started, busy or not."
    )

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    @field_validator("model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        return check_model_reference("model", value)

    @field_validator("lora_adapters")
    @classmethod
    def _adapter_references(cls, value: list[str]) -> list[str]:
        checked = [check_model_reference(f"lora_adapters[{index}]", ref) for index, ref in enumerate(value)]
        seen: dict[str, int] = {}
        for index, ref in enumerate(checked):
            if ref in seen:
                raise ValueError(f"lora_adapters[{index}] repeats lora_adapters[{seen[ref]}] ({ref!r}); list each adapter once")
            seen[ref] = index
        return checked

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int | None) -> int | None:
        if value is not None and value not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {', '.join(map(str, VLLM_LORA_RANKS))} (the ranks vLLM accepts), got {value}"
            )
        return value

    @field_validator("quantization", "kv_cache_dtype")
    @classmethod
    def _vllm_option(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_vllm_option(info.field_name, value)

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.model in self.lora_adapters:
            index = self.lora_adapters.index(self.model)
            raise ValueError(f"lora_adapters[{index}] is the base model itself ({self.model!r}); it is served anyway")
        if self.idle_timeout_seconds > self.hard_timeout_seconds:
            raise ValueError(
                f"idle_timeout_seconds ({self.idle_timeout_seconds:g}) exceeds hard_timeout_seconds "
                f"({self.hard_timeout_seconds:g}); the idle timeout could never fire"
            )
        return self

    def served_model_names(self) -> list[str]:
        """The names clients use in the ``model`` field: the base model first, then each adapter."""
        return [self.model, *self.lora_adapters]

    def ordered_adapter_paths(self, adapter_paths: Mapping[str, str | Path]) -> dict[str, Path]:
        """Local adapter directories in ``lora_adapters`` order; each adapter needs one, and nothing else may have one."""
        missing = [name for name in self.lora_adapters if name not in adapter_paths]
        extra = [name for name in adapter_paths if name not in self.lora_adapters]
        if missing or extra:
            details = []
            if missing:
                details.append(f"no local path for {', '.join(map(repr, missing))}")
            if extra:
                details.append(f"{', '.join(map(repr, extra))} not in lora_adapters")
            raise ValueError("adapter paths do not match lora_adapters: " + "; ".join(details))
        return {name: Path(adapter_paths[name]) for name in self.lora_adapters}
