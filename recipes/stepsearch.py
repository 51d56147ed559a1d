"""StepSearch / StePPO (Wang et al., arXiv 2505.15107, EMNLP 2025; spec 11, built from the released code's
reward and the paper's run settings): a search agent trained with PPO and a critic, whose outcome reward is
completed by a search-keyword reward and a per-step reward (information gain minus redundancy) placed on the
token that closes each search call.

Implemented (the maths is in `modules.papers.stepsearch.rewards`, retrieval in `modules.retrieval`):

- `build_rollout`: `MultiTurnToolEngine` with one tool, ``<search>q</search>`` -> the top-k BM25 documents as
  ``\\n<information>Doc i<## Title: T ##> content ...</information>\\n`` (observation tokens are masked out of the
  policy loss and the KL: state masking). Turn, per-turn, total and observation budgets are options.
- `score`: S = F1(answer) + gamma_key * R_key from the reward functions (``stepsearch_f1`` weight 1,
  ``stepsearch_keyword`` weight gamma_key = 0.618); the format gate (``stepsearch_format``): a completion whose
  last ``<answer>…</answer>`` is not its final text scores `format_penalty` (-1).
- `token_rewards`: per search step t, r_t = IG_t - P_t (TF-IDF information gain over the gold support paragraphs,
  exact-repeat redundancy), `step_reward_coef` * r_t (0.6) on the last token of that policy turn (the engine ends a
  turn exactly at the closing ``</search>``), S on the last policy token, overwriting; no step rewards when the
  gate fails. Then the PPO of `recipes.ppo`: KL-in-reward (k1, 0.001), GAE (gamma = lam = 1) over policy tokens
  only, clip 0.2, clipped value loss (0.5), entropy bonus 0.001.
- The documents of each step are parsed back from the observation tokens of the rollout (`search_steps`), not
  recorded by the tool: the rollout alone says what the policy read (after the observation cap, as the paper's
  reward parses its response text), and it survives row selection, concatenation and checkpoints.
- Logged each step under train/stepsearch/: ig and redundancy (mean per search step), searches (per rollout),
  step_reward (placed per rollout), f1, keyword, format_fail (rate) and tool_errors (per rollout).

Documented substitutes: BM25 (`bm25s`) over small synthetic corpora (`datamodules.tasks.two_hop`: "X was born in
Y", "Y's capital is Z") instead of E5 + FAISS over MuSiQue / wiki-18, and template keyword groups instead of GPT-4o
sub-question keywords; LoRA on SmolLM2-135M instead of full fine-tuning of Qwen2.5-3B/7B; smaller budgets on CPU.

[unverified] (from the code, not confirmed in the paper; options): gamma_key (the keyword reward's weight),
`step_reward_coef`, `format_penalty`, `top_k`; `stop_at_answer` (ending a turn at ``</answer>``, as Search-R1's
rollout does) and the token-mean loss of the shipped config (veRL's masked mean).

Data columns: `answer` (+ optional `aliases`), `search_keys` (keyword groups), `support_docs` (gold paragraphs:
text, or dicts with `text`), and the corpus: the `corpus` option, or a per-row JSONL path column (`corpus_column`)
with an optional `corpus_id_column` choosing the documents of that id.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import Tensor

from modules.retrieval import parse_docs, search_tool
from modules.rewards import RewardSet
from modules.papers.stepsearch.rewards import information_gain_steps, place_token_rewards, redundancy_steps
from modules.rollout.batch import RolloutBatch
from modules.rollout.multiturn import MultiTurnToolEngine
from modules.rollout.tools import ToolCallFormat
from modules.objectives import ObjectiveSettings
from recipes.base import RecipeConfigError
from recipes.ppo import PPO

TOOL = "search"


@dataclasses.dataclass
class SearchStep:
    """One executed search call of a rollout row."""

    query: str | None  # the text inside <search>…</search> (None when the call did not parse)
    docs: list[str]  # texts of the retrieved documents, as the policy read them
    position: int  # completion index of the turn's last token (the one closing </search>)
    error: bool  # the tool answered with an error observation


def search_steps(rollout: RolloutBatch, tokenizer) -> list[list[SearchStep]]:
    """Per row, the search steps: each policy turn followed by an observation, with the documents parsed from the
    observation's tokens. A turn that ends without an observation (the answer, or a call past max_turns) is not a
    step."""
    if rollout.turn_spans is None:
        raise ValueError("search_steps needs a multi-turn rollout (turn_spans is None)")
    fmt = ToolCallFormat("tags")
    ids, trained = rollout.completion_ids.tolist(), rollout.completion_mask.tolist()
    lengths = rollout.completion_attention_mask.sum(-1).tolist()  # real tokens come first (right padding)
    out = []
    for i, spans in enumerate(rollout.turn_spans):
        row = []
        for j, (start, end) in enumerate(spans):
            obs_end = spans[j + 1][0] if j + 1 < len(spans) else int(lengths[i])
            if end <= start or end >= obs_end or trained[i][end]:
                continue
            call = fmt.parse(tokenizer.decode(ids[i][start:end], skip_special_tokens=True), [TOOL])
            obs = tokenizer.decode(ids[i][end:obs_end], skip_special_tokens=True)
            inner = obs.strip().removeprefix("<information>").lstrip()
            row.append(SearchStep(query=None if call is None else call.arguments,
                                  docs=[d["text"] for d in parse_docs(obs)], position=end - 1,
                                  error=inner.startswith("Error:")))
        out.append(row)
    return out


class StepSearch(PPO):
    """PPO with a critic whose token rewards add per-search-step information gain minus redundancy (StePPO)."""

    def __init__(self, *args: Any, corpus: str | None = None, corpus_column: str = "corpus",
                 corpus_id_column: str = "corpus_id", gold_docs_column: str = "support_docs", top_k: int = 3,
                 max_turns: int = 5, max_tokens_per_turn: int | None = None, max_total_tokens: int | None = None,
                 max_observation_tokens: int = 800, stop_at_answer: bool = True, step_reward_coef: float = 0.6,
                 format_reward: str | None = "stepsearch_format", format_penalty: float = -1.0,
                 objective: ObjectiveSettings = ObjectiveSettings(scale_rewards="none", entropy_coef=0.001),
                 **kwargs: Any) -> None:
        """
        Args:
            corpus: One JSONL corpus for every row ({"id", "title", "text"} per line); null = each row's
                `corpus_column` names its corpus file.
            corpus_column: Row column holding the path of the row's JSONL corpus (used when `corpus` is null).
            corpus_id_column: Row column whose value selects the corpus documents with that `corpus_id` field
                (absent or null = the whole file).
            gold_docs_column: Row column with the gold support paragraphs (the information-gain targets).
            top_k: Documents returned per search (3 in the paper's code).
            max_turns: Policy turns per rollout (searches + the answer turn; 5 in the paper).
            max_tokens_per_turn: New tokens per policy turn (null = sampling.max_new_tokens; 800 in the paper).
            max_total_tokens: Completion budget, policy and observation tokens together (null = max_turns *
                max_tokens_per_turn + (max_turns - 1) * max_observation_tokens).
            max_observation_tokens: Cap on each observation's tokens (800 in the paper).
            stop_at_answer: End a turn at `</answer>` (so text after the answer cannot fail the format gate).
            step_reward_coef: Scale of the step reward r_t = IG_t - P_t on the token closing `</search>` (0 = off).
            format_reward: Reward function (by name in `rewards`) whose value 0 fails the format gate; null = no gate.
            format_penalty: Total reward of a completion that fails the format gate.
            objective: The shared objective (advantages from GAE; entropy bonus 0.001 as released).
        """
        for name, value in (("top_k", top_k), ("max_turns", max_turns), ("max_observation_tokens",
                                                                            max_observation_tokens)):
            if int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 1")
        for name, value in (("max_tokens_per_turn", max_tokens_per_turn), ("max_total_tokens", max_total_tokens)):
            if value is not None and int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; give a positive token count or null")
        if corpus is not None and not os.path.isfile(os.path.expanduser(corpus)):
            raise RecipeConfigError(f"model.corpus={corpus!r} is not a file; give a JSONL corpus or null to use "
                                    f"each row's {corpus_column!r} column")
        if format_reward is not None and kwargs.get("rewards") is not None:
            try:
                names = RewardSet.from_specs(kwargs["rewards"]).names
            except (ValueError, TypeError):  # a bad entry: RLRecipe reports it with its own message
                names = [format_reward]
            if format_reward not in names:
                raise RecipeConfigError(f"model.format_reward={format_reward!r} is not one of model.rewards "
                                        f"{names}; add {{name: {format_reward}, weight: 0.0}} or set it to null")
        super().__init__(*args, objective=objective, **kwargs)

    # ------------------------------------------------------------------ hooks
    def build_rollout(self) -> MultiTurnToolEngine:
        hp = self.hparams
        sampling = self.sampling
        if hp.stop_at_answer:
            sampling = dataclasses.replace(sampling, stop=list(dict.fromkeys([*(sampling.stop or []), "</answer>"])))
        per_turn = hp.max_tokens_per_turn or sampling.max_new_tokens
        total = hp.max_total_tokens or hp.max_turns * per_turn + (hp.max_turns - 1) * hp.max_observation_tokens
        tool = search_tool(corpus=hp.corpus, corpus_column=hp.corpus_column, corpus_id_column=hp.corpus_id_column,
                           k=hp.top_k)
        return MultiTurnToolEngine(self.policy, sampling, tools={TOOL: tool}, call_format="tags",
                                   max_turns=hp.max_turns, max_tokens_per_turn=per_turn, max_total_tokens=total,
                                   max_observation_tokens=hp.max_observation_tokens,
                                   generation_batch_size=hp.generation_batch_size)

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """S per row from the reward functions, then the format gate: `format_penalty` where it fails."""
        self._check_corpus(rollout.columns)
        rollout = super().score(rollout, purpose=purpose, **reward_kwargs)
        ok = self._gate(rollout).to(rollout.rewards.device)
        rollout.rewards = torch.where(ok, rollout.rewards, torch.full_like(rollout.rewards, self.hparams.format_penalty))
        return rollout

    def token_rewards(self, rollout: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """(N, T): step_reward_coef * (IG_t - P_t) on each search step's closing token, S on the last policy token."""
        hp = self.hparams
        mask = rollout.completion_mask
        steps = search_steps(rollout, self.policy.tokenizer)
        ok = self._gate(rollout).tolist()
        golds = rollout.columns.get(hp.gold_docs_column)
        if golds is None and hp.step_reward_coef:
            raise RecipeConfigError(f"StepSearch's step reward needs a {hp.gold_docs_column!r} column (the gold "
                                    "support paragraphs); set model.gold_docs_column, or model.step_reward_coef: 0")
        positions, values, igs, penalties = [], [], [], []
        for i, row in enumerate(steps):
            docs = [s.docs for s in row]
            ig = information_gain_steps(docs, _texts(golds[i])) if hp.step_reward_coef else [0.0] * len(row)
            p = redundancy_steps(docs)
            igs, penalties = igs + ig, penalties + p
            positions.append([s.position for s in row] if ok[i] else [])
            values.append([g - q for g, q in zip(ig, p)] if ok[i] else [])
        index = torch.arange(mask.shape[1], device=mask.device)
        last = (index[None, :] * mask.long()).argmax(-1).tolist()  # (N,) last policy token
        last = [pos if has else None for pos, has in zip(last, (mask.sum(-1) > 0).tolist())]
        out = place_token_rewards(tuple(mask.shape), positions, values, rollout.rewards.tolist(), last,
                                  coef=hp.step_reward_coef)
        n = max(len(steps), 1)
        metrics = {
            "stepsearch/ig": sum(igs) / len(igs) if igs else 0.0,
            "stepsearch/redundancy": sum(penalties) / len(penalties) if penalties else 0.0,
            "stepsearch/searches": sum(len(r) for r in steps) / n,
            "stepsearch/step_reward": hp.step_reward_coef * sum(sum(v) for v in values) / n,
            "stepsearch/format_fail": 1.0 - sum(ok) / n,
            "stepsearch/tool_errors": sum(s.error for r in steps for s in r) / n,
        }
        for key, name in (("f1", "stepsearch_f1"), ("keyword", "stepsearch_keyword")):
            if name in rollout.reward_names:
                metrics[f"stepsearch/{key}"] = float(rollout.rewards_per_func[:, rollout.reward_names.index(name)].nanmean())
        return out.to(mask.device), metrics

    # ------------------------------------------------------------------ helpers
    def _gate(self, rollout: RolloutBatch) -> Tensor:
        """(N,) bool: the format gate passed (all True when `format_reward` is null)."""
        name = self.hparams.format_reward
        if name is None:
            return torch.ones(len(rollout), dtype=torch.bool)
        return (rollout.rewards_per_func[:, rollout.reward_names.index(name)] > 0.5).cpu()

    def _check_corpus(self, columns: dict[str, list]) -> None:
        hp = self.hparams
        if hp.corpus is not None:
            return
        if hp.corpus_column not in columns:
            raise RecipeConfigError(f"StepSearch has no corpus: set model.corpus to a JSONL file, or give the data a "
                                    f"{hp.corpus_column!r} column (columns: {sorted(columns)})")
        for path in set(map(str, columns[hp.corpus_column])):
            if not os.path.isfile(os.path.expanduser(path)):
                raise RecipeConfigError(f"data column {hp.corpus_column!r}: corpus file {path!r} does not exist")


def _texts(golds: Any) -> list[str]:
    """Gold paragraphs as text (strings, or dicts with `text` / `paragraph_text`)."""
    if golds is None:
        return []
    return [g if isinstance(g, str) else str(g.get("text", g.get("paragraph_text", ""))) for g in golds]
