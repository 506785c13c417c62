"""Inside the pod: the entrypoint ends its own pod, the TTL watchdog fires, dev pods come up with SSH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from infra.runpod import dev_pod
from infra.runpod.api import RunPodClient
from infra.runpod.models import PodSpec
from infra.worker.pod_spec import pod_start_command


def start_pod(emulator, command: str, **env: str) -> str:
    """A pod whose start command is the entrypoint running ``command``, as the worker launches it."""
    client = RunPodClient(emulator.api_key, emulator.url)
    spec = PodSpec(
        name="ow-entrypoint-test",
        image="img",
        gpu_type_id="NVIDIA A40",
        args=pod_start_command(command),
        env={"RUNPOD_API_BASE_URL": emulator.url, "OW_TTL_CHECK_SECONDS": "0.5", **env},
    )
    return client.create_pod(spec).id


def python(code: str) -> str:
    return shlex.join(["python", "-c", code])


def test_the_entrypoint_ends_its_pod_when_the_command_finishes_so_it_is_not_restarted(runpod_emulator):
    pod_id = start_pod(runpod_emulator, python("print('the work ran')"))
    pod = runpod_emulator.all_pods[pod_id]
    runpod_emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the pod to end itself")
    assert pod.terminated_by == "pod"
    assert pod.container.starts == 1
    assert runpod_emulator.container_log(pod_id).splitlines().count("the work ran") == 1


def test_a_container_restart_mid_run_ends_the_pod_instead_of_running_the_command_twice(runpod_emulator):
    pod_id = start_pod(
        runpod_emulator,
        python("import os, time; open(os.path.expanduser('~/runs'), 'a').write('run\\n'); time.sleep(60)"),
    )
    pod = runpod_emulator.all_pods[pod_id]
    runs = pod.home / "runs"
    runpod_emulator.wait_until(runs.exists, 30, "the command to start")
    runpod_emulator.crash_container(pod_id)  # an out-of-memory kill, say: RunPod restarts the container
    runpod_emulator.wait_until(
        lambda: pod.status == "TERMINATED", 30, "the restarted pod to end itself"
    )
    assert pod.container.starts == 2
    assert runs.read_text() == "run\n"
    assert pod.terminated_by == "pod"


def test_the_ttl_watchdog_ends_a_pod_whose_command_is_still_running(runpod_emulator):
    pod_id = start_pod(runpod_emulator, "sleep 120", TTL_HOURS="0.0004")  # 1.44 s
    pod = runpod_emulator.all_pods[pod_id]
    runpod_emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the TTL to end the pod")
    assert pod.terminated_by == "pod"
    assert "TTL expired" in runpod_emulator.container_log(pod_id)


@pytest.mark.parametrize("runpod_emulator", [{"pod_keys_can_terminate": False}], indirect=True)
def test_when_the_pods_key_may_not_terminate_the_entrypoint_stops_the_pod(runpod_emulator):
    pod_id = start_pod(runpod_emulator, python("print('done')"))
    pod = runpod_emulator.all_pods[pod_id]
    runpod_emulator.wait_until(lambda: pod.status == "EXITED", 30, "the pod to stop itself")
    runpod_emulator.wait_until(lambda: not pod.container.is_up, 30, "the container to stop")
    assert pod.container.starts == 1


def test_outside_a_pod_the_entrypoint_exits_with_the_commands_status(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPOD_")}
    env.update(HOME=str(tmp_path), OW_TTL_CHECK_SECONDS="60")
    result = subprocess.run(
        [sys.executable, "-m", "infra.pod.entrypoint", "--", sys.executable, "-c", "raise SystemExit(3)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert (tmp_path / "shutdown.txt").exists()


@pytest.fixture
def dev_pod_environment(runpod_emulator, monkeypatch, tmp_path):
    monkeypatch.setenv("RUNPOD_API_KEY", runpod_emulator.api_key)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_emulator.url)
    public_key = tmp_path / "id_test.pub"
    public_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST test@laptop\n")
    return public_key


def test_a_dev_pod_authorizes_ssh_and_ends_itself_at_its_ttl(runpod_emulator, dev_pod_environment, capsys):
    status = dev_pod.main(
        [
            "--ttl-hours",
            "0.0015",
            "--gpu-type",
            "NVIDIA A40",
            "--public-key-file",
            str(dev_pod_environment),
            "--env",
            "OW_TTL_CHECK_SECONDS=0.5",
            "--wait-seconds",
            "30",
        ]
    )
    assert status == 0
    (pod,) = runpod_emulator.pods()
    out = capsys.readouterr().out
    assert f"Started dev pod {pod.id}" in out and f"ssh root@127.0.0.1 -p {pod.host_port}" in out
    assert pod.name.startswith("ow-dev-") and "OW_RUNPOD_WORK_POOL" not in pod.env
    assert shlex.split(pod.docker_args) == ["python", "-m", "infra.pod.entrypoint", "--dev"]
    authorized = pod.home / ".ssh" / "authorized_keys"
    runpod_emulator.wait_until(authorized.exists, 30, "the key to be authorized")
    assert "AAAAITEST" in authorized.read_text()
    runpod_emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the dev pod's TTL")
    assert pod.terminated_by == "pod"


def test_a_dev_pod_without_capacity_anywhere_fails_with_what_was_tried(
    runpod_emulator, dev_pod_environment, capsys
):
    runpod_emulator.set_capacity("NVIDIA A40", 0)
    arguments = ["--gpu-type", "NVIDIA A40", "--cloud-type", "SECURE", "--wait-seconds", "0"]
    assert dev_pod.main(arguments) == 1
    assert "Not tried: no stock of 1x NVIDIA A40 (SECURE)" in capsys.readouterr().err

    runpod_emulator.set_catalog_availability("NVIDIA A40", "HIGH")  # the catalog is behind
    assert dev_pod.main(arguments) == 1
    assert (
        "Tried, in order: 1x NVIDIA A40 (SECURE, 48 GB, $0.40/GPU-h): no instances available"
        in capsys.readouterr().err
    )
    assert runpod_emulator.pods() == []
