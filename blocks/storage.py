"""The artifact store's configuration: which block, how to load it, what it may hand Prefect.

One block document (default name ``default``, overridable with ``OW_STORE_BLOCK``) tells every
flow run, on any machine or pod, where to read inputs and write outputs. The same block is
Prefect's result storage for our cached stages, so job results and artifacts share one store.

Result records are JSON only. A GPU stage can write to the store, so a job's own code could plant
a record at ``prefect-results/<job_id>`` that Prefect would unpickle on the control worker at the
next cache hit. :meth:`ArtifactStoreBlock.read_path` hands Prefect only records that its JSON
serializer reads as plain data (:func:`check_json_result_record`) and refuses any other.

Create it from the CLI (``scripts/services.py`` does this for the embedded default). For S3, keep
the keys where Prefect users keep them, in a ``prefect-aws`` ``AwsCredentials`` block (its client
parameters carry the endpoint URL of MinIO, R2, …), and reference it: one credential, kept, rotated
and shown as a secret in one place::

    from prefect_aws import AwsCredentials
    from blocks.storage import ArtifactStoreBlock
    ArtifactStoreBlock(base_url="s3://my-bucket/ow", aws_credentials=AwsCredentials.load("team")).save("default")

The block's own ``aws_access_key_id`` / ``aws_secret_access_key`` / ``endpoint_url`` / ``region_name``
fields still work, for blocks saved before; a block may not set both kinds of credentials.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from jobs.environment import environ as run_environ
from store.artifact_store import ArtifactStore

if TYPE_CHECKING:
    from blocks.artifact_store_block import ArtifactStoreBlock

STORE_BLOCK_TYPE_SLUG = "ow-artifact-store"

DEFAULT_BLOCK_NAME = "default"
RESULTS_PREFIX = "prefect-results"
# Prefect's JSON serializer as it writes our records; each of these fields names code Prefect imports on read.
_JSON_SERIALIZER_READ_DEFAULTS = {
    "jsonlib": "json",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "loads_kwargs": {},
}


def ow_home() -> Path:
    """Local state directory of the embedded default (``$OW_HOME``, else ``~/.ow``)."""
    return Path(os.environ.get("OW_HOME") or Path.home() / ".ow").expanduser()


def default_local_store_url() -> str:
    return str(ow_home() / "store")


class UnsafeResultRecordError(ValueError):
    """A stored result record Prefect would not read as plain JSON; refused before Prefect deserializes it."""


def check_json_result_record(content: bytes, key: str) -> bytes:
    """``content`` if Prefect would read it as plain JSON data; else :class:`UnsafeResultRecordError`.

    Prefect 3 stores a record as ``{"metadata": {"serializer": {...}, ...}, "result": "<serialized>"}``
    (older ones as ``{"serializer": {...}, "data": ...}``) and deserializes the result with whatever
    serializer the record names — ``pickle`` runs code — and a record naming none means pickle.
    Accepted: records naming Prefect's ``json`` serializer with its own library and decoder, whose
    result holds no ``__class__`` marker (the decoder would import and build that type), and plain
    JSON values. Pure apart from logging the refusal.
    """
    document = _plain_json(content, key, "it is not a JSON result record")
    payload = document
    if isinstance(document, dict) and ("metadata" in document or "serializer" in document):
        metadata = document.get("metadata", document)
        problem = _serializer_problem(metadata.get("serializer") if isinstance(metadata, dict) else None)
        if problem:
            _refuse(key, problem)
        payload = document.get("result", document.get("data"))
        if isinstance(payload, str):
            payload = _plain_json(payload.encode("utf-8"), key, "its result is not JSON")
    marker = _class_marker(payload)
    if marker is not None:
        _refuse(key, f"its result asks Prefect to build a Python object of type {marker!r}")
    return content


def _plain_json(content: bytes, key: str, problem: str) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's limit
        _refuse(key, problem)


def _serializer_problem(serializer: Any) -> str | None:
    if not isinstance(serializer, dict):
        return "it names no serializer, so Prefect would unpickle it"
    if serializer.get("type") != "json":
        return f"it names the {serializer.get('type')!r} serializer, not 'json'"
    for name, default in _JSON_SERIALIZER_READ_DEFAULTS.items():
        if serializer.get(name, default) != default:
            return f"its json serializer sets {name}={serializer[name]!r} (code Prefect would import)"
    return None


def _class_marker(value: Any) -> str | None:
    """The first ``__class__`` marker in a JSON value (iterative: the value may be deeply nested)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__class__" in item:
                return str(item["__class__"])[:200]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _refuse(key: str, problem: str) -> None:
    message = (
        f"refusing the result record {key}: {problem}. This store holds JSON result records only; a job's "
        "code may have written this one. Delete it to run the job again."
    )
    # Prefect treats a failed read as a cache miss and says nothing, so the refusal is logged here,
    # in the run's log when there is one.
    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logging.getLogger(__name__).warning(message)
    raise UnsafeResultRecordError(message)


