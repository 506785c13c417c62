"""The OpenWeights-style client (``OpenWeights``), custom jobs and the ``ow`` command line.

``Jobs`` is OpenWeights' name for the base class of custom jobs (:class:`client.custom_jobs.CustomJob`),
so ``from openweights import Jobs, OpenWeights, register`` becomes ``from client import …``.

Imports are lazy so ``ow --help`` stays fast.
"""

from typing import Any

__all__ = ["OpenWeights", "CustomJob", "Jobs", "register"]


def __getattr__(name: str) -> Any:
    if name == "OpenWeights":
        from client.openweights import OpenWeights

        return OpenWeights
    if name in ("CustomJob", "Jobs", "register"):
        from client import custom_jobs

        return getattr(custom_jobs, "CustomJob" if name == "Jobs" else name)
    raise AttributeError(name)
