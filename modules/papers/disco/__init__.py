"""DISCO (arXiv 2505.15074): domain and difficulty weights of the correctness reward (`rewards`)."""

from modules.papers.disco import rewards  # noqa: F401  (registers domain_correct)
