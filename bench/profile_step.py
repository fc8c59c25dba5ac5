"""Where one minigrpo step spends its time: phases, then torch.profiler's busiest operators.

  python bench/profile_step.py                   # the default model and the default CPU recipe's sizes
  python bench/profile_step.py --model /tmp/qwen --dtype bfloat16 --prompts_per_step 16 --max_new_tokens 256

Runs one warm-up step, then profiles one step: sampling (generate), grading (decode + math_reward),
the update's forward/backward (log-probs, entropy, loss) and the optimizer (clip + AdamW).
"""

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg


def step(model, tokenizer, optimizer, cfg, problems, phases):
    def timed(name, fn):
        start = time.perf_counter()
        with record_function(name), torch.autocast(model.device.type, dtype=mg.DTYPES[cfg.dtype],
                                                    enabled=cfg.dtype != "float32"):
            out = fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
        return out

    model.eval()
    # rollout's own code, with sample_completions timed apart: the rest of rollout is decoding and grading
    sample = mg.sample_completions
    mg.sample_completions = lambda *a, **k: timed("1 generate", lambda: sample(*a, **k))
    try:
        start, generated = time.perf_counter(), phases.get("1 generate", 0.0)
        batch = mg.rollout(model, tokenizer, problems, cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.instruction)
        phases["2 decode + grade"] = phases.get("2 decode + grade", 0.0) + time.perf_counter() - start - (phases["1 generate"] - generated)
    finally:
        mg.sample_completions = sample
    rewards, mask = batch["rewards"], batch["mask"]
    advantages = mg.group_advantages(rewards, cfg.group_size)
    model.train()
    # update_policy's optimizer.step and clip_grad_norm_ are timed apart by wrapping them
    step_fn, clip_fn = optimizer.step, torch.nn.utils.clip_grad_norm_
    optimizer.step = lambda *a, **k: timed("4 clip + AdamW step", lambda: step_fn(*a, **k))
    torch.nn.utils.clip_grad_norm_ = lambda *a, **k: timed("4 clip + AdamW step", lambda: clip_fn(*a, **k))
    try:
        timed("3 update (forward, backward, optimizer)", lambda: mg.update_policy(model, optimizer, batch, advantages, cfg))
    finally:
        optimizer.step, torch.nn.utils.clip_grad_norm_ = step_fn, clip_fn
    return int(mask.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="float32", choices=sorted(mg.DTYPES))
    parser.add_argument("--prompts_per_step", type=int, default=mg.Config.prompts_per_step)
    parser.add_argument("--max_new_tokens", type=int, default=mg.Config.max_new_tokens)
    parser.add_argument("--micro_batch_size", type=int, default=mg.Config.micro_batch_size)
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    args = parser.parse_args()
    cfg = mg.Config(model=args.model, dtype=args.dtype, prompts_per_step=args.prompts_per_step,
                    max_new_tokens=args.max_new_tokens, micro_batch_size=args.micro_batch_size)
    cfg.instruction = mg.default_instruction(cfg.dataset)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = mg.load_model(cfg.model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    stream = mg.arithmetic_problems("train", cfg.digits, cfg.operations, cfg.seed)
    step(model, tokenizer, optimizer, cfg, [next(stream) for _ in range(cfg.prompts_per_step)], {})  # warm-up
    phases = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        tokens = step(model, tokenizer, optimizer, cfg, [next(stream) for _ in range(cfg.prompts_per_step)], phases)
    total = sum(v for k, v in phases.items() if not k.startswith("4"))
    print(f"{args.model}, {device}, {args.dtype}: {cfg.prompts_per_step} x {cfg.group_size} completions, "
          f"{tokens} completion tokens, {total:.2f} s (profiler on)")
    for name, seconds in sorted(phases.items()):
        indent = "    of which " if name.startswith("4") else ""
        print(f"  {indent}{name[2:]:<40} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
