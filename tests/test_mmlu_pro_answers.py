"""Answer extraction: the usual ways models state a letter are read; anything else is unparsable (None)."""

from __future__ import annotations

import pytest

from compute.evals.mmlu_pro import extract_answer


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # the requested format, and its variants
        ("Let's think step by step. 2 + 2 = 4. The answer is (C).", "C"),
        ("The answer is (C)", "C"),
        ("the answer is C", "C"),
        ("answer is C", "C"),
        ("Answer: C", "C"),
        ("Answer: (C)", "C"),
        ("Final answer: [C]", "C"),
        ("The answer is: C.", "C"),
        ("The answer is option C", "C"),
        ("The correct choice is (C)", "C"),
        ("The answer is **(C)**.", "C"),
        ("**Answer:** C", "C"),
        ("Answer: $C$", "C"),
        ("The answer is *(B)*", "B"),
        ("*C*", "C"),
        ("So $\\boxed{C}$", "C"),
        ("\\boxed{\\text{C}}", "C"),
        # bare letters
        ("C", "C"),
        ("(C)", "C"),
        ("C.", "C"),
        ("**C**", "C"),
        ("[C]", "C"),
        (" C) \n", "C"),
        ("C. 4", "C"),
        ("(C) because 2 + 2 = 4", "C"),
        ("J", "J"),
        # lower case where it cannot be a word
        ("the answer is (c)", "C"),
        ("the answer is c.", "C"),
        ("answer: c", "C"),
        ("c", "C"),
        ("(c)", "C"),
        # revisions and noise
        ("The answer is not (A). Checking again, the answer is (D).", "D"),
        ("<think>maybe the answer is (A)</think>The answer is (B).", "B"),
        ("The answer is (B).\n\nQuestion:\nWhat is 3 plus 3?\n...The answer is (E).", "B"),
        # unparsable: no letter stated, or only letters that are words
        ("", None),
        ("   ", None),
        ("I think it is four.", None),
        ("A cat sat on the mat.", None),
        ("the answer is a number between three and five", None),
        ("Answer: Let's think step by step.", None),
        ("4", None),
        ("The answer is (K)", None),
        ("CD", None),
        ("answer is Cat", None),
    ],
)
def test_extracts_the_stated_letter_or_none(reply, expected):
    assert extract_answer(reply) == expected


@pytest.mark.parametrize(
    ("reply", "num_options", "expected"),
    [
        ("The answer is (D)", 4, "D"),
        ("The answer is (E)", 4, None),  # no option E in a 4-option question
        ("E", 4, None),
        ("The answer is (E)", 5, "E"),
        ("A", 1, "A"),
    ],
)
def test_letters_beyond_the_questions_options_are_not_answers(reply, num_options, expected):
    assert extract_answer(reply, num_options) == expected


def test_num_options_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="num_options must be between 1 and 10"):
        extract_answer("A", 11)
