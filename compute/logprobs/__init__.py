"""Log-probabilities of given text under a model: the assistant turns of conversations, or answers.

- :mod:`~compute.logprobs.spans` tokenises a conversation and finds the tokens of each assistant
  turn, by the same rule response-only training masks them (pure, with the model's tokenizer);
- :mod:`~compute.logprobs.scorers` computes per-token log-probabilities in one forward pass
  (transformers, on the device :func:`compute.backend.select_backend` picks; why not vLLM is said there);
- :mod:`~compute.logprobs.runner` streams a conversations file through a scorer (the
  ``inference/logprobs`` job's entry point); :mod:`~compute.logprobs.stage` is its GPU-stage function.

``eval/multiple-choice`` (:mod:`compute.evals.multiple_choice`) scores answers with the same parts.
Nothing here imports torch, transformers or vLLM at module level.
"""
