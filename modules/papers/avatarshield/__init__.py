"""AvatarShield (arXiv 2505.15173): real/fake parsing, the accuracy / format / temporal compensation rewards and
forgery metrics (`rewards`). The synthetic clips are `datamodules.tasks.fake_clips`."""

from modules.papers.avatarshield import rewards  # noqa: F401  (registers avatar_accuracy, avatar_format, avatar_temporal)
from modules.papers.avatarshield.rewards import (  # noqa: F401
    FORGERY_TYPES,
    LABEL_SYNONYMS,
    LABELS,
    forgery_metrics,
    parse_label,
    temporal_bonus,
)
