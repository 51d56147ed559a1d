"""TAPO (arXiv 2505.15692): the thought library (`thoughts`) and the token-level pieces of mixed groups (`rollout`)."""

from __future__ import annotations

from modules.papers.tapo.thoughts import (
    ACTIONS,
    COMPLETION_HEADER,
    PROMPT_HEADER,
    DEFAULT_LIBRARY,
    SELECTION_MODES,
    TemplateStats,
    ThoughtTemplate,
    build_library_from_solutions,
    guidance_text,
    guided_prompt,
    load_library,
    pcc_similarity,
    problem_condition_complexity,
    retrieve_by_pcc,
    save_library,
    select_templates,
    ucb_score,
)

__all__ = [
    "ACTIONS", "COMPLETION_HEADER", "PROMPT_HEADER", "DEFAULT_LIBRARY", "SELECTION_MODES", "TemplateStats",
    "ThoughtTemplate", "build_library_from_solutions", "guidance_text", "guided_prompt", "load_library",
    "pcc_similarity", "problem_condition_complexity", "retrieve_by_pcc", "save_library", "select_templates",
    "ucb_score",
]
