"""NOVER (arXiv 2505.16022): reasoning-perplexity rewards (`rewards`) and the policy-as-proxy (`proxy`)."""

from modules.papers.nover import rewards  # noqa: F401  (registers nover_format, nover_reasoning, nover_efficiency)
