"""The emulator's answers hold to RunPod's published schema (``tests/fixtures/runpod_openapi.json``).

Every operation the project calls is exercised for its success answers and for each refusal the
emulator gives. For each answer: its status must be one the operation documents or fall under its
``default``; its content type one documented for that status (none for a 204); its body valid against
the schema there (JSON Schema 2020-12, OpenAPI 3.1's dialect, refs resolved in the whole document);
its documented headers present and valid; and ``RateLimit``/``RateLimit-Policy`` present on every
answer in the structured-field form the schema describes. The checker is shown to reject answers
that break the schema, so a pass means something.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fixtures.runpod_schema import openapi_document, schema_validator

DOCUMENT = openapi_document()
# The RateLimit headers' form, from their schemas' descriptions: one member per window.
RATE_LIMIT_FORMS = {
    "RateLimit": re.compile(r'^"(minute|hour|day)";r=\d+;t=\d+(, "(minute|hour|day)";r=\d+;t=\d+)*$'),
    "RateLimit-Policy": re.compile(r'^"(minute|hour|day)";q=\d+;w=\d+(, "(minute|hour|day)";q=\d+;w=\d+)*$'),
}


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(pointer: str) -> Any:
    value: Any = DOCUMENT
    for token in pointer.removeprefix("#/").split("/"):
        value = value[token.replace("~1", "/").replace("~0", "~")]
    return value


def _with_ref_followed(pointer: str) -> tuple[str, dict[str, Any]]:
    value = _resolve(pointer)
    while "$ref" in value:
        pointer = value["$ref"]
        value = _resolve(pointer)
    return pointer, value


def _schema_errors(pointer: str, value: Any) -> list[str]:
    return [
        f"{list(error.absolute_path)}: {error.message}"
        for error in schema_validator(pointer).iter_errors(value)
    ]


def answer_violations(response_pointer: str, response: httpx.Response) -> list[str]:
    """How ``response`` differs from the response object at ``response_pointer`` in the document."""
    pointer, documented = _with_ref_followed(response_pointer)
    problems: list[str] = []
    content = documented.get("content")
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if not content:
        if response.content or media:
            problems.append(f"a {media or 'untyped'} body where the schema documents none")
    elif media not in content:
        problems.append(f"content type {media!r}; documented: {sorted(content)}")
    else:
        problems += [
            f"body {e}" for e in _schema_errors(f"{pointer}/content/{_escape(media)}/schema", response.json())
        ]
    for name in documented.get("headers", {}):
        header_pointer, header = _with_ref_followed(f"{pointer}/headers/{_escape(name)}")
        value = response.headers.get(name)
        if value is None:
            problems.append(f"header {name} missing")
            continue
        typed = int(value) if header["schema"].get("type") == "integer" and value.isdigit() else value
        problems += [f"header {name} {e}" for e in _schema_errors(f"{header_pointer}/schema", typed)]
    for name, form in RATE_LIMIT_FORMS.items():
        if not form.match(response.headers.get(name, "")):
            problems.append(f"header {name} is {response.headers.get(name)!r}, not in its documented form")
    return problems


def operation_violations(path: str, method: str, response: httpx.Response) -> list[str]:
    """How ``response`` differs from what the operation at ``path`` and ``method`` documents."""
    responses = DOCUMENT["paths"][path][method]["responses"]
    status = str(response.status_code)
    key = status if status in responses else "default"
    if key == "default" and response.status_code < 400:
        return [f"status {status} is not documented for {method.upper()} {path}"]
    return answer_violations(f"#/paths/{_escape(path)}/{method}/responses/{key}", response)


# -- scenarios: (path template, method, what to do) --------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    path: str
    method: str
    act: Callable[[httpx.Client, Any], httpx.Response]


def body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "pod",
        "image": "img",
        "gpu": {"id": "NVIDIA A40", "count": 1},
        "args": "sleep 60",
        **fields,
    }


def new_pod(api: httpx.Client, emulator: Any, status: str = "PROVISIONING", **fields: Any) -> str:
    pod_id = api.post("/v2/pods", json=body(**fields)).json()["id"]
    if status == "EXITED":
        api.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"})
    elif status != "PROVISIONING":
        pod = emulator.all_pods[pod_id]
        emulator.wait_until(lambda: pod.status == status, 15, f"the pod to be {status}")
    return pod_id


def as_pod(emulator: Any, pod_id: str) -> httpx.Client:
    return httpx.Client(
        base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.all_pods[pod_id].api_key}"}
    )


def anonymous(emulator: Any) -> httpx.Client:
    return httpx.Client(base_url=emulator.url)


def act(client: httpx.Client, pod_id: str, action: str) -> httpx.Response:
    return client.post(f"/v2/pods/{pod_id}/action", json={"action": action})


def rate_limited(emulator: Any, request: Callable[[], httpx.Response]) -> httpx.Response:
    emulator.requests_per_minute = 1
    request()
    return request()


def bad_image_pod(api: httpx.Client, emulator: Any) -> str:
    emulator.bad_images.add("broken:1")
    return new_pod(api, emulator, "ERROR", image="broken:1")


def every_status_listed(api: httpx.Client, emulator: Any) -> httpx.Response:
    new_pod(api, emulator, "RUNNING", name="running", ports=["22/tcp", "8000/http"])
    new_pod(api, emulator, "EXITED", name="exited", mounts={"persistent": {"size": 20, "path": "/workspace"}})
    bad_image_pod(api, emulator)
    new_pod(api, emulator, name="provisioning", env={"K": "v"}, cloud="COMMUNITY")
    return api.get("/v2/pods")


PODS, POD, ACTION = "/v2/pods", "/v2/pods/{id}", "/v2/pods/{id}/action"
GPUS, GPU, BILLING = "/v2/catalog/gpus", "/v2/catalog/gpus/{id}", "/v2/billing/pods"
AVAILABILITY = {"include": "AVAILABILITY", "product": "POD", "count": 1, "cloud": "SECURE"}

SCENARIOS: dict[str, Scenario] = {
    # createPod
    "create 201": Scenario(
        PODS, "post", lambda api, emu: api.post(PODS, json=body(env={"K": "v"}, ports=["22/tcp"]))
    ),
    "create 401": Scenario(PODS, "post", lambda api, emu: anonymous(emu).post(PODS, json=body())),
    "create 403 pod key": Scenario(
        PODS, "post", lambda api, emu: as_pod(emu, new_pod(api, emu)).post(PODS, json=body())
    ),
    "create 400 unknown gpu": Scenario(
        PODS, "post", lambda api, emu: api.post(PODS, json=body(gpu={"id": "NVIDIA B9000"}))
    ),
    "create 400 cpu": Scenario(
        PODS,
        "post",
        lambda api, emu: api.post(
            PODS, json={"name": "c", "image": "i", "cpu": {"id": "cpu3c", "vcpuCount": 2}}
        ),
    ),
    "create 400 not json": Scenario(
        PODS,
        "post",
        lambda api, emu: api.post(PODS, content=b"{", headers={"Content-Type": "application/json"}),
    ),
    "create 422": Scenario(PODS, "post", lambda api, emu: api.post(PODS, json=body(bogus=1))),
    "create 429 over the limit": Scenario(
        PODS, "post", lambda api, emu: rate_limited(emu, lambda: api.post(PODS, json=body()))
    ),
    "create 501 template": Scenario(
        PODS, "post", lambda api, emu: api.post(PODS, json=body(templateId="tpl"))
    ),
    # listPods
    "list 200 every status": Scenario(PODS, "get", every_status_listed),
    "list 200 empty": Scenario(PODS, "get", lambda api, emu: api.get(PODS)),
    "list 401": Scenario(
        PODS, "get", lambda api, emu: anonymous(emu).get(PODS, headers={"Authorization": "Bearer x"})
    ),
    "list 403 pod key": Scenario(PODS, "get", lambda api, emu: as_pod(emu, new_pod(api, emu)).get(PODS)),
    "list 422": Scenario(PODS, "get", lambda api, emu: api.get(PODS, params={"includeClusterPods": "maybe"})),
    # getPod
    "get 200 provisioning": Scenario(POD, "get", lambda api, emu: api.get(f"{PODS}/{new_pod(api, emu)}")),
    "get 200 running": Scenario(
        POD,
        "get",
        lambda api, emu: api.get(f"{PODS}/{new_pod(api, emu, 'RUNNING', ports=['22/tcp', '8000/http'])}"),
    ),
    "get 200 exited": Scenario(POD, "get", lambda api, emu: api.get(f"{PODS}/{new_pod(api, emu, 'EXITED')}")),
    "get 200 error": Scenario(POD, "get", lambda api, emu: api.get(f"{PODS}/{bad_image_pod(api, emu)}")),
    "get 403 other pod": Scenario(
        POD, "get", lambda api, emu: as_pod(emu, new_pod(api, emu)).get(f"{PODS}/{new_pod(api, emu)}")
    ),
    "get 404": Scenario(POD, "get", lambda api, emu: api.get(f"{PODS}/nosuchpod00000")),
    # deletePod
    "delete 204": Scenario(POD, "delete", lambda api, emu: api.delete(f"{PODS}/{new_pod(api, emu)}")),
    "delete 404": Scenario(POD, "delete", lambda api, emu: api.delete(f"{PODS}/nosuchpod00000")),
    "delete 401": Scenario(
        POD, "delete", lambda api, emu: anonymous(emu).delete(f"{PODS}/{new_pod(api, emu)}")
    ),
    "delete 403 other pod": Scenario(
        POD, "delete", lambda api, emu: as_pod(emu, new_pod(api, emu)).delete(f"{PODS}/{new_pod(api, emu)}")
    ),
    # podAction
    "stop 200": Scenario(ACTION, "post", lambda api, emu: act(api, new_pod(api, emu, "RUNNING"), "stop")),
    "start 200": Scenario(ACTION, "post", lambda api, emu: act(api, new_pod(api, emu, "EXITED"), "start")),
    "restart 200": Scenario(
        ACTION, "post", lambda api, emu: act(api, new_pod(api, emu, "RUNNING"), "restart")
    ),
    "terminate 204": Scenario(ACTION, "post", lambda api, emu: act(api, new_pod(api, emu), "terminate")),
    "action 409": Scenario(ACTION, "post", lambda api, emu: act(api, new_pod(api, emu), "start")),
    "action 422": Scenario(ACTION, "post", lambda api, emu: act(api, new_pod(api, emu), "pause")),
    "action 404": Scenario(ACTION, "post", lambda api, emu: act(api, "nosuchpod00000", "stop")),
    # listGpuTypes
    "gpus 200": Scenario(GPUS, "get", lambda api, emu: api.get(GPUS)),
    "gpus 200 availability": Scenario(GPUS, "get", lambda api, emu: api.get(GPUS, params=AVAILABILITY)),
    "gpus 400 product missing": Scenario(
        GPUS, "get", lambda api, emu: api.get(GPUS, params={"include": "AVAILABILITY"})
    ),
    "gpus 400 product without include": Scenario(
        GPUS, "get", lambda api, emu: api.get(GPUS, params={"product": "POD"})
    ),
    "gpus 422": Scenario(
        GPUS, "get", lambda api, emu: api.get(GPUS, params={**AVAILABILITY, "cloud": "ALL"})
    ),
    "gpus 403 pod key": Scenario(GPUS, "get", lambda api, emu: as_pod(emu, new_pod(api, emu)).get(GPUS)),
    "gpus 501 country": Scenario(
        GPUS, "get", lambda api, emu: api.get(GPUS, params={**AVAILABILITY, "countryCodes": "FR"})
    ),
    # getGpuType
    "gpu 200": Scenario(GPU, "get", lambda api, emu: api.get(f"{GPUS}/NVIDIA A40")),
    "gpu 200 availability": Scenario(
        GPU, "get", lambda api, emu: api.get(f"{GPUS}/NVIDIA H200", params=AVAILABILITY)
    ),
    "gpu 404": Scenario(GPU, "get", lambda api, emu: api.get(f"{GPUS}/NVIDIA B9000")),
    "gpu 401": Scenario(GPU, "get", lambda api, emu: anonymous(emu).get(f"{GPUS}/NVIDIA A40")),
    # listPodBilling
    "billing 200 one pod by the hour": Scenario(
        BILLING,
        "get",
        lambda api, emu: api.get(BILLING, params={"podId": new_pod(api, emu), "bucketSize": "hour"}),
    ),
    "billing 200 empty window": Scenario(
        BILLING,
        "get",
        lambda api, emu: api.get(
            BILLING, params={"startTime": "2020-01-01T00:00:00Z", "endTime": "2020-02-01T00:00:00Z"}
        ),
    ),
    "billing 400 lastN with a window": Scenario(
        BILLING,
        "get",
        lambda api, emu: api.get(BILLING, params={"lastN": 2, "startTime": "2020-01-01T00:00:00Z"}),
    ),
    "billing 422": Scenario(
        BILLING, "get", lambda api, emu: api.get(BILLING, params={"bucketSize": "minute"})
    ),
    "billing 403 pod key": Scenario(
        BILLING, "get", lambda api, emu: as_pod(emu, new_pod(api, emu)).get(BILLING)
    ),
}


def scenario(name: str, path: str, method: str) -> Callable[[Callable], Callable]:
    """Register a scenario that takes more than one step."""

    def register(act: Callable[[httpx.Client, Any], httpx.Response]) -> Callable:
        SCENARIOS[name] = Scenario(path, method, act)
        return act

    return register


@scenario("create 400 no capacity", PODS, "post")
def _create_without_capacity(api, emu):
    emu.set_capacity("NVIDIA A40", 0)
    return api.post(PODS, json=body())


@scenario("create 402", PODS, "post")
def _create_with_a_blocked_balance(api, emu):
    emu.set_balance_blocked(True)
    return api.post(PODS, json=body())


@scenario("create 429 injected", PODS, "post")
def _create_rate_limited_by_a_fault(api, emu):
    emu.inject_fault("createPod", http_status=429)
    return api.post(PODS, json=body())


@scenario("create 500 injected", PODS, "post")
def _create_failing_inside(api, emu):
    emu.inject_fault("createPod", detail="boom")
    return api.post(PODS, json=body())


@scenario("get 200 own pod key", POD, "get")
def _get_with_the_pods_own_key(api, emu):
    pod_id = new_pod(api, emu)
    return as_pod(emu, pod_id).get(f"{PODS}/{pod_id}")


@scenario("get 404 terminated", POD, "get")
def _get_a_terminated_pod(api, emu):
    pod_id = new_pod(api, emu)
    api.delete(f"{PODS}/{pod_id}")
    return api.get(f"{PODS}/{pod_id}")


@scenario("action 403 pod key restart", ACTION, "post")
def _restart_with_the_pods_own_key(api, emu):
    pod_id = new_pod(api, emu)
    return act(as_pod(emu, pod_id), pod_id, "restart")


@scenario("start 400 no capacity", ACTION, "post")
def _start_without_capacity(api, emu):
    pod_id = new_pod(api, emu, "EXITED")
    emu.set_capacity("NVIDIA A40", 0)
    return act(api, pod_id, "start")


@scenario("gpus 200 availability none and low", GPUS, "get")
def _gpus_out_of_and_low_on_stock(api, emu):
    emu.set_capacity("NVIDIA A40", 0)
    emu.set_capacity("NVIDIA L40S", 1)
    return api.get(GPUS, params=AVAILABILITY)


@scenario("billing 200", BILLING, "get")
def _billing_of_a_running_and_a_stopped_pod(api, emu):
    new_pod(api, emu, "RUNNING")
    new_pod(api, emu, "EXITED")
    return api.get(BILLING)


@scenario("billing 200 last weeks", BILLING, "get")
def _billing_of_the_last_weeks(api, emu):
    new_pod(api, emu)
    return api.get(BILLING, params={"lastN": 3, "bucketSize": "week"})


@pytest.fixture
def api(runpod_emulator):
    with httpx.Client(
        base_url=runpod_emulator.url, headers={"Authorization": f"Bearer {runpod_emulator.api_key}"}
    ) as client:
        yield client


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_answer_is_one_the_schema_documents(name, api, runpod_emulator):
    scenario = SCENARIOS[name]
    response = scenario.act(api, runpod_emulator)
    expected_status = int(name.split()[1])
    assert response.status_code == expected_status, response.text
    assert operation_violations(scenario.path, scenario.method, response) == []


def test_the_scenarios_cover_every_operation_and_every_refusal_we_answer():
    operations = {
        (path, method)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert {(s.path, s.method) for s in SCENARIOS.values()} == operations
    statuses = {int(name.split()[1]) for name in SCENARIOS}
    assert {200, 201, 204, 400, 401, 402, 403, 404, 409, 422, 429} <= statuses


def test_a_wrong_method_is_runpods_405_with_allow(api):
    response = api.patch("/v2/pods/abc")
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET"
    assert answer_violations("#/components/responses/MethodNotAllowedError", response) == []


def test_an_unknown_path_is_a_problem_404(api):
    response = api.get("/v2/no-such-thing")
    assert response.status_code == 404
    assert answer_violations("#/components/responses/NotFoundError", response) == []


# -- the checker rejects what breaks the schema --------------------------------------------------


def test_the_checker_rejects_a_pod_without_a_status(api, runpod_emulator):
    good = api.post(PODS, json=body())
    pod = good.json()
    del pod["status"]
    broken = httpx.Response(
        201, json=pod, headers={k: v for k, v in good.headers.items() if k.startswith("ratelimit")}
    )
    assert operation_violations(PODS, "post", good) == []
    assert any(
        "'status' is a required property" in problem for problem in operation_violations(PODS, "post", broken)
    )


def test_the_checker_rejects_a_problem_served_as_plain_json_and_answers_without_rate_limits(api):
    missing = api.get(f"{PODS}/nosuchpod00000")
    as_json = httpx.Response(
        404,
        json=missing.json(),
        headers={k: v for k, v in missing.headers.items() if k.startswith("ratelimit")},
    )
    assert any(
        "content type 'application/json'" in problem for problem in operation_violations(POD, "get", as_json)
    )
    bare = httpx.Response(404, content=missing.content, headers={"Content-Type": "application/problem+json"})
    assert any("RateLimit" in problem for problem in operation_violations(POD, "get", bare))


def test_the_checker_rejects_an_undocumented_success_status(api):
    listed = api.get(PODS)
    odd = httpx.Response(202, json=listed.json(), headers=dict(listed.headers))
    assert operation_violations(PODS, "get", odd) == ["status 202 is not documented for GET /v2/pods"]
