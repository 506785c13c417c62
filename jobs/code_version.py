"""Which source files a job type's results depend on: the project modules its code imports. Pure.

A job ID covers its job type's code version (:mod:`jobs.identity`), so editing the code that computes
a result must change the ID, or the cache serves what the old code computed. A hand-kept list of files
drifts from what the code imports; so the list is derived: from the job type's entry modules (its stage
function's and its parameter model's), every ``import`` and ``from … import`` statement naming a module
of this project is followed — at module level, inside functions (stages import heavy libraries lazily)
and under ``TYPE_CHECKING`` alike — until no new module appears. Parent packages count too (their
``__init__.py`` runs on import). Third-party libraries do not: their versions are the image's business.

This reads source text with :mod:`ast`; it imports nothing, so it is cheap and has no side effects.
An import built at run time (``importlib.import_module(name)`` with a computed name) is invisible to
it; :attr:`jobs.registry.JobSpec.code_paths` adds such files by hand.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path


def module_file(module: str, root: Path) -> Path | None:
    """The source file of project module ``module`` under ``root`` (a module or a package), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """The modules ``path`` imports, by absolute name (relative imports resolved); for
    ``from package import name`` both ``package`` and ``package.name`` (``name`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base:
                names.add(base)
            names.update(
                f"{base}.{alias.name}" if base else alias.name for alias in node.names if alias.name != "*"
            )
    return names


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: index + 1]) for index in range(len(parts))]


def import_closure(entry_modules: Iterable[str], root: Path) -> list[Path]:
    """The source files of ``entry_modules`` and of every project module they import, transitively
    (with their parent packages), sorted."""
    seen: dict[str, Path] = {}
    pending = [name for module in entry_modules for name in _with_parents(module)]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = module_file(module, root)
        if path is None:
            continue  # not ours (a library), or a name imported from a module rather than a module
        seen[module] = path
        for imported in imported_modules(path, root):
            pending.extend(name for name in _with_parents(imported) if name not in seen)
    return sorted(set(seen.values()))
