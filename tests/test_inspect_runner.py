"""The inspect-ai runner: task resolution fails early and clearly; a real ``inspect_ai.eval`` run
reaches an OpenAI-compatible endpoint with the right URL, key and model name, writes a log that
``read_eval_log`` opens, and keeps the API key out of that log and out of our logs.

The endpoint here is a test double (``FixedReplyOpenAIServer``): a real HTTP server on loopback that
speaks the chat-completions schema and always replies "4". The project's transformers-backed
server gets its own end-to-end test.
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from compute.evals.inspect_runner import (
    InspectEvalFailed,
    InspectTaskError,
    OpenAIEndpoint,
    resolve_inspect_task,
    run_inspect_eval,
)
from compute.evals.inspect_tasks import tasks_in_file
from infra.local.stack import free_port
from jobs.evals import InspectEvalConfig, parse_eval_name

TASK_FILE = Path(__file__).parent / "data" / "inspect_tasks" / "arithmetic_tasks.py"
API_KEY = "sk-test-0123456789abcdef-must-not-be-logged"
FIXED_REPLY = "4"


# --- task resolution ------------------------------------------------------------------------------


def test_task_file_lists_its_tasks_and_their_parameters():
    tasks = tasks_in_file(TASK_FILE)
    assert list(tasks) == ["arithmetic", "arithmetic_exact"]  # @task(name=...) renames
    assert tasks["arithmetic"].params == ("count",) and tasks["arithmetic"].required == ()
    assert tasks["arithmetic_exact"].params == ("count", "numeric")
    assert tasks["arithmetic_exact"].required == ("count",)


def test_task_signatures_are_read_from_the_syntax_tree(tmp_path):
    path = tmp_path / "tasks.py"
    path.write_text(
        "from inspect_ai import task\n"
        "import missing_module_is_fine_since_the_file_is_not_executed\n\n"
        "@task\ndef full(x, /, y=1, *, z, w=None, **kw): ...\n\n"
        "@task()\ndef bare(): ...\n\n"
        "@task(name='renamed')\ndef original(n: int = 2): ...\n\n"
        "@solver\ndef not_a_task(): ...\n\n"
        "def plain(): ...\n"
    )
    tasks = tasks_in_file(path)
    assert list(tasks) == ["full", "bare", "renamed"]
    assert (tasks["full"].params, tasks["full"].required, tasks["full"].accepts_any) == (
        ("x", "y", "z", "w"), ("x", "z"), True
    )
    assert (tasks["bare"].params, tasks["bare"].required, tasks["bare"].accepts_any) == ((), (), False)
    assert tasks["renamed"].params == ("n",)
    accepted = resolve_inspect_task(parse_eval_name(f"{path}@full"), task_args={"x": 1, "z": 2, "anything": 3})
    assert accepted.task_args == {"x": 1, "z": 2, "anything": 3}


def test_file_reference_resolves_to_absolute_specs():
    one = resolve_inspect_task(parse_eval_name(f"{TASK_FILE}@arithmetic"), task_args={"count": 2})
    assert one.source == "file" and one.task_names == ("arithmetic",)
    assert one.specs == (f"{TASK_FILE.resolve()}@arithmetic",) and one.task_args == {"count": 2}
    every = resolve_inspect_task(parse_eval_name("file-abc.py"), local_file=TASK_FILE, task_args={"count": 1})
    assert every.task_names == ("arithmetic", "arithmetic_exact")


@pytest.mark.parametrize(
    ("eval_name", "task_args", "message"),
    [
        ("missing_dir/tasks.py@arithmetic", {}, "task file .*missing_dir/tasks.py does not exist"),
        (f"{TASK_FILE}@nope", {}, r"has no @task named 'nope'; it defines \['arithmetic', 'arithmetic_exact'\]"),
        (f"{TASK_FILE}@arithmetic", {"cuont": 2}, r"task_args \['cuont'\] are not parameters of task 'arithmetic'"),
        (f"{TASK_FILE}@arithmetic_exact", {}, r"task 'arithmetic_exact' .* requires task_args \['count'\]"),
        (f"{TASK_FILE}", {}, r"requires task_args \['count'\]"),  # every task in the file must accept the args
        ("ow_no_such_package/some_task", {}, "no installed package provides inspect tasks under 'ow_no_such_package'"),
    ],
)
def test_unresolvable_tasks_fail_with_a_clear_error(eval_name, task_args, message):
    with pytest.raises(InspectTaskError, match=message):
        resolve_inspect_task(parse_eval_name(eval_name), task_args=task_args)


def test_task_file_problems_are_named(tmp_path):
    (tmp_path / "broken.py").write_text("from inspect_ai import task\n\n@task\ndef t(:\n    pass\n")
    with pytest.raises(InspectTaskError, match=r"broken.py:4: syntax error"):
        resolve_inspect_task(parse_eval_name(str(tmp_path / "broken.py")))
    (tmp_path / "empty.py").write_text("def not_a_task():\n    pass\n")
    with pytest.raises(InspectTaskError, match="defines no @task functions"):
        resolve_inspect_task(parse_eval_name(str(tmp_path / "empty.py")))
    (tmp_path / "tasks.txt").write_text("")
    with pytest.raises(InspectTaskError, match="is not a .py file"):
        resolve_inspect_task(parse_eval_name(f"{tmp_path / 'tasks.txt'}@t"))


@pytest.fixture
def installed_task_package(tmp_path, monkeypatch):
    """A real installed distribution declaring an ``inspect_ai`` entry point, as inspect_evals does."""
    site = tmp_path / "site-packages"
    package = site / "ow_test_inspect_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.scorer import match\n\n"
        "@task\n"
        "def echo(word: str = 'hi') -> Task:\n"
        "    return Task(dataset=[Sample(input=word, target=word)], scorer=match())\n"
    )
    dist = site / "ow_test_inspect_pkg-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ow-test-inspect-pkg\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[inspect_ai]\now_test_inspect_pkg = ow_test_inspect_pkg\n")
    monkeypatch.syspath_prepend(str(site))
    return "ow_test_inspect_pkg"


def test_registry_name_of_an_installed_package_resolves(installed_task_package):
    resolved = resolve_inspect_task(parse_eval_name(f"{installed_task_package}/echo"), task_args={"word": "x"})
    assert resolved.source == "registry" and resolved.specs == (f"{installed_task_package}/echo",)
    with pytest.raises(InspectTaskError, match=r"task_args \['wrd'\] are not parameters .* it accepts \['word'\]"):
        resolve_inspect_task(parse_eval_name(f"{installed_task_package}/echo"), task_args={"wrd": "x"})
    with pytest.raises(InspectTaskError, match=r"has no task named 'ech'; its tasks: ow_test_inspect_pkg/echo"):
        resolve_inspect_task(parse_eval_name(f"{installed_task_package}/ech"))


# --- a real eval against an OpenAI-compatible endpoint --------------------------------------------


class FixedReplyOpenAIServer:
    """Test double of an OpenAI-compatible server: uvicorn on loopback, always replies FIXED_REPLY.

    It checks the bearer key like a real server (401 otherwise) and records each request so the
    test can see what inspect sent.
    """

    def __init__(self, api_key: str):
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            body = await request.json()
            self.requests.append({"authorization": request.headers.get("authorization"), "body": body})
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
            return {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": FIXED_REPLY}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FixedReplyOpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fixed-reply OpenAI test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def fixed_reply_server():
    with FixedReplyOpenAIServer(API_KEY) as server:
        yield server


def _config(**overrides) -> InspectEvalConfig:
    params = {"model": "tiny", "eval_name": f"{TASK_FILE}@arithmetic", "task_args": {"count": 6}, **overrides}
    return InspectEvalConfig(**params)


def _log_text(path: Path) -> str:
    """Everything inside a log file, decompressed (an .eval log is a zip archive)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return "\n".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist())
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("log_format", ["eval", "json"])
def test_eval_runs_against_the_endpoint_and_writes_a_readable_log(
    fixed_reply_server, tmp_path, caplog, log_format
):
    from inspect_ai.log import read_eval_log

    config = _config(max_tokens=7, temperature=0.0, log_format=log_format)
    task = resolve_inspect_task(config.task_ref, task_args=config.task_args)
    endpoint = OpenAIEndpoint(base_url=fixed_reply_server.base_url, api_key=API_KEY)
    sent_before = len(fixed_reply_server.requests)
    with caplog.at_level(logging.DEBUG):
        result = run_inspect_eval(
            config, task, endpoint=endpoint, model_names=["tiny-base", "org/tiny-adapter"], log_dir=tmp_path / "logs"
        )
        assert logging.getLogger().level == logging.DEBUG  # inspect's logging setup did not leak into the process

    # one log per served model, in the log_dir, readable by inspect
    assert [(log.task, log.model, log.status) for log in result.logs] == [
        ("arithmetic", "openai-api/ow/tiny-base", "success"),
        ("arithmetic", "openai-api/ow/org/tiny-adapter", "success"),
    ]
    for log in result.logs:
        assert log.path.parent == tmp_path / "logs" and log.path.suffix == f".{log_format}"
        full = read_eval_log(str(log.path))
        assert full.status == "success" and len(full.samples) == 6
        assert [s.output.completion for s in full.samples] == [FIXED_REPLY] * 6
        assert full.eval.task_args == {"count": 6}

    # includes("4") is right for the three samples whose target is 4
    assert result.scores_table() == [
        {"task": "arithmetic", "model": model, "scorer": "includes", "metric": metric, "value": value}
        for model in ("openai-api/ow/tiny-base", "openai-api/ow/org/tiny-adapter")
        for metric, value in (("accuracy", 0.5), ("stderr", pytest.approx(0.2236, abs=1e-4)))
    ]
    result.raise_for_failures()

    # the endpoint saw our key, the served model names and the generate settings
    sent = fixed_reply_server.requests[sent_before:]
    assert len(sent) == 12
    assert {r["authorization"] for r in sent} == {f"Bearer {API_KEY}"}
    assert sorted({r["body"]["model"] for r in sent}) == ["org/tiny-adapter", "tiny-base"]
    assert {r["body"].get("max_tokens") for r in sent} == {7}
    assert {r["body"].get("temperature") for r in sent} == {0.0}

    # ...and the key appears in no log: not inspect's, not ours
    for log in result.logs:
        text = _log_text(log.path)
        assert "What is 2 plus 2?" in text and fixed_reply_server.base_url in text  # the search reads the content
        assert API_KEY not in text
    assert API_KEY not in caplog.text
    assert "inspect: running arithmetic on tiny-base, org/tiny-adapter" in caplog.text


