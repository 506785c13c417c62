"""inspect-ai tasks for the test suite: short arithmetic questions scored by inspect's own scorers.

A tiny random model scores about 0 on them; the tests' fixed-reply endpoint answers "4", which
`includes()` finds in exactly the samples whose target is 4.
"""

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import includes, match
from inspect_ai.solver import generate, system_message

SUMS = [(2, 2), (3, 2), (1, 3), (4, 3), (0, 4), (5, 4)]  # targets 4, 5, 4, 7, 4, 9


def _samples(count: int) -> list[Sample]:
    return [
        Sample(id=f"sum-{a}-{b}", input=f"What is {a} plus {b}? Reply with the number only.", target=str(a + b))
        for a, b in SUMS[:count]
    ]


@task
def arithmetic(count: int = len(SUMS)) -> Task:
    """Sums scored by whether the reply includes the right number."""
    return Task(
        dataset=MemoryDataset(_samples(count), name="ow-arithmetic"),
        solver=[system_message("You are a careful calculator."), generate()],
        scorer=includes(),
    )


@task(name="arithmetic_exact")
def arithmetic_exact_match(count: int, *, numeric: bool = True) -> Task:
    """Sums scored by an exact final-number match (``count`` is required)."""
    return Task(
        dataset=MemoryDataset(_samples(count), name="ow-arithmetic-exact"),
        solver=generate(),
        scorer=match(location="end", numeric=numeric),
    )
