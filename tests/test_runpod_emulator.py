"""The emulator behaves like RunPod's REST API v2 where our code can tell, seen through plain httpx.

Its answers' shapes are held to RunPod's schema in ``test_runpod_emulator_contract.py``; this file
specifies what they say: the pod lifecycle, who may do what, capacity, the catalog, bills and faults.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
import time

import httpx
import pytest

from tests.fixtures.emulated_pods import process_tree
from tests.fixtures.runpod_schema import BALANCE_BLOCKED_MESSAGE, NO_CAPACITY_MESSAGE

SLEEP = "sleep 60"


@pytest.fixture
def api(runpod_emulator):
    """An httpx client of the emulator holding the account's key."""
    with httpx.Client(base_url=runpod_emulator.url, headers=bearer(runpod_emulator.api_key)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def python_command(code: str) -> str:
    return shlex.join(["python", "-c", code])


def pod_body(args: str = SLEEP, name: str = "pod", **fields) -> dict:
    return {"name": name, "image": "img", "gpu": {"id": "NVIDIA A40", "count": 1}, "args": args, **fields}


def create(api: httpx.Client, args: str = SLEEP, **fields) -> str:
    response = api.post("/v2/pods", json=pod_body(args, **fields))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_status(emulator, api: httpx.Client, pod_id: str, status: str) -> dict:
    return emulator.wait_until(
        lambda: (pod := api.get(f"/v2/pods/{pod_id}").json())["status"] == status and pod,
        15,
        f"pod {pod_id} to be {status}",
    )


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# -- the lifecycle ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runpod_emulator", [{"provisioning_delay_s": 0.6, "boot_delay_s": 0.6}], indirect=True
)
def test_a_new_pod_goes_provisioning_starting_running_and_has_a_runtime_only_when_running(
    api, runpod_emulator
):
    created = api.post("/v2/pods", json=pod_body())
    assert created.status_code == 201
    pod_id = created.json()["id"]
    assert len(pod_id) == 14 and pod_id.isalnum() and pod_id.islower()
    seen = [created.json()]
    while seen[-1]["status"] != "RUNNING":
        assert len(seen) < 200, "the pod never reached RUNNING"
        time.sleep(0.05)
        seen.append(api.get(f"/v2/pods/{pod_id}").json())
    statuses = [answer["status"] for answer in seen]
    assert list(dict.fromkeys(statuses)) == ["PROVISIONING", "STARTING", "RUNNING"]
    assert all(answer["runtime"] is None and answer["startedAt"] is None for answer in seen[:-1])
    assert seen[0]["actions"] == ["stop", "terminate"]
    running = seen[-1]
    assert running["actions"] == ["stop", "restart", "terminate"]
    assert running["runtime"]["uptime"] >= 0 and running["startedAt"] >= running["createdAt"]


def test_the_pod_answers_with_what_was_asked_for_and_its_price(api, runpod_emulator):
    body = pod_body(
        name="answer",
        env={"K": "v=1"},
        ports=["22/tcp", "8000/http"],
        disk=30,
        cloud="COMMUNITY",
        gpu={"id": "NVIDIA A40", "count": 2},
        mounts={"persistent": {"size": 20, "path": "/workspace"}},
    )
    pod = api.post("/v2/pods", json=body).json()
    assert {
        key: pod[key] for key in ("name", "image", "args", "env", "ports", "disk", "cloud", "mounts")
    } == {key: body[key] for key in ("name", "image", "args", "env", "ports", "disk", "cloud", "mounts")}
    assert pod["gpu"] == {"id": "NVIDIA A40", "count": 2}
    assert pod["cost"] == pytest.approx(0.35 * 2)  # the A40's community price, per GPU
    assert dt.datetime.fromisoformat(pod["createdAt"].replace("Z", "+00:00")).tzinfo is not None
    assert runpod_emulator.all_pods[pod["id"]].price_per_hour == pytest.approx(0.70)
    running = wait_for_status(runpod_emulator, api, pod["id"], "RUNNING")
    tcp = [port for port in running["runtime"]["ports"] if port["type"] == "tcp"]
    assert tcp == [
        {
            "private": 22,
            "public": runpod_emulator.all_pods[pod["id"]].host_port,
            "type": "tcp",
            "ip": "127.0.0.1",
        }
    ]
    assert running["ssh"]["direct"]["command"] == f"ssh root@127.0.0.1 -p {tcp[0]['public']}"


