"""Seconds per GRPO step: minigrpo against TRL's GRPOTrainer at equal work, and against the floor.

  pip install -r bench/requirements-bench.txt
  python bench/step_time.py                      # the default model, the default CPU recipe's sizes

The same model, prompts, group size, max_new_tokens, micro-batches, one update per rollout, no KL,
float32 and thread count for both. The floor is what any trainer must do: a bare `model.generate` of the
same batch plus one forward and backward over the same tokens, each row encoded in full.
Equal work by construction (the default; --no_equal_work turns it off): every trainer's sampler
has EOS suppressed, so every completion is exactly max_new_tokens long, and every reward is a coin
flip, so no trainer can skip a group whose rewards are all equal. Reports the median and the range
of the timed steps after warm-up.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minigrpo as mg  # noqa: E402
import static_sampler  # noqa: E402  (bench/, beside this file)


def batches(cfg, count):
    stream = mg.arithmetic_problems("train", cfg.digits, cfg.operations, cfg.seed)
    return [[next(stream) for _ in range(cfg.prompts_per_step)] for _ in range(count)]


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def eos_ids(model):
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def suppress_eos_in_minigrpo(eos):
    """minigrpo's own sampler never draws EOS (generate gets suppress_tokens instead)."""
    if getattr(mg.sample_token, "suppresses", None) == eos:
        return
    real = getattr(mg.sample_token, "real", mg.sample_token)

    def sample_token(logits, temperature, top_p=1.0):
        logits[:, eos] = -float("inf")  # in place: the last position's logits serve nothing else
        return real(logits, temperature, top_p)

    sample_token.real, sample_token.suppresses = real, eos
    mg.sample_token = sample_token


def random_rewards(n):
    """Coin flips: a random-init model earns no reward, and minigrpo would skip every backward."""
    return torch.randint(0, 2, (n,)).float()


