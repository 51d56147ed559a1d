"""Adaptive entropy coefficient: steer the policy's token entropy toward a target.

Skywork-OR1 (He et al. 2025, arXiv 2505.22312, Sec. 3.2.3 "adaptive entropy control"): after each optimiser step k
with measured token-mean entropy ``H_k``, the entropy-bonus coefficient moves by a fixed step toward more exploration
when the entropy is below the target and less when above,

    c_{k+1} = max(0, c_k + delta)  if H_k < H*   else   max(0, c_k - delta),

so the bonus ``-c * H`` grows while the entropy stays below the target and decays to 0 above it. The maths is ``adaptive_entropy_coef``;
``AdaptiveEntropyCoef`` is the small state a recipe owns (one value and the entropies of the current step).
"""

from __future__ import annotations

import math


def adaptive_entropy_coef(coef: float, entropy: float, *, target: float, step: float) -> float:
    """The next coefficient: ``max(0, coef + step)`` when ``entropy < target``, else ``max(0, coef - step)``."""
    if not math.isfinite(entropy):
        return coef
    return max(0.0, coef + step) if entropy < target else max(0.0, coef - step)


class AdaptiveEntropyCoef:
    """The coefficient of the entropy bonus, updated once per optimiser step from that step's mean entropy.

    ``coefficient(step, entropy)`` is called for each micro-batch with the optimiser-step counter and the
    micro-batch's token-mean entropy; when ``step`` changes, the entropies recorded for the previous step update the
    coefficient (``adaptive_entropy_coef``) before it is returned.

    >>> c = AdaptiveEntropyCoef(0.0, target=1.0, step=0.01)
    >>> c.coefficient(0, 0.5), c.coefficient(0, 0.7), c.coefficient(1, 2.0), c.coefficient(2, 2.0)
    (0.0, 0.0, 0.01, 0.0)
    """

    def __init__(self, initial: float, *, target: float, step: float) -> None:
        self.value, self.target, self.step = float(initial), float(target), float(step)
        self._step: int | None = None
        self._sum, self._count = 0.0, 0

    def coefficient(self, step: int, entropy: float) -> float:
        if step != self._step:
            if self._count:
                self.value = adaptive_entropy_coef(self.value, self._sum / self._count, target=self.target,
                                                   step=self.step)
            self._step, self._sum, self._count = step, 0.0, 0
        if math.isfinite(entropy):
            self._sum, self._count = self._sum + float(entropy), self._count + 1
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


__all__ = ["AdaptiveEntropyCoef", "adaptive_entropy_coef"]
