"""Where one minigrpo step spends its time: phases, then torch.profiler's busiest operators.

  python bench/profile_step.py                   # the default model and the default CPU recipe's sizes
  python bench/profile_step.py --model /tmp/qwen --dtype bfloat16 --prompts_per_step 16 --max_new_tokens 256

Runs one warm-up step, then profiles one step as minigrpo's main runs it (rollout, advantages,
update_policy). The phases are named ranges this script opens around minigrpo's own functions
(record_function; minigrpo.py has no profiler code): sampling, grading, and the update's forward
passes, backward passes and optimizer steps. A range that no longer appears (a function renamed or
no longer called) is an error, so the breakdown cannot silently go stale.
"""

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402

# range name: (where the function it wraps lives, its name, the phase's label); update_policy calls
# loss.backward() itself, so the backward range wraps torch.Tensor.backward (only the update calls it)
WRAPPED = {"minigrpo.sample": (mg, "sample_completions", "sample"), "minigrpo.grade": (mg, "math_reward", "grade"),
           "minigrpo.forward": (mg, "policy_forward", "update: forward passes"),
           "minigrpo.backward": (torch.Tensor, "backward", "update: backward passes"),
           "minigrpo.optimizer": (mg, "gradient_step", "update: clip + AdamW step")}
RANGES = {name: label for name, (_, _, label) in WRAPPED.items()}


def open_ranges():
    """Replace each function in WRAPPED by one that runs it inside its named range; minigrpo's story
    looks them up by name, so every call goes through the range."""
    for name, (owner, function, _) in WRAPPED.items():
        real = getattr(owner, function)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            with record_function(_name):
                return _real(*args, **kwargs)

        setattr(owner, function, wrapped)


def step(model, tokenizer, optimizer, cfg, problems):
    """One training step as main() runs it; returns the number of completion tokens and whether
    any advantage was nonzero (with none, minigrpo runs no backward)."""
    with mg.autocast(model.device, cfg.dtype):
        batch = mg.rollout(model.eval(), tokenizer, problems, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                           cfg.instruction, shared_prefix=cfg.shared_prefix)
        advantages = mg.group_advantages(batch.rewards, cfg.group_size)
        mg.update_policy(model.train(), optimizer, batch, advantages, cfg)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return int(batch.mask.sum()), bool(advantages.any())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="float32", choices=sorted(mg.DTYPES))
    parser.add_argument("--prompts_per_step", type=int, default=mg.Config.prompts_per_step)
    parser.add_argument("--max_new_tokens", type=int, default=mg.Config.max_new_tokens)
    parser.add_argument("--micro_batch_size", type=int, default=mg.Config.micro_batch_size)
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    parser.add_argument("--no_shared_prefix", action="store_true", help="encode every row in full")
    args = parser.parse_args()
    open_ranges()
    cfg = mg.Config(model=args.model, dtype=args.dtype, prompts_per_step=args.prompts_per_step,
                    max_new_tokens=args.max_new_tokens, micro_batch_size=args.micro_batch_size)
    cfg.instruction = mg.default_instruction(cfg.dataset)
    cfg.shared_prefix = not args.no_shared_prefix
    torch.manual_seed(0)
    device = mg.resolve_device("auto")
    model, tokenizer = mg.load_model(cfg.model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    stream = mg.arithmetic_problems("train", cfg.digits, cfg.operations, cfg.seed)
    step(model, tokenizer, optimizer, cfg, [next(stream) for _ in range(cfg.prompts_per_step)])  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        tokens, signal = step(model, tokenizer, optimizer, cfg, [next(stream) for _ in range(cfg.prompts_per_step)])
        total = time.perf_counter() - start
    recorded = {event.key: event.cpu_time_total / 1e6 for event in prof.key_averages()}
    if not signal:  # every group's rewards were equal: no backward to time
        recorded.setdefault("minigrpo.backward", 0.0)
    missing = [name for name in RANGES if name not in recorded]
    if missing:
        sys.exit(f"profile_step: minigrpo.py no longer opens the ranges {missing}; update RANGES")
    print(f"{args.model}, {device}, {args.dtype}, shared prefix {cfg.shared_prefix}: {cfg.prompts_per_step} x "
          f"{cfg.group_size} completions, {tokens} completion tokens, {total:.2f} s (profiler on)")
    for name, label in RANGES.items():
        print(f"  {label:<32} {recorded[name]:7.2f} s  {100 * recorded[name] / total:5.1f}%")
    rest = total - sum(recorded[name] for name in RANGES)
    print(f"  {'everything else':<32} {rest:7.2f} s  {100 * rest / total:5.1f}%")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
