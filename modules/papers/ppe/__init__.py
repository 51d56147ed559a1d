"""pPE (arXiv 2505.14157): prior-prompt strategies (`prior`) and the exact-structure format reward (`rewards`)."""

from modules.papers.ppe import rewards  # noqa: F401  (registers exact_structure)
