"""TinyV — a small LLM verifier that recovers the rule verifier's false negatives (Xu et al., UW-NSL, arXiv
2505.14625; spec section 15, built from the released code).

Implemented:

- The `tinyv` reward (`modules.papers.tinyv.rewards`): math-verify on the last ``\\boxed{}`` first; the LLM verifier
  (`modules.verifiers.LLMVerifier` with TinyV's prompt, greedy, 8 new tokens, "true" in the lowercased output,
  3 retries at temperature +0.3) is asked only about the rule's negatives in `addon` mode (r = 1 if ok else w·v),
  about every answer in `tinyv_only` (r = v) and `mixed` (r = w·v + (1 − w)·ok); mode and w are reward kwargs.
  All the LLM's items of a batch go into one batched `verify` call.
- Logged every step under train/verifier/: calls, items, rule_negatives, overturns, llm_overturn_rate (rule
  negatives the LLM judged correct: the false-negative rate), rule_negative_rate, no_answer_rate, seconds and
  time_share (verifier seconds / step seconds: TinyV's "extra compute").
- Settings of the released script: low_var_kl KL loss with coefficient 1e-3.

Documented substitutes: the verifier LM of the shipped config is the embedded SmolLM2-135M-Instruct (a stand-in
for zhangchenxu/TinyV-1.5B; set model.verifier.model_name_or_path to it on a GPU); math-verify stands in for
`prime_math`; the synthetic `general_qa` task (answers in many equivalent forms) stands in for Big-Math.
Not implemented: veRL's KL-in-reward (0.001) beside the KL loss.

[unverified], hence options: whether TinyV's prompt goes through the chat template (model.verifier.chat_template,
default auto = yes); what happens to a completion without a boxed answer (reward kwarg verify_missing, default:
scored 0 without asking the LLM).
"""

from __future__ import annotations

from typing import Any

from modules.objectives import ObjectiveSettings
from modules.papers.tinyv.rewards import tinyv_step_metrics
from modules.verifiers import VerifierSettings
from recipes.verified import VerifiedRecipe

REWARD = "tinyv"


class TinyV(VerifiedRecipe):
    """GRPO whose reward asks a small LLM verifier about the answers the rule verifier rejected."""

    verifier_reward = REWARD

    def __init__(
        self,
        *args: Any,
        verifier: VerifierSettings | None = None,
        objective: ObjectiveSettings = ObjectiveSettings(beta=1e-3, kl_estimator="low_var_kl"),
        accuracy_reward: str | None = REWARD,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            verifier: The LLM verifier (kind llm; model_name_or_path, prompt [default tinyv], max_new_tokens
                [default 8], batch_size, retries, dtype, chat_template, stop). Default: the embedded
                smollm2-135m-instruct as a stand-in for TinyV-1.5B. kind: rule uses the CPU rule stub instead.
            objective: As released: low_var_kl KL loss with coefficient 1e-3.
            accuracy_reward: Reward whose 1.0 means correct (the tinyv reward: 1.0 = rule or LLM accepted).
        """
        super().__init__(*args, verifier=verifier, objective=objective, accuracy_reward=accuracy_reward, **kwargs)

    def verifier_step_metrics(self, counts: dict[str, float], step_seconds: float) -> dict[str, float]:
        return tinyv_step_metrics(counts, step_seconds)