def test_listing_shows_live_pods_and_never_terminated_ones(api, runpod_emulator):
    kept, ended = create(api, name="kept"), create(api, name="ended")
    assert api.delete(f"/v2/pods/{ended}").status_code == 204
    assert [pod["id"] for pod in api.get("/v2/pods").json()["pods"]] == [kept]
    assert api.get(f"/v2/pods/{ended}").status_code == 404
    assert api.delete(f"/v2/pods/{ended}").status_code == 404
    assert runpod_emulator.all_pods[ended].status == "TERMINATED"
    assert runpod_emulator.all_pods[ended].terminated_by == "account"


def test_stop_keeps_the_pod_exited_at_no_cost_and_frees_its_gpu(api, runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 1)
    pod_id = create(api)
    refused = api.post("/v2/pods", json=pod_body(name="second"))
    assert (refused.status_code, refused.json()["detail"]) == (400, NO_CAPACITY_MESSAGE)
    stopped = api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    assert stopped.status_code == 200
    assert (stopped.json()["status"], stopped.json()["cost"], stopped.json()["runtime"]) == (
        "EXITED",
        0,
        None,
    )
    assert stopped.json()["actions"] == ["start", "terminate"]
    assert [pod["id"] for pod in api.get("/v2/pods").json()["pods"]] == [pod_id]  # still listed
    create(api, name="second")


def test_a_stopped_pod_starts_again_with_its_command_running(api, runpod_emulator):
    pod_id = create(api)
    api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    started = api.post(f"/v2/pods/{pod_id}/action", json={"action": "start"})
    assert started.status_code == 200 and started.json()["status"] == "STARTING"
    wait_for_status(runpod_emulator, api, pod_id, "RUNNING")
    runpod_emulator.wait_until(lambda: runpod_emulator.all_pods[pod_id].container.is_up, 15, "the command")


def test_restart_runs_the_command_again_in_a_fresh_container(api, runpod_emulator):
    pod_id = create(api, python_command("print('hello'); import time; time.sleep(60)"))
    wait_for_status(runpod_emulator, api, pod_id, "RUNNING")
    first = runpod_emulator.all_pods[pod_id].container
    assert api.post(f"/v2/pods/{pod_id}/action", json={"action": "restart"}).json()["status"] == "STARTING"
    wait_for_status(runpod_emulator, api, pod_id, "RUNNING")
    assert runpod_emulator.all_pods[pod_id].container is not first and not first.is_up
    runpod_emulator.wait_until(
        lambda: runpod_emulator.container_log(pod_id).splitlines().count("hello") == 2, 60, "the second run"
    )


def test_an_action_the_status_does_not_allow_is_a_409(api, runpod_emulator):
    pod_id = create(api)
    wait_for_status(runpod_emulator, api, pod_id, "RUNNING")
    refused = api.post(f"/v2/pods/{pod_id}/action", json={"action": "start"})
    assert refused.status_code == 409 and "RUNNING" in refused.json()["detail"]
    api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    assert api.post(f"/v2/pods/{pod_id}/action", json={"action": "restart"}).status_code == 409
    assert api.post(f"/v2/pods/{pod_id}/action", json={"action": "terminate"}).status_code == 204
    assert api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"}).status_code == 404


def test_a_pod_whose_image_cannot_run_goes_to_error_never_runs_its_command_and_bills(api, runpod_emulator):
    runpod_emulator.bad_images.add("broken:1")
    pod_id = create(api, python_command("print('the entrypoint ran')"), image="broken:1")
    errored = wait_for_status(runpod_emulator, api, pod_id, "ERROR")
    assert errored["runtime"] is None and errored["cost"] > 0
    assert errored["actions"] == ["start", "terminate"]
    time.sleep(0.5)
    assert "the entrypoint ran" not in runpod_emulator.container_log(pod_id)
    assert runpod_emulator.all_pods[pod_id].container.starts == 0


