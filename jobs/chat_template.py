"""The ``chat_template`` parameter of jobs that render chat rows (fine-tuning, batch inference).

``"default"`` keeps the template the tokenizer carries (a fine-tuned adapter's, when it has one);
any other value is a Jinja chat template that replaces it, as OpenWeights takes it. A template that
Jinja cannot parse is refused when the job is submitted, with the template's line, before any GPU.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

DEFAULT_CHAT_TEMPLATE = "default"


def check_chat_template(value: str) -> str:
    """``value`` if it is ``"default"`` or a Jinja template that parses; else a ValueError saying where."""
    if value == DEFAULT_CHAT_TEMPLATE:
        return value
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # what transformers renders chat templates with

    try:
        ImmutableSandboxedEnvironment().parse(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"not a Jinja template: {exc.message} (line {exc.lineno} of the template)") from None
    return value


def chosen_chat_template(value: str) -> str | None:
    """The template to set on the tokenizer, or None to keep the tokenizer's own."""
    return None if value == DEFAULT_CHAT_TEMPLATE else value


ChatTemplate = Annotated[
    str,
    AfterValidator(check_chat_template),
    Field(
        description="Jinja chat template that renders chat rows, replacing the tokenizer's "
        "('default' keeps the model's, or its adapter's)."
    ),
]
