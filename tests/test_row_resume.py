"""A stage that loses its pod mid-run resumes from the rows it stored, and its outputs equal an uninterrupted run's.

Each test runs a job type's GPU-stage function directly on the tiny model, with a reporter whose
progress call raises after some rows (the pod dying between two batches), then runs it again under
the same job ID, as Prefect's recovery does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import compute.row_journal
from compute.reporting import LoggingReporter
from compute.row_journal import journal_prefix, journal_root
from compute.sample_datasets import conversations_rows, mmlu_pro_rows, text_rows, write_jsonl
from compute.stage import StageContext
from store.artifact_store import ArtifactStore
from store.files import upload_file


class PodLost(Exception):
    """Stands in for the pod disappearing: the stage stops where it is, nothing is cleaned up in the store."""


class DyingReporter(LoggingReporter):
    """Reports like a plain script, until ``done`` reaches ``die_at``."""

    def __init__(self, die_at: int | None = None):
        super().__init__()
        self.die_at = die_at
        self.lines: list[str] = []

    def progress(self, done: int, total: int, description: str = "") -> None:
        if self.die_at is not None and done >= self.die_at:
            raise PodLost(f"the pod was lost after {done} of {total}")

    def log(self, message: str) -> None:
        self.lines.append(message)


class Recording:
    """A loaded generator or scorer that counts what it is asked to compute."""

    def __init__(self, inner):
        self.inner = inner
        self.sequences = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, settings, adapter=None):
        self.sequences += len(prompts)
        return self.inner.generate(prompts, settings, adapter=adapter)

    def token_logprobs(self, sequences, adapter=None):
        self.sequences += len(sequences)
        return self.inner.token_logprobs(sequences, adapter=adapter)


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture(autouse=True)
def a_chunk_per_batch(monkeypatch):
    monkeypatch.setattr(compute.row_journal, "DEFAULT_CHUNK_ROWS", 1)


@pytest.fixture
def recorded(monkeypatch):
    """Wraps every generator or scorer a stage loads; returns the list of wrappers, newest last."""
    loaded: list[Recording] = []

    def recording(load):
        @functools.wraps(load)
        def load_and_record(*args, **kwargs):
            loaded.append(Recording(load(*args, **kwargs)))
            return loaded[-1]

        return load_and_record

    import compute.generation.backends
    import compute.generation.batch
    import compute.logprobs.runner
    import compute.logprobs.scorers

    for module, name in [
        (compute.generation.batch, "load_generator"),
        (compute.generation.backends, "load_generator"),
        (compute.logprobs.runner, "load_scorer"),
        (compute.logprobs.scorers, "load_scorer"),
    ]:
        monkeypatch.setattr(module, name, recording(getattr(module, name)))
    return loaded


def stage_context(
    store: ArtifactStore, tmp_path: Path, job_id: str, reporter: DyingReporter | None = None
) -> StageContext:
    return StageContext(
        job_id=job_id,
        store=store,
        work_dir=tmp_path / "work" / job_id,
        cache_dir=tmp_path / "cache",
        reporter=reporter or DyingReporter(),
    )


def stored_bytes(store: ArtifactStore, job_id: str, name: str) -> bytes:
    return store.read_bytes(f"jobs/{job_id}/{name}")


# -- inference/batch ---------------------------------------------------------------------------------


@pytest.fixture
def prompts(store, tmp_path) -> str:
    """Seven prompts (five chats, two texts), uploaded as a conversations file."""
    chats = [
        {"messages": row["messages"][:-1], "id": index} for index, row in enumerate(conversations_rows(5))
    ]
    texts = [{**row, "id": 5 + index} for index, row in enumerate(text_rows(2))]
    return upload_file(store, write_jsonl(tmp_path / "prompts.jsonl", chats + texts), "conversations").id


def inference_config(tiny_model_dir, input_file: str):
    from jobs.inference import InferenceConfig

    return InferenceConfig(
        model=str(tiny_model_dir), input_file=input_file, max_tokens=5, temperature=0, max_model_len=256
    )


@pytest.fixture
def two_rows_a_batch(monkeypatch):
    import compute.generation.batch

    monkeypatch.setitem(compute.generation.batch.DEFAULT_BATCH_SIZE, "transformers", 2)


def test_lost_batch_inference_resumes_from_the_stored_rows_and_writes_an_uninterrupted_runs_file(
    store, tmp_path, tiny_model_dir, prompts, recorded, two_rows_a_batch
):
    from compute.generation.stage import run_inference_stage

    config = inference_config(tiny_model_dir, prompts)
    uninterrupted = run_inference_stage(config, stage_context(store, tmp_path, "infjob-uninterrupted"))

    with pytest.raises(PodLost):
        run_inference_stage(config, stage_context(store, tmp_path, "infjob-lost", DyingReporter(die_at=4)))
    prefix = journal_prefix("jobs/infjob-lost", "outputs")
    assert [key.rsplit("/", 1)[1] for key in store.list(prefix)] == [
        "chunk-000000000000.jsonl",
        "chunk-000000000002.jsonl",
    ]
    assert not store.exists("jobs/infjob-lost/outputs.jsonl")

    reporter = DyingReporter()
    resumed = run_inference_stage(config, stage_context(store, tmp_path, "infjob-lost", reporter))
    assert resumed.metrics["resumed_rows"] == resumed.details["resumed_rows"] == 4
    assert recorded[-1].sequences == 3  # only the rows the lost attempt had not stored
    assert any("resuming outputs: 4 rows" in line for line in reporter.lines)
    assert stored_bytes(store, "infjob-lost", "outputs.jsonl") == stored_bytes(
        store, "infjob-uninterrupted", "outputs.jsonl"
    )
    for count in ("rows", "completions", "prompt_tokens", "generated_tokens"):
        assert resumed.metrics[count] == uninterrupted.metrics[count]
    assert uninterrupted.metrics["resumed_rows"] == 0
    assert resumed.disposable_prefixes == [
        journal_root("jobs/infjob-lost")
    ]  # deleted once result.json exists


def test_rows_stored_for_another_input_file_are_not_reused(
    store, tmp_path, tiny_model_dir, prompts, recorded, two_rows_a_batch
):
    from compute.generation.stage import run_inference_stage

    with pytest.raises(PodLost):
        run_inference_stage(
            inference_config(tiny_model_dir, prompts),
            stage_context(store, tmp_path, "infjob-x", DyingReporter(die_at=4)),
        )
    assert store.list(journal_prefix("jobs/infjob-x", "outputs"))

    # The same job ID started by hand on other prompts: the stored rows answer other prompts.
    other_rows = [{"text": f"{number} plus 1 is", "id": number} for number in range(5)]
    other = upload_file(store, write_jsonl(tmp_path / "other.jsonl", other_rows), "conversations").id
    config = inference_config(tiny_model_dir, other)
    result = run_inference_stage(config, stage_context(store, tmp_path, "infjob-x"))
    assert result.metrics["resumed_rows"] == 0
    assert recorded[-1].sequences == 5
    run_inference_stage(config, stage_context(store, tmp_path, "infjob-other-uninterrupted"))
    assert stored_bytes(store, "infjob-x", "outputs.jsonl") == stored_bytes(
        store, "infjob-other-uninterrupted", "outputs.jsonl"
    )
    assert [
        json.loads(line)["id"] for line in stored_bytes(store, "infjob-x", "outputs.jsonl").splitlines()
    ] == list(range(5))


# -- inference/logprobs ------------------------------------------------------------------------------


def test_lost_logprobs_job_resumes_and_its_file_and_totals_equal_an_uninterrupted_runs(
    store, tmp_path, tiny_model_dir, recorded
):
    from compute.logprobs.stage import run_logprobs_stage
    from jobs.logprobs import LogprobsConfig

    path = write_jsonl(tmp_path / "conversations.jsonl", conversations_rows(5))
    input_file = upload_file(store, path, "conversations").id
    config = LogprobsConfig(model=str(tiny_model_dir), input_file=input_file, batch_size=2, max_model_len=512)
    uninterrupted = run_logprobs_stage(config, stage_context(store, tmp_path, "lpjob-uninterrupted"))

    with pytest.raises(PodLost):
        run_logprobs_stage(config, stage_context(store, tmp_path, "lpjob-lost", DyingReporter(die_at=2)))
    resumed = run_logprobs_stage(config, stage_context(store, tmp_path, "lpjob-lost"))
    assert resumed.metrics["resumed_rows"] == 2
    assert recorded[-1].sequences == 3
    assert stored_bytes(store, "lpjob-lost", "logprobs.jsonl") == stored_bytes(
        store, "lpjob-uninterrupted", "logprobs.jsonl"
    )
    for metric in ("rows", "assistant_messages", "scored_tokens", "mean_token_logprob"):
        assert resumed.metrics[metric] == uninterrupted.metrics[metric]
    assert resumed.disposable_prefixes == [journal_root("jobs/lpjob-lost")]


# -- eval/mmlu-pro -----------------------------------------------------------------------------------


@pytest.fixture
def two_questions_a_batch(monkeypatch):
    import compute.evals.mmlu_pro

    monkeypatch.setattr(
        compute.evals.mmlu_pro,
        "run_mmlu_pro",
        functools.partial(compute.evals.mmlu_pro.run_mmlu_pro, batch_size=2),
    )


def test_lost_mmlu_pro_eval_asks_only_the_questions_left_and_scores_as_an_uninterrupted_run(
    store, tmp_path, tiny_model_dir, recorded, two_questions_a_batch
):
    from compute.evals.stage import run_mmlu_pro_stage
    from jobs.evals import MmluProConfig

    dataset = upload_file(store, write_jsonl(tmp_path / "mmlu.jsonl", mmlu_pro_rows(2, 0)), "mmlu_pro").id
    config = MmluProConfig(
        model=str(tiny_model_dir),
        dataset_file=dataset,
        prompt_format="text",
        chain_of_thought=False,
        max_tokens=3,
        max_model_len=512,
    )
    uninterrupted = run_mmlu_pro_stage(config, stage_context(store, tmp_path, "mmlujob-uninterrupted"))
    questions = len(
        stored_bytes(store, "mmlujob-uninterrupted", "mmlu-pro/model-0/results.jsonl").splitlines()
    )
    assert questions > 4

    with pytest.raises(PodLost):
        run_mmlu_pro_stage(config, stage_context(store, tmp_path, "mmlujob-lost", DyingReporter(die_at=4)))
    resumed = run_mmlu_pro_stage(config, stage_context(store, tmp_path, "mmlujob-lost"))
    assert resumed.details["resumed_rows"] == {str(tiny_model_dir): 4}
    assert recorded[-1].sequences == questions - 4
    for name in ("mmlu-pro/model-0/results.jsonl", "mmlu-pro/model-0/summary.json"):
        assert stored_bytes(store, "mmlujob-lost", name) == stored_bytes(store, "mmlujob-uninterrupted", name)
    assert resumed.metrics["scores"] == uninterrupted.metrics["scores"]
    assert resumed.disposable_prefixes == [journal_root("jobs/mmlujob-lost")]


def test_mmlu_pro_results_of_other_questions_are_asked_again(tmp_path, store):
    from compute.evals.mmlu_pro import run_mmlu_pro
    from compute.row_journal import RowJournal
    from jobs.evals import MmluProConfig

    dataset = write_jsonl(tmp_path / "mmlu.jsonl", mmlu_pro_rows(2, 0))
    asked: list[int] = []

    def generate(prompts, sampling):
        asked.append(len(prompts))
        return ["The answer is (A)."] * len(prompts)

    def run(categories: list[str]):
        config = MmluProConfig(
            model="m", dataset_file="f", categories=categories, chain_of_thought=False, max_tokens=4
        )
        journal = RowJournal(
            store, "jobs/mmlujob-1/partial/mmlu-pro/model-0", "same fingerprint", chunk_rows=1
        )
        return run_mmlu_pro(
            config,
            dataset_path=dataset,
            generate=generate,
            output_dir=tmp_path / "out",
            batch_size=1,
            journal=journal,
        )

    first = run(["math"])
    assert first.resumed == 0 and sum(asked) == 2
    asked.clear()
    second = run(
        ["physics"]
    )  # a journal whose rows answer other questions (its fingerprint cannot tell here)
    assert second.resumed == 0 and sum(asked) == 2
    assert {result.category for result in second.results} == {"physics"}


# -- eval/multiple-choice ----------------------------------------------------------------------------

QUESTIONS = [
    {"question": "What is 2 plus 2?", "choices": ["4", "5", "22"], "answer": "4", "category": "arithmetic"},
    {"question": "What is 3 plus 4?", "choices": ["7", "8"], "answer": "7", "category": "arithmetic"},
    {
        "question": "What is 6 plus 3?",
        "choices": ["9", "63", "10", "8"],
        "answer": "9",
        "category": "arithmetic",
    },
    {
        "question": "What color is the sky?",
        "choices": ["blue", "green", "red"],
        "answer": "blue",
        "category": "world",
    },
    {
        "id": "woof",
        "question": "Which animal says woof?",
        "choices": ["cat", "dog"],
        "answer": "dog",
        "category": "world",
    },
]


def test_lost_multiple_choice_eval_scores_only_the_sequences_left_with_the_same_numbers(
    store, tmp_path, tiny_model_dir, recorded
):
    from compute.evals.multiple_choice import run_multiple_choice_stage
    from jobs.multiple_choice import MultipleChoiceConfig

    questions = upload_file(store, write_jsonl(tmp_path / "questions.jsonl", QUESTIONS), "multiple_choice").id
    config = MultipleChoiceConfig(
        model=str(tiny_model_dir), questions_file=questions, batch_size=2, randomize=True, max_model_len=512
    )
    uninterrupted = run_multiple_choice_stage(config, stage_context(store, tmp_path, "mcjob-uninterrupted"))

    with pytest.raises(
        PodLost
    ):  # after 3 batches (6 sequences), questions 1-2 are finished and 1 choice of the third
        run_multiple_choice_stage(
            config, stage_context(store, tmp_path, "mcjob-lost", DyingReporter(die_at=2))
        )
    resumed = run_multiple_choice_stage(config, stage_context(store, tmp_path, "mcjob-lost"))
    assert resumed.details["resumed_rows"] == {str(tiny_model_dir): 6}
    assert recorded[-1].sequences == sum(len(question["choices"]) for question in QUESTIONS) - 6
    name = "multiple-choice/model-0/results.jsonl"
    assert stored_bytes(store, "mcjob-lost", name) == stored_bytes(store, "mcjob-uninterrupted", name)
    assert resumed.details["table"] == uninterrupted.details["table"]
    assert resumed.disposable_prefixes == [journal_root("jobs/mcjob-lost")]
