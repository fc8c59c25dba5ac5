"""Where the paper's effect could appear: a task the model reasons through, five methods, the entropy law.

  python experiments/reasoning_task.py                    # every stage; hours of CPU, resumable
  python experiments/reasoning_task.py --stage regime     # only the choice of task
  python experiments/reasoning_task.py --stage report     # only the tables and plots

Stages, each skipping work already on disk, so a killed run continues where it stopped (minigrpo
resumes a run whose output_dir holds the same config; eval.py writes its files only at the end):

  regime  The base model on each candidate task (eval.py, n = 32, 48 held-out problems, the
          reasoning instruction; round 1 with 128 new tokens). RULE, fixed before any method is
          compared: a task qualifies when the base Pass@1 >= 0.05 and Pass@32 <= 0.85; among
          qualifying tasks the one with the highest base Pass@1 is tried first, and it is kept when
          plain GRPO (seed 0) raises its training accuracy by at least 0.10 (mean of the last 5
          steps minus the first 5); otherwise the next qualifying task is tried. When no task of
          round 1 is kept, round 2 (the two-digit tasks with 192 new tokens) goes through the same
          rule; when none of round 2 either, round 3 (round 2's tasks and base evaluations, sampled
          in training at temperature 0.6 instead of 1.0). Writes regime.md.
  train   On the chosen task: GRPO and GRPO + entropy advantage (alpha 0.4, kappa 2), 5 seeds each
          (the core comparison); GRPO + entropy regularization, PPO and PPO + entropy advantage
          (alpha 0.1), 2 seeds each (illustrations). Entropy regularization's coefficient comes
          from a sweep on seed 0 (ENTROPY_COEFS; the highest training accuracy over the last 5
          steps; sweep.md), run before its first seed.
  eval    eval.py (n = 32, the regime's problems and settings) on every finished run.
  entropy eval.py --entropy_report (16 problems x 8 samples) on the base model and seed 0 of each
          method: which tokens each model hesitates on (entropy/NAME/).
  replicate  The replication (REPLICATION.md, committed before its first run): GRPO and GRPO + entropy
          advantage on seeds 5-9, trained and evaluated seed by seed with today's grader; each run's
          provenance.json names the commit and CPU it ran on, and every path of this machine in its
          files is replaced by the run's name. Then replication.md: the primary claim (paired Pass@32,
          95% t-interval over the 5 new pairs; the sign test beside it), the secondary claims, the
          length split at the first statement of the answer, and the ten seeds together, is written by
          the report stage.
  report  results.md: Pass@k with 95% intervals, the per-seed paired difference (entropy advantage
          minus GRPO), the last steps' training metrics; training_curves.svg (mean and min-max band
          over seeds) of accuracy, length, entropy, psi/|A| and cov(log pi, A used); passk.svg (Pass@k
          of every model, and the paired difference by k); report.html and curves.svg (eval.py --report
          on GRPO's and the entropy advantage's runs: their curves, a band over the seeds). Every
          completion is graded again by the current grader (samples.jsonl keeps them all), with a table of
          what that changed.

Checkpoints go to --runs_dir (large, not committed); each run's config and metrics (runs/NAME_seedS/),
eval summaries and the report go to experiments/reasoning_task/.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from statistics import mean

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import minigrpo as mg  # noqa: E402
from entropy_vs_grpo import interval, per_problem_counts, run  # noqa: E402
from eval import COLORS, correct_counts, mean_and_band, pass_at_k, svg_chart, svg_figure  # noqa: E402

RESULTS = os.path.join(HERE, "reasoning_task")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TASK_SETTINGS = ["--instruction", INSTRUCTION]
CANDIDATES = {  # name: (round, task flags, training-only flags); a round runs only when no earlier task was kept
    "add_sub_2digit": (1, ["--digits", "2", "--operations", "+-", "--max_new_tokens", "128"], []),
    "add_2digit": (1, ["--digits", "2", "--operations", "+", "--max_new_tokens", "128"], []),
    "mixed_2digit": (1, ["--digits", "2", "--operations", "+-*", "--max_new_tokens", "128"], []),
    # round 2, added when round 1's GRPO runs sampled at T = 1 were 56-81% truncated at 128 tokens
    "add_2digit_192": (2, ["--digits", "2", "--operations", "+", "--max_new_tokens", "192"], []),
    "add_sub_2digit_192": (2, ["--digits", "2", "--operations", "+-", "--max_new_tokens", "192"], []),
    # round 3, added when round 2's GRPO runs at T = 1 were still right in only a few % of their samples:
    # the same tasks, sampled in training at the evaluation's temperature (the base evaluations are shared)
    "add_2digit_192_t06": (3, ["--digits", "2", "--operations", "+", "--max_new_tokens", "192"],
                           ["--temperature", "0.6"]),
    "add_sub_2digit_192_t06": (3, ["--digits", "2", "--operations", "+-", "--max_new_tokens", "192"],
                               ["--temperature", "0.6"]),
}


def flags_of(name):
    """The task's flags, for eval.py and minigrpo.py alike."""
    return CANDIDATES[name][1]


def training_flags_of(name):
    """The flags of the task's training runs: its task flags and its training-only ones."""
    return CANDIDATES[name][1] + CANDIDATES[name][2]


def regime_dir(name):
    """Where the base model's evaluation on a task lives: shared by the candidates with the same task flags."""
    first = next(n for n in CANDIDATES if flags_of(n) == flags_of(name))
    return os.path.join(RESULTS, "regime", first)


