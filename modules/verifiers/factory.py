"""Building a `Verifier` from a recipe's `verifier:` block (`VerifierSettings` -> `build_verifier`)."""

from __future__ import annotations

from dataclasses import dataclass

from modules.verifiers.base import Verifier
from modules.settings import SettingsError
from modules.verifiers.llm import PRESETS, LLMVerifier
from modules.verifiers.remote import RemoteVerifier
from modules.verifiers.rule import RuleStubVerifier


VERIFIER_KINDS = ("llm", "rule", "remote")


LOCAL_DEFAULT = "smollm2-135m-instruct"  # the embedded model, the local stand-in verifier


@dataclass
class VerifierSettings:
    """Which verifier a recipe uses (the `verifier:` block of the TinyV / General-Reasoner configs)."""

    kind: str = "llm"
    """llm: a local causal LM (`model_name_or_path`); rule: the CPU rule stub (normalised string / number /
    fraction / unit-stripped equality) that writes the preset's decision text, which is then parsed; remote: an
    OpenAI-compatible chat-completions server at `url` serving `model_name_or_path`."""
    model_name_or_path: str = LOCAL_DEFAULT
    """The verifier LM: path, alias or hub id (papers: zhangchenxu/TinyV-1.5B, TIGER-Lab/general-verifier); for
    kind remote, the model name the server serves."""
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
    url: str | None = None
    """kind remote: the server's base URL (``http://localhost:8000/v1``) or its full ``.../chat/completions`` URL."""
    concurrency: int = 8
    """kind remote: requests in flight at once."""
    timeout: float = 60.0
    """kind remote: seconds one request may take before it is retried (up to `retries` times)."""
    backoff: float = 1.0
    """kind remote: seconds before the first retry of a failed request (connection error, timeout, HTTP 429 / 5xx),
    doubling each retry."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """kind remote: environment variable holding the API key (sent as a Bearer token when set)."""

    def __post_init__(self) -> None:
        if self.kind not in VERIFIER_KINDS:
            raise SettingsError(f"verifier.kind={self.kind!r}; use one of {', '.join(VERIFIER_KINDS)}")
        if self.url is not None and not (isinstance(self.url, str) and self.url.startswith(("http://", "https://"))):
            raise SettingsError(f"verifier.url={self.url!r}; give an http:// or https:// URL "
                                "(e.g. http://localhost:8000/v1)")
        if self.kind == "remote" and not self.url:
            raise SettingsError("verifier.url is not set; kind remote needs the server's URL "
                                "(e.g. http://localhost:8000/v1)")
        for field, value, low, strict in (("concurrency", self.concurrency, 1, False), ("timeout", self.timeout, 0, True),
                                          ("backoff", self.backoff, 0, False)):
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (field == "concurrency" and not isinstance(value, int))
            if bad or (value <= low if strict else value < low):
                raise SettingsError(f"verifier.{field}={value!r}; it must be {'>' if strict else '>='} {low}")
        if self.kind == "remote" and self.model_name_or_path == LOCAL_DEFAULT:
            raise SettingsError(f"verifier.model_name_or_path={LOCAL_DEFAULT!r} is the local default; kind remote "
                                "needs the model name the server serves (e.g. TIGER-Lab/general-verifier)")


def build_verifier(settings: VerifierSettings | dict | None = None, *, default_prompt: str = "tinyv") -> Verifier:
    """A `Verifier` from settings (`kind` llm, rule or remote); `default_prompt` is used when `settings.prompt` is
    null."""
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
    if settings.kind == "remote":
        return RemoteVerifier(settings.url, settings.model_name_or_path, prompt, parse=settings.parse,
                              max_tokens=settings.max_new_tokens, concurrency=settings.concurrency,
                              timeout=settings.timeout, retries=settings.retries, backoff=settings.backoff,
                              stop=settings.stop, api_key_env=settings.api_key_env)
    if settings.kind != "llm":
        raise ValueError(f"verifier.kind={settings.kind!r}; use one of {', '.join(VERIFIER_KINDS)}")
    return LLMVerifier(settings.model_name_or_path, prompt, parse=settings.parse,
                       max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                       retries=settings.retries, dtype=settings.dtype, chat_template=settings.chat_template,
                       stop=settings.stop)
