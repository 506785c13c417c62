"""The artifact-store block: where every artifact lives, configured once on the Prefect server.

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
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.exceptions import MissingContextError
from prefect.filesystems import WritableFileSystem
from prefect_aws import AwsCredentials
from pydantic import Field, SecretStr, field_validator, model_validator

from store.artifact_store import ArtifactStore

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


class ArtifactStoreBlock(WritableFileSystem):
    """Where datasets, adapters, outputs, eval logs and cached job results are stored."""

    _block_type_name = "OW Artifact Store"
    _block_type_slug = "ow-artifact-store"
    _description = "A local directory or an S3-compatible bucket (AWS, MinIO, R2, …) holding every artifact of ow-prefect jobs."

    base_url: str = Field(
        default_factory=default_local_store_url,
        description="Local directory (absolute path) or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint URL for non-AWS stores (MinIO, R2, …); empty for AWS.",
    )
    region_name: str | None = Field(default=None, description="S3 region, if the store needs one.")
    aws_access_key_id: SecretStr | None = Field(default=None, description="S3 access key ID.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    aws_credentials: AwsCredentials | None = Field(
        default=None,
        description="A prefect-aws AwsCredentials block holding the S3 keys (and, in its client parameters, the "
        "endpoint URL of MinIO, R2, …). Use it instead of the key fields above.",
    )

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> ArtifactStoreBlock:
        if self.aws_credentials is not None:
            own = [
                name
                for name in ("aws_access_key_id", "aws_secret_access_key")
                if getattr(self, name) is not None
            ]
            if own:
                raise ValueError(
                    f"aws_credentials: set either an AwsCredentials block or {' and '.join(own)}, not both"
                )
        return self

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError(f"base_url must be a local directory or s3://bucket/prefix, got {value!r}")
        if "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(f"base_url must be an absolute local path, got {value!r}")
        return value

    def storage_options(self) -> dict[str, Any]:
        """fsspec options (credentials included): pass to s3fs, never log."""
        if not self.base_url.startswith("s3://"):
            return {}
        options: dict[str, Any] = {}
        client_kwargs: dict[str, Any] = {}
        credentials = self.aws_credentials
        if credentials is not None:
            for option, secret in (
                ("key", credentials.aws_access_key_id),
                ("secret", credentials.aws_secret_access_key),
                ("token", credentials.aws_session_token),
            ):
                if secret is not None:
                    options[option] = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if credentials.profile_name:
                options["profile"] = credentials.profile_name
            if credentials.region_name:
                client_kwargs["region_name"] = credentials.region_name
            if credentials.aws_client_parameters.endpoint_url:
                client_kwargs["endpoint_url"] = credentials.aws_client_parameters.endpoint_url
        if self.aws_access_key_id is not None:
            options["key"] = self.aws_access_key_id.get_secret_value()
        if self.aws_secret_access_key is not None:
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.endpoint_url:  # the store's own endpoint and region win over the credentials block's
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region_name:
            client_kwargs["region_name"] = self.region_name
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options

    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.base_url, self.storage_options())

    # Prefect result storage: results go under prefect-results/ in the same store. Prefect calls
    # these with _sync=True from sync engines, hence the async_dispatch pairs (as its own blocks do).
    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path, _sync=True)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        key = f"{RESULTS_PREFIX}/{path}"
        return check_json_result_record(self.artifact_store().read_bytes(key), key)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content, _sync=True)

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        return self.artifact_store().write_bytes(f"{RESULTS_PREFIX}/{path}", content)


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
    return os.environ.get(STORE_BLOCK_ENV) or DEFAULT_BLOCK_NAME


def load_store_block(name: str | None = None, create_default: bool = True) -> ArtifactStoreBlock:
    """The store block ``name`` (default: ``$OW_STORE_BLOCK`` or ``default``).

    The default block is created (a local directory under ``$OW_HOME``) on first use if it does
    not exist: a fresh Prefect server works without a setup step, and a saved block (rather than
    an unsaved instance) is what Prefect can reference as result storage.
    """
    explicit = name is not None
    name = name or store_block_name()
    try:
        return ArtifactStoreBlock.load(name)
    except ValueError:
        if explicit or not create_default:
            raise ValueError(f"no ow-artifact-store block named {name!r} on the Prefect server") from None
        try:
            ArtifactStoreBlock().save(name, overwrite=False)
        except ValueError:
            pass  # another process created it first; use theirs
        return ArtifactStoreBlock.load(name)


def load_artifact_store() -> ArtifactStore:
    """The artifact store every flow and the CLI use."""
    return load_store_block().artifact_store()
