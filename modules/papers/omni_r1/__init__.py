"""360-R1 / OmniVQA (arXiv 2505.14197): GRPO on 360-degree panorama VQA with three rewards (`rewards`).

The paper's reward formulas are unreleased ([unverified], spec 17 (b)); ``omni_reasoning``, ``omni_answer`` and
``omni_format`` are **our substitute**: semantic similarity of the think block to the reference chain, of the answer
block to the reference answer, and the shared think/answer format check. The synthetic panoramas are
`datamodules.tasks.panorama`.
"""

from modules.papers.omni_r1 import rewards  # noqa: F401  (registers omni_reasoning, omni_answer, omni_format)
