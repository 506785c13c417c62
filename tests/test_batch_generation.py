"""Batch generation on the transformers backend with the real tiny model (and a real LoRA adapter)."""

import json
from pathlib import Path

import pytest

from compute.backend import BackendChoice
from compute.generation.backends import load_generator
from compute.generation.batch import generate_file, run_inference
from compute.generation.sampling import SamplingSettings
from compute.sample_datasets import conversations_rows, text_rows, write_jsonl
from jobs.datasets import DatasetError
from jobs.inference import InferenceConfig
from jobs.model_refs import ResolvedModel

CPU = BackendChoice("transformers", "cpu", "tests run on the CPU")
INPUT_FILE = "conversations:file-" + "a" * 64
GREEDY = SamplingSettings(max_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return load_generator(CPU, tiny_model_dir, max_model_len=256)


@pytest.fixture(scope="module")
def prompts_path(tmp_path_factory) -> Path:
    """Seven rows: five chats (the assistant answers removed) and two text prompts, each with an id."""
    chats = [{"messages": row["messages"][:-1], "id": index} for index, row in enumerate(conversations_rows(5))]
    texts = [{**row, "id": 5 + index} for index, row in enumerate(text_rows(2))]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", chats + texts)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def config(**changes) -> InferenceConfig:
    return InferenceConfig(**{"model": "./tiny", "input_file": INPUT_FILE, "max_tokens": 5, "temperature": 0, **changes})


def test_one_output_row_per_input_row_in_input_order(generator, prompts_path, tmp_path):
    output = tmp_path / "out.jsonl"
    result = generate_file(generator, prompts_path, output, GREEDY, batch_size=3)
    rows = read_rows(output)
    inputs = read_rows(prompts_path)
    assert [row["id"] for row in rows] == list(range(7))
    for row, source in zip(rows, inputs, strict=True):
        assert {key: row[key] for key in source} == source  # the input row is kept as it was
        assert isinstance(row["completion"], str)
        assert row["logprobs"] is None
    assert (result.rows, result.completions, result.backend) == (7, 7, "transformers")


def test_batching_does_not_change_greedy_completions(generator, prompts_path, tmp_path):
    one_by_one = generate_file(generator, prompts_path, tmp_path / "a.jsonl", GREEDY, batch_size=1).output_path
    all_at_once = generate_file(generator, prompts_path, tmp_path / "b.jsonl", GREEDY, batch_size=7).output_path
    assert [row["completion"] for row in read_rows(one_by_one)] == [row["completion"] for row in read_rows(all_at_once)]


def test_progress_is_reported_after_every_batch(generator, prompts_path, tmp_path):
    calls = []
    generate_file(generator, prompts_path, tmp_path / "out.jsonl", GREEDY, batch_size=3, progress=lambda *args: calls.append(args))
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_n_completions_per_prompt_gives_a_list_of_n(generator, prompts_path, tmp_path):
    settings = SamplingSettings(max_tokens=4, temperature=1.0, n=3, seed=7)
    result = generate_file(generator, prompts_path, tmp_path / "out.jsonl", settings, batch_size=4)
    rows = read_rows(result.output_path)
    assert all(isinstance(row["completion"], list) and len(row["completion"]) == 3 for row in rows)
    assert any(len(set(row["completion"])) > 1 for row in rows)  # sampled, not three copies of one
    assert result.completions == 21


def test_max_tokens_bounds_every_completion_and_tokens_are_counted(generator, prompts_path, tmp_path):
    settings = SamplingSettings(max_tokens=4, min_tokens=4, temperature=0, logprobs=0)
    result = generate_file(generator, prompts_path, tmp_path / "out.jsonl", settings)
    assert all(len(row["logprobs"]) == 4 for row in read_rows(result.output_path))
    assert result.generated_tokens == 7 * 4
    assert result.prompt_tokens > 0 and result.tokens_per_second > 0


def test_stop_string_ends_the_completion_and_is_cut_off(generator, tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "3 plus 4 is"}])
    free = read_rows(generate_file(generator, path, tmp_path / "free.jsonl", SamplingSettings(max_tokens=12, temperature=0)).output_path)
    text = free[0]["completion"]
    # A stop string that first occurs inside the free completion, not at its start.
    start = next(index for index in range(1, len(text) - 1) if text.find(text[index : index + 2]) == index)
    stop = text[start : start + 2]
    settings = SamplingSettings(max_tokens=12, temperature=0, stop=(stop,), logprobs=0)
    result = generate_file(generator, path, tmp_path / "stopped.jsonl", settings)
    stopped = read_rows(result.output_path)[0]
    assert stopped["completion"] == text[:start]
    assert stop not in stopped["completion"]
    assert result.generated_tokens < 12  # generation ended at the stop, not at max_tokens
    assert len(stopped["logprobs"]) == result.generated_tokens


