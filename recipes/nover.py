"""NOVER — verifier-free incentive training (Liu, Qi, Wang, Qian, Du, He; arXiv 2505.16022, EMNLP 2025; spec
section 1, built from the paper's project page and the authors' code, which has no license: clean-room).

Implemented (the maths is in `modules.papers.nover.rewards`, the proxy in `modules.papers.nover.proxy`):

- `score`: for each format-valid rollout, the proxy model scores the reference answer g (dataset column
  `answer_column`) as ``"\\n<answer>\\n{g}\\n</answer>"`` after the prompt's tokens and
  ``"\\n<think>\\n{t}\\n</think>\\n"``; the reasoning perplexity P_r = exp(mean NLL / N(|t|)),
  N(|t|) = max(1, 1 + log|t|), is passed to the rewards with |t| (reasoning tokens) and the group ids.
- Rewards (`rewards_per_func` columns ``format``, ``reasoning``, ``efficiency``; weights `format_weight`,
  `reasoning_weight`, `efficiency_weight`, 1 each): strict tag format R_f, rank-based R_r over the group's valid
  rollouts, efficiency R_e (shorter and lower perplexity than siblings). Invalid rollouts get R_r = R_e = 0, which
  is the gate of R = w_f R_f + 1[R_f = 1](w_r R_r + w_e R_e). Extra functions in `rewards` are added to the total
  with their weights (the shipped config adds exact-match `accuracy` with weight 0, a logged diagnostic only).
- Policy-as-proxy (`modules.papers.nover.proxy.ProxyModel`): a second LoRA adapter (or a frozen copy for a full fine-tune)
  that starts equal to the policy and is mixed theta_proxy <- 0.9 theta_proxy + 0.1 theta_policy every
  `proxy_update_every` steps (`on_step_end`); it is also the KL reference (`prepare_logps`). Its weights are saved
  in the Lightning checkpoint under ``nover_proxy`` (a full model for a full fine-tune); `save_pretrained` of a
  LoRA policy also writes the proxy adapter to a ``proxy/`` subfolder.
- Objective defaults of the authors' trl config: G = 8, advantages without std (`scale_rewards: none`), clip
  0.1 / 0.2, k3 KL with beta 0.1, temperature 0.6, lr 1e-5, no chat template (`NOVER_TEMPLATE` as raw text).
- Logged: train/nover/perplexity (mean over valid rollouts; absent when none is valid), train/nover/valid_rate,
  train/nover/proxy_updates.

Documented substitutes: the synthetic free-form QA of `datamodules.tasks.freeform` (task ``freeform_qa``) for the
NOVEReason sub-datasets; the repo mixes the proxy at each checkpoint save (every 100 steps), here on its own
schedule; P_r is computed with the proxy's untempered distribution; the prompt is the rollout's own tokens and the
think / answer blocks are tokenised separately (the target tokens are exactly the tokenised answer block).

[unverified], hence options: the log base of N(|t|) (`length_log_base`, 10 as the repo; the paper writes log),
`proxy_mix_alpha`, `proxy_update_every`, `proxy_as_reference`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from modules.papers.nover.proxy import ProxyModel
from modules.rewards import RewardSet, RewardSpec
from modules.papers.nover.rewards import parse_think_answer, reasoning_perplexity, scoring_ids, target_token_logps
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from modules.objectives import ObjectiveSettings
from recipes.base import RecipeConfigError, RLRecipe, logp_inputs

NOVER_TEMPLATE = ("Question: {question}\n\nAnswer the question and return in the following format:\n\n"
                  "<think>\n...\n</think>\n\n<answer>\n...\n</answer>\n")
"""The authors' prompt (spec 1(d)); use it as `data.template` with `sampling.chat_template: never`."""
NOVER_COLUMNS = ("format", "reasoning", "efficiency")
CHECKPOINT_KEY = "nover_proxy"
PPL_COLUMN = "nover_perplexity"  # per-row P_r (None where the format is invalid)


