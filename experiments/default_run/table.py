"""The README's quick-start table and its accuracy line, from a run's metrics.jsonl.

  python experiments/default_run/table.py                          # the committed default run
  python experiments/default_run/table.py runs/minigrpo/metrics.jsonl

The test suite checks that README.md holds exactly what this prints for the committed run, so the
README's numbers cannot drift from the file they come from.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = [("reward/accuracy", "`reward/accuracy` (samples at T = 1)", "{:.2f}"),
        ("policy/entropy", "`policy/entropy` (nats)", "{:.2f}"),
        ("policy/psi_over_abs_adv", "`policy/psi_over_abs_adv`", "{:.2f}"),
        ("rollout/response_length", "`rollout/response_length` (tokens)", "{:.1f}"),
        ("rollout/truncated_frac", "`rollout/truncated_frac`", "{:.2f}")]
STEPS = (1, 5, 10, 15, 20)


def table(metrics):
    """A markdown table (a row per metric in ROWS, a column per step in STEPS), then a line with the
    training accuracy of the first and last five steps and every held-out evaluation."""
    by_step = {m["step"]: m for m in metrics}
    lines = ["| step | " + " | ".join(map(str, STEPS)) + " |", "| --- |" + " --- |" * len(STEPS)]
    for key, label, number in ROWS:
        lines.append(f"| {label} | " + " | ".join(number.format(by_step[s][key]) for s in STEPS) + " |")
    first = sum(by_step[s]["reward/accuracy"] for s in range(1, 6)) / 5
    last = sum(by_step[s]["reward/accuracy"] for s in range(16, 21)) / 5
    held_out = ", ".join(f"{m['eval/accuracy']:.2f} at step {m['step']}" for m in metrics if "eval/accuracy" in m)
    lines += ["", f"Training accuracy {first:.2f} over steps 1-5, {last:.2f} over steps 16-20; greedy accuracy "
              f"on the held-out problems {held_out}."]
    return "\n".join(lines)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "metrics.jsonl")
    print(table([json.loads(line) for line in open(path)]))


if __name__ == "__main__":
    main()
