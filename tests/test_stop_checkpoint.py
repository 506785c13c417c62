"""Told to stop mid-training (SIGTERM from RunPod, the TTL warning, a cancellation), a run first stores
a checkpoint of the step it reached, then ends as told; the next run resumes from that step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compute.backend import BackendChoice
from compute.reporting import LoggingReporter
from compute.training.checkpoints import CheckpointStore
from compute.training.recipe import FinetuneInputs, run_finetune
from compute.training.stop_request import StopRequest, run_until_stopped
from jobs.finetune import TrainingConfig
from jobs.model_refs import ResolvedModel
from store.artifact_store import ArtifactStore
from tests.fixtures.jobs import FAST_SFT

REPO = Path(__file__).resolve().parents[1]
CPU = BackendChoice("transformers", "cpu", "tests run on the CPU")
MAX_STEPS = 8
SIGNAL_AT_STEP = 3
# Far apart: no periodic checkpoint exists at the step the signal lands on.
SETTINGS = {
    **FAST_SFT,
    "per_device_train_batch_size": 4,
    "max_seq_length": 64,
    "max_steps": MAX_STEPS,
    "save_steps": 1000,
    "checkpoint_interval_minutes": 600,
}

# The training process, plain or as a Prefect flow run. Its reporter prints each finished step
# (and, once, which SIGTERM handler is installed while training runs), then lingers, so steps take
# as long as a real model's would and the test can signal between two of them.
TRAINING = """
import logging, signal, sys, time
from pathlib import Path

from compute.backend import BackendChoice
from compute.reporting import LoggingReporter
from compute.training.recipe import FinetuneInputs, run_finetune
from jobs.finetune import TrainingConfig
from jobs.model_refs import ResolvedModel
from store.artifact_store import ArtifactStore

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
mode, model_dir, training_path, store_root, work_dir, job_id, settings = sys.argv[1:8]


class SlowStepsReporter(LoggingReporter):
    def progress(self, done, total, description=""):
        if done == 1:
            handler = signal.getsignal(signal.SIGTERM)
            print(f"SIGTERM handler while training: {getattr(handler, '__name__', handler)}", flush=True)
        print(f"step {done}", flush=True)
        if done:
            time.sleep(0.4)


config = TrainingConfig.model_validate_json(settings)
inputs = FinetuneInputs(
    job_id=job_id,
    model=ResolvedModel(model_dir),
    training_path=Path(training_path),
    work_dir=Path(work_dir),
    store=ArtifactStore(store_root),
    reporter=SlowStepsReporter(),
    backend=BackendChoice("transformers", "cpu", "tests run on the CPU"),
)
if mode == "flow":
    from prefect import flow
    from prefect.runtime import flow_run

    @flow(name="train-until-told-to-stop")
    def train():
        print(f"flow run {flow_run.get_id()}", flush=True)
        run_finetune(config, inputs)

    train()
else:
    run_finetune(config, inputs)
