"""Not All Correct Answers Are Equal (arXiv 2505.14464): verification filters and per-teacher statistics."""
