"""Plain GRPO against GRPO + the entropy advantage, several seeds each, on the built-in task.

  python experiments/entropy_vs_grpo.py               # train, evaluate, report (hours on 2 CPU cores)
  python experiments/entropy_vs_grpo.py --stage report  # only redo the tables and plots

Stages, each skipping work already on disk (so an interrupted run continues where it stopped):
  train   minigrpo.py with --entropy_alpha 0 and 0.4 (kappa 2), seeds 0..S-1, otherwise the defaults
  eval    eval.py on the held-out split, n samples per problem, for the base model and every run;
          --entropy_report for the base model and seed 0 of each method
  report  Pass@k with 95% confidence intervals across seeds (results.md), per-step curves
          (training_curves.svg) and Pass@k curves (passk.svg), drawn by eval.py's renderer

Checkpoints go to --runs_dir (large, not committed); metrics, eval summaries, entropy reports and
the report go to --results_dir.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from statistics import mean, stdev

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from eval import COLORS, correct_counts, mean_and_band, pass_at_k, svg_chart, svg_figure  # noqa: E402

METHODS = {"grpo": 0.0, "entropy_adv": 0.4}  # name: entropy_alpha
LABELS = {"base": "base model", "grpo": "GRPO", "entropy_adv": "GRPO + entropy advantage"}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t, two-sided 95%


def t_975(df):
    """The 97.5% quantile of Student's t: a table to df 9, then the Cornish-Fisher expansion to its 1/df^4
    term (error < 1e-4 from df 10 on; with the 1/df^2 term alone it was 3e-3 at df 10)."""
    if df in T_975:
        return T_975[df]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def run(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def train(args):
    for method, alpha in METHODS.items():
        for seed in range(args.seeds):
            name = f"{method}_seed{seed}"
            out = os.path.join(args.runs_dir, name)
            if not os.path.isdir(os.path.join(out, "final")):
                os.makedirs(out, exist_ok=True)
                run([sys.executable, "minigrpo.py", "--seed", str(seed), "--entropy_alpha", str(alpha), "--entropy_kappa", "2",
                     "--steps", str(args.steps), "--save_every", "0", "--output_dir", out], os.path.join(out, "train.log"))
            os.makedirs(os.path.join(args.results_dir, "metrics"), exist_ok=True)
            shutil.copy(os.path.join(out, "metrics.jsonl"), os.path.join(args.results_dir, "metrics", f"{name}.jsonl"))


def evaluate(args):
    models = {"base": "smollm2"}
    models.update({f"{m}_seed{s}": os.path.join(args.runs_dir, f"{m}_seed{s}", "final")
                   for m in METHODS for s in range(args.seeds)})
    for name, model in models.items():
        out = os.path.join(args.results_dir, "eval", name)
        if os.path.exists(os.path.join(out, "summary.json")):
            continue
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "eval.py", "--model", model, "--n", str(args.n), "--output_dir", out]
        if name in ("base", "grpo_seed0", "entropy_adv_seed0"):
            cmd.append("--entropy_report")
        run(cmd, os.path.join(out, "eval.log"))


# -----------------------------------------------------------------------------
# Report


def per_problem_counts(path):
    """Correct completions per problem, from eval.py's samples.jsonl."""
    with open(path) as f:
        return correct_counts([json.loads(line) for line in f])


def interval(values):
    """Mean and half-width of a 95% t-interval (0 for a single value)."""
    if len(values) < 2:
        return mean(values), 0.0
    return mean(values), t_975(len(values) - 1) * stdev(values) / math.sqrt(len(values))


def pass_at_k_table(args):
    """{group: {k: (mean, half-width)}}: across seeds for the methods, across problems for the base model."""
    ks = [2**i for i in range(int(math.log2(args.n)) + 1)]
    rows = {}
    base = per_problem_counts(os.path.join(args.results_dir, "eval", "base", "samples.jsonl"))
    rows["base"] = {k: interval([pass_at_k(args.n, c, k) for c in base]) for k in ks}
    for method in METHODS:
        per_seed = []
        for s in range(args.seeds):
            counts = per_problem_counts(os.path.join(args.results_dir, "eval", f"{method}_seed{s}", "samples.jsonl"))
            per_seed.append({k: mean(pass_at_k(args.n, c, k) for c in counts) for k in ks})
        rows[method] = {k: interval([p[k] for p in per_seed]) for k in ks}
        rows[method]["seeds"] = per_seed
    return ks, rows


