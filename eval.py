"""eval.py: Pass@1 and Pass@K of one or more models, side by side.

Did RL raise Pass@1, and did the model keep solving problems given many tries (Pass@K at
large K), or did it only get sharper? Samples n completions per problem for each model,
grades them with minigrpo's grader, and prints one table.

  python eval.py --model smollm2 --model runs/minigrpo/final --n 32 --k 1,4,16,32
  python eval.py --model runs/minigrpo/final --greedy          # greedy accuracy, n = 1

Writes to --output_dir: samples.jsonl (one line per completion), summary.json (Pass@k for
every power of two up to n and each requested k, and the distinct answers per problem), passk.svg.
A killed evaluation, run again with the same arguments, keeps every generate call it had finished.

  python eval.py --model smollm2 --n 8 --entropy_report   # which tokens are the "forks"?
  python eval.py --report runs/minigrpo                    # a training run's page: what the model wrote
  python eval.py --report runs/grpo_seed* runs/adv_seed*   # several runs on one page

--entropy_report (the paper's section 2) also computes the entropy of the model's next-token
distribution (temperature 1) at every token of its own completions, prints the tokens with the
highest and lowest mean entropy, and writes entropy_tokens.json and entropy_report.html (a few
completions with each token colored by its entropy).

--report RUN_DIR [RUN_DIR ...] writes a page from training runs' metrics.jsonl, samples.jsonl and
eval_samples.jsonl, and loads no model: what the metrics say (minigrpo.diagnosis), the curves of
every run overlaid (runs that differ only in --seed as their mean and min-max band), the held-out
problems' greedy answers before and after; for one run, a few steps' groups (the first, three
between, the last) with each token's entropy, psi and clip. One run: RUN_DIR/report.html and
curves.svg; several: output_dir/report.html and curves.svg.
"""

import glob
import hashlib
import html
import json
import math
import os
import re
import sys
import time
import dataclasses
from dataclasses import MISSING, dataclass, field
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


def distinct_answers(records):
    """The mean, over problems, of how many different final answers (extract_answer) the model gave among
    its samples: numbers compared by value ('72', '72.0' and '$72' are one answer), other answers as
    written; a completion with no final answer adds none. Low: the model says the same thing every time."""
    answers = {}
    for r in records:
        seen = answers.setdefault(r["problem_id"], set())
        if r["extracted_answer"] is not None:
            value = mg.parse_number(r["extracted_answer"])
            seen.add(r["extracted_answer"].strip() if value is None else value)
    return sum(len(a) for a in answers.values()) / len(answers)


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


def training_knob(name, help=None):
    """minigrpo.Config's own field for a knob evaluation shares with training: one default, one range, one
    --help (or help, where evaluation uses the knob otherwise)."""
    (shared,) = [f for f in dataclasses.fields(mg.Config) if f.name == name]
    if help:
        return mg.knob(shared.default, help, re.search(mg.RANGE, shared.metadata["help"]).group(1))
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
    limit: int = mg.knob(500, "at most this many problems", "[1, 1e6]")
    n: int = mg.knob(32, "samples per problem", "[1, 1e5]")
    k: str = mg.knob("", "comma-separated k for the table (default: powers of two up to n)")
    temperature: float = mg.knob(0.6, "sampling temperature (the paper's 0.6); 0 is greedy, else >= 0.01",
                                 "[0, 100]")
    top_p: float = mg.knob(0.95, "nucleus sampling (the paper's 0.95)", "(0, 1]")
    greedy: bool = mg.knob(False, "greedy decoding: temperature 0, n = 1")
    max_new_tokens: int = training_knob("max_new_tokens")
    batch_size: int = mg.knob(64, "sequences per generate call", "[1, 1e6]")
    seed: int = training_knob("seed", "sampling seed, the same for every model")
    dtype: str = training_knob("dtype")
    device: str = training_knob("device")
    output_dir: str = mg.knob("runs/eval", "where samples.jsonl, summary.json, passk.svg go")
    trust_remote_code: bool = training_knob("trust_remote_code")
    entropy_report: bool = mg.knob(False, "per-token entropy: high/low-entropy tokens and an HTML page")
    entropy_min_count: int = mg.knob(20, "entropy report: list only tokens seen this often", "[1, 1e9]")
    report: list[str] = field(default_factory=list, metadata={"help": (
        "training run folders (or a glob such as 'runs/grpo_seed*'): write their page and nothing else; one "
        "run: RUN_DIR/report.html, several: output_dir/report.html")})
    report_steps: str = mg.knob("", "--report of one run: the steps to show, comma-separated (default: the "
                                    "first, three between, the last)")


