"""Generation with transformers and peft: the CPU backend, and the GPU one where vLLM is missing.

One loaded base model serves any number of LoRA adapters (peft multi-adapter): each adapter is
loaded under an internal name and selected per call; the base model is used with adapters
disabled. Calls must not overlap (adapter selection is model state): the batch runner calls
sequentially, the HTTP server holds a lock.

Sampling follows vLLM's semantics so both backends give the same kind of result:

- the request's settings alone decide sampling; the checkpoint's ``generation_config.json``
  contributes only its end-of-sequence tokens (a hub model's default temperature or top-k
  would otherwise change results silently);
- log-probabilities are those of the raw model distribution (before temperature, top-p and the
  ``min_tokens`` mask), recorded one step at a time instead of keeping every step's logits,
  so memory stays at one ``batch × vocab`` tensor however long the completion;
- completions end at an end-of-sequence token, at ``max_tokens``, where the context ends, or
  before the first stop string (the stop string is cut off, and so are tokens after it).

Known difference from vLLM: ``min_tokens`` holds back end-of-sequence tokens but not stop strings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.generation.completions import Completion, FinishReason, find_stop, stop_holdback
from compute.generation.context_length import completion_budget, effective_max_model_len
from compute.generation.generate_hooks import LogprobRecorder, StopWhenSet, TokenQueue, seeded
from compute.generation.sampling import SamplingSettings

logger = logging.getLogger(__name__)


class UnknownAdapterError(KeyError):
    """A generation call for an adapter that was not loaded."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class StreamChunk:
    """A piece of a streamed completion; the last chunk carries the finish reason and token count."""

    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0


