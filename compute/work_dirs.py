"""Scratch directories of jobs on a GPU machine: one per job ID, strictly under the work root.

The GPU stage empties a job's directory before and after its run. The job ID arrives as a flow
run parameter, which anyone can set on a hand-started run, so a path is checked before anything
is deleted: ``"/"``, ``"../x"`` or a symbolic link out of the root never reaches ``shutil.rmtree``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.identity import check_job_id


class UnsafeWorkDirError(ValueError):
    """A path that is not a job's directory strictly under the work root."""


def job_work_dir(work_root: Path, job_id: str) -> Path:
    """``work_root/<job_id>``, once ``job_id`` has the shape of a job ID and the path stays under the root."""
    check_job_id(job_id)
    return checked_work_dir(work_root, Path(work_root) / job_id)


def remove_work_dir(work_root: Path, work_dir: Path) -> None:
    """Delete ``work_dir`` and its contents; refuses any path that does not resolve strictly under ``work_root``."""
    shutil.rmtree(checked_work_dir(work_root, work_dir), ignore_errors=True)


def checked_work_dir(work_root: Path, work_dir: Path) -> Path:
    """``work_dir`` if it resolves strictly under ``work_root`` and is not itself a link; else UnsafeWorkDirError."""
    work_dir = Path(work_dir)
    try:
        root = Path(work_root).resolve()
        resolved = work_dir.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise UnsafeWorkDirError(f"work directory {str(work_dir)!r} cannot be resolved: {exc}") from None
    if work_dir.is_symlink() or resolved == root or root not in resolved.parents:
        raise UnsafeWorkDirError(
            f"refusing to use {str(work_dir)!r} as a work directory: it resolves to {str(resolved)!r}, "
            f"not to a directory strictly under {str(root)!r}"
        )
    return resolved
