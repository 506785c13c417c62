"""Model references: what a job's ``model`` field may name, and how it becomes local files.

A reference is one of

- a Hugging Face model ID (``org/name``, optionally ``org/name@revision``);
- a local path (absolute, ``./…``, ``../…`` or ``~/…``) holding a ``save_pretrained`` model or adapter;
- an earlier fine-tuning job's ID (``ftjob-<sha256>``): its adapter (or merged weights) in the store;
- an artifact URI inside the store (``s3://…`` / ``file://…``) of a model or adapter directory.

:func:`parse_model_ref` is pure. :func:`check_model_ref` verifies the reference exists (in the
control tier, before any GPU is requested) and returns what the job ID must cover;
:func:`resolve_model` (GPU tier) turns it into local directories to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jobs.records import missing_outputs
from store.artifact_store import ArtifactStore
from store.layout import result_key

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
FINETUNE_JOB_RE = re.compile(r"^ftjob-[0-9a-f]{64}(-[A-Za-z0-9._-]+)?$")
RefKind = Literal["hub", "local", "job", "artifact"]
_HASH_WHOLE_FILE_BELOW = 64 << 20


class ModelNotFoundError(LookupError):
    """A model reference that names nothing usable."""


@dataclass(frozen=True)
class ModelRef:
    kind: RefKind
    value: str


@dataclass
class ResolvedModel:
    """Local directories to load: a base model, adapters to merge into it, then an adapter on top."""

    base_path: str
    merge_adapter_paths: list[str] = field(default_factory=list)
    adapter_path: str | None = None
    base_ref: str = ""  # the portable reference of base_path (hub ID or artifact URI), for records


def parse_model_ref(value: str, store: ArtifactStore | None = None) -> ModelRef:
    """Classify a reference string; ValueError names what would be valid."""
    value = (value or "").strip()
    if not value:
        raise ValueError("a model reference is required")
    if FINETUNE_JOB_RE.match(value):
        return ModelRef("job", value)
    if "://" in value:
        if store is not None and store.key_from_uri(value) is None:
            raise ValueError(f"{value!r} is outside the artifact store {store.base_url}")
        return ModelRef("artifact", value)
    if value.startswith(("/", "./", "../", "~")):
        return ModelRef("local", os.path.abspath(os.path.expanduser(value)))
    if HUB_ID_RE.match(value):
        return ModelRef("hub", value)
    raise ValueError(
        f"{value!r} is not a Hugging Face ID (org/name), a local path (/…, ./…), "
        "a fine-tuning job ID (ftjob-…) or an artifact URI"
    )


def check_model_ref(value: str, store: ArtifactStore) -> str:
    """Verify the reference exists; returns a fingerprint string the job ID covers.

    Local directories are fingerprinted by content (their files' digests), because a path
    alone says nothing about what is in it; job IDs and artifact URIs are immutable already.
    """
    ref = parse_model_ref(value, store)
    if ref.kind == "local":
        path = Path(ref.value)
        if not path.is_dir():
            raise ModelNotFoundError(f"local path {path} does not exist")
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise ModelNotFoundError(f"{path} holds neither config.json nor adapter_config.json")
        return f"local:{directory_fingerprint(path)}"
    if ref.kind == "job":
        job_id = ref.value
        if not store.exists(result_key(job_id)):
            raise ModelNotFoundError(f"no completed fine-tuning job {job_id} in the artifact store")
        gone = missing_outputs(store, store.read_json(result_key(job_id)))
        if gone:  # found here, not after a pod started and tried to download it
            raise ModelNotFoundError(
                f"fine-tuning job {job_id} completed, but its {', '.join(f'{name} ({uri})' for name, uri in gone.items())} "
                "is no longer in the artifact store; submit that job again (it is re-run when its outputs are gone)"
            )
        return f"job:{job_id}"
    if ref.kind == "artifact":
        key = store.key_from_uri(ref.value)
        if not (store.exists(f"{key}/config.json") or store.exists(f"{key}/adapter_config.json")):
            raise ModelNotFoundError(f"{ref.value} holds neither config.json nor adapter_config.json")
        return f"artifact:{ref.value}"
    _check_hub_model(ref.value)
    return f"hub:{ref.value}"


def directory_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue
        size = file.stat().st_size
        if size < _HASH_WHOLE_FILE_BELOW:
            content = hashlib.sha256(file.read_bytes()).hexdigest()
        else:  # multi-GB weights: size and mtime, not a full read on every submission
            content = f"{size}:{int(file.stat().st_mtime)}"
        digest.update(f"{relative}\0{content}\n".encode())
    return digest.hexdigest()


def _check_hub_model(hub_id: str) -> None:
    repo_id, _, revision = hub_id.partition("@")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision or None), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelNotFoundError(f"{hub_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(repo_id, revision=revision or None)
    except GatedRepoError:
        return  # exists; access is checked when the GPU stage downloads it with the HF token
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(f"{hub_id} was not found on the Hugging Face Hub") from exc


def read_model_config(value: str, store: ArtifactStore) -> dict | None:
    """The base model's ``config.json`` without downloading weights (best effort: None if unknown).

    Used for VRAM estimates in the control tier, which must stay cheap.
    """
    try:
        ref = parse_model_ref(value, store)
        if ref.kind == "local":
            path = Path(ref.value)
            if (path / "config.json").exists():
                return json.loads((path / "config.json").read_text())
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            return read_model_config(base, store) if base else None
        if ref.kind == "job":
            record = store.read_json(result_key(ref.value))
            return read_model_config(record["base_model"], store)
        if ref.kind == "artifact":
            key = store.key_from_uri(ref.value)
            if store.exists(f"{key}/config.json"):
                return store.read_json(f"{key}/config.json")
            base = store.read_json(f"{key}/adapter_config.json").get("base_model_name_or_path")
            return read_model_config(base, store) if base else None
        repo_id, _, revision = ref.value.partition("@")
        from huggingface_hub import hf_hub_download

        return json.loads(
            Path(hf_hub_download(repo_id, "config.json", revision=revision or None)).read_text()
        )
    except Exception:  # noqa: BLE001 - an estimate falls back to the model's name
        return None


def adapter_base(value: str, store: ArtifactStore) -> str | None:
    """The base model reference of a LoRA adapter reference; None when it names a plain model.

    Serving needs it before any weights move: one server serves one base model and only its
    own adapters, and adapters are grouped per base model.
    """
    ref = parse_model_ref(value, store)
    if ref.kind == "job":
        record = store.read_json(result_key(ref.value))
        return record.get("base_model") if "adapter" in record.get("outputs", {}) else None
    if ref.kind == "local":
        config = Path(ref.value) / "adapter_config.json"
        return json.loads(config.read_text()).get("base_model_name_or_path") if config.exists() else None
    if ref.kind == "artifact":
        key = f"{store.key_from_uri(ref.value)}/adapter_config.json"
        return store.read_json(key).get("base_model_name_or_path") if store.exists(key) else None
    repo_id, _, revision = ref.value.partition("@")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        path = hf_hub_download(repo_id, "adapter_config.json", revision=revision or None)
    except EntryNotFoundError:
        return None
    return json.loads(Path(path).read_text()).get("base_model_name_or_path")


def resolve_model(value: str, store: ArtifactStore, cache_dir: Path) -> ResolvedModel:
    """Local directories for a reference (downloads from the store into ``cache_dir``)."""
    ref = parse_model_ref(value, store)
    if ref.kind == "hub":
        repo_id, _, revision = ref.value.partition("@")
        from huggingface_hub import snapshot_download

        return ResolvedModel(snapshot_download(repo_id, revision=revision or None), base_ref=ref.value)
    if ref.kind == "local":
        return _resolve_directory(Path(ref.value), ref.value, store, cache_dir)
    if ref.kind == "artifact":
        key = store.key_from_uri(ref.value)
        local = _download_once(store, key, cache_dir)
        return _resolve_directory(local, ref.value, store, cache_dir)
    # A fine-tuning job: prefer its merged weights (a plain model); else its base plus its adapter.
    record = store.read_json(result_key(ref.value))
    outputs = record.get("outputs", {})
    if outputs.get("merged"):
        local = _download_once(store, store.key_from_uri(outputs["merged"]), cache_dir)
        return ResolvedModel(str(local), base_ref=outputs["merged"])
    parent = resolve_model(record["base_model"], store, cache_dir)
    adapter_key = store.key_from_uri(outputs["adapter"])
    adapter = str(_download_once(store, adapter_key, cache_dir))
    if parent.adapter_path:
        parent.merge_adapter_paths.append(parent.adapter_path)
    parent.adapter_path = adapter
    return parent


def resolve_adapter(value: str, store: ArtifactStore, cache_dir: Path) -> str:
    """The local directory of the LoRA adapter a reference names (a job's adapter output, or an
    adapter directory), for serving it on top of its base model."""
    ref = parse_model_ref(value, store)
    if ref.kind == "job":
        outputs = store.read_json(result_key(ref.value)).get("outputs", {})
        if "adapter" not in outputs:
            raise ModelNotFoundError(f"job {ref.value} produced no LoRA adapter (it trained all weights)")
        return str(_download_once(store, store.key_from_uri(outputs["adapter"]), cache_dir))
    resolved = resolve_model(value, store, cache_dir)
    if resolved.adapter_path is None:
        raise ModelNotFoundError(f"{value} is not a LoRA adapter (no adapter_config.json)")
    return resolved.adapter_path


def _resolve_directory(path: Path, ref: str, store: ArtifactStore, cache_dir: Path) -> ResolvedModel:
    adapter_config = path / "adapter_config.json"
    if not adapter_config.exists():
        return ResolvedModel(str(path), base_ref=ref)
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"adapter {ref} does not name its base model")
    parent = resolve_model(base, store, cache_dir)
    if parent.adapter_path:
        parent.merge_adapter_paths.append(parent.adapter_path)
    parent.adapter_path = str(path)
    return parent


def _download_once(store: ArtifactStore, key: str, cache_dir: Path) -> Path:
    """Store objects under ``key`` are immutable (they live under a content-hashed job ID)."""
    local = Path(cache_dir) / "artifacts" / key
    marker = local / ".ow-complete"
    if not marker.exists():
        store.download_tree(key, local)
        marker.touch()
    return local
