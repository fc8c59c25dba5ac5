"""eval.py: Pass@1 and Pass@K of one or more models, side by side.

Did RL raise Pass@1, and did the model keep solving problems given many tries (Pass@K at
large K), or did it only get sharper? Samples n completions per problem for each model,
grades them with minigrpo's grader, and prints one table.

  python eval.py --model smollm2 --model runs/minigrpo/final --n 32 --k 1,4,16,32
  python eval.py --model runs/minigrpo/final --greedy          # greedy accuracy, n = 1

Writes to --output_dir: samples.jsonl (one line per completion), summary.json (Pass@k for
every power of two up to n and each requested k), passk.png (when matplotlib is installed).
A killed evaluation, run again with the same arguments, keeps every generate call it had finished.

  python eval.py --model smollm2 --n 8 --entropy_report   # which tokens are the "forks"?
  python eval.py --report runs/minigrpo                    # a training run's page: what the model wrote

--entropy_report (the paper's section 2) also computes the entropy of the model's next-token
distribution (temperature 1) at every token of its own completions, prints the tokens with the
highest and lowest mean entropy, and writes entropy_tokens.json and entropy_report.html (a few
completions with each token colored by its entropy).

--report RUN_DIR writes RUN_DIR/report.html from a training run's metrics.jsonl and samples.jsonl:
the curves, then for a few steps (the first, three between, the last) every group's completions
with their rewards and advantages, and one group's tokens colored by entropy. It loads no model.
"""

import hashlib
import html
import json
import math
import os
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm import tqdm

import minigrpo as mg


def pass_at_k(n, c, k):
    """Unbiased Pass@k (Chen et al. 2021) from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} needs 1 <= k <= n={n}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def correct_counts(records):
    """Correct completions per problem, in problem order, from eval's sample records."""
    counts = {}
    for r in records:
        counts[r["problem_id"]] = counts.get(r["problem_id"], 0) + r["correct"]
    return [counts[i] for i in sorted(counts)]


def summarize(correct_counts, n, ks):
    """Mean Pass@k over problems for each k, plus Pass@1's standard error across problems."""
    per_problem_p1 = [c / n for c in correct_counts]
    m = len(per_problem_p1)
    mean_p1 = sum(per_problem_p1) / m
    variance = sum((p - mean_p1) ** 2 for p in per_problem_p1) / (m - 1) if m > 1 else 0.0
    return {
        "pass@k": {str(k): sum(pass_at_k(n, c, k) for c in correct_counts) / m for k in ks},
        "pass@1_stderr": math.sqrt(variance / m),
    }


# -----------------------------------------------------------------------------


def training_knob(name):
    """minigrpo.Config's own field for a knob evaluation shares with training: one default, one --help."""
    (shared,) = [f for f in dataclasses.fields(mg.Config) if f.name == name]
    return field(default=shared.default, metadata=shared.metadata)


@dataclass
class EvalConfig:
    model: Optional[str] = field(default=None, metadata={
        "action": "append", "help": "a model, as minigrpo's --model; repeat to compare"})
    dataset: str = training_knob("dataset")  # arithmetic: its held-out split
    split: str = mg.knob("test", "hub dataset split")
    question_field: str = training_knob("question_field")
    answer_field: str = training_knob("answer_field")
    digits: int = training_knob("digits")
    operations: str = training_knob("operations")
    instruction: str = training_knob("instruction")
    limit: int = mg.knob(500, "at most this many problems")
    n: int = mg.knob(32, "samples per problem")
    k: str = mg.knob("", "comma-separated k for the table (default: powers of two up to n)")
    temperature: float = mg.knob(0.6, "sampling temperature (the paper's 0.6); 0 is greedy")
    top_p: float = mg.knob(0.95, "nucleus sampling (the paper's 0.95)")
    greedy: bool = mg.knob(False, "greedy decoding: temperature 0, n = 1")
    max_new_tokens: int = training_knob("max_new_tokens")
    batch_size: int = mg.knob(64, "sequences per generate call")
    seed: int = mg.knob(0, "sampling seed, the same for every model")
    dtype: str = training_knob("dtype")
    device: str = training_knob("device")
    output_dir: str = mg.knob("runs/eval", "where samples.jsonl, summary.json, passk.png go")
    trust_remote_code: bool = training_knob("trust_remote_code")
    entropy_report: bool = mg.knob(False, "per-token entropy: high/low-entropy tokens and an HTML page")
    entropy_min_count: int = mg.knob(20, "entropy report: list only tokens seen this often")
    report: str = mg.knob("", "a training run's folder: write its page, RUN_DIR/report.html (curves, "
                              "completions, entropy colors), and nothing else")
    report_steps: str = mg.knob("", "--report: the steps to show, comma-separated (default: the first, "
                                    "three between, the last)")


