"""TinyV (arXiv 2505.14625): the rule-then-LLM verifier reward (`rewards`)."""

from modules.papers.tinyv import rewards  # noqa: F401  (registers tinyv)
