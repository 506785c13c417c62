"""The RunPod REST v2 client: error classification, retries, rate limits and idempotent create, against the emulator."""

from __future__ import annotations

import random

import pytest

from infra.runpod.api import (
    RetryPolicy,
    RunPodAuthError,
    RunPodBillingBlocked,
    RunPodClient,
    RunPodErrorKind,
    RunPodNoCapacity,
    RunPodRequestError,
    RunPodTransientError,
    api_error,
    classify_failure,
    rate_limit_wait_seconds,
)
from infra.runpod.gpu_choice import AvailabilityLevel
from infra.runpod.models import PodSpec, PodStatus, pod_from_wire

NO_INSTANCES = "There are no longer any instances available with the requested specifications."


@pytest.mark.parametrize(
    ("status", "detail", "kind"),
    [
        (400, NO_INSTANCES, RunPodErrorKind.NO_CAPACITY),
        (400, "This machine does not have the resources to deploy your pod.", RunPodErrorKind.NO_CAPACITY),
        (400, "allowedCudaVersions and minCudaVersion are mutually exclusive", RunPodErrorKind.REJECTED),
        (402, "Insufficient balance", RunPodErrorKind.BILLING),
        (400, "You have reached your spending limit", RunPodErrorKind.BILLING),
        (401, "missing bearer token", RunPodErrorKind.AUTH),
        (403, "access denied", RunPodErrorKind.FORBIDDEN),
        (404, "pod not found", RunPodErrorKind.NOT_FOUND),
        (409, "action not valid for status EXITED", RunPodErrorKind.CONFLICT),
        (422, "$: additional properties 'bogus' not allowed", RunPodErrorKind.INVALID),
        (429, "rate limit exceeded for the minute window", RunPodErrorKind.RATE_LIMITED),
        (500, "internal", RunPodErrorKind.TRANSIENT),
        (503, "Service Unavailable", RunPodErrorKind.TRANSIENT),
        (None, "ConnectTimeout", RunPodErrorKind.TRANSIENT),
    ],
)
def test_failures_are_classified_as_runpods_docs_say_to_act_on_them(status, detail, kind):
    assert classify_failure(status, detail) is kind


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        (None, 0.0),
        ('"minute";r=59;t=60', 0.0),
        ('"minute";r=0;t=12, "hour";r=2800;t=1812', 12.0),
        ('"minute";r=0;t=12, "hour";r=0;t=90', 90.0),
        ('"day";r=0;t=45012', 120.0),  # capped: a day-long wait is not something to sleep through
        ("garbage", 0.0),
    ],
)
def test_an_exhausted_rate_limit_window_delays_the_next_request(header, wait):
    assert rate_limit_wait_seconds(header) == wait


@pytest.mark.parametrize("retry_number", range(8))
def test_backoff_grows_exponentially_with_jitter_and_a_cap(retry_number):
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    ceiling = min(4.0, 0.5 * 2**retry_number)
    delays = {policy.delay_s(retry_number, random.Random(seed)) for seed in range(20)}
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1  # jittered, not lockstep


def test_error_messages_carry_runpods_detail_but_never_the_request():
    error = api_error("create pod ow-x", 422, "$: additional properties 'bogus' not allowed")
    assert "HTTP 422" in str(error) and "bogus" in str(error)
    assert isinstance(error, RunPodRequestError)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(emulator, key: str | None = None, **kwargs) -> RunPodClient:
    kwargs.setdefault("sleep", Sleeps())
    return RunPodClient(key or emulator.api_key, emulator.url, **kwargs)


def spec(name: str = "ow-test", gpu: str = "NVIDIA A40", **fields) -> PodSpec:
    return PodSpec(name=name, image="img", gpu_type_id=gpu, args="sleep 60", **fields)


def test_a_created_pod_reads_back_with_its_lifecycle_gpu_and_env(runpod_emulator):
    client = client_for(runpod_emulator)
    created = client.create_pod(spec(env={"K": 'v "quoted"\nline'}, gpu_count=2, cloud="COMMUNITY"))
    assert created.status in (PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING)
    pod = runpod_emulator.wait_until(
        lambda: (p := client.get_pod(created.id)) and p.status is PodStatus.RUNNING and p,
        15,
        "the pod to run",
    )
    assert (pod.gpu_type_id, pod.gpu_count, pod.cloud) == ("NVIDIA A40", 2, "COMMUNITY")
    assert pod.env["K"] == 'v "quoted"\nline'  # JSON carries any string: no encoding of our own
    assert pod.runtime_up and pod.cost_per_hr and pod.created_at is not None
    assert [p.id for p in client.list_pods()] == [created.id]


def test_transient_http_errors_are_retried_until_an_answer(runpod_emulator):
    runpod_emulator.inject_fault("listPods", times=2, http_status=503)
    assert client_for(runpod_emulator).list_pods() == []
    assert [r.status for r in runpod_emulator.requests_for("listPods")] == [503, 503, 200]


def test_transient_errors_give_up_after_the_policy_attempts(runpod_emulator):
    runpod_emulator.inject_fault("listPods", times=10, http_status=500)
    with pytest.raises(RunPodTransientError, match="HTTP 500"):
        client_for(runpod_emulator, retry=RetryPolicy(attempts=3)).list_pods()
    assert len(runpod_emulator.requests_for("listPods")) == 3


