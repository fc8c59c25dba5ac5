"""Tests of bench/'s own code: the static sampler (bench/static_sampler.py) against minigrpo's eager decode
loop, and the profiler's ranges (bench/profile_step.py). The README's test command collects this file too.
"""

import importlib
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import minigrpo as mg  # noqa: E402
import static_sampler as ss  # noqa: E402
from test_minigrpo import tiny, tiny_dir  # noqa: E402,F401 (the suite's tiny model, as fixtures)


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.6, 0.95)])
def test_the_static_sampler_draws_the_eager_loops_tokens(tiny, temperature, top_p):
    """bench/static_sampler.py (a fixed-shape cache, finished rows kept in the batch, each prompt prefilled
    once): the same seed gives the same completions as the eager loop, with and without its shared
    prefix, while rows finish at different steps."""
    model, tokenizer = tiny
    with torch.no_grad():  # make EOS likely, so that rows finish at different steps
        model.get_output_embeddings().weight[tokenizer.eos_token_id] += model.model.norm.weight.sign()
    questions = ["What is 1 + 2?", "Hi", "What is 12345 * 678 - 9?"]
    prompts = [mg.format_prompt(tokenizer, q, "") for q in questions]
    torch.manual_seed(3)
    static = ss.sample_completions(model.eval(), tokenizer, prompts, 4, 16, temperature, top_p)
    finished = mg.is_eos_token(static[2], tokenizer.eos_token_id).any(dim=1)
    assert temperature == 0 or 0 < finished.sum() < len(finished)  # (greedy: a group's rows are one row)
    for shared in (True, False):
        torch.manual_seed(3)
        eager = mg.sample_completions(model, tokenizer, prompts, 4, 16, temperature, top_p,
                                      shared_prefix=shared)
        assert all(torch.equal(a, b) for a, b in zip(eager, static)), shared
    # a second call of the same sizes rewrites the first one's cache buffers in place: still the same draws
    for seed in (4, 5):
        torch.manual_seed(seed)
        eager = mg.sample_completions(model, tokenizer, prompts[::-1], 4, 16, temperature, top_p)
        torch.manual_seed(seed)
        again = ss.sample_completions(model, tokenizer, prompts[::-1], 4, 16, temperature, top_p)
        assert all(torch.equal(a, b) for a, b in zip(eager, again)), seed


def test_the_static_sampler_under_bfloat16_autocast(tiny):
    """Autocast over float32 weights writes float32 keys (RoPE promotes them) beside bfloat16 values: the
    static path keeps both, and a float32 call's cache buffers of the same sizes are not reused for it."""
    model, tokenizer = tiny
    prompts = [mg.format_prompt(tokenizer, q, "") for q in ["What is 1 + 2?", "Hi"]]
    float32 = ss.sample_completions(model.eval(), tokenizer, prompts, 2, 6, 0.0, 1.0)
    seen, forced, real = {"eager": [], "static": []}, [], mg.sample_token

    def recording(name):  # the logits of every decode step; the static loop is fed the eager loop's tokens
        def sample_token(logits, temperature, top_p=1.0):
            seen[name].append(logits.float())
            if name == "static":
                return forced[len(seen[name]) - 1]
            forced.append(real(logits, temperature, top_p))
            return forced[-1]
        return sample_token

    with mg.autocast("cpu", "bfloat16"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(mg, "sample_token", recording("eager"))
        eager = mg.sample_completions(model, tokenizer, prompts, 2, 6, 1.0, 1.0)
        patch.setattr(mg, "sample_token", recording("static"))
        bf16 = ss.sample_completions(model, tokenizer, prompts, 2, 6, 1.0, 1.0)
    assert torch.equal(bf16[2], eager[2]) and float32[2].shape[0] == 4  # teacher-forced: the same tokens
    assert len(seen["static"]) == len(seen["eager"]) == eager[2].shape[1]
    for a, b in zip(seen["eager"], seen["static"]):  # each step's logits, within bfloat16's rounding
        torch.testing.assert_close(b, a, atol=0.05, rtol=0.02)


def test_the_static_sampler_knows_which_transformers_cannot_hold_its_cache(monkeypatch):
    """Before 5.24 transformers' static cache allocates the values in the keys' dtype: bench/gpu_session.sh
    asks static_cache_too_old() and leaves the static trainers out there instead of a dtype error."""
    transformers = importlib.import_module("transformers")  # sys.modules' (its lazy loader may replace it)
    for version, too_old in (("5.17.0", "5.17.0"), ("5.23.0", "5.23.0"), ("5.24.0", None),
                             ("5.25.0.dev0", None), ("6.0rc1", None)):  # pre-releases parse too
        monkeypatch.setattr(transformers, "__version__", version)
        assert ss.static_cache_too_old() == too_old, version


def test_the_profiled_ranges_are_opened(tiny, monkeypatch):
    """bench/profile_step.py wraps these functions in named ranges: a function renamed or no longer
    called on the step's path fails here first."""
    from torch.profiler import profile

    from profile_step import RANGES, WRAPPED, open_ranges

    for owner, function, _ in WRAPPED.values():
        monkeypatch.setattr(owner, function, getattr(owner, function))  # undone after the test
    open_ranges()
    model, tokenizer = tiny
    cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4, max_new_tokens=4)
    with profile() as prof:
        problems = [{"question": "What is 1 + 1?", "answer": "2"}] * 2
        batch = mg.rollout(model.eval(), tokenizer, problems, 4, 4, 1.0, "")
        mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=0.0), batch,
                         torch.linspace(-1, 1, 8), cfg)
    assert set(RANGES) <= {event.key for event in prof.key_averages()}
