"""FSDP2 helpers that know nothing of the policy: is a model sharded, gather it once for `generate`, gather its full
state dict for saving, which process is the main one. `modules.distributed` builds the sharding on top of these."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from lightning.fabric.utilities.distributed import _distributed_is_initialized
from torch import nn

try:  # torch >= 2.6 exports FSDP2 here
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._composable.fsdp import FSDPModule  # type: ignore[no-redef]


def is_sharded(model: nn.Module) -> bool:
    """True when `model` (or a submodule) is an FSDP2 `fully_shard` module."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module) -> Iterator[None]:
    """Hold the whole model on every rank (one all-gather per FSDP unit) while generating, instead of one per unit
    and token; nothing happens unless `model` is sharded. A collective: every rank must enter it.
    """
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        yield
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(getattr(m, "_r1_reshard_after_forward", True), recurse=False)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The full (unsharded) state dict of a sharded `model` on CPU, on rank 0 (other ranks: {}). A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_main_process() -> bool:
    """Global rank 0 (True when not distributed)."""
    return not _distributed_is_initialized() or torch.distributed.get_rank() == 0


__all__ = ["full_state_dict", "gathered_for_generation", "is_main_process", "is_sharded"]
