"""Plausible wrong answers to the exercises, one or more per blankable function: what a student might
write, and what each graded class must fail. Instructor-only: make_assignment.py leaves this file (and
its test) out of a student copy, since a wrong answer one line from right is a solution.

exercises/test_wrong_answers.py runs each one in place of its function through the function's graded
class in test_minigrpo.py and checks that the class fails it; exercises/README.md lists them.
"""

import math

import torch

import minigrpo as mg

WRONG = {}  # (function, what is wrong): the wrong function
REFERENCE_POLICY_LOSS, REFERENCE_GAE = mg.policy_loss, mg.gae_advantages  # the wrong ones wrap them (the
# test puts a wrong one in mg's place, so calling mg.policy_loss from it would call itself)


def wrong(function, why):
    def register(f):
        WRONG[function, why] = f
        return f
    return register


@wrong("completion_mask", "at most one EOS seen so far (cumsum <= 1): trains on what follows the EOS")
def mask_cumsum(completion_ids, eos_token_id):
    is_eos = mg.is_eos_token(completion_ids, eos_token_id).long()
    return (is_eos.cumsum(dim=1) <= 1).long()


@wrong("completion_mask", "token != pad: the EOS itself left out when pad == eos")
def mask_not_pad(completion_ids, eos_token_id):
    return (~mg.is_eos_token(completion_ids, eos_token_id)).long()


@wrong("completion_mask", "off by one: the EOS left out")
def mask_without_eos(completion_ids, eos_token_id):
    return (mg.is_eos_token(completion_ids, eos_token_id).long().cumsum(dim=1) == 0).long()


@wrong("group_advantages", "the population std (divides by G)")
def advantages_population_std(rewards, group_size, scale=True, eps=1e-4):
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.flatten()


@wrong("group_advantages", "eps inside the square root")
def advantages_eps_inside(rewards, group_size, scale=True, eps=1e-4):
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / torch.sqrt(grouped.var(dim=1, keepdim=True) + eps)
    return centered.flatten()


@wrong("group_advantages", "normalized over the whole batch, not each group")
def advantages_batch_normalized(rewards, group_size, scale=True, eps=1e-4):
    centered = rewards - rewards.mean()
    return centered / (rewards.std() + eps) if scale else centered


@wrong("entropy_advantage", "psi without |A|: negative advantages get a negative psi")
def shaping_without_abs(advantages, entropy, alpha, kappa):
    per_token = (advantages if advantages.dim() == 2 else advantages[:, None]).expand_as(entropy)
    return per_token + torch.minimum(alpha * entropy.detach(), per_token / kappa)


@wrong("entropy_advantage", "the entropy not detached: entropy regularization by the back door")
def shaping_not_detached(advantages, entropy, alpha, kappa):
    per_token = (advantages if advantages.dim() == 2 else advantages[:, None]).expand_as(entropy)
    return per_token + torch.minimum(alpha * entropy, per_token.abs() / kappa)


@wrong("entropy_advantage", "no clip: psi = alpha * H")
def shaping_unclipped(advantages, entropy, alpha, kappa):
    per_token = (advantages if advantages.dim() == 2 else advantages[:, None]).expand_as(entropy)
    return per_token + alpha * entropy.detach() * (per_token != 0)


@wrong("top_entropy_mask", "k = ceil(fraction * n) in floats (0.07 x 100 gives 8)")
def top_float_ceil(entropy, mask, fraction):
    mask = mask.float()
    if fraction in (0, 1):
        return mask
    real = mask.flatten().nonzero().squeeze(1)
    k = math.ceil(fraction * len(real))
    highest = torch.sort(entropy.detach().flatten()[real], descending=True, stable=True).indices[:k]
    return torch.zeros_like(mask).flatten().index_fill(0, real[highest], 1.0).view_as(mask)


@wrong("top_entropy_mask", "a quantile: every token at or above it, more than k when tied")
def top_quantile(entropy, mask, fraction):
    mask = mask.float()
    if fraction in (0, 1) or mask.sum() == 0:
        return mask
    cut = torch.quantile(entropy[mask.bool()], 1 - fraction)
    return ((entropy >= cut) & mask.bool()).float()


@wrong("policy_loss", "divides by mask.sum(), ignoring num_tokens")
def loss_ignores_num_tokens(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28,
                            num_tokens=None, ref_logprobs=None, kl_coef=0.0):
    return REFERENCE_POLICY_LOSS(logprobs, old_logprobs, advantages, mask, clip_low=clip_low,
                                 clip_high=clip_high, ref_logprobs=ref_logprobs, kl_coef=kl_coef)


@wrong("policy_loss", "the stats divided by num_tokens too")
def loss_stats_over_num_tokens(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28,
                               num_tokens=None, ref_logprobs=None, kl_coef=0.0):
    loss, stats = REFERENCE_POLICY_LOSS(logprobs, old_logprobs, advantages, mask, clip_low=clip_low,
                                 clip_high=clip_high, num_tokens=num_tokens, ref_logprobs=ref_logprobs,
                                 kl_coef=kl_coef)
    scale = 1.0 if num_tokens is None else mask.float().sum() / num_tokens
    return loss, {k: v * scale for k, v in stats.items()}


@wrong("policy_loss", "a per-sequence mean")
def loss_per_sequence(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28,
                      num_tokens=None, ref_logprobs=None, kl_coef=0.0):
    rows = [REFERENCE_POLICY_LOSS(logprobs[i:i + 1], old_logprobs[i:i + 1], advantages[i:i + 1], mask[i:i + 1],
                           clip_low=clip_low, clip_high=clip_high, ref_logprobs=None if ref_logprobs is None
                           else ref_logprobs[i:i + 1], kl_coef=kl_coef) for i in range(len(mask))]
    return sum(loss for loss, _ in rows) / len(rows), rows[0][1]


@wrong("policy_loss", "max instead of min: the clip never binds for negative advantages")
def loss_max(logprobs, old_logprobs, advantages, mask, *, clip_low=0.2, clip_high=0.28, num_tokens=None,
             ref_logprobs=None, kl_coef=0.0):
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.maximum(ratio * advantages, clipped)
    n = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    return (per_token * mask).sum() / n, {"clip_frac": torch.tensor(0.0), "approx_kl": torch.tensor(0.0)}


@wrong("logprobs_and_entropy", "the entropy detached")
def logprobs_entropy_detached(logits, token_ids):
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, token_ids[:, None]).squeeze(-1), -(logp.exp() * logp).sum(dim=-1).detach()


@wrong("logprobs_and_entropy", "the sampled token's negative log-prob as the entropy")
def logprobs_entropy_is_nll(logits, token_ids):
    logp = torch.log_softmax(logits, dim=-1).gather(-1, token_ids[:, None]).squeeze(-1)
    return logp, -logp


@wrong("gae_advantages", "the recursion runs through padding (no mask)")
def gae_through_padding(rewards, values, mask, gamma, lam):
    return REFERENCE_GAE(rewards, values, torch.ones_like(mask), gamma, lam)


@wrong("extract_answer", "the first number, not the last")
def extract_first_number(text):
    import re

    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[0] if numbers else None


@wrong("math_reward", "strings compared as written ('1,234' is not 1234)")
def reward_as_strings(completion, answer):
    predicted = mg.extract_answer(completion)
    return float(predicted is not None and predicted.strip() == str(answer).strip())