def test_limit_and_epochs_reach_inspect(fixed_reply_server, tmp_path):
    from inspect_ai.log import read_eval_log

    config = _config(limit=2, epochs=3)
    task = resolve_inspect_task(config.task_ref, task_args=config.task_args)
    endpoint = OpenAIEndpoint(base_url=fixed_reply_server.base_url, api_key=API_KEY)
    result = run_inspect_eval(config, task, endpoint=endpoint, model_names=["tiny"], log_dir=tmp_path / "logs")
    full = read_eval_log(str(result.log_paths[0]))
    assert sorted((s.id, s.epoch) for s in full.samples) == [
        (sample_id, epoch) for sample_id in ("sum-2-2", "sum-3-2") for epoch in (1, 2, 3)
    ]


def test_a_wrong_key_gives_an_error_status_and_raise_for_failures_names_it(fixed_reply_server, tmp_path):
    config = _config(task_args={"count": 1})
    task = resolve_inspect_task(config.task_ref, task_args=config.task_args)
    endpoint = OpenAIEndpoint(base_url=fixed_reply_server.base_url, api_key="sk-wrong")
    result = run_inspect_eval(config, task, endpoint=endpoint, model_names=["tiny"], log_dir=tmp_path / "logs")
    [log] = result.logs
    assert log.status == "error" and log.path.exists()
    with pytest.raises(InspectEvalFailed, match="arithmetic on openai-api/ow/tiny: error"):
        result.raise_for_failures()


def test_endpoint_settings_are_checked():
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIEndpoint(base_url="127.0.0.1:8000/v1", api_key="k")
    endpoint = OpenAIEndpoint(base_url="http://127.0.0.1:1/v1", api_key="secret-value")
    assert "secret-value" not in repr(endpoint)
    assert endpoint.inspect_model("org/m") == "openai-api/ow/org/m"
