"""GETER (arXiv 2505.15245): the temporal-KG graph token prefixed to the prompt (`graph_prefix`)."""

from modules.papers.geter import graph_prefix  # noqa: F401  (registers temporal_label)