# every numeric knob's range (minigrpo.BOUNDS for the knobs shared with training), checked lo <= x <= hi
BOUNDS = {**{name: mg.BOUNDS[name] for name in ("digits", "max_new_tokens", "seed")},
          "limit": (1, mg.MILLION, "1..10**6"), "n": (1, 10**5, "1..10**5"),
          "temperature": (0.0, mg.FINITE, ">= 0 and finite (0: greedy)"),
          "top_p": (mg.ABOVE_0, 1.0, "(0, 1]"),
          "batch_size": (1, mg.MILLION, "1..10**6"), "entropy_min_count": (1, 10**9, "1..10**9")}


def parse_args(argv=None):
    """EvalConfig from the command line, checked; args.k becomes a sorted list and args.problems is added."""
    args = mg.parse_dataclass(EvalConfig, argv)
    if args.report:
        return check_report_args(args)
    if args.greedy:
        args.temperature, args.n = 0.0, 1
    try:
        args.k = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise mg.UsageError(f"--k must be comma-separated integers (got {args.k!r})")
    mg.check_bounds(args, BOUNDS)
    mg.check([
        (not args.model, "at least one --model is required"),
        (any(k < 1 or k > args.n for k in args.k), f"every k must be in 1..n={args.n} (got {args.k})"),
        (args.temperature == 0 and args.n > 1, "greedy decoding (temperature 0) gives one answer: use --n 1"),
        (len(set(args.model or [])) != len(args.model or []), "a --model is given twice"),
    ])
    mg.check_task(args)  # the same checks as training's, of the same knobs
    for name in args.model:  # a missing path fails here, before any model loads
        mg.model_source(name)
    args.instruction = args.instruction or mg.default_instruction(args.dataset)
    args.problems = mg.evaluation_problems(args.dataset, args.split, args.limit, args.digits, args.operations,
                                           args.question_field, args.answer_field)
    return args


def check_report_args(args):
    """--report RUN_DIR: the folder holds a run's metrics.jsonl and samples.jsonl; report_steps are steps."""
    missing = [f for f in ("metrics.jsonl", "samples.jsonl")
               if not os.path.isfile(os.path.join(args.report, f))]
    if not os.path.isdir(args.report):
        raise mg.UsageError(f"--report {args.report!r}: no such folder (a training run's --output_dir)")
    if missing:
        raise mg.UsageError(f"--report {args.report!r} holds no {' or '.join(missing)}: not a minigrpo run "
                            "folder, or a run from before samples.jsonl was written")
    try:
        args.report_steps = sorted({int(s) for s in args.report_steps.split(",") if s.strip()})
    except ValueError:
        raise mg.UsageError(f"--report_steps must be comma-separated integers (got {args.report_steps!r})")
    return args


def write_report(args):
    """Write RUN_DIR/report.html; exit code 0, or 2 when the run has no samples to show."""
    page = run_page(args.report, args.report_steps)
    if "<section id='step-" not in page:
        wanted = f"steps {args.report_steps}" if args.report_steps else "any step"
        print(f"eval: error: {args.report}/samples.jsonl has no samples of {wanted}", file=sys.stderr)
        return 2
    path = os.path.join(args.report, "report.html")
    mg.write_then_rename(path, page)
    print(f"wrote {path}")
    return 0


