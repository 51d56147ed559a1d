"""StepSearch (arXiv 2505.15107): search-step information gain, redundancy and answer rewards (`rewards`)."""

from modules.papers.stepsearch import rewards  # noqa: F401  (registers the StepSearch rewards)
