"""GUI-G1 (arXiv 2505.15810): grounding rewards, box parsing, difficulty weights and box metrics (`rewards`)."""

from modules.papers.gui_g1 import rewards  # noqa: F401  (registers gui_hit, gui_iou, gui_box)
from modules.papers.gui_g1.rewards import (  # noqa: F401
    DIFFICULTY_WEIGHTS,
    GROUNDING_TEMPLATE,
    box_metrics,
    difficulty_weight,
    parse_boxes,
)
