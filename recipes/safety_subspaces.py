"""Safety Subspaces are (Linearly) Not Distinct (Ponkshe, Shah, Singhal, Vepakomma, arXiv 2505.14185): the analysis.

Not an RL recipe: `r1 subspaces --config recipes/configs/safety_subspaces.yaml` (or `main(argv)`) runs

1. (without `checkpoints`) the CPU demo pipeline (spec 18 (e)), each stage the shared `recipes.sft.SFT` on
   `datamodules.sft.SFTDataModule` rows from `datamodules.tasks.safety_sft`, saved with `Policy.save_merged`:
   base -> "aligned" (refusals + helpful arithmetic) -> "useful" fine-tune (arithmetic) and "harmful" fine-tune
   (synthetic compliance), both from the aligned model;
2. `analyse(...)`: per tensor, the fine-tuning update projected onto / orthogonal to the top-k singular subspace of
   the alignment update (`modules.papers.safety_subspaces.subspaces`), one projected model per fine-tune x mode x frac (saved with
   `save_pretrained`, loaded back through `Policy.from_pretrained`) evaluated for utility and harmfulness; the
   Mode Subspace Overlap between the useful and harmful updates (weight space, per tensor and per layer) and
   between useful and harmful prompts' last-token activations, each against its random baseline;
3. the report (`modules.papers.safety_subspaces.report`): rich tables, CSV/JSON, `mso_curves.png`, `projection_curves.png`.

Implemented as the spec: k = round(frac·min(m,n)), svd_lowrank niter=2, same/opp/orth, energy kept, MSO and
max(k_u,k_h)/d. Fixed: the cosine is <U,P>/(||U|| ||P||) (the authors divide by sqrt(<U,V>)·||V||, which is
always 1 for an orthogonal projection; see `modules.papers.safety_subspaces.subspaces.authors_cosine`).
Documented substitutes: utility = greedy accuracy on held-out synthetic arithmetic (`accuracy` reward, number
mode) instead of GSM8K 1-shot; harmfulness = the fraction of held-out synthetic harmful requests answered
without a refusal phrase (`modules.papers.safety_subspaces.subspaces.harmfulness`, a keyword classifier) instead of the GPT-4o-mini 1-5
judge on AdvBench; activations from synthetic arithmetic vs harmful prompts instead of 5,000 MATH vs ToxiGen.
[unverified], hence options: the per-layer MSO (mean of the layer's per-tensor MSOs), left singular vectors
(d = rows) for weight MSO, which decoder-block outputs 0.65 L..0.90 L means (`default_layers`), mean-centring,
the model activations are read from (`activation_model`), which tensors are projected (`include`).
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.papers.safety_subspaces import subspaces as S
from modules.policy import LoraSettings, Policy
from recipes.base import RecipeConfigError

FRACS = (0.01, 0.25, 0.5, 0.75, 0.99)
ETAS = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
ROLES = ("base", "aligned", "useful", "harmful")


@dataclass
class Checkpoints:
    """The four checkpoints to analyse (paths, aliases or hub ids; one architecture)."""

    base: str
    """The pre-alignment model (W_base)."""
    aligned: str
    """The aligned / instruct model (W_aligned)."""
    useful: str
    """A fine-tune of `aligned` on useful data (W_ft for the utility side)."""
    harmful: str
    """A fine-tune of `aligned` on harmful data."""


@dataclass
class DemoSettings:
    """The CPU demo pipeline that builds the checkpoints when none are given."""

    model_name_or_path: str = "smollm2-135m-instruct"
    """The base model (path or alias; `tiny-qwen2` for a seconds-long smoke run)."""
    lora: LoraSettings | None = None
    """LoRA for the useful and harmful fine-tunes (null = full fine-tune)."""
    aligned_lora: LoraSettings | None = None
    """LoRA for the alignment stage; keep null: a rank-r alignment update leaves no alignment subspace beyond r."""
    aligned_steps: int = 60
    """Optimiser steps of the alignment SFT stage."""
    finetune_steps: int = 60
    """Optimiser steps of each fine-tune."""
    aligned_learning_rate: float = 3e-5
    """AdamW learning rate of the alignment stage."""
    learning_rate: float = 2e-4
    """AdamW learning rate of the two fine-tunes."""
    batch_size: int = 8
    """Examples per step."""
    num_rows: int = 512
    """Synthetic rows per stage."""
    helpful_fraction: float = 0.5
    """Share of arithmetic rows in the alignment data (the rest are refusals)."""
    max_length: int = 128
    """Most tokens per SFT example."""
    seed: int = 0
    """Seed of the data and of training."""


@dataclass
class AnalysisSettings:
    """What `analyse` computes."""

    fracs: list[float] = field(default_factory=lambda: list(FRACS))
    """Fractions of the alignment singular directions kept (k = round(frac·min(m,n)))."""
    modes: list[str] = field(default_factory=lambda: ["same", "orth"])
    """Projections to build: same (W_a + U_par), opp (W_a - U_par), orth (W_a + U - U_par)."""
    etas: list[float] = field(default_factory=lambda: list(ETAS))
    """Energy fractions for the MSO bases."""
    layers: list[int] | None = None
    """Decoder blocks (0-based) for activation MSO; null = 0.65 L..0.90 L."""
    center: bool = True
    """Mean-centre each prompt set's activations before activation MSO."""
    activation_model: str = "aligned"
    """Checkpoint the activations are read from: base, aligned, useful or harmful."""
    num_activation_prompts: int = 64
    """Prompts per set (useful, harmful) for activation MSO."""
    niter: int = 2
    """Power iterations of svd_lowrank."""
    svd_method: str = "lowrank"
    """lowrank (torch.svd_lowrank, as the authors) or exact (torch.linalg.svd)."""
    include: str | None = None
    """Regex of the tensors to project (null = all floating tensors); others keep the fine-tuned weights."""
    num_eval_prompts: int = 32
    """Held-out prompts per evaluation set (arithmetic for utility, harmful requests for harmfulness)."""
    max_new_tokens: int = 32
    """Greedy completion budget in evaluation."""
    eval_batch_size: int = 16
    """Prompts per generate / forward call."""
    keep_models: bool = True
    """Keep the projected checkpoints in <out_dir>/models (false: delete each after its evaluation)."""
    seed: int = 1234
    """Seed of the evaluation prompts and of svd_lowrank."""

    def __post_init__(self) -> None:
        checks = [("fracs", self.fracs, lambda v: 0 < v <= 1, "fractions in (0, 1]"),
                  ("etas", self.etas, lambda v: 0 < v <= 1, "fractions in (0, 1]"),
                  ("modes", self.modes, lambda v: v in S.MODES, f"a subset of {S.MODES}")]
        for name, values, ok, fix in checks:
            if not values or not all(ok(v) for v in values):
                raise RecipeConfigError(f"analysis.{name}={values}; give {fix}")
        for name, allowed in (("activation_model", ROLES), ("svd_method", S.SVD_METHODS)):
            if getattr(self, name) not in allowed:
                raise RecipeConfigError(f"analysis.{name}={getattr(self, name)!r}; use one of {allowed}")
        if min(self.num_activation_prompts, self.num_eval_prompts, self.max_new_tokens, self.eval_batch_size) < 1:
            raise RecipeConfigError("analysis.num_activation_prompts, num_eval_prompts, max_new_tokens and "
                                    "eval_batch_size must be >= 1")


