"""Pixel Reasoner (arXiv 2505.15966): the visual-operation tools (`tools`) and the curiosity-driven rewards
(`rewards`). The synthetic task and the warm-start traces are `datamodules.tasks.pixel_search`."""

from modules.papers.pixel_reasoner import rewards  # noqa: F401  (registers pixel_answer, pixel_shaping)
from modules.papers.pixel_reasoner.rewards import (  # noqa: F401
    curiosity_bonus,
    efficiency_penalty,
    group_modifiers,
    pixel_answer,
    rapr,
)
from modules.papers.pixel_reasoner.tools import (  # noqa: F401
    GUIDELINE,
    TOOLS,
    crop_image_normalized,
    select_frames,
    tool_specs,
    tool_system_prompt,
)
