"""``options`` of inspect jobs, as ``inspect eval``'s command line or ``eval()`` takes them, and registry
names (``inspect_evals/…``): parsed and checked before any GPU, passed on to inspect, one job ID per job.

The runner tests use the fixed-reply endpoint of tests/test_inspect_runner.py; the last tests run a
job through the client on the tiny model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from compute.evals.inspect_runner import OpenAIEndpoint, resolve_inspect_task, run_inspect_eval
from jobs.evals import InspectEvalConfig
from jobs.registry import get_job_spec
from jobs.validation import InvalidJobError, validate_params
from tests.test_inspect_runner import API_KEY, TASK_FILE, FixedReplyOpenAIServer

BASE = {"model": "org/model", "eval_name": "inspect_evals/gpqa_diamond"}


def config(**params) -> InspectEvalConfig:
    return InspectEvalConfig(**BASE, **params)


@pytest.mark.parametrize(
    ("options", "parameters", "passed_on"),
    [
        # OpenWeights' cookbook passes `inspect eval` options as a string
        ("--top-p 0.9", {}, {"top_p": 0.9}),
        (
            "--temperature 0.5 --max-connections 4 --limit 10 -T count=3 -M emulate_tools=true",
            {
                "temperature": 0.5,
                "max_connections": 4,
                "limit": 10,
                "task_args": {"count": 3},
                "model_args": {"emulate_tools": True},
            },
            {},
        ),
        (
            "--no-log-samples --fail-on-error --stop-seqs END,STOP",
            {},
            {"log_samples": False, "fail_on_error": True, "stop_seqs": ["END", "STOP"]},
        ),
        (
            "--stop-seqs END --message-limit=5 --system-message 'You are: terse'",
            {},
            {"stop_seqs": ["END"], "message_limit": 5, "system_message": "You are: terse"},
        ),
        (
            "--epochs 2 --log-format json --seed 7 --max-tokens 64",
            {"epochs": 2, "log_format": "json", "seed": 7, "max_tokens": 64},
            {},
        ),
        # …or as eval()'s keyword arguments, spelt either way
        (
            {"temperature": 0.5, "max_connections": 4, "limit": 10},
            {"temperature": 0.5, "max_connections": 4, "limit": 10},
            {},
        ),
        (
            {"top-p": 0.9, "--message-limit": 3, "task_args": {"count": 2}},
            {"task_args": {"count": 2}},
            {"top_p": 0.9, "message_limit": 3},
        ),
        ("", {}, {}),
        ({}, {}, {}),
    ],
)
def test_options_become_job_parameters_or_eval_arguments(options, parameters, passed_on):
    validated = config(options=options)
    assert validated.options == passed_on
    for name, value in parameters.items():
        assert getattr(validated, name) == value, name


def test_two_spellings_of_one_job_are_one_job_id():
    spec = get_job_spec("eval-inspect")

    def job_id(**params) -> str:
        return spec.job_id(validate_params(spec, {**BASE, **params}), [])

    typed = job_id(temperature=0.5, limit=3, task_args={"count": 2}, options={"top_p": 0.9})
    assert job_id(options="--temperature 0.5 --limit 3 -T count=2 --top-p 0.9") == typed
    assert job_id(options={"temperature": 0.5, "limit": 3, "top-p": 0.9}, task_args={"count": 2}) == typed
    assert job_id(temperature=0.5, options="--limit 3 -T count=2 --top-p 0.9") == typed
    assert job_id(options="--top-p 0.8 --limit 3 -T count=2 --temperature 0.5") != typed


@pytest.mark.parametrize(
    ("options", "extra", "message"),
    [
        ("--top-pp 0.9", {}, r"No such option '--top-pp'.*'--top-p'"),
        (
            {"top_pp": 0.9},
            {},
            r"options: 'top_pp' is not an option of inspect's eval\(\).*did you mean 'top_p'",
        ),
        ({"top_p": "high"}, {}, r"options: top_p='high': Input should be a valid number"),
        ("--epochs x", {}, r"Invalid value for '--epochs': 'x' is not a valid integer"),
        ("--model openai/gpt-4o", {}, r"options: 'model' is set by the job"),
        ({"log_dir": "/tmp/logs"}, {}, r"options: 'log_dir' is set by the job \(the job stores the logs"),
        (
            "--epochs-reducer mean",
            {},
            r"--epochs-reducer is an `inspect eval` option with no eval\(\) argument",
        ),
        ("inspect_evals/gsm8k --limit 2", {}, r"inspect_evals/gsm8k is not an option; the task is eval_name"),
        (
            "--temperature 0.5",
            {"temperature": 0.7},
            r"options set temperature=0.5 but the temperature parameter is 0.7",
        ),
        ("-T count=3", {"task_args": {"count": 2}}, r"options set task_args \['count'\] to other values"),
        ("--temperature 5", {}, r"temperature\s+Input should be less than or equal to 2"),
        ("-M api_key=sk-x", {}, r"model_args may not set \['api_key'\]"),
        ("--limit 'unclosed", {}, r"No closing quotation"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, extra, message):
    with pytest.raises(ValueError, match=message):
        config(options=options, **extra)


def test_a_refused_option_fails_client_side_validation_naming_options():
    with pytest.raises(InvalidJobError, match=r"options: 'display' is set by the job"):
        validate_params(get_job_spec("eval-inspect"), {**BASE, "options": {"display": "full"}})


# --- what inspect receives ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_reply_server():
    with FixedReplyOpenAIServer(API_KEY) as server:
        yield server


def test_options_reach_inspect_as_its_command_line_would_pass_them(fixed_reply_server, tmp_path):
    from inspect_ai.log import read_eval_log

    validated = InspectEvalConfig(
        model="tiny",
        eval_name=f"{TASK_FILE}@arithmetic",
        options="--top-p 0.9 --limit 2 -T count=5 --message-limit 7 --stop-seqs END,STOP --max-tokens 5",
    )
    task = resolve_inspect_task(validated.task_ref, task_args=validated.task_args)
    endpoint = OpenAIEndpoint(base_url=fixed_reply_server.base_url, api_key=API_KEY)
    sent_before = len(fixed_reply_server.requests)
    result = run_inspect_eval(
        validated, task, endpoint=endpoint, model_names=["tiny"], log_dir=tmp_path / "logs"
    )
    result.raise_for_failures()
    log = read_eval_log(str(result.log_paths[0]))
    assert len(log.samples) == 2 and log.eval.task_args == {"count": 5}
    assert log.eval.config.message_limit == 7
    sent = fixed_reply_server.requests[sent_before:]
    assert len(sent) == 2
    assert {r["body"]["top_p"] for r in sent} == {0.9}
    assert {r["body"]["max_tokens"] for r in sent} == {5}
    assert {tuple(r["body"]["stop"]) for r in sent} == {("END", "STOP")}


@pytest.fixture
def installed_task_package(tmp_path, monkeypatch):
    """An installed distribution declaring an ``inspect_ai`` entry point, as inspect_evals does (inspect
    namespaces a package's tasks only when the package lies in a site-packages directory)."""
    site = tmp_path / "site-packages"
    package = site / "ow_options_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.scorer import includes\n\n"
        "@task\n"
        "def sums(count: int = 3) -> Task:\n"
        "    return Task(dataset=[Sample(input=f'{i} + 2?', target=str(i + 2)) for i in range(count)], scorer=includes())\n"
    )
    dist = site / "ow_options_pkg-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ow-options-pkg\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[inspect_ai]\now_options_pkg = ow_options_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    return "ow_options_pkg"