def parse_args(argv=None):
    """EvalConfig from the command line, checked; args.k becomes a sorted list and args.problems is added."""
    args = mg.parse_dataclass(EvalConfig, argv)
    if args.report:
        return check_report_args(args)
    for name in ("metrics.jsonl", "run_config.json"):  # eval.py writes samples.jsonl: never over a run's
        if os.path.lexists(os.path.join(args.output_dir, name)):
            raise mg.UsageError(f"--output_dir {args.output_dir!r} holds a training run ({name}); eval.py "
                                "would write over its samples.jsonl: choose another --output_dir")
    if args.greedy:
        args.temperature, args.n = 0.0, 1
    try:
        args.k = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise mg.UsageError(f"--k must be comma-separated integers (got {args.k!r})")
    mg.check_ranges(args)
    mg.check([
        (not args.model, "at least one --model is required"),
        (any(k < 1 or k > args.n for k in args.k), f"every k must be in 1..n={args.n} (got {args.k})"),
        (0 < args.temperature < 0.01,
         f"--temperature must be 0 (greedy) or in [0.01, 100] (got {args.temperature})"),
        (args.temperature == 0 and args.n > 1, "greedy decoding (temperature 0) gives one answer: use --n 1"),
        (len(set(args.model or [])) != len(args.model or []), "a --model is given twice"),
    ])
    mg.check_shared_knobs(args)  # the same checks as training's, of the same knobs
    for name in args.model:  # a missing path fails here, before any model loads
        mg.model_source(name)
    args.instruction = args.instruction or mg.default_instruction(args.dataset)
    args.problems = mg.evaluation_problems(args.dataset, args.split, args.limit, args.digits, args.operations,
                                           args.question_field, args.answer_field)
    return args


def check_report_args(args):
    """--report RUN_DIR ...: the folders (a pattern with * ? [ expanded, in sorted order), each read as a run
    (read_run: one that is not a run is a UsageError); report_steps are steps of a single run's samples."""
    default = lambda f: f.default_factory() if f.default is MISSING else f.default  # noqa: E731
    used = ("report", "report_steps", "output_dir")
    ignored = [f.name for f in dataclasses.fields(EvalConfig) if f.name not in used and getattr(args, f.name)
               != default(f)]
    if ignored:
        raise mg.UsageError(f"--report draws pages and nothing else: --{ignored[0]} has no effect there")
    folders = []
    for pattern in args.report:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise mg.UsageError(f"--report {pattern!r} matches no folder")
        folders += [f for f in matched if f not in folders]
    try:
        args.report_steps = sorted({int(s) for s in args.report_steps.split(",") if s.strip()})
    except ValueError:
        raise mg.UsageError(f"--report_steps must be comma-separated integers (got {args.report_steps!r})")
    args.runs = [read_run(folder) for folder in folders]
    if args.report_steps and len(args.runs) > 1:
        raise mg.UsageError("--report_steps chooses the steps of one run's page (several runs: give one)")
    if args.report_steps and not {r["step"] for r in args.runs[0].samples} & set(args.report_steps):
        raise mg.UsageError(f"{args.report[0]}/samples.jsonl has no samples of steps {args.report_steps}")
    return args


