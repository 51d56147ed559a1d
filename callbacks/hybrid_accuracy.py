"""`HybridAccuracy`: the Hybrid Accuracy (HAcc) metric of LHRM (arXiv 2505.14631, spec 14c) on held-out prompts."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.periodic import PeriodicEvaluation
from modules.papers.hgpo.objectives import NO_THINK, THINK, hybrid_accuracy
from modules.papers.hgpo.rollout import choose_modes, forced_mode_rollout, tag_token_ids
from modules.rollout.engine import split_rows
from modules.rollout.hf import HFGenerateEngine


class HybridAccuracy(PeriodicEvaluation):
    """HAcc on `trainer.datamodule.held_out_rows()`: for each prompt, sample `samples_per_mode` responses forced into
    each mode and score them with the module's reward functions; the reference mode is the one with the higher mean
    reward, or, when the means are within `margin`, the one with the shorter mean length. Then let the model answer
    freely and read the mode tag it writes first. HAcc = share of prompts where that choice equals the reference.

    Works with any `RLRecipe` using the HF generate engine (HGPO, and the SFT stage before it). Logged (to every
    logger at `trainer.global_step`, into `trainer.callback_metrics`, and kept in `history`): `eval/hacc`,
    `eval/hacc/think_rate` (free choice), `eval/hacc/no_mode_rate` (neither tag), `eval/hacc/reference_think_rate`,
    `eval/hacc/reward/<mode>`, `eval/hacc/length/<mode>` (forced samples), and `eval/hacc/think_rate/<value>` per
    value of `group_column` (e.g. easy / multi / chat).
    """

    def __init__(self, every_n_steps: int = 0, samples_per_mode: int = 2, margin: float = 0.1,
                 think_tag: str | None = None, no_think_tag: str | None = None, greedy_choice: bool = False,
                 group_column: str | None = "kind", batch_size: int = 16, max_rows: int | None = None,
                 at_start: bool = True, at_end: bool = True) -> None:
        """
        Args:
            every_n_steps: also evaluate when `global_step` is a positive multiple of this; 0 = never.
            samples_per_mode: forced responses per mode and prompt for the reference mode.
            margin: mean rewards closer than this count as a tie, broken by the shorter mode ([unverified]: the
                paper's margin is not given).
            think_tag: think-mode tag; null = the module's `think_tag` hyper-parameter, else `<think>`.
            no_think_tag: no-think tag; null = the module's `no_think_tag`, else `<no_think>`.
            greedy_choice: read the free choice from greedy decoding instead of sampling with the module's settings.
            group_column: row column to break the free think rate down by (null = none).
            batch_size: prompts per generation batch.
            max_rows: use the first `max_rows` held-out rows only (null = all).
            at_start: evaluate before the first step.
            at_end: evaluate after the last step (unless the last periodic evaluation was at that step).
        """
        for name, value, low in (("every_n_steps", every_n_steps, 0), ("samples_per_mode", samples_per_mode, 1),
                                 ("batch_size", batch_size, 1)):
            if int(value) < low:
                raise ValueError(f"HybridAccuracy({name}={value}): must be >= {low}")
        if margin < 0 or (max_rows is not None and max_rows < 1):
            raise ValueError(f"HybridAccuracy(margin={margin}, max_rows={max_rows}): margin must be >= 0 and max_rows "
                             ">= 1 (or None)")
        super().__init__(every_n_steps, at_start=at_start, at_end=at_end)
        self.samples_per_mode, self.margin = int(samples_per_mode), margin
        self.think_tag, self.no_think_tag, self.greedy_choice = think_tag, no_think_tag, greedy_choice
        self.group_column, self.batch_size, self.max_rows = group_column, int(batch_size), max_rows

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        engine = getattr(pl_module, "rollout_engine", None)
        if not isinstance(engine, HFGenerateEngine) or not callable(getattr(pl_module, "score", None)):
            raise TypeError(f"HybridAccuracy needs an RLRecipe with the HF generate engine; {type(pl_module).__name__} "
                            f"has {type(engine).__name__}")

    # ------------------------------------------------------------------ evaluation
    def tags(self, pl_module: L.LightningModule) -> tuple[str, str]:
        hp = getattr(pl_module, "hparams", {})
        return (self.think_tag or hp.get("think_tag") or "<think>",
                self.no_think_tag or hp.get("no_think_tag") or "<no_think>")

    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule, rows: list[dict]) -> dict[str, float]:
        """HAcc and its parts on `rows` (see the class docstring)."""
        think_tag, no_think_tag = self.tags(pl_module)
        engine = pl_module.rollout_engine
        prefixes = tag_token_ids(pl_module.policy.tokenizer, think_tag, no_think_tag)
        k = self.samples_per_mode
        system = getattr(pl_module, "system_prompt_for", None)  # the SFT module's system prompt, as it trains
        if callable(system):
            rows = [{**r, "system_prompt": system(r)} if system(r) is not None else r for r in rows]
        scores: dict[str, list[list[float]]] = {THINK: [], NO_THINK: []}
        lengths: dict[str, list[list[float]]] = {THINK: [], NO_THINK: []}
        chosen: list[str | None] = []
        longest = max(len(ids) for ids in prefixes.values())
        for i in range(0, len(rows), self.batch_size):
            prompts, columns = split_rows(rows[i:i + self.batch_size])
            forced = forced_mode_rollout(engine, prompts, columns, prefixes, k)
            forced = pl_module.score(forced, purpose="eval")
            reward = forced.rewards.view(len(prompts), 2, k).tolist()  # (B, mode, k): think first
            length = forced.completion_lengths.view(len(prompts), 2, k).float().tolist()
            for r, n in zip(reward, length):
                scores[THINK].append(r[0]), scores[NO_THINK].append(r[1])
                lengths[THINK].append(n[0]), lengths[NO_THINK].append(n[1])
            chosen += choose_modes(engine, prompts, columns, think_tag, no_think_tag, max_new_tokens=longest + 2,
                                   greedy=self.greedy_choice)
        hacc, refs = hybrid_accuracy(chosen, scores[THINK], scores[NO_THINK], lengths[THINK], lengths[NO_THINK],
                                     margin=self.margin)
        q = len(rows)
        out = {"eval/hacc": hacc, "eval/hacc/think_rate": sum(c == THINK for c in chosen) / q,
               "eval/hacc/no_mode_rate": sum(c is None for c in chosen) / q,
               "eval/hacc/reference_think_rate": sum(r == THINK for r in refs) / q}
        for mode in (THINK, NO_THINK):
            out[f"eval/hacc/reward/{mode}"] = sum(map(sum, scores[mode])) / (q * k)
            out[f"eval/hacc/length/{mode}"] = sum(map(sum, lengths[mode])) / (q * k)
        if self.group_column:
            by: dict[str, list[bool]] = {}
            for row, c in zip(rows, chosen):
                if row.get(self.group_column) is not None:
                    by.setdefault(str(row[self.group_column]), []).append(c == THINK)
            out.update({f"eval/hacc/think_rate/{v}": sum(x) / len(x) for v, x in sorted(by.items())})
        return out

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        getter = getattr(getattr(trainer, "datamodule", None), "held_out_rows", None)
        rows = list(getter()) if callable(getter) else []
        rows = rows if self.max_rows is None else rows[: self.max_rows]
        if not rows:
            rank_zero_warn("HybridAccuracy: the datamodule has no held-out rows; skipping. Set --data.val_size.")
            return
        self._record(trainer, self.evaluate(pl_module, rows))


__all__ = ["HybridAccuracy"]