def test_a_429_waits_retry_after_then_repeats_the_request(runpod_emulator):
    runpod_emulator.inject_fault("listPods", http_status=429, retry_after_s=7)
    sleeps = Sleeps()
    assert client_for(runpod_emulator, sleep=sleeps).list_pods() == []
    assert 7 in sleeps
    assert [r.status for r in runpod_emulator.requests_for("listPods")] == [429, 200]


def test_authentication_errors_are_never_retried(runpod_emulator):
    with pytest.raises(RunPodAuthError):
        client_for(runpod_emulator, key="wrong-key").list_pods()
    assert [(r.caller, r.status) for r in runpod_emulator.requests_for("listPods")] == [("unauthorized", 401)]


def test_no_capacity_is_reported_at_once_for_the_caller_to_try_elsewhere(runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 0)
    with pytest.raises(RunPodNoCapacity, match="no longer any instances available"):
        client_for(runpod_emulator).create_pod(spec())
    assert len(runpod_emulator.requests_for("createPod")) == 1


def test_a_balance_refusal_is_its_own_error_and_is_not_retried(runpod_emulator):
    runpod_emulator.set_balance_blocked(True)
    with pytest.raises(RunPodBillingBlocked):
        client_for(runpod_emulator).create_pod(spec())
    assert [r.status for r in runpod_emulator.requests_for("createPod")] == [402]


def test_a_create_that_fails_after_making_the_pod_finds_it_instead_of_making_another(runpod_emulator):
    runpod_emulator.inject_fault("createPod", http_status=504, after_effect=True)
    pod = client_for(runpod_emulator).create_pod(spec("ow-once"))
    assert [p.id for p in runpod_emulator.pods()] == [pod.id]
    assert len(runpod_emulator.requests_for("createPod")) == 1


def test_slow_answers_are_waited_for(runpod_emulator):
    runpod_emulator.inject_fault("createPod", delay_s=1.5)
    pod = client_for(runpod_emulator).create_pod(spec())
    assert client_for(runpod_emulator).get_pod(pod.id).name == "ow-test"


def test_terminating_a_pod_that_is_gone_says_so_instead_of_failing(runpod_emulator):
    client = client_for(runpod_emulator)
    pod = client.create_pod(spec())
    assert client.terminate_pod(pod.id) is True
    assert client.terminate_pod(pod.id) is False
    assert client.get_pod(pod.id) is None


def test_a_pod_id_cannot_steer_a_request_to_another_path(runpod_emulator):
    with pytest.raises(ValueError, match="not a RunPod pod id"):
        client_for(runpod_emulator).terminate_pod("../catalog/gpus")
    assert runpod_emulator.requests_for("deletePod") == []


def test_the_catalog_reports_stock_for_the_count_and_cloud_asked(runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 1, "SECURE")
    client = client_for(runpod_emulator)
    secure = client.gpu_catalog(1, "SECURE")
    assert secure["NVIDIA A40"].secure_availability is not AvailabilityLevel.NONE
    assert client.gpu_catalog(2, "SECURE")["NVIDIA A40"].secure_availability is AvailabilityLevel.NONE
    assert secure["NVIDIA A40"].memory_gb == 48 and secure["NVIDIA A40"].secure_price
    assert secure["NVIDIA H200"].secure_availability is AvailabilityLevel.HIGH


def test_billing_reads_what_the_pod_cost(runpod_emulator):
    client = client_for(runpod_emulator)
    pod = client.create_pod(spec())
    client.terminate_pod(pod.id)
    billed = client.pod_billing_usd(pod.id)
    assert billed is not None and billed >= 0


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"cloud": "COMMUNITY", "gpu_count": 2, "ports": ["8000/http", "22/tcp"], "start_ssh": True},
        {"volume_gb": 20, "data_center_ids": ["US-TX-3"], "allowed_cuda_versions": ["12.8"]},
        {"network_volume_id": "vol_abc", "env": {"K": "v"}},
    ],
)
def test_every_create_request_we_send_is_valid_under_runpods_schema(fields):
    from tests.fixtures.runpod_schema import request_errors

    assert request_errors("CreatePodRequest", spec(**fields).create_request()) == []


def test_the_pod_examples_in_runpods_schema_read_as_our_pods():
    from tests.fixtures.runpod_schema import openapi_document

    responses = openapi_document()["paths"]["/v2/pods/{id}"]["get"]["responses"]
    (example,) = [e["value"] for e in responses["200"]["content"]["application/json"]["examples"].values()]
    pod = pod_from_wire(example)
    assert pod.id == example["id"] and pod.status.value == example["status"]
    assert (pod.gpu_type_id, pod.gpu_count) == (example["gpu"]["id"], example["gpu"]["count"])
    assert pod.env == example["env"] and pod.created_at is not None


def test_a_validation_error_about_the_env_never_echoes_its_value():
    import httpx

    from infra.runpod.api import problem_detail

    response = httpx.Response(
        422,
        json={
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "Request validation failed.",
            "errors": ["$.env.PREFECT_API_KEY: 'pnu_secret' is too long", "$: additional properties 'bogus' not allowed"],
        },
    )
    detail = problem_detail(response)
    assert "pnu_secret" not in detail
    assert "$.env.PREFECT_API_KEY" in detail and "'bogus' not allowed" in detail
