"""Building a `Verifier` from a recipe's `verifier:` block (`VerifierSettings` -> `build_verifier`)."""

from __future__ import annotations

from dataclasses import dataclass

from modules.verifiers.base import Verifier
from modules.verifiers.llm import PRESETS, LLMVerifier
from modules.verifiers.rule import RuleStubVerifier


@dataclass
class VerifierSettings:
    """Which verifier a recipe uses (the `verifier:` block of the TinyV / General-Reasoner configs)."""

    kind: str = "llm"
    """llm: a local causal LM (`model_name_or_path`); rule: the CPU rule stub (normalised string / number /
    fraction / unit-stripped equality) that writes the preset's decision text, which is then parsed."""
    model_name_or_path: str = "smollm2-135m-instruct"
    """The verifier LM: path, alias or hub id (papers: zhangchenxu/TinyV-1.5B, TIGER-Lab/general-verifier)."""
    prompt: str | None = None
    """Prompt preset (tinyv, general_verifier) or a template with {question}, {gold}, {answer}; null = the
    recipe's own preset."""
    parse: str | None = None
    """Output parser (true_false, final_decision); null = the preset's."""
    max_new_tokens: int | None = None
    """Verifier decoding budget; null = the preset's (tinyv 8, general_verifier 2048)."""
    batch_size: int = 32
    """Items per verifier `generate` call."""
    retries: int = 3
    """Retries when `generate` raises (k-th at temperature 0.3 k)."""
    dtype: str = "float32"
    """Verifier weights dtype."""
    chat_template: str | None = None
    """auto, always or never; null = the preset's (tinyv auto [unverified], general_verifier never)."""
    stop: list[str] | None = None
    """Optional stop strings for the verifier's output."""


VERIFIER_KINDS = ("llm", "rule")


def build_verifier(settings: VerifierSettings | dict | None = None, *, default_prompt: str = "tinyv") -> Verifier:
    """A `Verifier` from settings (`kind` llm or rule); `default_prompt` is used when `settings.prompt` is null."""
    if settings is None:
        settings = VerifierSettings()
    elif isinstance(settings, dict):
        settings = VerifierSettings(**settings)
    prompt = settings.prompt or default_prompt
    if settings.kind == "rule":
        if prompt not in PRESETS:
            raise ValueError(f"verifier.kind=rule writes a preset's decision text; verifier.prompt={prompt!r} must "
                             f"be one of {sorted(PRESETS)}")
        return RuleStubVerifier(prompt)
    if settings.kind != "llm":
        raise ValueError(f"verifier.kind={settings.kind!r}; use one of {', '.join(VERIFIER_KINDS)}")
    return LLMVerifier(settings.model_name_or_path, prompt, parse=settings.parse,
                       max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                       retries=settings.retries, dtype=settings.dtype, chat_template=settings.chat_template,
                       stop=settings.stop)
