"""LHRM / HGPO (arXiv 2505.14631): hybrid rewards (`rewards`) and the inter/intra-group advantages (`objectives`)."""

from modules.papers.hgpo import rewards  # noqa: F401  (registers hybrid_correct, toy_chat_rm)
