"""The environment a flow run's code reads its ``OW_*`` settings from.

A flow run in a process of its own reads ``os.environ``, into which its worker put the run's ``env``
job variables. On the ``threads`` worker (:mod:`infra.worker.thread_worker`) every control flow shares
one process, so a run's ``env`` cannot go into ``os.environ``; the worker sets it here, for the run's
thread only, and the settings the control tier reads come through :func:`environ`.
"""

from __future__ import annotations

import contextlib
import os
from collections import ChainMap
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

_RUN_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("ow_run_env", default=None)


def environ() -> Mapping[str, str]:
    """``os.environ``, overlaid with the current flow run's own ``env`` where its worker set one."""
    run_env = _RUN_ENV.get()
    return os.environ if not run_env else ChainMap(dict(run_env), os.environ)


@contextlib.contextmanager
def run_environment(env: Mapping[str, str | None]) -> Iterator[None]:
    """Within this block (this thread, and what it starts with a copy of its context), :func:`environ`
    sees ``env`` over ``os.environ``. ``None`` values are left out."""
    token = _RUN_ENV.set({key: value for key, value in env.items() if value is not None})
    try:
        yield
    finally:
        _RUN_ENV.reset(token)
