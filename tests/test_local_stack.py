import os

import pytest

from infra.local import stack as local_stack


def test_prefect_server_answers_health_check(prefect_server):
    assert local_stack.is_healthy(prefect_server)


def test_tiny_model_loads_like_a_hub_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert model.config.vocab_size == len(tokenizer)


def test_local_pools_start_the_engine_with_the_workers_interpreter(ow_stack):
    """The GPU pool names the engine command (no workspace-supervisor process per run), the control
    pool is a `threads` pool, and `python`
    on the workers' PATH is the interpreter this project is installed in."""
    import shutil
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(local_stack.GPU_POOL).base_job_template
        assert template["variables"]["properties"]["command"]["default"] == local_stack.ENGINE_COMMAND
        # The control flows start no process at all: threads of one worker.
        assert client.read_work_pool(local_stack.CONTROL_POOL).type == local_stack.CONTROL_WORKER_TYPE
    env = local_stack.worker_env()
    python = shutil.which("python", path=env["PATH"])
    found = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == sys.prefix



def _processes_with(*words: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            arguments = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if all(word.encode() in arguments for word in words):
            found.append(int(entry))
    return found


def _policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_the_server_and_workers_run_as_batch_work(prefect_server, ow_stack):
    """On one machine the server and both workers (and so the flow runs they start) run under
    SCHED_BATCH, every thread of them: they do not preempt a job's threads when they wake."""
    port = prefect_server.rsplit(":", 1)[1].split("/")[0]
    servers = _processes_with("server", "start", port)
    control, gpu = _processes_with("worker", "test-control"), _processes_with("worker", "test-gpu")
    assert servers and control and gpu, (servers, control, gpu)
    for pid in servers + control + gpu:
        assert _policies(pid) == {os.SCHED_BATCH}, pid


POLICY_PROBE = """\
import json, os, pathlib
stage = os.getppid()  # the GPU-stage process runs the entrypoint
policies = {int(tid): os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{stage}/task")}
report = {"entrypoint": os.sched_getscheduler(0), "stage_main": policies.pop(stage), "stage_others": sorted(set(policies.values()))}
pathlib.Path(os.environ["OW_OUTPUT_DIR"], "policies.json").write_text(json.dumps(report))
"""


def test_a_jobs_compute_gets_the_normal_policy_back_and_prefects_threads_stay_batch(ow_stack, tmp_path):
    """The GPU stage starts under its worker's SCHED_BATCH; the thread that runs the job (and what
    it starts: here a custom job's script) gets the normal policy, Prefect's log and event threads
    in the stage process keep batch."""
    import json

    from pydantic import BaseModel

    from client import OpenWeights
    from tests.fixtures.jobs import register_script_job

    probe = tmp_path / "probe.py"
    probe.write_text(POLICY_PROBE)

    class NoParams(BaseModel):
        pass

    register_script_job("policy_probe_test", probe, NoParams)
    job = OpenWeights().policy_probe_test.create().wait(timeout=600)
    assert job.status == "completed", job.logs()[-2000:]
    report = json.loads((job.download(tmp_path / "out") / "outputs" / "policies.json").read_text())
    assert report["entrypoint"] == os.SCHED_OTHER
    assert report["stage_main"] == os.SCHED_OTHER
    assert os.SCHED_BATCH in report["stage_others"], report


def test_prioritise_calling_thread_keeps_python_helpers_batch_and_native_threads_normal():
    """As inherited from a batch worker: every thread batch; afterwards the caller and native
    threads (torch's OpenMP pool) are normal, the other Python threads batch."""
    import threading

    import torch

    from infra.local import cpu_policy

    torch.set_num_threads(2)
    torch.ones(512, 512) @ torch.ones(512, 512)  # starts the OpenMP pool (native threads)
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait, name="helper", daemon=True)
    helper.start()
    threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    try:
        for tid in threads:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        assert cpu_policy.prioritise_calling_thread({}) is True
        python_threads = {thread.native_id for thread in threading.enumerate()}
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
        assert os.sched_getscheduler(helper.native_id) == os.SCHED_BATCH
        native = [tid for tid in threads if tid not in python_threads]
        assert native, "torch started no native threads"
        assert {os.sched_getscheduler(tid) for tid in native} == {os.SCHED_OTHER}
        assert cpu_policy.prioritise_calling_thread({"OW_BATCH_SCHEDULING": "0"}) is False
    finally:
        stop.set()
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))


def test_batch_scheduling_can_be_turned_off_and_a_bad_value_names_the_variable():
    from infra.local import cpu_policy

    assert cpu_policy.batch_scheduling_enabled({}) is True
    assert cpu_policy.batch_scheduling_enabled({"OW_BATCH_SCHEDULING": "0"}) is False
    with pytest.raises(ValueError, match="OW_BATCH_SCHEDULING must be 1 or 0"):
        cpu_policy.batch_scheduling_enabled({"OW_BATCH_SCHEDULING": "maybe"})
