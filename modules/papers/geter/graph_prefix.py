"""Graph structure as soft prefix tokens of a causal LM (GETER, arXiv 2505.15245, spec section 9 (a)).

GETER encodes a temporal knowledge graph (TKG), pools the embeddings of the query and its reasoning-chain quads into
one vector, projects it into the LM's hidden size and prepends it to the input embeddings as one "graph token"
whose label is -100. Pieces, with shapes:

    TemporalKGEncoder(E, R, d)            entity (E, d) and relation (R, d) embeddings; optional message passing
    pool_quads(entity, relation, query, chains, chain_mask) -> (B, 3d)     the spec's mean of concat(e_s, e_r, e_o)
    GraphPrefixProjector(3d, H, k)        (B, 3d) -> (B, k, H)
    splice_prefix(inputs_embeds, attention_mask, labels, prefix) -> (B, k+L, H), (B, k+L), (B, k+L)
    PrefixGenerateEngine                  `HFGenerateEngine` that generates from inputs_embeds with the prefix
    collate_graph(rows) -> query (B, 4), chains (B, C, 4), chain_mask (B, C)

Documented substitute: the paper's encoder is RE-GCN (pretrained on the TKG). Here entity and relation embeddings
are seeded random tables (frozen or learned), optionally loaded from a file (e.g. exported RE-GCN embeddings), and an
optional one-layer time-decayed relational message passing over the row's own chain quads stands in for RE-GCN's
evolution over snapshots.

GETER's answers ("Yes/No/Unsure" + explanation) are scored here as well: `parse_answer`, the `temporal_label`
reward, and `explanation_scores` (BLEU-4 / ROUGE-L through torchmetrics).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from modules.rewards.registry import completion_text, register_reward
from modules.rollout.engine import SamplingSettings
from modules.rollout.hf import HFGenerateEngine

IGNORE_INDEX = -100
LABELS = ("Yes", "No", "Unsure")


# ------------------------------------------------------------------------------------------- graph encoding
def collate_graph(rows: list[dict], *, num_entities: int | None = None, num_relations: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Rows' `query` [s, r, o, t] and `chains` [[s, r, o, t], ...] as tensors (chains right-padded with zeros).

    Returns query (B, 4), chains (B, C, 4) with C = max(1, most chains in a row), chain_mask (B, C) bool.
    Ids are checked against `num_entities` / `num_relations` when given.

    >>> q, c, m = collate_graph([{"query": [0, 1, 2, 9], "chains": [[0, 0, 3, 7], [3, 1, 2, 8]]},
    ...                          {"query": [4, 0, 5, 9], "chains": []}])
    >>> q.shape, c.shape, m.tolist()
    (torch.Size([2, 4]), torch.Size([2, 2, 4]), [[True, True], [False, False]])
    """
    queries, chains = [], []
    for i, row in enumerate(rows):
        if "query" not in row or "chains" not in row:
            raise ValueError(f"graph row {i} needs 'query' [s, r, o, t] and 'chains' [[s, r, o, t], ...] columns; "
                             f"found {sorted(row)} (use datamodules.tasks.temporal_kg.make_temporal_kg or add them)")
        quads = [row["query"], *row["chains"]]
        for j, quad in enumerate(quads):
            what = "query" if j == 0 else f"chains[{j - 1}]"
            if not (isinstance(quad, (list, tuple)) and len(quad) == 4 and all(isinstance(x, int) for x in quad)):
                raise ValueError(f"graph row {i}: {what}={quad!r} must be 4 integers [subject, relation, object, time]")
            s, r, o, _ = quad
            if min(s, r, o) < 0 or (num_entities is not None and max(s, o) >= num_entities):
                raise ValueError(f"graph row {i}: {what}={list(quad)} has an entity id outside [0, {num_entities}); "
                                 "raise model.num_entities to the TKG's entity count")
            if num_relations is not None and r >= num_relations:
                raise ValueError(f"graph row {i}: {what}={list(quad)} has relation id {r} outside [0, {num_relations})"
                                 "; raise model.num_relations to the TKG's relation count")
        queries.append(list(row["query"]))
        chains.append([list(c) for c in row["chains"]])
    width = max(1, max(len(c) for c in chains))
    chain_t = torch.tensor([c + [[0, 0, 0, 0]] * (width - len(c)) for c in chains], dtype=torch.long)  # (B, C, 4)
    mask = torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c in chains])  # (B, C)
    return torch.tensor(queries, dtype=torch.long), chain_t, mask


