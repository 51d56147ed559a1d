"""Token-level pieces of TAPO's mixed groups (spec section 7): the row order of a combined group and swapping a
row's prompt tokens (re-scoring a guided completion under the plain prompt). Forced completion prefixes (templates
in the completion) are `modules.rollout.prefix.generate_with_prefix`, shared with HGPO's forced modes."""

from __future__ import annotations

import torch
from torch import Tensor


def interleave_groups(num_groups: int, n_plain: int, n_guided: int) -> list[int]:
    """Row order that turns `concat([plain (B * n_plain rows), guided (B * n_guided rows)])` into B adjacent groups
    of `n_plain` plain then `n_guided` guided rows (G = n_plain + n_guided, spec 7a: `G = G_plain + G_guided`).

    >>> interleave_groups(2, 2, 1)
    [0, 1, 4, 2, 3, 5]
    """
    out = []
    for b in range(num_groups):
        out += [b * n_plain + j for j in range(n_plain)]
        out += [num_groups * n_plain + b * n_guided + j for j in range(n_guided)]
    return out


def replace_prompt_rows(prompt_ids: Tensor, prompt_mask: Tensor, rows: list[int], new_ids: Tensor, new_mask: Tensor,
                        pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded (N, P) prompt tensors whose `rows` are replaced by the left-padded (len(rows), P') `new_*`;
    the result is (N, max(P, P')), still left-padded.

    >>> ids, mask = replace_prompt_rows(torch.tensor([[0, 7, 8], [5, 6, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]),
    ...                                 [1], torch.tensor([[4]]), torch.tensor([[1]]), 0)
    >>> ids.tolist(), mask.tolist()
    ([[0, 7, 8], [0, 0, 4]], [[0, 1, 1], [0, 0, 1]])
    """
    width = max(prompt_ids.shape[1], new_ids.shape[1])

    def left_pad(t: Tensor, fill: int) -> Tensor:
        pad = torch.full((t.shape[0], width - t.shape[1]), fill, dtype=t.dtype, device=t.device)
        return torch.cat([pad, t], dim=1)

    ids, mask = left_pad(prompt_ids, pad_token_id).clone(), left_pad(prompt_mask, 0).clone()  # (N, W)
    index = torch.as_tensor(rows, dtype=torch.long, device=ids.device)
    ids[index] = left_pad(new_ids.to(ids.device), pad_token_id)
    mask[index] = left_pad(new_mask.to(mask.device), 0)
    return ids, mask
