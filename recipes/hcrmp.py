"""HCRMP — LLM-hinted contextual RL motion planner (Chen, Leng, Li et al.; arXiv 2505.15793, NeurIPS 2025;
spec section 6). Not LLM fine-tuning: a frozen hinter (a local LLM, rules, or noisy hints) advises a conventional
actor-critic driving agent, which must stay robust to hallucinated hints.

Implemented (`modules.papers.hcrmp`), in highway-env (3 lanes, continuous throttle / steer, three traffic densities):
- Agent: a Beta policy over the two continuous actions and one critic per reward term (safety, efficiency, comfort;
  the paper's components were not retrieved, ours are documented [unverified]); PPO updates with GAE per critic
  (the shared `modules.objectives` GAE, clipped surrogate and clipped value loss), advantage
  `A = sum_k w_k(hint) A_k` [unverified form].
- ASR: the hint's scenario vector and critical-agent directions are concatenated to the state.
- CSA: each hint's critic weights are checked against a knowledge base of past (situation, weights, outcome) records
  before they weight the critics (our reading [unverified]).
- SCM: a semantic cache reuses a hint across control steps while the discretised scene is unchanged (hit rate
  logged).
- Hinters: `rule`, `noisy` (a rule hint replaced by a random one at `hallucination_rate`, 0.42 as the paper
  measures), `llm` (SmolLM2 through the shared policy loading, cached), `none` (the ablation: uniform weights, zero
  hint features).

Each `training_step` is one round: `steps_per_round` control steps of rollout, then `epochs` PPO passes in
minibatches. Episodes are seeded by their index, so a resumed run drives the same episodes. Logged under train/:
return, success and collision rates, cache hit rate, knowledge-base rejections, hallucinations, losses.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from modules.objectives.losses import policy_loss
from modules.objectives.ppo import masked_whiten, value_loss
from modules.papers.hcrmp import (
    HINT_DIM,
    TERMS,
    BetaActorMultiCritic,
    DrivingEnv,
    KnowledgeBase,
    SemanticCache,
    asr_features,
    beta_entropy,
    beta_log_prob,
    make_hinter,
    multi_critic_advantage,
    per_critic_gae,
    scene_vector,
    to_action,
    to_unit,
)
from modules.settings import check_choice, check_number

HINTERS = ("rule", "noisy", "llm", "none")
DENSITY_NAMES = ("low", "medium", "high")


class HCRMP(L.LightningModule):
    """A hint-conditioned Beta actor with one critic per reward term, trained by PPO in highway-env."""

    def __init__(
        self,
        density: str = "medium",
        hinter: str = "rule",
        hallucination_rate: float = 0.42,
        hint_ttl: int = 10,
        knowledge_base: bool = True,
        llm: str = "smollm2-135m-instruct",
        horizon: int = 40,
        steps_per_round: int = 256,
        epochs: int = 4,
        minibatch_size: int = 64,
        gamma: float = 0.99,
        lam: float = 0.95,
        clip: float = 0.2,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        learning_rate: float = 3e-4,
        hidden: int = 64,
        seed: int = 0,
    ) -> None:
        """
        Args:
            density: Traffic density of training: low, medium or high.
            hinter: Who gives the hints: rule, noisy (rules with hallucinations), llm (a local LLM), none (ablation).
            hallucination_rate: Share of hints replaced by random ones (hinter noisy; the paper measures ~0.42).
            hint_ttl: Control steps a cached hint is reused for an unchanged scene (SCM).
            knowledge_base: Check each hint's critic weights against past (situation, outcome) records (CSA).
            llm: The hinter model (hinter llm): a local path or alias.
            horizon: Control steps of an episode (success = reaching it without a crash).
            steps_per_round: Control steps collected per training step (rollout length).
            epochs: PPO passes over each round's steps.
            minibatch_size: Steps per PPO update.
            gamma: Discount.
            lam: GAE lambda.
            clip: PPO clip range of the ratio and of the value.
            value_coef: Weight of the value losses (one per critic).
            entropy_coef: Entropy bonus of the Beta policy.
            learning_rate: Adam learning rate.
            hidden: Hidden width of the actor and the critics.
            seed: Seed of the networks, the hints and the episodes.
        """
        super().__init__()
        check_choice("model.density", density, DENSITY_NAMES)
        check_choice("model.hinter", hinter, HINTERS)
        check_number("model.hallucination_rate", hallucination_rate, low=0.0, high=1.0)
        for name, value in (("hint_ttl", hint_ttl), ("horizon", horizon), ("steps_per_round", steps_per_round),
                            ("epochs", epochs), ("minibatch_size", minibatch_size), ("hidden", hidden)):
            check_number(f"model.{name}", value, low=1, integer=True)
        for name, value in (("gamma", gamma), ("lam", lam)):
            check_number(f"model.{name}", value, low=0.0, high=1.0)
        check_number("model.learning_rate", learning_rate, low=0.0, low_open=True)
        self.save_hyperparameters()
        self.automatic_optimization = False
        torch.manual_seed(seed)
        self.env = DrivingEnv(density, seed=seed, horizon=horizon)
        self.hint_dim = HINT_DIM
        self.agent = BetaActorMultiCritic(self.env.obs_dim + self.hint_dim, self.env.action_dim, len(TERMS), hidden)
        kwargs: dict[str, Any] = {}
        if hinter == "noisy":
            kwargs = {"hallucination_rate": hallucination_rate, "seed": seed}
        elif hinter == "llm":
            kwargs = {"model": llm}
        self.hinter = make_hinter(hinter, **kwargs)
        self.cache = SemanticCache(self.hinter, ttl=hint_ttl)
        self.kb = KnowledgeBase() if knowledge_base else None
        self.episode = 0  # episodes started so far: episode e is seeded with seed + e
        self._obs: np.ndarray | None = None
        self._next_hint: tuple[np.ndarray, np.ndarray, bool] | None = None
        self._step_in_run = 0

    # ------------------------------------------------------------------ acting
    def hint(self, scene: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """(hint features, critic weights, accepted by the knowledge base) for the current scene."""
        h = self.cache(scene, self._step_in_run)
        weights, accepted = (h.weights, True) if self.kb is None else self.kb.check(h, self.scene_features(scene))
        return asr_features(h), np.asarray(weights, dtype=np.float32), accepted

    @staticmethod
    def scene_features(scene: dict) -> np.ndarray:
        """The situation vector the knowledge base compares (`scene_vector`: congestion, risk, speed, lane room)."""
        return np.asarray(scene_vector(scene), dtype=np.float32)

    def _reset(self) -> None:
        self._obs = self.env.reset(seed=self.hparams.seed + self.episode)
        self.episode += 1
        self._ep_return = 0.0  # an episode may span rounds: its return accumulates across them
        self._episode_weights: list[np.ndarray] = []
        self._episode_scene = self.scene_features(self.env.scene())

    @torch.no_grad()
    def act(self, obs: np.ndarray, features: np.ndarray, *, greedy: bool = False) -> tuple[np.ndarray, float, np.ndarray]:
        """(action in [-1, 1]^2, its log-prob, critic values (K,)) for one observation."""
        x = torch.as_tensor(np.concatenate([obs, features]), dtype=torch.float32, device=self.device)[None]
        alpha, beta, values = self.agent(x)
        if greedy:  # the Beta mode (alpha, beta > 1)
            u = (alpha - 1) / (alpha + beta - 2)
        else:
            u = torch.distributions.Beta(alpha, beta).sample()
        u = to_unit(to_action(u))  # clamp away from 0 / 1 exactly as the training log-prob sees it
        logp = beta_log_prob(alpha, beta, u)
        return to_action(u)[0].cpu().numpy(), float(logp[0]), values[0].cpu().numpy()

    def collect(self, steps: int) -> dict[str, Any]:
        """Roll the policy out for `steps` control steps; the tensors of the round and its episode statistics."""
        rec: dict[str, list] = {k: [] for k in ("obs", "u", "logp", "values", "terms", "done", "weights")}
        returns, successes, crashes, accepted = [], [], [], []
        if self._obs is None:
            self._reset()
        for _ in range(steps):
            # the hint of the round's first state was computed for the previous round's bootstrap value
            features, weights, ok = self._next_hint or self.hint(self.env.scene())
            self._next_hint = None
            accepted.append(ok)
            action, logp, values = self.act(self._obs, features)
            obs, terms, done, info = self.env.step(action)
            rec["obs"].append(np.concatenate([self._obs, features]))
            rec["u"].append(to_unit(torch.as_tensor(action, dtype=torch.float32)).numpy())
            rec["logp"].append(logp)
            rec["values"].append(values)
            rec["terms"].append([terms[k] for k in TERMS])
            rec["done"].append(float(done))
            rec["weights"].append(weights)
            self._episode_weights.append(weights)
            self._ep_return += float(np.dot(weights, [terms[k] for k in TERMS]))
            self._obs = obs
            self._step_in_run += 1
            if done:
                returns.append(self._ep_return)
                successes.append(float(info.get("success", False)))
                crashes.append(float(info.get("crashed", False)))
                if self.kb is not None:
                    self.kb.add(self._episode_scene, np.mean(self._episode_weights, 0), successes[-1])
                self._reset()
        with torch.no_grad():
            self._next_hint = self.hint(self.env.scene())  # consulted once: the next round's first step reuses it
            x = torch.as_tensor(np.concatenate([self._obs, self._next_hint[0]]), dtype=torch.float32)
            last_values = self.agent(x[None].to(self.device))[2][0]
        t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device) for k, v in rec.items()}
        t["last_values"] = last_values
        stats = {"episodes": float(len(returns)), "accepted": float(np.mean(accepted))}
        if returns:
            stats.update(episode_return=float(np.mean(returns)), success_rate=float(np.mean(successes)),
                         collision_rate=float(np.mean(crashes)))
        return {"tensors": t, "stats": stats}

    # ------------------------------------------------------------------ learning
    def configure_optimizers(self):
        return torch.optim.Adam(self.agent.parameters(), lr=self.hparams.learning_rate)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        started = time.perf_counter()
        hp = self.hparams
        round_ = self.collect(hp.steps_per_round)
        t = round_["tensors"]
        adv_k, ret_k = per_critic_gae(t["terms"], t["values"], t["done"], t["last_values"], gamma=hp.gamma,
                                      lam=hp.lam)  # (T, K) each
        advantages = multi_critic_advantage(adv_k, t["weights"])  # (T,)
        ones = torch.ones_like(advantages)
        advantages = masked_whiten(advantages[None], ones[None])[0]
        opt = self.optimizers()
        n = advantages.shape[0]
        sums: dict[str, float] = {}
        count = 0
        for _ in range(hp.epochs):
            for idx in torch.randperm(n, device=self.device).split(hp.minibatch_size):
                alpha, beta, values = self.agent(t["obs"][idx])
                logp = beta_log_prob(alpha, beta, t["u"][idx])  # (m,)
                mask = torch.ones_like(logp)[None]
                pi_loss, pi_metrics = policy_loss(logp[None], t["logp"][idx][None], advantages[idx][None], mask,
                                                  loss_type="bnpo", epsilon_low=hp.clip)
                v_loss, v_metrics = value_loss(values.T, t["values"][idx].T, ret_k[idx].T,
                                               torch.ones_like(values.T), clip_range=hp.clip)
                entropy = beta_entropy(alpha, beta).mean()
                loss = pi_loss + hp.value_coef * v_loss - hp.entropy_coef * entropy
                opt.zero_grad()
                self.manual_backward(loss)
                grad = torch.nn.utils.clip_grad_norm_(self.agent.parameters(), 0.5)
                opt.step()
                for key, value in {"policy_loss": pi_loss, "value_loss": v_loss, "entropy": entropy,
                                   "grad_norm": grad, "clip_ratio": pi_metrics["clip_ratio/region_mean"],
                                   "explained_variance": v_metrics["explained_variance"]}.items():
                    sums[key] = sums.get(key, 0.0) + float(torch.as_tensor(value).detach())
                count += 1
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        metrics.update(round_["stats"])
        metrics.update(self.hint_statistics())
        metrics["time/step_s"] = time.perf_counter() - started
        for k, name in enumerate(TERMS):
            metrics[f"reward/{name}"] = float(t["terms"][:, k].mean())
            metrics[f"weight/{name}"] = float(t["weights"][:, k].mean())
        self.log_dict({f"train/{k}": v for k, v in metrics.items() if math.isfinite(v)}, on_step=True,
                      prog_bar=False)

    def hint_statistics(self) -> dict[str, float]:
        out = {"hint/cache_hit_rate": float(self.cache.hit_rate)}
        if self.kb is not None:
            out["hint/kb_rejection_rate"] = float(self.kb.rejection_rate)
        for name in ("hallucinations", "parse_failures"):
            if hasattr(self.hinter, name):
                out[f"hint/{name}"] = float(getattr(self.hinter, name))
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, density: str, episodes: int, *, seed: int = 10_000, hinter: Any = None,
                 greedy: bool = True, random_policy: bool = False) -> dict[str, float]:
        """Success rate, collision rate and mean return of `episodes` held-out episodes (seeds from `seed`) at
        `density`, with this agent's hinter or another (`hinter`), or a uniformly random policy."""
        env = DrivingEnv(density, seed=seed, horizon=self.hparams.horizon)
        cache = SemanticCache(hinter if hinter is not None else self.hinter, ttl=self.hparams.hint_ttl)
        rng = np.random.default_rng(seed)
        successes, crashes, returns = [], [], []
        step = 0
        for e in range(episodes):
            obs, done, total = env.reset(seed=seed + e), False, 0.0
            info: dict = {}
            while not done:
                h = cache(env.scene(), step)
                step += 1
                if random_policy:
                    action = rng.uniform(-1, 1, size=env.action_dim).astype(np.float32)
                else:
                    action = self.act(obs, asr_features(h), greedy=greedy)[0]
                obs, terms, done, info = env.step(action)
                total += float(sum(terms.values()))
            successes.append(float(info.get("success", False)))
            crashes.append(float(info.get("crashed", False)))
            returns.append(total)
        return {"success_rate": float(np.mean(successes)), "collision_rate": float(np.mean(crashes)),
                "return": float(np.mean(returns))}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hcrmp"] = {"episode": self.episode, "step_in_run": self._step_in_run,
                               "kb": self.kb.state_dict() if self.kb is not None else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hcrmp") or {}
        self.episode = int(state.get("episode", 0))
        self._step_in_run = int(state.get("step_in_run", 0))
        if self.kb is not None and state.get("kb") is not None:
            self.kb.load_state_dict(state["kb"])
        self._obs, self._next_hint = None, None  # the next round starts a fresh episode (seeded by its index)


__all__ = ["DENSITY_NAMES", "HCRMP", "HINTERS"]
