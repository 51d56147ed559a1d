"""HCRMP's hints: the LLM's scene reading (ASR), its critic weights, the semantic cache (SCM) and the knowledge-base
check of the weights (CSA).

Spec section 6(a). A hinter is a callable ``hinter(scene) -> Hint`` over `DrivingEnv.scene()` dicts. The hint has
two uses:

- ASR (Augmented Semantic Representation): ``asr_features(hint)`` (the 4-d scenario vector and a multi-hot of the
  critical agents' directions, `HINT_DIM` = 12 floats) is concatenated to the raw state, ``s = [s_raw, s_llm]``;
- the critic weights ``hint.weights`` (safety, efficiency, comfort; sum 1) mix the per-critic advantages,
  ``A = sum_k w_k A_k`` (`agent.multi_critic_advantage`).

What the paper's 4-d scenario vector holds was not retrieved; ours [unverified], each in [0, 1]
(`scene_vector`):

- ``congestion = min(1, n(vehicles within 30 m) / 4)``;
- ``risk = max over vehicles roughly in the ego's lane (|dy| < 3 m) of max(1 - |dx| / 20 m, 1 - ttc / 4 s)``
  (clipped at 0), ttc = the time to collision when the gap closes;
- ``speed = clip((v - 20) / 10, 0, 1)`` (the efficiency term's scale);
- ``lane_room``: the share of the adjacent lanes with no vehicle within 15 m along the road.

Critical agents (the direction multi-hot): vehicles within 20 m or with a ttc under 4 s.

Hinters: `RuleHinter` (a scripted stand-in for the LLM's reasoning), `NoisyHinter` (hallucinations: a random hint
with a given probability; the paper measured 57.95% non-hallucinated LLM answers, hence the default 0.42),
`LLMHinter` (a frozen causal LM prompted with the scene text, falling back to the rule hint when its answer does not
parse) and `NoHinter` (uniform weights, zero features: the plain multi-critic baseline). `make_hinter` builds them
by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modules.papers.hcrmp.env import DIRECTIONS, LANE_WIDTH, TERMS

SCENARIO_NAMES = ("congestion", "risk", "speed", "lane_room")
"""The entries of `Hint.scenario` (our reading of the paper's 4-d scenario-level vector [unverified])."""

HINT_DIM = len(SCENARIO_NAMES) + len(DIRECTIONS)
"""Size of `asr_features`: the scenario vector, then the direction multi-hot (12)."""

_CONGESTION_RANGE, _CONGESTION_FULL = 30.0, 4  # [m], vehicles
_RISK_GAP, _RISK_TTC, _RISK_LATERAL = 20.0, 4.0, 0.75 * LANE_WIDTH  # [m], [s], [m]
_CRITICAL_DISTANCE = 20.0  # [m]
_LANE_ROOM_GAP = 15.0  # [m]


@dataclass
class Hint:
    """One hint: ``scenario`` (4,) in [0, 1], ``directions`` (len(DIRECTIONS),) multi-hot of the critical agents'
    directions, ``weights`` (3,) critic weights over `TERMS` summing to 1, and where it came from."""

    scenario: np.ndarray
    directions: np.ndarray
    weights: np.ndarray
    source: str = "rule"

    def __post_init__(self) -> None:
        self.scenario = np.asarray(self.scenario, dtype=np.float32).reshape(len(SCENARIO_NAMES))
        self.directions = np.asarray(self.directions, dtype=np.float32).reshape(len(DIRECTIONS))
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(len(TERMS))


def asr_features(hint: Hint) -> np.ndarray:
    """The ASR vector the agent concatenates to its state: ``[scenario (4), directions (8)]``, float32 (HINT_DIM,)."""
    return np.concatenate([hint.scenario, hint.directions]).astype(np.float32)  # (HINT_DIM,)


def _ttc(vehicle: dict) -> float:
    """Time to collision [s] when the gap to `vehicle` closes (front and closing in, or rear and catching up)."""
    dx, dvx = vehicle["dx"], vehicle["dvx"]
    if dx > 0 and dvx < 0:
        return dx / -dvx
    if dx < 0 and dvx > 0:
        return -dx / dvx
    return math.inf


def scene_vector(scene: dict) -> np.ndarray:
    """The 4-d scenario vector ``[congestion, risk, speed, lane_room]`` of a scene (module docstring), float32."""
    vehicles = scene.get("vehicles", [])
    congestion = min(1.0, sum(v["distance"] < _CONGESTION_RANGE for v in vehicles) / _CONGESTION_FULL)
    risk = 0.0
    for v in vehicles:
        if abs(v["dy"]) < _RISK_LATERAL:
            risk = max(risk, 1 - abs(v["dx"]) / _RISK_GAP, 1 - _ttc(v) / _RISK_TTC)
    speed = float(np.clip((scene["ego_speed"] - 20.0) / 10.0, 0.0, 1.0))
    lane, lanes = scene["ego_lane"], scene.get("lanes_count", 1)
    neighbours = [side for side in (lane - 1, lane + 1) if 0 <= side < lanes]
    free = 0
    for side in neighbours:
        centre = (side - lane) * LANE_WIDTH  # dy of that lane's centre
        free += not any(abs(v["dy"] - centre) < LANE_WIDTH / 2 and abs(v["dx"]) < _LANE_ROOM_GAP for v in vehicles)
    lane_room = free / len(neighbours) if neighbours else 0.0
    return np.array([congestion, min(1.0, max(0.0, risk)), speed, lane_room], dtype=np.float32)


def critical_directions(scene: dict) -> np.ndarray:
    """Multi-hot over `DIRECTIONS` of the critical vehicles (within 20 m, or ttc under 4 s), float32 (8,)."""
    out = np.zeros(len(DIRECTIONS), dtype=np.float32)
    for v in scene.get("vehicles", []):
        if v["distance"] < _CRITICAL_DISTANCE or _ttc(v) < _RISK_TTC:
            out[DIRECTIONS.index(v["direction"])] = 1.0
    return out


def _normalise(weights: Any) -> np.ndarray:
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = w.sum()
    return (w / total if total > 0 else np.full(len(w), 1.0 / len(w))).astype(np.float32)


class RuleHinter:
    """A scripted hint: the scenario vector of `scene_vector`, and critic weights (before normalising to sum 1)

    ``safety = 1 + 4 risk + 2 congestion``, ``efficiency = 1 + 4 (1 - risk)(1 - congestion)``, ``comfort = 1``:
    a free road gives (1, 5, 1) / 7 (efficiency 0.71), dense close traffic up to (7, 1, 1) / 9 (safety 0.78).
    """

    source = "rule"

    def __call__(self, scene: dict) -> Hint:
        scenario = scene_vector(scene)
        congestion, risk = float(scenario[0]), float(scenario[1])
        weights = _normalise([1 + 4 * risk + 2 * congestion, 1 + 4 * (1 - risk) * (1 - congestion), 1.0])
        return Hint(scenario, critical_directions(scene), weights, source=self.source)


class NoHinter:
    """No hint: uniform critic weights and zero ASR features (the multi-critic baseline without an LLM)."""

    source = "none"

    def __call__(self, scene: dict) -> Hint:
        return Hint(np.zeros(len(SCENARIO_NAMES)), np.zeros(len(DIRECTIONS)), np.full(len(TERMS), 1.0 / len(TERMS)),
                    source=self.source)


class NoisyHinter:
    """`base`'s hint, replaced with probability `hallucination_rate` by a random one (scenario uniform in [0, 1]^4,
    each direction on with probability 1/4, weights ~ Dirichlet(1, 1, 1)), source ``"hallucination"``.

    Counts ``calls`` and ``hallucinations``; ``observed_rate`` is their ratio.
    """

    def __init__(self, base: Callable[[dict], Hint], hallucination_rate: float = 0.42, seed: int = 0) -> None:
        if not 0.0 <= hallucination_rate <= 1.0:
            raise ValueError(f"NoisyHinter: hallucination_rate={hallucination_rate} is not in [0, 1]")
        self.base = base
        self.hallucination_rate = hallucination_rate
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.hallucinations = 0

    @property
    def observed_rate(self) -> float:
        return self.hallucinations / self.calls if self.calls else 0.0

    def __call__(self, scene: dict) -> Hint:
        self.calls += 1
        if self.rng.random() >= self.hallucination_rate:
            return self.base(scene)
        self.hallucinations += 1
        return Hint(self.rng.random(len(SCENARIO_NAMES)), (self.rng.random(len(DIRECTIONS)) < 0.25),
                    self.rng.dirichlet(np.ones(len(TERMS))), source="hallucination")


# ---- the LLM hinter -----------------------------------------------------------------------------------------------

LLM_INSTRUCTION = (
    "You advise a self-driving car on a highway. Give weights for safety, efficiency (speed) and comfort that sum "
    "to 1, the scenario (congestion, risk, speed, room to change lanes, each in [0, 1]) and the directions of the "
    "critical vehicles.\n"
    "Example 1: The road around the car is free.\n"
    "safety=0.15 efficiency=0.7 comfort=0.15 scenario=[0.0, 0.0, 0.5, 1.0] critical=none\n"
    "Example 2: A vehicle is in front, 8 m away, closing in at 6 m/s.\n"
    "safety=0.7 efficiency=0.15 comfort=0.15 scenario=[0.5, 0.9, 0.5, 0.5] critical=front\n"
    "Now: {scene}\nAnswer in one line like the examples."
)
"""The user message of `LLMHinter` (``{scene}`` = `scene_text`). The paper's prompt was not retrieved (spec 6(d)).
SmolLM2-135M-Instruct answers in this format but copies the last example whatever the scene (4 of 4 scenes tried,
0 parse failures): it gives a constant, safety-heavy hint. Scene-dependent hints need a larger model."""

LLM_RESPONSE_PREFIX = "safety="
"""Written at the start of the model's turn so a small model answers in the format (and returned with the answer)."""

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_WEIGHT_RES = {term: re.compile(rf"\b{term}\s*[=:]\s*{_NUMBER}", re.IGNORECASE) for term in TERMS}
_SCENARIO_RE = re.compile(r"\bscenario\s*[=:]\s*\[?([^\]\n]*)", re.IGNORECASE)
_CRITICAL_RE = re.compile(r"\bcritical\s*[=:]\s*([a-z ,\-]*)", re.IGNORECASE)


def scene_text(scene: dict) -> str:
    """A one-paragraph description of a `DrivingEnv.scene()` dict for an LLM prompt.

    >>> scene_text({"ego_speed": 25.0, "ego_lane": 1, "lanes_count": 3,
    ...             "vehicles": [{"dx": 12.0, "dy": 0.0, "dvx": -3.0, "distance": 12.0, "direction": "front"}]})
    'The car drives at 25.0 m/s in lane 2 of 3 (lane 1 is the leftmost). Vehicles: front, 12 m away, closing in at 3.0 m/s.'
    """
    head = (f"The car drives at {scene['ego_speed']:.1f} m/s in lane {scene['ego_lane'] + 1} of "
            f"{scene.get('lanes_count', 1)} (lane 1 is the leftmost).")
    parts = []
    for v in scene.get("vehicles", []):
        closing = -v["dvx"] if v["dx"] > 0 else v["dvx"]  # > 0: the gap shrinks
        motion = f"closing in at {closing:.1f} m/s" if closing > 0 else f"moving away at {-closing:.1f} m/s"
        parts.append(f"{v['direction']}, {v['distance']:.0f} m away, {motion}")
    return head + (" Vehicles: " + "; ".join(parts) + "." if parts else " The road around it is free.")


def parse_llm_answer(answer: str) -> dict[str, np.ndarray] | None:
    """``{"weights": (3,), "scenario": (4,) or None, "directions": (8,) or None}`` from an answer in the
    `LLM_INSTRUCTION` format; None when the three weights are not all there or sum to 0.

    Weights are normalised to sum 1 (so percentages work); scenario values are clipped to [0, 1] and need four
    numbers; ``critical=`` lists `DIRECTIONS` words (``none`` or nothing known: all zero).

    >>> [round(float(w), 2) for w in parse_llm_answer("safety=60 efficiency=30 comfort=10")["weights"]]
    [0.6, 0.3, 0.1]
    """
    values = []
    for term in TERMS:
        found = _WEIGHT_RES[term].search(answer)
        if found is None:
            return None
        values.append(float(found.group(1)))
    if sum(values) <= 0:
        return None
    out: dict[str, np.ndarray | None] = {"weights": _normalise(values), "scenario": None, "directions": None}
    found = _SCENARIO_RE.search(answer)
    if found:
        numbers = [float(x) for x in re.findall(_NUMBER, found.group(1))]
        if len(numbers) >= len(SCENARIO_NAMES):
            out["scenario"] = np.clip(np.array(numbers[:len(SCENARIO_NAMES)], dtype=np.float32), 0.0, 1.0)
    found = _CRITICAL_RE.search(answer)
    if found:
        words = {w.strip().lower() for w in found.group(1).split(",")}
        out["directions"] = np.array([d in words for d in DIRECTIONS], dtype=np.float32)
    return out


class LLMHinter:
    """A frozen causal LM as the hinter: prompted with `scene_text` (`LLM_INSTRUCTION`), greedy, one scene at a
    time; its answer is parsed by `parse_llm_answer`.

    The model is loaded on the first call through `modules.policy.Policy.from_pretrained` (no reference copy),
    frozen, on CUDA when there is one (set ``device`` before the first call to change that). When the answer does
    not parse, the hint is `RuleHinter`'s (source ``"llm-fallback"``) and ``parse_failures`` counts it; a parsed
    answer without a scenario or directions takes those from the rule hint. Wrap it in `SemanticCache`: a call
    costs about 2-5 s on a CPU.
    """

    source = "llm"

    def __init__(self, model: str = "smollm2-135m-instruct", *, max_new_tokens: int = 48) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.fallback = RuleHinter()
        self.device: str | None = None
        self.calls = 0
        self.parse_failures = 0
        self.last_answer = ""
        self._policy = None

    @property
    def failure_rate(self) -> float:
        return self.parse_failures / self.calls if self.calls else 0.0

    def prompt(self, scene: dict) -> list[dict[str, str]]:
        return [{"role": "user", "content": LLM_INSTRUCTION.format(scene=scene_text(scene))}]

    def _load(self):
        if self._policy is None:
            import torch

            from modules.policy import Policy

            policy = Policy.from_pretrained(self.model, reference="none")
            policy.model.requires_grad_(False)
            policy.model.eval()
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            policy.model.to(device)
            self._policy = policy
        return self._policy

    def generate(self, prompt: list[dict[str, str]]) -> str:
        """The model's greedy answer to one chat prompt, starting with `LLM_RESPONSE_PREFIX`."""
        from modules.generation import batched_greedy_generate

        policy = self._load()
        return batched_greedy_generate(policy.model, policy.tokenizer, [prompt], max_new_tokens=self.max_new_tokens,
                                       batch_size=1, response_prefix=LLM_RESPONSE_PREFIX)[0]

    def __call__(self, scene: dict) -> Hint:
        self.calls += 1
        self.last_answer = self.generate(self.prompt(scene))
        parsed = parse_llm_answer(self.last_answer)
        rule = self.fallback(scene)
        if parsed is None:
            self.parse_failures += 1
            return Hint(rule.scenario, rule.directions, rule.weights, source="llm-fallback")
        scenario = parsed["scenario"] if parsed["scenario"] is not None else rule.scenario
        directions = parsed["directions"] if parsed["directions"] is not None else rule.directions
        return Hint(scenario, directions, parsed["weights"], source=self.source)


def make_hinter(name: str, **kw: Any) -> Callable[[dict], Hint]:
    """A hinter by name: ``rule``, ``noisy`` (`NoisyHinter` over ``kw.pop("base")`` or a `RuleHinter`), ``llm``
    or ``none``; `kw` go to the constructor."""
    if name == "rule":
        return RuleHinter(**kw)
    if name == "noisy":
        base = kw.pop("base", None) or RuleHinter()
        return NoisyHinter(base, **kw)
    if name == "llm":
        return LLMHinter(**kw)
    if name == "none":
        return NoHinter(**kw)
    raise ValueError(f"make_hinter: unknown hinter {name!r}; use rule, noisy, llm or none")


# ---- SCM: the semantic cache --------------------------------------------------------------------------------------

def scene_key(scene: dict, resolution: float = 5.0, *, key_range: float = 30.0) -> tuple:
    """A discretised scene: ego speed bin, ego lane, and for each vehicle within `key_range` metres (direction,
    dx bin, dvx bin), bins of `resolution` (metres and m/s), sorted. Equal keys share a cached hint."""
    def b(x: float) -> int:
        return math.floor(x / resolution)

    near = sorted((v["direction"], b(v["dx"]), b(v["dvx"])) for v in scene.get("vehicles", [])
                  if v["distance"] < key_range)
    return (b(scene["ego_speed"]), scene["ego_lane"], tuple(near))


class SemanticCache:
    """SCM: reuse a hint while the discretised scene (`scene_key`) is unchanged and the hint is younger than `ttl`
    control steps (the paper reuses low-frequency LLM outputs across high-frequency control steps [page]; the key
    and the time-to-live are our reading [unverified]).

    ``cache(scene, step)`` returns the cached hint when ``0 <= step - stored_step < ttl`` (a hit), else calls the
    hinter and stores its hint at `step` (a miss; ``expired`` counts the misses whose key was cached but too old).
    ``reset()`` empties the cache (call it when a new episode restarts the step count); ``reset(stats=True)`` also
    zeroes the counters.
    """

    def __init__(self, hinter: Callable[[dict], Hint], *, ttl: int = 10, resolution: float = 5.0) -> None:
        if ttl < 1:
            raise ValueError(f"SemanticCache: ttl={ttl} must be >= 1")
        self.hinter = hinter
        self.ttl = ttl
        self.resolution = resolution
        self._store: dict[tuple, tuple[Hint, int]] = {}
        self.hits = self.misses = self.expired = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, scene: dict, step: int) -> Hint:
        key = scene_key(scene, self.resolution)
        cached = self._store.get(key)
        if cached is not None:
            hint, stored = cached
            if 0 <= step - stored < self.ttl:
                self.hits += 1
                return hint
            self.expired += 1
        self.misses += 1
        hint = self.hinter(scene)
        self._store[key] = (hint, step)
        if len(self._store) > 4096:  # drop what can no longer hit
            self._store = {k: (h, s) for k, (h, s) in self._store.items() if 0 <= step - s < self.ttl}
        return hint

    def reset(self, *, stats: bool = False) -> None:
        self._store.clear()
        if stats:
            self.hits = self.misses = self.expired = 0