# -- the container ---------------------------------------------------------------------------------


def test_pod_process_gets_pod_env_its_own_home_and_a_pod_scoped_key(api, runpod_emulator):
    code = (
        "import os; print(os.environ['K'], os.environ['RUNPOD_POD_ID'], os.environ['HOME'],"
        " os.environ['RUNPOD_API_KEY'], os.environ['RUNPOD_GPU_COUNT'])"
    )
    pod_id = create(api, python_command(code), env={"K": "value"})
    pod = runpod_emulator.all_pods[pod_id]
    line = runpod_emulator.wait_until(
        lambda: [ln for ln in runpod_emulator.container_log(pod_id).splitlines() if ln.startswith("value")],
        15,
        "output",
    )[0]
    assert line.split() == ["value", pod_id, str(pod.home), pod.api_key, "1"]
    assert pod.api_key != runpod_emulator.api_key
    assert "RUNPOD_API_KEY" not in api.get(f"/v2/pods/{pod_id}").json()["env"]


def test_a_start_command_that_exits_is_started_again(api, runpod_emulator):
    pod_id = create(api, python_command("print('once')"))
    runpod_emulator.wait_until(lambda: runpod_emulator.all_pods[pod_id].container.starts >= 3, 15, "restarts")
    assert api.get(f"/v2/pods/{pod_id}").json()["status"] == "RUNNING"


def test_termination_kills_the_whole_process_tree_even_new_sessions(api, runpod_emulator):
    grandchild = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True); time.sleep(60)"
    )
    pod_id = create(api, python_command(grandchild))
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
    assert api.delete(f"/v2/pods/{pod_id}").status_code == 204
    runpod_emulator.wait_until(
        lambda: not any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in tree),
        15,
        "every process of the pod to end",
    )


def test_a_pod_terminating_itself_gets_its_answer_before_it_is_torn_down(api, runpod_emulator):
    # Like the pod's entrypoint, the process handles SIGTERM (here: by carrying on), so the teardown's
    # SIGTERM cannot cut it off between reading the answer and printing it; SIGKILL follows the grace.
    code = (
        "import os, signal, time, httpx\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)\n"
        "url = os.environ['EMULATOR_URL'] + '/v2/pods/' + os.environ['RUNPOD_POD_ID']\n"
        "headers = {'Authorization': 'Bearer ' + os.environ['RUNPOD_API_KEY']}\n"
        "print('answer', httpx.delete(url, headers=headers).status_code, flush=True)\n"
        "time.sleep(60)\n"
    )
    pod_id = create(api, shlex.join([sys.executable, "-c", code]), env={"EMULATOR_URL": runpod_emulator.url})
    pod = runpod_emulator.all_pods[pod_id]
    runpod_emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the pod to end itself")
    runpod_emulator.wait_until(
        lambda: "answer 204" in runpod_emulator.container_log(pod_id), 15, "its answer"
    )
    assert pod.terminated_by == "pod"
    runpod_emulator.wait_until(lambda: not pod.container.is_up, 15, "the container to go")


# -- who may do what -------------------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401(runpod_emulator):
    with httpx.Client(base_url=runpod_emulator.url) as anonymous:
        missing = anonymous.get("/v2/pods")
        wrong = anonymous.get("/v2/pods", headers=bearer("rpa_not_a_key"))
    assert (missing.status_code, missing.json()["detail"]) == (401, "missing bearer token")
    assert wrong.status_code == 401
    assert [(r.caller, r.status) for r in runpod_emulator.requests_for("listPods")] == [
        ("unauthorized", 401),
        ("unauthorized", 401),
    ]


