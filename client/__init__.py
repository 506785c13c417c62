"""The OpenWeights-style client (``OpenWeights``), custom jobs and the ``ow`` command line.

Imports are lazy so ``ow --help`` stays fast.
"""

from typing import Any

__all__ = ["OpenWeights", "CustomJob", "register"]


def __getattr__(name: str) -> Any:
    if name == "OpenWeights":
        from client.openweights import OpenWeights

        return OpenWeights
    if name in ("CustomJob", "register"):
        from client import custom_jobs

        return getattr(custom_jobs, name)
    raise AttributeError(name)
