"""The emulator behaves like RunPod where our code can tell, as seen through the real ``runpod`` SDK."""

from __future__ import annotations

import os
import shlex

import pytest
import runpod
from runpod import error as runpod_error

from infra.runpod.api import encode_env, encode_graphql_string
from tests.fixtures.emulated_pods import process_tree


@pytest.fixture
def sdk(runpod_emulator, monkeypatch):
    """The real SDK, pointed at the emulator with the account key."""
    monkeypatch.setattr(runpod, "api_key", runpod_emulator.api_key)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_emulator.url)
    return runpod


def python_command(code: str) -> str:
    return shlex.join(["python", "-c", code])


def create(sdk, docker_args: str, name: str = "pod", env: dict[str, str] | None = None) -> str:
    """Create through the raw SDK; values are encoded as infra.runpod.api does, or quotes would break it."""
    return sdk.create_pod(
        name, "img", "NVIDIA A40", docker_args=encode_graphql_string(docker_args), env=encode_env(env or {})
    )["id"]


def test_pods_answer_in_the_shapes_the_sdk_reads(sdk, runpod_emulator):
    pod_id = create(sdk, python_command("import time; time.sleep(30)"), env={"K": "v=1"})
    assert len(pod_id) == 14 and pod_id.isalnum() and pod_id.islower()
    pod = sdk.get_pod(pod_id)
    assert pod["desiredStatus"] == "RUNNING" and pod["runtime"] is None  # not up yet
    assert pod["env"] == ["K=v=1"] and isinstance(pod["costPerHr"], float)
    runpod_emulator.wait_until(
        lambda: sdk.get_pod(pod_id)["runtime"] is not None, 10, "the container to come up"
    )
    assert sdk.get_pod(pod_id)["runtime"]["ports"][0]["privatePort"] == 22
    assert [p["id"] for p in sdk.get_pods()] == [pod_id]


def test_gpu_types_answer_both_forms_and_unknown_types_are_unknown(sdk):
    assert {"id", "displayName", "memoryInGb"} == set(sdk.get_gpus()[0])
    a40 = sdk.get_gpu("NVIDIA A40", 2)
    assert a40["memoryInGb"] == 48 and a40["lowestPrice"]["uninterruptablePrice"] > 0
    with pytest.raises(ValueError, match="No GPU found"):
        sdk.get_gpu("NVIDIA B9000")


def test_requests_without_the_accounts_key_get_401(runpod_emulator, monkeypatch):
    monkeypatch.setattr(runpod, "api_key", "rpa_not_a_key")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_emulator.url)
    with pytest.raises(runpod_error.AuthenticationError):
        runpod.get_pods()


def test_a_quoted_enum_is_a_query_error_as_in_real_graphql(sdk):
    with pytest.raises(runpod_error.QueryError, match="CloudTypeEnum"):
        sdk.api.graphql.run_graphql_query(
            'mutation { podFindAndDeployOnDemand(input: { name: "n", imageName: "i", gpuTypeId: "NVIDIA A40",'
            ' cloudType: "ALL" }) { id } }'
        )


def test_a_field_runpod_does_not_have_is_rejected(sdk):
    with pytest.raises(runpod_error.QueryError, match='Cannot query field "colour"'):
        sdk.api.graphql.run_graphql_query('query { pod(input: {podId: "x"}) { id colour } }')


def test_pod_process_gets_pod_env_its_own_home_and_a_pod_scoped_key(sdk, runpod_emulator):
    code = "import os; print(os.environ['K'], os.environ['RUNPOD_POD_ID'], os.environ['HOME'], os.environ['RUNPOD_API_KEY'])"
    pod_id = create(sdk, python_command(code), env={"K": "value"})
    pod = runpod_emulator.all_pods[pod_id]
    line = runpod_emulator.wait_until(
        lambda: [ln for ln in runpod_emulator.container_log(pod_id).splitlines() if ln.startswith("value")],
        15,
        "output",
    )[0]
    assert line.split() == ["value", pod_id, str(pod.home), pod.api_key]
    assert pod.api_key != runpod_emulator.api_key


def test_a_start_command_that_exits_is_started_again(sdk, runpod_emulator):
    pod_id = create(sdk, python_command("print('once')"))
    runpod_emulator.wait_until(lambda: runpod_emulator.all_pods[pod_id].container.starts >= 3, 15, "restarts")
    assert sdk.get_pod(pod_id)["desiredStatus"] == "RUNNING"


def test_termination_kills_the_whole_process_tree_even_new_sessions(sdk, runpod_emulator):
    grandchild = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"
    pod_id = create(sdk, python_command(grandchild))
    pod = runpod_emulator.all_pods[pod_id]
    tree = runpod_emulator.wait_until(
        lambda: (
            pod.container.process
            and len(process_tree(pod.container.process.pid)) == 2
            and process_tree(pod.container.process.pid)
        ),
        15,
        "the grandchild to start",
    )
    sdk.terminate_pod(pod_id)
    assert sdk.get_pod(pod_id) is None and sdk.get_pods() == []
    runpod_emulator.wait_until(
        lambda: not any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in tree),
        15,
        "every process of the pod to end",
    )
    with pytest.raises(runpod_error.QueryError, match="pod not found to terminate"):
        sdk.terminate_pod(pod_id)


def test_a_pod_key_may_read_and_end_only_its_own_pod(sdk, runpod_emulator, monkeypatch):
    first = create(sdk, "sleep 60", name="first")
    second = create(sdk, "sleep 60", name="second")
    monkeypatch.setattr(runpod, "api_key", runpod_emulator.all_pods[first].api_key)
    assert sdk.get_pod(first)["id"] == first
    with pytest.raises(runpod_error.QueryError, match="permission"):
        sdk.get_pod(second)
    with pytest.raises(runpod_error.QueryError, match="permission"):
        sdk.get_pods()
    sdk.terminate_pod(first)
    assert [p.id for p in runpod_emulator.pods()] == [second]
    assert runpod_emulator.all_pods[first].terminated_by == "pod"


def test_stop_keeps_the_pod_exited_and_its_gpu_free(sdk, runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 1)
    pod_id = create(sdk, "sleep 60")
    with pytest.raises(runpod_error.QueryError, match="no longer any instances"):
        create(sdk, "sleep 60", name="second")
    assert sdk.stop_pod(pod_id)["desiredStatus"] == "EXITED"
    assert sdk.get_pod(pod_id)["desiredStatus"] == "EXITED" and sdk.get_pod(pod_id)["runtime"] is None
    create(sdk, "sleep 60", name="second")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_stopped_pod_resumes_with_its_command_running_again(sdk, runpod_emulator):
    pod_id = create(sdk, "sleep 60")
    sdk.stop_pod(pod_id)
    assert sdk.resume_pod(pod_id, 1)["desiredStatus"] == "RUNNING"
    runpod_emulator.wait_until(
        lambda: sdk.get_pod(pod_id)["runtime"] is not None, 15, "the container to come back"
    )


@pytest.mark.parametrize(
    "runpod_emulator",
    [{"network_volumes": ({"id": "vol1", "name": "data", "size": 50, "dataCenterId": "EU-RO-1"},)}],
    indirect=True,
)
def test_a_network_volume_pins_the_pod_to_its_data_centre_as_the_sdk_looks_it_up(sdk, runpod_emulator):
    pod_id = sdk.create_pod("vol", "img", "NVIDIA A40", network_volume_id="vol1")["id"]
    create_input = runpod_emulator.all_pods[pod_id].create_input
    assert create_input["networkVolumeId"] == "vol1" and create_input["dataCenterId"] == "EU-RO-1"
