"""Hardware a job may run on, as OpenWeights writes it: ``"2x A100"``, ``"1x H200"``, ``"A40"``. Pure: no I/O.

One entry is ``<count>x <GPU type>`` (``"2x A100"``, ``"2 x A100"``, ``"1x NVIDIA A40"``) or a bare GPU
type meaning one GPU (``"A40"``). The GPU type is either

- a short name from :data:`GPU_ALIASES` (case-insensitive), which may stand for several RunPod types
  (``A100`` is the PCIe and the SXM card), or
- a full RunPod GPU type id, recognised by its maker's name in front (``NVIDIA ``, ``AMD `` or
  ``Tesla ``, as RunPod spells its ids: ``"NVIDIA A40"``, ``"AMD Instinct MI300X OAM"``). Ids the alias
  table knows are matched case-insensitively and written as RunPod spells them; any other id is taken
  as written, because RunPod adds types faster than a table can: the worker checks it against RunPod's
  live catalog before it launches anything.

The control tier parses a job's ``allowed_hardware`` to refuse bad entries before any pod, and hands
the worker the canonical form (:func:`canonical_allowed_hardware`: one ``"<count>x <RunPod id>"`` per
type), which the worker parses again with this same parser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

# RunPod places at most 8 GPUs in one pod (its catalog's maxGpuCount for every current type).
MAX_GPUS_PER_POD = 8

# Short names → RunPod GPU type ids, preferred first. OpenWeights' names (A100S, H100S, H100N, …)
# mean what they mean there (openweights/cluster/start_runpod.py), except that a plain A100 or H100
# stands for every 80 GB card of that kind: naming the family should not halve the stock to choose from.
GPU_ALIASES: dict[str, tuple[str, ...]] = {
    "4090": ("NVIDIA GeForce RTX 4090",),
    "RTX4090": ("NVIDIA GeForce RTX 4090",),
    "RTX3090": ("NVIDIA GeForce RTX 3090",),
    "A4500": ("NVIDIA RTX A4500",),
    "A5000": ("NVIDIA RTX A5000",),
    "A6000": ("NVIDIA RTX A6000",),
    "6000Ada": ("NVIDIA RTX 6000 Ada Generation",),
    "A40": ("NVIDIA A40",),
    "L40": ("NVIDIA L40",),
    "L40S": ("NVIDIA L40S",),
    "A100": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
    "A100S": ("NVIDIA A100-SXM4-80GB",),
    "H100": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"),
    "H100S": ("NVIDIA H100 80GB HBM3",),
    "H100N": ("NVIDIA H100 NVL",),
    "H200": ("NVIDIA H200",),
}
RUNPOD_ID_PREFIXES = ("NVIDIA ", "AMD ", "Tesla ")
FORMAT_HINT = 'expected "<count>x <GPU type>", e.g. "2x A100"'

_MAKERS = ", ".join(p.strip() for p in RUNPOD_ID_PREFIXES[:-1]) + f" or {RUNPOD_ID_PREFIXES[-1].strip()}"
_ALIAS_LOOKUP = {name.casefold(): ids for name, ids in GPU_ALIASES.items()}
_KNOWN_IDS = {gpu_id.casefold(): gpu_id for ids in GPU_ALIASES.values() for gpu_id in ids}
_COUNTED = re.compile(r"(?P<count>\d+)\s*[xX×]\s*(?P<gpu>.*)")
_LEADING_NUMBER_THEN_WORD = re.compile(r"\d+\S*\s+\S.*")  # "3y A100", "2 A100": a count gone wrong


class HardwareOption(BaseModel):
    """One way to run a job's pod: ``gpu_count`` GPUs of any one of ``gpu_type_ids``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_count: int = Field(ge=1, le=MAX_GPUS_PER_POD, description="GPUs in the pod.")
    gpu_type_ids: tuple[str, ...] = Field(
        min_length=1,
        description="RunPod GPU type ids the pod may have, preferred first (all GPUs of one type).",
    )

    @field_validator("gpu_type_ids")
    @classmethod
    def _named_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not gpu_id.strip() for gpu_id in value):
            raise ValueError("gpu_type_ids holds an empty name; use RunPod ids such as 'NVIDIA A40'")
        return tuple(dict.fromkeys(value))  # a repeated id adds nothing; keep the first place

    def canonical(self) -> tuple[str, ...]:
        """One ``"<count>x <RunPod id>"`` per GPU type: what :func:`parse_hardware` reads back exactly."""
        return tuple(f"{self.gpu_count}x {gpu_id}" for gpu_id in self.gpu_type_ids)

    def describe(self) -> str:
        """For logs: ``2x NVIDIA A100 80GB PCIe or NVIDIA A100-SXM4-80GB``."""
        return f"{self.gpu_count}x {' or '.join(self.gpu_type_ids)}"


