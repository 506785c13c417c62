"""Secrets a job stage may need (e.g. ``hf-token``), read from Prefect ``Secret`` blocks.

Secrets travel from the Prefect server to the stage that needs them and nowhere else: never
as flow parameters, never in logs or artifacts.
"""

from __future__ import annotations

from collections.abc import Iterable

from prefect.blocks.system import Secret


def load_secrets(names: Iterable[str]) -> dict[str, str]:
    """The values of the named Secret blocks that exist; missing ones are simply absent."""
    values: dict[str, str] = {}
    for name in names:
        try:
            value = Secret.load(name).get()
        except ValueError:
            continue
        if isinstance(value, str) and value:
            values[name] = value
    return values


def save_secret(name: str, value: str) -> None:
    """Store a value a client will need (e.g. an API deployment's token) as a Secret block."""
    Secret(value=value).save(name, overwrite=True)


def delete_secret(name: str) -> None:
    try:
        Secret.delete(name)
    except ValueError:
        pass  # already gone


def read_secret(name: str) -> str:
    return Secret.load(name).get()
