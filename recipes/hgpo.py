"""LHRM / HGPO: "Think Only When You Need with Large Hybrid-Reasoning Models" (Jiang et al., Microsoft,
arXiv 2505.14631, NeurIPS 2025; spec section 14). Stage 2, Hybrid Group Policy Optimization.

Implemented:
- Forced-mode groups: each prompt gets num_generations / 2 responses whose first completion tokens are forced to
  `think_tag` and as many forced to `no_think_tag` (`forced_mode_rollout`). The forced tag is part of the
  completion and trained (completion_mask = 1): the inter-group advantage lands on it.
- Rewards from the configured reward functions (rule-based `hybrid_correct`; `toy_chat_rm` for chat rows), then the
  inter-group reward with margin `mode_delta` and the intra-group reward (`modules.papers.hgpo.objectives.hgpo_rewards`,
  paper Eqs. 5-9), and per-token advantages `A_t = GRPO(r_intra) + 1[o_t = mode token] * alpha * GRPO(r_inter)`
  (`hgpo_advantages`, Eq. 10) fed to the shared PPO-clip loss (epsilon 0.5) with the k3 KL (beta 0.001).
- Logs train/hgpo/think_rate and no_mode_rate (the model's own free choice on the step's prompts: a few tokens
  sampled without forcing), r_inter/<mode> (share of prompts the mode wins), reward/<mode>, length/<mode>.
  `callbacks.HybridAccuracy` evaluates HAcc on held-out prompts.
Stage 1 (HFT) is `recipes.sft.SFT` on `datamodules.tasks.hybrid.make_hybrid_sft`; both stages run from one
command with `r1 run --config recipes/pipelines/lhrm.yaml`.

Documented substitutes: the paper's Llama-3.1-Tulu-3-8B-RM is a toy heuristic RM (`toy_chat_rm`); DeepScaleR /
Tulu-3 prompts are synthetic easy / multi-step arithmetic and chat requests (`datamodules.tasks.hybrid`); LoRA with
lr 1e-5 instead of a full fine-tune at lr 1e-6.

[unverified], hence options: the GRPO normalisation scope of Eq. 10 (`advantage_norm`: all N outputs of the query,
the spec's reading, or the mode subgroup for r_intra); argmax ties (`intra_ties`; inter-group ties go to no-think);
which tokens are "the mode token" when a tag is several tokens (`mode_token`); the tags themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import modules.papers.hgpo.rewards  # noqa: F401  (registers hybrid_correct and toy_chat_rm)
from modules.papers.hgpo.rollout import (MODE_COLUMN, MODE_TOKENS, choose_modes, forced_mode_rollout, mode_token_span,
                                       tag_token_ids)
from modules.papers.hgpo.objectives import NO_THINK, NORMS, THINK, TIE_RULES, hgpo_advantages, hgpo_rewards, mode_token_mask
from modules.papers.hgpo.rewards import closing_tag
from modules.objectives import ObjectiveSettings
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.engine import split_rows
from recipes.base import RecipeConfigError, RLRecipe, recipe_settings



class HGPO(RLRecipe):
    """Hybrid Group Policy Optimization: half of each group forced to think, half forced not to; the inter-group
    (which mode wins) advantage on the mode token, the intra-group (best within its mode) advantage on every token."""

    def __init__(
        self,
        *args: Any,
        think_tag: str = "<think>",
        no_think_tag: str = "<no_think>",
        mode_delta: float = 0.2,
        alpha: float = 1.0,
        intra_ties: str = "all",
        advantage_norm: str = "group",
        mode_token: str = "first_divergent",
        log_think_rate: bool = True,
        num_generations: int = 4,
        objective: ObjectiveSettings = ObjectiveSettings(epsilon_low=0.5, beta=0.001),
        sampling: SamplingSettings = SamplingSettings(temperature=0.6, top_p=0.95),
        accuracy_reward: str | None = "hybrid_correct",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            think_tag: Opening tag of think mode (`<think>...</think>answer`).
            no_think_tag: Opening tag of no-think mode (`<no_think>answer</no_think>`).
            mode_delta: delta, the margin added to the no-think mean in the inter-group reward (paper 0.2; larger
                favours no-think).
            alpha: Weight of the inter-group advantage on the mode token (paper 1.0).
            intra_ties: Who gets r_intra = 1 when several responses share their mode's best reward: all of them,
                or the first only (a literal argmax).
            advantage_norm: Scope of GRPO's mean/std in Eq. 10: group (all N outputs of the query) or mode
                (r_intra within its own mode's N/2 outputs; r_inter always over all N).
            mode_token: Which completion tokens get the inter-group term when a tag is several tokens:
                first_divergent (the token where the two tags first differ) or tag (every token of the tag).
            log_think_rate: Each step, sample a few free tokens per prompt and log the share that opens with the
                think tag (train/hgpo/think_rate) or with neither tag (train/hgpo/no_mode_rate).
            num_generations: N, responses per prompt, half per mode (the paper: 4, i.e. 2 per mode); even.
            objective: The paper's: clip range 0.5, k3 KL to the reference with beta 0.001. scale_rewards batch
                does not apply (Eq. 10 normalises per query); advantage_estimator grpo or rloo.
            sampling: Sampling settings (the paper's inference settings: temperature 0.6, top_p 0.95).
            accuracy_reward: Name of the reward whose value 1.0 means "correct" (logged as accuracy).
        """
        for field, value, allowed in (("intra_ties", intra_ties, TIE_RULES), ("advantage_norm", advantage_norm, NORMS),
                                      ("mode_token", mode_token, MODE_TOKENS)):
            if value not in allowed:
                raise RecipeConfigError(f"model.{field}={value!r}; use one of {', '.join(allowed)}")
        if num_generations < 2 or num_generations % 2:
            raise RecipeConfigError(f"model.num_generations={num_generations}; HGPO needs an even number >= 2 (half "
                                    "of each group per mode)")
        try:
            closing_tag(think_tag), closing_tag(no_think_tag)
        except ValueError as err:
            raise RecipeConfigError(f"model.think_tag / model.no_think_tag: {err}") from None
        if think_tag == no_think_tag:
            raise RecipeConfigError(f"model.think_tag and model.no_think_tag are both {think_tag!r}; give two tags")
        objective = recipe_settings(type(self), ObjectiveSettings, objective, "objective")
        if objective.scale_rewards == "batch":
            raise RecipeConfigError("model.objective.scale_rewards='batch' does not apply to HGPO (Eq. 10 normalises "
                                    "per query); use group or none")
        super().__init__(*args, num_generations=num_generations, objective=objective, sampling=sampling,
                         accuracy_reward=accuracy_reward, **kwargs)
        if not isinstance(self.rollout_engine, HFGenerateEngine):
            raise RecipeConfigError(f"HGPO forces the mode prefix with the HF generate engine; this recipe's engine "
                                    f"is {type(self.rollout_engine).__name__}")
        self.prefixes = tag_token_ids(self.policy.tokenizer, think_tag, no_think_tag)
        try:
            self.mode_spans = mode_token_span(self.prefixes, mode_token)
        except ValueError as err:
            raise RecipeConfigError(f"model.think_tag / model.no_think_tag: {err}") from None

    # ------------------------------------------------------------------ rollouts
    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """Training groups are forced half per mode; held-out evaluation samples freely (the model picks its mode)."""
        if purpose != "train":
            return super().generate(rows, purpose=purpose, greedy=greedy, num_generations=num_generations)
        prompts, columns = split_rows(rows)
        return forced_mode_rollout(self.rollout_engine, prompts, columns, self.prefixes, num_generations // 2,
                                   greedy=greedy)

    def choose(self, rows: list[dict], *, greedy: bool = False) -> list[str | None]:
        """The mode each row's prompt gets when the model picks it freely ("think", "no_think" or None)."""
        prompts, columns = split_rows(rows)
        longest = max(len(ids) for ids in self.prefixes.values())
        return choose_modes(self.rollout_engine, prompts, columns, self.hparams.think_tag, self.hparams.no_think_tag,
                            max_new_tokens=longest + 2, greedy=greedy)

    def choice_metrics(self, rows: list[dict]) -> dict[str, float]:
        chosen = self.choose(rows)
        return {"hgpo/think_rate": sum(c == THINK for c in chosen) / len(chosen),
                "hgpo/no_mode_rate": sum(c is None for c in chosen) / len(chosen)}

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """With `log_think_rate`: the mode the updated policy picks freely on the step's prompts."""
        if not self.hparams.log_think_rate:
            return {}
        rows = [{"prompt": rollout.prompts[i], **{k: v[i] for k, v in rollout.columns.items() if k != MODE_COLUMN}}
                for i in range(0, len(rollout), rollout.group_size)]  # the first row of each (adjacent) group
        return self.choice_metrics(rows)

    # ------------------------------------------------------------------ advantages
    def modes_of(self, rollout: RolloutBatch) -> Tensor:
        """(N,) 1 for think rows, 0 for no-think rows."""
        modes = rollout.columns.get(MODE_COLUMN)
        if modes is None:
            raise RecipeConfigError(f"HGPO advantages need forced-mode rollouts (column {MODE_COLUMN!r}); "
                                    "collect_rollout makes them")
        return torch.tensor([m == THINK for m in modes], dtype=torch.long, device=rollout.rewards.device)

    def mode_mask(self, rollout: RolloutBatch) -> Tensor:
        """(N, T) 1 at each row's mode token (see `mode_token`)."""
        spans = [self.mode_spans[m] for m in rollout.columns[MODE_COLUMN]]
        return mode_token_mask(rollout.completion_mask, [s for s, _ in spans], [n for _, n in spans])

    def compute_advantages(self, rollout: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """Per-token HGPO advantages (N, T) (Eqs. 5-10) and the per-mode metrics."""
        hp, objective = self.hparams, self.objective
        modes = self.modes_of(rollout)  # (N,)
        r_inter, r_intra = hgpo_rewards(rollout.rewards, modes, rollout.group_ids, hp.mode_delta, ties=hp.intra_ties)
        advantages = hgpo_advantages(
            r_inter, r_intra, rollout.group_ids, self.mode_mask(rollout), rollout.completion_mask, alpha=hp.alpha,
            norm=hp.advantage_norm, modes=modes, estimator=objective.advantage_estimator,
            scale=objective.scale_rewards != "none")  # (N, T)
        return advantages, self.mode_metrics(rollout, modes, r_inter, r_intra)

    def mode_metrics(self, rollout: RolloutBatch, modes: Tensor, r_inter: Tensor, r_intra: Tensor
                     ) -> dict[str, float]:
        lengths = rollout.completion_lengths.float()  # (N,)
        out = {}
        for name, sel in ((THINK, modes == 1), (NO_THINK, modes == 0)):
            out[f"hgpo/r_inter/{name}"] = float(r_inter[sel].mean())
            out[f"hgpo/reward/{name}"] = float(rollout.rewards[sel].mean())
            out[f"hgpo/length/{name}"] = float(lengths[sel].mean())
        out["hgpo/r_intra"] = float(r_intra.mean())
        return out


__all__ = ["HGPO", "MODE_COLUMN", "choose_modes", "forced_mode_rollout", "mode_token_span", "tag_token_ids"]