print("finished", flush=True)
"""


def training_config(tiny_model_dir: Path) -> TrainingConfig:
    return TrainingConfig(model=str(tiny_model_dir), training_file="conversations:file-" + "a" * 64, **SETTINGS)


def train_until_signalled(mode: str, config: TrainingConfig, conversations_path, store_root, work_dir, job_id):
    """Start training in a process, SIGTERM it once it reports SIGNAL_AT_STEP; (exit status, stdout, stderr)."""
    stderr_path = work_dir.parent / f"{job_id}.stderr"
    with open(stderr_path, "w") as stderr:
        arguments = [mode, config.model, conversations_path, store_root, work_dir, job_id, config.model_dump_json()]
        process = subprocess.Popen(
            [sys.executable, "-c", TRAINING, *map(str, arguments)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines = []
        try:
            for line in process.stdout:
                lines.append(line.strip())
                if line.strip() == f"step {SIGNAL_AT_STEP}":
                    process.send_signal(signal.SIGTERM)
                    break
            lines.extend(line.strip() for line in process.stdout)
            status = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return status, lines, stderr_path.read_text()


def stored_checkpoint(store_root: Path, job_id: str, lines: list[str], stderr: str) -> int:
    """The step of the one checkpoint in the store, which must be complete and hold every step
    finished before the signal (at most the step in flight ran on after it)."""
    stored = CheckpointStore(ArtifactStore(store_root), f"jobs/{job_id}").steps()
    assert len(stored) == 1 and stored[0][1], (stored, stderr[-3000:])  # with its COMPLETE marker
    step = stored[0][0]
    assert SIGNAL_AT_STEP <= step <= SIGNAL_AT_STEP + 1, (step, lines)
    assert step < MAX_STEPS
    assert f"checkpoint at step {step} saved to" in stderr
    return step


def resume(config: TrainingConfig, tiny_model_dir: Path, conversations_path: Path, store_root: Path, job_id: str, work_dir: Path):
    return run_finetune(
        config,
        FinetuneInputs(
            job_id=job_id,
            model=ResolvedModel(str(tiny_model_dir)),
            training_path=conversations_path,
            work_dir=work_dir,
            store=ArtifactStore(store_root),
            reporter=LoggingReporter(),
            backend=CPU,
        ),
    )


@pytest.mark.slow
def test_sigterm_between_checkpoints_stores_a_checkpoint_at_that_step_and_resume_starts_there(
    tiny_model_dir, conversations_path, tmp_path
):
    store_root, job_id = tmp_path / "store", "ftjob-stopped-by-sigterm"
    config = training_config(tiny_model_dir)
    status, lines, stderr = train_until_signalled("plain", config, conversations_path, store_root, tmp_path / "work", job_id)

    assert f"step {SIGNAL_AT_STEP}" in lines, stderr[-3000:]
    assert "finished" not in lines  # a stopped run stores no final adapter
    assert status == -signal.SIGTERM, stderr[-3000:]  # it still ends the way SIGTERM ends a process
    step = stored_checkpoint(store_root, job_id, lines, stderr)

    handler_before = signal.getsignal(signal.SIGTERM)
    resumed = resume(config, tiny_model_dir, conversations_path, store_root, job_id, tmp_path / "work-resumed")
    assert resumed.resumed_from_step == step
    assert resumed.metrics["global_step"] == MAX_STEPS
    assert signal.getsignal(signal.SIGTERM) is handler_before  # training leaves the handler as it found it


@pytest.mark.slow
def test_in_a_prefect_flow_run_sigterm_checkpoints_before_the_run_crashes(
    prefect_server, tiny_model_dir, conversations_path, tmp_path
):
    from prefect.client.orchestration import get_client

    store_root, job_id = tmp_path / "store", "ftjob-flow-run-stopped-by-sigterm"
    config = training_config(tiny_model_dir)
    status, lines, stderr = train_until_signalled("flow", config, conversations_path, store_root, tmp_path / "work", job_id)

    # Prefect's own SIGTERM handler stays in place while training runs: its cancellation handshake
    # (the runner's cancel intent, acknowledged only while that handler is installed) keeps working.
    assert "SIGTERM handler while training: _prefect_sigterm_handler" in lines, stderr[-3000:]
    assert "finished" not in lines
    assert status == -signal.SIGTERM, stderr[-3000:]
    stored_checkpoint(store_root, job_id, lines, stderr)
    (flow_run_id,) = [line.split()[-1] for line in lines if line.startswith("flow run ")]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_crashed(), state  # not Completed: its adapter is half-trained


# -- the mechanism, with stand-in training: steps that check the stop request at their end ---------


class Terminated(BaseException):
    """What Prefect's SIGTERM handler raises (TerminationSignal), for a process this test must survive."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal = signum


def raise_terminated(signum, _frame):
    raise Terminated(signum)


@pytest.fixture
def sigterm_raises():
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    yield
    signal.signal(signal.SIGTERM, previous)


