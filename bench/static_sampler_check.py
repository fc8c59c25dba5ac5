"""The static sampler against the eager loop: the same tokens, and how close their logits are.

  python bench/static_sampler_check.py --model FOLDER [--dtype bfloat16] [--device cuda]

Teacher-forced: the eager loop samples (T = 1); the static loop is then fed the same tokens, so every
decode step of both sees the same inputs and their next-token logits can be compared one by one. On
the CPU, uncompiled, they agree to float rounding (the suite checks the tokens); on CUDA the static
step is compiled (CUDA graphs), and this reports how far bf16 kernels move the logits, and how often
the greedy token differs. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402
import static_sampler  # noqa: E402  (bench/, beside this file)


def recorded_run(model, tokenizer, prompts, args, sampler, forced=None):
    """Run one sampler; returns its tokens and the logits each decode step saw (live rows, (L, V) each)."""
    real, seen = mg.sample_token, []

    def sample_token(logits, temperature, top_p=1.0):
        seen.append(logits.float().cpu())
        if forced is not None:
            return forced[len(seen) - 1].to(logits.device)
        return real(logits, temperature, top_p)

    mg.sample_token = sample_token
    try:
        torch.manual_seed(0)
        with mg.autocast(model.device, args.dtype):
            sample = static_sampler.sample_completions if sampler == "static" else mg.sample_completions
            out = sample(model, tokenizer, prompts, args.group_size, args.max_new_tokens, 1.0)
    finally:
        mg.sample_token = real
    return out[2], seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32", choices=sorted(mg.DTYPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer = mg.load_model(args.model, mg.resolve_device(args.device))
    model.eval()
    stream = mg.arithmetic_problems("train", 1, "+*", 0)
    prompts = [mg.format_prompt(tokenizer, next(stream)["question"], mg.default_instruction("arithmetic"))
               for _ in range(args.prompts)]
    tokens, eager_logits = recorded_run(model, tokenizer, prompts, args, "eager")
    # the eager loop's draw at each step, for the rows still live then (in the same order as the static loop's)
    forced, live = [], torch.ones(len(tokens), dtype=torch.bool)
    for t in range(tokens.shape[1]):
        forced.append(tokens[live, t].cpu())
        live &= ~mg.is_eos_token(tokens[:, t], model.generation_config.eos_token_id).cpu()
    started = time.perf_counter()
    static_tokens, static_logits = recorded_run(model, tokenizer, prompts, args, "static", forced)
    seconds = time.perf_counter() - started
    diffs = [(a - b).abs().max().item() for a, b in zip(eager_logits, static_logits)]
    scale = max(a.abs().max().item() for a in eager_logits)
    argmax_same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(eager_logits, static_logits))
    positions = sum(len(a) for a in eager_logits)
    print(json.dumps({"model": os.path.basename(args.model.rstrip("/")), "device": str(model.device),
                      "dtype": args.dtype, "steps": len(diffs), "same_tokens": torch.equal(tokens, static_tokens),
                      "max_abs_logit_diff": max(diffs), "max_abs_logit": scale,
                      "greedy_token_agreement": argmax_same / positions,
                      "static_seconds_incl_compile": round(seconds, 2), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
