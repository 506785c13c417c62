"""Resolving an ``eval_name`` to the inspect-ai task(s) it names, before any model is served.

Two sources, as ``inspect eval`` knows them:

* a registry name ``package/task`` — an installed package that declares an ``inspect_ai`` entry
  point (``inspect_evals`` does); the package is imported to find the task and its parameters;
* a task file — a ``.py`` file whose top-level functions are decorated with ``@task`` (or
  ``@task(name=...)``). The file is read, not executed: its tasks and their parameters come from
  its syntax tree, the same way inspect lists tasks, so a broken import only surfaces at run time
  but an unknown name, a missing file or a syntax error surface here.

Either way the task arguments are checked against the task's parameters (unknown names, missing
required ones), which inspect itself would only warn about, or fail on mid-run.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobs.evals import InspectTaskRef


class InspectTaskError(ValueError):
    """The ``eval_name`` or ``task_args`` cannot be resolved to a runnable inspect task."""


@dataclass(frozen=True)
class TaskSignature:
    """A task's name and the parameters its function accepts."""

    name: str
    params: tuple[str, ...]
    required: tuple[str, ...]
    accepts_any: bool = False  # the function takes **kwargs


@dataclass(frozen=True)
class ResolvedInspectTask:
    """Task(s) ready for ``inspect_ai.eval``: ``specs`` are what inspect loads, one per task."""

    source: Literal["registry", "file"]
    specs: tuple[str, ...]  # a registry name, or "/abs/path/file.py@task"
    task_names: tuple[str, ...]
    task_args: dict[str, Any] = field(default_factory=dict)


def _is_task_decorator(decorator: ast.expr) -> bool:
    # The forms inspect itself recognises when it decides whether to import a file for its tasks.
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "task"


def _registered_name(node: ast.FunctionDef, decorator: ast.expr) -> str:
    if isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if (
                keyword.arg == "name"
                and isinstance(keyword.value, ast.Constant)
                and isinstance(keyword.value.value, str)
            ):
                return keyword.value.value
    return node.name


def _signature_from_ast(name: str, node: ast.FunctionDef) -> TaskSignature:
    args = node.args
    positional = [a.arg for a in [*args.posonlyargs, *args.args]]
    n_required_positional = len(positional) - len(args.defaults)
    kwonly_required = [
        a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None
    ]
    return TaskSignature(
        name=name,
        params=tuple(positional + [a.arg for a in args.kwonlyargs]),
        required=tuple(positional[:n_required_positional] + kwonly_required),
        accepts_any=args.kwarg is not None,
    )


