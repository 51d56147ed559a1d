"""A local causal LM as an answer verifier: prompt presets, output parsers, batched greedy decoding, retries.

One implementation serves both papers; only the prompt and the parser differ:

- ``tinyv`` (TinyV, arXiv 2505.14625, spec 15(b)): the false-negative prompt, greedy, 8 new tokens,
  ``"true" in output.lower()`` -> correct (anything else -> wrong).
- ``general_verifier`` (General-Reasoner, arXiv 2505.14652, spec 13(b)): the raw ``User: ... Assistant:``
  prompt (no chat template), greedy, 2048 new tokens, ``"Final Decision: Yes" in output`` -> correct.

The model loads through the same code as the policy (`modules.policy.Policy.from_pretrained`, aliases resolved by
`modules.models.resolve_model_path`), lazily on the first `verify`, and is cached per (path, dtype) so reward
functions that build verifiers each step do not reload it. All items of a `verify` call are decoded together,
left-padded, in chunks of `batch_size` (sorted by prompt length so a chunk holds prompts of similar length).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from modules.verifiers.base import Verifier, VerifierError, VerifierResult

TINYV_PROMPT = (
    "You are an AI tasked with identifying false negatives in answer verification. A false negative occurs when a "
    "model's answer is essentially correct but is marked as incorrect due to minor discrepancies or formatting "
    "issues. Your job is to analyze the given question, ground truth answer, and model answer to determine if the "
    "model's answer is actually correct despite appearing different from the ground truth.\n\n"
    "<question>{question}</question>\n\n"
    "<ground_truth_answer>{gold}</ground_truth_answer>\n\n"
    "<model_answer>{answer}</model_answer>\n\n"
    "Return \"True\" if the model's answer is correct, otherwise return \"False\"."
)
"""TinyV-1.5B's verifier prompt (spec 15(b)); {question}, {gold}, {answer} are filled in."""

GENERAL_VERIFIER_PROMPT = (
    "User: ### Question: {question}\n\n"
    "### Ground Truth Answer: {gold}\n\n"
    "### Student Answer: {answer}\n\n"
    "For the above question, please verify if the student's answer is equivalent to the ground truth answer.\n"
    "Do not solve the question by yourself; just check if the student's answer is equivalent to the ground truth "
    "answer.\n"
    "If the student's answer is correct, output \"Final Decision: Yes\". If the student's answer is incorrect, "
    "output \"Final Decision: No\". Assistant:"
)
"""TIGER-Lab/general-verifier's prompt (spec 13(b)), a raw string (not chat-templated)."""

_FIELDS = re.compile(r"\{(question|gold|answer)\}")


def parse_true_false(text: str) -> bool:
    """TinyV's parser: "true" in the lowercased output -> correct; "false" or anything else -> wrong.

    >>> parse_true_false(" True."), parse_true_false("false"), parse_true_false("I think so")
    (True, False, False)
    """
    return "true" in text.lower()


def parse_final_decision(text: str) -> bool:
    """General-Reasoner's parser: the output contains ``Final Decision: Yes`` (case as written).

    >>> parse_final_decision("equivalent. Final Decision: Yes"), parse_final_decision("Final Decision: No")
    (True, False)
    """
    return "Final Decision: Yes" in text


@dataclass(frozen=True)
class PromptPreset:
    """A verifier prompt with its parser and decoding defaults."""

    template: str
    parse: Callable[[str], bool]
    max_new_tokens: int
    chat_template: str
    yes_text: str
    """What a verifier of this preset writes for "equivalent" (used by the rule stub)."""
    no_text: str


PRESETS: dict[str, PromptPreset] = {
    # [unverified] whether TinyV's prompt is sent as a chat message: "auto" applies the tokenizer's chat template.
    "tinyv": PromptPreset(TINYV_PROMPT, parse_true_false, 8, "auto", "True", "False"),
    "general_verifier": PromptPreset(GENERAL_VERIFIER_PROMPT, parse_final_decision, 2048, "never",
                                     "Final Decision: Yes", "Final Decision: No"),
}
PARSERS: dict[str, Callable[[str], bool]] = {"true_false": parse_true_false, "final_decision": parse_final_decision,
                                             **{name: p.parse for name, p in PRESETS.items()}}