def parse_hardware(text: str) -> HardwareOption:
    """One ``allowed_hardware`` entry as a :class:`HardwareOption`.

    Raises ``ValueError`` starting with the entry (quoted) and saying what would be valid.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r}: {FORMAT_HINT} (a string)")
    try:
        count, gpu = _split_count(text.strip())
        return HardwareOption(gpu_count=count, gpu_type_ids=_gpu_type_ids(gpu))
    except ValueError as exc:
        raise ValueError(f"{_quoted(text)}: {exc}") from None


def parse_allowed_hardware(entries: Sequence[str], field: str = "allowed_hardware") -> list[HardwareOption]:
    """Every entry parsed, in order; an empty list (the pool's own GPU types and count) stays empty.

    Errors name the entry as ``<field>[<index>] = "<entry>"``; an entry that means the same option
    as an earlier one (``"2x A100"`` and ``"2 x a100"``) is refused as a repeat.
    """
    if isinstance(entries, str):
        raise ValueError(
            f'{field} must be a list of entries such as ["2x A100"], got the string {_quoted(entries)}'
        )
    options: list[HardwareOption] = []
    for index, entry in enumerate(entries):
        try:
            option = parse_hardware(entry)
        except ValueError as exc:
            raise ValueError(f"{field}[{index}] = {exc}") from None
        if option in options:
            earlier = options.index(option)
            raise ValueError(
                f"{field}[{index}] = {_quoted(entry)} repeats {field}[{earlier}] ({_quoted(entries[earlier])}); "
                "list each option once"
            )
        options.append(option)
    return options


def canonical_allowed_hardware(options: Sequence[HardwareOption]) -> list[str]:
    """The options as ``"<count>x <RunPod id>"`` strings, in order, each once (for job variables).

    ``parse_allowed_hardware`` of the result gives one option per (count, GPU type) pair of ``options``.
    """
    return list(dict.fromkeys(entry for option in options for entry in option.canonical()))


def _split_count(text: str) -> tuple[int, str]:
    if not text:
        raise ValueError(f"is empty; {FORMAT_HINT}")
    counted = _COUNTED.fullmatch(text)
    if counted:
        count, gpu = int(counted["count"]), counted["gpu"].strip()
        if not gpu:
            raise ValueError(f"names no GPU type; {FORMAT_HINT}")
        if not 1 <= count <= MAX_GPUS_PER_POD:
            raise ValueError(f"the GPU count must be 1 to {MAX_GPUS_PER_POD} (GPUs in one pod), got {count}")
        return count, gpu
    if _LEADING_NUMBER_THEN_WORD.fullmatch(text):
        raise ValueError(FORMAT_HINT)
    return 1, text


def _gpu_type_ids(gpu: str) -> tuple[str, ...]:
    name = " ".join(gpu.split())
    if name.casefold() in _ALIAS_LOOKUP:
        return _ALIAS_LOOKUP[name.casefold()]
    if name.casefold() in _KNOWN_IDS:
        return (_KNOWN_IDS[name.casefold()],)
    if name.startswith(RUNPOD_ID_PREFIXES):
        return (name,)
    raise ValueError(
        f"unknown GPU type {_quoted(gpu)}; use a short name ({', '.join(GPU_ALIASES)}) or a full RunPod GPU "
        f'type id such as "NVIDIA A40" (it starts with {_MAKERS})'
    )


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
