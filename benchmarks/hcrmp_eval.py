"""HCRMP on CPU: does the hinted agent beat a random policy and the no-hint ablation, and how do hallucinated hints
hurt it? Trains three agents with the same seed and budget (rule hints, noisy hints at 42% hallucinations, no hints),
then evaluates each, and a uniformly random policy, on held-out episodes at the three traffic densities.

    python benchmarks/hcrmp_eval.py [--rounds 40] [--episodes 20] [--out benchmarks/results/hcrmp_eval.json]

Writes the JSON, a markdown table (stdout) and a PNG beside the JSON. About 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AGENTS = {"hints (rule)": "rule", "hints (noisy, 42%)": "noisy", "no hints": "none"}


def train(hinter: str, rounds: int, steps: int, seed: int, density: str):
    import lightning as L

    from datamodules.driving import DrivingDataModule
    from recipes.hcrmp import HCRMP

    L.seed_everything(seed, verbose=False)
    model = HCRMP(density=density, hinter=hinter, steps_per_round=steps, seed=seed)
    updates_per_round = model.hparams.epochs * -(-steps // model.hparams.minibatch_size)
    trainer = L.Trainer(max_steps=rounds * updates_per_round, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(model, datamodule=DrivingDataModule())
    return model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=256, help="control steps per round")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--density", default="medium", help="training density")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/hcrmp_eval.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from recipes.hcrmp import DENSITY_NAMES

    results: dict = {"settings": vars(args), "agents": {}}
    random_policy = None
    for name, hinter in AGENTS.items():
        model, seconds = train(hinter, args.rounds, args.steps, args.seed, args.density)
        evals = {d: model.evaluate(d, args.episodes) for d in DENSITY_NAMES}
        results["agents"][name] = {"train_s": seconds, **evals}
        print(name, json.dumps(results["agents"][name]), flush=True)
        if random_policy is None:
            random_policy = {d: model.evaluate(d, args.episodes, random_policy=True) for d in DENSITY_NAMES}
    results["agents"]["random policy"] = random_policy
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    lines = ["| agent | " + " | ".join(f"{d}: success / collision / return" for d in DENSITY_NAMES) + " |",
             "|---|" + "---|" * len(DENSITY_NAMES)]
    for name, r in results["agents"].items():
        cells = [f"{r[d]['success_rate']:.2f} / {r[d]['collision_rate']:.2f} / {r[d]['return']:.1f}"
                 for d in DENSITY_NAMES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = list(results["agents"])
    for ax, metric in zip(axes, ("success_rate", "collision_rate")):
        for i, name in enumerate(names):
            ax.bar([j + i * 0.2 for j in range(len(DENSITY_NAMES))],
                   [results["agents"][name][d][metric] for d in DENSITY_NAMES], width=0.2, label=name)
        ax.set_xticks([j + 0.3 for j in range(len(DENSITY_NAMES))], DENSITY_NAMES)
        ax.set_title(metric.replace("_", " "))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
