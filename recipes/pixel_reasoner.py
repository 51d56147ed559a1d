"""Pixel Reasoner — curiosity-driven RL for pixel-space reasoning (Su, Wang, Ren, Lin, Chen; arXiv 2505.15966;
spec section 2, from the released code where the paper is silent).

A vision-language policy may call two visual operations inside a multi-turn rollout (Qwen function-calling format,
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, observations as the chat template's tool turn):
`crop_image_normalized` (zoom into a normalised box of any image seen so far) and `select_frames` (pick frames of
the row's 16-frame clip). The returned images become the next turn's images (`modules.rollout.multiturn`): their
tokens are masked from the loss and the KL, and every later forward sees them. Implemented:
- Rewards (`modules.papers.pixel_reasoner`): `pixel_answer` (`\\boxed{}` correctness, forced to 0 when the last
  operation errored and was never fixed) and `pixel_shaping` (per group: the curiosity bonus while the group's rate
  of pixel-space reasoning RaPR is below H, the efficiency penalty beyond N operations), in the paper form
  (`r + alpha max(H - RaPR, 0) 1[used] + beta min(N - n, 0)`, per-term form [unverified]) by default and in the
  released code's form (`form: code`: the extra `0.25 / RaPR` factor, divisor 2 for images, 1.5 for video), with
  H 0.3, N 1, beta 0.05 [repo]; alpha 0.5 for the paper form is our choice [unverified] (no value was published).
- Objective: group-normalised GRPO, no KL, lr 1e-6, temperature 1.0, top-p 0.95 [repo].
- The warm start: SFT on synthetic tool-use traces (the returned images inside the conversation), then GRPO, as one
  `r1 run --config recipes/pipelines/pixel_reasoner.yaml`.
- Metrics: RaPR, operations per rollout, operation error rate, accuracy per kind (zoom / video).

On CPU a tiny random VLM exercises every part; the paper's effect needs Qwen2.5-VL-7B on GPUs.
"""

from __future__ import annotations

import functools
from typing import Any

from modules.optim import OptimizerSettings
from modules.papers.pixel_reasoner.tools import TOOLS, tool_system_prompt
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings
from modules.rollout.multiturn import MultiTurnToolEngine
from recipes.base import RecipeConfigError, RLRecipe


class PixelReasoner(RLRecipe):
    """GRPO with image-returning visual operations, the curiosity bonus and the efficiency penalty."""

    def __init__(
        self,
        model_name_or_path: str,
        rewards: list[RewardSpec | str],
        *args: Any,
        max_turns: int = 4,
        max_total_tokens: int | None = None,
        max_frames: int = 4,
        zoom_min_side: int = 224,
        tool_prompt: bool = True,
        sampling: SamplingSettings = SamplingSettings(temperature=1.0, top_p=0.95),
        optimizer: OptimizerSettings = OptimizerSettings(learning_rate=1e-6),
        accuracy_reward: str | None = "pixel_answer",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            max_turns: Most policy turns per rollout (each operation call ends one).
            max_total_tokens: Completion budget over all turns, observations (image tokens) included (null =
                max_turns x sampling.max_new_tokens).
            max_frames: Most frames one select_frames call may return (the released prompt allows 8).
            zoom_min_side: A crop is enlarged so its longer side has at least this many pixels.
            tool_prompt: Give rows without a system prompt the released function-calling prompt listing both tools.
            sampling: Temperature 1.0, top-p 0.95, as released.
            optimizer: Learning rate 1e-6, as released.
        """
        for name, value in (("max_turns", max_turns), ("max_frames", max_frames), ("zoom_min_side", zoom_min_side)):
            if int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 1")
        super().__init__(model_name_or_path, rewards, *args, sampling=sampling, optimizer=optimizer,
                         accuracy_reward=accuracy_reward, **kwargs)
        if self.policy.vision is None:
            raise RecipeConfigError(f"Pixel Reasoner's operations return images: model.model_name_or_path="
                                    f"{model_name_or_path!r} is a text model; give a vision-language checkpoint "
                                    "(tiny-qwen2-vl for a smoke run, Qwen/Qwen2.5-VL-7B-Instruct on GPUs)")
        self.max_turns, self.max_total_tokens = int(max_turns), max_total_tokens
        self.max_frames, self.zoom_min_side, self.tool_prompt = int(max_frames), int(zoom_min_side), tool_prompt

    # ------------------------------------------------------------------ hooks
    def build_rollout(self) -> MultiTurnToolEngine:
        tools = {"crop_image_normalized": functools.partial(TOOLS["crop_image_normalized"],
                                                            zoom_min_side=self.zoom_min_side),
                 "select_frames": functools.partial(TOOLS["select_frames"], max_frames=self.max_frames)}
        return MultiTurnToolEngine(self.policy, self.sampling, tools=tools, call_format="chat",
                                   max_turns=self.max_turns, max_total_tokens=self.max_total_tokens,
                                   generation_batch_size=self.generation_batch_size)

    def generate(self, rows: list[dict], *, purpose: str, greedy: bool = False, num_generations: int = 1
                 ) -> RolloutBatch:
        """Rows without a system prompt get the function-calling prompt listing both operations."""
        if self.tool_prompt:
            prompt = tool_system_prompt(max_frames=self.max_frames)
            rows = [row if row.get("system_prompt") else {**row, "system_prompt": prompt} for row in rows]
        return super().generate(rows, purpose=purpose, greedy=greedy, num_generations=num_generations)

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """RaPR, operations per rollout and the operation error rate of the step."""
        return {f"pixel/{k}": v for k, v in operation_statistics(rollout).items()}

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Held-out RaPR, operations per rollout, error rate, and accuracy per kind (zoom / video)."""
        if not rollouts:
            return {}
        batch = RolloutBatch.concat(rollouts)
        out = {f"eval/pixel/{k}": v for k, v in operation_statistics(batch).items()}
        if self.accuracy_reward is not None and "kind" in batch.columns:
            correct = self.accuracy_values(batch).tolist()
            for kind in sorted({k for k in batch.columns["kind"] if k is not None}):
                rows = [c for c, k in zip(correct, batch.columns["kind"]) if k == kind]
                out[f"eval/pixel/accuracy/{kind}"] = sum(rows) / len(rows)
        return out


def operation_statistics(rollout: RolloutBatch) -> dict[str, float]:
    """RaPR (share of rollouts with at least one operation), operations per rollout, and errors per operation."""
    calls = rollout.columns.get("tool_calls")
    if not calls:
        return {}
    errors = rollout.columns.get("tool_errors", [0] * len(calls))
    total = sum(calls)
    return {"rapr": sum(c > 0 for c in calls) / len(calls), "operations_per_rollout": total / len(calls),
            "operation_error_rate": sum(errors) / total if total else 0.0}


__all__ = ["PixelReasoner", "operation_statistics"]
