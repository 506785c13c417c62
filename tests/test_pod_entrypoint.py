"""Inside the pod: the entrypoint ends its own pod, the TTL watchdog fires, dev pods come up with SSH."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.pod import ttl
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


# What `prefect flow-run execute` does: it starts the flow run's engine in a session of its own, waits
# for it, and dies at once at a SIGTERM. The engine, like training, stops cleanly when told to: it
# stores its work first (half a second here), then exits.
SUPERVISOR = """
import subprocess, sys
engine = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
sys.exit(engine.wait())
"""
ENGINE = """
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
told = []
signal.signal(signal.SIGTERM, lambda *_: told.append("SIGTERM"))
(out / "engine.pid").write_text(str(os.getpid()))
while not told:
    time.sleep(0.05)
time.sleep(0.5)
(out / "checkpoint").write_text("saved after " + told[0])
sys.exit(7)
"""


def outside_a_pod(home: Path, **env: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RUNPOD_")}
    environment.update(HOME=str(home), **env)
    return environment


def run_supervised_engine(tmp_path: Path, env: dict[str, str], signal_entrypoint: bool):
    """The entrypoint running SUPERVISOR; SIGTERM it once the engine runs if asked; (status, stderr)."""
    command = [sys.executable, "-c", SUPERVISOR, ENGINE, str(tmp_path)]
    log = tmp_path / "entrypoint.log"  # a file, not a pipe: a lost engine would hold a pipe open
    with open(log, "w") as stderr:
        entrypoint = subprocess.Popen(
            [sys.executable, "-m", "infra.pod.entrypoint", "--", *command], env=env, stderr=stderr
        )
    engine_pid = tmp_path / "engine.pid"
    try:
        deadline = time.monotonic() + 30
        while not engine_pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine_pid.exists(), "the engine did not start"
        if signal_entrypoint:
            entrypoint.send_signal(signal.SIGTERM)  # what `docker stop` does: PID 1 only
        status = entrypoint.wait(timeout=30)
        return status, log.read_text()
    finally:
        entrypoint.kill()
        if engine_pid.exists():  # an engine nobody told to stop outlives the test otherwise
            try:
                os.kill(int(engine_pid.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_sigterm_to_the_entrypoint_reaches_the_engine_its_command_runs_in_another_session(tmp_path):
    status, stderr = run_supervised_engine(tmp_path, outside_a_pod(tmp_path, OW_TTL_CHECK_SECONDS="60"), True)
    assert (tmp_path / "checkpoint").read_text() == "saved after SIGTERM", stderr
    assert status == 7, stderr  # the command ended as its engine did, and only then the entrypoint


def test_the_ttl_warning_tells_the_engine_to_stop_before_the_deadline(tmp_path):
    env = outside_a_pod(
        tmp_path, TTL_HOURS="0.002", OW_TTL_WARNING_SECONDS="4", OW_TTL_CHECK_SECONDS="0.2"
    )  # a 7.2 s TTL, warned about 4 s ahead
    status, stderr = run_supervised_engine(tmp_path, env, False)
    saved_at = (tmp_path / "checkpoint").stat().st_mtime
    assert (tmp_path / "checkpoint").read_text() == "saved after SIGTERM", stderr
    assert saved_at < ttl.read_deadline(tmp_path / "shutdown.txt").timestamp()
    assert status == 7, stderr
    assert "TTL warning: this pod shuts down at" in stderr
    assert "sending SIGTERM to the flow-run command" in stderr


def test_a_pod_whose_command_stops_at_the_ttl_warning_ends_itself_before_its_ttl(runpod_emulator):
    saves_and_exits = python(
        "import os, signal, time; "
        "signal.signal(signal.SIGTERM, lambda *_: (open(os.path.expanduser('~/saved'), 'w').write('work'), os._exit(0))); "
        "time.sleep(120)"
    )
    pod_id = start_pod(
        runpod_emulator, saves_and_exits, TTL_HOURS="0.003", OW_TTL_WARNING_SECONDS="6"
    )  # a 10.8 s TTL, warned about 6 s ahead
    pod = runpod_emulator.all_pods[pod_id]
    runpod_emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the pod to end itself")
    assert pod.terminated_by == "pod"
    assert (pod.home / "saved").read_text() == "work"
    log = runpod_emulator.container_log(pod_id)
    assert "TTL warning" in log and "the flow-run command finished after the TTL warning stopped it" in log
    assert "TTL expired" not in log


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
