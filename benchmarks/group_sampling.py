"""Time GRPO group sampling with the HF engine: every row prefilled (plain) vs each prompt prefilled once and its KV
cache expanded to its G rows (shared, `HFGenerateEngine(share_prompt_prefill=True)`, the default).

Both paths run in this one process on the same policy, prompts and settings, interleaved (plain, shared, then shared,
plain, ...) to reduce order bias; each is warmed up once, untimed. Decoding is greedy, so both paths must produce the
same tokens: the script checks it on every round and exits with status 1 if they differ. Defaults: B=4 prompts (the
synthetic arithmetic chat prompts of `benchmarks/grpo_step.py`) x G=8 samples, 64 new tokens. Sharing saves
(G-1) * (P-1) prompt tokens per prompt, so it matters for long prompts: `--prompt-tokens N` prepends a system prompt
of filler text until the rendered prompts are at least N tokens.

    python benchmarks/group_sampling.py [--model tiny|smollm2] [--prompts 4] [--generations 8]
                                        [--max-new-tokens 64] [--prompt-tokens 256] [--repeats 3]
                                        [--threads 2] [--device cpu|cuda] [--dtype float32] [--json out.json]

Reported per path: median generate seconds, generated (completion) tokens / s, and the prompt tokens the model
processed before the first sampled token; the ratio is shared / plain tokens per second (above 1: sharing is faster).
"""

from __future__ import annotations

import os