def read_metrics(args, method):
    runs = []
    for s in range(args.seeds):
        with open(os.path.join(args.results_dir, "metrics", f"{method}_seed{s}.jsonl")) as f:
            runs.append([r for r in map(json.loads, f) if "reward/accuracy" in r])
    return runs


CURVES = [("reward/accuracy", "training accuracy"), ("policy/entropy", "mean token entropy (nats)"),
          ("policy/psi_over_abs_adv", "psi / |A|"), ("rollout/response_length", "response length (tokens)")]


def plots(args, ks, rows):
    """training_curves.svg (mean over seeds, band min to max) and passk.svg (mean and 95% interval band)."""
    legend = [(LABELS[method], COLORS[i]) for i, method in enumerate(METHODS)]
    charts = []
    for key, title in CURVES:
        series = []
        for (label, color), method in zip(legend, METHODS):
            runs = read_metrics(args, method)
            series.append((label, color, *mean_and_band([{r["step"]: r[key] for r in run} for run in runs])))
        charts.append(svg_chart(title, series))
    legend.append((f"mean over {args.seeds} seeds; band: min to max", "#ffffff"))
    with open(os.path.join(args.results_dir, "training_curves.svg"), "w") as f:
        f.write(svg_figure(charts, legend, columns=len(CURVES)))
    series = [(LABELS[group], COLORS[i], [(k, row[k][0]) for k in ks],
               [(k, row[k][0] - row[k][1], row[k][0] + row[k][1]) for k in ks])
              for i, (group, row) in enumerate(rows.items())]
    with open(os.path.join(args.results_dir, "passk.svg"), "w") as f:
        f.write(svg_figure([svg_chart(f"Pass@k (held-out, n = {args.n}), 95% interval", series, 460, 300,
                                      log2_x=True, x_label="k", y_range=(0.0, 1.0))],
                           [(label, color) for label, color, _, _ in series], columns=1, chart_size=(460, 300)))


def report(args):
    ks, rows = pass_at_k_table(args)
    lines = [f"Held-out arithmetic problems, n = {args.n} samples each (eval.py defaults: temperature 0.6, top_p 0.95).",
             (f"Methods: mean over {args.seeds} seeds, +- the 95% t-interval across seeds. "
              "Base model: mean over problems, +- the 95% t-interval across problems."), "",
             "| model | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for group, row in rows.items():
        lines.append(f"| {LABELS[group]} | " + " | ".join(f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in ks) + " |")
    lines += ["", "Per seed:", "", "| run | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method in METHODS:
        for s, p in enumerate(rows[method]["seeds"]):
            lines.append(f"| {method} seed {s} | " + " | ".join(f"{p[k]:.3f}" for k in ks) + " |")
    lines += ["", "Last 5 training steps (mean over steps, then over seeds), and greedy held-out accuracy after the last step:", "",
              "| method | " + " | ".join(title.replace("|", "\\|") for _, title in CURVES) + " | greedy held-out |",
              "|---" * (len(CURVES) + 2) + "|"]
    for method in METHODS:
        runs = read_metrics(args, method)
        cells = [mean(mean(r[key] for r in run[-5:]) for run in runs) for key, _ in CURVES]
        cells.append(mean(run[-1].get("eval/accuracy", float("nan")) for run in runs))
        lines.append(f"| {LABELS[method]} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.results_dir, "results.md"), "w") as f:
        f.write(text)
    print(text)
    plots(args, ks, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "train", "eval", "report"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=32, help="eval samples per held-out problem")
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "entropy_vs_grpo"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "entropy_vs_grpo"))
    args = parser.parse_args()
    if args.stage in ("all", "train"):
        train(args)
    if args.stage in ("all", "eval"):
        evaluate(args)
    if args.stage in ("all", "report"):
        report(args)


if __name__ == "__main__":
    main()