# ---- CSA: the knowledge-base check of the weights -----------------------------------------------------------------

class KnowledgeBase:
    """CSA: past (scene features, critic weights, outcome) records that anchor the LLM's critic weights.

    Our reading of the Contextual Stability Anchor [unverified]: `check` retrieves the `k` records nearest to the
    scene features (Euclidean) and keeps those with ``outcome >= min_outcome`` (e.g. 1 = the episode succeeded).
    With none, the hint is accepted as is. Otherwise let ``w_kb`` be their mean weights and
    ``d = 0.5 * ||w_hint - w_kb||_1`` (total variation, in [0, 1]); when ``d > threshold`` the weights become
    ``(1 - pull) * w_hint + pull * w_kb`` (``pull = 1`` replaces them) and the hint is not accepted.
    ``capacity`` keeps the newest records; ``checks`` and ``rejections`` count the calls.
    """

    def __init__(self, *, k: int = 5, threshold: float = 0.2, pull: float = 0.5, min_outcome: float = 0.5,
                 capacity: int = 10_000) -> None:
        if k < 1 or not 0.0 <= pull <= 1.0:
            raise ValueError(f"KnowledgeBase: k={k} must be >= 1 and pull={pull} in [0, 1]")
        self.k, self.threshold, self.pull, self.min_outcome, self.capacity = k, threshold, pull, min_outcome, capacity
        self.checks = self.rejections = 0
        self._features: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        self._outcomes: list[float] = []

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def rejection_rate(self) -> float:
        return self.rejections / self.checks if self.checks else 0.0

    def state_dict(self) -> dict:
        """The records and counters (plain lists: checkpoint-safe), for an exact resume."""
        return {"features": [f.tolist() for f in self._features], "weights": [w.tolist() for w in self._weights],
                "outcomes": list(self._outcomes), "checks": self.checks, "rejections": self.rejections}

    def load_state_dict(self, state: dict) -> None:
        self._features = [np.asarray(f, dtype=np.float32) for f in state["features"]]
        self._weights = [np.asarray(w, dtype=np.float32) for w in state["weights"]]
        self._outcomes = [float(o) for o in state["outcomes"]]
        self.checks, self.rejections = int(state["checks"]), int(state["rejections"])

    def add(self, scene_features: np.ndarray, weights: np.ndarray, outcome: float) -> None:
        self._features.append(np.asarray(scene_features, dtype=np.float32).ravel())
        self._weights.append(np.asarray(weights, dtype=np.float32).ravel())
        self._outcomes.append(float(outcome))
        if len(self._outcomes) > self.capacity:
            del self._features[0], self._weights[0], self._outcomes[0]

    def check(self, hint: Hint, scene_features: np.ndarray) -> tuple[np.ndarray, bool]:
        """(weights to use, accepted): the hint's weights when accepted, else pulled toward the knowledge base's."""
        self.checks += 1
        w = np.asarray(hint.weights, dtype=np.float32)
        if not self._outcomes:
            return w, True
        feats = np.stack(self._features)  # (N, F)
        dist = np.linalg.norm(feats - np.asarray(scene_features, dtype=np.float32).ravel()[None], axis=1)  # (N,)
        nearest = np.argsort(dist, kind="stable")[:self.k]
        good = [i for i in nearest if self._outcomes[i] >= self.min_outcome]
        if not good:
            return w, True
        w_kb = np.mean([self._weights[i] for i in good], axis=0)  # (3,)
        if 0.5 * float(np.abs(w - w_kb).sum()) <= self.threshold:
            return w, True
        self.rejections += 1
        return _normalise((1 - self.pull) * w + self.pull * w_kb), False


__all__ = ["HINT_DIM", "LLM_INSTRUCTION", "LLM_RESPONSE_PREFIX", "SCENARIO_NAMES", "Hint", "KnowledgeBase",
           "LLMHinter", "NoHinter", "NoisyHinter", "RuleHinter", "SemanticCache", "asr_features",
           "critical_directions", "make_hinter", "parse_llm_answer", "scene_key", "scene_text", "scene_vector"]
