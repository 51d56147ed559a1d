"""The recipe table: each recipe, its paper and its config (what `r1 list` prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    class_path: str
    paper: str
    config: str
    status: str = "implemented"

    @property
    def config_path(self) -> Path:
        return CONFIG_DIR / self.config


RECIPES: dict[str, RecipeInfo] = {
    info.name: info
    for info in [
        RecipeInfo("quickstart", "recipes.grpo.GRPO",
                   "GRPO + LoRA on the embedded SmolLM2-135M-Instruct (the demo)", "quickstart.yaml"),
        RecipeInfo("grpo", "recipes.grpo.GRPO", "DeepSeekMath GRPO (arXiv 2402.03300)", "grpo.yaml"),
        RecipeInfo("dr_grpo", "recipes.grpo.GRPO", "Dr.GRPO: Understanding R1-Zero-like training (arXiv 2503.20783)",
                   "dr_grpo.yaml"),
        RecipeInfo("dapo", "recipes.grpo.GRPO", "DAPO: an open-source LLM RL system at scale (arXiv 2503.14476)",
                   "dapo.yaml"),
        RecipeInfo("rloo", "recipes.grpo.GRPO", "RLOO: Back to basics, REINFORCE leave-one-out (arXiv 2402.14740)",
                   "rloo.yaml"),
        RecipeInfo("nover", "recipes.nover.NOVER",
                   "NOVER: verifier-free incentive training with policy-as-proxy reasoning perplexity (arXiv 2505.16022)",
                   "nover.yaml"),
        RecipeInfo("laser", "recipes.laser.LASER",
                   "LASER / LASER-D / LASER-DE: adaptive length-based reward shaping (arXiv 2505.15612)", "laser.yaml"),
        RecipeInfo("disco", "recipes.disco.DISCO",
                   "DISCO: domain- and difficulty-aware reward scaling for imbalanced multi-domain GRPO (arXiv 2505.15074)",
                   "disco.yaml"),
        RecipeInfo("tinyv", "recipes.tinyv.TinyV",
                   "TinyV: a small LLM verifier recovers rule false negatives (arXiv 2505.14625)", "tinyv.yaml"),
        RecipeInfo("general_reasoner", "recipes.general_reasoner.GeneralReasoner",
                   "General-Reasoner: generative answer verifier for all domains (arXiv 2505.14652)",
                   "general_reasoner.yaml"),
        RecipeInfo("ppe", "recipes.grpo.GRPO", "pPE: Prior Prompt Engineering for RFT, 5 strategies (arXiv 2505.14157)",
                   "ppe_think.yaml"),
        RecipeInfo("hgpo", "recipes.hgpo.HGPO",
                   "LHRM / HGPO: Think only when you need, hybrid group policy optimization (arXiv 2505.14631)",
                   "hgpo.yaml"),
        RecipeInfo("distill", "recipes.distill.Distill",
                   "Not All Correct Answers Are Equal: distillation from verified teacher traces (arXiv 2505.14464)",
                   "distill.yaml"),
        RecipeInfo("mot", "recipes.sft.SFT",
                   "Mixture-of-Thought: self-evolving SFT over NL / code / truth-table reasoning, majority vote "
                   "(arXiv 2505.15817); all rounds: r1 run --config recipes/pipelines/mot.yaml", "mot_sft.yaml"),
        RecipeInfo("tapo", "recipes.tapo.TAPO", "TAPO: Thought-Augmented Policy Optimization (arXiv 2505.15692)",
                   "tapo.yaml"),
        RecipeInfo("stepsearch", "recipes.stepsearch.StepSearch",
                   "StepSearch: step-wise PPO with information-gain and redundancy rewards for search agents "
                   "(arXiv 2505.15107)", "stepsearch.yaml"),
        RecipeInfo("geli", "recipes.geli.GELI",
                   "LLM-GELI: dialogue alignment via LLM reward decomposition (arXiv 2505.15922)", "geli.yaml"),
        RecipeInfo("geter", "recipes.geter.GETER",
                   "GETER: structure-aware generative framework for explainable temporal reasoning (arXiv 2505.15245)",
                   "geter.yaml"),
        RecipeInfo("safety_subspaces", "recipes.safety_subspaces.analyse",
                   "Safety Subspaces are (Linearly) Not Distinct (arXiv 2505.14185)", "safety_subspaces.yaml",
                   status="analysis (r1 subspaces)"),
        RecipeInfo("gui_g1", "recipes.gui_g1.GUIG1",
                   "GUI-G1: R1-Zero-like training for GUI visual grounding, box-size reward and difficulty weights "
                   "(arXiv 2505.15810); vision-language", "gui_g1.yaml"),
        RecipeInfo("omni_r1", "recipes.omni_r1.OmniR1",
                   "360-R1 / OmniVQA: GRPO on 360-degree panoramas with reasoning, answer and format rewards "
                   "(arXiv 2505.14197); vision-language, rewards our substitute", "omni_r1.yaml"),
        RecipeInfo("pixel_reasoner", "recipes.pixel_reasoner.PixelReasoner",
                   "Pixel Reasoner: curiosity-driven RL for pixel-space reasoning with zoom / frame-selection tools "
                   "(arXiv 2505.15966); vision-language, multi-turn; warm start + GRPO: r1 run --config "
                   "recipes/pipelines/pixel_reasoner.yaml", "pixel_reasoner.yaml"),
        RecipeInfo("avatarshield", "recipes.avatarshield.AvatarShield",
                   "AvatarShield: GRPO real/fake human-centric video detection with a temporal compensation reward "
                   "(arXiv 2505.15173); vision-language video, temporal reward [unverified]", "avatarshield.yaml"),
        RecipeInfo("hcrmp", "recipes.hcrmp.HCRMP",
                   "HCRMP: LLM-hinted multi-critic RL motion planner in highway-env, ASR / CSA / SCM, robust to "
                   "hallucinated hints (arXiv 2505.15793); needs the driving extra", "hcrmp.yaml"),
        RecipeInfo("ppo", "recipes.ppo.PPO", "PPO with a critic, GAE and KL-in-reward (arXiv 1707.06347, as veRL)",
                   "ppo.yaml"),
    ]
}


def recipe_table():
    """A rich Table of the recipes."""
    from rich.table import Table

    table = Table(title="r1-recipes")
    table.add_column("recipe", style="bold")
    table.add_column("paper")
    table.add_column("config")
    table.add_column("status")
    for info in RECIPES.values():
        table.add_row(info.name, info.paper, f"recipes/configs/{info.config}", info.status)
    return table
