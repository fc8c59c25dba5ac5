"""How long `eval.py --report` takes to draw the page of several runs: ten runs of 20 steps.

  python bench/report_time.py            # 10 runs x 20 steps, 5 repeats; prints the median and range

Writes ten synthetic run folders the size a default run writes (metrics.jsonl with every metric,
samples.jsonl with 32 completions a step and the first group's tokens with their entropy, psi and
clip marks, eval_samples.jsonl with 64 held-out answers every 5 steps; two seed groups of five),
then times eval.main(["--report", ...]) on all of them: reading, the diagnosis, the curves with
their bands, the answers table and writing report.html and curves.svg.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as ev  # noqa: E402
import minigrpo as mg  # noqa: E402
from dataclasses import asdict  # noqa: E402


def write_run(folder, seed, alpha, steps, rng):
    """One run folder of the default recipe's shape: 4 groups of 8, 30 tokens a completion."""
    os.makedirs(folder)
    config = {**asdict(mg.Config()), "seed": seed, "entropy_alpha": alpha, "output_dir": folder}
    with open(os.path.join(folder, "run_config.json"), "w") as f:
        json.dump(config, f)
    metrics, samples, answers = [{"step": 0, "eval/accuracy": rng.random()}], [], []
    keys = list(ev.PANELS) + ["reward/mean", "policy/entropy_bonus", "update/loss", "update/clip_frac"]
    for step in range(1, steps + 1):
        metrics.append({"step": step, **{k: rng.random() for k in keys}, "update/skipped_steps": 0})
        for i in range(32):
            record = {"step": step, "group": i // 8, "problem": f"What is {i} + {step}?",
                      "answer": str(i + step), "prompt": "p" * 200, "completion": "x = 7 " * 5,
                      "reward": float(rng.random() < 0.5),
                      "advantage": rng.gauss(0, 1), "length": 30, "truncated": False}
            if i < 8:
                record.update(tokens=[" tok"] * 30, entropy=[rng.random() * 3 for _ in range(30)],
                              psi=[rng.random() for _ in range(30)],
                              clipped=[int(rng.random() < 0.3) for _ in range(30)])
            samples.append(record)
    for step in range(0, steps + 1, 5):
        answers += [{"step": step, "problem": f"What is {p} * 3?", "answer": str(3 * p),
                     "completion": f"{3 * p}", "correct": rng.random() < 0.7} for p in range(64)]
    for name, rows in (("metrics.jsonl", metrics), ("samples.jsonl", samples),
                       ("eval_samples.jsonl", answers)):
        with open(os.path.join(folder, name), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as root:
        folders = [os.path.join(root, f"{'grpo' if i % 2 else 'entropy_adv'}_seed{i // 2}")
                   for i in range(args.runs)]
        for i, folder in enumerate(folders):
            write_run(folder, i // 2, 0.0 if i % 2 else 0.4, args.steps, rng)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            assert ev.main(["--report", *folders, "--output_dir", os.path.join(root, "page")]) == 0
            seconds.append(time.perf_counter() - started)
        size = os.path.getsize(os.path.join(root, "page", "report.html"))
    print(f"{args.runs} runs x {args.steps} steps: median {statistics.median(seconds):.3f} s (range "
          f"{min(seconds):.3f}-{max(seconds):.3f} s, {args.repeats} repeats); report.html "
          f"{size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