PROBLEMS, N = 48, 32
METHODS = {  # name: (label, minigrpo flags, seeds)
    "grpo": ("GRPO", ["--entropy_alpha", "0"], 5),
    "entropy_adv": ("GRPO + entropy advantage", ["--entropy_alpha", "0.4", "--entropy_kappa", "2"], 5),
    "entropy_reg": ("GRPO + entropy regularization (illustration)", ["--entropy_alpha", "0"], 2),  # + the sweep's coef
    "ppo": ("PPO (illustration)", ["--algorithm", "ppo", "--entropy_alpha", "0"], 2),
    "ppo_entropy_adv": ("PPO + entropy advantage (illustration)",
                        ["--algorithm", "ppo", "--entropy_alpha", "0.1", "--entropy_kappa", "2"], 2),
}
# entropy regularization's coefficient: a sweep on seed 0, the highest training accuracy over the last 5
# steps wins (the reward it is trained on; the evaluation never chooses)
ENTROPY_COEFS = ["0.001", "0.003", "0.01"]
ENTROPY_SAMPLES = ["--limit", "16", "--n", "8"]
TRAIN_SETTINGS = ["--steps", "20", "--eval_every", "10", "--eval_problems", "32", "--save_every", "5"]
CURVES = [("reward/accuracy", "training accuracy"), ("rollout/response_length", "response length (tokens)"),
          ("policy/entropy", "entropy (nats)"), ("policy/psi_over_abs_adv", "psi / |A|"),
          ("policy/cov_logp_shaped_adv", "cov(log pi, A used)"), ("policy/cov_in_state", "the same, state by state")]
COVARIANCES = [("policy/cov_logp_shaped_adv", "pooled over the batch"), ("policy/cov_in_state", "state by state")]


def having(runs, key):
    """The runs whose rows log key (policy/cov_in_state exists from commit 10bdabc on)."""
    return [run for run in runs if key in run[0]]


def evaluate(model, task_flags, out):
    """eval.py on the task's held-out problems; skipped when out/summary.json exists."""
    if os.path.isfile(os.path.join(out, "summary.json")):
        return
    os.makedirs(out, exist_ok=True)
    run([sys.executable, "eval.py", "--model", model, *task_flags, *TASK_SETTINGS, "--limit", str(PROBLEMS),
         "--n", str(N), "--output_dir", out], os.path.join(out, "eval.log"))


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return next(iter(json.load(f).values()))


def run_dir(runs_dir, name, seed, coef=None):
    return os.path.join(runs_dir, f"{name}_seed{seed}" if coef is None else f"{name}_coef{coef}_seed{seed}")


def train(name, seed, task_flags, runs_dir, coef=None):
    """One minigrpo run (entropy_reg: with --entropy_coef coef); its run_config.json, metrics.jsonl and
    eval_samples.jsonl copied to RESULTS/runs/NAME_seedS (eval.py --report draws them). Returns the metrics
    rows."""
    label, flags, _ = METHODS[name]
    flags = flags + (["--entropy_coef", coef] if coef is not None else [])
    out = run_dir(runs_dir, name, seed, coef)
    if not os.path.isdir(os.path.join(out, "final")):
        os.makedirs(out, exist_ok=True)
        run([sys.executable, "minigrpo.py", *task_flags, *TASK_SETTINGS, *TRAIN_SETTINGS, *flags, "--seed", str(seed),
             "--output_dir", out], os.path.join(out, "train.log"))
    tag = os.path.basename(out).rsplit("_seed", 1)[0]
    for kept in [f"{tag}_seed{seed}"] + ([f"{name}_seed{seed}"] if coef is not None else []):  # coef: also
        os.makedirs(os.path.join(RESULTS, "runs", kept), exist_ok=True)  # under the method's own name
        for file in ("run_config.json", "metrics.jsonl", "eval_samples.jsonl"):
            if os.path.isfile(os.path.join(out, file)):
                shutil.copy(os.path.join(out, file), os.path.join(RESULTS, "runs", kept, file))
    return read_metrics(tag, seed)