def tasks_in_file(path: str | Path) -> dict[str, TaskSignature]:
    """The ``@task`` functions a Python file defines at top level, by registered name (file order)."""
    path = Path(path)
    if not path.is_file():
        raise InspectTaskError(f"task file {path} does not exist")
    if path.suffix != ".py":
        raise InspectTaskError(f"task file {path} is not a .py file")
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise InspectTaskError(f"task file {path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    tasks: dict[str, TaskSignature] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if _is_task_decorator(decorator):
                    name = _registered_name(node, decorator)
                    tasks[name] = _signature_from_ast(name, node)
    return tasks


def _signature_from_callable(name: str, function: Any) -> TaskSignature:
    parameters = inspect.signature(function).parameters.values()
    named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return TaskSignature(
        name=name,
        params=tuple(p.name for p in named),
        required=tuple(p.name for p in named if p.default is p.empty),
        accepts_any=any(p.kind is p.VAR_KEYWORD for p in parameters),
    )


def registry_task(name: str) -> TaskSignature:
    """Find ``package/task`` among the tasks of installed packages; imports the package."""
    from importlib.metadata import entry_points

    package = name.split("/", 1)[0]
    declared = entry_points(group="inspect_ai")
    matching = [ep for ep in declared if ep.name == package]
    if not matching:
        known = sorted({ep.name for ep in declared})
        raise InspectTaskError(
            f"eval_name {name!r}: no installed package provides inspect tasks under {package!r} "
            f"(packages that do: {known or 'none'}); install it where the eval runs, on the control "
            f"worker and in the GPU stage's image (e.g. `pip install {package}`), or give a task file"
        )
    for entry_point in matching:
        try:
            entry_point.load()  # importing the package registers its @task functions
        except Exception as exc:  # any import failure of a third-party package ends here
            raise InspectTaskError(
                f"eval_name {name!r}: importing package {package!r} failed: {exc}"
            ) from exc

    # inspect's registry has no public lookup; these are the functions `inspect eval` itself uses.
    from inspect_ai._util.registry import registry_find, registry_info, registry_lookup

    function = registry_lookup("task", name)
    if function is None:
        prefix = f"{package}/"
        available = sorted(
            registry_info(o).name
            for o in registry_find(lambda info: info.type == "task" and info.name.startswith(prefix))
        )
        shown = ", ".join(available[:30]) + (", ..." if len(available) > 30 else "")
        # inspect names a package's tasks `package/task` only for a package it finds installed (in a
        # site-packages directory, or editable); one that is only on PYTHONPATH registers bare names.
        unnamespaced = (
            ""
            if available
            else (
                f" (inspect registers {package!r}'s tasks under its name only when the package is installed "
                "in site-packages or editable, not merely on PYTHONPATH)"
            )
        )
        raise InspectTaskError(
            f"eval_name {name!r}: package {package!r} has no task named {name.split('/', 1)[1]!r}; "
            f"its tasks: {shown or 'none'}{unnamespaced}"
        )
    return _signature_from_callable(name, function)


def _check_task_args(task: TaskSignature, task_args: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(task_args) - set(task.params)) if not task.accepts_any else []
    if unknown:
        raise InspectTaskError(
            f"task_args {unknown} are not parameters of task {task.name!r} ({where}); "
            f"it accepts {list(task.params) or 'no arguments'}"
        )
    missing = [p for p in task.required if p not in task_args]
    if missing:
        raise InspectTaskError(f"task {task.name!r} ({where}) requires task_args {missing}")


def resolve_inspect_task(
    ref: InspectTaskRef, *, task_args: Mapping[str, Any] | None = None, local_file: str | Path | None = None
) -> ResolvedInspectTask:
    """Resolve a parsed ``eval_name`` to runnable task spec(s) and check ``task_args`` against them.

    For a task file, ``local_file`` is the local copy of ``ref.file`` (the flow downloads an
    uploaded file first); without it ``ref.file`` itself is taken as a local path. A file
    reference without a task name selects every ``@task`` in the file. Raises
    ``InspectTaskError`` naming the unknown task, the missing file or the offending arguments.
    """
    task_args = dict(task_args or {})
    if ref.registry_name is not None:
        signature = registry_task(ref.registry_name)
        _check_task_args(signature, task_args, "registry")
        return ResolvedInspectTask("registry", (ref.registry_name,), (signature.name,), task_args)

    if ref.file is None:
        raise InspectTaskError("the task reference names neither a registry task nor a task file")
    path = Path(local_file if local_file is not None else ref.file).resolve()
    available = tasks_in_file(path)
    if not available:
        raise InspectTaskError(f"task file {path} defines no @task functions")
    if ref.task_name is not None:
        if ref.task_name not in available:
            raise InspectTaskError(
                f"task file {path} has no @task named {ref.task_name!r}; it defines {sorted(available)}"
            )
        selected = [available[ref.task_name]]
    else:
        selected = list(available.values())
    for signature in selected:
        _check_task_args(signature, task_args, str(path))
    return ResolvedInspectTask(
        "file",
        tuple(f"{path}@{signature.name}" for signature in selected),
        tuple(signature.name for signature in selected),
        task_args,
    )