def sample_model(name, problems, args, device):
    """n graded completions per problem: one record per completion.

    Each generate call's records are appended to a progress file in output_dir as soon as they
    exist, and each call seeds its own sampling: a killed evaluation, run again with the same
    arguments, keeps the calls it had finished and draws the same completions as an uninterrupted run.
    """
    path = progress_path(name, args)
    finished = {}  # first problem of a call: its records
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    call = json.loads(line)
                    finished[call["start"]] = call["records"]
                except (ValueError, KeyError):  # a line cut short by the kill
                    pass
    per_call = max(1, args.batch_size // args.n)  # problems per generate call
    starts = range(0, len(problems), per_call)
    if any(start not in finished for start in starts):  # else everything is on disk: no model to load
        model, tokenizer = mg.load_model(name, device, trust_remote_code=args.trust_remote_code)
        model.eval()
        shared_prefix = mg.shared_prefix_if_possible(model)  # each prompt encoded once for its n samples
    records = []
    with open(path, "a") as progress:
        for start in tqdm(starts, desc=f"sampling {name}", file=sys.stderr):
            if start not in finished:
                torch.manual_seed(args.seed + start)
                finished[start] = sample_call(model, tokenizer, name, problems, start, per_call, args, device,
                                              shared_prefix)
                progress.write(json.dumps({"start": start, "records": finished[start]}) + "\n")
                progress.flush()
            records += finished[start]
    return records


def sample_call(model, tokenizer, name, problems, start, per_call, args, device, shared_prefix):
    """The records of one generate call: n completions for each of problems[start : start + per_call]."""
    chunk = problems[start : start + per_call]
    with mg.autocast(device, args.dtype):
        batch = mg.rollout(model, tokenizer, chunk, args.n, args.max_new_tokens, args.temperature,
                           args.instruction, args.top_p, shared_prefix)
    lengths = batch.mask.sum(dim=1).tolist()
    if args.entropy_report:
        tokens, entropies = token_entropies(model, tokenizer, batch)
    records = []
    for i, text in enumerate(batch.texts):
        problem = chunk[i // args.n]
        records.append({
            "model": name, "problem_id": start + i // args.n, "prompt": batch.prompts[i // args.n],
            "completion": text, "extracted_answer": mg.extract_answer(text),
            "gold_answer": problem["answer"],
            "correct": batch.rewards[i].item() == 1.0, "num_tokens": lengths[i],
            "truncated": bool(batch.truncated[i]),
        })
        if args.entropy_report:
            records[-1].update(tokens=tokens[i], token_entropy=entropies[i])
    return records


def progress_path(name, args):
    """output_dir/.progress-HASH.jsonl, HASH naming the model and every argument that shapes its samples."""
    keys = ("dataset", "split", "question_field", "answer_field", "digits", "operations", "instruction",
            "limit", "n", "temperature", "top_p", "max_new_tokens", "batch_size", "seed", "dtype",
            "entropy_report")
    settings = json.dumps([name] + [getattr(args, k) for k in keys])
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return os.path.join(args.output_dir, f".progress-{digest}.jsonl")


# -----------------------------------------------------------------------------
# Entropy report: which tokens does the model hesitate on?


@torch.no_grad()
def token_entropies(model, tokenizer, batch):
    """Each completion's tokens (as text) and, at each, the entropy (nats) of the next-token distribution
    that chose it (Eq. 4). At temperature 1, the model's own distribution as in training's
    policy/entropy, whatever temperature sampled the completions. Returns two lists of lists.
    """
    _, entropy = mg.policy_forward(model, mg.model_inputs(batch, slice(None)), 1.0)  # (B, C)
    tokens, entropies = [], []
    for ids, h, n in zip(batch.completion_ids.tolist(), entropy.tolist(), batch.mask.sum(dim=1).tolist()):
        tokens.append([tokenizer.decode([i]) for i in ids[:n]])
        entropies.append([round(x, 4) for x in h[:n]])
    return tokens, entropies


def token_entropy_stats(records):
    """{token: (mean entropy, count)} over every token of every completion, highest mean entropy first."""
    sums, counts = {}, {}
    for r in records:
        for token, h in zip(r["tokens"], r["token_entropy"]):
            sums[token] = sums.get(token, 0.0) + h
            counts[token] = counts.get(token, 0) + 1
    stats = {t: (sums[t] / counts[t], counts[t]) for t in sums}
    return dict(sorted(stats.items(), key=lambda item: -item[1][0]))


def entropy_table(stats, min_count, rows=15):
    """The rows highest- and lowest-entropy tokens seen at least min_count times, side by side
    (with fewer than 2 * rows such tokens, the upper half and the lower half)."""
    common = [(t, h, c) for t, (h, c) in stats.items() if c >= min_count]
    rows = min(rows, max(1, len(common) // 2))
    high, low = common[:rows], common[::-1][:rows]
    lines = [f"{'highest entropy':<30}  {'lowest entropy':<30}   "
             f"(tokens seen >= {min_count} times; mean nats, count)"]

    def cell(side, i):
        return f"{side[i][0]!r:>14} {side[i][1]:5.2f} {side[i][2]:6d}  " if i < len(side) else " " * 31

    for i in range(max(len(high), len(low))):
        lines.append(cell(high, i) + " " + cell(low, i))
    return "\n".join(lines)


def entropy_html(records_by_model, examples=8):
    """An HTML page: a few completions per model, each token's background redder the higher its entropy."""
    entropies = [h for records in records_by_model.values() for r in records for h in r["token_entropy"]]
    top = max(entropies, default=1.0) or 1.0
    parts = [entropy_legend(top)]
    for name, records in records_by_model.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for r in records[:examples]:
            mark = "correct" if r["correct"] else "wrong"
            parts.append(f"<p>{html.escape(r['prompt'][-120:])} <b>({mark})</b></p>")
            parts.append(f"<div class='c'>{token_spans(r['tokens'], r['token_entropy'], top)}</div>")
    return html_page("token entropy", parts)


# -----------------------------------------------------------------------------
# The pages: one renderer for the entropy report and a training run's page (--report RUN_DIR).
# Model text is escaped everywhere: a completion holding <script> shows as text.

STYLE = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em} "
         ".c{font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;padding:.4em;margin:.4em 0} "
         "table{border-collapse:collapse;margin:.4em 0} td,th{border:1px solid #ddd;padding:.2em .5em;"
         "vertical-align:top;text-align:left} td.t{font-family:monospace;white-space:pre-wrap} "
         ".right{background:#eaf7ea} .curves{display:flex;flex-wrap:wrap;gap:1em}")


def html_page(title, parts):
    """One self-contained HTML document (no script, no outside file) from its body's parts."""
    head = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    return "\n".join([head, *parts]) + "\n"


def token_spans(tokens, entropies, top):
    """Each token in a span whose background is redder the higher its entropy (0 white, top red)."""
    return "".join(f"<span title='{h:.3f}' style='background:rgba(230,30,30,{min(h / top, 1):.2f})'>"
                   f"{html.escape(t)}</span>" for t, h in zip(tokens, entropies))


def entropy_legend(top):
    return ("<p>Background: the entropy of the model's next-token distribution at each token, "
            f"white 0 to red {top:.2f} nats. Hover a token for its value.</p>")


def svg_curve(points, label, width=300, height=150):
    """A line chart of (step, value) points as inline SVG, with the axes' ranges written on it."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: 40 + (x - x0) / ((x1 - x0) or 1) * (width - 50)  # noqa: E731
    sy = lambda y: height - 20 - (y - y0) / ((y1 - y0) or 1) * (height - 40)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (f"<svg width='{width}' height='{height}' role='img' aria-label='{html.escape(label)}'>"
            f"<text x='40' y='12' font-size='12'>{html.escape(label)}</text>"
            f"<rect x='40' y='20' width='{width - 50}' height='{height - 40}' fill='none' stroke='#ccc'/>"
            f"<polyline points='{line}' fill='none' stroke='#1f77b4' stroke-width='1.5'/>"
            + "".join(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2' fill='#1f77b4'/>" for x, y in points)
            + f"<text x='0' y='{sy(y1) + 4:.0f}' font-size='10'>{y1:.3g}</text>"
            f"<text x='0' y='{sy(y0) + 4:.0f}' font-size='10'>{y0:.3g}</text>"
            f"<text x='40' y='{height - 4}' font-size='10'>step {x0}</text>"
            f"<text x='{width - 50}' y='{height - 4}' font-size='10'>{x1}</text></svg>")


def chosen_steps(steps, wanted=5):
    """The first step, the last and evenly spaced ones between: at most `wanted`, in order."""
    steps = sorted(set(steps))
    if len(steps) <= wanted:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (wanted - 1))] for i in range(wanted)})


def read_jsonl(path):
    """The records of a JSONL file a run is writing: a last line cut short by a kill is left out."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def run_page(run_dir, steps=None):
    """A training run's page: its curves, then for the chosen steps every group's completions with
    their rewards and advantages, and the first group's tokens colored by entropy."""
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    samples = read_jsonl(os.path.join(run_dir, "samples.jsonl"))
    config_path = os.path.join(run_dir, "run_config.json")
    config = json.load(open(config_path)) if os.path.isfile(config_path) else {}
    by_step = {}
    for r in samples:
        by_step.setdefault(r["step"], []).append(r)
    shown = [s for s in (steps or chosen_steps(by_step)) if s in by_step]
    shown_settings = ("model", "dataset", "algorithm", "entropy_alpha", "steps", "group_size", "temperature",
                      "seed")
    settings = ", ".join(f"{k} {config[k]}" for k in shown_settings if k in config)
    parts = [f"<h1>{html.escape(os.path.basename(os.path.abspath(run_dir)))}</h1>",
             f"<p>{html.escape(settings)}</p>", "<h2>Training curves</h2><div class='curves'>"]
    for key, label in mg.CURVES.items():
        points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))
                  and math.isfinite(m[key])]
        if points:
            parts.append(svg_curve(points, label))
    parts.append("</div>")
    parts.append(f"<p>Steps shown: {', '.join(map(str, shown))} of {len(by_step)} with samples.</p>")
    for step in shown:
        parts += step_section(step, by_step[step])
    return html_page(f"minigrpo run {run_dir}", parts)


