"""How to sample: the settings every generation backend takes, from a job's config or an API request."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.inference import InferenceConfig


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling parameters with vLLM's / OpenAI's meanings.

    ``temperature == 0`` is greedy decoding. ``logprobs`` is the number of top alternatives
    reported per generated token (0 = the sampled token only; ``None`` = no log-probabilities).
    ``min_tokens`` keeps the end-of-sequence token from being generated before that many tokens.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            problems.append(f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            problems.append(f"n must be at least 1, got {self.n}")
        if self.logprobs is not None and self.logprobs < 0:
            problems.append(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not stop for stop in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_inference_config(cls, config: InferenceConfig) -> SamplingSettings:
        return cls(
            max_tokens=config.max_tokens,
            min_tokens=config.min_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            stop=tuple(config.stop),
            n=config.n_completions_per_prompt,
            logprobs=config.logprobs,
            seed=config.seed,
        )