def test_a_registry_task_of_an_installed_package_runs_with_options(
    fixed_reply_server, installed_task_package, tmp_path
):
    validated = InspectEvalConfig(
        model="tiny", eval_name=f"{installed_task_package}/sums", options="-T count=4 --limit 3"
    )
    task = resolve_inspect_task(validated.task_ref, task_args=validated.task_args)
    assert task.specs == (f"{installed_task_package}/sums",) and task.task_args == {"count": 4}
    endpoint = OpenAIEndpoint(base_url=fixed_reply_server.base_url, api_key=API_KEY)
    result = run_inspect_eval(
        validated, task, endpoint=endpoint, model_names=["tiny"], log_dir=tmp_path / "logs"
    )
    result.raise_for_failures()
    [log] = result.logs
    assert log.task == f"{installed_task_package}/sums"
    # the fixed reply "4" is right for the one sample whose target is 4 (2 + 2), of the 3 evaluated
    assert {(s.metric, round(s.value, 4)) for s in result.scores if s.metric == "accuracy"} == {
        ("accuracy", 0.3333)
    }


# --- through the client, on the tiny model --------------------------------------------------------

needs_inspect_evals_missing = pytest.mark.skipif(
    importlib.util.find_spec("inspect_evals") is not None, reason="inspect_evals is installed here"
)


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


@needs_inspect_evals_missing
def test_an_inspect_evals_name_without_the_package_fails_before_any_gpu_naming_it(
    ow, ow_stack, tiny_model_dir
):
    before = len(ow_stack.flow_runs(flow_name="gpu-stage"))
    with pytest.raises(
        InvalidJobError,
        match=r"no installed package provides inspect tasks under 'inspect_evals'.*pip install inspect_evals",
    ):
        ow.inspect_ai.create(
            model=str(tiny_model_dir), eval_name="inspect_evals/gpqa_diamond", options="--top-p 0.9"
        )
    # and the control tier says the same to a run submitted without the client
    run = ow_stack.run(
        "eval/inspect", {"model": str(tiny_model_dir), "eval_name": "inspect_evals/gpqa_diamond"}
    )
    assert run.state.type == StateType.FAILED
    assert "no installed package provides inspect tasks under 'inspect_evals'" in run.state.message
    assert len(ow_stack.flow_runs(flow_name="gpu-stage")) == before


def test_an_inspect_job_with_openweights_style_options_runs_them(ow, ow_stack, tiny_model_dir, tmp_path):
    from inspect_ai.log import read_eval_log

    task_file = ow.files.upload(TASK_FILE, purpose="inspect_task")["id"]
    job = ow.inspect_ai.create(
        model=str(tiny_model_dir),
        eval_name=f"{task_file}@arithmetic",
        options="--top-p 0.9 -T count=2 --max-tokens 4 --message-limit 5",
        temperature=0,
        max_model_len=512,
    ).wait(timeout=900)
    assert job.status == "completed", job.logs()[-3000:]
    validated = job.params["validated_params"]
    assert validated["options"] == {"top_p": 0.9, "message_limit": 5}
    assert validated["task_args"] == {"count": 2} and validated["max_tokens"] == 4
    logs = [key for key in ow_stack.store.list(f"jobs/{job.id}/inspect-logs") if key.endswith(".eval")]
    log = read_eval_log(str(ow_stack.store.download_file(logs[0], tmp_path / Path(logs[0]).name)))
    assert log.status == "success" and len(log.samples) == 2
    assert log.eval.config.message_limit == 5  # eval()'s own options
    assert (log.plan.config.top_p, log.plan.config.max_tokens) == (0.9, 4)  # the model's generate config
