"""Time LLM verification of N items batched (one `verify` call, chunks of `batch_size`) against one item at a time.

Both sides use the same `LLMVerifier` code, model (the embedded SmolLM2-135M-Instruct by default, the stand-in for
TinyV-1.5B / general-verifier), prompts and greedy decoding; only `batch_size` differs. The model is loaded and
warmed up once before timing; the sides alternate (batched, single, batched, ...) to reduce order bias, and the
median of `--repeats` runs is reported. Also checks that both sides reach the same parsed decisions.

    python benchmarks/verifier_batching.py [--items 32] [--preset tinyv|general_verifier] [--max-new-tokens 8]
                                           [--batch-size 32] [--repeats 2] [--model smollm2-135m-instruct]
                                           [--threads 2] [--json out.json]
"""

from __future__ import annotations

import os

for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("OMP_WAIT_POLICY", "PASSIVE")):
    os.environ.setdefault(_var, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from datamodules.tasks.general_qa import make_general_qa  # noqa: E402
from modules.verifiers import LLMVerifier  # noqa: E402


def items(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """n (question, gold, answer) triples from general_qa, the answer an equivalent form of the gold."""
    rows = make_general_qa(n, seed=seed)
    return ([r["question"] for r in rows], [r["answer"] for r in rows],
            [r["forms"][i % len(r["forms"])] if r["forms"] else r["answer"] for i, r in enumerate(rows)])


def timed(verifier: LLMVerifier, data) -> tuple[float, list[bool]]:
    started = time.perf_counter()
    results = verifier.verify(*data)
    return time.perf_counter() - started, [r.correct for r in results]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--preset", default="tinyv", choices=["tinyv", "general_verifier"])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = items(args.items)
    kw = dict(prompt_template=args.preset, max_new_tokens=args.max_new_tokens, device=args.device)
    batched = LLMVerifier(args.model, batch_size=args.batch_size, **kw)
    single = LLMVerifier(args.model, batch_size=1, **kw)
    batched.verify(*[d[:2] for d in data])  # load the model and warm up
    times: dict[str, list[float]] = {"batched": [], "single": []}
    decisions: dict[str, list[bool]] = {}
    for _ in range(args.repeats):
        for name, verifier in (("batched", batched), ("single", single)):
            seconds, decisions[name] = timed(verifier, data)
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": batched.model_name_or_path, "device": str(batched.policy.device), "preset": args.preset,
           "items": args.items, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
           "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "seconds_batched": med["batched"], "seconds_single": med["single"],
           "items_per_s_batched": args.items / med["batched"], "items_per_s_single": args.items / med["single"],
           "speedup": med["single"] / med["batched"], "runs": times,
           "same_decisions": decisions["batched"] == decisions["single"],
           "positives": sum(decisions["batched"])}
    print(f"{args.items} items, {args.preset} prompt, {args.max_new_tokens} new tokens, {out['device']}, "
          f"{args.threads} threads: batched (batch_size {args.batch_size}) {med['batched']:.2f} s, "
          f"one at a time {med['single']:.2f} s -> {out['speedup']:.2f}x faster batched; "
          f"same decisions: {out['same_decisions']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
