"""Custom jobs: identity over parameters and mounted files, validation by the user's model."""

from __future__ import annotations

import pytest
from prefect.client.schemas.objects import StateType
from pydantic import BaseModel, Field

from tests.fixtures.jobs import register_script_job
from tests.fixtures.stack import noisy_lines


class EchoParams(BaseModel):
    word: str = Field(min_length=1)
    times: int = Field(1, ge=1, le=5)


def make_job_class(script):
    return register_script_job("echo_test", script, EchoParams)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "echo.py"
    path.write_text(
        "import json, os, pathlib\n"
        "p = json.loads(os.environ['OW_PARAMS'])\n"
        "pathlib.Path(os.environ['OW_OUTPUT_DIR'], 'echo.txt').write_text(' '.join([p['word']] * p['times']))\n"
        "print('echoed', p['word'])\n"
    )
    return path


def job_id_for(ow, job_class, **params):
    from jobs.registry import get_job_spec
    from jobs.validation import check_inputs, validate_params

    spec = get_job_spec("custom")
    config = validate_params(spec, job_class(ow).definition(**params))
    return spec.job_id(config, check_inputs(spec, config, ow._store).inputs)


@pytest.fixture(scope="module")
def ow(ow_stack):
    from client import OpenWeights

    return OpenWeights()


def test_custom_job_id_changes_with_its_script_and_not_otherwise(ow, script):
    job_class = make_job_class(script)
    first = job_id_for(ow, job_class, word="hi")
    assert job_id_for(ow, job_class, word="hi") == first
    assert job_id_for(ow, job_class, word="hi", times=1) == first  # defaults spelled out: same job
    assert job_id_for(ow, job_class, word="ho") != first
    script.write_text(script.read_text() + "# a comment is a change\n")
    assert job_id_for(ow, job_class, word="hi") != first


def test_custom_job_runs_its_script_and_stores_its_outputs(ow, ow_stack, script, tmp_path):
    job = ow.echo_test.create(word="hello", times=3).wait(timeout=600)
    assert job.status == "completed", job.logs()[-2000:]
    out = job.download(tmp_path / "out")
    assert (out / "outputs" / "echo.txt").read_text() == "hello hello hello"
    assert "echoed hello" in job.logs()
    assert noisy_lines(job.logs()) == []


def test_parameters_are_validated_by_the_users_model_client_side_and_in_the_control_tier(ow, ow_stack, script):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="times"):
        ow.echo_test.create(word="x", times=9)
    definition = make_job_class(script)(ow).definition(word="x")
    definition["params"]["times"] = 9  # bypassing the client: the control tier still checks the schema
    run = ow_stack.run("custom/run", definition)
    assert run.state.type == StateType.FAILED
    assert "params.times: 9 is greater than the maximum of 5" in run.state.message


def test_a_failing_script_fails_the_job_with_its_output(ow, ow_stack, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("print('about to fail')\nraise SystemExit(3)\n")

    register_script_job("broken_test", broken, EchoParams)
    job = ow.broken_test.create(word="x").wait(timeout=600)
    assert job.status == "failed"
    assert "exited with code 3" in job.logs() and "about to fail" in job.logs()


def test_a_command_string_entrypoint_is_split_into_words_not_characters():
    """OpenWeights' jobs return ``"python train.py --epochs 3"``; that is three words and a flag."""
    from pydantic import BaseModel

    from client.custom_jobs import CustomJob

    class Params(BaseModel):
        epochs: int = 3

    class StringCommand(CustomJob):
        params = Params

        def get_entrypoint(self, params):
            return f"python train.py --epochs {params.epochs} --note 'two words'"

    definition = StringCommand(ow=None).definition(epochs=5)
    assert definition["entrypoint"] == ["python", "train.py", "--epochs", "5", "--note", "two words"]


def test_a_command_string_that_needs_a_shell_is_refused_naming_the_job():
    from client.custom_jobs import entrypoint_argv

    with pytest.raises(ValueError, match=r"Pipeline.get_entrypoint .*needs a shell \(\|\)"):
        entrypoint_argv("python a.py | tee log", "Pipeline")
    with pytest.raises(ValueError, match="No closing quotation"):
        entrypoint_argv("python 'a.py", "Pipeline")
    with pytest.raises(ValueError, match="list of non-empty strings"):
        entrypoint_argv([], "Pipeline")
