"""360-R1 — GRPO for question answering on 360-degree panoramas (Zhang, Ye, Zheng; OmniVQA, arXiv 2505.14197;
spec section 17).

A vision-language policy reads an equirectangular (ERP) panorama and a question (object identification, attribute,
spatial relation), reasons in `<think>` and answers in `<answer>`. Standard GRPO (group-normalised advantages, clipped
surrogate) with the paper's three rewards. No code, prompt or formula was released, so the rewards are **our
substitute** [unverified], built from the reward names and a review:
- `omni_reasoning`: cosine similarity (clipped to [0, 1]) of the `<think>` text and the reference chain (`reasoning`
  column), sentence embeddings of the packaged all-MiniLM-L6-v2 (`modules.text_embeddings`; TF-IDF only where
  sentence-transformers or the package is missing, said once in the log);
- `omni_answer`: the same similarity between the `<answer>` text and the reference answer;
- `omni_format`: 1 for `<think>...</think><answer>...</answer>`, else 0.
The weights are the rewards' `weight` entries in the config (1 / 1 / 1 by default). Exact-match accuracy of the
answer (the `accuracy` reward with weight 0) is logged, never rewarded.

Metrics: held-out and per-step answer accuracy and answer similarity per question type (`omni/...`). The CPU config
runs a tiny random VLM on synthetic panoramas (`datamodules.tasks.panorama`), which exercises every part; the effect
of the paper (+6% on OmniVQA with Qwen2.5-VL) needs a pretrained VLM on a GPU (recipes/configs/scale/).
"""

from __future__ import annotations

from typing import Any

from modules.papers.omni_r1.rewards import answer_metrics
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from recipes.base import RecipeConfigError, RLRecipe
from recipes.policy_module import prefixed_metrics


class OmniR1(RLRecipe):
    """GRPO on panoramas with reasoning-similarity, answer-similarity and format rewards, metrics per question type."""

    def __init__(self, model_name_or_path: str, rewards: list[RewardSpec | str], *args: Any,
                 metrics_encoder: str = "minilm", **kwargs: Any) -> None:
        """
        Args:
            metrics_encoder: Sentence encoder of the answer-similarity metrics: minilm (the packaged
                all-MiniLM-L6-v2) or tfidf.
        """
        if metrics_encoder not in ("minilm", "tfidf"):
            raise RecipeConfigError(f"model.metrics_encoder={metrics_encoder!r}; use minilm or tfidf")
        super().__init__(model_name_or_path, rewards, *args, **kwargs)
        if self.policy.vision is None:
            raise RecipeConfigError(f"360-R1 answers questions about panorama images: model.model_name_or_path="
                                    f"{model_name_or_path!r} is a text model; give a vision-language checkpoint "
                                    "(tiny-qwen2-vl for a smoke run, Qwen/Qwen2.5-VL-3B-Instruct on a GPU)")
        self.metrics_encoder = metrics_encoder

    def on_step_end(self, rollout: RolloutBatch) -> dict[str, float]:
        """The step's answer accuracy and similarity (per question type only in evaluation: a step's batch need not
        hold every type, and a metric that comes and goes is a gap in the logs)."""
        stats = self.answer_statistics(rollout)
        return prefixed_metrics({k: v for k, v in stats.items() if "/" not in k}, "omni")

    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """Held-out answer accuracy and similarity, overall and per question type (`eval/omni/...`)."""
        if not rollouts:
            return {}
        return prefixed_metrics(self.answer_statistics(RolloutBatch.concat(rollouts)), "eval/omni")

    def answer_statistics(self, rollout: RolloutBatch) -> dict[str, float]:
        cols = rollout.columns
        if "answer" not in cols or "question_type" not in cols:
            return {}
        return answer_metrics(rollout.completions, cols["answer"], cols["question_type"],
                              encoder=self.metrics_encoder)


__all__ = ["OmniR1"]