def test_logprobs_are_the_model_log_probabilities_of_the_generated_tokens(generator, tmp_path):
    import torch

    path = write_jsonl(tmp_path / "two.jsonl", [{"text": "1 plus 2 is"}, {"messages": [{"role": "user", "content": "Hi"}]}])
    settings = SamplingSettings(max_tokens=4, temperature=0.7, top_p=0.9, logprobs=3, seed=1)
    rows = read_rows(generate_file(generator, path, tmp_path / "out.jsonl", settings).output_path)
    from compute.generation.prompts import encode_row
    from compute.generation.rows import read_prompt_rows

    for prompt_row, row in zip(read_prompt_rows(path), rows, strict=True):
        prompt = encode_row(generator.tokenizer, prompt_row)
        tokens = [entry["token_id"] for entry in row["logprobs"]]
        with torch.no_grad():
            logits = generator.model(torch.tensor([prompt + tokens])).logits[0]
        expected = torch.log_softmax(logits.float(), dim=-1)
        for step, entry in enumerate(row["logprobs"]):
            position = len(prompt) - 1 + step
            assert entry["logprob"] == pytest.approx(expected[position, entry["token_id"]].item(), abs=1e-4)
            assert entry["token"] == generator.tokenizer.decode([entry["token_id"]])
            top = entry["top_logprobs"]
            assert len(top) == 3
            assert [alt["logprob"] for alt in top] == sorted((alt["logprob"] for alt in top), reverse=True)
            assert top[0]["token_id"] == int(expected[position].argmax())


def test_temperature_zero_is_greedy(generator, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "5 plus 5 is"}])
    settings = SamplingSettings(max_tokens=5, temperature=0, logprobs=1)
    first = read_rows(generate_file(generator, path, tmp_path / "a.jsonl", settings).output_path)[0]
    second = read_rows(generate_file(generator, path, tmp_path / "b.jsonl", settings).output_path)[0]
    assert first == second
    assert all(entry["token_id"] == entry["top_logprobs"][0]["token_id"] for entry in first["logprobs"])


def test_run_inference_writes_completions_from_the_config(tiny_model_dir, prompts_path, tmp_path):
    calls = []
    result = run_inference(
        config(n_completions_per_prompt=2, logprobs=2, max_model_len=256),
        ResolvedModel(str(tiny_model_dir)),
        prompts_path,
        tmp_path / "out" / "completions.jsonl",
        backend=CPU,
        batch_size=4,
        progress=lambda *args: calls.append(args),
    )
    rows = read_rows(result.output_path)
    assert [row["id"] for row in rows] == list(range(7))
    assert all(len(row["completion"]) == 2 and len(row["logprobs"]) == 2 for row in rows)
    assert calls[-1] == (7, 7)
    assert result.generated_tokens == sum(len(logprobs) for row in rows for logprobs in row["logprobs"])
    assert [path.name for path in result.output_path.parent.iterdir()] == ["completions.jsonl"]  # no partial files left


def test_a_lora_adapter_changes_the_greedy_completions(tiny_model_dir, tiny_lora_adapters, prompts_path, tmp_path):
    adapter = tiny_lora_adapters["tests/tiny-lora-a"]
    base = run_inference(config(), ResolvedModel(str(tiny_model_dir)), prompts_path, tmp_path / "base.jsonl", backend=CPU)
    tuned = run_inference(
        config(), ResolvedModel(str(tiny_model_dir), adapter_path=str(adapter)), prompts_path, tmp_path / "lora.jsonl", backend=CPU
    )
    base_completions = [row["completion"] for row in read_rows(base.output_path)]
    tuned_completions = [row["completion"] for row in read_rows(tuned.output_path)]
    assert len(tuned_completions) == len(base_completions) == 7
    assert tuned_completions != base_completions


ECHO_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {{ m['content'] }}\n{% endfor %}[assistant]"


