"""Custom jobs from the client: subclass :class:`CustomJob`, register it, create jobs from it.

    from client import OpenWeights, CustomJob, register

    class WordCountParams(BaseModel):
        input_file: str
        min_length: int = 3

    @register("word_count")
    class WordCount(CustomJob):
        mount = {"scripts/word_count.py": "word_count.py"}   # local path → path in the job's directory
        params = WordCountParams
        requires_vram_gb = 0
        allowed_hardware = ["1x A40"]                         # optional; empty: the work pool's GPU types

        def get_entrypoint(self, params):                     # an argument list, or a command string
            return ["python", "word_count.py"]                # ("python word_count.py" as OpenWeights has)

    ow = OpenWeights()
    job = ow.word_count.create(input_file=file_id, min_length=4).wait()
    job = ow.word_count.create(input_file=file_id, allowed_hardware=["2x A100"])   # this job only

Creating validates the parameters with the class's model, uploads the mounted files (content-
addressed, so unchanged files are not uploaded twice) and submits ``custom/run``. The job ID
covers the parameters and every mounted file's bytes: editing the script makes a new job,
resubmitting unchanged code and parameters returns the existing one. As in OpenWeights,
``allowed_hardware``, ``requires_vram_gb`` and ``image`` given to ``create`` choose the job's
hardware (overriding the class's) instead of being job parameters — unless the job's own
parameter model has a field of that name. They do not change the job ID (:mod:`jobs.hardware`).

``get_entrypoint`` may return a command string, as OpenWeights' jobs do; it is split as a POSIX
shell would split words (``shlex``) but never run by a shell, so a string that needs one (pipes,
``&&``, redirections, ``$VARIABLES``) is refused with a message saying so: put that in a script.

A job declared the OpenWeights way runs with only the import changed: ``Jobs`` (``from client
import Jobs, OpenWeights, register``) is this class, and the script's own ``OpenWeights().run.log({...})``
records events of its run, read back with ``ow.events.list(job_id=job.id)`` (:mod:`client.events`).
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from jobs.hardware import PLACEMENT_FIELDS

_REGISTERED: dict[str, type[CustomJob]] = {}
_SHELL_ONLY = ("|", "&", ";", "<", ">", "$", "`")


def entrypoint_argv(entrypoint: str | Sequence[str], job_name: str) -> list[str]:
    """The argument list a custom job's ``get_entrypoint`` describes (a list, or a command string). Pure."""
    if isinstance(entrypoint, str):
        needs_shell = sorted({char for char in _SHELL_ONLY if char in entrypoint})
        if needs_shell:
            raise ValueError(
                f"{job_name}.get_entrypoint returned {entrypoint!r}, which needs a shell ({' '.join(needs_shell)}); "
                "entrypoints run without one: return an argument list, or put the pipeline in a script"
            )
        try:
            argv = shlex.split(entrypoint)
        except ValueError as exc:
            raise ValueError(f"{job_name}.get_entrypoint returned {entrypoint!r}: {exc}") from None
    else:
        argv = list(entrypoint)
    if not argv or not all(isinstance(arg, str) and arg for arg in argv):
        raise ValueError(
            f"{job_name}.get_entrypoint must return a command string or a list of non-empty strings, got {entrypoint!r}"
        )
    return argv


class CustomJob(abc.ABC):
    name: ClassVar[str] = ""
    mount: ClassVar[dict[str, str]] = {}
    params: ClassVar[type[BaseModel]] = BaseModel
    requires_vram_gb: ClassVar[float] = 24.0
    allowed_hardware: ClassVar[list[str]] = []  # e.g. ["1x A40", "2x A100"]; empty: the work pool's GPU types
    image: ClassVar[str | None] = None  # the pod's container image; None: the work pool's

    def __init__(self, ow):
        self._ow = ow

    @abc.abstractmethod
    def get_entrypoint(self, params: BaseModel) -> list[str] | str:
        """The command that runs the job in the job's directory: an argument list or a command string."""

    def definition(self, **params: Any) -> dict[str, Any]:
        """The ``custom/run`` parameters for these job parameters (validates and uploads).

        ``allowed_hardware``, ``requires_vram_gb`` and ``image`` among ``params`` choose this job's
        hardware instead of the class's, unless the job's parameter model has fields of those names.
        """
        hardware = {
            name: params.pop(name)
            for name in PLACEMENT_FIELDS
            if name in params and name not in self.params.model_fields
        }
        validated = self.params(**params)
        definition = {
            "name": self.name,
            "params": validated.model_dump(mode="json"),
            "params_schema": self.params.model_json_schema(),
            "mounted_files": self._upload_mounts(),
            "entrypoint": entrypoint_argv(self.get_entrypoint(validated), type(self).__name__),
            "requires_vram_gb": hardware.get("requires_vram_gb", float(self.requires_vram_gb)),
        }
        allowed_hardware = hardware.get("allowed_hardware", self.allowed_hardware)
        if allowed_hardware:
            definition["allowed_hardware"] = list(allowed_hardware)
        image = hardware.get("image", self.image)
        if image is not None:
            definition["image"] = image
        return definition

    def create(self, **params: Any):
        """Submit the job (or return the identical one that is pending, running or done)."""
        return self._ow.jobs.submit("custom", self.definition(**params))

    def _upload_mounts(self) -> dict[str, str]:
        mounted: dict[str, str] = {}
        for source, target in self.mount.items():
            path = Path(source)
            if path.is_file():
                mounted[target] = self._ow.files.upload(path, "custom_job_file")["id"]
            elif path.is_dir():
                for file in sorted(
                    p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                ):
                    relative = file.relative_to(path).as_posix()
                    mounted[f"{target.rstrip('/')}/{relative}"] = self._ow.files.upload(
                        file, "custom_job_file"
                    )["id"]
            else:
                raise FileNotFoundError(f"{type(self).__name__}.mount: {source} does not exist")
        return mounted


def register(name: str):
    """Class decorator: makes the job available as ``ow.<name>`` on every :class:`OpenWeights`."""

    def decorate(cls: type[CustomJob]) -> type[CustomJob]:
        cls.name = name
        _REGISTERED[name] = cls
        return cls

    return decorate


def registered_jobs() -> dict[str, type[CustomJob]]:
    return dict(_REGISTERED)
