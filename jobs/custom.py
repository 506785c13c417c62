"""Custom jobs: a user's own GPU script as a job, with the guarantees every job has.

OpenWeights' custom jobs, on the one job mechanism: the job is its script files (uploaded, so
they are content-addressed), an entrypoint (an argument list, never a shell string), the
user's parameters validated by the user's pydantic model (its JSON schema travels with the
job, so the control tier validates them too) and a VRAM requirement. The job ID covers the
parameters and the bytes of every mounted file: change the script and it is a new job.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field, JsonValue, field_validator

from jobs.file_ids import FileId, is_file_id
from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # NUL, newlines, …: no file name of a job's needs them


class CustomJobConfig(HardwareRequest):
    """A custom job: mounted files, an entrypoint, validated parameters, a VRAM requirement."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The custom job's name (lower-case letters, digits, _), e.g. 'word_count'.")
    params: dict[str, JsonValue] = Field(default_factory=dict, description="The job's parameters, validated by params_schema.")
    params_schema: dict[str, JsonValue] | None = Field(
        None, description="JSON schema of the parameters (the user's pydantic model); enforced before any GPU is requested."
    )
    mounted_files: dict[str, FileId] = Field(
        default_factory=dict, description="Path in the job's working directory → file ID of its content."
    )
    entrypoint: list[str] = Field(
        min_length=1, description="Command run in the job's working directory, as an argument list ('python' is this environment's Python)."
    )

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: float = Field(
        24.0, ge=0, allow_inf_nan=False, description="GPU memory in GB the job needs, over all its GPUs (chooses the GPU type)."
    )
    image: ContainerImage

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"name must be lower-case letters, digits and _, starting with a letter; got {value!r}")
        return value

    @field_validator("mounted_files")
    @classmethod
    def _relative_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            parts = path.replace("\\", "/").split("/")
            if path.startswith("/") or ".." in parts or not path.strip() or _CONTROL_RE.search(path):
                raise ValueError(f"mounted_files: {path!r} must be a relative path inside the job's directory")
        return value

    @field_validator("entrypoint")
    @classmethod
    def _no_nul_in_arguments(cls, value: list[str]) -> list[str]:
        # The OS cannot pass a NUL byte in an argument: refused here, not by subprocess on the GPU.
        for index, argument in enumerate(value):
            if "\x00" in argument:
                raise ValueError(f"entrypoint: argument {index} ({argument!r}) contains a NUL byte")
        return value

    def input_file_ids(self) -> list[str]:
        """File IDs among the parameters (top level or in lists): downloaded for the script."""
        found: list[str] = []

        def collect(value: Any) -> None:
            if isinstance(value, str) and is_file_id(value):
                found.append(value)
            elif isinstance(value, list):
                for item in value:
                    collect(item)
            elif isinstance(value, dict):
                for item in value.values():
                    collect(item)

        collect(self.params)
        return found


def check_params_against_schema(config: CustomJobConfig) -> list[str]:
    """Problems of ``params`` against ``params_schema``, each naming the parameter."""
    if not config.params_schema:
        return []
    import jsonschema

    validator = jsonschema.Draft202012Validator(config.params_schema)
    problems = []
    for error in sorted(validator.iter_errors(config.params), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path) or "(parameters)"
        problems.append(f"params.{where}: {error.message}")
    return problems
