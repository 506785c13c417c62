"""``options`` of ``eval/inspect`` jobs: inspect's options as its command line or its ``eval()`` takes them.

OpenWeights' inspect job appends a free-form string of ``inspect eval`` options to its command,
unchecked. Here the same string (``"--top-p 0.9 --limit 10 -T count=3"``) or a dict of
``inspect_ai.eval`` keyword arguments (``{"top_p": 0.9, "limit": 10}``) is parsed and checked when
the job is validated, so a misspelt option fails before any GPU:

- a string is parsed by inspect's own ``inspect eval`` command (its options, which take a value,
  their types); ``-T``/``-M`` become ``task_args``/``model_args`` as the command line reads them,
  ``--no-X`` becomes ``X=False``, a bare ``--fail-on-error`` means ``fail_on_error=True``, and a
  string value is read as the command line reads ``-T`` values (YAML, commas make a list) where the
  argument does not take a string (``--limit 10``, ``--stop-seqs a,b``);
- every option must be a keyword argument of ``inspect_ai.eval`` or a field of its
  ``GenerateConfig`` (taken from the installed inspect-ai), with a value of its type;
- options the job sets itself (the model and its endpoint, where the logs go, the display) are refused;
- options the job has a parameter for (:data:`PARAMETER_OPTIONS`: ``limit``, ``temperature``, …) are
  moved into that parameter, so one job has one spelling, and one job ID, however it was written.

inspect-ai is imported only when a job has options (the control tier has it; so does the client).
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Mapping
from functools import cache
from typing import Any

# Options the job sets itself, and why a user's value cannot apply.
JOB_OWNED_OPTIONS = {
    "tasks": "the task is eval_name",
    "model": "the job evaluates `model` and `lora_adapters`, served by the job",
    "model_base_url": "the job points inspect at the model it serves",
    "model_roles": "the job serves only the models it evaluates",
    "log_dir": "the job stores the logs under jobs/<job_id>/inspect-logs",
    "log_header_only": "the job reads the scores from the logs it stores",
    "display": "the job runs without a terminal",
    "log_level": "the job's log is Prefect's",
    "trace": "the job runs without a terminal",
    "score_display": "the job runs without a terminal",
    "ctl_server": "the job runs without a control socket",
    "acp_server": "the job runs without a control socket",
}
# Options that are parameters of the job (InspectEvalConfig fields): moved there.
PARAMETER_OPTIONS = (
    "limit",
    "epochs",
    "temperature",
    "max_tokens",
    "seed",
    "max_connections",
    "log_format",
    "task_args",
    "model_args",
)
_CLI_DICT_OPTIONS = {"t": "task_args", "m": "model_args"}  # -T key=value, -M key=value


def parse_options(options: str | Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as ``inspect_ai.eval`` keyword arguments (JSON values); ValueError names what is wrong.

    A string is read as ``inspect eval``'s command line; a mapping's keys may be spelt as on the
    command line (``top-p``, ``--top-p``) or as ``eval()``'s arguments (``top_p``).
    """
    if isinstance(options, str):
        parsed = _parse_command_line(options)
    elif isinstance(options, Mapping):
        parsed = {_argument_name(str(key)): value for key, value in options.items()}
    else:
        raise ValueError(
            f"options must be a string of `inspect eval` options or a dict, got {type(options).__name__}"
        )
    return json.loads(json.dumps(parsed))  # tuples from the command line become lists: JSON values


def check_options(options: Mapping[str, Any]) -> None:
    """Every option is an ``eval()`` keyword argument or ``GenerateConfig`` field the job leaves to the
    user, with a value of its type. Raises ValueError naming the first option that is not."""
    arguments = eval_arguments()
    for name, value in options.items():
        if name in JOB_OWNED_OPTIONS:
            raise ValueError(f"options: {name!r} is set by the job ({JOB_OWNED_OPTIONS[name]})")
        if name not in arguments:
            close = difflib.get_close_matches(name, sorted(arguments), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"options: {name!r} is not an option of inspect's eval() or of its GenerateConfig{hint} "
                f"(inspect-ai {_inspect_version()})"
            )
        problem = _type_problem(arguments[name], value)
        if problem:
            raise ValueError(f"options: {name}={value!r}: {problem}")


