"""`RolloutBatch`: the one object that flows through a training step.

One row per sampled completion; the rows of a group (the G samples of one prompt) are adjacent.
The rollout engine fills the token fields; `score`, `compute_advantages` and the log-prob passes fill
`rewards`, `rewards_per_func`, `advantages`, `old_logps`, `ref_logps` (and `values` for PPO).
Nothing downstream re-tokenises text that the rollout already tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

# Fields that are per-row tensors (first dim = N) and are sliced/concatenated row-wise.
_ROW_TENSORS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "completion_attention_mask",
    "group_ids",
    "truncated",
    "rewards",
    "rewards_per_func",
    "advantages",
    "old_logps",
    "ref_logps",
    "values",
    "returns",
    "rollout_logps",
    "token_weights",
    "sample_weights",
)
# Tensors whose second dim is a sequence dimension that may need padding when concatenating.
_LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
_RIGHT_PADDED = {
    "completion_ids": "pad",
    "completion_mask": 0,
    "completion_attention_mask": 0,
    "old_logps": 0.0,
    "ref_logps": 0.0,
    "values": 0.0,
    "returns": 0.0,
    "rollout_logps": 0.0,
    "token_weights": 0.0,
    "advantages": 0.0,  # only when per-token (N, T)
}


@dataclass
class RolloutBatch:
    """Sampled completions and everything computed about them during one step.

    Shapes: N rows (= prompts x G), P prompt tokens (left-padded), T completion tokens (right-padded).
    """

    prompt_ids: Tensor  # (N, P) long, left-padded
    prompt_mask: Tensor  # (N, P) long, 1 = real prompt token
    completion_ids: Tensor  # (N, T) long, right-padded
    completion_mask: Tensor  # (N, T) long, 1 = a token the policy wrote and is trained on
    completion_attention_mask: Tensor  # (N, T) long, 1 = any real token (policy, tool output, template)
    prompts: list[Any]  # the dataset prompt of each row (string or chat messages)
    completions: list[str]  # decoded completion text of each row
    group_ids: Tensor  # (N,) long, rows with the same id were sampled from the same prompt
    columns: dict[str, list[Any]] = field(default_factory=dict)  # per-row dataset fields: answer, domain, ...
    truncated: Tensor | None = None  # (N,) bool, completion hit max_new_tokens without EOS/stop
    pad_token_id: int = 0
    # Filled as the step goes.
    rewards: Tensor | None = None  # (N,) weighted total
    rewards_per_func: Tensor | None = None  # (N, F), NaN where a function returned None
    reward_names: list[str] = field(default_factory=list)
    advantages: Tensor | None = None  # (N,) or (N, T) for per-token methods
    old_logps: Tensor | None = None  # (N, T)
    ref_logps: Tensor | None = None  # (N, T)
    values: Tensor | None = None  # (N, T) critic values (PPO)
    returns: Tensor | None = None  # (N, T) value targets (PPO: GAE advantages + values)
    turn_spans: list[list[tuple[int, int]]] | None = None  # per row: (start, end) token spans of policy turns
    rollout_logps: Tensor | None = None  # (N, T) the sampler's own log-probs of its tokens (vLLM), else None
    token_weights: Tensor | None = None  # (N, T) rollout-correction importance weights multiplying the surrogate
    # Additive statistics of the work that produced the batch (generate_s, generated_tokens, tool_calls, verifier
    # seconds, ...): the engine and the reward step write them, `concat` sums them, `select` keeps them.
    stats: dict[str, float] = field(default_factory=dict)
    # Vision-language policies: each row's processed vision inputs (pixel_values, image_grid_thw, ...), one dict per
    # prompt shared by the rows of its group (`modules.vision`); every log-prob forward collates them. None for text.
    vision: list[dict[str, Tensor]] | None = None
    sample_weights: Tensor | None = None  # (N,) per-row loss weights (GUI-G1's difficulty `rate`), None = all 1

    def __post_init__(self) -> None:
        n = self.completion_ids.shape[0]
        if self.truncated is None:
            self.truncated = torch.zeros(n, dtype=torch.bool, device=self.completion_ids.device)
        for name in ("prompt_ids", "prompt_mask", "completion_mask", "completion_attention_mask", "group_ids"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"RolloutBatch.{name} has {getattr(self, name).shape[0]} rows, expected {n}")
        if len(self.prompts) != n or len(self.completions) != n:
            raise ValueError(f"RolloutBatch: {len(self.prompts)} prompts / {len(self.completions)} completions for {n} rows")
        if self.vision is not None and len(self.vision) != n:
            raise ValueError(f"RolloutBatch.vision has {len(self.vision)} rows, expected {n}")
        for key, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"RolloutBatch.columns[{key!r}] has {len(values)} values, expected {n}")

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def injected_mask(self) -> Tensor:
        """(N, T) 1 where a real token was not written by the policy (tool output, injected template)."""
        return self.completion_attention_mask * (1 - self.completion_mask)

    @property
    def completion_lengths(self) -> Tensor:
        """(N,) number of policy-written tokens in each completion."""
        return self.completion_mask.sum(-1)

    @property
    def num_groups(self) -> int:
        return int(torch.unique(self.group_ids).numel())

    @property
    def group_size(self) -> int:
        """G, the number of rows per group (all groups must have the same size)."""
        counts = torch.unique(self.group_ids, return_counts=True)[1]
        if counts.numel() == 0:
            return 0
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"RolloutBatch groups have unequal sizes: {counts.tolist()}")
        return int(counts[0])

    def to(self, device: torch.device | str) -> "RolloutBatch":
        for name in _ROW_TENSORS:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, value.to(device))
        return self

    def select(self, index: Tensor | list[int] | slice) -> "RolloutBatch":
        """A new batch holding the chosen rows (tensors sliced, lists and columns picked)."""
        if isinstance(index, slice):
            index = list(range(len(self)))[index]
        if isinstance(index, Tensor):
            index = index.tolist() if index.dtype != torch.bool else index.nonzero().flatten().tolist()
        idx = torch.as_tensor(index, dtype=torch.long, device=self.completion_ids.device)
        kwargs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ROW_TENSORS and isinstance(value, Tensor):
                kwargs[f.name] = value.index_select(0, idx)
            elif f.name in ("prompts", "completions") or (f.name in ("turn_spans", "vision") and value is not None):
                kwargs[f.name] = [value[i] for i in index]
            elif f.name == "columns":
                kwargs[f.name] = {k: [v[i] for i in index] for k, v in value.items()}
            elif f.name == "stats":
                kwargs[f.name] = dict(value)
            else:
                kwargs[f.name] = value
        return RolloutBatch(**kwargs)

    def micro_batches(self, size: int) -> list["RolloutBatch"]:
        """Consecutive row chunks of at most `size` rows."""
        size = max(1, int(size))
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]

    @classmethod
    def concat(cls, batches: list["RolloutBatch"]) -> "RolloutBatch":
        """Row-wise concatenation; prompts are re-left-padded and completions re-right-padded to a common width.

        Group ids are made unique across the inputs (offset by the running maximum).
        """
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        pad_id = batches[0].pad_token_id
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(b, f.name) for b in batches]
            if f.name == "group_ids":
                out, offset = [], 0
                for v in values:
                    out.append(v + offset)
                    offset = int(out[-1].max()) + 1 if v.numel() else offset
                kwargs[f.name] = torch.cat(out)
            elif f.name in _ROW_TENSORS:
                if any(v is None for v in values):
                    kwargs[f.name] = None
                    continue
                if (f.name in _LEFT_PADDED or f.name in _RIGHT_PADDED) and values[0].dim() >= 2:
                    fill = _LEFT_PADDED.get(f.name, _RIGHT_PADDED.get(f.name))
                    fill = pad_id if fill == "pad" else fill
                    width = max(v.shape[1] for v in values)
                    left = f.name in _LEFT_PADDED
                    values = [_pad_to(v, width, fill, left=left) for v in values]
                kwargs[f.name] = torch.cat(values)
            elif f.name in ("prompts", "completions"):
                kwargs[f.name] = [x for v in values for x in v]
            elif f.name in ("turn_spans", "vision"):
                if f.name == "vision" and any(v is None for v in values) and not all(v is None for v in values):
                    raise ValueError("RolloutBatch.concat: batches with and without vision inputs")
                kwargs[f.name] = None if any(v is None for v in values) else [x for v in values for x in v]
            elif f.name == "columns":
                keys = values[0].keys()
                kwargs[f.name] = {k: [x for v in values for x in v[k]] for k in keys}
            elif f.name == "stats":
                kwargs[f.name] = add_stats(*values)
            else:
                kwargs[f.name] = values[0]
        return cls(**kwargs)


def add_stats(*stats: dict[str, float]) -> dict[str, float]:
    """Key-wise sum of statistics dicts.

    >>> add_stats({"generate_s": 1.0, "tool_calls": 2.0}, {"generate_s": 0.5})
    {'generate_s': 1.5, 'tool_calls': 2.0}
    """
    out: dict[str, float] = {}
    for s in stats:
        for k, v in s.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _pad_to(t: Tensor, width: int, fill: float, *, left: bool) -> Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    pad = torch.full((t.shape[0], extra, *t.shape[2:]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if left else [t, pad], dim=1)
