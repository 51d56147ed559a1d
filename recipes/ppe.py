"""pPE — Prior Prompt Engineering for reinforcement fine-tuning (Taveekitworachai et al., SCB 10X, arXiv 2505.14157).

What is implemented (spec 19):
- the RL algorithm is plain GRPO, unchanged (19 (c)); only the *prior prompt* varies, one of five strategies
  (`modules.papers.ppe.prior.STRATEGIES`: think, plan, code, knowledge, examples), each with its own tag (19 (a));
- `PriorPromptDataModule`: a `PromptDataModule` whose `strategy` sets the system prompt (the strategy's
  instruction) and adds a `prior_tag` column, so the format reward checks the tag the prompt asked for;
- rewards (19 (b)): `exact_structure` (one `<x>...</x>` then one `<answer>...</answer>`, nothing else) at 0.5 and
  `accuracy` (math-verify on the text inside `<answer>`, `\\boxed{}` parsed by math-verify) at 0.5: total in
  {0, 0.5, 1};
- the recipe is `recipes.grpo.GRPO` as it is: its held-out evaluation reports every reward function's mean
  (`eval/rewards/<name>/mean`, e.g. the format rate), which `r1 compare --preset ppe` tabulates for the five configs.

Documented substitutes: synthetic arithmetic instead of STILLv3, SmolLM2-135M-Instruct + LoRA instead of
Qwen2.5-7B, our own instruction wording (the paper's is NOT FOUND), the instruction given as a system prompt.

[unverified] and therefore options: the prompt wording (`modules.papers.ppe.prior`; override with
`data.system_prompt`); the reward weights (config); whether an answer without `\\boxed{}` counts (`extract: answer_tag`
also accepts a bare `<answer>42</answer>`; 2nd-hand sources say boxed); all GRPO
hyperparameters (NOT FOUND; the configs use recipes/configs/grpo.yaml's).
"""

from __future__ import annotations

from typing import Any

from datamodules.errors import DataConfigError
from datamodules.prompts import PromptDataModule
from modules.papers.ppe.prior import STRATEGIES, get_strategy

PRIOR_TAG_COLUMN = "prior_tag"


class PriorPromptDataModule(PromptDataModule):
    """Prompts with a pPE prior prompt: the strategy's instruction as system prompt, the question as user turn."""

    def __init__(self, strategy: str, **kwargs: Any) -> None:
        """
        Args:
            strategy: The pPE strategy: think, plan, code, knowledge or examples (modules.papers.ppe.prior.STRATEGIES).
                Sets the system prompt (unless `system_prompt` is given) and each row's `prior_tag` column, which
                the `exact_structure` reward checks.
        """
        if strategy not in STRATEGIES:
            raise DataConfigError(f"--data.strategy={strategy!r}; use one of {', '.join(STRATEGIES)}")
        if kwargs.get("system_prompt") is None:
            kwargs["system_prompt"] = get_strategy(strategy).instruction()
        super().__init__(**kwargs)
        self.strategy = strategy

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        super().setup(stage)
        tag = get_strategy(self.strategy).tag
        for row in (*self.train_rows, *self.val_rows):
            row[PRIOR_TAG_COLUMN] = tag
