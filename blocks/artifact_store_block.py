"""The ``ow-artifact-store`` Prefect block: where every artifact lives, configured once on the server.

Kept apart from :mod:`blocks.storage` because its ``aws_credentials`` field is typed with prefect-aws's
``AwsCredentials`` (so the UI offers a credentials block to pick), and importing prefect-aws costs most
of a second: ``ow ls`` on a local store reads the store without it (:func:`blocks.storage.load_artifact_store`).
Import the class from :mod:`blocks.storage`, which loads this module when it is asked for.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.filesystems import WritableFileSystem
from prefect_aws import AwsCredentials
from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.storage import (
    RESULTS_PREFIX,
    STORE_BLOCK_TYPE_SLUG,
    check_json_result_record,
    default_local_store_url,
    s3_storage_options,
)
from store.artifact_store import ArtifactStore


class ArtifactStoreBlock(WritableFileSystem):
    """Where datasets, adapters, outputs, eval logs and cached job results are stored."""

    _block_type_name = "OW Artifact Store"
    _block_type_slug = STORE_BLOCK_TYPE_SLUG
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
        own = {
            "key": _secret(self.aws_access_key_id),
            "secret": _secret(self.aws_secret_access_key),
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
        }
        credentials = self.aws_credentials
        if credentials is None:
            return s3_storage_options(self.base_url, **own)
        from_block = {
            "key": _secret(credentials.aws_access_key_id),
            "secret": _secret(credentials.aws_secret_access_key),
            "token": _secret(credentials.aws_session_token),
            "profile": credentials.profile_name,
            "endpoint_url": credentials.aws_client_parameters.endpoint_url,
            "region_name": credentials.region_name,
        }
        # The store's own fields win over the credentials block's (the validator allows no own keys with it).
        return s3_storage_options(
            self.base_url,
            **{**from_block, **{name: value for name, value in own.items() if value is not None}},
        )

    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.base_url, self.storage_options())

    # Prefect result storage: results go under prefect-results/ in the same store. Prefect's async
    # engines call the a-methods; its sync engines call read_path/write_path with ``_sync=True``,
    # which these plain methods accept and need not act on.
    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def read_path(self, path: str, _sync: bool = True) -> bytes:
        key = f"{RESULTS_PREFIX}/{path}"
        return check_json_result_record(self.artifact_store().read_bytes(key), key)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)

    def write_path(self, path: str, content: bytes, _sync: bool = True) -> str:
        return self.artifact_store().write_bytes(f"{RESULTS_PREFIX}/{path}", content)

def _secret(value: SecretStr | str | None) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else value