def test_a_chat_template_given_with_the_job_renders_its_chat_rows(tiny_model_dir, generator, prompts_path, tmp_path):
    """``chat_template`` replaces the model's for chat rows (text rows have none): the prompts the model
    sees are the job's template's, token for token."""
    from compute.generation.prompts import encode_row
    from compute.generation.rows import read_prompt_rows

    model = ResolvedModel(str(tiny_model_dir))
    default = run_inference(config(), model, prompts_path, tmp_path / "default.jsonl", backend=CPU)
    echoed = run_inference(config(chat_template=ECHO_TEMPLATE), model, prompts_path, tmp_path / "echo.jsonl", backend=CPU)

    rows = list(read_prompt_rows(prompts_path))
    tokenizer = generator.tokenizer
    assert default.prompt_tokens == sum(len(encode_row(tokenizer, row)) for row in rows)
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = ECHO_TEMPLATE
        assert echoed.prompt_tokens == sum(len(encode_row(tokenizer, row)) for row in rows)
    finally:
        tokenizer.chat_template = original
    assert echoed.prompt_tokens > default.prompt_tokens  # every chat message is there twice


@pytest.mark.parametrize("job", ["inference", "finetune"])
def test_a_chat_template_jinja_cannot_parse_is_refused_naming_the_field_and_line(job):
    from pydantic import ValidationError

    from jobs.finetune import TrainingConfig

    broken = "{% for m in messages %}\n{{ m['content'] }\n{% endfor %}"
    with pytest.raises(ValidationError) as refused:
        if job == "inference":
            config(chat_template=broken)
        else:
            TrainingConfig(model="./tiny", training_file=INPUT_FILE, chat_template=broken)
    [error] = refused.value.errors()
    assert error["loc"] == ("chat_template",) and "not a Jinja template" in error["msg"] and "line 2" in error["msg"]


def test_a_malformed_row_fails_before_any_model_is_loaded(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": "ok"}), json.dumps({"text": "ok"}), '{"messages": 5}'])
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 3: 'messages' must be a non-empty list"):
        # The model path does not exist: reaching the loader would raise something else.
        run_inference(config(), ResolvedModel(str(tmp_path / "no-model")), path, tmp_path / "out.jsonl", backend=CPU)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_prompt_longer_than_the_context_is_reported_with_its_line(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"text": "1 plus 1 is"}, {"text": " ".join(["plus"] * 40)}])
    with pytest.raises(DatasetError, match=r"long.jsonl, line 2: the prompt has \d+ tokens, which leaves no room"):
        run_inference(config(max_tokens=4, max_model_len=16), ResolvedModel(str(tiny_model_dir)), path, tmp_path / "o.jsonl", backend=CPU)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_row_the_chat_template_refuses_is_reported_with_its_line(strict_template_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}]}, {"messages": [{"role": "system", "content": "Be brief"}]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DatasetError, match=r"rows.jsonl, line 2: the chat template cannot render this row: System role not supported"):
        run_inference(config(), ResolvedModel(str(strict_template_model_dir)), path, tmp_path / "o.jsonl", backend=CPU)


def test_vllm_only_options_are_refused_on_the_transformers_backend(tiny_model_dir):
    with pytest.raises(ValueError, match=r"quantization='bitsandbytes' is a vLLM option.*transformers backend on cpu"):
        load_generator(CPU, tiny_model_dir, quantization="bitsandbytes")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_temperature_one_samples_from_the_whole_vocabulary(generator, tmp_path):
    """As in vLLM and OpenAI's API, no top-k cut is applied (transformers' generate() keeps only the
    50 likeliest tokens when top_k is unset). The untrained model's distribution is nearly flat
    over ~500 tokens, so without a cut most draws rank below the 50th; with one, none would
    (beyond a tie from the batched forward pass)."""
    import torch

    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "1 plus 2 is"}])
    settings = SamplingSettings(max_tokens=40, min_tokens=40, temperature=1.0, logprobs=0, seed=3)
    row = read_rows(generate_file(generator, path, tmp_path / "out.jsonl", settings).output_path)[0]
    from compute.generation.prompts import encode_row
    from compute.generation.rows import read_prompt_rows

    prompt = encode_row(generator.tokenizer, next(iter(read_prompt_rows(path))))
    tokens = [entry["token_id"] for entry in row["logprobs"]]
    with torch.no_grad():
        logits = generator.model(torch.tensor([prompt + tokens])).logits[0]
    step_logits = logits[len(prompt) - 1 :]  # the distribution each generated token was drawn from
    ranks = [int((step_logits[step] > step_logits[step, token]).sum()) for step, token in enumerate(tokens)]
    assert sum(rank >= 50 for rank in ranks) >= len(ranks) // 2, ranks
