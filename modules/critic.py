"""`Critic`: a value model for PPO, a causal LM backbone with a scalar head (veRL's critic, TRL's value head).

The backbone is loaded through the same `Policy.from_pretrained` path as the actor (local path, alias or hub id,
LoRA/QLoRA), so whatever loads as a policy loads as a critic. Its LM head is never used: the values come from the
last hidden state through a linear head initialised to zero, so the first value estimates are 0 (a neutral
baseline) and the critic starts learning from the first returns.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from modules.policy import LoraSettings, Policy


class Critic(nn.Module):
    def __init__(self, backbone: Policy) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.model.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(backbone.device)

    @classmethod
    def from_pretrained(cls, path: str, *, lora: LoraSettings | dict | None = None, quantization: str | None = None,
                        dtype: str = "float32", gradient_checkpointing: bool = False) -> "Critic":
        return cls(Policy.from_pretrained(path, lora=lora, quantization=quantization, dtype=dtype,
                                          gradient_checkpointing=gradient_checkpointing, reference="none"))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.backbone.trainable_parameters()
        yield from self.head.parameters()

    def values(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
               completion_attention_mask: Tensor, *, micro_batch_size: int | None = None) -> Tensor:
        """(N, T) V(s_t): the value of the state *before* completion token t (prompt + tokens < t)."""
        n, t = completion_ids.shape
        micro = n if not micro_batch_size else int(micro_batch_size)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P + T)
        attention = torch.cat([prompt_mask, completion_attention_mask], dim=1)  # (N, P + T)
        position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)  # as the policy's log-probs
        out = []
        for i in range(0, n, micro):
            hidden = self.backbone.model(input_ids=input_ids[i:i + micro], attention_mask=attention[i:i + micro],
                                         position_ids=position_ids[i:i + micro], output_hidden_states=True,
                                         logits_to_keep=1, use_cache=False).hidden_states[-1]  # (n, P + T, H)
            states = hidden[:, -t - 1:-1, :].float()  # (n, T, H): the state before each completion token
            out.append(self.head(states.to(self.head.weight.dtype)).squeeze(-1).float())  # (n, T)
        return torch.cat(out)
