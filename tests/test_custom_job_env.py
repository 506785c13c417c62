"""A custom job's script is the user's code: it runs with an environment that holds no credential of
the stage that runs it (Prefect API key and auth string, RunPod key, S3/AWS keys, Hugging Face token)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compute.custom_stage import run_custom_stage, script_environment
from compute.reporting import LoggingReporter
from compute.stage import StageContext
from jobs.custom import CustomJobConfig
from store.artifact_store import ArtifactStore
from store.files import upload_file

# What a GPU stage's process holds on a pod or a worker machine: each one a way into the store, the
# Prefect API (and through it every block), the RunPod account or the Hugging Face account.
STAGE_SECRETS = {
    "PREFECT_API_KEY": "pnu_prefect-api-key-secret",
    "PREFECT_API_AUTH_STRING": "admin:prefect-auth-secret",
    "PREFECT_API_URL": "https://prefect.internal/api",
    "RUNPOD_API_KEY": "rpa_runpod-pod-key-secret",
    "AWS_ACCESS_KEY_ID": "AKIA-access-key-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key-secret",
    "AWS_SESSION_TOKEN": "aws-session-token-secret",
    "AWS_ENDPOINT_URL_S3": "https://minio.internal:9000",
    "OW_STORE_BLOCK": "team-s3",
    "HF_TOKEN": "hf_hugging-face-token-secret",
    "HUGGING_FACE_HUB_TOKEN": "hf_legacy-token-secret",
    "VLLM_API_KEY": "vllm-key-secret",
    "PUBLIC_KEY": "ssh-ed25519 AAAA-ssh-key",
}
# Dumps everything the script can see in its environment into its outputs (and its log).
DUMP_ENV = (
    "import json, os, pathlib\n"
    "seen = dict(os.environ)\n"
    "pathlib.Path(os.environ['OW_OUTPUT_DIR'], 'env.json').write_text(json.dumps(seen))\n"
    "print(json.dumps(seen))\n"
)


class CollectingReporter(LoggingReporter):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture
def stage(tmp_path: Path):
    """A custom job's stage context on a local store, with the dumping script mounted."""
    store = ArtifactStore(str(tmp_path / "store"))
    script = tmp_path / "dump_env.py"
    script.write_text(DUMP_ENV)
    script_id = upload_file(store, script, "custom_job_file").id
    context = StageContext(
        job_id="customjob-0123456789abcdef",
        store=store,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        reporter=CollectingReporter(),
    )
    config = CustomJobConfig(
        name="dump_env", mounted_files={"dump_env.py": script_id}, entrypoint=["python", "dump_env.py"]
    )
    return config, context


def run_and_read_env(config, context) -> dict[str, str]:
    result = run_custom_stage(config, context)
    assert result.details["files"] == ["env.json"]
    return json.loads((context.work_dir / "job" / "outputs" / "env.json").read_text())


def test_a_script_that_dumps_its_environment_finds_no_credential_of_the_stage(stage, monkeypatch):
    config, context = stage
    for name, value in STAGE_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", "/cache/huggingface")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    seen = run_and_read_env(config, context)

    leaked = sorted(
        name for name, value in STAGE_SECRETS.items() if name in seen or value in json.dumps(seen)
    )
    assert leaked == []
    assert not [line for line in context.reporter.lines if any(v in line for v in STAGE_SECRETS.values())]
    assert not [name for name in seen if name.startswith(("PREFECT_", "AWS_", "RUNPOD_"))]
    # What the job contract and the machine need is still there.
    assert seen["OW_JOB_ID"] == context.job_id and Path(seen["OW_OUTPUT_DIR"]).is_dir()
    assert json.loads(seen["OW_PARAMS"]) == {} and json.loads(seen["OW_INPUT_FILES"]) == {}
    assert seen["HF_HOME"] == "/cache/huggingface" and seen["CUDA_VISIBLE_DEVICES"] == "0"
    assert seen["PATH"] and seen["HOME"]


def test_a_declared_secret_reaches_the_script_under_its_usual_name_and_nothing_else(stage, monkeypatch):
    config, context = stage
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STAGE_SECRETS["AWS_SECRET_ACCESS_KEY"])
    context.secrets = {"hf-token": "hf_declared-token", "some-other-secret": "never-passed"}

    seen = run_and_read_env(config, context)

    assert seen["HF_TOKEN"] == "hf_declared-token"
    assert "never-passed" not in json.dumps(seen) and "AWS_SECRET_ACCESS_KEY" not in seen


@pytest.mark.parametrize(
    ("name", "inherited"),
    [
        ("PATH", True),
        ("LC_ALL", True),
        ("CUDA_VISIBLE_DEVICES", True),
        ("NVIDIA_VISIBLE_DEVICES", True),
        ("HF_HUB_OFFLINE", True),
        ("TOKENIZERS_PARALLELISM", True),
        ("HF_TOKEN", False),
        ("HF_TOKEN_PATH", False),
        ("HF_API_KEY", False),
        ("NCCL_SOCKET_PASSWORD", False),
        ("TRANSFORMERS_AUTH", False),
        ("PREFECT_API_URL", False),
        ("OW_STORE_BLOCK", False),
        ("GOOGLE_APPLICATION_CREDENTIALS", False),
        ("PYTHONPATH", False),
        ("LD_PRELOAD", False),
    ],
)
def test_which_stage_variables_a_script_inherits(name, inherited):
    config = CustomJobConfig(name="probe", entrypoint=["python", "x.py"])
    env = script_environment(
        {name: "value"}, config, job_id="customjob-1", inputs={}, output_dir=Path("/out"), secrets={}
    )
    assert (name in env) is inherited