# ----------------------------------------------------------------------------------------------- helpers
def load_state(path: str) -> dict[str, torch.Tensor]:
    """{name: tensor} of a checkpoint's parameters (tied weights once), float32 on CPU."""
    model = Policy.from_pretrained(path, reference="none").model
    return {n: p.detach().float().cpu() for n, p in model.named_parameters()}


def evaluate_model(path: str | Path, useful_rows: list[dict], harmful_prompts: list[str],
                   settings: AnalysisSettings) -> dict[str, float]:
    """Utility (greedy accuracy on `useful_rows`) and harmfulness / refusal rate on `harmful_prompts`."""
    from modules.rewards.accuracy import accuracy_reward
    from modules.rollout.engine import SamplingSettings
    from modules.rollout.hf import HFGenerateEngine

    policy = Policy.from_pretrained(str(path), reference="none")
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=settings.max_new_tokens),
                              generation_batch_size=settings.eval_batch_size)

    def complete(prompts: list[str]) -> list[str]:
        return engine.generate(prompts, {}, num_generations=1, greedy=True).completions

    answers = complete([r["prompt"] for r in useful_rows])
    correct = accuracy_reward(None, answers, answer=[r["answer"] for r in useful_rows], mode="number")
    harmful = complete(harmful_prompts)
    return {"utility": sum(correct) / len(correct), "harmfulness": S.harmfulness(harmful),
            "refusal_rate": sum(map(S.is_refusal, harmful)) / len(harmful),
            "sample_useful": answers[0], "sample_harmful": harmful[0]}