def entropy_coef_sweep(task, runs_dir):
    """entropy_reg on seed 0 with each of ENTROPY_COEFS; writes sweep.md, returns the chosen coefficient."""
    lines = ["GRPO + entropy regularization, seed 0, training metrics (mean of the last 5 steps). Chosen: the",
             "highest training accuracy (ties: the smaller coefficient).", "",
             "| entropy_coef | training accuracy | entropy | response length |", "|---|---|---|---|"]
    last5 = {}
    for coef in ENTROPY_COEFS:
        rows = train("entropy_reg", 0, training_flags_of(task), runs_dir, coef)[-5:]
        last5[coef] = {k: mean(r[k] for r in rows) for k in ("reward/accuracy", "policy/entropy",
                                                              "rollout/response_length")}
        m = last5[coef]
        lines.append(f"| {coef} | {m['reward/accuracy']:.3f} | {m['policy/entropy']:.3f} | "
                     f"{m['rollout/response_length']:.1f} |")
    chosen = max(ENTROPY_COEFS, key=lambda c: (last5[c]["reward/accuracy"], -float(c)))
    train("entropy_reg", 0, training_flags_of(task), runs_dir, chosen)  # its metrics under the method's name
    lines += ["", f"Chosen: {chosen}"]
    with open(os.path.join(RESULTS, "sweep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return chosen


def training_rows(path):
    """The per-step training rows of a metrics.jsonl (not the evaluation-only lines)."""
    with open(path) as f:
        return [r for r in map(json.loads, f) if "reward/accuracy" in r]


def read_metrics(name, seed):
    return training_rows(os.path.join(RESULTS, "runs", f"{name}_seed{seed}", "metrics.jsonl"))


def rise(rows):
    return last5(rows, "reward/accuracy") - first5(rows, "reward/accuracy")


def choose_task(runs_dir):
    """The regime stage: evaluate the candidates round by round, apply the rule, write regime.md; the chosen
    name or None."""
    lines = ["Base model (SmolLM2-135M-Instruct), eval.py: n = 32 samples on 48 held-out problems, temperature 0.6,",
             f"top-p 0.95, instruction \"{INSTRUCTION}\".", "",
             "Rule, fixed before any method was compared: base Pass@1 >= 0.05 and Pass@32 <= 0.85; among those, the",
             "highest base Pass@1 first, kept when plain GRPO (seed 0) raises its training accuracy by >= 0.10",
             "(mean of the last 5 steps minus the first 5). A round runs only when no task of an earlier round was",
             "kept: round 1 with 128 new tokens, round 2 with 192, round 3 as round 2 but sampled in training at",
             "temperature 0.6 instead of 1.0 (its base evaluations are round 2's). Training flags: beyond the task's.", "",
             "| round | task | flags | training flags | Pass@1 | Pass@8 | Pass@32 | tokens | truncated | qualifies "
             "| GRPO rise |", "|---" * 11 + "|"]
    measured, qualifying, chosen, rises = {}, [], None, {}
    for round_ in sorted({r for r, _, _ in CANDIDATES.values()}):
        names = [n for n, (r, _, _) in CANDIDATES.items() if r == round_]
        for name in names:
            evaluate("smollm2", flags_of(name), regime_dir(name))
            measured[name] = summary(regime_dir(name))
        this_round = sorted((n for n in names if measured[n]["pass@k"]["1"] >= 0.05
                             and measured[n]["pass@k"]["32"] <= 0.85), key=lambda n: -measured[n]["pass@k"]["1"])
        qualifying += this_round
        for name in this_round:
            kept = os.path.join(RESULTS, "regime", name, "grpo_seed0_metrics.jsonl")  # committed per task
            if not os.path.isfile(kept):  # else decided already, maybe on another machine: not run again
                train("grpo", 0, training_flags_of(name), os.path.join(runs_dir, name))
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                shutil.copy(os.path.join(run_dir(os.path.join(runs_dir, name), "grpo", 0), "metrics.jsonl"), kept)
            rises[name] = rise(training_rows(kept))
            if rises[name] >= 0.10:
                chosen = name
                break
        if chosen:
            break
    for name, s in measured.items():
        p = s["pass@k"]
        lines.append(f"| {CANDIDATES[name][0]} | {name} | `{' '.join(flags_of(name))}` | "
                     f"{' '.join(CANDIDATES[name][2]) or '-'} | {p['1']:.3f} | {p['8']:.3f} | "
                     f"{p['32']:.3f} | {s['mean_tokens']:.0f} | {s['truncated_frac']:.2f} | "
                     f"{'yes' if name in qualifying else 'no'} | " + (f"{rises[name]:+.2f}" if name in rises else "-")
                     + " |")
    lines += ["", f"Chosen: {chosen or 'none kept'}"]
    with open(os.path.join(RESULTS, "regime.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return chosen


def chosen_coef():
    """The sweep's choice from sweep.md (None when the sweep has not run)."""
    path = os.path.join(RESULTS, "sweep.md")
    return open(path).read().rsplit("Chosen: ", 1)[1].strip() if os.path.isfile(path) else None


def entropy_law(runs, key):
    """Does the covariance key (of log pi and A used) at step t predict the entropy change from step t to
    t + 1? The law of policy-gradient updates: entropy falls where the covariance is positive, rises where
    negative. runs: one list of metric rows per seed. Returns (Pearson r of cov_t and H_{t+1} - H_t, the
    share of steps whose entropy moved as the law predicts (down where cov > 0, up where cov < 0), the
    number of steps with cov != 0)."""
    pairs = [(a[key], b["policy/entropy"] - a["policy/entropy"])
             for run in runs for a, b in zip(run, run[1:]) if a[key] != 0]
    if len(pairs) < 3:
        return float("nan"), float("nan"), len(pairs)
    return pearson(pairs), mean((x > 0) == (y < 0) for x, y in pairs), len(pairs)


def pearson(pairs):
    """Pearson's r of (x, y) pairs; nan when either does not vary."""
    xs, ys = zip(*pairs)
    mx, my = mean(xs), mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def last5(run, key):
    return mean(r[key] for r in run[-5:])


def first5(run, key):
    return mean(r[key] for r in run[:5])


def verdict(values, expected_sign):
    """A claim's measured value: 'mean +- half-width' and whether the 95% interval says the paper's direction."""
    if not values:
        return "-", "not measured yet"
    m, h = interval(values)
    if len(values) < 2:
        word = "one seed: no interval"
    elif m - h > 0 or m + h < 0:
        word = "the paper's direction" if (m > 0) == (expected_sign > 0) else "the opposite direction"
    else:
        word = "not resolved: the interval holds 0"
    return (f"{m:+.3f} +- {h:.3f} ({len(values)} seeds)" if len(values) > 1 else f"{m:+.3f} (1 seed)"), word


def paper_checks(curves, per_seed, ks):
    """The paper's claims about the entropy advantage (EA), each against this experiment's number, paired by
    seed where both methods ran it; curves: {method: [(seed, metric rows)]}. Returns markdown lines."""
    grpo, ea = dict(curves.get("grpo", [])), dict(curves.get("entropy_adv", []))
    seeds = sorted(set(grpo) & set(ea))
    paired = lambda fn: [fn(ea[s]) - fn(grpo[s]) for s in seeds]  # noqa: E731
    k = ks[-1]
    both = sorted(set(per_seed.get("grpo", {})) & set(per_seed.get("entropy_adv", {})))
    claims = [  # (claim, what is measured, values, the sign the paper expects)
        ("EA lengthens responses", "EA - GRPO, response length (tokens), last 5 steps",
         paired(lambda run: last5(run, "rollout/response_length")), +1),
        ("EA keeps Pass@K at large K", f"EA - GRPO, Pass@{k}",
         [per_seed["entropy_adv"][s][k] - per_seed["grpo"][s][k] for s in both], +1),
        ("EA lowers entropy faster", "EA - GRPO, entropy (nats), last 5 steps",
         paired(lambda run: last5(run, "policy/entropy")), -1),
        ("psi/\\|A\\| falls during training", "EA, psi/\\|A\\| of the last 5 steps - the first 5",
         [last5(run, "policy/psi_over_abs_adv") - first5(run, "policy/psi_over_abs_adv") for run in ea.values()], -1),
    ]
    lines = ["", "The paper's claims, measured (mean +- 95% t-interval across seeds; EA = entropy advantage):", "",
             "| claim | measured | value | the 95% interval says |", "|---|---|---|---|"]
    for claim, what, values, sign in claims:
        lines.append(f"| {claim} | {what} | " + " | ".join(verdict(values, sign)) + " |")
    lines += ["", "The covariance law, per method and covariance: pooled over the batch's tokens (cov_logp_shaped_adv)",
              "or state by state (cov_in_state, the law's own; logged from commit 10bdabc on, so from fewer seeds).",
              "Over the run: its mean over all steps and seeds predicts the entropy falls (> 0) or rises (< 0);",
              "observed: the entropy of the first 5 steps -> the last 5, over the same seeds. Step by step: cov at",
              "step t against the entropy change from step t to t + 1, pooled over seeds (each step's entropy is",
              "measured on its own fresh samples, so it is noisy).", "",
              "| method | covariance | seeds | mean cov | predicted | entropy, first 5 -> last 5 | observed | steps "
              "| Pearson r (law: < 0) | steps moving as the law predicts |", "|---" * 10 + "|"]
    for name, runs in curves.items():
        for key, how in COVARIANCES:
            logged = having([run for _, run in runs], key)
            if not logged:
                continue
            r, agree, n = entropy_law(logged, key)
            cov = mean(row[key] for run in logged for row in run)
            before = mean(first5(run, "policy/entropy") for run in logged)
            after = mean(last5(run, "policy/entropy") for run in logged)
            lines.append(f"| {METHODS[name][0]} | {how} | {len(logged)} | {cov:+.4f} | {'falls' if cov > 0 else 'rises'} "
                         f"| {before:.3f} -> {after:.3f} | {'falls' if after < before else 'rises'} | {n} | {r:+.2f} "
                         f"| {agree:.0%} |")
    lines += ["", "Run by run, every method together: a run's mean covariance against its entropy change (last 5 steps",
              "minus the first 5).", "",
              "| covariance | runs | Pearson r (law: < 0) | runs whose entropy moved as the law predicts |", "|---|---|---|---|"]
    for key, how in COVARIANCES:
        pairs = [(mean(row[key] for row in run), last5(run, "policy/entropy") - first5(run, "policy/entropy"))
                 for runs in curves.values() for run in having([run for _, run in runs], key)]
        if len(pairs) >= 3:
            lines.append(f"| {how} | {len(pairs)} | {pearson(pairs):+.2f} | "
                         f"{sum((x > 0) == (y < 0) for x, y in pairs)} of {len(pairs)} |")
    return lines


def entropy_reports(task, runs_dir):
    """eval.py --entropy_report on a small sample (ENTROPY_SAMPLES) of the base model and of seed 0 of each
    finished method; skipped where entropy_tokens.json exists."""
    models = {"base": "smollm2"}
    models.update({name: os.path.join(run_dir(runs_dir, name, 0, chosen_coef() if name == "entropy_reg" else None),
                                      "final") for name in METHODS})
    for name, model in models.items():
        out = os.path.join(RESULTS, "entropy", name)
        if os.path.isfile(os.path.join(out, "entropy_tokens.json")) or not (model == "smollm2" or os.path.isdir(model)):
            continue
        os.makedirs(out, exist_ok=True)
        run([sys.executable, "eval.py", "--model", model, *flags_of(task), *TASK_SETTINGS, *ENTROPY_SAMPLES,
             "--entropy_report", "--output_dir", out], os.path.join(out, "eval.log"))


def entropy_table(min_count=20, shown=5):
    """Markdown lines: per model of entropy/, the mean token entropy and the highest- and lowest-entropy tokens
    seen at least min_count times."""
    lines = ["", f"Token entropy at T = 1 (eval.py --entropy_report, {' '.join(ENTROPY_SAMPLES)}, seed 0 of each method; mean "
             f"nats of tokens seen >= {min_count} times):", "",
             "| model | mean entropy | highest-entropy tokens | lowest-entropy tokens |", "|---|---|---|---|"]
    for name in ["base", *METHODS]:
        path = os.path.join(RESULTS, "entropy", name, "entropy_tokens.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            stats = next(iter(json.load(f).values()))  # {token: [mean entropy, count]}, highest first
        overall = sum(h * c for h, c in stats.values()) / sum(c for _, c in stats.values())
        common = [(t, h) for t, (h, c) in stats.items() if c >= min_count]
        show = lambda tokens: ", ".join(f"`{t!r}` {h:.2f}".replace("|", "\\|") for t, h in tokens)  # noqa: E731
        label = "base model" if name == "base" else METHODS[name][0]
        lines.append(f"| {label} | {overall:.2f} | {show(common[:shown])} | {show(common[::-1][:shown])} |")
    return lines if len(lines) > 5 else []


def regraded_counts(path):
    """Correct completions per problem, graded again by the current math_reward from samples.jsonl (which keeps
    every completion and gold answer). The runs before the grader's fix were graded by a math_reward that
    let Math-Verify add up a boxed expression, so that \\boxed{35 + 77}, the question restated, was right."""
    with open(path) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r["correct"] = int(mg.math_reward(r["completion"], r["gold_answer"]))
    return correct_counts(records)


def regrading_table(runs, ks):
    """Markdown lines: of runs [(label, samples.jsonl, counts graded again)], those whose Pass@1 or Pass@max
    changed when graded again, then and now."""
    lines = ["", "Graded at evaluation -> graded again by the fixed grader (a boxed expression such as "
             "`\\boxed{35 + 77}` is no longer an answer); models not listed did not change:", "",
             f"| model | Pass@1 | Pass@{ks[-1]} | completions graded differently |", "|---|---|---|---|"]
    for label, path, now in runs:
        then = per_problem_counts(path)
        if then != now:
            p = [[mean(pass_at_k(N, c, k) for c in counts) for k in (1, ks[-1])] for counts in (then, now)]
            lines.append(f"| {label} | {p[0][0]:.3f} -> {p[1][0]:.3f} | {p[0][1]:.3f} -> {p[1][1]:.3f} | "
                         f"{sum(then) - sum(now)} of {N * len(then)} |")
    return lines


def cell(values, fmt="{:.3f}"):
    """'mean ± half-width of the 95% interval' across seeds; the mean alone for one seed."""
    m, h = interval(values)
    return fmt.format(m) + (" ± " + fmt.format(h).lstrip("+") if len(values) > 1 else "")


def report(task):
    ks = [2**i for i in range(int(math.log2(N)) + 1)]
    base_samples = os.path.join(regime_dir(task), "samples.jsonl")
    base = regraded_counts(base_samples)
    lines = [f"Task {task} (`{' '.join(training_flags_of(task))}`), n = {N} on {PROBLEMS} held-out problems. Methods: mean over "
             "seeds +- the 95% t-interval across seeds; base model: across problems.", "",
             "| model | seeds | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 2) + "|",
             "| base model | - | " + " | ".join("{:.3f} ± {:.3f}".format(*pass_at_k_across_problems(base, k)) for k in ks)
             + " |"]
    per_seed, regraded = {}, [("base model", base_samples, base)]
    for name, (label, _, seeds) in METHODS.items():
        samples = {s: os.path.join(RESULTS, "eval", f"{name}_seed{s}", "samples.jsonl") for s in range(seeds)}
        done = [s for s in range(seeds) if os.path.isfile(samples[s])]
        counts = {s: regraded_counts(samples[s]) for s in done}  # graded once per run
        regraded += [(f"{label}, seed {s}", samples[s], counts[s]) for s in done]
        per_seed[name] = {s: {k: mean(pass_at_k(N, c, k) for c in counts[s]) for k in ks} for s in done}
        if done:
            cells = [cell([per_seed[name][s][k] for s in done]) for k in ks]
            lines.append(f"| {label} | {len(done)} | " + " | ".join(cells) + " |")
    lines += per_seed_table(per_seed, ks)
    lines += regrading_table(regraded, ks)
    paired = sorted(set(per_seed["grpo"]) & set(per_seed["entropy_adv"]))
    if paired:
        lines += ["", f"Paired difference, entropy advantage minus GRPO, same seed ({seed_count(len(paired))}):", "",
                  "| | " + " | ".join(f"Pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|",
                  "| difference | " + " | ".join(cell([per_seed["entropy_adv"][s][k] - per_seed["grpo"][s][k]
                                                      for s in paired], "{:+.3f}") for k in ks) + " |"]
    lines += ["", "Training metrics, mean over seeds: first 5 steps -> last 5 steps.", "",
              "| method | seeds | " + " | ".join(t.replace("|", "\\|") for _, t in CURVES) + " |", "|---" * (len(CURVES) + 2) + "|"]
    seeded = {}  # name: [(seed, metric rows)] of the finished runs
    for name, (label, _, seeds) in METHODS.items():
        runs = [(s, read_metrics(name, s)) for s in range(seeds)
                if os.path.isfile(os.path.join(RESULTS, "runs", f"{name}_seed{s}", "metrics.jsonl"))]
        runs = [(s, r) for s, r in runs if len(r) == int(TRAIN_SETTINGS[1])]
        if not runs:
            continue
        seeded[name] = runs
        cells = [trend(having([run for _, run in runs], key), key, len(runs)) for key, _ in CURVES]
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += paper_checks(seeded, per_seed, ks)

    def stored(name, seed):
        """Pass@max from the grades stored at evaluation (the grader the run was trained with)."""
        path = os.path.join(RESULTS, "eval", f"{name}_seed{seed}", "samples.jsonl")
        return mean(pass_at_k(N, c, ks[-1]) for c in per_problem_counts(path))

    then = [stored("entropy_adv", s) - stored("grpo", s) for s in paired]
    lines += ["", f"The claims' Pass@{ks[-1]} row rests on the fixed grader: graded at evaluation, by the grader the "
              f"runs were trained with, the difference is {cell(then, '{:+.3f}')}. Its replication on seeds 5-9, "
              "trained and graded with the fixed grader (replication.md, under the rule in REPLICATION.md): "
              f"{replication_report()}."]
    lines += entropy_table()
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "results.md"), "w") as f:
        f.write(text)
    print(text)
    plot({name: [run for _, run in runs] for name, runs in seeded.items()})
    plot_passk(ks, [pass_at_k_across_problems(base, k) for k in ks], per_seed)
    core = [os.path.join(RESULTS, "runs", f"{name}_seed{s}") for name in ("grpo", "entropy_adv")
            for s in range(10)]  # the page: GRPO against the entropy advantage, a band over the ten seeds
    core = [folder for folder in core if os.path.isdir(folder)]
    if core:
        subprocess.run([sys.executable, "eval.py", "--report", *core, "--output_dir", RESULTS], check=True, cwd=ROOT)


def per_seed_table(per_seed, ks):
    """Markdown lines: each evaluated run's Pass@1, Pass@max and mean completion length, seed by seed."""
    lines = ["", "Per run (eval.py; tokens: mean completion length):", "",
             "| method | seed | Pass@1 | " + f"Pass@{ks[-1]} | tokens | truncated |", "|---|---|---|---|---|---|"]
    for name, seeds in per_seed.items():
        for s in sorted(seeds):
            run = summary(os.path.join(RESULTS, "eval", f"{name}_seed{s}"))
            lines.append(f"| {METHODS[name][0]} | {s} | {seeds[s][1]:.3f} | {seeds[s][ks[-1]]:.3f} | "
                         f"{run['mean_tokens']:.0f} | {run['truncated_frac']:.2f} |")
    return lines


def pass_at_k_across_problems(counts, k):
    """Mean and 95% half-width of Pass@k across problems, from their correct counts out of N."""
    return interval([pass_at_k(N, c, k) for c in counts])


def seed_count(n):
    return f"{n} seed" + ("s" if n != 1 else "")


def plot_passk(ks, base, per_seed):
    """passk.svg: left, Pass@k of the base model and each method (mean and 95% interval band across seeds;
    the base model's across problems); right, the per-seed paired difference, entropy advantage minus GRPO."""
    def band(rows):  # [(mean, half-width)] by k -> points, band
        return [(k, m) for k, (m, _) in zip(ks, rows)], [(k, m - h, m + h) for k, (m, h) in zip(ks, rows)]

    series = [("base model", COLORS[0], *band(base))]
    for i, (name, seeds) in enumerate(per_seed.items(), start=1):
        if seeds:
            label = f"{METHODS[name][0].replace(' (illustration)', '*')} ({seed_count(len(seeds))})"
            series.append((label, COLORS[i], *band([interval([seeds[s][k] for s in seeds]) for k in ks])))
    paired = sorted(set(per_seed["grpo"]) & set(per_seed["entropy_adv"]))
    diffs = [interval([per_seed["entropy_adv"][s][k] - per_seed["grpo"][s][k] for s in paired]) for k in ks]
    charts = [svg_chart(f"Pass@k, n = {N} on {PROBLEMS} held-out problems; * = illustration", series, 460, 300,
                        log2_x=True, x_label="k", y_range=(0.0, 1.0))]
    if paired:
        charts.append(svg_chart(f"entropy advantage - GRPO, paired by seed ({seed_count(len(paired))})",
                                [("difference, 95% interval", COLORS[2], *band(diffs)),
                                 ("0", "#999999", [(ks[0], 0.0), (ks[-1], 0.0)], None)], 460, 300, log2_x=True,
                                x_label="k"))
    with open(os.path.join(RESULTS, "passk.svg"), "w") as f:
        f.write(svg_figure(charts, [(label, color) for label, color, _, _ in series], columns=2,
                           chart_size=(460, 300)))


def trend(runs, key, of):
    """'first 5 -> last 5' of key, mean over runs; how many runs, when fewer than of."""
    if not runs:
        return "-"
    return (f"{mean(first5(run, key) for run in runs):.3f} -> {mean(last5(run, key) for run in runs):.3f}"
            + (f" ({seed_count(len(runs))})" if len(runs) < of else ""))


def plot(curves):
    """training_curves.svg: each metric of CURVES per step, each method's mean over its seeds and the band
    from its lowest to its highest seed."""
    if not curves:
        return
    charts, legend = [], []
    for i, name in enumerate(curves):
        legend.append((f"{METHODS[name][0].replace(' (illustration)', '*')} ({seed_count(len(curves[name]))})",
                       COLORS[i]))
    for key, title in CURVES:
        series = []
        for (label, color), runs in zip(legend, curves.values()):
            runs = having(runs, key)
            if runs:
                series.append((label, color, *mean_and_band([{r["step"]: r[key] for r in run} for run in runs])))
        charts.append(svg_chart(title, series))
    legend.append(("mean over seeds; band: min to max; * = illustration (2 seeds); the last panel from commit "
                   "10bdabc on (fewer seeds)", "#ffffff"))
    with open(os.path.join(RESULTS, "training_curves.svg"), "w") as f:
        f.write(svg_figure(charts, legend))


REPLICATION_SEEDS = range(5, 10)


def provenance(name, seed, started):
    """Write eval/NAME_seedS/provenance.json: the commit and CPU a replication run ran on (not overwritten)."""
    path = os.path.join(RESULTS, "eval", f"{name}_seed{seed}", "provenance.json")
    if os.path.isfile(path):
        return
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True).stdout.strip()
    with open(path, "w") as f:
        json.dump({"run": f"{name}_seed{seed}", "commit": commit, "torch_cpu_capability": cpu,
                   "wall_s_train_and_eval": round(time.time() - started, 1)}, f, indent=2)


def scrub_paths(folder, path, name):
    """Replace every appearance of this machine's path (a run's folder) by the run's name in the text files of
    folder, each rewritten through a temporary file."""
    for file in os.listdir(folder):
        full = os.path.join(folder, file)
        if not file.endswith((".json", ".jsonl", ".log", ".md")):
            continue
        with open(full) as f:
            text = f.read()
        if path in text:
            with open(full + ".tmp", "w") as f:
                f.write(text.replace(path, name))
            os.replace(full + ".tmp", full)


def replicate(task, runs_dir):
    """The replication's runs, seed by seed (GRPO, then the entropy advantage; each trained, then evaluated),
    skipping what is done."""
    for seed in REPLICATION_SEEDS:
        for name in ("grpo", "entropy_adv"):
            out = os.path.join(RESULTS, "eval", f"{name}_seed{seed}")
            if os.path.isfile(os.path.join(out, "provenance.json")):
                print(f"skip {name} seed {seed}: evaluated in {RESULTS} (--results_dir DIR reruns elsewhere)")
                continue
            started = time.time()
            train(name, seed, training_flags_of(task), runs_dir)
            final = os.path.join(run_dir(runs_dir, name, seed), "final")
            evaluate(final, flags_of(task), out)
            scrub_paths(out, final, f"{name}_seed{seed}")
            scrub_paths(out, ROOT + os.sep, "")  # the output folder's own path, repository-relative
            provenance(name, seed, started)


def length_split(completion, answer):
    """REPLICATION.md's split of a completion at the first statement of its final answer: (characters up to
    the end of the first place the answer's text appears not inside a longer number, characters after it,
    whether it was found). Not found (or no answer): the whole completion counts as before."""
    if answer:
        found = re.search(r"(?<![\d.])" + re.escape(answer) + r"(?!\d)", completion)
        if found:
            return found.end(), len(completion) - found.end(), True
    return len(completion), 0, False


def length_split_of(path):
    """Mean characters before and after the first statement of the answer over a samples.jsonl, the share of
    all characters that come after, and the share of completions where no statement was found."""
    with open(path) as f:
        splits = [length_split(r["completion"], r["extracted_answer"]) for r in map(json.loads, f)]
    before, after, found = zip(*splits)
    return {"before": mean(before), "after": mean(after), "after_share": sum(after) / max(sum(before) + sum(after), 1),
            "not_found": 1 - mean(found)}


def sign_test(differences):
    """Two-sided sign test p-value of the nonzero differences (exact binomial, p = 1/2)."""
    signs = [d > 0 for d in differences if d != 0]
    n, k = len(signs), max(sum(signs), len(signs) - sum(signs))
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n) if n else 1.0


def replication_verdict(differences):
    """REPLICATION.md's primary verdict on the paired Pass@32 differences of the new seeds."""
    if len(differences) < len(REPLICATION_SEEDS):
        return f"pending: {len(differences)} of {len(REPLICATION_SEEDS)} pairs evaluated"
    m, h = interval(differences)
    if m - h > 0:
        return "replicated: the 95% interval lies above 0"
    if m + h < 0:
        return "contradicted: the 95% interval lies below 0"
    return "not replicated: the 95% interval holds 0"


def replication_report():
    """replication.md: the replication's verdict and secondary measures (REPLICATION.md), then the ten seeds
    together. Pass@k of the new seeds from the grades stored at evaluation; of seeds 0-4, re-graded."""
    k = N
    passk, pass1, rows = {}, {}, {}  # (name, seed): Pass@k; Pass@1; metric rows
    for name in ("grpo", "entropy_adv"):
        for seed in range(10):
            samples = os.path.join(RESULTS, "eval", f"{name}_seed{seed}", "samples.jsonl")
            if os.path.isfile(samples) and (seed < 5 or os.path.isfile(os.path.join(os.path.dirname(samples),
                                                                                     "provenance.json"))):
                counts = per_problem_counts(samples) if seed >= 5 else regraded_counts(samples)
                passk[name, seed] = mean(pass_at_k(N, c, k) for c in counts)
                pass1[name, seed] = mean(pass_at_k(N, c, 1) for c in counts)
                rows[name, seed] = read_metrics(name, seed)

    def paired(seeds, value=lambda name, seed: passk[name, seed]):
        """The seeds both methods have, and the differences EA - GRPO of value on them."""
        both = [s for s in seeds if ("grpo", s) in passk and ("entropy_adv", s) in passk]
        return both, [value("entropy_adv", s) - value("grpo", s) for s in both]

    new, diffs = paired(REPLICATION_SEEDS)
    arrived = [f"| {METHODS[n][0]} | {s} | {pass1[n, s]:.3f} | {passk[n, s]:.3f} | "
               f"{read_metrics(n, s)[-1]['rollout/response_length']:.0f} |"
               for n, s in sorted(passk, key=lambda x: (x[1], x[0] != "grpo")) if s in REPLICATION_SEEDS]
    lines = ["# Replication: the paired Pass@32, seeds 5-9 (the rule: REPLICATION.md)", "",
             f"New runs evaluated ({len(arrived)} of {2 * len(REPLICATION_SEEDS)}):", "",
             f"| method | seed | Pass@1 | Pass@{k} | training length, last step |",
             "|---|---|---|---|---|", *arrived, "",
             f"Primary claim, entropy advantage minus GRPO, Pass@{k}, same seed, grades stored at evaluation:", "",
             "| seed | GRPO | GRPO + entropy advantage | difference |", "|---|---|---|---|"]
    lines += [f"| {s} | {passk['grpo', s]:.3f} | {passk['entropy_adv', s]:.3f} | {d:+.3f} |" for s, d in zip(new, diffs)]
    outcome = replication_verdict(diffs)  # what report() quotes in results.md
    if diffs:
        m, h = interval(diffs)
        spread = f"± {h:.3f} (95% t-interval, {len(diffs)} pairs)" if len(diffs) > 1 else "(one pair: no interval)"
        outcome = f"{m:+.3f} ± {h:.3f} over {len(diffs)} pairs, {outcome}"
        lines += ["", f"Mean difference {m:+.3f} {spread}; "
                      f"{sum(d > 0 for d in diffs)} of {len(diffs)} positive, sign test p = {sign_test(diffs):.4f} "
                      "(two-sided).", "", f"**Verdict: {replication_verdict(diffs)}.**"]
    else:
        lines += ["", f"**Verdict: {replication_verdict(diffs)}.**"]
    _, ones = paired(new, lambda name, seed: pass1[name, seed])
    if ones:
        lines += ["", f"Outside the rule (an observation, not a claim): Pass@1, EA - GRPO, new seeds: "
                      f"{cell(ones, '{:+.3f}')}, {sum(d > 0 for d in ones)} of {len(ones)} positive, "
                      f"sign test p = {sign_test(ones):.4f}."]
    lines += ["", "Secondary claims, new seeds (mean ± 95% t-interval; never the verdict):", "",
              "| claim | measured | value |", "|---|---|---|"]
    secondary = [("EA lengthens responses", "EA - GRPO, response length in training (tokens), last 5 steps",
                  lambda n, s: last5(rows[n, s], "rollout/response_length")),
                 ("EA lowers entropy faster", "EA - GRPO, entropy in training (nats), last 5 steps",
                  lambda n, s: last5(rows[n, s], "policy/entropy"))]
    falls = [last5(rows["entropy_adv", s], "policy/psi_over_abs_adv") - first5(rows["entropy_adv", s],
             "policy/psi_over_abs_adv") for s in REPLICATION_SEEDS if ("entropy_adv", s) in rows]
    per_seed = []  # each secondary claim's value seed by seed
    for claim, what, fn in secondary:
        _, values = paired(new, fn)
        per_seed.append(values)
        lines.append(f"| {claim} | {what} | {cell(values, '{:+.3f}') if values else '-'} |")
    lines.append(f"| psi/\\|A\\| falls | EA, psi/\\|A\\| of the last 5 steps - the first 5 | "
                 f"{cell(falls, '{:+.3f}') if falls else '-'} |")
    if new and len(falls) == len(new):
        lines += ["", "The same, seed by seed:", "", "| seed | length | entropy | psi/\\|A\\| |", "|---|---|---|---|"]
        lines += [f"| {s} | {a:+.1f} | {b:+.3f} | {c:+.3f} |" for s, a, b, c in zip(new, *per_seed, falls)]
    lines += ["", "Response length split at the first statement of the final answer (evaluation samples, "
              "characters; REPLICATION.md defines it):", "",
              "| method | seed | before | after | share after | no statement found |", "|---|---|---|---|---|---|"]
    before = {}
    for name, seed in sorted(passk, key=lambda x: (x[0] != "grpo", x[1])):
        split = length_split_of(os.path.join(RESULTS, "eval", f"{name}_seed{seed}", "samples.jsonl"))
        before[name, seed] = split["before"]
        lines.append(f"| {METHODS[name][0]} | {seed} | {split['before']:.0f} | {split['after']:.0f} | "
                     f"{split['after_share']:.2f} | {split['not_found']:.2f} |")
    _, values = paired(new, lambda n, s: before[n, s])
    if values:
        lines += ["", f"EA - GRPO, characters before the answer, new seeds: {cell(values, '{:+.1f}')}."]
    every, diffs10 = paired(range(10))
    if diffs10:
        m, h = interval(diffs10)
        lines += ["", f"Secondary view, the seeds together ({len(every)} pairs: {', '.join(map(str, every))}): "
                      f"Pass@{k} difference {m:+.3f} ± {h:.3f}, {sum(d > 0 for d in diffs10)} of {len(diffs10)} "
                      f"positive, sign test p = {sign_test(diffs10):.4f}. Seeds 0-4 were trained with the old "
                      "grader's reward (which paid a boxed restated question) and are graded again by the fixed "
                      "one; seeds 5-9 were trained and graded with the fixed grader."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "replication.md"), "w") as f:
        f.write(text)
    print(text)
    return outcome


def main():
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "regime", "train", "eval", "entropy", "report", "replicate"],
                        default="all")
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "reasoning_task"))
    parser.add_argument("--results_dir", default=RESULTS, help="where metrics, evaluations and reports go")
    args = parser.parse_args()
    RESULTS = args.results_dir
    os.makedirs(RESULTS, exist_ok=True)
    task = choose_task(args.runs_dir)
    if task is not None and args.stage == "replicate":
        replicate(task, os.path.join(args.runs_dir, task))
        return
    if task is None or args.stage == "regime":
        return
    runs_dir = os.path.join(args.runs_dir, task)
    core = [(name, s) for s in range(METHODS["grpo"][2]) for name in ("grpo", "entropy_adv")]
    illustrations = [(name, s) for s in range(2) for name in ("entropy_reg", "ppo", "ppo_entropy_adv")]
    if args.stage in ("all", "train", "eval"):
        for name, seed in core + illustrations:  # seed by seed: a partial result already pairs the core methods
            coef = None
            if name == "entropy_reg":  # the sweep runs once, before the first entropy_reg run
                coef = chosen_coef() or (entropy_coef_sweep(task, runs_dir) if args.stage != "eval" else None)
                if coef is None:
                    continue
            done = os.path.isfile(os.path.join(RESULTS, "eval", f"{name}_seed{seed}", "summary.json"))
            if done and args.stage != "eval":
                print(f"skip {name} seed {seed}: evaluated in {RESULTS} (--results_dir DIR reruns elsewhere)")
            if args.stage != "eval" and not done:  # a run evaluated and committed is not trained again
                train(name, seed, training_flags_of(task), runs_dir, coef)
            final = os.path.join(run_dir(runs_dir, name, seed, coef), "final")
            if args.stage != "train" and os.path.isdir(final):
                evaluate(final, flags_of(task), os.path.join(RESULTS, "eval", f"{name}_seed{seed}"))
    if args.stage in ("all", "entropy"):
        entropy_reports(task, runs_dir)
    report(task)


if __name__ == "__main__":
    main()
