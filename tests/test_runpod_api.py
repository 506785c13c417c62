"""The RunPod client: encoding, error classification, retries and idempotent create, against the emulator."""

from __future__ import annotations

import random
import threading

import graphql  # graphql-core, a reference GraphQL implementation (installed with moto[server])
import pytest
import requests
from runpod import error as runpod_error
from runpod.api.mutations.pods import generate_pod_deployment_mutation

from infra.runpod.api import (
    RetryPolicy,
    RunPodAuthError,
    RunPodClient,
    RunPodErrorKind,
    RunPodNoCapacity,
    RunPodTransientError,
    classify_error,
    encode_env,
    encode_graphql_string,
    to_api_error,
)
from infra.runpod.models import PodSpec
from tests.fixtures.graphql_text import GraphQLSyntaxError, parse_operation
from tests.fixtures.runpod_schema import NO_CAPACITY_MESSAGE, SOMETHING_WENT_WRONG

AWKWARD_VALUES = [
    "plain",
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    "two\nlines",
    "windows\r\nline",
    "tab\tseparated",
    "caf\u00e9 \u65e5\u672c \U0001f680",
    "literal \\u0041 and \\n",
    'triple """ quotes',
    "{ key: value } # not a comment $HOME",
    "bell\x07 and escape\x1b",
    "line\u2028separator",
    "",
]


def sdk_mutation(env: dict[str, str]) -> str:
    """The exact GraphQL text the SDK sends for a create with this (already encoded) env."""
    return generate_pod_deployment_mutation("name", "image", "NVIDIA A40", "SECURE", env=env)


def env_values_as_parsed_by_graphql_core(query: str) -> dict[str, str]:
    document = graphql.parse(query)
    field = document.definitions[0].selection_set.selections[0]
    env_ast = next(f for f in field.arguments[0].value.fields if f.name.value == "env")
    items = [graphql.value_from_ast_untyped(item) for item in env_ast.value.values]
    return {item["key"]: item["value"] for item in items}


@pytest.mark.parametrize("value", AWKWARD_VALUES)
def test_encoded_env_values_survive_the_sdks_graphql_interpolation(value):
    query = sdk_mutation(encode_env({"VALUE": value}))
    ours = parse_operation(query).selections[0].arguments["input"]["env"]
    assert ours == [{"key": "VALUE", "value": value}]
    assert env_values_as_parsed_by_graphql_core(query) == {"VALUE": value}


@pytest.mark.parametrize("value", ['say "hi"', "two\nlines", "trailing backslash\\"])
def test_unencoded_values_break_the_sdks_query(value):
    """Why encoding exists: the SDK pastes values between quotes without escaping."""
    with pytest.raises(GraphQLSyntaxError):
        parse_operation(sdk_mutation({"VALUE": value}))
    with pytest.raises(graphql.GraphQLError):
        graphql.parse(sdk_mutation({"VALUE": value}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"1ST": "x"}, "env name '1ST'"),
        ({"HAS SPACE": "x"}, "env name 'HAS SPACE'"),
        ({"A-B": "x"}, "env name 'A-B'"),
        ({"NUL": "a\x00b"}, "env['NUL'] contains a NUL"),
        ({"SURROGATE": "a\udcffb"}, "env['SURROGATE'] is not valid Unicode"),
    ],
)
def test_env_that_no_pod_could_hold_is_refused_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_env(env)


def test_encoding_keeps_non_ascii_as_text():
    assert encode_graphql_string("caf\u00e9") == "caf\u00e9"
    assert encode_graphql_string('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            runpod_error.AuthenticationError("Unauthorized request, please check your API key."),
            RunPodErrorKind.AUTH,
        ),
        (runpod_error.QueryError(NO_CAPACITY_MESSAGE), RunPodErrorKind.NO_CAPACITY),
        (
            runpod_error.QueryError("There are no longer any instances available with enough disk space."),
            RunPodErrorKind.NO_CAPACITY,
        ),
        (
            runpod_error.QueryError("This machine does not have the resources to deploy your pod"),
            RunPodErrorKind.NO_CAPACITY,
        ),
        (runpod_error.QueryError(SOMETHING_WENT_WRONG), RunPodErrorKind.TRANSIENT),
        (runpod_error.QueryError("pod not found to terminate"), RunPodErrorKind.NOT_FOUND),
        (runpod_error.QueryError("You do not have permission to terminate this pod."), RunPodErrorKind.AUTH),
        (runpod_error.QueryError("Syntax Error: Unterminated string"), RunPodErrorKind.INVALID),
        (requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0), RunPodErrorKind.TRANSIENT),
        (requests.exceptions.ReadTimeout("read timed out"), RunPodErrorKind.TRANSIENT),
        (requests.exceptions.ConnectionError("connection refused"), RunPodErrorKind.TRANSIENT),
        (KeyError("data"), RunPodErrorKind.TRANSIENT),
        (
            ValueError("No GPU found with the specified ID, run runpod.get_gpus()"),
            RunPodErrorKind.UNKNOWN_GPU,
        ),
        (ValueError("cloud_type must be one of ALL, COMMUNITY or SECURE"), RunPodErrorKind.INVALID),
    ],
)
def test_errors_are_classified_by_what_the_caller_should_do(error, kind):
    assert classify_error(error) is kind