def write_report(args):
    """Write the page of the runs and their curves as one SVG image (report.html, curves.svg): into RUN_DIR
    for one run, into output_dir for several."""
    folder = args.runs[0].folder if len(args.runs) == 1 else args.output_dir
    os.makedirs(folder, exist_ok=True)
    _, groups, labels = named_groups(args.runs)
    mg.write_then_rename(os.path.join(folder, "report.html"), report_page(args.runs, args.report_steps))
    mg.write_then_rename(os.path.join(folder, "curves.svg"), svg_figure(*curve_charts(args.runs, groups,
                                                                                        labels)))
    print(f"wrote {folder}/report.html, curves.svg")
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
                if call := progress_call(line):  # a line cut short by the kill, or of another shape: redone
                    finished[call["start"]] = call["records"]
    per_call = max(1, args.batch_size // args.n)  # problems per generate call
    starts = range(0, len(problems), per_call)
    if any(start not in finished for start in starts):  # else everything is on disk: no model to load
        model, tokenizer = mg.load_model(name, device, trust_remote_code=args.trust_remote_code)
        model.eval()
        if reason := mg.why_no_shared_prefix(model):  # else each prompt is encoded once for its n samples
            print(f"note: no shared prefix for {name}: {reason}; every row is encoded in full",
                  file=sys.stderr)
        shared_prefix = reason is None
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


def progress_call(line):
    """A progress file's line as {'start', 'records'}, or None: cut short by a kill, or of another shape."""
    try:
        call = json.loads(line)
    except ValueError:
        return None
    fields = {"problem_id", "completion", "extracted_answer", "correct", "num_tokens", "truncated"}
    records = call.get("records") if isinstance(call, dict) else None
    whole = isinstance(records, list) and all(isinstance(r, dict) and fields <= r.keys() for r in records)
    return call if whole and type(call.get("start")) is int else None


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


def entropy_table(stats, min_count, per_side=15):
    """The per_side highest- and lowest-entropy tokens seen at least min_count times, side by side
    (with fewer than 2 * per_side such tokens, the upper half and the lower half)."""
    common = [(t, h, c) for t, (h, c) in stats.items() if c >= min_count]
    per_side = min(per_side, max(1, len(common) // 2))
    high, low = common[:per_side], common[::-1][:per_side]
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
# The pages and figures: one SVG renderer draws every curve the project draws (a run's page, several
# runs' page, Pass@k, the experiments' figures). Whatever comes from a file reaches a page escaped
# (text, attributes) or converted to a number: a completion holding <script> shows as text.

STYLE = ("body{font-family:sans-serif;max-width:76em;margin:1em auto;padding:0 1em} "
         ".c{font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;padding:.4em;margin:.4em 0} "
         "table{border-collapse:collapse;margin:.4em 0} td,th{border:1px solid #ddd;padding:.2em .5em;"
         "vertical-align:top;text-align:left} td.t{font-family:monospace;white-space:pre-wrap} "
         ".right{background:#eaf7ea} .wrong{background:#fbecec} .curves{display:flex;flex-wrap:wrap;gap:1em} "
         ".warning{color:#a00} .normal{color:#555} .key{display:inline-block;width:1.5em;height:.6em;"
         "margin:0 .3em 0 1em} .tok{border-bottom:3px solid transparent} "
         ".clip{box-shadow:inset 0 2px 0 #333} "
         ".off{opacity:.3;text-decoration:line-through}")

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")

PANELS = {  # what a run page draws: metrics.jsonl's key, the panel's title
    "reward/accuracy": "training accuracy", "eval/accuracy": "held-out greedy accuracy",
    "policy/entropy": "entropy (nats)", "policy/psi_over_abs_adv": "psi / |A|",
    "rollout/response_length": "response length (tokens)", "rollout/truncated_frac": "truncated fraction",
    "reward/zero_std_frac": "zero-std fraction (groups without signal)",
    "policy/cov_logp_shaped_adv": "cov(log pi, shaped A)"}


def esc(value):
    """Any value as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def number(value):
    """value as a finite float, or None (text, bool, NaN, inf, a missing value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def html_page(title, parts):
    """One self-contained HTML document (no script, no outside file) from its body's parts."""
    head = f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style>"
    return "\n".join([head, *parts]) + "\n"


def svg_chart(title, series, width=340, height=190, log2_x=False, x_label="step", y_range=None):
    """A line chart as one inline <svg>: series is [(label, color, points, band)], points [(x, y)] and band
    [(x, low, high)] (a shaded range, e.g. min-max over seeds) or None. log2_x: a log2 axis (Pass@k's k);
    y_range: (low, high) to draw, what lies outside drawn at its edge (default: the data's range). Each line
    and band carries its values (data-points, data-band); the axes' ranges are written on it."""
    fx = math.log2 if log2_x else float
    xs = [fx(x) for _, _, points, band in series for x, *_ in points + (band or [])]
    ys = [y for _, _, points, band in series for _, *y in points + (band or []) for y in y]
    if not xs:
        return ""
    (x0, x1), (y0, y1) = (min(xs), max(xs)), y_range or (min(ys), max(ys))
    sx = lambda x: 45 + (fx(x) - x0) / ((x1 - x0) or 1) * (width - 55)  # noqa: E731
    sy = lambda y: height - 22 - (min(max(y, y0), y1) - y0) / ((y1 - y0) or 1) * (height - 44)  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
           f"aria-label='{esc(title)}'><text x='45' y='13' font-size='12'>{esc(title)}</text>"
           f"<rect x='45' y='22' width='{width - 55}' height='{height - 44}' fill='none' stroke='#ccc'/>"]
    for label, color, points, band in series:
        if band:
            outline = [(x, hi) for x, _, hi in band] + [(x, lo) for x, lo, _ in reversed(band)]
            shape = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in outline)
            out.append(f"<polygon data-band='{esc(json.dumps(band))}' points='{shape}' fill='{color}' "
                       f"fill-opacity='0.18' stroke='none'><title>{esc(label)}</title></polygon>")
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f"<polyline data-label='{esc(label)}' data-points='{esc(json.dumps(points))}' "
                   f"points='{line}' fill='none' stroke='{color}' stroke-width='1.6'>"
                   f"<title>{esc(label)}</title></polyline>")
        if len(points) <= 25:
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2' fill='{color}'/>" for x, y in points]
    first, last = (2 ** x0, 2 ** x1) if log2_x else (x0, x1)
    out.append(f"<text x='0' y='{sy(y1) + 4:.0f}' font-size='10'>{y1:.3g}</text>" * (y1 != y0)
               + f"<text x='0' y='{sy(y0) + 4:.0f}' font-size='10'>{y0:.3g}</text>"
               f"<text x='45' y='{height - 6}' font-size='10'>{esc(x_label)} {first:g}</text>"
               f"<text x='{width - 10}' y='{height - 6}' font-size='10' text-anchor='end'>{last:g}</text>"
               "</svg>")
    return "".join(out)


def svg_figure(charts, legend, columns=3, chart_size=(340, 190)):
    """Several svg_chart panels as one standalone SVG file (a README shows it as an image), under a legend
    of (label, color), one label a line."""
    width, height = chart_size
    top = 8 + 16 * len(legend)
    keys = "".join(f"<rect x='10' y='{6 + 16 * i}' width='18' height='8' fill='{color}'/>"
                   f"<text x='34' y='{14 + 16 * i}' font-size='11'>{esc(label)}</text>"
                   for i, (label, color) in enumerate(legend))
    placed = "".join(f"<g transform='translate({width * (i % columns)},{top + height * (i // columns)})'>"
                     f"{chart}</g>" for i, chart in enumerate(charts))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{columns * width}' "
            f"height='{top + math.ceil(len(charts) / columns) * height}' font-family='sans-serif'>"
            f"<rect width='100%' height='100%' fill='white'/>{keys}{placed}</svg>\n")


