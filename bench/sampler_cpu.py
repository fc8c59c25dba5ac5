"""The eager and the static sampler on the CPU: seconds per rollout, and how many rows they draw alike.

  python bench/sampler_cpu.py          # the default model and task, 4 rollouts of 4 prompts x 8, 48 tokens

Each rollout is drawn twice with the same seed, once by each sampler, at natural lengths (rows stop at
EOS). Prints each sampler's seconds per rollout (median of the rollouts) and, per rollout, the rows
whose completions differ and the column where each first differs.
"""

import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402
import static_sampler  # noqa: E402  (bench/, beside this file)


def main():
    model, tokenizer = mg.load_model("smollm2")
    model.eval()
    instruction = mg.default_instruction("arithmetic")
    stream = mg.arithmetic_problems("train", 1, "+*", 0)
    batches = [[next(stream) for _ in range(4)] for _ in range(4)]
    seconds = {"eager": [], "static": []}
    differing = 0
    for i, problems in enumerate(batches):
        out = {}
        for sampler in ("eager", "static"):
            torch.manual_seed(i)
            start = time.perf_counter()
            with static_sampler.swapped_in() if sampler == "static" else contextlib.nullcontext():
                out[sampler] = mg.rollout(model, tokenizer, problems, 8, 48, 1.0, instruction).completion_ids
            seconds[sampler].append(time.perf_counter() - start)
        a, b = out["eager"], out["static"]
        width = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(x, (0, width - x.shape[1]), value=tokenizer.pad_token_id) for x in (a, b))
        rows = (a != b).any(dim=1).nonzero().flatten().tolist()
        differing += len(rows)
        print(f"rollout {i}: {len(rows)} of {len(a)} rows differ, first at columns "
              f"{[int((a[r] != b[r]).nonzero()[0]) for r in rows]}", flush=True)
    for sampler, times in seconds.items():
        print(f"{sampler}: median {statistics.median(times):.2f} s per rollout {[round(t, 2) for t in times]}")
    print(f"rows drawn differently: {differing} of {sum(len(b) * 8 for b in batches)}; "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    main()
