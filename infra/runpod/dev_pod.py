"""Start a dev pod: the project's image with SSH and the TTL watchdog, but no flow run.

    python -m infra.runpod.dev_pod --ttl-hours 2 --gpu-type "NVIDIA A40"

(The ``ow`` command line exposes the same as ``ow dev-pod``, through :func:`main`.) The pod runs
``python -m infra.pod.entrypoint --dev``: it authorizes your public key for SSH and terminates itself
when its TTL runs out; inside, ``python -m infra.pod.ttl --extend 3`` buys time. Credentials come from a
saved ``ow-runpod-credentials`` block (``--credentials-block``) or from ``RUNPOD_API_KEY`` (and
``RUNPOD_API_BASE_URL``). Dev pods are named ``ow-dev-<user>-<random>`` and carry no work-pool label,
so no worker's orphan sweep ever terminates them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from infra.bounds import DEFAULT_TTL_HOURS, POD_START_TIMEOUT_SECONDS_MAX, TTL_HOURS_MAX, bounded_positive
from infra.runpod.api import RunPodApiError, RunPodClient
from infra.runpod.hardware import HardwareOption
from infra.runpod.launch import GpuCatalogue, NoGpuAvailable, launch_pod
from infra.runpod.models import PodSpec
from infra.worker.pod_spec import DEFAULT_GPU_TYPES, DEFAULT_IMAGE, POD_ENTRYPOINT, TTL_HOURS_ENV

DEFAULT_PUBLIC_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_ecdsa.pub", "~/.ssh/id_rsa.pub")


def _key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ow dev-pod", description="Start a RunPod dev pod with SSH and a TTL."
    )
    parser.add_argument(
        "--ttl-hours",
        type=float,
        default=DEFAULT_TTL_HOURS,
        help=f"terminate the pod after this long (default {DEFAULT_TTL_HOURS:g}, at most {TTL_HOURS_MAX:g})",
    )
    parser.add_argument(
        "--gpu-type",
        action="append",
        dest="gpu_types",
        metavar="ID",
        help=f"RunPod GPU type id, repeatable, preferred first (default: {', '.join(DEFAULT_GPU_TYPES)})",
    )
    parser.add_argument("--gpu-count", type=int, default=1)
    parser.add_argument("--min-vram-gb", type=float, default=0.0, help="VRAM needed in GB, over all GPUs")
    parser.add_argument("--cloud-type", choices=["SECURE", "COMMUNITY", "ALL"], default="ALL")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--container-disk-gb", type=int, default=50)
    parser.add_argument("--volume-gb", type=int, default=0)
    parser.add_argument("--network-volume-id")
    parser.add_argument("--data-center-id")
    parser.add_argument(
        "--public-key-file", type=Path, help="SSH public key to authorize (default: ~/.ssh/id_*.pub)"
    )
    parser.add_argument(
        "--env",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for the pod, repeatable",
    )
    parser.add_argument("--credentials-block", help="name of a saved ow-runpod-credentials block")
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=300.0,
        help=(
            "wait this long for the pod to come up and print its SSH address "
            f"(0: do not wait; at most {POD_START_TIMEOUT_SECONDS_MAX:g})"
        ),
    )
    return parser


def _client(block_name: str | None) -> RunPodClient:
    if block_name:
        from blocks.runpod import RunPodCredentials

        return RunPodClient.from_credentials(RunPodCredentials.load(block_name))
    api_key = os.environ.get("RUNPOD_API_KEY")
    if not api_key:
        raise ValueError("no credentials: pass --credentials-block NAME or set RUNPOD_API_KEY")
    return RunPodClient(SecretStr(api_key), os.environ.get("RUNPOD_API_BASE_URL"))


def _public_key(path: Path | None) -> str | None:
    candidates = [path] if path else [Path(p).expanduser() for p in DEFAULT_PUBLIC_KEYS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text().strip()
    if path:
        raise ValueError(f"--public-key-file {path} does not exist")
    return None


def _dev_pod_name() -> str:
    user = re.sub(r"[^a-z0-9]+", "-", getpass.getuser().lower()).strip("-")[:20] or "user"
    return f"ow-dev-{user}-{secrets.token_hex(3)}"


def _report(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The dev-pod command; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        bounded_positive(args.ttl_hours, name="--ttl-hours", maximum=TTL_HOURS_MAX)
        bounded_positive(
            args.wait_seconds, name="--wait-seconds", maximum=POD_START_TIMEOUT_SECONDS_MAX, allow_zero=True
        )
        client = _client(args.credentials_block)
        public_key = _public_key(args.public_key_file)
        env = {TTL_HOURS_ENV: format(args.ttl_hours, "g"), "OW_DEV": "1", **dict(args.env)}
        if public_key:
            env["PUBLIC_KEY"] = public_key
        else:
            _report("No SSH public key found (~/.ssh/id_*.pub); the pod will not accept SSH logins.")
        if client.api_base_url:
            env["RUNPOD_API_BASE_URL"] = client.api_base_url
        plan = GpuCatalogue().plan(
            client,
            options=[
                HardwareOption(
                    gpu_count=args.gpu_count, gpu_type_ids=tuple(args.gpu_types or DEFAULT_GPU_TYPES)
                )
            ],
            min_vram_gb=args.min_vram_gb,
            cloud_type=args.cloud_type,
            price_overrides={},
        )
        spec = PodSpec(
            name=_dev_pod_name(),
            image=args.image,
            gpu_count=args.gpu_count,
            container_disk_gb=args.container_disk_gb,
            volume_gb=args.volume_gb,
            network_volume_id=args.network_volume_id,
            data_center_ids=[args.data_center_id] if args.data_center_id else [],
            ports=["22/tcp"],
            env=env,
            args=shlex.join([*POD_ENTRYPOINT, "--dev"]),
            start_ssh=True,
        )
        launched = launch_pod(client, spec, plan, report=_report)
    except (NoGpuAvailable, RunPodApiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"Started dev pod {launched.pod_id} ({launched.name}) on {launched.candidate.describe()}; "
        f"it terminates itself after {args.ttl_hours:g} h."
    )
    _print_ssh_address(client, launched.pod_id, args.wait_seconds)
    return 0


def _print_ssh_address(client: RunPodClient, pod_id: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            pod = client.get_pod(pod_id)
        except RunPodApiError:
            pod = None
        ssh = [p for p in (pod.ports if pod else []) if p.private_port == 22 and p.public_port and p.ip]
        if ssh:
            print(f"ssh root@{ssh[0].ip} -p {ssh[0].public_port}")
            return
        time.sleep(2)
    if wait_seconds > 0:
        print("The pod is not up yet; find its SSH address under Connect in the RunPod console.")


if __name__ == "__main__":
    sys.exit(main())