def training(stop: StopRequest, signals: dict[int, list[int]], step_seconds: float = 0.2, steps: int = 60):
    """Stand-in training: in the middle of step N it sends itself ``signals[N]`` (50 ms apart) and
    lets the main thread take them in; at each step end it stops if asked to. Returns it, the steps
    it finished and the SIGTERM handlers it saw."""
    finished: list[int] = []
    handlers: list[object] = []

    def train() -> list[int]:
        for step in range(1, steps + 1):
            time.sleep(step_seconds / 2)
            for signum in signals.get(step, []):
                os.kill(os.getpid(), signum)
                time.sleep(0.05)
            deadline = time.monotonic() + (10 if step in signals else 0)
            while not stop.requested and time.monotonic() < deadline:  # however loaded the machine
                time.sleep(0.01)
            time.sleep(step_seconds / 2)
            finished.append(step)
            handlers.append(signal.getsignal(signal.SIGTERM))
            if stop.requested:
                break
        return finished

    return train, finished, handlers


def test_a_termination_lets_the_step_finish_then_is_raised_with_the_handler_left_in_place(sigterm_raises):
    stop, logs = StopRequest(), []
    train, finished, handlers = training(stop, {3: [signal.SIGTERM]})
    with pytest.raises(Terminated):
        run_until_stopped(train, stop, logs.append)
    assert finished[-1] == 3  # the step in flight ended normally, and training stopped there
    assert stop.reason == "SIGTERM"
    assert set(handlers) == {raise_terminated}  # so Prefect's cancellation handshake still works
    assert signal.getsignal(signal.SIGTERM) is raise_terminated
    assert any("SIGTERM: training stops at the end of this step" in line for line in logs)


def test_ctrl_c_also_stops_training_at_a_step_end_before_the_interrupt(sigterm_raises):
    # Ctrl-C as a fresh Python process takes it (an earlier test in this process may have replaced the handler).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = StopRequest()
        train, finished, _ = training(stop, {2: [signal.SIGINT]})
        with pytest.raises(KeyboardInterrupt):
            run_until_stopped(train, stop, lambda line: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished[-1] == 2 and stop.reason == "SIGINT"


def test_a_signal_that_arrives_twice_at_once_is_one_stop_request(sigterm_raises):
    # A signal sent to a process group and forwarded by a parent in it arrives twice.
    stop = StopRequest()
    train, finished, _ = training(stop, {3: [signal.SIGTERM, signal.SIGTERM]}, step_seconds=1.0)
    with pytest.raises(Terminated):
        run_until_stopped(train, stop, lambda line: None)
    assert finished == [1, 2, 3]  # raised only after the step in flight had ended


def test_a_second_termination_later_ends_the_run_without_waiting_for_the_step(sigterm_raises):
    stop, started = StopRequest(), time.monotonic()
    slow_step = threading.Event()

    def train():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        slow_step.wait(30)  # a step far longer than anyone waits

    second = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    second.start()
    try:
        with pytest.raises(Terminated):
            run_until_stopped(train, stop, lambda line: None)
        assert 2.5 <= time.monotonic() - started < 10  # ended by the second, not the first
    finally:
        second.cancel()
        slow_step.set()


def test_without_a_termination_the_result_is_returned_and_sigterm_is_left_as_it_was():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    train, _, _ = training(stop, {}, step_seconds=0, steps=3)
    assert run_until_stopped(train, stop, lambda line: None) == [1, 2, 3]
    assert signal.getsignal(signal.SIGTERM) == before
    assert not stop.requested


def test_a_training_error_is_raised_as_it_was():
    def train():
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_until_stopped(train, StopRequest(), lambda line: None)


def test_off_the_main_thread_training_runs_as_it_is_and_says_a_sigterm_will_not_checkpoint():
    logs, results = [], []
    thread = threading.Thread(target=lambda: results.append(run_until_stopped(lambda: 42, StopRequest(), logs.append)))
    thread.start()
    thread.join(10)
    assert results == [42]
    assert logs == ["training runs off the main thread: a SIGTERM will end it without a final checkpoint"]
