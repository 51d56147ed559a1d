"""HCRMP (arXiv 2505.15793): an LLM-hinted multi-critic RL motion planner, without LLM fine-tuning.

Spec section 6. `env` (highway-env driving with per-term rewards; highway-env is imported only when a `DrivingEnv`
is built: ``pip install 'r1-recipes[driving]'``), `hints` (ASR features, critic weights, the hinters, the semantic
cache SCM and the knowledge-base check CSA) and `agent` (the Beta actor with one critic per term, per-critic GAE and
the weighted advantage). The LightningModule is `recipes/hcrmp.py`.
"""

from modules.papers.hcrmp.agent import (  # noqa: F401
    BetaActorMultiCritic,
    beta_entropy,
    beta_log_prob,
    multi_critic_advantage,
    per_critic_gae,
    to_action,
    to_unit,
)
from modules.papers.hcrmp.env import (  # noqa: F401
    BASE_CONFIG,
    DENSITIES,
    DIRECTIONS,
    TERMS,
    DrivingEnv,
    direction_of,
)
from modules.papers.hcrmp.hints import (  # noqa: F401
    HINT_DIM,
    SCENARIO_NAMES,
    Hint,
    KnowledgeBase,
    LLMHinter,
    NoHinter,
    NoisyHinter,
    RuleHinter,
    SemanticCache,
    asr_features,
    critical_directions,
    make_hinter,
    parse_llm_answer,
    scene_key,
    scene_text,
    scene_vector,
)
