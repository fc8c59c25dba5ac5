"""Tests of the replication's statistics (reasoning_task.py, beside this file): the sign test, the t
quantile, the verdict rule and the length split that REPLICATION.md decides by. The README's test
command (python -m pytest -q, from the repository's root) collects this file too.
"""

import itertools
import math
import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reasoning_task  # noqa: E402


@pytest.mark.parametrize("n", range(1, 11))
def test_the_sign_test_matches_counting_every_sign_pattern(n):
    """Two-sided sign test against the oracle: the share of all 2^n equally likely sign patterns at least
    as far from n/2 as the observed count. Zero differences are left out before counting."""
    rt = reasoning_task
    for k in range(n + 1):
        differences = [0.1] * k + [-0.2] * (n - k) + [0.0, 0.0]
        extreme = sum(abs(sum(p) - n / 2) >= abs(k - n / 2) for p in itertools.product((0, 1), repeat=n))
        assert rt.sign_test(differences) == pytest.approx(extreme / 2**n), (n, k)
    assert rt.sign_test([0.0, 0.0]) == 1.0


def _student_t_cdf(x, df, steps=20000):
    """P(T <= x) for Student's t, by Simpson's rule on its density from 0 to x (plus the lower half)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def f(t):
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    h = x / steps
    area = f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 0.5 + area * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 15, 30, 100])
def test_the_t_quantile_is_the_975_quantile(df):
    """The interval's t (a table, then an expansion) against the t distribution's integrated density;
    df 4 is the replication's 5 pairs: t = 2.776."""
    from entropy_vs_grpo import t_975

    assert _student_t_cdf(t_975(df), df) == pytest.approx(0.975, abs=1e-4)


def test_the_replication_verdict_follows_the_rule():
    """Replicated only when the 95% interval over all 5 pairs lies above 0; contradicted when below; no
    verdict before the 5th pair."""
    rt = reasoning_task
    assert rt.replication_verdict([0.1, 0.2, 0.1, 0.15]).startswith("pending: 4 of 5")
    assert rt.replication_verdict([0.05, 0.06, 0.04, 0.05, 0.07]).startswith("replicated")
    assert rt.replication_verdict([-0.05, -0.06, -0.04, -0.05, -0.07]).startswith("contradicted")
    assert rt.replication_verdict([0.083, 0.104, -0.062, 0.042, -0.021]).startswith("not replicated")
    differences = [0.083, 0.104, -0.062, 0.042, -0.021]
    m, h = rt.interval(differences)  # by hand: mean, t(4) * stdev / sqrt(5)
    assert (m, h) == pytest.approx((0.0292, 2.776 * statistics.stdev(differences) / 5**0.5))


def test_the_length_split_finds_the_first_statement_of_the_answer():
    """REPLICATION.md's rule: the answer's text not inside a longer number (no digit or point before it,
    no digit after); not found or no answer: the whole completion counts as before."""
    rt = reasoning_task
    text = "58 + 34 = 92 / So 92 it is."
    assert rt.length_split(text, "92") == (len("58 + 34 = 92"), len(text) - len("58 + 34 = 92"), True)
    assert rt.length_split("192 or 1.92 or 920, then 92", "92") == (27, 0, True)
    assert rt.length_split("about 92.5", "92") == (8, 2, True)  # a point after the answer is allowed
    assert rt.length_split("no number here", "92") == (14, 0, False)
    assert rt.length_split("no answer", None) == (9, 0, False)