def token_spans(tokens, entropies, top, marks=None, top_psi=1.0):
    """Each token in a span whose background is redder the higher its entropy (0 white, top red). marks
    (a run page): per token (A_t, psi, clipped, trained), drawn as a blue underline the darker the larger psi
    (up to top_psi), a dark line above where the clip bound and A_t != 0, faded where the token was not
    trained."""
    spans = []
    for i, (token, h) in enumerate(zip(tokens, entropies)):
        h = number(h) or 0.0
        style = f"background:rgba(230,30,30,{min(h / top, 1):.2f})"
        classes, title, data = "tok", f"H {h:.3f}", ""
        if marks is not None:
            a, psi, clipped, trained = marks[i]
            bound = clipped and a != 0
            style += f";border-bottom-color:rgba(31,119,180,{min(psi / top_psi, 1):.2f})"
            classes += " clip" * bound + " off" * (not trained)
            title += (f" | A {a:+.3f} | psi {psi:.3f}" + " (clipped at |A|/kappa)" * bound
                      + " | not trained" * (not trained))
            data = (f" data-a='{a:.6g}' data-psi='{psi:.6g}' data-clip='{int(bound)}' "
                    f"data-trained='{int(trained)}'")
        spans.append(f"<span class='{classes}' title='{title}' data-h='{h:.6g}'{data} style='{style}'>"
                     f"{esc(token)}</span>")
    return "".join(spans)


def token_marks(record):
    """(A_t, psi, clipped, trained) of each token of a samples.jsonl record that has tokens: its stored
    per-token values, the row's advantage for GRPO, all trained without the forking-token rule; None for a
    record written before samples.jsonl kept psi."""
    n = len(record["tokens"])
    if not isinstance(record.get("psi"), list):
        return None

    def column(key, default):  # n numbers: what is stored, the default where nothing (or no number) is
        stored = record.get(key) if isinstance(record.get(key), list) else []
        numbers = [default if number(v) is None else number(v) for v in stored[:n]]
        return numbers + [default] * (n - len(numbers))

    advantages = column("token_advantage", number(record.get("advantage")) or 0.0)
    return [(a, psi, bool(clipped), bool(trained)) for a, psi, clipped, trained
            in zip(advantages, column("psi", 0.0), column("clipped", 0), column("trained", 1))]


def entropy_legend(top, top_psi=None):
    text = ("<p>Background: the entropy H_t of the model's next-token distribution at each token, white 0 to "
            f"red {top:.2f} nats.")
    if top_psi is not None:
        text += (" Blue underline: psi = min(alpha * H_t, |A_t| / kappa), the bonus added to the token's "
                 f"advantage (Eq. 5-6), darker up to {top_psi:.3f}. Dark line above: the clip bound "
                 "(alpha * H_t > |A_t| / kappa, so psi = |A_t| / kappa and a negative advantage keeps its "
                 "sign); where A_t = 0 the clip makes psi 0 and nothing is marked. Faded and struck through: "
                 "not trained (the forking-token rule).")
    return text + " Hover a token for its numbers.</p>"


def chosen_steps(steps, wanted=5):
    """The first step, the last and evenly spaced ones between: at most `wanted`, in order."""
    steps = sorted(set(steps))
    if len(steps) <= wanted:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (wanted - 1))] for i in range(wanted)})


