"""GRPO — Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300, Eq. 3) and its
common variants selected by configuration alone:

- Dr.GRPO (Liu et al., arXiv 2503.20783): `objective: {loss_type: dr_grpo, scale_rewards: none}`.
- DAPO (Yu et al., arXiv 2503.14476): `objective: {loss_type: dapo, epsilon_high: 0.28}`, `batching:
  {dynamic_sampling: true}`, and `objective.mask_truncated_completions: true` or the `overlong` reward.
- RLOO baseline (Ahmadian et al., arXiv 2402.14740): `objective: {advantage_estimator: rloo}`.

The loop itself lives in `recipes.base.RLRecipe`; GRPO adds nothing to it.
"""

from __future__ import annotations

from recipes.base import RLRecipe


class GRPO(RLRecipe):
    """Group-relative policy optimisation: the shared loop with its defaults (grpo loss, group-scaled advantages)."""
