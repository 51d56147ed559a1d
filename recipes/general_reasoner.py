"""General-Reasoner — "zero" RL on multi-domain questions with a generative answer verifier (Ma, …, Chen, arXiv
2505.14652; spec section 13, built from the released code and the tech report).

Implemented:

- The `general_verifier` reward (`modules.papers.general_reasoner.rewards`): answer extraction (last ``\\boxed{}``, then
  "Final Answer:" / "The answer is:" / "Answer:" / ... up to the newline); no answer -> -0.5; the verifier's
  "Final Decision: Yes" -> 1 − 0.05·min(10, |ntok(answer) − ntok(gold)|) with ntok from the policy's tokenizer
  (passed by this recipe), else 0.
- The verifier sits behind the same `Verifier` interface and `LLMVerifier` as TinyV, with the general-verifier
  prompt (raw text, no chat template, greedy, 2048 new tokens, "Final Decision: Yes" parsing).
- Logged under train/verifier/: calls, items, accuracy (judged equivalent / rows), no_answer_rate,
  mean_length_penalty, seconds, time_share (of the step).
- Settings of `train_general_reasoner.sh`: clip 0.3, dual-clip c = 10 (`delta: 10`, the cap on the unclipped
  ratio, gives the same loss), low_var_kl KL loss 1e-4, entropy bonus 1e-3.

Documented substitutes: the shipped config verifies with the CPU rule stub (`verifier.kind: rule`: normalised
string / number / fraction / unit-stripped equality that writes "Final Decision: Yes/No", parsed like an LLM's
output); `kind: llm` with the embedded SmolLM2-135M-Instruct is the stand-in for TIGER-Lab/general-verifier (the
config shows the switch); the synthetic `general_qa` task stands in for WebInstruct-verified. Extraction reads the
completion, not the last 1024 tokens of prompt + response.

[unverified], hence options: the order in which the answer phrases are tried (priority order, see
`extract_general_answer`), the verifier's decoding budget on small stand-ins (model.verifier.max_new_tokens,
stop strings).
"""

from __future__ import annotations

from typing import Any

from modules.objectives import ObjectiveSettings
from modules.papers.general_reasoner.rewards import general_verifier_step_metrics
from modules.rollout.batch import RolloutBatch
from modules.verifiers import VerifierSettings
from recipes.verified import VerifiedRecipe

REWARD = "general_verifier"


class GeneralReasoner(VerifiedRecipe):
    """GRPO with a generative verifier's decision and a length-difference penalty as the reward."""

    verifier_reward = REWARD

    def __init__(
        self,
        *args: Any,
        verifier: VerifierSettings | None = None,
        objective: ObjectiveSettings = ObjectiveSettings(epsilon_low=0.3, delta=10.0, beta=1e-4,
                                                         kl_estimator="low_var_kl", entropy_coef=1e-3),
        accuracy_reward: str | None = REWARD,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            verifier: The answer verifier: kind rule (CPU stub writing "Final Decision: Yes/No") or llm
                (model_name_or_path, prompt [default general_verifier], max_new_tokens [default 2048], batch_size,
                retries, dtype, chat_template [default never], stop). Default: kind llm with smollm2-135m-instruct.
            objective: As released: clip 0.3 (epsilon_high defaults to it), delta 10 (veRL's dual-clip c = 10),
                low_var_kl KL loss 1e-4, entropy bonus 1e-3.
            accuracy_reward: Reward logged as accuracy (note: general_verifier values lie in [-0.5, 1]; the
                share judged equivalent is train/verifier/accuracy).
        """
        super().__init__(*args, verifier=verifier, objective=objective, accuracy_reward=accuracy_reward, **kwargs)

    def score(self, rollout: RolloutBatch, *, purpose: str, **reward_kwargs: Any) -> RolloutBatch:
        """Adds the policy's `tokenizer` (for ntok) to the verifier keywords."""
        return super().score(rollout, purpose=purpose, tokenizer=self.policy.tokenizer, **reward_kwargs)

    def verifier_step_metrics(self, counts: dict[str, float], step_seconds: float) -> dict[str, float]:
        return general_verifier_step_metrics(counts, step_seconds)