def read_jsonl(path):
    """The JSON objects with an integer step in a JSONL file a run writes ([] when there is no file): a
    last line cut short by a kill, or any line of another shape, is left out, and a notice says how many."""
    if not os.path.isfile(path):
        return []
    records, left_out = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and type(record.get("step")) is int:
                records.append(record)
            else:
                left_out += bool(line.strip())
    if left_out:
        print(f"note: {path}: {left_out} line(s) not a JSON object with a step (cut by a kill?), left out",
              file=sys.stderr)
    return records


@dataclass
class RunFiles:
    """What a run folder holds for its page."""

    folder: str
    config: dict  # run_config.json ({}: none)
    metrics: list  # metrics.jsonl's lines, as dicts
    samples: list  # samples.jsonl's lines
    answers: list  # eval_samples.jsonl's lines: the held-out greedy answers


def read_run(folder):
    """A run folder's files; UsageError when it is not a minigrpo run (no metrics.jsonl with a step)."""
    if not os.path.isdir(folder):
        raise mg.UsageError(f"--report {folder!r}: no such folder (a training run's --output_dir)")
    metrics = read_jsonl(os.path.join(folder, "metrics.jsonl"))
    if not metrics:
        raise mg.UsageError(f"--report {folder!r} holds no metrics.jsonl with a step: not a minigrpo run "
                            "folder")
    try:
        with open(os.path.join(folder, "run_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    return RunFiles(folder, config if isinstance(config, dict) else {}, metrics,
                    read_jsonl(os.path.join(folder, "samples.jsonl")),
                    read_jsonl(os.path.join(folder, "eval_samples.jsonl")))


def run_names(runs):
    """Each run's name: its folder's name, or its path where two folders share a name."""
    names = [os.path.basename(os.path.normpath(r.folder)) for r in runs]
    return [n if names.count(n) == 1 else os.path.normpath(r.folder) for n, r in zip(names, runs)]


def differing_keys(runs):
    """The config keys whose values differ between the runs (not output_dir), in Config's order."""
    keys = dict.fromkeys(k for r in runs for k in r.config if k != "output_dir")
    return [k for k in keys if len({json.dumps(r.config.get(k)) for r in runs}) > 1]


def seed_groups(runs):
    """The runs as groups of indices: runs whose configs differ only in --seed (and output_dir) together, in
    the order first seen; a run without run_config.json alone."""
    groups = {}
    for i, run in enumerate(runs):
        same = {k: v for k, v in run.config.items() if k not in ("seed", "output_dir")}
        groups.setdefault(json.dumps(same, sort_keys=True) if run.config else f"run {i}", []).append(i)
    return list(groups.values())


def group_label(runs, names, group, keys):
    """A group's name: the run's name, or for several seeds their common name and seeds; then the config
    keys where the page's runs differ (but the seed)."""
    if len(group) == 1:
        label = names[group[0]]
    else:
        stems = {re.sub(r"[_-]?seed\d+$", "", names[i]) for i in group}
        seeds = ", ".join(str(runs[i].config.get("seed")) for i in group)
        stem = stems.pop() if len(stems) == 1 else names[group[0]] + " ..."
        label = f"{stem} ({len(group)} seeds: {seeds})"
    shown = [f"{k} {runs[group[0]].config.get(k)}" for k in keys if k != "seed" or len(group) == 1]
    return label + (f" [{', '.join(shown)}]" if shown else "")


def named_groups(runs):
    """The runs' names, their seed groups and each group's label."""
    names, keys, groups = run_names(runs), differing_keys(runs), seed_groups(runs)
    return names, groups, [group_label(runs, names, group, keys) for group in groups]


def group_curve(runs, group, key):
    """A group's curve of one metric: (points, band). One run: its points, no band. Several: at each step
    every run logged, the mean and the band from the lowest to the highest run."""
    per_run = [{m["step"]: number(m.get(key)) for m in runs[i].metrics} for i in group]
    per_run = [{step: v for step, v in values.items() if v is not None} for values in per_run]
    if len(group) == 1:
        return sorted(per_run[0].items()), None
    return mean_and_band(per_run)


def mean_and_band(per_run):
    """per_run: [{step: value}], one dict a run. At each step every run logged: the mean, and the band from
    the lowest run to the highest; (points, band) as svg_chart draws them (the experiments' figures too)."""
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    points = [(s, sum(v[s] for v in per_run) / len(per_run)) for s in steps]
    return points, [(s, min(v[s] for v in per_run), max(v[s] for v in per_run)) for s in steps]


def diagnosis_section(runs, names):
    """What each run's metrics say (minigrpo.diagnosis): each run's warnings, or that it has none; then
    what is normal, each line once."""
    items, normal = [], {}
    for run, name in zip(runs, names):
        lines = mg.diagnosis(run.metrics, run.config)
        warnings = [text for kind, text in lines if kind == "warning"]
        normal.update((text, None) for kind, text in lines if kind == "normal")
        who = f"{name}: " if len(runs) > 1 else ""
        items += [f"<li class='warning'>{esc(who)}warning: {esc(text)}</li>" for text in warnings] or [
            f"<li class='normal'>{esc(who)}no warning: most groups had signal, completions finished, "
            "accuracy moved, entropy did not collapse, no step was skipped</li>"]
    items += [f"<li class='normal'>normal: {esc(text)}</li>" for text in normal]
    return ["<h2>What the metrics say</h2>", f"<ul>{''.join(items)}</ul>"]


def curve_charts(runs, groups, labels):
    """One svg_chart per metric of PANELS, every group overlaid (a seed group: its mean and min-max band),
    and the legend [(label, color)]."""
    legend = [(label, COLORS[i % len(COLORS)]) for i, label in enumerate(labels)]
    charts = []
    for key, title in PANELS.items():
        series = [(label, color, *group_curve(runs, group, key))
                  for (label, color), group in zip(legend, groups)]
        charts.append(svg_chart(title, [s for s in series if s[2]]))
    return [chart for chart in charts if chart], legend


def curves_section(charts, legend):
    keys = "".join(f"<span class='key' style='background:{c}'></span>{esc(label)}" for label, c in legend)
    return ["<h2>Training curves</h2>", f"<p>{keys}</p>", "<div class='curves'>", *charts, "</div>"]


def short(text, limit=300):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " ..."


def answers_at(runs, group, last):
    """{problem: [record]}: the group's held-out greedy answers (eval_samples.jsonl) at each run's last
    evaluation (last) or its first, one record per run of the group."""
    answers = {}
    for i in group:
        steps = [r["step"] for r in runs[i].answers]
        step = (max if last else min)(steps, default=None)
        for r in runs[i].answers:
            if r["step"] == step:
                answers.setdefault(str(r.get("problem")), []).append(r)
    return answers


def share_right(records):
    return sum(r.get("correct") is True for r in records) / max(len(records), 1)


def answers_section(runs, groups, labels):
    """The held-out problems' greedy answers. One run: each problem at the first and the last evaluation
    side by side, the problems that flipped first. Several: each group's answers at its runs' last
    evaluation, the problems on which the groups differ most first."""
    if len(runs) == 1:
        steps = sorted({r["step"] for r in runs[0].answers})
        columns = [(f"step {steps[0]}", answers_at(runs, [0], False)),
                   (f"step {steps[-1]}", answers_at(runs, [0], True))] if steps else []
        what = "at the first and the last evaluation, the problems that flipped first"
    else:
        columns = [(label, answers_at(runs, group, True)) for label, group in zip(labels, groups)]
        what = ("at each run's last evaluation (a seed group: how many seeds answered right, and the first "
                "seed's answer), the problems the runs disagree on first")
    columns = [(title, answers) for title, answers in columns if answers]
    if not columns:
        return []
    problems = list(dict.fromkeys(p for _, answers in columns for p in answers))
    right = {p: [share_right(answers.get(p, [])) for _, answers in columns] for p in problems}
    problems.sort(key=lambda p: (-(max(right[p]) - min(right[p])), right[p][0] - right[p][-1]))
    parts = [f"<h2>Held-out problems before and after</h2><p>Greedy answers {what}.</p><table><tr>"
             "<th>problem (gold)</th>" + "".join(f"<th>{esc(title)}</th>" for title, _ in columns) + "</tr>"]
    for p in problems:
        gold = next(r.get("answer") for _, answers in columns for r in answers.get(p, []))
        cells = []
        for _, answers in columns:
            records = answers.get(p, [])
            count = f"{sum(r.get('correct') is True for r in records)} of {len(records)} right: "
            text = short(records[0].get("completion", "")) if records else ""
            verdict = " right" if share_right(records) == 1 else " wrong" if share_right(records) == 0 else ""
            cells.append(f"<td class='t{verdict * bool(records)}'>"
                         f"{esc(count * (len(records) > 1) + text)}</td>")
        parts.append(f"<tr class='answer'><td>{esc(p)} ({esc(gold)})</td>{''.join(cells)}</tr>")
    return parts + ["</table>"]


def tokens_block(records):
    """The first group's completions, token by token: entropy, psi, the clip, the forking-token rule."""
    colored = [r for r in records if isinstance(r.get("tokens"), list) and isinstance(r.get("entropy"), list)]
    if not colored:
        return []
    top = max((number(h) or 0.0 for r in colored for h in r["entropy"]), default=1.0) or 1.0
    marks = [token_marks(r) for r in colored]
    top_psi = max((psi for m in marks if m for _, psi, _, _ in m), default=0.0) or 1.0
    parts = [f"<h3>Tokens of the first group ({esc(colored[0].get('problem'))})</h3>",
             entropy_legend(top, top_psi if any(marks) else None)]
    for r, m in zip(colored, marks):
        parts.append(f"<div class='c'>A {number(r.get('advantage')) or 0.0:+.3f}: "
                     f"{token_spans(r['tokens'], r['entropy'], top, m, top_psi)}</div>")
    return parts


def step_section(step, records):
    """One step: its accuracy and length, the first group's tokens, every group's completions."""
    accuracy = sum(r.get("reward") == 1.0 for r in records) / len(records)
    length = sum(number(r.get("length")) or 0 for r in records) / len(records)
    parts = [f"<section id='step-{step}'><h2>Step {step}</h2>",
             f"<p>{len(records)} completions, accuracy {accuracy:.3f}, mean length {length:.1f} tokens</p>",
             *tokens_block(records)]
    groups = {}
    for r in records:
        groups.setdefault(str(r.get("group")), []).append(r)
    for group, completions in groups.items():
        first = completions[0]
        parts.append(f"<h3>{esc(first.get('problem'))} (gold {esc(first.get('answer'))})</h3>"
                     "<table><tr><th>reward</th><th>advantage</th><th>tokens</th><th>completion</th></tr>")
        for i, r in enumerate(completions):
            reward, advantage = number(r.get("reward")) or 0.0, number(r.get("advantage")) or 0.0
            cut = " (cut)" if r.get("truncated") is True else ""
            parts.append(f"<tr class='sample{' right' * (reward == 1.0)}' data-step='{step}' "
                         f"data-group='{esc(group)}' data-i='{i}'><td>{reward:g}</td>"
                         f"<td>{advantage:+.3f}</td>"
                         f"<td>{number(r.get('length')) or 0:g}{cut}</td>"
                         f"<td class='t'>{esc(r.get('completion'))}</td></tr>")
        parts.append("</table>")
    return parts + ["</section>"]


def report_page(runs, steps=None):
    """The page of one run or several: what the metrics say, the curves overlaid (seed groups as mean and
    min-max band), the held-out answers before and after; one run: the chosen steps' completions and
    tokens; several: each run's last step's first group, token by token."""
    names, groups, labels = named_groups(runs)
    shown_settings = ("model", "dataset", "algorithm", "entropy_alpha", "entropy_coef",
                      "entropy_top_fraction", "steps", "group_size", "temperature", "seed")
    keys = differing_keys(runs)  # several runs: the settings they share once, then what differs
    shared = ", ".join(f"{k} {runs[0].config[k]}" for k in shown_settings
                       if k in runs[0].config and k not in keys)
    parts = [f"<h1>{esc(names[0] if len(runs) == 1 else f'{len(runs)} runs')}</h1>",
             f"<p>{esc(shared)}</p>" * (len(runs) > 1),
             "<table><tr><th>run</th><th>" + ("settings" if len(runs) == 1 else "where the runs differ")
             + "</th></tr>"]
    for run, name in zip(runs, names):
        settings = ", ".join(f"{k} {run.config[k]}" for k in (shown_settings if len(runs) == 1 else keys)
                             if k in run.config)
        settings = settings or "no run_config.json"
        parts.append(f"<tr class='run'><td>{esc(name)}</td><td>{esc(settings)}</td></tr>")
    parts += ["</table>", *diagnosis_section(runs, names),
              *curves_section(*curve_charts(runs, groups, labels)), *answers_section(runs, groups, labels)]
    if len(runs) > 1:
        parts.append("<h2>The last step's first group, token by token</h2>" * any(r.samples for r in runs))
        for run, name in ((r, n) for r, n in zip(runs, names) if r.samples):
            last = max((r["step"] for r in run.samples), default=None)
            last = [r for r in run.samples if r["step"] == last]
            parts.append(f"<details><summary>{esc(name)}</summary>{''.join(tokens_block(last))}</details>")
        return html_page("minigrpo runs", parts)
    by_step = {}
    for r in runs[0].samples:
        by_step.setdefault(r["step"], []).append(r)
    shown = [s for s in (steps or chosen_steps(by_step)) if s in by_step]
    parts.append(f"<p>Steps shown: {', '.join(map(str, shown))} of {len(by_step)} with samples.</p>")
    for step in shown:
        parts += step_section(step, by_step[step])
    return html_page(f"minigrpo run {names[0]}", parts)


def passk_figure(summary):
    """passk.svg: Pass@k against k (log2 axis), one line per model."""
    series = []
    for i, (name, s) in enumerate(summary.items()):
        points = sorted((int(k), number(v) or 0.0) for k, v in s["pass@k"].items())
        series.append((name, COLORS[i % len(COLORS)], points, None))
    return svg_figure([svg_chart("Pass@k", series, width=420, height=260, log2_x=True, x_label="k")],
                      [(name, color) for name, color, _, _ in series], columns=1, chart_size=(420, 260))


def table(summary, ks):
    """One line per model: Pass@1 with its standard error, Pass@k, mean tokens and distinct answers."""
    name_width = max(12, *(len(name) for name in summary))
    others = [k for k in ks if k != 1]
    header = f"{'model':<{name_width}}  {'pass@1':>15}" + "".join(f"  {f'pass@{k}':>8}" for k in others)
    header += f"  {'tokens':>7}  {'answers':>7}"
    lines = [header]
    for name, s in summary.items():
        p1 = f"{s['pass@k']['1']:.3f} ± {s['pass@1_stderr']:.3f}"
        cells = "".join(f"  {s['pass@k'][str(k)]:>8.3f}" for k in others)
        lines.append(f"{name:<{name_width}}  {p1:>15}{cells}  {s['mean_tokens']:>7.1f}  "
                     f"{s['distinct_answers']:>7.2f}")
    return "\n".join(lines) + "\n(answers: distinct final answers per problem among the n samples, mean)"


def evaluate_models(args):
    """Sample n completions per problem from each model and grade them: each model's summary (Pass@k,
    tokens, distinct answers, settings) and every record. A model that cannot load is a UsageError."""
    device = mg.resolve_device(args.device)
    ks = sorted(set(powers_of_two(args.n)) | set(args.k) | {1})
    summary, all_records = {}, []
    for name in args.model:
        started = time.time()
        try:
            records = sample_model(name, args.problems, args, device)
        except (OSError, ValueError) as e:
            raise mg.UsageError(f"cannot load model {name!r}: {mg.one_line(e)}")
        summary[name] = {
            **summarize(correct_counts(records), args.n, ks),
            "n": args.n, "problems": len(args.problems),
            "mean_tokens": sum(r["num_tokens"] for r in records) / len(records),
            "distinct_answers": distinct_answers(records),
            "truncated_frac": sum(r["truncated"] for r in records) / len(records),
            "dataset": args.dataset, "split": args.split, "instruction": args.instruction,
            "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
            "seed": args.seed, "wall_s": round(time.time() - started, 1),
        }
        all_records += records
    return summary, all_records


def powers_of_two(n):
    return [2**i for i in range(int(math.log2(n)) + 1)]


def output_files(args, summary, records, stats):
    """[(file name, text)]: samples.jsonl, summary.json, passk.svg and, with --entropy_report, the tokens'
    entropies (stats: {model: token_entropy_stats}) and a page of a few completions colored by them."""
    outputs = [("samples.jsonl", "".join(json.dumps(r) + "\n" for r in records)),
               ("summary.json", json.dumps(summary, indent=2) + "\n"), ("passk.svg", passk_figure(summary))]
    if args.entropy_report:
        # a spread of problems: every n-th record is one completion of a different problem
        examples = {name: [r for r in records if r["model"] == name][:: args.n] for name in args.model}
        outputs += [("entropy_tokens.json", json.dumps({name: {t: [round(h, 4), c] for t, (h, c) in s.items()}
                                                        for name, s in stats.items()}, indent=1) + "\n"),
                    ("entropy_report.html", entropy_html(examples))]
    return outputs


def main(argv=None):
    """Check the input; then either a page of training runs (--report), or: evaluate each model, write the
    files (each through a temporary name: an interrupted eval leaves no partial file), print the table."""
    try:
        args = parse_args(argv)
        if args.report:
            return write_report(args)
        os.makedirs(args.output_dir, exist_ok=True)
        summary, records = evaluate_models(args)
    except (mg.UsageError, OSError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    stats = {name: token_entropy_stats([r for r in records if r["model"] == name])
             for name in args.model} if args.entropy_report else {}
    outputs = output_files(args, summary, records, stats)
    for filename, text in outputs:
        mg.write_then_rename(os.path.join(args.output_dir, filename), text)
    for name in args.model:  # the evaluation is complete: its progress files are no longer needed
        os.remove(progress_path(name, args))
    print(f"{args.dataset}: {len(args.problems)} problems, n = {args.n}, temperature {args.temperature}, "
          f"top_p {args.top_p}")
    print(table(summary, args.k or powers_of_two(args.n)))
    for name, s in stats.items():
        print(f"\n{name}: token entropy")
        print(entropy_table(s, args.entropy_min_count))
    print(f"wrote {args.output_dir}/" + ", ".join(f for f, _ in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