def pool_quads(entity: Tensor, relation: Tensor, query: Tensor, chains: Tensor, chain_mask: Tensor) -> Tensor:
    """The spec's graph embedding: mean over [query triple, each chain quad] of concat(e_s, e_r, e_o).

    entity (B, E, d) or (E, d), relation (R, d), query (B, 4), chains (B, C, 4), chain_mask (B, C) -> (B, 3d).
    Timestamps are not embedded (spec 9 (a)); a row without chains is its query triple alone.

    >>> ent, rel = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[10.0], [20.0]])
    >>> pool_quads(ent, rel, torch.tensor([[0, 1, 2, 5]]), torch.tensor([[[1, 0, 2, 4]]]), torch.tensor([[True]]))
    tensor([[ 1.5000, 15.0000,  3.0000]])
    """
    b = query.shape[0]
    if entity.dim() == 2:
        entity = entity.unsqueeze(0).expand(b, -1, -1)  # (B, E, d)
    quads = torch.cat([query[:, None, :], chains], dim=1)  # (B, 1+C, 4)
    mask = torch.cat([torch.ones_like(chain_mask[:, :1]), chain_mask], dim=1).to(entity.dtype)  # (B, 1+C)
    d = entity.shape[-1]
    e_s = torch.gather(entity, 1, quads[..., 0:1].expand(-1, -1, d))  # (B, 1+C, d)
    e_o = torch.gather(entity, 1, quads[..., 2:3].expand(-1, -1, d))  # (B, 1+C, d)
    e_r = relation[quads[..., 1]]  # (B, 1+C, d)
    triples = torch.cat([e_s, e_r, e_o], dim=-1)  # (B, 1+C, 3d)
    return (triples * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, 3d)


def temporal_messages(entity: Tensor, relation: Tensor, query: Tensor, chains: Tensor, chain_mask: Tensor,
                      transform: Callable[[Tensor], Tensor], *, tau: float) -> Tensor:
    """One time-decayed relational message-passing step over each row's chain quads (the RE-GCN substitute).

    For every chain quad (s, r, o, t) of a row, s sends transform([e_s; e_r]) to o and o sends transform([e_o; e_r])
    to s, weighted by exp(-(t_q - t) / tau) (recent events count more); each entity receives
    h_v = e_v + (sum of weighted messages) / (sum of weights), per row. entity (E, d) -> (B, E, d).

    >>> ent, rel = torch.zeros(3, 1), torch.ones(1, 1)
    >>> h = temporal_messages(ent, rel, torch.tensor([[0, 0, 2, 5]]), torch.tensor([[[0, 0, 1, 4]]]),
    ...                       torch.tensor([[True]]), lambda x: x.sum(-1, keepdim=True), tau=1.0)
    >>> h[0, :, 0].tolist()  # entities 0 and 1 each get the message 0 + 1; entity 2 none
    [1.0, 1.0, 0.0]
    """
    b, c, _ = chains.shape
    n_ent, d = entity.shape
    s, r, o, t = chains.unbind(-1)  # each (B, C)
    weight = torch.exp(-(query[:, 3:4] - t).clamp(min=0).to(entity.dtype) / tau) * chain_mask.to(entity.dtype)  # (B, C)
    to_o = transform(torch.cat([entity[s], relation[r]], dim=-1))  # (B, C, d)
    to_s = transform(torch.cat([entity[o], relation[r]], dim=-1))  # (B, C, d)
    msgs = torch.cat([to_o, to_s], dim=1) * torch.cat([weight, weight], dim=1)[..., None]  # (B, 2C, d)
    targets = torch.cat([o, s], dim=1)  # (B, 2C)
    summed = entity.new_zeros(b, n_ent, d).scatter_add(1, targets[..., None].expand(-1, -1, d), msgs)  # (B, E, d)
    norm = entity.new_zeros(b, n_ent).scatter_add(1, targets, torch.cat([weight, weight], dim=1))  # (B, E)
    return entity[None] + summed / norm.clamp(min=1e-6)[..., None]  # (B, E, d)


