"""The one validation path of every job, run in the control tier before any GPU is requested.

1. :func:`validate_params` — the job's pydantic model, with defaults filled in; errors name
   each field. Values no job needs and that break the readers after it (nesting beyond
   :data:`jobs.datasets.MAX_NESTING`, integers beyond 64 bits, NaN/Infinity) are refused too,
   naming the field, before they can fail deep inside serialisation or hashing.
2. :func:`check_inputs` — every input file exists with the right purpose, its bytes still match
   its content ID, and every row passes the purpose's and the job's checks (errors name the
   field, the file and the line); every model reference exists. Returns what the job ID covers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from jobs.datasets import DatasetError, json_value_problem, validate_lines
from jobs.model_refs import ModelNotFoundError, check_model_ref, read_model_config
from jobs.registry import JobSpec
from store.artifact_store import ArtifactStore
from store.files import UnknownFileError, content_key, get_file_record, parse_file_id


class InvalidJobError(ValueError):
    """A job that must not start; the message lists each problem as ``field: what is wrong``."""

    def __init__(self, job_type: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid {job_type} job:\n" + "\n".join(f"- {problem}" for problem in problems))


@dataclass
class CheckedInputs:
    inputs: list[str]  # file content IDs and model fingerprints, for the job ID
    vram_gb: float | None


def validate_params(spec: JobSpec, raw: dict[str, Any]) -> BaseModel:
    # Before pydantic: a 10,000-deep value or a 5,000-digit integer would otherwise surface as a
    # RecursionError or ValueError deep inside serialisation or hashing, naming no field.
    problems = [problem for name, value in raw.items() if (problem := json_value_problem(value, str(name), integers=True))]
    if problems:
        raise InvalidJobError(spec.job_type, problems)
    try:
        params = spec.params_model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidJobError(spec.job_type, format_validation_error(exc)) from None
    # After: NaN/Infinity the field itself let through has no JSON form, so no job ID.
    validated = params.model_dump()
    problems = [problem for name, value in validated.items() if (problem := json_value_problem(value, name, finite=True))]
    if problems:
        raise InvalidJobError(spec.job_type, problems)
    return params


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if location and not message.startswith(f"{location}:"):
            message = f"{location}: {message}"
        if error["type"] == "extra_forbidden":
            message = f"{location}: unknown parameter (not a field of this job)"
        problems.append(message)
    return problems


def check_inputs(spec: JobSpec, params: BaseModel, store: ArtifactStore) -> CheckedInputs:
    problems: list[str] = []
    inputs: list[str] = []
    for input_file in spec.input_files(params):
        problem = _check_file(input_file, store)
        if problem:
            problems.append(problem)
        else:
            inputs.append(input_file.file_id)
    for input_model in spec.input_models(params):
        try:
            inputs.append(check_model_ref(input_model.reference, store))
        except (ValueError, ModelNotFoundError) as exc:
            problems.append(f"{input_model.field}: {exc}")
    if not problems and spec.extra_checks is not None:
        problems.extend(spec.extra_checks(params, store))
    if problems:
        raise InvalidJobError(spec.job_type, problems)
    vram_gb = None
    if spec.vram_gb is not None:
        models = spec.input_models(params)
        model_config = read_model_config(models[0].reference, store) if models else None
        vram_gb = spec.vram_gb(params, model_config)
    return CheckedInputs(inputs=inputs, vram_gb=vram_gb)


def _check_file(input_file, store: ArtifactStore) -> str | None:
    field, file_id = input_file.field, input_file.file_id
    try:
        purpose, digest = parse_file_id(file_id)
    except ValueError as exc:
        return f"{field}: {exc}"
    if purpose not in input_file.purposes:
        return f"{field}: {file_id} is a {purpose!r} file; this job needs {' or '.join(map(repr, input_file.purposes))}"
    try:
        record = get_file_record(store, file_id)
    except UnknownFileError as exc:
        return f"{field}: {exc}"
    hasher = hashlib.sha256()

    def hashed(lines) -> Iterator[bytes]:
        for line in lines:
            hasher.update(line)
            yield line

    try:
        with store.open(content_key(digest), "rb") as handle:
            validate_lines(hashed(handle), purpose, f"{record.filename} ({file_id})", input_file.row_check)
    except DatasetError as exc:
        return f"{field}: {exc}"
    if hasher.hexdigest() != digest:
        return f"{field}: the stored bytes of {file_id} no longer match its content ID (the store was modified)"
    return None