class TransformersGenerator:
    """A causal LM (and optional LoRA adapters) loaded with transformers, generating from token IDs."""

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        adapters: Mapping[str, str | Path] | None = None,
        merge_adapter_paths: Sequence[str | Path] = (),
        tokenizer_path: str | Path | None = None,
        device: str | None = None,
        max_model_len: int = 8192,
    ):
        """Load ``model_path``; ``adapters`` maps the name a caller uses to each adapter directory.

        ``merge_adapter_paths`` are baked into the base weights first (a fine-tune of a fine-tune).
        The tokenizer comes from ``tokenizer_path`` when given (an adapter may carry its own chat
        template), else from the model.
        """
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            dtype = torch.float32
        else:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or model_path))
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).to(self.device)
        for path in merge_adapter_paths:
            logger.info("merging adapter %s into the base weights", path)
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()

        self.eos_token_ids = _eos_token_ids(model.generation_config, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        # Sampling comes from each call's settings only; keep nothing of the checkpoint's defaults but its special tokens.
        model.generation_config = GenerationConfig(
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id
        )

        # peft stores adapters in module dicts, whose keys may not contain '.', so references
        # ('org/name', './dir', 'ftjob-…') get internal names.
        self._adapter_names: dict[str, str] = {}
        for index, (name, path) in enumerate((adapters or {}).items()):
            internal = f"adapter_{index}"
            if index == 0:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=internal)
            else:
                model.load_adapter(str(path), adapter_name=internal)
            self._adapter_names[name] = internal
            logger.info("loaded adapter %s from %s", name, path)
        model.eval()
        self.model = model
        self.max_model_len = effective_max_model_len(max_model_len, model_path)

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names)

    # -- batch generation ---------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, adapter: str | None = None
    ) -> list[list[Completion]]:
        """``settings.n`` completions for each prompt (token IDs), in prompt order."""
        import torch

        if not prompts:
            return []
        budgets = [completion_budget(len(prompt), settings.max_tokens, self.max_model_len) for prompt in prompts]
        rows = [list(prompt) for prompt in prompts for _ in range(settings.n)]
        row_budgets = [budget for budget in budgets for _ in range(settings.n)]
        input_ids, attention_mask = self._left_pad(rows)
        prompt_width = input_ids.shape[1]
        recorder = LogprobRecorder(settings.logprobs) if settings.logprobs is not None else None
        with self._using(adapter), torch.inference_mode(), seeded(settings.seed, self.device):
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(settings, max(row_budgets)),
                logits_processor=self._processors(settings, prompt_width, recorder),
                tokenizer=self.tokenizer if settings.stop else None,
            )
        generated = sequences[:, prompt_width:]
        if recorder is not None:
            recorder.finish(sequences[:, -1])
        completions = [
            self._completion(row, generated[row].tolist(), row_budgets[row], settings, recorder)
            for row in range(len(rows))
        ]
        return [completions[index : index + settings.n] for index in range(0, len(completions), settings.n)]

    def _completion(
        self,
        row: int,
        tokens: list[int],
        budget: int,
        settings: SamplingSettings,
        recorder: LogprobRecorder | None,
    ) -> Completion:
        tokens = tokens[:budget]
        finish: FinishReason = "length"
        end = next((index for index, token in enumerate(tokens) if token in self.eos_token_ids), None)
        if end is not None:
            tokens, finish = tokens[: end + 1], "stop"
        elif self.pad_token_id not in self.eos_token_ids:
            # A row stopped by a stop string is padded while the others finish.
            while tokens and tokens[-1] == self.pad_token_id:
                tokens.pop()
        text = self._decode(tokens)
        cut = find_stop(text, settings.stop) if settings.stop else None
        if cut is not None:
            tokens = tokens[: self._tokens_through_stop(tokens, settings.stop)]
            text, finish = text[:cut], "stop"
        logprobs = recorder.entries(row, tokens, self._decode_token) if recorder is not None else None
        return Completion(text, tuple(tokens), finish, logprobs)

    def _tokens_through_stop(self, tokens: list[int], stops: Sequence[str]) -> int:
        """The fewest leading tokens whose text contains a stop string (binary search; decoding grows with tokens)."""
        low, high = 1, len(tokens)
        while low < high:
            middle = (low + high) // 2
            if find_stop(self._decode(tokens[:middle]), stops) is not None:
                high = middle
            else:
                low = middle + 1
        return high

    # -- streaming ----------------------------------------------------------------------------------

    def stream(self, prompt: Sequence[int], settings: SamplingSettings, adapter: str | None = None) -> Iterator[StreamChunk]:
        """One completion of ``prompt``, piece by piece as it is generated.

        Text that might be the start of a stop string is held back until the next token decides
        it. Closing the iterator early (a client that went away) stops the generation.
        """
        import torch

        if settings.n != 1:
            raise ValueError("streaming generates one completion at a time (n must be 1)")
        if settings.logprobs is not None:
            raise ValueError("log-probabilities are not available while streaming on the transformers backend")
        budget = completion_budget(len(prompt), settings.max_tokens, self.max_model_len)
        input_ids, attention_mask = self._left_pad([list(prompt)])
        tokens_out = TokenQueue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                with self._using(adapter), torch.inference_mode(), seeded(settings.seed, self.device):
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        generation_config=self._generation_config(settings, budget),
                        logits_processor=self._processors(settings, input_ids.shape[1], None),
                        stopping_criteria=[StopWhenSet(cancelled)],
                        tokenizer=self.tokenizer if settings.stop else None,
                        streamer=tokens_out,
                    )
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                tokens_out.fail(exc)
            finally:
                tokens_out.end()

        worker = threading.Thread(target=work, name="ow-generate-stream", daemon=True)
        worker.start()
        tokens: list[int] = []
        sent = 0  # characters of the completion already yielded
        finish: FinishReason | None = None
        cut_at_stop = False
        try:
            for token in tokens_out:
                tokens.append(token)
                if token in self.eos_token_ids:
                    finish = "stop"
                    break
                text = self._decode(tokens)
                if text.endswith("\ufffd"):
                    continue  # an incomplete UTF-8 character: the next token completes it
                cut = find_stop(text, settings.stop)
                if cut is not None:
                    if cut > sent:
                        yield StreamChunk(text[sent:cut])
                    finish, cut_at_stop = "stop", True
                    break
                ready = len(text) - stop_holdback(text, settings.stop)
                if ready > sent:
                    yield StreamChunk(text[sent:ready])
                    sent = ready
            if not cut_at_stop:
                # The completion ended (end of sequence, max_tokens, context end): send what was held back.
                text = self._decode(tokens)
                cut = find_stop(text, settings.stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                if len(text) > sent:
                    yield StreamChunk(text[sent:])
                finish = finish or "length"
        finally:
            cancelled.set()
            worker.join()
        yield StreamChunk("", finish_reason=finish, completion_tokens=len(tokens))

    # -- helpers ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        if adapter is None:
            if self._adapter_names:
                with self.model.disable_adapter():
                    yield
            else:
                yield
            return
        if adapter not in self._adapter_names:
            raise UnknownAdapterError(f"adapter {adapter!r} is not loaded; loaded: {', '.join(self._adapter_names) or 'none'}")
        self.model.set_adapter(self._adapter_names[adapter])
        yield

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generation_config(self, settings: SamplingSettings, max_new_tokens: int):
        from transformers import GenerationConfig

        # Temperature and top-p are applied by our own processors (see :meth:`_processors`); top-k
        # must be switched off explicitly, since generate() fills an unset top_k with 50, a cut
        # that vLLM and OpenAI's API do not make.
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not settings.greedy,
            num_beams=1,
            top_k=0,
            stop_strings=list(settings.stop) or None,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )

    def _processors(self, settings: SamplingSettings, prompt_width: int, recorder: LogprobRecorder | None):
        """Our own processor list, recorder first, so log-probabilities are taken from the raw logits."""
        from transformers import (
            LogitsProcessorList,
            MinNewTokensLengthLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList([recorder] if recorder is not None else [])
        if settings.min_tokens > 0:
            processors.append(
                MinNewTokensLengthLogitsProcessor(prompt_width, settings.min_tokens, self.eos_token_ids, device=self.device)
            )
        if not settings.greedy:
            if settings.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_p < 1.0:
                processors.append(TopPLogitsWarper(settings.top_p))
        return processors

    def _decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _decode_token(self, token: int) -> str:
        return self.tokenizer.decode([token])


def _eos_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a sequence: the checkpoint's generation config's, then the tokenizer's."""
    configured = generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [token for token in ids if token is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model defines no end-of-sequence token (neither generation_config.json nor the tokenizer)")
    return ids
