"""`ProxyModel`: a slowly moving copy of the policy's trainable weights (NOVER's policy-as-proxy, spec 1(c)).

- LoRA policy: a second adapter named ``proxy`` in the same PeftModel, initialised equal to the policy's adapter
  and always frozen; `active()` runs the model with it and switches back (the base weights are shared, so the proxy
  costs one adapter of memory).
- Full fine-tune: a frozen deep copy of the model.

`mix_(alpha)` moves it towards the policy: theta_proxy <- alpha * theta_proxy + (1 - alpha) * theta_policy (NOVER's
repo: alpha = 0.9, every checkpoint save). For LoRA the A and B matrices are mixed separately, as the adapter
weights are. The same model can serve as the KL reference (`active()` yields a module that
`Policy.token_logps(model=...)` accepts). `state_dict` / `load_state_dict` hold only the proxy weights, for a
recipe's checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from modules.policy import Policy


def mix_tensors_(proxy: Tensor, policy: Tensor, alpha: float) -> None:
    """In place: proxy <- alpha * proxy + (1 - alpha) * policy.

    >>> p = torch.tensor([1.0, 0.0]); mix_tensors_(p, torch.tensor([0.0, 1.0]), 0.9); p
    tensor([0.9000, 0.1000])
    """
    proxy.mul_(alpha).add_(policy.to(device=proxy.device, dtype=proxy.dtype), alpha=1.0 - alpha)


class ProxyModel:
    """The proxy of a `Policy` (see the module docstring)."""

    def __init__(self, policy: Policy, *, adapter_name: str = "proxy") -> None:
        self.policy = policy
        self.adapter_name = adapter_name
        self.updates = 0
        model = policy.model
        self._copy: list[nn.Module] = []  # full fine-tune only; a list so no nn.Module registers it
        if policy.is_peft:
            self.source_adapter = model.active_adapter
            if adapter_name in model.peft_config:
                raise ValueError(f"ProxyModel: the policy already has an adapter named {adapter_name!r}")
            config = copy.deepcopy(model.peft_config[self.source_adapter])
            config.inference_mode = True  # peft freezes an inference-mode adapter
            flags = self._grad_flags()
            model.add_adapter(adapter_name, config)
            self._restore_grad_flags(flags)
            for _, proxy in self._pairs():
                proxy.requires_grad_(False)
        else:
            self.source_adapter = None
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            self._copy.append(frozen)
        self.sync_()

    # ------------------------------------------------------------------ weights
    def _pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(policy tensor, proxy tensor) for every mixed weight."""
        if self._copy:
            self._follow_device()
            proxy = dict(self._copy[0].named_parameters())
            return [(p, proxy[name]) for name, p in self.policy.model.named_parameters() if p.requires_grad]
        from peft.tuners.tuners_utils import BaseTunerLayer

        pairs = []
        for module in self.policy.model.modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            for layer_name in module.adapter_layer_names:
                table = getattr(module, layer_name)
                if self.source_adapter not in table or self.adapter_name not in table:
                    continue
                src, dst = table[self.source_adapter], table[self.adapter_name]
                if isinstance(src, nn.Parameter):
                    pairs.append((src, dst))
                else:
                    pairs.extend(zip(src.parameters(), dst.parameters()))
        if not pairs:
            raise RuntimeError(f"ProxyModel: no {self.adapter_name!r} adapter weights found in the policy")
        return pairs

    def _named_proxy(self) -> dict[str, Tensor]:
        if self._copy:
            policy = dict(self.policy.model.named_parameters())
            return {n: p for n, p in self._copy[0].named_parameters() if policy[n].requires_grad}
        return {n: p for n, p in self.policy.model.named_parameters() if f".{self.adapter_name}." in n}

    @torch.no_grad()
    def sync_(self) -> None:
        """Copy the policy's current weights into the proxy (what it starts from)."""
        for policy, proxy in self._pairs():
            proxy.copy_(policy.to(device=proxy.device, dtype=proxy.dtype))

    @torch.no_grad()
    def mix_(self, alpha: float = 0.9) -> None:
        """theta_proxy <- alpha * theta_proxy + (1 - alpha) * theta_policy; counts an update."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ProxyModel.mix_: alpha={alpha}; it must be in [0, 1] (NOVER uses 0.9)")
        for policy, proxy in self._pairs():
            mix_tensors_(proxy, policy, alpha)
        self.updates += 1

    # ------------------------------------------------------------------ forward
    def _follow_device(self) -> None:
        copy_model = self._copy[0]
        if next(copy_model.parameters()).device != self.policy.device:  # Lightning moved the policy
            copy_model.to(self.policy.device)

    def _grad_flags(self) -> dict[str, bool]:
        return {n: p.requires_grad for n, p in self.policy.model.named_parameters()}

    def _restore_grad_flags(self, flags: dict[str, bool]) -> None:
        for n, p in self.policy.model.named_parameters():
            p.requires_grad_(flags.get(n, False))

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """The proxy as a callable model, in eval mode (no dropout); the policy is restored on exit."""
        if self._copy:
            self._follow_device()
            yield self._copy[0]
            return
        model = self.policy.model
        flags, was_training = self._grad_flags(), model.training
        model.set_adapter(self.adapter_name, inference_mode=True)
        model.eval()
        try:
            yield model
        finally:
            model.set_adapter(self.source_adapter)
            model.train(was_training)
            self._restore_grad_flags(flags)  # peft's set_adapter marks the active adapter trainable

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Tensor]:
        """The proxy's mixed weights (CPU copies), keyed by parameter name."""
        return {n: p.detach().cpu().clone() for n, p in self._named_proxy().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        own = self._named_proxy()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"ProxyModel.load_state_dict: missing {missing[:3]}, unexpected {unexpected[:3]} "
                             "(was the checkpoint written with other LoRA settings?)")
        for n, p in own.items():
            p.copy_(state[n].to(device=p.device, dtype=p.dtype))


__all__ = ["ProxyModel", "mix_tensors_"]