STORE_BLOCK_ENV = "OW_STORE_BLOCK"


def store_block_name() -> str:
    return run_environ().get(STORE_BLOCK_ENV) or DEFAULT_BLOCK_NAME


def s3_storage_options(
    base_url: str,
    *,
    key: str | None = None,
    secret: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    region_name: str | None = None,
) -> dict[str, Any]:
    """s3fs options for a store at ``base_url`` (credentials included: never log them); none for a local one."""
    if not base_url.startswith("s3://"):
        return {}
    options: dict[str, Any] = {
        name: value
        for name, value in (("key", key), ("secret", secret), ("token", token), ("profile", profile))
        if value
    }
    client_kwargs = {
        name: value for name, value in (("endpoint_url", endpoint_url), ("region_name", region_name)) if value
    }
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def __getattr__(name: str) -> Any:
    # ``from blocks.storage import ArtifactStoreBlock`` keeps working; prefect-aws loads only then.
    if name == "ArtifactStoreBlock":
        from blocks.artifact_store_block import ArtifactStoreBlock

        return ArtifactStoreBlock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What a flow run loaded, by (what, flow run, block name). The control tier asks for the store several
# times in one run (inputs, the re-run check, the budget, the cost, the result storage), each a round
# trip to the server, and within a run the block is the same. Outside a flow run nothing is kept: a
# client or a script sees a changed block at once.
_LOADED_IN_RUN: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_LOADED_IN_RUN_LIMIT = 64
_LOADED_IN_RUN_LOCK = threading.Lock()


def _once_per_flow_run(what: str, name: str, load: Callable[[], Any]) -> Any:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return load()
    key = (what, str(run_id), name)
    with _LOADED_IN_RUN_LOCK:
        if key in _LOADED_IN_RUN:
            return _LOADED_IN_RUN[key]
    loaded = load()
    with _LOADED_IN_RUN_LOCK:
        _LOADED_IN_RUN[key] = loaded
        while len(_LOADED_IN_RUN) > _LOADED_IN_RUN_LIMIT:
            _LOADED_IN_RUN.popitem(last=False)
    return loaded


def load_store_block(name: str | None = None, create_default: bool = True) -> ArtifactStoreBlock:
    """The store block ``name`` (default: ``$OW_STORE_BLOCK`` or ``default``), loaded once per flow run.

    The default block is created (a local directory under ``$OW_HOME``) on first use if it does
    not exist: a fresh Prefect server works without a setup step, and a saved block (rather than
    an unsaved instance) is what Prefect can reference as result storage.
    """
    explicit = name is not None
    name = name or store_block_name()
    return _once_per_flow_run("block", name, lambda: _load_store_block(name, explicit, create_default))


def _load_store_block(name: str, explicit: bool, create_default: bool) -> ArtifactStoreBlock:
    from blocks.artifact_store_block import ArtifactStoreBlock

    try:
        return ArtifactStoreBlock.load(name)
    except ValueError:
        if explicit or not create_default:
            raise ValueError(
                f"no {STORE_BLOCK_TYPE_SLUG} block named {name!r} on the Prefect server"
            ) from None
        try:
            ArtifactStoreBlock().save(name, overwrite=False)
        except ValueError:
            pass  # another process created it first; use theirs
        return ArtifactStoreBlock.load(name)


def load_artifact_store(name: str | None = None) -> ArtifactStore:
    """The artifact store every flow and the CLI use (block ``name``, as :func:`load_store_block`),
    loaded once per flow run.

    A store whose block references no ``AwsCredentials`` block is built from the block document's
    fields as they are, without the block class: that spares ``ow`` importing prefect-aws. Any other
    (a credentials block to resolve, or no block yet) goes through :func:`load_store_block`.
    """
    return _once_per_flow_run("store", name or store_block_name(), lambda: _load_artifact_store(name))


def _load_artifact_store(name: str | None) -> ArtifactStore:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(
                name or store_block_name(), block_type_slug=STORE_BLOCK_TYPE_SLUG, include_secrets=True
            )
    except ObjectNotFound:
        return load_store_block(name).artifact_store()
    fields = document.data
    if fields.get("aws_credentials") or "base_url" not in fields:
        return load_store_block(name).artifact_store()
    return ArtifactStore(
        fields["base_url"],
        s3_storage_options(
            fields["base_url"],
            key=fields.get("aws_access_key_id"),
            secret=fields.get("aws_secret_access_key"),
            endpoint_url=fields.get("endpoint_url"),
            region_name=fields.get("region_name"),
        ),
    )