def get_preset(name: str) -> PromptPreset:
    if name not in PRESETS:
        raise ValueError(f"verifier prompt preset {name!r} is unknown; use one of {sorted(PRESETS)} or give a "
                         "template text containing {question}, {gold} and {answer}")
    return PRESETS[name]


def fill_prompt(template: str, question: str, gold: str, answer: str) -> str:
    """`template` with {question}, {gold}, {answer} replaced in one pass (braces in the values stay as they are).

    >>> fill_prompt("Q: {question} | {gold} vs {answer}", "2{x}?", "1", "{gold}")
    'Q: 2{x}? | 1 vs {gold}'
    """
    values = {"question": question, "gold": gold, "answer": answer}
    return _FIELDS.sub(lambda m: values[m.group(1)], template)


# ---- model cache ---------------------------------------------------------------------------------

_POLICIES: dict[tuple[str, str], Any] = {}


def load_verifier_policy(model_name_or_path: str, dtype: str = "float32"):
    """The frozen verifier `Policy` (model + tokenizer) for a path or alias, loaded once per (path, dtype)."""
    from modules.models import resolve_model_path
    from modules.policy import Policy

    path = resolve_model_path(str(model_name_or_path))
    key = (path, str(dtype))
    if key not in _POLICIES:
        policy = Policy.from_pretrained(path, dtype=dtype, reference="none")
        policy.model.eval().requires_grad_(False)
        _POLICIES[key] = policy
    return _POLICIES[key]


def clear_verifier_cache() -> None:
    """Forget every cached verifier model (frees its memory once nothing else holds it)."""
    _POLICIES.clear()


def _default_device() -> str:
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


# ---- the verifier --------------------------------------------------------------------------------

class PromptedVerifier(Verifier):
    """A verifier that fills a prompt (a preset or a template with {question}, {gold}, {answer}) per item, gets a
    text for each from `generate`, and parses it into a verdict. `LLMVerifier` generates with a local model,
    `RemoteVerifier` with a chat-completions server."""

    def _set_prompt(self, prompt_template: str, parse: str | Callable[[str], bool] | None) -> PromptPreset | None:
        """Set `template`, `preset` (its name, None for a custom template) and `parse`; return the preset."""
        preset = PRESETS.get(prompt_template)
        if preset is None and not all(f"{{{f}}}" in prompt_template for f in ("gold", "answer")):
            raise ValueError(f"verifier.prompt={prompt_template[:60]!r} is neither a preset ({sorted(PRESETS)}) nor "
                             "a template containing {gold} and {answer}")
        if parse is None and preset is None:
            raise ValueError("a custom verifier prompt template needs `parse` (verifier.parse: true_false, "
                             "final_decision or a function text -> bool)")
        if isinstance(parse, str):
            if parse not in PARSERS:
                raise ValueError(f"verifier.parse={parse!r}; use one of {sorted(PARSERS)} or a function")
            parse = PARSERS[parse]
        self.template = preset.template if preset else prompt_template
        self.preset = prompt_template if preset else None
        self.parse = parse or preset.parse
        return preset

    def prompts(self, questions: Sequence[str], golds: Sequence[str], answers: Sequence[str]) -> list[str]:
        """The filled prompt of each item (before any chat template)."""
        return [fill_prompt(self.template, q, g, a) for q, g, a in zip(questions, golds, answers)]

    def _verify(self, questions: list[str], golds: list[str], answers: list[str]) -> list[VerifierResult]:
        texts = self.generate(self.prompts(questions, golds, answers))
        return [VerifierResult(bool(self.parse(t)), t) for t in texts]

    def generate(self, prompts: list[str]) -> list[str]:
        """The generated text for each prompt, in input order."""
        raise NotImplementedError