class TemporalKGEncoder(nn.Module):
    """Entity and relation embeddings of a TKG, and the pooled graph embedding of a query with its chains.

    Substitute for RE-GCN (documented): seeded N(0, 1) tables (or `entity_init` / `relation_init` tensors, e.g.
    exported RE-GCN embeddings), plus, when `temporal_layer` is set, one `temporal_messages` step over each row's
    chain quads with a learned Linear(2d -> d) + tanh transform.
    """

    def __init__(self, num_entities: int, num_relations: int, dim: int = 64, *, temporal_layer: bool = False,
                 tau: float = 5.0, seed: int = 0, entity_init: Tensor | None = None,
                 relation_init: Tensor | None = None) -> None:
        super().__init__()
        if num_entities < 2 or num_relations < 1 or dim < 1:
            raise ValueError(f"TemporalKGEncoder needs num_entities >= 2, num_relations >= 1, dim >= 1; got "
                             f"{num_entities}, {num_relations}, {dim}")
        if tau <= 0:
            raise ValueError(f"temporal decay tau={tau} must be > 0")
        gen = torch.Generator().manual_seed(seed)
        self.entity = nn.Parameter(_table(entity_init, (num_entities, dim), "entity", gen))  # (E, d)
        self.relation = nn.Parameter(_table(relation_init, (num_relations, dim), "relation", gen))  # (R, d)
        self.tau = float(tau)
        self.message = None
        if temporal_layer:
            self.message = nn.Linear(2 * dim, dim)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(2 * dim)
                self.message.weight.copy_(torch.rand(dim, 2 * dim, generator=gen) * 2 * bound - bound)
                self.message.bias.zero_()

    @property
    def num_entities(self) -> int:
        return self.entity.shape[0]

    @property
    def num_relations(self) -> int:
        return self.relation.shape[0]

    @property
    def out_dim(self) -> int:
        """3d: the size of `graph_embedding`'s output."""
        return 3 * self.entity.shape[1]

    def graph_embedding(self, query: Tensor, chains: Tensor, chain_mask: Tensor | None = None) -> Tensor:
        """(B, 3d) pooled embedding of query (B, 4) and chains (B, C, 4) (chain_mask (B, C), default all True)."""
        if chain_mask is None:
            chain_mask = torch.ones(chains.shape[:2], dtype=torch.bool, device=chains.device)
        entity = self.entity
        if self.message is not None:
            entity = temporal_messages(entity, self.relation, query, chains, chain_mask,
                                       lambda x: torch.tanh(self.message(x)), tau=self.tau)  # (B, E, d)
        return pool_quads(entity, self.relation, query, chains, chain_mask)

    forward = graph_embedding


def _table(init: Tensor | None, shape: tuple[int, int], name: str, gen: torch.Generator) -> Tensor:
    if init is None:
        return torch.randn(*shape, generator=gen)
    init = torch.as_tensor(init, dtype=torch.float32)
    if tuple(init.shape) != shape:
        raise ValueError(f"the {name} embeddings have shape {tuple(init.shape)} but ({shape[0]}, {shape[1]}) is "
                         f"needed; set model.num_{name.replace('entity', 'entities').replace('relation', 'relations')}"
                         " and model.graph_dim to match the file")
    return init.clone()