def test_error_messages_never_carry_the_query_text():
    error = runpod_error.QueryError(
        "Syntax Error", query='env: [{ key: "PREFECT_API_KEY", value: "pnu_secret" }]'
    )
    assert "pnu_secret" not in str(to_api_error(error, "create pod"))


@pytest.mark.parametrize("retry_number", range(8))
def test_backoff_grows_exponentially_with_jitter_and_a_cap(retry_number):
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    ceiling = min(4.0, 0.5 * 2**retry_number)
    delays = {policy.delay_s(retry_number, random.Random(seed)) for seed in range(20)}
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1  # jittered, not lockstep


def client_for(emulator, **kwargs) -> RunPodClient:
    return RunPodClient(emulator.api_key, emulator.url, sleep=lambda seconds: None, **kwargs)


def spec(name: str = "ow-test", gpu: str = "NVIDIA A40") -> PodSpec:
    return PodSpec(name=name, image="img", gpu_type_id=gpu, docker_args="sleep 60")


def test_transient_http_errors_are_retried_until_an_answer(runpod_emulator):
    runpod_emulator.inject_fault("myself", times=2, http_status=503)
    assert client_for(runpod_emulator).list_pods() == []
    assert [r.status for r in runpod_emulator.requests_for("myself")] == [503, 503, 200]


def test_transient_errors_give_up_after_the_policy_attempts(runpod_emulator):
    runpod_emulator.inject_fault("myself", times=10, graphql_error=SOMETHING_WENT_WRONG)
    with pytest.raises(RunPodTransientError, match="Something went wrong"):
        client_for(runpod_emulator, retry=RetryPolicy(attempts=3)).list_pods()
    assert len(runpod_emulator.requests_for("myself")) == 3


def test_authentication_errors_are_never_retried(runpod_emulator):
    with pytest.raises(RunPodAuthError):
        RunPodClient("wrong-key", runpod_emulator.url, sleep=lambda seconds: None).list_pods()
    assert [(r.caller, r.status) for r in runpod_emulator.requests_for("myself")] == [("unauthorized", 401)]


def test_no_capacity_is_reported_at_once_for_the_caller_to_try_elsewhere(runpod_emulator):
    runpod_emulator.set_capacity("NVIDIA A40", 0)
    with pytest.raises(RunPodNoCapacity, match="no longer any instances available"):
        client_for(runpod_emulator).create_pod(spec())
    assert len(runpod_emulator.requests_for("podFindAndDeployOnDemand")) == 1


def test_a_create_that_fails_after_making_the_pod_finds_it_instead_of_making_another(runpod_emulator):
    runpod_emulator.inject_fault("podFindAndDeployOnDemand", http_status=504, after_effect=True)
    pod_id = client_for(runpod_emulator).create_pod(spec("ow-once"))
    assert [p.id for p in runpod_emulator.pods()] == [pod_id]
    assert len(runpod_emulator.requests_for("podFindAndDeployOnDemand")) == 1


def test_slow_answers_are_waited_for(runpod_emulator):
    runpod_emulator.inject_fault("podFindAndDeployOnDemand", delay_s=1.5)
    pod_id = client_for(runpod_emulator).create_pod(spec())
    assert client_for(runpod_emulator).get_pod(pod_id).name == "ow-test"


def test_terminating_a_pod_that_is_gone_says_so_instead_of_failing(runpod_emulator):
    client = client_for(runpod_emulator)
    pod_id = client.create_pod(spec())
    assert client.terminate_pod(pod_id) is True
    assert client.terminate_pod(pod_id) is False
    assert client.get_pod(pod_id) is None


def test_concurrent_clients_with_different_keys_never_borrow_each_others_key(runpod_emulator):
    """The SDK's key is a process global; calls with different keys from many threads must not mix."""
    good, bad = client_for(runpod_emulator), RunPodClient("wrong-key", runpod_emulator.url)
    outcomes: list[tuple[str, bool]] = []

    def call(client: RunPodClient, label: str) -> None:
        try:
            client.list_pods()
            outcomes.append((label, True))
        except RunPodAuthError:
            outcomes.append((label, False))

    threads = [
        threading.Thread(target=call, args=(good, "good") if i % 2 else (bad, "bad")) for i in range(24)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) == [("bad", False), ("good", True)]
