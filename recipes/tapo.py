"""TAPO — Thought-Augmented Policy Optimization (Wu, Liao, Feng et al., arXiv 2505.15692; v4 "TemplateRL"; spec
section 7, built from the abstract and third-party summaries: no public code was found).

Implemented (the library, PCC, selection and statistics are in `modules.papers.tapo.thoughts`, the token-level pieces in
`modules.papers.tapo.rollout`):

- A thought library of templates (sequences of the actions SA, DC, OST, CoT, SR), each indexed by a problem
  condition complexity (PCC). Each question's PCC (its `num_conditions` column, else the numbers in its text)
  retrieves the `top_k` closest templates; `selection` picks among them (`pcc`: drawn in proportion to PCC
  similarity; `ucb`: adaptive, by observed success with the PCC match as prior; `uniform`).
- Mixed groups (`generate` for training): each prompt's group holds `num_generations - n_guided`
  plain rollouts then `n_guided` rollouts guided by a selected template, under one group id; the shared loop's GRPO
  advantages are computed over the combined group (G = G_plain + G_guided). Held-out evaluation stays plain.
- Per-template statistics (`TemplateStats`: uses, mean reward, success rate), logged as
  train/tapo/template/<name>/uses|reward|success (cumulative) and saved in checkpoints; per step
  train/tapo/guided_reward, plain_reward, guided_accuracy, plain_accuracy, guided_share, pcc. Under DDP each rank
  keeps its own statistics (rank 0's are checkpointed).

Documented substitutes: the paper builds its library offline with MCTS over 500 seed problems; MCTS is out of scope.
A small hand-written library is the default, `library` loads your own JSON, and
`modules.papers.tapo.build_library_from_solutions` abstracts solved action sequences into templates. Synthetic
multi-step word problems (`datamodules.tasks.word_problems`) stand in for MATH.

[unverified], hence options: where the template goes and what is trained (`template_in`, `train_context`,
`mask_template`), the split `n_guided`, `top_k`, the prompt wording, and the adaptive selection (`selection`).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import repeat_columns
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.prefix import generate_with_prefix
from modules.papers.tapo.rollout import interleave_groups, replace_prompt_rows
from modules.papers.tapo.thoughts import (
    COMPLETION_HEADER,
    SELECTION_MODES,
    TemplateStats,
    ThoughtTemplate,
    guidance_text,
    guided_prompt,
    load_library,
    problem_condition_complexity,
    select_templates,
)
from modules.rollout.engine import split_rows
from modules.settings import signature_default
from recipes.base import RecipeConfigError, RLRecipe

TEMPLATE_COLUMN = "tapo_template"  # per-row template name (None on plain rows); reward functions see it too


class TAPO(RLRecipe):
    """GRPO whose groups mix plain rollouts with rollouts guided by high-level thought templates."""

    def __init__(
        self,
        *args: Any,
        n_guided: int = 2,
        top_k: int | None = 3,
        selection: str = "pcc",
        library: str | list[dict] | None = None,
        template_in: str = "prompt",
        train_context: str = "guided",
        mask_template: bool = True,
        pcc_column: str | None = "num_conditions",
        success_threshold: float = 0.5,
        prior_strength: float = 2.0,
        exploration: float = 1.0,
        template_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            n_guided: Template-guided rollouts in each group (the rest of num_generations are plain); 0 = GRPO.
            top_k: Templates retrieved per question by PCC similarity (null = the whole library, ranked).
            selection: Which retrieved template guides each guided rollout: pcc (drawn in proportion to
                1 / (1 + |PCC difference|)), ucb (adaptive: success rate smoothed towards the PCC similarity plus
                an exploration bonus, from the statistics so far) or uniform.
            library: Thought templates: null = the built-in hand-written library, a .json path, or a list of
                {name, actions: [SA|DC|OST|CoT|SR, ...], pcc} entries.
            template_in: prompt = the template's steps are appended to the guided rollout's prompt (never trained);
                completion = they are forced as the first tokens of the completion (see mask_template).
            train_context: For template_in=prompt: guided = the loss scores a guided completion under the guided
                prompt it was sampled from (on-policy); plain = it is re-scored under the plain prompt (off-policy:
                the policy learns to produce guided-quality reasoning without the template; the importance ratio
                is taken against the old policy under the plain prompt, with no correction for the guided sampler).
            mask_template: For template_in=completion: true = the forced template tokens are read but left out of
                the loss (completion_mask 0); false = they are trained with the rollout's advantage.
            pcc_column: Row column holding the question's PCC (number of given conditions); rows without it get
                the count of numbers in their `question` (else prompt) text.
            success_threshold: A guided rollout counts as a success for its template when its `accuracy_reward`
                value (the total reward when there is none) is at least this.
            prior_strength: selection=ucb: pseudo-trials given to the PCC-similarity prior.
            exploration: selection=ucb: weight of the sqrt(ln(1 + total uses) / (1 + uses)) bonus.
            template_seed: Seed of the template draws (pcc and uniform selection); saved in checkpoints.
        """
        for field, value, allowed in (("selection", selection, SELECTION_MODES),
                                      ("template_in", template_in, ("prompt", "completion")),
                                      ("train_context", train_context, ("guided", "plain"))):
            if value not in allowed:
                raise RecipeConfigError(f"model.{field}={value!r}; use one of {', '.join(allowed)}")
        num_generations = kwargs.get("num_generations", signature_default(RLRecipe, "num_generations"))
        if not 0 <= n_guided <= num_generations:
            raise RecipeConfigError(f"model.n_guided={n_guided} must be between 0 and model.num_generations="
                                    f"{num_generations} (the guided part of each group)")
        if top_k is not None and top_k < 1:
            raise RecipeConfigError(f"model.top_k={top_k} must be >= 1 (or null for the whole library)")
        if template_in == "completion" and train_context == "plain":
            raise RecipeConfigError("model.train_context='plain' re-scores a completion under the prompt without the "
                                    "template, which applies to template_in='prompt' only; with template_in="
                                    "'completion' use mask_template to keep the template out of the loss")
        if template_in == "prompt" and not mask_template:
            raise RecipeConfigError("model.mask_template=false trains the template tokens, but with template_in="
                                    "'prompt' they are prompt tokens and never trained; set template_in: completion")
        if prior_strength < 0 or exploration < 0:
            raise RecipeConfigError(f"model.prior_strength={prior_strength} and model.exploration={exploration} "
                                    "must be >= 0")
        try:
            self.library: list[ThoughtTemplate] = load_library(library)
        except ValueError as err:
            raise RecipeConfigError(f"model.library: {err}") from err
        super().__init__(*args, **kwargs)
        needs_tokens = template_in == "completion" or train_context == "plain"
        if needs_tokens and n_guided and not isinstance(self.rollout_engine, HFGenerateEngine):
            raise RecipeConfigError(f"model.template_in={template_in!r} / train_context={train_context!r} need the "
                                    f"HF generate engine; this recipe's engine is {type(self.rollout_engine).__name__}")
        self.template_stats = TemplateStats()
        self._rng = random.Random(template_seed)

    # ------------------------------------------------------------------ templates
    def question_pcc(self, row: dict) -> float:
        """PCC of a prompt row: its `pcc_column` value, else the number of quantities in its question text."""
        col = self.hparams.pcc_column
        if col and row.get(col) is not None:
            try:
                return float(row[col])
            except (TypeError, ValueError):
                raise RecipeConfigError(f"model.pcc_column={col!r}: value {row[col]!r} is not a number") from None
        text = row.get("question", row["prompt"])
        if isinstance(text, list):  # chat messages: the last user message
            text = next((m["content"] for m in reversed(text) if m.get("role") == "user"), "")
        return float(problem_condition_complexity(str(text)))

    def choose_templates(self, rows: list[dict]) -> list[list[ThoughtTemplate]]:
        """`n_guided` templates per row, chosen by `selection` among the `top_k` closest in PCC."""
        hp = self.hparams
        return [[self.library[i] for i in select_templates(
            self.question_pcc(row), self.library, hp.n_guided, mode=hp.selection, top_k=hp.top_k,
            stats=self.template_stats, rng=self._rng, prior_strength=hp.prior_strength, exploration=hp.exploration)]
            for row in rows]

    # ------------------------------------------------------------------ mixed groups
    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """Training groups mix plain and template-guided rollouts; held-out evaluation stays plain."""
        if purpose != "train" or self.hparams.n_guided == 0:
            return super().generate(rows, purpose=purpose, greedy=greedy, num_generations=num_generations)
        return self.generate_mixed(rows, num_generations)

    def generate_mixed(self, rows: list[dict], num_generations: int) -> RolloutBatch:
        """B groups of (num_generations - n_guided) plain then n_guided guided rollouts, group ids 0..B-1."""
        hp, engine = self.hparams, self.rollout_engine
        prompts, columns = split_rows(rows)
        b, g, ng = len(prompts), num_generations, hp.n_guided
        templates = [t for ts in self.choose_templates(rows) for t in ts]  # (B * ng), row-major
        parts = []
        if g > ng:
            plain = engine.generate(prompts, columns, num_generations=g - ng)
            plain.columns[TEMPLATE_COLUMN] = [None] * len(plain)
            parts.append(plain)
        g_prompts, g_columns = [p for p in prompts for _ in range(ng)], repeat_columns(columns, ng)
        if hp.template_in == "prompt":
            guided = engine.generate([guided_prompt(p, t) for p, t in zip(g_prompts, templates)], g_columns,
                                     num_generations=1)
        else:
            tok = self.policy.tokenizer
            prefixes = [tok(guidance_text(t, header=COMPLETION_HEADER, numbered=False) + "\n",
                            add_special_tokens=False)["input_ids"] for t in templates]
            guided = generate_with_prefix(engine, g_prompts, g_columns, prefixes, train_prefix=not hp.mask_template)
        guided.columns[TEMPLATE_COLUMN] = [t.name for t in templates]
        parts.append(guided)
        merged = RolloutBatch.concat(parts).select(interleave_groups(b, g - ng, ng))
        merged.group_ids = torch.arange(b, device=merged.group_ids.device).repeat_interleave(g)  # (B * G,)
        if hp.template_in == "prompt" and hp.train_context == "plain":  # re-score guided completions, plain prompt
            rows_guided = [i for i, name in enumerate(merged.columns[TEMPLATE_COLUMN]) if name is not None]
            ids, mask = engine.encode_prompts(prompts, columns.get("system_prompt", [None] * b))  # (B, P0)
            merged.prompt_ids, merged.prompt_mask = replace_prompt_rows(
                merged.prompt_ids, merged.prompt_mask, rows_guided, ids.repeat_interleave(ng, 0),
                mask.repeat_interleave(ng, 0), merged.pad_token_id)
            for i in rows_guided:
                merged.prompts[i] = prompts[i // g]
        return merged

    # ------------------------------------------------------------------ statistics and metrics
    def _success_values(self, rollout: RolloutBatch) -> torch.Tensor:
        return self.accuracy_values(rollout) if self.accuracy_reward is not None else rollout.rewards

    def update_template_stats(self, rollout: RolloutBatch) -> None:
        """Add each guided row's reward and success (>= success_threshold) to its template's statistics."""
        success = (self._success_values(rollout) >= self.hparams.success_threshold).tolist()
        for name, reward, ok in zip(rollout.columns[TEMPLATE_COLUMN], rollout.rewards.tolist(), success):
            if name is not None:
                self.template_stats.update(name, reward, ok)

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """The guided rows' outcomes into the template statistics, then guided vs plain metrics of the step."""
        if TEMPLATE_COLUMN in rollout.columns:
            self.update_template_stats(rollout)
        names = rollout.columns.get(TEMPLATE_COLUMN, [None] * len(rollout))
        first = range(0, len(rollout), rollout.group_size)  # one row per prompt (groups are adjacent)
        rows = [{"prompt": rollout.prompts[i], **{k: v[i] for k, v in rollout.columns.items()}} for i in first]
        guided = torch.tensor([n is not None for n in names], device=rollout.rewards.device)  # (N,)
        out = {"tapo/guided_share": float(guided.float().mean()),
               "tapo/pcc": sum(self.question_pcc(r) for r in rows) / len(rows)}
        acc = self.accuracy_values(rollout) if self.accuracy_reward is not None else None
        for key, sel in (("guided", guided), ("plain", ~guided)):
            if bool(sel.any()):
                out[f"tapo/{key}_reward"] = float(rollout.rewards[sel].mean())
                if acc is not None:
                    out[f"tapo/{key}_accuracy"] = float(acc[sel].mean())
        if self.hparams.template_in == "completion" and bool(guided.any()):
            injected = rollout.injected_mask.sum(-1).float()  # (N,) template tokens kept out of the loss
            out["tapo/masked_template_tokens"] = float(injected[guided].mean())
        out.update(self.template_stats.metrics([t.name for t in self.library]))
        return out

    # ------------------------------------------------------------------ checkpoints
    def recipe_state(self) -> dict[str, Any]:
        return {"template_stats": self.template_stats.state_dict(), "rng": self._rng.getstate()}

    def load_recipe_state(self, state: dict[str, Any]) -> None:
        if state:
            self.template_stats.load_state_dict(state["template_stats"])
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))
