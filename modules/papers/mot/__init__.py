"""Mixture-of-Thought (arXiv 2505.15817): the three reasoning modalities, their checkers and voting."""

from modules.papers.mot import modalities  # noqa: F401  (registers the MoT rewards)