def step_section(step, records):
    """One step: its accuracy and length, the first group's tokens by entropy, every group's completions."""
    accuracy = sum(r["reward"] == 1.0 for r in records) / len(records)
    length = sum(r["length"] for r in records) / len(records)
    parts = [f"<section id='step-{step}'><h2>Step {step}</h2>",
             f"<p>{len(records)} completions, accuracy {accuracy:.3f}, mean length {length:.1f} tokens</p>"]
    colored = [r for r in records if "tokens" in r]
    if colored:
        top = max((h for r in colored for h in r["entropy"]), default=1.0) or 1.0
        parts.append(f"<h3>Tokens of the first group ({html.escape(str(colored[0]['problem']))})</h3>")
        parts.append(entropy_legend(top))
        for r in colored:
            parts.append(f"<div class='c'>{token_spans(r['tokens'], r['entropy'], top)}</div>")
    groups = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    for group, rows in groups.items():
        problem, gold = html.escape(str(rows[0]["problem"])), html.escape(str(rows[0]["answer"]))
        parts.append(f"<h3>{problem} (gold {gold})</h3>"
                     "<table><tr><th>reward</th><th>advantage</th><th>tokens</th><th>completion</th></tr>")
        for i, r in enumerate(rows):
            cut = " (cut)" if r["truncated"] else ""
            right = " right" if r["reward"] == 1.0 else ""
            parts.append(f"<tr class='sample{right}' data-step='{step}' data-group='{group}' data-i='{i}'>"
                         f"<td>{r['reward']:g}</td><td>{r['advantage']:+.3f}</td><td>{r['length']}{cut}</td>"
                         f"<td class='t'>{html.escape(r['completion'])}</td></tr>")
        parts.append("</table>")
    parts.append("</section>")
    return parts