for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("OMP_WAIT_POLICY", "PASSIVE")):  # set before torch loads; see benchmarks/grpo_step.py
    os.environ.setdefault(_var, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks.grpo_step import prepare_model, prompt_rows  # noqa: E402

PATHS = ("plain", "shared")
FILLER = ("You are a careful assistant. Read the question, think step by step, check every intermediate result, "
          "and give the final answer as a single number. ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                   help="tiny: random Qwen2 (hidden 256, 4 layers); smollm2: SmolLM2-135M-Instruct (packaged copy)")
    p.add_argument("--prompts", type=int, default=4, help="B distinct prompts")
    p.add_argument("--generations", type=int, default=8, help="G samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="pad the prompts with a filler system prompt to at least this many tokens (0: as they are)")
    p.add_argument("--generation-batch-size", type=int, default=None, help="rows per generate call (default all)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of each path")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", default="float32", help="policy dtype (float32, bfloat16, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write settings, every round and the summary here")
    args = p.parse_args(argv)
    for name in ("prompts", "generations", "max_new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.generations < 2:
        p.error("--generations must be >= 2: with one sample per prompt there is no prefill to share")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu")
    return args


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def system_prompt_for(engine, prompts: list[Any], tokens: int) -> str | None:
    """A filler system prompt making every rendered prompt at least `tokens` tokens long (None when 0)."""
    if tokens <= 0:
        return None
    text = ""
    while True:
        _, mask = engine.encode_prompts(prompts, [text or None] * len(prompts))
        if int(mask.sum(1).min()) >= tokens:
            return text or None
        text += FILLER


def run_once(engine, prompts: list[Any], columns: dict[str, list[Any]], g: int, device: str) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    batch = engine.generate(prompts, columns, num_generations=g, greedy=True)
    _sync(device)
    return time.perf_counter() - started, batch


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for path in PATHS:
        rs = [r for r in records if r["path"] == path]
        seconds = [r["seconds"] for r in rs]
        tokens = sum(r["tokens"] for r in rs)
        out[path] = {"seconds_median": statistics.median(seconds), "seconds_mean": statistics.fmean(seconds),
                     "seconds_min": min(seconds), "tokens_per_round": tokens / len(rs),
                     "tokens_per_s": tokens / sum(seconds), "rounds": float(len(rs))}
    out["ratio"] = {"tokens_per_s": out["shared"]["tokens_per_s"] / out["plain"]["tokens_per_s"],
                    "seconds_median": out["plain"]["seconds_median"] / out["shared"]["seconds_median"]}
    return out


def print_report(settings: dict[str, Any], summary: dict[str, dict[str, float]], prefill: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Greedy group sampling, {settings['model']} ({settings['prompts']} prompts x "
                        f"{settings['generations']} samples, prompt {settings['prompt_length']} tokens, <= "
                        f"{settings['max_new_tokens']} new, {settings['device']}, {settings['threads']} threads)")
    for name, justify in (("metric", "left"), ("plain", "right"), ("shared", "right"), ("shared / plain", "right")):
        table.add_column(name, justify=justify)
    p, s, r = summary["plain"], summary["shared"], summary["ratio"]
    table.add_row("generate s (median)", f"{p['seconds_median']:.3f}", f"{s['seconds_median']:.3f}",
                  f"{r['seconds_median']:.2f}x faster")
    table.add_row("generated tokens / s", f"{p['tokens_per_s']:.1f}", f"{s['tokens_per_s']:.1f}",
                  f"{r['tokens_per_s']:.2f}")
    table.add_row("generated tokens / round", f"{p['tokens_per_round']:.0f}", f"{s['tokens_per_round']:.0f}", "")
    table.add_row("prompt tokens prefilled", str(prefill["plain"]), str(prefill["shared"]),
                  f"{prefill['shared'] / prefill['plain']:.3f}")
    table.add_row("rounds", f"{p['rounds']:.0f}", f"{s['rounds']:.0f}", "")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    from modules.policy import Policy
    from modules.rollout.engine import SamplingSettings, split_rows
    from modules.rollout.hf import HFGenerateEngine

    model_path = prepare_model(args.model)
    policy = Policy.from_pretrained(model_path, dtype=args.dtype, reference="none")
    policy.model.to(args.device)
    rows = prompt_rows(args.prompts, args.seed)
    prompts, columns = split_rows(rows)
    sampling = SamplingSettings(max_new_tokens=args.max_new_tokens)
    engines = {path: HFGenerateEngine(policy, sampling, generation_batch_size=args.generation_batch_size,
                                      share_prompt_prefill=path == "shared") for path in PATHS}
    system = system_prompt_for(engines["plain"], prompts, args.prompt_tokens)
    if system is not None:
        columns["system_prompt"] = [system] * len(prompts)
    ids, mask = engines["plain"].encode_prompts(prompts, columns.get("system_prompt", [None] * len(prompts)))
    b, g, length = len(prompts), args.generations, ids.shape[1]
    if not engines["shared"].uses_shared_prefill(mask, g):
        print("[group_sampling] the shared path falls back to the plain one for these settings "
              "(see HFGenerateEngine.uses_shared_prefill)", flush=True)
    prefill = {"plain": b * g * length, "shared": b * (length - 1) + b * g}  # tokens before the first sampled one
    settings = {"model": args.model, "model_path": str(model_path), "prompts": b, "generations": g,
                "max_new_tokens": args.max_new_tokens, "prompt_tokens_requested": args.prompt_tokens,
                "prompt_length": length, "prompt_real_tokens": mask.sum(1).tolist(),
                "generation_batch_size": args.generation_batch_size, "threads": args.threads, "device": args.device,
                "dtype": args.dtype, "seed": args.seed}
    print(f"[group_sampling] {args.model}: {b} prompts x {g} samples, prompt length {length} (padded), "
          f"<= {args.max_new_tokens} new tokens", flush=True)
    for path in PATHS:  # warm-up, untimed
        run_once(engines[path], prompts, columns, g, args.device)
    records: list[dict[str, Any]] = []
    identical = True
    for rnd in range(args.repeats):
        order = PATHS if rnd % 2 == 0 else PATHS[::-1]
        batches = {}
        for path in order:
            seconds, batch = run_once(engines[path], prompts, columns, g, args.device)
            batches[path] = batch
            tokens = float(batch.stats["generated_tokens"])
            records.append({"path": path, "round": rnd, "seconds": seconds, "tokens": tokens})
            print(f"[group_sampling] round {rnd + 1}/{args.repeats} {path}: {seconds:.3f} s, "
                  f"{tokens / seconds:.1f} tokens/s", flush=True)
        same = (torch.equal(batches["plain"].completion_ids, batches["shared"].completion_ids)
                and torch.equal(batches["plain"].completion_mask, batches["shared"].completion_mask))
        identical &= same
        if not same:
            print(f"[group_sampling] round {rnd + 1}: greedy completions DIFFER between the paths", flush=True)
    summary = summarise(records)
    print_report(settings, summary, prefill)
    print(f"[group_sampling] greedy outputs identical: {identical}")
    if args.json is not None:
        import transformers

        result = {"settings": settings, "summary": summary, "prefill_tokens": prefill, "identical": identical,
                  "records": records, "load_average": [round(x, 2) for x in os.getloadavg()],
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "python": platform.python_version()}, "cpus": os.cpu_count()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"[group_sampling] wrote {args.json}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