class LLMVerifier(PromptedVerifier):
    """A local causal LM that reads (question, gold, answer) through a prompt and writes a decision.

    Args:
        model_name_or_path: Local directory, alias (`smollm2-135m-instruct`, `tiny-qwen2`) or hub id.
        prompt_template: A preset name (`tinyv`, `general_verifier`) or a template text with {question}, {gold},
            {answer}.
        parse: Output parser: a name (`true_false`, `final_decision`, or a preset name) or a function
            text -> bool; None = the preset's (a custom template needs one).
        max_new_tokens: Decoding budget; None = the preset's (8 for tinyv, 2048 for general_verifier; 64 for a
            custom template).
        batch_size: Items per `generate` call; all items of a `verify` call are decoded in chunks of this size.
        retries: Extra attempts when `generate` raises, the k-th at temperature 0.3 * k (TinyV: 3).
        dtype: Weights dtype (float32, bfloat16, float16).
        chat_template: auto (tokenizer's template when it has one), always or never; None = the preset's
            (tinyv: auto, general_verifier: never).
        stop: Optional stop strings (e.g. ["Final Decision: Yes", "Final Decision: No"] to end long verifier
            outputs early; the parser then sees the text up to the first decision).
        device: Where the model runs; None = cuda:LOCAL_RANK when available, else cpu (`to()` moves it).
        sort_by_length: Group prompts of similar length into the same chunk (less padding).
    """

    name = "llm"

    def __init__(self, model_name_or_path: str, prompt_template: str = "tinyv",
                 parse: str | Callable[[str], bool] | None = None, max_new_tokens: int | None = None,
                 batch_size: int = 32, retries: int = 3, dtype: str = "float32", chat_template: str | None = None,
                 stop: Sequence[str] | None = None, device: str | None = None, sort_by_length: bool = True) -> None:
        super().__init__()
        from modules.models import resolve_model_path

        preset = self._set_prompt(prompt_template, parse)
        for field, value, low in (("batch_size", batch_size, 1), ("retries", retries, 0)):
            if int(value) < low:
                raise ValueError(f"verifier {field}={value}; it must be >= {low}")
        if max_new_tokens is not None and int(max_new_tokens) < 1:
            raise ValueError(f"verifier max_new_tokens={max_new_tokens}; it must be >= 1")
        chat = chat_template or (preset.chat_template if preset else "auto")
        if chat not in ("auto", "always", "never"):
            raise ValueError(f"verifier chat_template={chat!r}; use auto, always or never")
        self.model_name_or_path = resolve_model_path(str(model_name_or_path))  # a bad path fails here, not mid-run
        self.max_new_tokens = int(max_new_tokens or (preset.max_new_tokens if preset else 64))
        self.batch_size, self.retries, self.dtype = int(batch_size), int(retries), dtype
        self.chat_template, self.stop = chat, list(stop) if stop else None
        self.device, self.sort_by_length = device, sort_by_length
        self.retry_temperature = 0.3

    def __repr__(self) -> str:
        return (f"LLMVerifier({self.model_name_or_path!r}, prompt={self.preset or 'custom'}, "
                f"max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size})")

    @property
    def policy(self):
        """The (cached) verifier policy, loaded on first use and placed on `device`."""
        policy = load_verifier_policy(self.model_name_or_path, self.dtype)
        device = self.device or _default_device()
        if str(policy.device) != str(device):
            policy.model.to(device)
        return policy

    def to(self, device) -> "LLMVerifier":  # noqa: ANN001
        self.device = str(device)
        return self

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy outputs for `prompts`, decoded in left-padded chunks of `batch_size`, in input order."""
        from modules.generation import batched_greedy_generate

        policy = self.policy
        return batched_greedy_generate(policy.model, policy.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                                       batch_size=self.batch_size, chat_template=self.chat_template,
                                       sort_by_length=self.sort_by_length,
                                       decode=lambda ids, mask: self._generate_with_retries(policy, ids, mask))

    def _generate_with_retries(self, policy, ids, mask) -> list[str]:  # noqa: ANN001
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self.stats.generate_calls += 1
            try:
                return self._generate_once(policy, ids, mask, temperature=self.retry_temperature * attempt)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001 - retried, then re-raised with the cause
                last = err
                if attempt < self.retries:
                    self.stats.retries += 1
        raise VerifierError(f"{self!r}: generate failed {self.retries + 1} times; last error: "
                            f"{type(last).__name__}: {last}") from last

    def _generate_once(self, policy, ids, mask, *, temperature: float) -> list[str]:  # noqa: ANN001
        tok, model = policy.tokenizer, policy.model
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=_eos_ids(model, tok), use_cache=True)
        if temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=None)
        if self.stop:
            kwargs.update(stop_strings=self.stop, tokenizer=tok)
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # (n, P + T)
        return tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _eos_ids(model, tokenizer) -> list[int]:  # noqa: ANN001
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