def test_a_pod_key_may_read_stop_and_end_only_its_own_pod(api, runpod_emulator):
    first, second = create(api, name="first"), create(api, name="second")
    key = runpod_emulator.all_pods[first].api_key
    with httpx.Client(base_url=runpod_emulator.url, headers=bearer(key)) as pod_api:
        assert pod_api.get(f"/v2/pods/{first}").json()["id"] == first
        assert pod_api.get(f"/v2/pods/{second}").status_code == 403
        assert pod_api.get("/v2/pods").status_code == 403
        assert pod_api.post("/v2/pods", json=pod_body()).status_code == 403
        assert pod_api.get("/v2/catalog/gpus").status_code == 403
        assert pod_api.delete(f"/v2/pods/{second}").status_code == 403
        assert pod_api.post(f"/v2/pods/{first}/action", json={"action": "restart"}).status_code == 403
        assert pod_api.delete(f"/v2/pods/{first}").status_code == 204
        assert pod_api.get(f"/v2/pods/{first}").status_code == 401  # its key went with it
    assert [p.id for p in runpod_emulator.pods()] == [second]
    assert runpod_emulator.all_pods[first].terminated_by == "pod"
    assert [r.caller for r in runpod_emulator.requests_for("deletePod")] == [f"pod:{first}"] * 2


@pytest.mark.parametrize("runpod_emulator", [{"pod_keys_can_terminate": False}], indirect=True)
def test_when_pod_keys_may_not_terminate_a_pod_can_still_stop_itself(api, runpod_emulator):
    pod_id = create(api)
    with httpx.Client(
        base_url=runpod_emulator.url, headers=bearer(runpod_emulator.all_pods[pod_id].api_key)
    ) as pod_api:
        assert pod_api.delete(f"/v2/pods/{pod_id}").status_code == 403
        assert pod_api.post(f"/v2/pods/{pod_id}/action", json={"action": "terminate"}).status_code == 403
        assert pod_api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"}).json()["status"] == "EXITED"


# -- creating --------------------------------------------------------------------------------------


def test_unknown_fields_are_refused_by_name_with_a_422(api):
    refused = api.post("/v2/pods", json={**pod_body(), "bogus": 1, "gpuTypeId": "NVIDIA A40"})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"] == ["$: additional properties 'bogus', 'gpuTypeId' not allowed"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": None}, "$: missing property 'name'"),
        ({"image": None}, "$: missing property 'image'"),
        ({"env": ["K=v"]}, "$.env: got array, want object"),
        ({"gpu": {"id": "NVIDIA A40", "count": 0}}, "$.gpu.count: must be >= 1 but found 0"),
        ({"cloud": "ALL"}, "$.cloud: value must be one of 'SECURE', 'COMMUNITY'"),
    ],
)
def test_a_body_that_breaks_the_schema_is_a_422_naming_the_field(api, change, error):
    body = {key: value for key, value in {**pod_body(), **change}.items() if value is not None}
    refused = api.post("/v2/pods", json=body)
    assert refused.status_code == 422 and refused.json()["errors"] == [error]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"gpu": {"id": "NVIDIA B9000"}}, "'NVIDIA B9000' is not a GPU type"),
        ({"gpu": None, "cpu": {"id": "cpu3c", "vcpuCount": 2}}, "GPU pods only"),
        ({"gpu": None}, "exactly one of gpu or cpu"),
        ({"ports": ["8000"]}, "must look like"),
        ({"mounts": {"network": [{"volumeId": "nope", "path": "/data"}]}}, "'nope' not found"),
        ({"dataCenterIds": ["EU-RO-1"]}, NO_CAPACITY_MESSAGE),
        ({"gpu": {"id": "NVIDIA A40", "allowedCudaVersions": ["11.8"]}}, NO_CAPACITY_MESSAGE),
    ],
)
def test_a_body_the_handler_refuses_is_a_400_saying_why(api, runpod_emulator, change, detail):
    body = {key: value for key, value in {**pod_body(), **change}.items() if value is not None}
    refused = api.post("/v2/pods", json=body)
    assert refused.status_code == 400 and detail in refused.json()["detail"], refused.text
    assert runpod_emulator.pods() == []


def test_a_blocked_balance_refuses_creates_with_a_402_until_lifted(api, runpod_emulator):
    runpod_emulator.set_balance_blocked(True)
    refused = api.post("/v2/pods", json=pod_body())
    assert (refused.status_code, refused.json()["title"]) == (402, "Payment Required")
    assert refused.json()["detail"] == BALANCE_BLOCKED_MESSAGE
    runpod_emulator.set_balance_blocked(False)
    create(api)


