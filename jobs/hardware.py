"""Where a job's GPU stage runs: the hardware request every GPU job type accepts, as OpenWeights' jobs do.

Three parameters, the same in every GPU job type:

- ``allowed_hardware``: GPU counts and types the pod may have (``["2x A100", "1x H200"]``, parsed by
  :mod:`infra.runpod.hardware`); empty: the work pool's own GPU types and count;
- ``requires_vram_gb``: GPU memory the job needs, replacing the job's estimate;
- ``image``: a container image replacing the work pool's.

They travel to the GPU stage as job variables of the ``runpod`` work pool (:func:`gpu_stage_job_variables`),
and are checked here, so a bad value fails validation naming the field before any pod.

They are not part of the job ID (:data:`PLACEMENT_FIELDS`, left out by :func:`jobs.registry.identity_params`):
they say where a job runs, not what it computes, so the same job resubmitted on other hardware — or in
another image, as a change of the pool's default image would do — is the same job and a cache hit.
Use ``job_id_suffix`` to force a new run.

A fourth, ``max_cost_usd``, is declared here once for every GPU job type: what the job may cost, which
budgets take as its estimate (:mod:`jobs.budgets`). It is not part of the job ID either (:data:`NOT_IN_JOB_ID`).

A job type's parameter model subclasses :class:`HardwareRequest` and declares the three fields last,
with the types defined here (``allowed_hardware: AllowedHardware`` …), so the Prefect form lists the
job's own parameters first; the descriptions, bounds and checks are written once, here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field, field_validator

from infra.runpod.hardware import HardwareOption, canonical_allowed_hardware, parse_allowed_hardware

PLACEMENT_FIELDS = ("allowed_hardware", "requires_vram_gb", "image")
MAX_COST_FIELD = "max_cost_usd"
FORCE_FIELD = "force"
# What a job's ID leaves out: where it runs, what it may cost and whether a stored result may be
# reused say nothing about what it computes.
NOT_IN_JOB_ID = (*PLACEMENT_FIELDS, MAX_COST_FIELD, FORCE_FIELD)

AllowedHardware = Annotated[
    list[str],
    Field(
        default_factory=list,
        description='GPU counts and types the job may run on, e.g. ["2x A100", "1x H200"]: "<count>x <GPU type>", '
        "where the type is a short name (A40, A6000, L40S, A100, A100S, H100, H100S, H100N, H200, 4090, …) or a "
        'RunPod GPU type id such as "NVIDIA A40". Empty: the work pool\'s GPU types. Options with less GPU memory '
        "than the job needs (requires_vram_gb, else the estimate) are not used.",
    ),
]
RequiredVramGb = Annotated[
    float | None,
    Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="GPU memory in GB the job needs, over all its GPUs; replaces the job's estimate when choosing "
        "the GPU. Empty: the estimate.",
    ),
]
ContainerImage = Annotated[
    str | None,
    Field(
        default=None,
        description="Container image of the job's pod (e.g. 'ghcr.io/org/ow-prefect:1.4'), replacing the work "
        "pool's; it must run this project's pod entrypoint. Empty: the pool's image.",
    ),
]

# Registry, repository, tag and digest characters of an image reference: no spaces, no control characters.
_IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


class HardwareRequest(BaseModel):
    """Base of every GPU job type's parameter model: checks its hardware request and reads it back.

    Subclasses declare ``allowed_hardware: AllowedHardware``, ``requires_vram_gb: RequiredVramGb`` and
    ``image: ContainerImage`` as their last fields (a job type may keep its own default for
    ``requires_vram_gb``, as custom jobs do); a subclass missing one is refused when it is defined.
    """

    if TYPE_CHECKING:  # declared by each subclass, last: declared here, they would come first in the form
        allowed_hardware: list[str]
        requires_vram_gb: float | None
        image: str | None

    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="What this job may cost in USD: budgets take it as the job's estimated cost, and refuse the "
        "job before any pod when it exceeds what a budget has left. Empty: estimated from the cheapest GPU "
        "that fits and the job's size. It does not stop a running pod (the pool's max_run_hours does).",
    )
    force: bool = Field(
        default=False,
        description="Run the job again even if an identical job completed (its stored result is replaced). "
        "Without it an identical job is served from the store at no cost, unless one of its outputs is gone.",
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        missing = [name for name in PLACEMENT_FIELDS if name not in cls.model_fields]
        if missing:
            raise TypeError(
                f"{cls.__name__} must declare {', '.join(missing)} (with the types of jobs.hardware) "
                "to be a HardwareRequest"
            )
        # Fields declared on a base come first; the form (the flow's signature, built from model_fields)
        # should show the job's own parameters first, so force and max_cost_usd move to the end. Validation and
        # serialisation do not depend on this order.
        fields = dict(cls.__pydantic_fields__)
        for name in (FORCE_FIELD, MAX_COST_FIELD):
            fields[name] = fields.pop(name)
        cls.__pydantic_fields__ = fields

    @field_validator("allowed_hardware", check_fields=False)
    @classmethod
    def _allowed_hardware_parses(cls, value: list[str]) -> list[str]:
        parse_allowed_hardware(value)  # raises ValueError naming the entry and what would be valid
        return value

    @field_validator("image", check_fields=False)
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        return check_image_reference(value)

    def hardware_options(self) -> list[HardwareOption]:
        """The parsed ``allowed_hardware``; empty means the work pool's GPU types and count."""
        return parse_allowed_hardware(self.allowed_hardware)