class NOVER(RLRecipe):
    """GRPO whose rewards come from the policy-as-proxy's reasoning perplexity of the reference answer."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str] | None = None,
        *,
        format_weight: float = 1.0,
        reasoning_weight: float = 1.0,
        efficiency_weight: float = 1.0,
        answer_column: str = "answer",
        length_log_base: float = 10.0,
        proxy_update_every: int = 100,
        proxy_mix_alpha: float = 0.9,
        proxy_as_reference: bool = True,
        scoring_batch_size: int | None = None,
        sampling: SamplingSettings = SamplingSettings(temperature=0.6, chat_template="never"),
        objective: ObjectiveSettings = ObjectiveSettings(scale_rewards="none", epsilon_low=0.1, epsilon_high=0.2,
                                                         beta=0.1),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            rewards: Extra reward functions added to NOVER's three (e.g. exact-match `accuracy` with weight 0 as a
                diagnostic); null = none.
            format_weight: w_f, weight of the strict tag-format reward R_f (column `format`).
            reasoning_weight: w_r, weight of the rank-based reasoning reward R_r (column `reasoning`).
            efficiency_weight: w_e, weight of the efficiency reward R_e (column `efficiency`).
            answer_column: Dataset column holding the reference answer g.
            length_log_base: Log base of N(|t|) = max(1, 1 + log|t|): 10 as the authors' code (the paper writes
                log; 2.718281828 for the natural log).
            proxy_update_every: Mix the proxy towards the policy every this many training steps (the repo: every
                checkpoint save, 100 steps); 0 = never (a frozen proxy).
            proxy_mix_alpha: alpha of theta_proxy <- alpha * theta_proxy + (1 - alpha) * theta_policy (repo: 0.9).
            proxy_as_reference: The proxy is also the KL reference (NOVER); false = the shared `reference` option.
            scoring_batch_size: Rows per proxy forward when scoring perplexities (null = batching.micro_batch_size).
            sampling: Sampling settings; NOVER uses temperature 0.6 and no chat template.
            objective: The authors' trl config: advantages r - group mean (scale_rewards none), clip 0.1 / 0.2,
                k3 KL with beta 0.1 (the reference is the proxy).
        """
        for name, value in (("format_weight", format_weight), ("reasoning_weight", reasoning_weight),
                            ("efficiency_weight", efficiency_weight)):
            if not math.isfinite(value):
                raise RecipeConfigError(f"model.{name}={value}; give a finite weight (1 in the paper)")
        if not length_log_base > 1:
            raise RecipeConfigError(f"model.length_log_base={length_log_base}; use a base > 1 (10 as the authors' "
                                    "code, 2.718281828 for the natural log)")
        if int(proxy_update_every) < 0:
            raise RecipeConfigError(f"model.proxy_update_every={proxy_update_every}; use >= 0 (0 = never mix)")
        if not 0.0 <= proxy_mix_alpha <= 1.0:
            raise RecipeConfigError(f"model.proxy_mix_alpha={proxy_mix_alpha}; it must be in [0, 1] (NOVER: 0.9)")
        specs: list[Any] = [RewardSpec("nover_format", format_weight), RewardSpec("nover_reasoning", reasoning_weight),
                            RewardSpec("nover_efficiency", efficiency_weight), *(rewards or [])]
        super().__init__(model_name_or_path, specs, sampling=sampling, objective=objective, **kwargs)
        rs = self.reward_set  # name NOVER's columns format / reasoning / efficiency (a user's `format` -> format_2)
        self.reward_set = RewardSet(rs.funcs, rs.weights, [*NOVER_COLUMNS, *rs.names[len(NOVER_COLUMNS):]],
                                    rs.timeouts)
        self.proxy = ProxyModel(self.policy)
        self._nover_steps = 0  # training steps done (the proxy mixes every proxy_update_every of them)

    # ------------------------------------------------------------------ rewards
    def reasoning_scores(self, rollout: RolloutBatch) -> tuple[list[float | None], list[int]]:
        """(P_r per row, None where the format is invalid; |t| per row, 0 where invalid), scored by the proxy."""
        hp = self.hparams
        answers = rollout.columns.get(hp.answer_column)
        if answers is None:
            raise RecipeConfigError(f"model.answer_column={hp.answer_column!r} is not a dataset column (columns: "
                                    f"{sorted(rollout.columns)}); NOVER scores the reference answer from it")
        parsed = [parse_think_answer(c) for c in rollout.completions]
        rows = [i for i, (ok, _, _) in enumerate(parsed) if ok]
        ppl: list[float | None] = [None] * len(rollout)
        think_lens = [0] * len(rollout)
        for i in rows:
            if answers[i] is None or not str(answers[i]).strip():
                raise RecipeConfigError(f"row {i} has an empty {hp.answer_column!r}; NOVER needs a reference answer "
                                        f"for every prompt (prompt: {str(rollout.prompts[i])[:120]!r})")
        if not rows:
            return ppl, think_lens
        tok = self.policy.tokenizer
        prompts = [rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist() for i in rows]
        contexts, targets, lens = scoring_ids(tok, prompts, [parsed[i][1] for i in rows],
                                              [str(answers[i]).strip() for i in rows])
        with self.proxy.active() as model:
            logps, mask = target_token_logps(model, contexts, targets, pad_token_id=tok.pad_token_id,
                                             micro_batch_size=hp.scoring_batch_size or self.batching.micro_batch_size,
                                             device=self.policy.device)
        values = reasoning_perplexity(logps, mask, lens, hp.length_log_base).tolist()
        for i, value, k in zip(rows, values, lens):
            ppl[i], think_lens[i] = value, k
        return ppl, think_lens

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """The proxy's reasoning perplexities reach the rewards (`reasoning_ppl`, `think_lengths`) and stay in the
        rollout as column `nover_perplexity` (None where the format is invalid)."""
        ppl, think_lens = self.reasoning_scores(rollout)
        rollout = super().score(rollout, purpose=purpose, reasoning_ppl=ppl, think_lengths=think_lens,
                                **reward_kwargs)
        rollout.columns[PPL_COLUMN] = ppl
        return rollout

    # ------------------------------------------------------------------ proxy: KL reference and mixing
    @torch.no_grad()
    def prepare_logps(self, rollout: RolloutBatch) -> None:
        if not self.hparams.proxy_as_reference or self.objective.beta == 0.0:
            return super().prepare_logps(rollout)
        if self.batching.passes > 1:  # as the shared loop does
            rollout.old_logps = self.trainer_logps(rollout)
        with self.proxy.active() as proxy:
            rollout.ref_logps, _ = self.policy.token_logps(
                *logp_inputs(rollout), temperature=self.sampling.temperature,
                micro_batch_size=self.batching.micro_batch_size, model=proxy, vision=rollout.vision)

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """Mix the proxy every `proxy_update_every` steps; the step's perplexity and format-valid share."""
        self._nover_steps += 1
        every = self.hparams.proxy_update_every
        if every and self._nover_steps % every == 0:
            self.proxy.mix_(self.hparams.proxy_mix_alpha)
        ppl = rollout.columns.get(PPL_COLUMN, [])
        valid = [p for p in ppl if p is not None]
        metrics = {"nover/proxy_updates": float(self.proxy.updates), "nover/valid_rate": len(valid) / max(1, len(ppl))}
        if valid:
            metrics["nover/perplexity"] = sum(valid) / len(valid)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def recipe_state(self) -> dict[str, Any]:
        # The frozen proxy is not a trainable weight, so the shared checkpoint leaves it out: it goes here.
        return {CHECKPOINT_KEY: {"weights": self.proxy.state_dict(), "updates": self.proxy.updates,
                                 "steps": self._nover_steps}}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in state:
            raise RecipeConfigError(f"this checkpoint has no {CHECKPOINT_KEY!r} state (not written by NOVER?); "
                                    "resume NOVER from a NOVER checkpoint")
        saved = state[CHECKPOINT_KEY]
        self.proxy.load_state_dict(saved["weights"])
        self.proxy.updates, self._nover_steps = int(saved["updates"]), int(saved["steps"])