@pytest.mark.parametrize(
    "runpod_emulator",
    [{"network_volumes": ({"id": "vol1", "name": "data", "size": 50, "dataCenterId": "EU-RO-1"},)}],
    indirect=True,
)
def test_a_network_volume_pins_the_pod_to_its_data_center(api, runpod_emulator):
    mounts = {"network": [{"volumeId": "vol1", "path": "/data"}]}
    pod = api.post("/v2/pods", json=pod_body(mounts=mounts)).json()
    assert pod["dataCenterId"] == "EU-RO-1" and pod["mounts"] == mounts


# -- the catalog -----------------------------------------------------------------------------------


def availability(api: httpx.Client, gpu_id: str, count: int = 1, cloud: str = "SECURE") -> dict:
    params = {"include": "AVAILABILITY", "product": "POD", "count": count, "cloud": cloud}
    gpus = api.get("/v2/catalog/gpus", params=params).json()["gpus"]
    return next(gpu for gpu in gpus if gpu["id"] == gpu_id)


def test_the_catalog_lists_prices_and_ceilings_and_availability_only_when_asked(api):
    plain = api.get("/v2/catalog/gpus").json()["gpus"]
    a40 = next(gpu for gpu in plain if gpu["id"] == "NVIDIA A40")
    assert a40["memory"] == 48 and a40["price"] == {"secure": 0.40, "community": 0.35}
    assert a40["maxCount"] == {"secure": 8, "community": 8}
    assert "availability" not in a40 and "dataCenters" not in a40
    assert api.get("/v2/catalog/gpus/NVIDIA A40").json() == a40
    assert api.get("/v2/catalog/gpus/NVIDIA B9000").status_code == 404


def test_availability_follows_the_capacity_left_for_pods_of_the_asked_size(api, runpod_emulator):
    assert availability(api, "NVIDIA A40")["availability"] == "HIGH"  # no limit
    runpod_emulator.set_capacity("NVIDIA A40", 4, "SECURE")
    assert availability(api, "NVIDIA A40", count=1)["availability"] == "HIGH"  # 4 more fit
    assert availability(api, "NVIDIA A40", count=2)["availability"] == "LOW"  # 2 more fit
    create(api, gpu={"id": "NVIDIA A40", "count": 3})
    assert availability(api, "NVIDIA A40", count=2)["availability"] == "NONE"
    none = availability(api, "NVIDIA A40", count=2)
    assert "dataCenters" not in none and none["cudaVersions"] == [{"version": "12.8", "available": False}]
    assert availability(api, "NVIDIA A40", count=1)["dataCenters"][0]["availability"] == "LOW"
    assert availability(api, "NVIDIA A40", count=2, cloud="COMMUNITY")["availability"] == "HIGH"
    assert availability(api, "NVIDIA A40", count=9)["availability"] == "NONE"  # above maxCount


def test_a_stale_catalog_can_say_in_stock_while_creates_fail(api, runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 0)
    runpod_emulator.set_catalog_availability("NVIDIA A40", "HIGH")
    assert availability(api, "NVIDIA A40")["availability"] == "HIGH"
    assert api.post("/v2/pods", json=pod_body()).status_code == 400
    runpod_emulator.set_catalog_availability("NVIDIA A40", None)
    assert availability(api, "NVIDIA A40")["availability"] == "NONE"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"include": "AVAILABILITY"}, 400),  # product is required with it
        ({"product": "POD"}, 400),  # product is valid only with include=AVAILABILITY
        ({"count": 2}, 400),
        ({"include": "AVAILABILITY", "product": "POD", "cloud": "ALL"}, 422),
        ({"include": "AVAILABILITY", "product": "POD", "count": 0}, 422),
    ],
)
def test_catalog_parameters_are_checked_as_the_schema_says(api, params, status):
    assert api.get("/v2/catalog/gpus", params=params).status_code == status


# -- billing ---------------------------------------------------------------------------------------