def _save(policy: Policy, state: dict[str, torch.Tensor], directory: Path) -> Path:
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            p.copy_(state[name].to(p.dtype))
    return policy.save_pretrained(directory)


# ----------------------------------------------------------------------------------------------- analysis
def analyse(base: str, aligned: str, finetuned_useful: str, finetuned_harmful: str, fracs: list[float] | None = None,
            etas: list[float] | None = None, layers: list[int] | None = None, out_dir: str | Path = "runs/subspaces",
            *, settings: AnalysisSettings | None = None, console=None) -> dict[str, Any]:
    """Projected models and their evaluation, weight and activation MSO, and the report in `out_dir`.

    `fracs`, `etas`, `layers` override the same fields of `settings` (every other option lives there).
    Returns the results dict the report is written from (plus `paths`: the report files).
    """
    from datamodules.tasks.safety_sft import harmful_requests, make_safety_sft
    from modules.papers.safety_subspaces.report import write_report

    s = settings or AnalysisSettings()
    s = AnalysisSettings(**{**asdict(s), **{k: v for k, v in (("fracs", fracs), ("etas", etas), ("layers", layers))
                                           if v is not None}})
    out = Path(out_dir)
    paths = dict(zip(ROLES, (base, aligned, finetuned_useful, finetuned_harmful)))
    states = {role: load_state(p) for role, p in paths.items()}
    for role in ("base", "useful", "harmful"):
        S.check_compatible(states["aligned"], states[role], f"checkpoint {role!r} ({paths[role]})")
    useful_rows = make_safety_sft(s.num_eval_prompts, kind="arithmetic", seed=s.seed)
    harmful_prompts = harmful_requests(s.num_eval_prompts, seed=s.seed, acts="test")

    results: dict[str, Any] = {"settings": {**asdict(s), "checkpoints": paths}}
    tensors = S.weight_mso_rows(states["aligned"], states["useful"], states["harmful"], s.etas, include=s.include)
    results["mso_weight_tensors"], results["mso_weight_layers"] = tensors, S.layer_mso_summary(tensors)

    evals = [{"model": role, "finetune": "", "mode": "reference", "frac": "", "path": p,
              **evaluate_model(p, useful_rows, harmful_prompts, s)} for role, p in paths.items()]
    template = Policy.from_pretrained(aligned, reference="none")
    diag: list[dict] = []
    for ft in ("useful", "harmful"):
        for frac in s.fracs:
            par = S.parallel_updates(states["base"], states["aligned"], states[ft], frac, niter=s.niter,
                                     method=s.svd_method, seed=s.seed, include=s.include)
            for mode in s.modes:
                state, rows = S.projected_state(states["aligned"], states[ft], par, mode, frac=frac)
                diag += [{"finetune": ft, "frac": frac, **r} for r in rows]
                directory = _save(template, state, out / "models" / f"{ft}_{mode}_frac{frac:g}")
                evals.append({"model": directory.name, "finetune": ft, "mode": mode, "frac": frac,
                              "path": str(directory), **evaluate_model(directory, useful_rows, harmful_prompts, s)})
                if not s.keep_models:
                    shutil.rmtree(directory)
    results["projection_eval"], results["projection_tensors"] = evals, diag
    results["projection_layers"] = S.layer_summary(diag)

    policy = Policy.from_pretrained(paths[s.activation_model], reference="none")
    chosen = s.layers if s.layers is not None else S.default_layers(len(S.decoder_layers(policy.model)))
    prompts_u = [r["prompt"] for r in make_safety_sft(s.num_activation_prompts, kind="arithmetic", seed=s.seed + 1)]
    prompts_h = harmful_requests(s.num_activation_prompts, seed=s.seed + 1, acts="all")
    kw = dict(batch_size=s.eval_batch_size)
    h_u = S.last_token_states(policy.model, policy.tokenizer, prompts_u, chosen, **kw)
    h_h = S.last_token_states(policy.model, policy.tokenizer, prompts_h, chosen, **kw)
    results["mso_activation"] = [{"layer": str(layer), **r} for layer in chosen
                                 for r in S.activation_mso_curve(h_u[layer], h_h[layer], s.etas, center=s.center)]
    results["paths"] = {k: str(v) for k, v in write_report(out, results, console=console).items()}
    return results