def time_minigrpo(model, tokenizer, cfg, problem_batches, saturated, sampling):
    """saturated collects, per step, the groups whose rewards were all equal: minigrpo runs no backward for them;
    sampling, per step, the seconds of sampling alone."""
    cfg.shared_prefix = mg.why_no_shared_prefix(model) is None and cfg.shared_prefix
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    seconds = []
    for problems in problem_batches:
        start = time.perf_counter()
        model.eval()
        with mg.autocast(model.device, cfg.dtype):
            batch = mg.rollout(model, tokenizer, problems, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                               cfg.instruction, shared_prefix=cfg.shared_prefix)
        synchronize()
        sampling.append(time.perf_counter() - start)
        if cfg.random_rewards:
            batch.rewards = random_rewards(len(batch.rewards)).to(batch.rewards.device)
        advantages = mg.group_advantages(batch.rewards, cfg.group_size)
        saturated.append(int((advantages.view(-1, cfg.group_size) == 0).all(dim=1).sum()))
        model.train()
        with mg.autocast(model.device, cfg.dtype):
            mg.update_policy(model, optimizer, batch, advantages, cfg)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def time_floor(model, tokenizer, cfg, problem_batches, sampling):
    """Bare generate of the batch, then one forward and backward (the model's own LM loss) over it."""
    seconds = []
    for problems in problem_batches:
        prompts = [mg.format_prompt(tokenizer, p["question"], cfg.instruction) for p in problems]
        start = time.perf_counter()
        model.eval()
        with mg.autocast(model.device, cfg.dtype), torch.no_grad():
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            prompt_ids = batch.input_ids.repeat_interleave(cfg.group_size, dim=0)
            prompt_mask = batch.attention_mask.repeat_interleave(cfg.group_size, dim=0)
            output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=cfg.max_new_tokens,
                                    do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                                    pad_token_id=tokenizer.pad_token_id)
            completion_ids = output[:, prompt_ids.shape[1]:]
        synchronize()
        sampling.append(time.perf_counter() - start)
        model.train()
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
        for i in range(0, input_ids.shape[0], cfg.micro_batch_size):
            rows = slice(i, i + cfg.micro_batch_size)
            with mg.autocast(model.device, cfg.dtype):
                loss = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows], labels=input_ids[rows]).loss
            loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def time_trl(model, tokenizer, cfg, problem_batches):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": f"{p['question']} {cfg.instruction}"}], "answer": p["answer"]}
            for problems in problem_batches for p in problems]

    def reward(completions, answer, **_):
        if cfg.random_rewards:
            return random_rewards(len(completions)).tolist()
        return [mg.math_reward(c[-1]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.stamps:
                self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    batch = cfg.prompts_per_step * cfg.group_size
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, max_steps=len(problem_batches), learning_rate=cfg.lr, weight_decay=0.0,
            per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=batch // cfg.micro_batch_size,
            generation_batch_size=batch, num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=0, top_p=1.0, beta=0.0, loss_type="dapo", epsilon=cfg.clip_low,
            epsilon_high=cfg.clip_high, num_iterations=1, max_grad_norm=cfg.max_grad_norm, shuffle_dataset=False,
            use_cpu=not torch.cuda.is_available(), bf16=cfg.dtype == "bfloat16", save_strategy="no", report_to="none", logging_steps=1,
            disable_tqdm=True, seed=cfg.seed, lr_scheduler_type="constant", gradient_checkpointing=False,
            generation_kwargs={"suppress_tokens": eos_ids(model)} if cfg.equal_work else None)
        timer = StepTimer()
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--trainers", default="minigrpo,floor,trl",
                        help="any of minigrpo, minigrpo_unshared, minigrpo_static, minigrpo_static_unshared, floor, trl "
                             "(static: bench/static_sampler.py swapped in for minigrpo's sampler)")
    parser.add_argument("--dtype", default="float32", choices=sorted(mg.DTYPES))
    parser.add_argument("--prompts_per_step", type=int, default=mg.Config.prompts_per_step)
    parser.add_argument("--max_new_tokens", type=int, default=mg.Config.max_new_tokens)
    parser.add_argument("--micro_batch_size", type=int, default=mg.Config.micro_batch_size)
    parser.add_argument("--random_rewards", action="store_true", help="coin-flip rewards (implied by --equal_work)")
    parser.add_argument("--equal_work", action=argparse.BooleanOptionalAction, default=True,
                        help="no EOS (every completion max_new_tokens long) and coin-flip rewards, for every trainer")
    parser.add_argument("--no_shared_prefix", action="store_true", help="minigrpo encodes every row in full")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = mg.Config(model=args.model, dtype=args.dtype, prompts_per_step=args.prompts_per_step,
                    max_new_tokens=args.max_new_tokens, micro_batch_size=args.micro_batch_size)
    cfg.instruction = mg.default_instruction(cfg.dataset)
    cfg.random_rewards, cfg.equal_work = args.random_rewards or args.equal_work, args.equal_work
    cfg.shared_prefix = not args.no_shared_prefix
    problem_batches = batches(cfg, args.warmup + args.steps)
    results = {}
    for name in args.trainers.split(","):
        torch.manual_seed(cfg.seed)
        model, tokenizer = mg.load_model(args.model, mg.resolve_device("auto"))  # a fresh copy for each trainer
        if args.equal_work:  # generate reads it from the model's config; TRL gets it in generation_kwargs
            model.generation_config.suppress_tokens = eos_ids(model)
            suppress_eos_in_minigrpo(eos_ids(model))
        saturated, sampling = [], []
        try:  # one trainer's failure (a missing package, a compile error) is reported and the others still run
            if name.startswith("minigrpo"):  # _unshared encodes every row in full (--no_shared_prefix)
                cfg.shared_prefix = not name.endswith("_unshared") and not args.no_shared_prefix
                with static_sampler.swapped_in() if "_static" in name else contextlib.nullcontext():
                    seconds = time_minigrpo(model, tokenizer, cfg, problem_batches, saturated, sampling)
            elif name == "floor":
                seconds = time_floor(model, tokenizer, cfg, problem_batches, sampling)
            else:
                seconds = time_trl(model, tokenizer, cfg, problem_batches)
        except Exception as error:
            results[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
            print(f"{name:>9}: failed: {results[name]['error']}", flush=True)
            continue
        timed = seconds[args.warmup :]
        results[name] = {"median_s": statistics.median(timed), "min_s": min(timed), "max_s": max(timed),
                         "steps_s": [round(s, 2) for s in timed]}
        if sampling:  # every completion is max_new_tokens long (equal work): decode steps = max_new_tokens
            results[name]["sample_ms_per_decode_step"] = round(
                1000 * statistics.median(sampling[args.warmup :]) / cfg.max_new_tokens, 2)
        note = ""
        if saturated:
            results[name]["groups_without_backward"] = saturated[args.warmup :]
            note = f"  (groups of the {cfg.prompts_per_step} with equal rewards, so no backward: {saturated[args.warmup :]})"
        r = results[name]
        per_step = f", sampling {r['sample_ms_per_decode_step']} ms/decode step" if "sample_ms_per_decode_step" in r else ""
        print(f"{name:>9}: median {r['median_s']:.2f} s/step, range {r['min_s']:.2f}-{r['max_s']:.2f}  {r['steps_s']}"
              f"{per_step}{note}", flush=True)
    timed = {name for name, r in results.items() if "median_s" in r}
    if {"minigrpo", "trl"} <= timed:
        print(f"minigrpo / TRL   = {results['minigrpo']['median_s'] / results['trl']['median_s']:.2f}")
    if {"minigrpo", "floor"} <= timed:
        print(f"minigrpo / floor = {results['minigrpo']['median_s'] / results['floor']['median_s']:.2f}")
    if {"minigrpo", "minigrpo_unshared"} <= timed:
        print(f"shared / unshared = {results['minigrpo']['median_s'] / results['minigrpo_unshared']['median_s']:.2f}")
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
                "threads": args.threads, "machine": platform.machine(), "cpus": os.cpu_count(),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "dtype": args.dtype}
    try:
        import trl

        versions["trl"] = trl.__version__
    except ImportError:
        pass
    sizes = ("prompts_per_step", "group_size", "max_new_tokens", "micro_batch_size", "dtype", "random_rewards",
             "equal_work", "shared_prefix")
    print(json.dumps({"config": {k: getattr(cfg, k) for k in sizes}, "model": args.model, "versions": versions,
                      "results": results}))


if __name__ == "__main__":
    main()
