"""Safety Subspaces (arXiv 2505.14185): subspace projections and overlaps (`subspaces`), the report (`report`)."""
