"""Each plausible wrong answer in wrong_answers.py fails its function's graded class (test_minigrpo.py).
Instructor-only, with wrong_answers.py: a student copy holds neither."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import minigrpo as mg  # noqa: E402
import test_minigrpo  # noqa: E402
from make_assignment import GRADEABLE  # noqa: E402
from wrong_answers import WRONG  # noqa: E402


def test_every_blankable_function_has_wrong_answers():
    assert {function for function, _ in WRONG} == set(GRADEABLE)


@pytest.mark.parametrize("function, why", list(WRONG))
def test_the_graded_class_fails_the_wrong_answer(monkeypatch, function, why):
    cls = getattr(test_minigrpo, GRADEABLE[function])
    monkeypatch.setattr(mg, function, WRONG[function, why])
    outcome = test_minigrpo._run_graded_class(cls)
    assert outcome["failed"] > 0, (function, why, outcome)


def test_the_exercises_readme_lists_every_wrong_answer():
    text = " ".join(open(os.path.join(HERE, "README.md")).read().split())
    for function in GRADEABLE:
        listed = f"`{function}`: " + "; ".join(why for f, why in WRONG if f == function) + "."
        assert listed in text, listed
