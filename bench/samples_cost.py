"""What samples.jsonl costs a training step: bytes written and seconds spent writing them.

  python bench/samples_cost.py            # the default model and the default CPU recipe

Runs real training steps as main() does (the default Config, the built-in task), then times
MetricsLog.write_samples on each step's rollout, which main() calls once per step outside the
timed sampling and update, and reports the bytes each step adds to samples.jsonl next to the
step's own seconds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed writes of each step's samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = mg.Config(model=args.model, output_dir=out)
        cfg.instruction = mg.default_instruction(cfg.dataset)
        torch.manual_seed(cfg.seed)
        model, tokenizer = mg.load_model(cfg.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        stream = mg.arithmetic_problems("train", cfg.digits, cfg.operations, cfg.seed)
        print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
              f"{torch.get_num_threads()} threads; {cfg.prompts_per_step} x {cfg.group_size} completions a step")
        with mg.MetricsLog(cfg, tokenizer, 0, resumed=False) as log:
            for step in range(1, args.steps + 1):
                problems = [next(stream) for _ in range(cfg.prompts_per_step)]
                batch, update_metrics, tokens, seconds = mg.train_step(model, tokenizer, optimizer, problems, cfg)
                before = os.path.getsize(os.path.join(out, "samples.jsonl"))
                log.write_samples(step, problems, batch, tokens)
                size = os.path.getsize(os.path.join(out, "samples.jsonl")) - before
                times = []
                for _ in range(args.repeats):  # the same work again, to a file that is thrown away
                    started = time.perf_counter()
                    with open(os.devnull, "w") as log.samples:
                        log.write_samples(step, problems, batch, tokens)
                    times.append(time.perf_counter() - started)
                log.samples = open(os.path.join(out, "samples.jsonl"), "a")
                step_s = seconds["time/sample_s"] + seconds["time/update_s"]
                write_s = statistics.median(times)
                print(f"step {step}: {size} bytes, write {1000 * write_s:.1f} ms (median of {args.repeats}), "
                      f"step {step_s:.1f} s: {100 * write_s / step_s:.3f}% of it; "
                      f"mean length {batch.mask.sum(1).float().mean():.1f} tokens")


if __name__ == "__main__":
    main()
