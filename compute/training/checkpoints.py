"""Checkpoints that outlive the pod: synced to the artifact store, resumed from after a crash.

Layout under the job's prefix::

    checkpoints/checkpoint-<step>/...        the Trainer's checkpoint directory
    checkpoints/checkpoint-<step>/COMPLETE   written last: only then is the checkpoint usable

A pod can die in the middle of an upload; without the marker a half-copied directory would be
indistinguishable from a good one. Resume picks the newest checkpoint that has its marker;
older complete checkpoints beyond ``keep`` and every incomplete one are pruned after a save.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from store.artifact_store import ArtifactStore
from store.layout import checkpoints_prefix

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointStore:
    """The checkpoints of one job in the artifact store."""

    def __init__(self, store: ArtifactStore, job_prefix: str, keep: int = 2):
        self.store = store
        self.prefix = checkpoints_prefix(job_prefix)
        self.keep = keep

    def key(self, step: int) -> str:
        return f"{self.prefix}/checkpoint-{step}"

    def steps(self) -> list[tuple[int, bool]]:
        """``(step, complete)`` for every checkpoint directory, oldest first."""
        found = []
        for name in self.store.children(self.prefix):
            match = _CHECKPOINT_DIR_RE.match(name)
            if match:
                step = int(match.group(1))
                found.append((step, self.store.exists(f"{self.key(step)}/{COMPLETE_MARKER}")))
        return sorted(found)

    def latest_complete(self) -> int | None:
        complete = [step for step, done in self.steps() if done]
        return complete[-1] if complete else None

    def save(self, local_dir: Path, step: int) -> str:
        """Upload a local checkpoint directory, mark it complete, prune old ones; returns its URI."""
        key = self.key(step)
        self.store.delete(key)  # a leftover partial upload of the same step
        self.store.upload_tree(local_dir, key)
        self.store.write_json(f"{key}/{COMPLETE_MARKER}", {"step": step, "saved_at": time.time()})
        self._prune(latest=step)
        return self.store.uri(key)

    def download(self, step: int, local_root: Path) -> Path:
        """A local copy of a complete checkpoint, ready for ``resume_from_checkpoint``."""
        target = Path(local_root) / f"checkpoint-{step}"
        if target.exists():
            shutil.rmtree(target)
        self.store.download_tree(self.key(step), target)
        (target / COMPLETE_MARKER).unlink(missing_ok=True)
        return target

    def _prune(self, latest: int) -> None:
        steps = self.steps()
        complete = [step for step, done in steps if done]
        keep = set(complete[-self.keep :]) | {latest}
        for step, done in steps:
            if step not in keep and (done or step < latest):
                self.store.delete(self.key(step))