def test_a_pods_bill_is_its_hourly_price_for_the_time_it_held_gpus(api, runpod_emulator):
    pod_id = create(api)
    other = create(api, name="other")
    time.sleep(1.0)
    api.delete(f"/v2/pods/{pod_id}")
    pod = runpod_emulator.all_pods[pod_id]
    expected = pod.price_per_hour * (pod.terminated_at - pod.created_at) / 3600
    bill = api.get("/v2/billing/pods", params={"podId": pod_id}).json()
    assert [record["podId"] for record in bill["records"]] == [pod_id]
    assert bill["metadata"]["totals"]["totalAmount"] == pytest.approx(expected, rel=1e-3)
    assert bill["metadata"]["totals"]["gpuAmount"] == bill["metadata"]["totals"]["totalAmount"]
    assert bill["metadata"]["query"]["podId"] == pod_id
    time.sleep(0.3)
    assert api.get("/v2/billing/pods", params={"podId": pod_id}).json() == bill  # no more after the end
    everything = api.get("/v2/billing/pods").json()["metadata"]
    assert (everything["uniquePodCount"], everything["query"]["podId"]) == (2, None)
    assert (
        api.get("/v2/billing/pods", params={"podId": other}).json()["metadata"]["totals"]["totalAmount"] > 0
    )


def test_a_stopped_pod_bills_nothing_while_exited(api, runpod_emulator):
    pod_id = create(api)
    api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    first = api.get("/v2/billing/pods", params={"podId": pod_id}).json()["metadata"]["totals"]["totalAmount"]
    time.sleep(0.5)
    assert (
        api.get("/v2/billing/pods", params={"podId": pod_id}).json()["metadata"]["totals"]["totalAmount"]
        == first
    )


# -- faults, limits and the API's edges ------------------------------------------------------------


def test_an_injected_gateway_error_is_a_proxy_page_and_is_recorded(api, runpod_emulator):
    runpod_emulator.inject_fault("listPods", times=2, http_status=503)
    answers = [api.get("/v2/pods") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["content-type"] == "text/html"
    assert [r.status for r in runpod_emulator.requests_for("listPods")] == [503, 503, 200]


def test_an_injected_429_says_when_to_come_back(api, runpod_emulator):
    runpod_emulator.inject_fault("getGpuType", http_status=429, retry_after_s=7)
    refused = api.get("/v2/catalog/gpus/NVIDIA A40")
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "7")
    assert refused.headers["content-type"] == "application/problem+json"


def test_a_create_that_fails_after_the_fact_has_still_made_the_pod(api, runpod_emulator):
    runpod_emulator.inject_fault("createPod", http_status=504, after_effect=True)
    assert api.post("/v2/pods", json=pod_body(name="made-anyway")).status_code == 504
    assert [pod.name for pod in runpod_emulator.pods()] == ["made-anyway"]


def test_a_slow_answer_is_late_but_right(api, runpod_emulator):
    runpod_emulator.inject_fault("getGpuType", delay_s=0.5)
    began = time.monotonic()
    assert api.get("/v2/catalog/gpus/NVIDIA A40").status_code == 200
    assert time.monotonic() - began >= 0.5


def test_faults_name_operations_by_their_operation_id(runpod_emulator):
    with pytest.raises(ValueError, match="createPod"):
        runpod_emulator.inject_fault("podFindAndDeployOnDemand")


def test_every_answer_carries_the_rate_limit_and_going_over_it_is_a_429(api, runpod_emulator):
    runpod_emulator.requests_per_minute = 2
    first, second, third = (api.get("/v2/pods") for _ in range(3))
    assert first.headers["ratelimit"].startswith('"minute";r=1;t=')
    assert first.headers["ratelimit-policy"] == '"minute";q=2;w=60'
    assert second.headers["ratelimit"].startswith('"minute";r=0;t=')
    assert third.status_code == 429 and 0 < int(third.headers["retry-after"]) <= 60


def test_unknown_paths_are_404_and_unserved_methods_405_with_allow(api):
    assert api.get("/v2/nothing-here").status_code == 404
    wrong = api.put("/v2/pods")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET, POST")
