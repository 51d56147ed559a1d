"""General-Reasoner (arXiv 2505.14652): answer extraction and the generative-verifier reward (`rewards`)."""

from modules.papers.general_reasoner import rewards  # noqa: F401  (registers general_verifier)
