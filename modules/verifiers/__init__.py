"""Answer verifiers behind one interface (`Verifier.verify(questions, golds, answers) -> list[VerifierResult]`).

- `MathRuleVerifier` (math-verify) and `RuleStubVerifier` (CPU stand-in writing an LLM's decision text):
  `modules.verifiers.rule`.
- `LLMVerifier`: any local causal LM with the TinyV or General-Reasoner prompt preset: `modules.verifiers.llm`.
- `RemoteVerifier`: a judge behind an OpenAI-compatible chat-completions server: `modules.verifiers.remote`.
- `build_verifier(VerifierSettings)`: what the TinyV and General-Reasoner recipes call with their `verifier:` block.
"""

from __future__ import annotations

from modules.verifiers.base import CallableVerifier, Verifier, VerifierError, VerifierResult, VerifierStats
from modules.verifiers.llm import (
    GENERAL_VERIFIER_PROMPT,
    PRESETS,
    TINYV_PROMPT,
    LLMVerifier,
    clear_verifier_cache,
    fill_prompt,
    load_verifier_policy,
    parse_final_decision,
    parse_true_false,
)
from modules.verifiers.remote import RemoteVerifier, chat_completions_url
from modules.verifiers.factory import VERIFIER_KINDS, VerifierSettings, build_verifier
from modules.verifiers.rule import MathRuleVerifier, RuleStubVerifier, equivalent, normalize_answer, parse_number

__all__ = [
    "GENERAL_VERIFIER_PROMPT",
    "PRESETS",
    "TINYV_PROMPT",
    "VERIFIER_KINDS",
    "CallableVerifier",
    "LLMVerifier",
    "MathRuleVerifier",
    "RemoteVerifier",
    "RuleStubVerifier",
    "Verifier",
    "VerifierError",
    "VerifierResult",
    "VerifierSettings",
    "VerifierStats",
    "build_verifier",
    "chat_completions_url",
    "clear_verifier_cache",
    "equivalent",
    "fill_prompt",
    "load_verifier_policy",
    "normalize_answer",
    "parse_final_decision",
    "parse_true_false",
    "parse_number",
]