class GraphPrefixProjector(nn.Module):
    """Linear 3d -> k * hidden: (B, 3d) graph embeddings to (B, k, hidden) prefix embeddings (spec: k = 1)."""

    def __init__(self, in_dim: int, hidden_size: int, num_tokens: int = 1) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_prefix_tokens={num_tokens} must be >= 1")
        self.num_tokens, self.hidden_size = num_tokens, hidden_size
        self.proj = nn.Linear(in_dim, num_tokens * hidden_size)

    def forward(self, graph: Tensor) -> Tensor:
        return self.proj(graph).view(graph.shape[0], self.num_tokens, self.hidden_size)  # (B, k, H)


def splice_prefix(inputs_embeds: Tensor, attention_mask: Tensor, labels: Tensor | None, prefix: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Put `prefix` right before each row's first attended token: mask 1 and label -100 on the prefix.

    inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L) or None, prefix (B, k, H) ->
    embeds (B, k+L, H), mask (B, k+L), labels (B, k+L) or None. Right-padded (training) rows get the prefix at
    position 0 (a plain prepend); left-padded (generation) rows keep their padding first, so the prefix always
    directly precedes the prompt.

    >>> e, m, y = splice_prefix(torch.ones(2, 3, 1), torch.tensor([[1, 1, 0], [0, 1, 1]]),
    ...                         torch.tensor([[-100, 5, -100], [-100, -100, 6]]), torch.zeros(2, 1, 1))
    >>> e[..., 0].tolist(), m.tolist()
    ([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]], [[1, 1, 1, 0], [0, 1, 1, 1]])
    >>> y.tolist()
    [[-100, -100, 5, -100], [-100, -100, -100, 6]]
    """
    b, seq, _ = inputs_embeds.shape
    k = prefix.shape[1]
    if prefix.shape[0] != b or prefix.shape[2] != inputs_embeds.shape[2]:
        raise ValueError(f"prefix shape {tuple(prefix.shape)} does not fit inputs_embeds {tuple(inputs_embeds.shape)}")
    lead = (attention_mask != 0).int().argmax(1)  # (B,): first attended position (0 for an all-padding row)
    pos = torch.arange(seq + k, device=inputs_embeds.device)[None, :]  # (1, k+L)
    is_prefix = (pos >= lead[:, None]) & (pos < lead[:, None] + k)  # (B, k+L)
    src = torch.where(pos < lead[:, None], pos, pos - k).clamp(min=0)  # (B, k+L): source index in the L tokens
    embeds = torch.gather(inputs_embeds, 1, src[..., None].expand(-1, -1, inputs_embeds.shape[2]))  # (B, k+L, H)
    pre_idx = (pos - lead[:, None]).clamp(0, k - 1)  # (B, k+L)
    pre = torch.gather(prefix.to(inputs_embeds.dtype), 1, pre_idx[..., None].expand(-1, -1, prefix.shape[2]))
    embeds = torch.where(is_prefix[..., None], pre, embeds)  # (B, k+L, H)
    mask = torch.gather(attention_mask, 1, src).masked_fill(is_prefix, 1)  # (B, k+L)
    out_labels = None
    if labels is not None:
        out_labels = torch.gather(labels, 1, src).masked_fill(is_prefix, IGNORE_INDEX)  # (B, k+L)
    return embeds, mask, out_labels


# ------------------------------------------------------------------------------------------- generation
class PrefixGenerateEngine(HFGenerateEngine):
    """`HFGenerateEngine` whose model sees `prefix_fn(columns)` (B, k, H) spliced before each prompt's embeddings.

    Everything else (stop strings, EOS, lengths, truncation) is the parent's. `prompt_ids` of the returned
    `RolloutBatch` are the text tokens without the prefix: the batch is for scoring; an RL loss on it would need the
    prefix in `Policy.token_logps` too.
    """

    def __init__(self, policy, sampling: SamplingSettings | None = None, *,
                 prefix_fn: Callable[[dict[str, list[Any]]], Tensor], generation_batch_size: int | None = None) -> None:
        super().__init__(policy, sampling, generation_batch_size=generation_batch_size)
        self.prefix_fn = prefix_fn

    def generate(self, prompts: list[Any], columns: dict[str, list[Any]], *, num_generations: int,
                 greedy: bool = False):
        prefix = self.prefix_fn(columns).repeat_interleave(int(num_generations), dim=0)  # (B*G, k, H)
        real = self.policy
        self.policy = _PrefixPolicyView(real, prefix)
        try:
            return super().generate(prompts, columns, num_generations=num_generations, greedy=greedy)
        finally:
            self.policy = real


class _PrefixPolicyView:
    """The policy as `HFGenerateEngine.generate` sees it, with a model whose `generate` adds the prefix.

    The parent generates its rows in consecutive chunks, so the chunks consume `prefix` rows in order."""

    def __init__(self, policy, prefix: Tensor) -> None:
        self.tokenizer, self.device = policy.tokenizer, policy.device
        self.processor, self.vision = policy.processor, policy.vision  # a text policy: None, None
        self.model = _PrefixModel(policy.model, prefix)


class _PrefixModel:
    def __init__(self, model, prefix: Tensor) -> None:
        self._model, self._prefix, self._cursor = model, prefix, 0

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs) -> Tensor:
        n = input_ids.shape[0]
        prefix = self._prefix[self._cursor:self._cursor + n].to(input_ids.device)  # (n, k, H)
        self._cursor += n
        embeds = self._model.get_input_embeddings()(input_ids)  # (n, P, H)
        embeds, mask, _ = splice_prefix(embeds, attention_mask, None, prefix)  # (n, k+P, H), (n, k+P)
        new = self._model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # (n, T): only new tokens
        return torch.cat([input_ids, new], dim=1)  # (n, P+T), as generate(input_ids=...) returns


# ------------------------------------------------------------------------------------------- answers and metrics
_LABEL_RE = re.compile(r"^\W*(yes|no|unsure)\b[\s.,:;!-]*", re.IGNORECASE)


def parse_answer(text: str) -> tuple[str | None, str]:
    """(label, explanation) of a GETER answer "<Yes|No|Unsure>. <explanation>"; label None when it does not
    start with one of them (then the whole text is the explanation).

    >>> parse_answer("unsure: the chain breaks at day 3.")
    ('Unsure', 'the chain breaks at day 3.')
    >>> parse_answer("Nobody knows")
    (None, 'Nobody knows')
    """
    m = _LABEL_RE.match(text)
    if m is None:
        return None, text.strip()
    return m.group(1).capitalize(), text[m.end():].strip()


@register_reward("temporal_label")
def temporal_label_reward(prompts: list[Any], completions: list[Any], label: list[str] | None = None,
                          **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's leading Yes/No/Unsure equals the gold `label` column, else 0.0 (None without one).

    >>> temporal_label_reward(["q", "q"], ["Yes. A met B.", "maybe"], label=["Yes", "No"])
    [1.0, 0.0]
    """
    if label is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, label):
        if gold is None:
            out.append(None)
            continue
        pred, _ = parse_answer(completion_text(completion))
        out.append(float(pred is not None and pred.lower() == str(gold).strip().lower()))
    return out


def explanation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Explanation quality on a 0-100 scale: corpus BLEU-4 (sacreBLEU 13a tokenisation, no smoothing) and mean
    ROUGE-L F1, both from torchmetrics (the paper's exact BLEU variant is [unverified]).

    >>> explanation_scores(["A met B on day 3."], ["A met B on day 3."])
    {'bleu4': 100.0, 'rougeL': 100.0}
    """
    from torchmetrics.text import ROUGEScore, SacreBLEUScore

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"bleu4": 0.0, "rougeL": 0.0}
    bleu = SacreBLEUScore(n_gram=4, tokenize="13a")(predictions, [[r] for r in references])
    rouge = ROUGEScore(rouge_keys=("rougeL",))(predictions, references)["rougeL_fmeasure"]
    return {"bleu4": round(100.0 * float(bleu), 4), "rougeL": round(100.0 * float(rouge), 4)}


__all__ = ["LABELS", "GraphPrefixProjector", "PrefixGenerateEngine", "TemporalKGEncoder", "collate_graph",
           "explanation_scores", "parse_answer", "pool_quads", "splice_prefix", "temporal_label_reward",
           "temporal_messages"]
