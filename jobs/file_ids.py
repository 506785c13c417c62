"""File IDs: ``<purpose>:file-<sha256 hex>``, the content address of an uploaded file.

OpenWeights' form, but with the whole 256-bit digest (OpenWeights keeps 12 hex digits, where
collisions become plausible at scale). Pure: used by parameter models and by the store.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

PURPOSE_PATTERN = r"[a-z][a-z0-9_]*"
FILE_ID_RE = re.compile(rf"^(?P<purpose>{PURPOSE_PATTERN}):file-(?P<digest>[0-9a-f]{{64}})$")


def make_file_id(purpose: str, digest: str) -> str:
    return f"{purpose}:file-{digest}"


def parse_file_id(file_id: str) -> tuple[str, str]:
    """``(purpose, sha256)`` of a well-formed file ID; ValueError otherwise."""
    match = FILE_ID_RE.match(file_id or "")
    if not match:
        raise ValueError(
            f"{file_id!r} is not a file ID; expected <purpose>:file-<64 hex digits> as printed by `ow files upload`"
        )
    return match["purpose"], match["digest"]


def is_file_id(value: str) -> bool:
    return bool(FILE_ID_RE.match(value or ""))


def _check_file_id(value: str) -> str:
    parse_file_id(value)
    return value


FileId = Annotated[str, AfterValidator(_check_file_id)]
"""A parameter holding a file ID; validation names the parameter and shows the expected form."""
