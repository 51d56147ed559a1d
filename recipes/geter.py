"""GETER: structure-aware generative framework for explainable temporal reasoning (Jiang, Liu et al.; arXiv
2505.15245, ACL 2025 Findings; spec section 9).

Not RL: supervised instruction tuning (`recipes.sft.SFT`, loss on the answer only) of a LoRA policy that answers
"Yes / No / Unsure" about a temporal-KG query and explains why. The graph structure enters as a soft prefix token:
`modules.papers.geter.graph_prefix` pools the query and reasoning-chain quads into mean(concat(e_s, e_r, e_o)) (3d), a linear
projector maps it to the LM hidden size, and the result is spliced before the prompt embeddings (mask 1, label
-100). The projector (and the encoder when `train_encoder`) trains jointly with the LoRA adapter; both are
trainable parameters, so `PolicyModule.on_save_checkpoint` keeps them in checkpoints. Held-out generation uses the same
prefix (`PrefixGenerateEngine`, generation from inputs_embeds) and reports label accuracy (overall and per label)
and explanation BLEU-4 / ROUGE-L (0-100, torchmetrics).

Implemented: the prompt (system instruction ending "Please answer yes, no, or unsure then explain your decision.",
user = query + chains, target = label + explanation + EOS under the chat template), the one-token graph prefix with
label -100, mean pooling over [query triple, chain quads], joint projector training, LoRA r16/a32/dropout 0.05 on
q/k/v/o/gate/up/down and lr 3e-4 cosine with 1% warmup and weight decay 1e-5 (in the config).
Documented substitutes: seeded random entity/relation embeddings (or a file of them) instead of a pretrained
RE-GCN, with an optional one-layer time-decayed message passing over the row's chains (`temporal_layer`); a
seeded toy TKG with template explanations (`datamodules.tasks.temporal_kg`) instead of the ETR benchmark.
[unverified], so configurable: the encoder dimension (`graph_dim`), whether the encoder is trained
(`train_encoder`), the number of prefix tokens (`num_prefix_tokens`, paper: 1) and the BLEU variant (corpus
sacreBLEU 13a here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modules.papers.geter.graph_prefix import (LABELS, GraphPrefixProjector, PrefixGenerateEngine, TemporalKGEncoder,
                                  collate_graph, explanation_scores, parse_answer, splice_prefix)
from modules.rewards import RewardSpec
from modules.rollout.batch import RolloutBatch
from modules.sft import sft_loss
from recipes.base import RecipeConfigError
from recipes.sft import SFT

GETER_SYSTEM_PROMPT = (
    "You are an expert in temporal knowledge graph reasoning. Given a query event and reasoning chains of earlier "
    "events, decide whether the query event is true. Please answer yes, no, or unsure then explain your decision."
)


class GETER(SFT):
    """SFT of a LoRA policy with a temporal-KG graph token prefixed to the prompt embeddings."""

    def __init__(
        self,
        model_name_or_path: str,
        system_prompt: str | None = GETER_SYSTEM_PROMPT,
        rewards: list[RewardSpec | str] | None = None,
        accuracy_reward: str | None = "temporal_label",
        graph_prefix: bool = True,
        num_entities: int = 20,
        num_relations: int = 5,
        graph_dim: int = 64,
        num_prefix_tokens: int = 1,
        train_encoder: bool = False,
        temporal_layer: bool = False,
        temporal_tau: float = 5.0,
        graph_seed: int = 0,
        embeddings_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: Local directory, model alias or hub id of the LM.
            system_prompt: The instruction (default: GETER's, ending "Please answer yes, no, or unsure then
                explain your decision.").
            rewards: Reward functions scoring held-out generations; null = [temporal_label] (the answer's leading
                Yes/No/Unsure equals the `label` column).
            accuracy_reward: The reward logged as eval/accuracy (label accuracy).
            graph_prefix: Prefix the graph token (false = the same SFT without structure, an ablation).
            num_entities: Entities of the TKG (ids in the rows' `query` / `chains` must be below it).
            num_relations: Relations of the TKG.
            graph_dim: d, the entity/relation embedding size (the graph embedding is 3d).
            num_prefix_tokens: Prefix tokens the projector makes (the paper: 1).
            train_encoder: Also train the entity/relation embeddings (and message layer); false = frozen, rebuilt
                from `graph_seed` / `embeddings_path` when a checkpoint is loaded.
            temporal_layer: Add one time-decayed message-passing step over each row's chains (RE-GCN substitute).
            temporal_tau: Time constant (in timestamps) of the message weights exp(-(t_q - t) / tau).
            graph_seed: Seed of the random embeddings and message layer.
            embeddings_path: A torch file {"entity": (E, d), "relation": (R, d)} (e.g. exported RE-GCN
                embeddings) to start from instead of random tables.
        """
        rewards = ["temporal_label"] if rewards is None else rewards
        super().__init__(model_name_or_path, system_prompt=system_prompt, rewards=rewards,
                         accuracy_reward=accuracy_reward, **kwargs)
        for name, value in (("num_entities", num_entities), ("num_relations", num_relations),
                            ("graph_dim", graph_dim), ("num_prefix_tokens", num_prefix_tokens)):
            if int(value) < 1:
                raise RecipeConfigError(f"model.{name}={value}; it must be >= 1")
        if temporal_tau <= 0:
            raise RecipeConfigError(f"model.temporal_tau={temporal_tau}; it must be > 0")
        self.encoder: TemporalKGEncoder | None = None
        self.projector: GraphPrefixProjector | None = None
        if graph_prefix:
            init = _load_embeddings(embeddings_path)
            try:
                self.encoder = TemporalKGEncoder(num_entities, num_relations, graph_dim, temporal_layer=temporal_layer,
                                                 tau=temporal_tau, seed=graph_seed, **init)
            except ValueError as err:
                raise RecipeConfigError(f"model.embeddings_path={embeddings_path!r}: {err}") from err
            self.encoder.requires_grad_(train_encoder)
            hidden = self.policy.model.get_input_embeddings().embedding_dim
            self.projector = GraphPrefixProjector(self.encoder.out_dim, hidden, num_prefix_tokens)

    # ------------------------------------------------------------------ the graph token
    def graph_prefix_embeddings(self, query: Tensor, chains: Tensor, chain_mask: Tensor) -> Tensor:
        """(B, k, H) prefix embeddings of query (B, 4), chains (B, C, 4), chain_mask (B, C)."""
        graph = self.encoder.graph_embedding(query, chains, chain_mask)  # (B, 3d)
        return self.projector(graph)  # (B, k, H)

    def _graph_tensors(self, rows_or_columns: list[dict]) -> tuple[Tensor, Tensor, Tensor]:
        q, c, m = collate_graph(rows_or_columns, num_entities=self.encoder.num_entities,
                                num_relations=self.encoder.num_relations)
        return q.to(self.device), c.to(self.device), m.to(self.device)

    def encode(self, rows: list[dict]) -> dict[str, Tensor]:
        """SFT's batch plus `query` (B, 4), `chains` (B, C, 4), `chain_mask` (B, C) from the rows."""
        batch = super().encode(rows)
        if self.encoder is not None:
            batch["query"], batch["chains"], batch["chain_mask"] = self._graph_tensors(rows)
        return batch

    def forward_loss(self, batch: dict[str, Tensor], *, reduction: str = "mean") -> tuple[Tensor, int, dict[str, float]]:
        """Embed the tokens, splice the graph token before the prompt, forward from inputs_embeds, SFT loss; the
        metrics are the prefix's norm and the chains per row."""
        if self.encoder is None:
            return super().forward_loss(batch, reduction=reduction)
        model = self.policy.model
        embeds = model.get_input_embeddings()(batch["input_ids"])  # (B, L, H)
        prefix = self.graph_prefix_embeddings(batch["query"], batch["chains"], batch["chain_mask"])  # (B, k, H)
        embeds, mask, labels = splice_prefix(embeds, batch["attention_mask"], batch["labels"], prefix.to(embeds.dtype))
        out = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)  # logits (B, k+L, V)
        metrics = {"graph/prefix_norm": float(prefix.detach().norm(dim=-1).mean()),
                   "graph/chains_per_row": float(batch["chain_mask"].sum(1).float().mean())}
        return (*sft_loss(out.logits, labels, reduction=reduction), metrics)

    def _columns_prefix(self, columns: dict[str, list[Any]]) -> Tensor:
        """(B, k, H) prefix for the generation engine from the batch columns `query` and `chains`."""
        rows = [{"query": q, "chains": c} for q, c in zip(columns.get("query") or [], columns.get("chains") or [])]
        if not rows:
            raise RecipeConfigError("GETER generation needs the `query` and `chains` columns in the held-out rows")
        dtype = self.policy.model.get_input_embeddings().weight.dtype
        return self.graph_prefix_embeddings(*self._graph_tensors(rows)).to(dtype)

    def build_rollout(self):
        """HF generate with the graph token before each prompt (plain HF generate without `graph_prefix`)."""
        if self.projector is None:
            return super().build_rollout()
        return PrefixGenerateEngine(self.policy, self.sampling, prefix_fn=self._columns_prefix,
                                    generation_batch_size=self.generation_batch_size)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The policy's trainable weights, then the graph prefix's (projector; encoder when trained)."""
        groups = super().parameter_groups()
        graph = [p for m in (self.encoder, self.projector) if m is not None for p in m.parameters() if p.requires_grad]
        if graph:
            groups.append({"name": "graph_prefix", "params": graph})
        return groups

    # ------------------------------------------------------------------ evaluation
    def eval_metrics(self, rollouts: list[RolloutBatch]) -> dict[str, float]:
        """eval/accuracy/<label> and eval/bleu4, eval/rougeL of the explanations (the text after the label) against
        the rows' `explanation` column, from the greedy answers."""
        out: dict[str, float] = {}
        completions = [c for r in rollouts for c in r.completions]
        golds = [g for r in rollouts for g in r.columns.get("label", [None] * len(r))]
        parsed = [parse_answer(c) for c in completions]
        for label in LABELS:
            hits = [p[0] == label for p, g in zip(parsed, golds) if g == label]
            if hits:
                out[f"eval/accuracy/{label.lower()}"] = sum(hits) / len(hits)
        refs = [e for r in rollouts for e in r.columns.get("explanation", [None] * len(r))]
        pairs = [(p[1], ref) for p, ref in zip(parsed, refs) if isinstance(ref, str)]
        if pairs:
            scores = explanation_scores([p for p, _ in pairs], [r for _, r in pairs])
            out.update({f"eval/{name}": value for name, value in scores.items()})
        return out


def _load_embeddings(path: str | None) -> dict[str, Tensor]:
    if path is None:
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise RecipeConfigError(f"model.embeddings_path={path!r} cannot be read ({err}); give a torch file "
                                "{'entity': (E, d), 'relation': (R, d)} or null for random embeddings") from err
    if not isinstance(data, dict) or not {"entity", "relation"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise RecipeConfigError(f"model.embeddings_path={path!r} must hold a dict with 'entity' and 'relation' "
                                f"tensors; found {found}")
    return {"entity_init": data["entity"], "relation_init": data["relation"]}


__all__ = ["GETER", "GETER_SYSTEM_PROMPT"]