def move_options_into_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of an inspect job with its ``options`` parsed and the options that are job parameters
    (:data:`PARAMETER_OPTIONS`) moved into them; an option that contradicts the parameter is refused."""
    options = parse_options(params["options"])
    moved = dict(params)
    for name in PARAMETER_OPTIONS:
        if name not in options:
            continue
        value = options.pop(name)
        given = moved.get(name)
        if name in ("task_args", "model_args"):
            if not isinstance(value, dict):
                raise ValueError(f"options: {name} must be a dict, got {value!r}")
            given = dict(given or {})
            clashes = sorted(key for key in value if key in given and given[key] != value[key])
            if clashes:
                raise ValueError(
                    f"options set {name} {clashes} to other values than the {name} parameter; give each once"
                )
            moved[name] = {**given, **value}
        elif given is not None and given != value:
            raise ValueError(
                f"options set {name}={value!r} but the {name} parameter is {given!r}; give it once"
            )
        else:
            moved[name] = value
    moved["options"] = options
    return moved


# -- derived from the installed inspect-ai ----------------------------------------------------------


@cache
def eval_arguments() -> dict[str, Any]:
    """``inspect_ai.eval``'s keyword arguments and ``GenerateConfig``'s fields, each with its type."""
    import inspect

    import inspect_ai
    from inspect_ai.model import GenerateConfig

    arguments = {
        name: parameter.annotation
        for name, parameter in inspect.signature(inspect_ai.eval).parameters.items()
        if parameter.kind is not parameter.VAR_KEYWORD
    }
    arguments.update({name: field.annotation for name, field in GenerateConfig.model_fields.items()})
    return arguments


def _inspect_version() -> str:
    from importlib.metadata import version

    return version("inspect_ai")


@cache
def _type_adapter(annotation: Any):
    from pydantic import ConfigDict, TypeAdapter

    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - a type pydantic cannot check is left to inspect
        return None


def _type_problem(annotation: Any, value: Any, strict: bool = False) -> str | None:
    """Why ``value`` is not of type ``annotation`` (pydantic's words), or None."""
    from pydantic import ValidationError

    adapter = _type_adapter(annotation)
    if adapter is None:
        return None
    try:
        adapter.validate_python(value, strict=strict)
    except ValidationError as exc:
        return "; ".join(error["msg"] for error in exc.errors()[:3])
    return None


def _argument_name(option: str) -> str:
    """``--top-p``, ``top-p`` → ``top_p``."""
    return option.lstrip("-").replace("-", "_")


def _parse_command_line(text: str) -> dict[str, Any]:
    """Options given on ``inspect eval``'s command line, as ``eval()`` keyword arguments."""
    import click
    from click.core import ParameterSource

    # inspect's own command and its `-T` reader: the options, their arity and types are the CLI's.
    from inspect_ai._cli.eval import eval_command
    from inspect_ai._cli.util import parse_cli_args

    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"options {text!r}: {exc}") from None
    if any(arg in ("--help", "-h") for arg in argv):
        raise ValueError("options: --help is not an option of a job")
    try:
        context = eval_command.make_context("inspect eval", argv)
    except click.ClickException as exc:
        raise ValueError(f"options {text!r}: {exc.format_message()}") from None
    given = {
        name: value
        for name, value in context.params.items()
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    arguments = eval_arguments()
    parsed: dict[str, Any] = {}
    for name, value in given.items():
        if name == "tasks":
            raise ValueError(f"options {text!r}: {' '.join(value)} is not an option; the task is eval_name")
        if name in _CLI_DICT_OPTIONS:
            parsed[_CLI_DICT_OPTIONS[name]] = parse_cli_args(value)
        elif name.startswith("no_") and name[3:] in arguments and value is True:
            parsed[name[3:]] = False
        elif name == "fail_on_error" and value == 0.0:  # a bare --fail-on-error: fail on the first error
            parsed[name] = True
        elif name in arguments:
            parsed[name] = _cli_value(arguments[name], value, parse_cli_args)
        else:
            option = "/".join(next(p.opts for p in eval_command.params if p.name == name))
            raise ValueError(
                f"options {text!r}: {option} is an `inspect eval` option with no eval() argument of its own; "
                "give what it stands for as eval() arguments (a dict of options)"
            )
    return parsed


def _cli_value(annotation: Any, value: Any, parse_cli_args) -> Any:
    """A command-line string as the argument takes it: as given where it takes a string, else read as
    the command line reads ``-T`` values (YAML; commas make a list)."""
    if not isinstance(value, str) or _type_problem(annotation, value, strict=True) is None:
        return value
    read = parse_cli_args([f"value={value}"])["value"]
    if isinstance(read, str) and _type_problem(annotation, [read], strict=True) is None:
        return [read]  # one item of a comma-separated list
    return read