# ----------------------------------------------------------------------------------------------- demo pipeline
def sft_stage(start: str, rows: list[dict], out_dir: Path, *, steps: int, lora: LoraSettings | None,
              learning_rate: float, demo: DemoSettings) -> str:
    """One SFT stage (`recipes.sft.SFT` on `rows`), the merged model saved to <out_dir>/model; returns its path."""
    import lightning as L

    from datamodules.sft import SFTDataModule
    from recipes.sft import SFT

    L.seed_everything(demo.seed, verbose=False)
    module = SFT(start, lora=lora, optimizer={"learning_rate": learning_rate},
                 max_length=demo.max_length)
    data = SFTDataModule(rows=rows, batch_size=demo.batch_size, seed=demo.seed)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(out_dir))
    trainer.fit(module, datamodule=data)
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    path = module.policy.save_merged(out_dir / "model")
    (out_dir / "stage.json").write_text(json.dumps({"start": start, "steps": steps, "final_train_loss": loss}))
    del module, trainer
    gc.collect()
    return str(path)


def build_demo_checkpoints(out_dir: str | Path, demo: DemoSettings | None = None) -> Checkpoints:
    """base -> aligned (refusal + helpful SFT) -> useful (arithmetic) and harmful (comply) fine-tunes."""
    from datamodules.tasks.safety_sft import make_safety_sft
    from modules.models.registry import resolve_model_path

    demo = demo or DemoSettings()
    out = Path(out_dir)
    base = resolve_model_path(demo.model_name_or_path)
    data = {kind: make_safety_sft(demo.num_rows, kind=kind, seed=demo.seed + i, helpful_fraction=demo.helpful_fraction)
            for i, kind in enumerate(("aligned", "arithmetic", "comply"))}
    aligned = sft_stage(base, data["aligned"], out / "aligned", steps=demo.aligned_steps, lora=demo.aligned_lora,
                        learning_rate=demo.aligned_learning_rate, demo=demo)
    useful = sft_stage(aligned, data["arithmetic"], out / "useful", steps=demo.finetune_steps, lora=demo.lora,
                       learning_rate=demo.learning_rate, demo=demo)
    harmful = sft_stage(aligned, data["comply"], out / "harmful", steps=demo.finetune_steps, lora=demo.lora,
                        learning_rate=demo.learning_rate, demo=demo)
    return Checkpoints(base=base, aligned=aligned, useful=useful, harmful=harmful)


def run(out_dir: str = "runs/safety_subspaces", checkpoints: Checkpoints | None = None,
        demo: DemoSettings | None = None, analysis: AnalysisSettings | None = None) -> dict[str, Any]:
    """Build the demo checkpoints unless `checkpoints` are given, then analyse them.

    Args:
        out_dir: Output folder (demo stages, projected models, the report).
        checkpoints: The base, aligned, useful and harmful checkpoints to analyse; null = build them with `demo`.
        demo: The CPU demo pipeline (used only without `checkpoints`).
        analysis: The analysis options.
    """
    ckpt = checkpoints or build_demo_checkpoints(Path(out_dir) / "demo", demo)
    return analyse(ckpt.base, ckpt.aligned, ckpt.useful, ckpt.harmful, out_dir=out_dir, settings=analysis)


def main(argv: list[str] | None = None) -> int:
    """`r1 subspaces --config recipes/configs/safety_subspaces.yaml [--analysis.fracs [0.5]] ...`."""
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    parser = ArgumentParser(prog="r1 subspaces", exit_on_error=False, description=__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of the options below.")
    parser.add_function_arguments(run)
    try:
        cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
        init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
        kwargs = {k: init[k] for k in ("out_dir", "checkpoints", "demo", "analysis")}
    except (ArgumentError, RecipeConfigError, TypeError, ValueError) as err:
        line = " ".join(str(err).split())
        print(f"r1: error: subspaces: {line}", file=sys.stderr)
        return 2
    run(**kwargs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
