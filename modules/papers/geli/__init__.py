"""LLM-GELI (Lee, Park, Breazeal, Morency; arXiv 2505.15922): session-score decomposition into turn rewards
(`decompose`) and the lightweight turn reward model distilled from them (`reward_model`, reward `geli_rm`)."""

from modules.papers.geli import reward_model  # noqa: F401  (registers geli_rm)