def check_image_reference(value: str | None) -> str | None:
    """A container image reference (``registry/repository:tag`` or ``…@sha256:…``), or unset."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError(
            "image is empty; give a container image such as 'ghcr.io/org/ow-prefect:1.4', or leave it unset"
        )
    if not _IMAGE_REFERENCE.fullmatch(value):
        raise ValueError(
            f"image {value!r} is not a container image reference: use letters, digits and . _ - / : @ only "
            "(no spaces or control characters), e.g. 'ghcr.io/org/ow-prefect:1.4'"
        )
    return value


def gpu_stage_job_variables(params: BaseModel, estimated_vram_gb: float | None) -> dict[str, Any]:
    """The ``runpod`` work pool's job variables for this job's GPU stage.

    - ``min_vram_gb`` (float, GB over all the pod's GPUs): ``requires_vram_gb`` when given, else the
      estimate; absent when there is neither;
    - ``allowed_hardware`` (list of ``"<count>x <RunPod GPU type id>"``, see
      :func:`infra.runpod.hardware.canonical_allowed_hardware`): only when the job names hardware;
    - ``image`` (str): only when the job names one.

    What the job leaves unset is left to the work pool's own settings.
    """
    required = params.requires_vram_gb if isinstance(params, HardwareRequest) else None
    min_vram_gb = required if required is not None else estimated_vram_gb
    variables: dict[str, Any] = {} if min_vram_gb is None else {"min_vram_gb": float(min_vram_gb)}
    if isinstance(params, HardwareRequest):
        options = params.hardware_options()
        if options:
            variables["allowed_hardware"] = canonical_allowed_hardware(options)
        if params.image is not None:
            variables["image"] = params.image
    return variables


def describe_hardware_request(params: BaseModel, estimated_vram_gb: float | None) -> str:
    """One log line: the hardware, GPU memory and image the job asks for, and where each comes from."""
    request = params if isinstance(params, HardwareRequest) else None
    options = request.hardware_options() if request else []
    hardware = (
        " or ".join(option.describe() for option in options) if options else "the work pool's GPU types"
    )
    required = request.requires_vram_gb if request else None
    if required is not None:
        estimate = "" if estimated_vram_gb in (None, required) else f", estimate {estimated_vram_gb:.1f} GB"
        memory = f"{required:.1f} GB of GPU memory (requested{estimate})"
    elif estimated_vram_gb is not None:
        memory = f"{estimated_vram_gb:.1f} GB of GPU memory (estimated)"
    else:
        memory = "no GPU memory requirement"
    image = request.image if request and request.image else "the work pool's"
    return f"hardware: {hardware}; {memory}; image: {image}"
