"""The static sampler: minigrpo's sampling on shapes that never change, for CUDA graphs.

  python bench/step_time.py --trainers minigrpo,minigrpo_static ...   # timed against the eager loop
  python bench/static_sampler_check.py --model FOLDER                  # its logits and tokens checked

minigrpo.py samples with an eager decode loop: a row that samples EOS leaves the batch and the
cache, so each step computes only live rows. Here the cache is preallocated for prompt +
max_new_tokens and finished rows stay in the batch (fed padding, their logits ignored), so every
decode step has the same shapes and a GPU can replay it as one CUDA graph instead of launching each
kernel from Python. It draws from the same distribution, with the same random numbers for the same
rows, and is a drop-in for minigrpo.sample_completions (swapped_in() puts it there).

Why it lives here and not in minigrpo.py: on the CPU it saved nothing (8.04 s against 7.89 s per
default rollout, bench/README.md), and it has never run on a GPU. It comes back into minigrpo.py
when bench/gpu_session.sh on a GPU shows `minigrpo_static` beating `minigrpo` (the eager loop) in
bench/README.md's GPU row by more than the run-to-run range.
"""

import contextlib
import os
import sys

import torch
from transformers import StaticCache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, group_size, max_new_tokens, temperature, top_p=1.0,
                       shared_prefix=True):
    """minigrpo.sample_completions on fixed shapes (each prompt is prefilled once whatever shared_prefix
    says). Returns prompt_ids, prompt_mask (N, P) and the completions (N, C)."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    return sample_static(model, tokenizer, encoded, group_size, max_new_tokens, temperature, top_p)


@contextlib.contextmanager
def swapped_in():
    """Within it, minigrpo samples with this sampler (rollout looks sample_completions up by name)."""
    eager = mg.sample_completions
    mg.sample_completions = sample_completions
    try:
        yield
    finally:
        mg.sample_completions = eager


@torch.no_grad()
def sample_static(model, tokenizer, encoded, group_size, max_new_tokens, temperature, top_p):
    """sample_completions on shapes that never change, so that a GPU can replay each decode step as one
    CUDA graph instead of launching every kernel from Python. A key/value cache preallocated for
    prompt + max_new_tokens; each distinct prompt prefilled once and copied to its group's rows; rows
    that finished stay in the batch (fed padding, their logits ignored) instead of leaving it.

    The same draws as the eager loop: sample_token sees only the unfinished rows, in the same order, so
    for the same seed and the same logits the tokens are the same (the suite checks it on its model).
    The logits agree up to float rounding (another attention shape; on CUDA, compiled kernels), and a
    rounding difference can flip a draw, after which the rows share a random stream that has parted.
    """
    prompt_ids, prompt_mask = encoded.input_ids, encoded.attention_mask  # (U, P) distinct prompts
    compiled = model.device.type == "cuda"
    if compiled:  # fewer distinct shapes, fewer compilations: left-pad the prompts to a multiple of 64
        pad = -prompt_ids.shape[1] % 64
        prompt_ids = torch.nn.functional.pad(prompt_ids, (pad, 0), value=tokenizer.pad_token_id)
        prompt_mask = torch.nn.functional.pad(prompt_mask, (pad, 0))
    (U, P), N = prompt_ids.shape, len(prompt_ids) * group_size
    cache = StaticCache(config=model.config, max_cache_len=P + max_new_tokens, max_batch_size=U,
                        device=model.device, dtype=cache_dtype(model))  # the last two for transformers 4
    # every cache column a row may use is attended to: a row's future columns are hidden by causality
    attention_mask = torch.nn.functional.pad(prompt_mask, (0, max_new_tokens), value=1)  # (U, P + max_new)
    positions = mg.position_ids(prompt_mask)  # (U, P)
    out = model(input_ids=prompt_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                cache_position=torch.arange(P, device=model.device), cache=cache)
    logits = out.logits[:, -1].float().repeat_interleave(group_size, dim=0)  # (N, V)
    cache = group_cache(cache, group_size)  # (N, heads, L, d) per layer, row i holding prompt i // group_size
    attention_mask = attention_mask.repeat_interleave(group_size, dim=0)  # (N, P + max_new)
    position = positions[:, -1:].repeat_interleave(group_size, dim=0) + 1  # (N, 1)
    step = compiled_decode_step if compiled else decode_step
    eos = torch.as_tensor(model.generation_config.eos_token_id, device=model.device)
    completions = torch.full((N, max_new_tokens), tokenizer.pad_token_id, device=model.device)
    not_done = torch.ones(N, dtype=torch.bool, device=model.device)
    for t in range(max_new_tokens):
        live = not_done.nonzero().squeeze(1)  # (L,) as the eager loop's rows, in the same order
        completions[live, t] = mg.sample_token(logits[live], temperature, top_p)
        not_done &= ~mg.is_eos_token(completions[:, t], eos)
        if not not_done.any() or t == max_new_tokens - 1:
            break
        cache_position = torch.full((1,), P + t, device=model.device)
        logits = step(model, completions[:, t : t + 1], attention_mask, position + t, cache, cache_position)
    return (encoded.input_ids.repeat_interleave(group_size, dim=0),
            encoded.attention_mask.repeat_interleave(group_size, dim=0), completions[:, : t + 1])


_GROUP_CACHES = {}  # sizes -> a static cache whose buffers every call of those sizes rewrites


def group_cache(prompt_cache, group_size):
    """A static cache of U prefilled prompts as one of U * group_size rows, row i holding prompt
    i // group_size. Its buffers are kept from one call to the next of the same sizes and overwritten
    in place (all of them): a CUDA graph replays from fixed addresses, and new ones would make it record
    again each rollout."""
    keys, values = prompt_cache.layers[0].keys, prompt_cache.layers[0].values  # (U, heads, L, d) each
    sizes = (len(prompt_cache.layers), len(keys) * group_size, *keys.shape[1:], keys.dtype, values.dtype,
             keys.device)
    rows = _GROUP_CACHES.get(sizes)
    if rows is None:  # the first call of these sizes: the prompts' cache, its rows repeated
        rows = _GROUP_CACHES[sizes] = prompt_cache
        for layer in rows.layers:
            layer.keys = layer.keys.repeat_interleave(group_size, dim=0)
            layer.values = layer.values.repeat_interleave(group_size, dim=0)
            if hasattr(layer, "batch_size"):
                layer.batch_size = len(layer.keys)
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)
        return rows
    for kept, new in zip(rows.layers, prompt_cache.layers):  # viewed as (U, G, ...): a prompt to its G rows
        kept.keys.view(len(new.keys), group_size, *new.keys.shape[1:]).copy_(new.keys.unsqueeze(1))
        kept.values.view(len(new.values), group_size, *new.values.shape[1:]).copy_(new.values.unsqueeze(1))
        if isinstance(getattr(new, "cumulative_length", None), torch.Tensor):  # the tokens written so far
            kept.cumulative_length.copy_(new.cumulative_length)
    return rows


def decode_step(model, input_ids, attention_mask, position_ids, cache, cache_position):
    """One token for every row of a static cache: (N, 1) ids -> (N, V) float32 logits of the next token."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                cache_position=cache_position, cache=cache)
    return out.logits[:, -1].float()


_compiled_decode_step = None


def compiled_decode_step(*args):
    """decode_step compiled once per process ("reduce-overhead": replayed as a CUDA graph)."""
    global _compiled_decode_step
    if _compiled_decode_step is None:
        _compiled_decode_step = torch.compile(decode_step, mode="reduce-overhead")
    torch.compiler.cudagraph_mark_step_begin()  # the previous step's logits may be overwritten now
    return _compiled_decode_step(*args).clone()


def static_cache_too_old():
    """The installed transformers version if its static cache cannot keep float32 keys beside bfloat16
    values, as autocast over float32 weights makes them (RoPE's float32 tables promote the keys): before
    5.24 it allocates both in the keys' dtype, and writing the values fails. None from 5.24 on."""
    from packaging.version import Version  # a dependency of transformers
    from transformers import __version__ as version

    return version if Version(version).release[:2] < (5, 24) else None


def cache_dtype(model):
    """The dtype the keys and values are computed in: autocast's when it is on, else the weights'."""
    device_type = model.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else model.dtype


