"""LASER (arXiv 2505.15612): length-based reward shaping and the difficulty monitor maths (`rewards`)."""

from modules.papers.laser import rewards  # noqa: F401  (registers laser, laser_d, laser_de, laser_correctness)
