"""Reading the chosen option letter out of a model's free-text answer.

The prompts ask for "The answer is (X)"; models also write "answer: C", "**C**", "$C$", "(c)", "C. 42",
"\\boxed{C}" or only "C". ``extract_answer`` accepts those and returns None for anything else, so
an unreadable answer is counted as unparsable rather than guessed. Unlike MMLU-Pro's reference
scripts it does not fall back to "the last capital letter in the text" (the words "A" and "I" make
that a guess) nor to a random letter.

Lower-case letters are accepted only where they cannot be an English word: in brackets, or alone
at the end of an answer statement or of the whole reply ("the answer is c." but not "the answer is
a number").
"""

from __future__ import annotations

import re
from functools import lru_cache

from compute.evals.mmlu_pro.dataset import LETTERS, MAX_OPTIONS

# A base model given a few-shot text prompt tends to go on with the next "Question:" block, whose
# own (invented) answer must not be read as the answer to this one.
_NEXT_QUESTION = re.compile(r"\n\s*Question\s*:")
# Markdown emphasis and TeX math delimiters around a letter ("**C**", "*C*", "$C$") carry no meaning here.
_DECORATION = re.compile(r"\*+|__|\$")


@lru_cache(maxsize=MAX_OPTIONS)
def _patterns(num_options: int) -> tuple[re.Pattern[str], ...]:
    upper = f"A-{LETTERS[num_options - 1]}"
    lower = upper.lower()
    statement = r"(?i:\b(?:answer|choice|option)\s*(?:is|:)\s*[:\-]?\s*(?:option\s+|choice\s+)?)"
    return (
        # \boxed{C}, \boxed{(C)}, \boxed{\text{C}}
        re.compile(rf"\\boxed\{{\s*(?:\\text\{{\s*)?\(?([{upper}])\)?\s*\}}"),
        # "The answer is (C)", "answer: C", "Answer is option C", "the correct choice is [C]"
        re.compile(rf"{statement}(?:\(\s*([{upper}])\s*\)|\[\s*([{upper}])\s*\]|([{upper}]))(?![A-Za-z0-9])"),
        # "the answer is (c)", "answer: c" (only bracketed, or alone at the end of a line)
        re.compile(rf"{statement}(?:\(\s*([{lower}])\s*\)|([{lower}])\s*[.)]?\s*$)", re.MULTILINE),
    )


@lru_cache(maxsize=MAX_OPTIONS)
def _whole_reply_patterns(num_options: int) -> tuple[re.Pattern[str], ...]:
    upper = f"A-{LETTERS[num_options - 1]}"
    either = f"{upper}{upper.lower()}"
    return (
        # the whole reply is one letter: "C", "(C)", "c.", "[C]", "C)"
        re.compile(rf"^[\(\[]?\s*([{either}])\s*[\)\]]?\s*[.:]?$"),
        # the reply opens with a labelled option: "C. 42", "(C) 42", "C) 42", "C: 42"
        re.compile(rf"^(?:\(\s*([{upper}])\s*\)|\[\s*([{upper}])\s*\]|([{upper}])\s*[.):])(?:\s|$)"),
    )


def _first_group(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group)


def normalize_reply(reply: str) -> str:
    """The part of a reply that states the answer: after any reasoning block, before a next question, undecorated."""
    if "</think>" in reply:
        reply = reply.rsplit("</think>", 1)[1]
    next_question = _NEXT_QUESTION.search(reply)
    if next_question:
        reply = reply[: next_question.start()]
    return _DECORATION.sub("", reply).strip()


def extract_answer(reply: str, num_options: int = MAX_OPTIONS) -> str | None:
    """The option letter a reply chooses (upper case), or None when it states none of A..(num_options).

    An explicit answer statement wins over anything else; with several, the last one counts (models
    revise: "the answer is not (A)... the answer is (C)").
    """
    if not 1 <= num_options <= MAX_OPTIONS:
        raise ValueError(f"num_options must be between 1 and {MAX_OPTIONS}, got {num_options}")
    text = normalize_reply(reply)
    if not text:
        return None
    for pattern in _patterns(num_options):
        matches = list(pattern.finditer(text))
        if matches:
            return _first_group(matches[-1]).upper()
    for pattern in _whole_reply_patterns(num_options):
        match = pattern.match(text)
        if match:
            return _first_group(match).upper()
    return None