def plot_pass_at_k(summary, path):
    """Pass@k against k on a log2 axis, one line per model; a one-line notice without matplotlib."""
    plt = mg.optional_pyplot("passk.png")
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in summary.items():
        ks = sorted(int(k) for k in s["pass@k"])
        ax.plot(ks, [s["pass@k"][str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def table(summary, ks):
    name_width = max(12, *(len(name) for name in summary))
    others = [k for k in ks if k != 1]
    header = f"{'model':<{name_width}}  {'pass@1':>15}" + "".join(f"  {f'pass@{k}':>8}" for k in others)
    header += f"  {'tokens':>7}"
    lines = [header]
    for name, s in summary.items():
        p1 = f"{s['pass@k']['1']:.3f} ± {s['pass@1_stderr']:.3f}"
        cells = "".join(f"  {s['pass@k'][str(k)]:>8.3f}" for k in others)
        lines.append(f"{name:<{name_width}}  {p1:>15}{cells}  {s['mean_tokens']:>7.1f}")
    return "\n".join(lines)


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.report:
            return write_report(args)
        os.makedirs(args.output_dir, exist_ok=True)
    except (mg.UsageError, OSError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    device = mg.resolve_device(args.device)
    problems = args.problems
    powers = [2**i for i in range(int(math.log2(args.n)) + 1)]
    ks = sorted(set(powers) | set(args.k) | {1})
    shown = args.k or powers
    summary, all_records = {}, []
    for name in args.model:
        started = time.time()
        try:
            records = sample_model(name, problems, args, device)
        except (OSError, ValueError) as e:
            print(f"eval: error: cannot load model {name!r}: {mg.one_line(e)}", file=sys.stderr)
            return 2
        summary[name] = {
            **summarize(correct_counts(records), args.n, ks),
            "n": args.n, "problems": len(problems),
            "mean_tokens": sum(r["num_tokens"] for r in records) / len(records),
            "truncated_frac": sum(r["truncated"] for r in records) / len(records),
            "dataset": args.dataset, "split": args.split, "instruction": args.instruction,
            "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
            "seed": args.seed, "wall_s": round(time.time() - started, 1),
        }
        all_records += records
    # written at the end, each through a temporary name: an interrupted eval leaves no partial file
    outputs = [("samples.jsonl", "".join(json.dumps(r) + "\n" for r in all_records)),
               ("summary.json", json.dumps(summary, indent=2) + "\n")]
    if args.entropy_report:
        by_model = {name: [r for r in all_records if r["model"] == name] for name in args.model}
        stats = {name: token_entropy_stats(records) for name, records in by_model.items()}
        # a spread of problems: every n-th record is one completion of a different problem
        examples = {name: records[:: args.n] for name, records in by_model.items()}
        outputs += [("entropy_tokens.json", json.dumps({name: {t: [round(h, 4), c] for t, (h, c) in s.items()}
                                                        for name, s in stats.items()}, indent=1) + "\n"),
                    ("entropy_report.html", entropy_html(examples))]
    for filename, text in outputs:
        mg.write_then_rename(os.path.join(args.output_dir, filename), text)
    for name in args.model:  # the evaluation is complete: its progress files are no longer needed
        os.remove(progress_path(name, args))
    plotted = plot_pass_at_k(summary, os.path.join(args.output_dir, "passk.png"))
    print(f"{args.dataset}: {len(problems)} problems, n = {args.n}, temperature {args.temperature}, "
          f"top_p {args.top_p}")
    print(table(summary, shown))
    if args.entropy_report:
        for name in args.model:
            print(f"\n{name}: token entropy")
            print(entropy_table(stats[name], args.entropy_min_count))
    written = [f for f, _ in outputs] + (["passk.png"] if plotted else [])
    print(f"wrote {args.output_dir}/" + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
