"""The paper's comparison set on the default task: one seed, 20 steps each, one table.

  python experiments/five_methods.py            # train what is missing, then write the table
  python experiments/five_methods.py --report   # only the table and the page, from the copied runs
  python experiments/five_methods.py --results_dir /tmp/rerun   # rerun all five into another folder

Runs GRPO, GRPO + entropy advantage, GRPO + entropy regularization, PPO and PPO + entropy
advantage, and beside them GRPO with the forking-token rule (the policy gradient on the top 20% of
tokens by entropy, Wang et al. 2025), with minigrpo's defaults otherwise (the built-in one-digit task, 4 prompts x 8 samples,
48 tokens, lr 1e-5). A method whose metrics are already in the results folder (the committed ones,
by default) is skipped with a notice; a killed run resumes (minigrpo does that when the output_dir
holds the same config), so the script can be stopped and started again.
Writes experiments/five_methods/runs/NAME/ (each run's run_config.json, metrics.jsonl and
eval_samples.jsonl), table.md, and the runs' page and curves (report.html, curves.svg: eval.py --report).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "five_methods")
METHODS = {  # name: (label, flags)
    "grpo": ("GRPO", ["--entropy_alpha", "0"]),
    "grpo_entropy_adv": ("GRPO + entropy advantage", ["--entropy_alpha", "0.4", "--entropy_kappa", "2"]),
    "grpo_entropy_reg": ("GRPO + entropy regularization", ["--entropy_alpha", "0", "--entropy_coef", "0.01"]),
    "ppo": ("PPO", ["--algorithm", "ppo", "--entropy_alpha", "0"]),
    "ppo_entropy_adv": ("PPO + entropy advantage", ["--algorithm", "ppo", "--entropy_alpha", "0.1", "--entropy_kappa", "2"]),
    "grpo_top20": ("GRPO + top 20% tokens (forking-token rule)", ["--entropy_alpha", "0", "--entropy_top_fraction", "0.2"]),
}
COLUMNS = [("reward/accuracy", "train acc", 2), ("policy/entropy", "entropy", 2),
           ("policy/psi_over_abs_adv", "psi/\\|A\\|", 2), ("rollout/response_length", "length", 1),
           ("policy/cov_logp_shaped_adv", "cov(log pi, A used)", 3)]


def train(runs_dir, seed):
    for name, (_, flags) in METHODS.items():
        if os.path.isfile(os.path.join(RESULTS, "runs", name, "metrics.jsonl")):
            print(f"skip {name}: its metrics are in {RESULTS} (--results_dir DIR reruns into another folder)")
            continue
        out = os.path.join(runs_dir, name)
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "minigrpo.py", "--seed", str(seed), "--output_dir", out, *flags]
        print("$ " + " ".join(cmd), flush=True)
        with open(os.path.join(out, "train.log"), "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        os.makedirs(os.path.join(RESULTS, "runs", name), exist_ok=True)
        for file in ("run_config.json", "metrics.jsonl", "eval_samples.jsonl"):
            shutil.copy(os.path.join(out, file), os.path.join(RESULTS, "runs", name, file))


def mean(values):
    return sum(values) / len(values)


def report():
    header = ["method"] + [f"{label}, steps 1-5 -> 16-20" for _, label, _ in COLUMNS] + ["held-out greedy, step 20"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, (label, _) in METHODS.items():
        path = os.path.join(RESULTS, "runs", name, "metrics.jsonl")
        if not os.path.isfile(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        steps = [r for r in rows if r["step"] > 0]
        cells = [label]
        for key, _, digits in COLUMNS:
            first, last = mean([r[key] for r in steps[:5]]), mean([r[key] for r in steps[-5:]])
            cells.append(f"{first:.{digits}f} -> {last:.{digits}f}")
        evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
        cells.append(f"{evals[0]:.2f} -> {evals[-1]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "table.md"), "w") as f:
        f.write(table)
    print(table)
    runs = sorted(glob.glob(os.path.join(RESULTS, "runs", "*")))  # the page: every run, overlaid
    subprocess.run([sys.executable, "eval.py", "--report", *runs, "--output_dir", RESULTS], check=True, cwd=ROOT)


def main():
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", default=RESULTS, help="where runs/, table.md and the page go")
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "five_methods"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only write the table and the page")
    args = parser.parse_args()
    RESULTS = args.results_dir
    os.makedirs(RESULTS, exist_ok=True)
    if not args.report:
        train(args.runs_dir, args.seed)
    report()


if __name__ == "__main__":
    main()
