"""Peak memory and time of minigrpo.chunked_logprobs against the naive full log_softmax (CPU).

  python bench/logprob_memory.py                 # B*G = 64, T = 256; SmolLM2's and Qwen2.5-0.5B's output layers

Each measurement runs in a child process: it makes float32 final hidden states (B*G, T, D) and an
output layer D -> V, both requiring grad, notes its resident memory, runs forward (log-probs and
entropy) and backward (of the log-probs), and reports the peak resident memory above that
baseline. Naive: logits = lm_head(hidden) for every row, then log_softmax over them, as a plain
implementation does with model(...).logits. The child is capped at --cap_gb of address space, so
a measurement that does not fit reports "out of memory" instead of swapping.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import torch
import minigrpo as mg
torch.manual_seed(0)
rows, T, D, V, temperature = {rows}, {T}, {D}, {V}, {temperature}


def naive(hidden, lm_head, ids):
    logp = torch.log_softmax(lm_head(hidden) / temperature, dim=-1)  # (rows, T, V)
    return logp.gather(-1, ids[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def chunked(hidden, lm_head, ids):
    return mg.chunked_logprobs(hidden, lm_head, ids, temperature)


try:
    hidden = torch.randn(rows, T, D).requires_grad_()
    lm_head = torch.nn.Linear(D, V, bias=False)
    ids = torch.randint(V, (rows, T))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    logprobs, entropy = {impl}(hidden, lm_head, ids)
    logprobs.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"extra_gb": (peak - baseline) / 2**20, "seconds": seconds}}))
except (MemoryError, RuntimeError) as e:
    print(json.dumps({{"error": "out of memory" if "alloc" in str(e) or isinstance(e, MemoryError) else str(e)[:200]}}))
"""


def measure(impl, rows, T, D, V, temperature, cap_gb):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = CHILD.format(root=root, cap=int(cap_gb * 2**30), rows=rows, T=T, D=D, V=V, temperature=temperature, impl=impl)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit {result.returncode}: {result.stderr[-200:]}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="B*G sequences")
    parser.add_argument("--T", type=int, default=256, help="completion tokens")
    parser.add_argument("--heads", default="576:49152,896:151936", help="output layers D:V (SmolLM2-135M, Qwen2.5-0.5B)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--cap_gb", type=float, default=20.0, help="address-space cap of each child")
    args = parser.parse_args()
    logits_gb = lambda V: args.rows * args.T * V * 4 / 2**30
    print(f"B*G = {args.rows}, T = {args.T}, temperature {args.temperature}; forward + backward; "
          "extra peak RSS over the hidden states and weights")
    for D, V in (map(int, head.split(":")) for head in args.heads.split(",")):
        row = {impl: measure(impl, args.rows, args.T, D, V, args.temperature, args.cap_gb) for impl in ("naive", "chunked")}
        show = lambda r: f"{r['extra_gb']:.2f} GB, {r['seconds']:.2f} s" if "extra_gb" in r else r["error"]
        ratio = ""
        if "extra_gb" in row["naive"] and "extra_gb" in row["chunked"]:
            ratio = f"  memory ratio {row['chunked']['extra_gb'] / row['naive']['extra_gb']:.3f}"
        print(f"D = {D}, V = {V:>6} (logits {logits_gb(V):.1f} GB): naive {show(row['naive'])} | chunked {show(row['chunked'])}{ratio}")


if __name__ == "__main__":
    main()
