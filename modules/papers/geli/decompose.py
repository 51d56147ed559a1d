"""Session-score -> turn-reward decomposition (LLM-GELI, arXiv 2505.15922, spec section 3 (b)).

A `Decomposer` maps a transcript (chat messages) and its session score R_GE to one reward r_hat_t per agent
(``assistant``) turn: LLM(transcript, R_GE) -> {r_hat_t}. Two implementations:

- `OracleDecomposer`: a rule (by default the synthetic task's hidden `turn_quality`), optionally noisy. It stands
  in for the frozen LLM in tests and CPU runs (spec section 3 (e)).
- `LLMDecomposer`: a frozen local causal LM asked for a JSON list of per-turn scores. The paper's prompt wording,
  score scale and normalisation were NOT FOUND; `DECOMPOSITION_PROMPT` is our own wording.

"Consistent with the session score" (spec (d)) is enforced after scoring by `rescale_to_session`: `mean` (the
default: our synthetic R_GE is the mean of the turn qualities, so the decomposed rewards average to R_GE), `sum`
(GELI's return-decomposition convention sum_t r_t = R_GE) or `none` (raw scores).
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from modules.generation import batched_greedy_generate

CONSISTENCY = ("mean", "sum", "none")
DECOMPOSERS = ("oracle", "llm")


# ----------------------------------------------------------------------------------------------- pure maths
def agent_turn_indices(messages: Sequence[dict]) -> list[int]:
    """Positions of the agent (``assistant``) turns in a transcript.

    >>> agent_turn_indices([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    [1]
    """
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant"]


def rescale_to_session(rewards: Sequence[float], session_score: float, *, mode: str = "mean") -> list[float]:
    """Shift turn rewards so that they aggregate to the session score, keeping their differences.

    r'_t = r_t + (R_GE - agg(r)) / k, with agg = mean and k = 1 (`mean`: mean_t r'_t = R_GE), or agg = sum and
    k = T (`sum`: sum_t r'_t = R_GE, GELI's decomposition); `none` returns the rewards unchanged. An additive shift
    (not a ratio) works for any sign and keeps the ranking of the turns.

    >>> rescale_to_session([0.2, 0.6], 0.3)
    [0.1, 0.5]
    >>> rescale_to_session([0.2, 0.6], 1.0, mode="sum")
    [0.3, 0.7]
    """
    if mode not in CONSISTENCY:
        raise ValueError(f"consistency={mode!r}; use one of {', '.join(CONSISTENCY)}")
    values = [float(r) for r in rewards]
    if mode == "none" or not values:
        return values
    total = sum(values)
    shift = session_score - total / len(values) if mode == "mean" else (session_score - total) / len(values)
    return [round(v + shift, 12) for v in values]


def uniform_split(num_turns: int, session_score: float, *, mode: str = "mean") -> list[float]:
    """The fallback decomposition: every turn gets the same share (R_GE for `mean`/`none`, R_GE / T for `sum`).

    >>> uniform_split(4, 1.0, mode="sum")
    [0.25, 0.25, 0.25, 0.25]
    """
    return rescale_to_session([0.0] * num_turns, session_score, mode="mean" if mode == "none" else mode)


def parse_turn_scores(text: str, num_turns: int) -> list[float] | None:
    """The first JSON list of `num_turns` finite numbers in an LLM reply, or None.

    Accepts code fences, text around the list, a trailing comma, numbers as strings, or an object whose values
    (or whose one list value) hold the scores (``{"A1": 0.2, "A2": 0.8}``, ``{"scores": [...]}``).

    >>> parse_turn_scores('Sure! ```json\\n[0.2, 0.9]\\n```', 2)
    [0.2, 0.9]
    >>> parse_turn_scores('{"A1": 0.3, "A2": "0.5"}', 2)
    [0.3, 0.5]
    >>> parse_turn_scores("[0.2, 0.9]", 3) is None
    True
    """
    text = str(text)
    for chunk in re.findall(r"\[[^\[\]]*\]", text):
        values = _numbers(_loads(chunk))
        if values is None:  # not JSON (e.g. "[0.2 0.5,]"): take the numbers between the brackets
            found = re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", chunk)
            values = [float(x) for x in found] if found else None
        if values is not None and len(values) == num_turns:
            return values
    for chunk in re.findall(r"\{[^{}]*(?:\[[^\[\]]*\][^{}]*)?\}", text):
        obj = _loads(chunk)
        if isinstance(obj, dict):
            lists = [v for v in obj.values() if isinstance(v, list)]
            values = _numbers(lists[0]) if len(lists) == 1 else _numbers(list(obj.values()))
            if values is not None and len(values) == num_turns:
                return values
    return None


def _loads(chunk: str) -> Any:
    try:
        return json.loads(chunk)
    except (json.JSONDecodeError, ValueError):
        return None


def _numbers(obj: Any) -> list[float] | None:
    if not isinstance(obj, list):
        return None
    out = []
    for v in obj:
        if isinstance(v, bool):
            return None
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(x):
            return None
        out.append(x)
    return out


# ------------------------------------------------------------------------------------------------ decomposers
class Decomposer:
    """(transcript messages, session score) -> one reward per agent turn, consistent with the score.

    Subclasses implement `raw_scores`; `decompose` checks the count and applies `rescale_to_session`.
    `parse_failures` counts sessions whose scores had to fall back to `uniform_split`.
    """

    def __init__(self, *, consistency: str = "mean") -> None:
        if consistency not in CONSISTENCY:
            raise ValueError(f"decomposer.consistency={consistency!r}; use one of {', '.join(CONSISTENCY)}")
        self.consistency = consistency
        self.sessions = 0
        self.parse_failures = 0

    def raw_scores(self, dialogues: list[list[dict]], session_scores: list[float]) -> list[list[float] | None]:
        """Per-agent-turn scores of each dialogue before rescaling (None = no usable scores: fall back)."""
        raise NotImplementedError

    def decompose(self, dialogues: list[list[dict]], session_scores: Sequence[float]) -> list[list[float]]:
        """Turn rewards of each dialogue, one per agent turn, aggregating to its session score."""
        if len(dialogues) != len(session_scores):
            raise ValueError(f"{len(dialogues)} dialogues but {len(session_scores)} session scores")
        scores = [float(s) for s in session_scores]
        raw = self.raw_scores(list(dialogues), scores)
        out = []
        for messages, score, values in zip(dialogues, scores, raw):
            n = len(agent_turn_indices(messages))
            if values is None or len(values) != n:
                self.parse_failures += 1
                out.append(uniform_split(n, score, mode=self.consistency))
            else:
                out.append(rescale_to_session(values, score, mode=self.consistency))
        self.sessions += len(dialogues)
        return out

    def __call__(self, messages: list[dict], session_score: float) -> list[float]:
        return self.decompose([messages], [session_score])[0]

    def stats(self) -> dict[str, float]:
        """``sessions``, ``parse_failures`` and ``parse_failure_rate`` so far."""
        rate = self.parse_failures / self.sessions if self.sessions else 0.0
        return {"sessions": float(self.sessions), "parse_failures": float(self.parse_failures),
                "parse_failure_rate": rate}


def _resolve(fn: Callable | str) -> Callable:
    if callable(fn):
        return fn
    module, _, attr = str(fn).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"quality_fn {fn!r} cannot be imported ({err}); give a dotted path pkg.mod.fn") from None


class OracleDecomposer(Decomposer):
    """Rule-based decomposer: r_hat_t = quality_fn(history before t, turn t) + N(0, noise^2), then rescaled.

    >>> msgs = [{"role": "user", "content": "I love chess."}, {"role": "assistant", "content": "Whatever."}]
    >>> OracleDecomposer(consistency="none")(msgs, 0.0)
    [0.05]
    """

    def __init__(self, *, quality_fn: Callable | str = "datamodules.tasks.dialogues.turn_quality", noise: float = 0.0,
                 seed: int = 0, consistency: str = "mean") -> None:
        super().__init__(consistency=consistency)
        if noise < 0:
            raise ValueError(f"decomposer.noise={noise} must be >= 0")
        self.quality_fn, self.noise = _resolve(quality_fn), float(noise)
        self.rng = random.Random(f"oracle-decomposer:{seed}")

    def raw_scores(self, dialogues: list[list[dict]], session_scores: list[float]) -> list[list[float] | None]:
        out = []
        for messages in dialogues:
            values = [float(self.quality_fn(messages[:i], str(messages[i]["content"])))
                      for i in agent_turn_indices(messages)]
            if self.noise:
                values = [v + self.rng.gauss(0.0, self.noise) for v in values]
            out.append(values)
        return out


DECOMPOSITION_PROMPT = (
    "Below is a conversation between a USER and an AGENT. After the conversation the user rated it "
    "{score:.2f} on a scale from {low:g} (very bad) to {high:g} (excellent).\n\n{transcript}\n\n"
    "Score each of the {n} AGENT turns (A1 to A{n}) on the same scale for how much it contributed to that "
    "rating: asking engaging questions, warmth and staying on the user's topic help; dismissive or rambling "
    "replies hurt. The {aggregate} of your scores should be close to {target:.2f}. Reply with only a JSON "
    "list of {n} numbers, for example {example}."
)


def build_decomposition_prompt(messages: Sequence[dict], session_score: float, *, score_range=(0.0, 1.0),
                               consistency: str = "mean") -> list[dict]:
    """The chat messages asking an LLM for per-agent-turn scores (our wording; the paper's was not found).

    >>> p = build_decomposition_prompt([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 0.4)
    >>> "A1: yo" in p[0]["content"] and "JSON list of 1 numbers" in p[0]["content"]
    True
    """
    lines, k = [], 0
    for m in messages:
        if m.get("role") == "assistant":
            k += 1
            lines.append(f"A{k}: {m.get('content', '')}")
        elif m.get("role") == "user":
            lines.append(f"USER: {m.get('content', '')}")
    n = max(k, 1)
    low, high = float(score_range[0]), float(score_range[1])
    mid = round((low + high) / 2, 2)
    text = DECOMPOSITION_PROMPT.format(
        score=session_score, low=low, high=high, transcript="\n".join(lines), n=k,
        aggregate="sum" if consistency == "sum" else "average",
        target=session_score, example=json.dumps([mid] * min(n, 3)))
    return [{"role": "user", "content": text}]


class LLMDecomposer(Decomposer):
    """A frozen local causal LM decomposes each session (spec 3 (b)); scores are parsed with `parse_turn_scores`,
    clipped to `score_range`, then rescaled; an unparseable reply falls back to `uniform_split` (counted).

    Give `model_name_or_path` (loaded on first use through `Policy.from_pretrained(..., reference="none")`; its
    reply is started with `response_prefix`, "[" by default, which small models need to answer in JSON) or a
    `generate_fn(list_of_chat_prompts) -> list_of_replies` (tests, remote servers).
    """

    def __init__(self, model_name_or_path: str | None = None, *, generate_fn: Callable | None = None,
                 max_new_tokens: int = 128, batch_size: int = 4, score_range: Sequence[float] = (0.0, 1.0),
                 clip_scores: bool = True, consistency: str = "mean", device: str | None = None,
                 response_prefix: str = "[") -> None:
        super().__init__(consistency=consistency)
        if (model_name_or_path is None) == (generate_fn is None):
            raise ValueError("LLMDecomposer needs exactly one of model_name_or_path (a local causal LM) or generate_fn")
        if len(score_range) != 2 or not float(score_range[0]) < float(score_range[1]):
            raise ValueError(f"score_range={list(score_range)} must be [low, high] with low < high")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
        self.model_name_or_path, self.generate_fn = model_name_or_path, generate_fn
        self.max_new_tokens, self.batch_size, self.device = int(max_new_tokens), int(batch_size), device
        self.response_prefix = response_prefix
        self.score_range, self.clip_scores = (float(score_range[0]), float(score_range[1])), clip_scores
        self.last_replies: list[str] = []
        self._policy = None

    def _generate(self, prompts: list[list[dict]]) -> list[str]:
        if self.generate_fn is not None:
            return list(self.generate_fn(prompts))
        if self._policy is None:
            import torch

            from modules.policy import Policy

            policy = Policy.from_pretrained(self.model_name_or_path, reference="none")
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            policy.model.to(device).eval().requires_grad_(False)
            self._policy = policy
        return batched_greedy_generate(self._policy.model, self._policy.tokenizer, prompts,
                                       max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                       response_prefix=self.response_prefix)

    def raw_scores(self, dialogues: list[list[dict]], session_scores: list[float]) -> list[list[float] | None]:
        prompts = [build_decomposition_prompt(m, s, score_range=self.score_range, consistency=self.consistency)
                   for m, s in zip(dialogues, session_scores)]
        replies = self._generate(prompts)
        if len(replies) != len(prompts):
            raise RuntimeError(f"the decomposer LLM returned {len(replies)} replies for {len(prompts)} prompts")
        self.last_replies = list(replies)
        low, high = self.score_range
        out: list[list[float] | None] = []
        for messages, reply in zip(dialogues, replies):
            values = parse_turn_scores(reply, len(agent_turn_indices(messages)))
            if values is not None and self.clip_scores:
                values = [min(high, max(low, v)) for v in values]
            out.append(values)
        return out


@dataclass
class DecomposerSettings:
    """Which decomposer turns session scores into turn rewards (stage 0 of LLM-GELI)."""

    kind: str = "oracle"
    """oracle (rule-based hidden quality, the CPU substitute) or llm (a frozen local causal LM)."""
    noise: float = 0.0
    """oracle: std of Gaussian noise added to each turn score (a noisy decomposer)."""
    model_name_or_path: str | None = None
    """llm: local directory or alias of the frozen decomposer LM (e.g. smollm2-135m-instruct)."""
    max_new_tokens: int = 128
    """llm: tokens generated per decomposition."""
    batch_size: int = 4
    """llm: sessions per generate call."""
    score_range: tuple[float, float] = (0.0, 1.0)
    """llm: the score scale named in the prompt; parsed scores are clipped to it."""
    response_prefix: str = "["
    """llm: text the LLM's reply starts with ("[" steers small models into a JSON list)."""
    consistency: str = "mean"
    """How turn rewards match the session score: mean (average = R_GE, our synthetic score), sum (GELI's
    sum_t r_t = R_GE) or none."""
    seed: int = 0
    """oracle: seed of the noise."""


def build_decomposer(settings: DecomposerSettings | dict | None = None) -> Decomposer:
    """The decomposer described by `settings` (default: a noiseless oracle)."""
    s = settings if isinstance(settings, DecomposerSettings) else DecomposerSettings(**dict(settings or {}))
    if s.kind not in DECOMPOSERS:
        raise ValueError(f"decomposer.kind={s.kind!r}; use one of {', '.join(DECOMPOSERS)}")
    if s.kind == "oracle":
        return OracleDecomposer(noise=s.noise, seed=s.seed, consistency=s.consistency)
    if not s.model_name_or_path:
        raise ValueError("decomposer.kind='llm' needs decomposer.model_name_or_path (a local causal LM directory "
                         "or alias such as smollm2-135m-instruct)")
    return LLMDecomposer(s.model_name_or_path, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                         score_range=s.score_range, consistency=s.consistency, response_prefix=s.response_prefix)
