"""The policy's weights as a plain Hugging Face checkpoint sees them, for pushing into an inference engine.

vLLM holds its own copy of the model. After each optimiser step the trainer's weights must reach it under the
names of the original checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...). For a LoRA policy the
adapter is folded in on the fly, W + scale * B @ A, without touching the training model (TRL instead calls
`merge_adapter()` / `unmerge_adapter()` on it, which for QLoRA rounds the delta into the 4-bit weights). A 4-bit
(QLoRA) or 8-bit base is dequantized first, so the engine gets full-precision merged weights and the training
model keeps its NF4 base.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn


def _dequantized(weight: Tensor) -> Tensor:
    """A bitsandbytes 4-bit/8-bit weight as a dense tensor; any other tensor as it is."""
    if type(weight).__name__ in ("Params4bit", "Int8Params"):
        # peft's helper knows both bitsandbytes layouts (the 4-bit quant_state, the 8-bit SCB scales).
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(weight, state=getattr(weight, "quant_state", None))
    return weight


def merged_named_weights(model: nn.Module, *, dtype: torch.dtype | None = None) -> Iterator[tuple[str, Tensor]]:
    """(checkpoint name, tensor) for every parameter of the plain model, LoRA deltas added, quantized bases dense.

    Works for a plain `PreTrainedModel` (its own parameters), a peft `PeftModel` with LoRA adapters (active
    adapters merged, disabled adapters left out) and QLoRA. Tied weights come once, as `named_parameters` gives
    them. Tensors are detached; `dtype` casts them (the engine's dtype; default: the computed dtype).
    """
    cast = (lambda t: t.detach().to(dtype)) if dtype is not None else (lambda t: t.detach())
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        for name, param in model.named_parameters():
            yield name, cast(_dequantized(param))
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    lora_modules = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    with torch.no_grad():
        for name, module in lora_modules.items():
            layer = module.get_base_layer()
            weight = _dequantized(layer.weight).clone()
            if not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
            yield f"{name}.weight", cast(weight)
            if getattr(layer, "bias", None) is not None:
                yield f"{name}.bias", cast(layer.bias)
        for name, param in base.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if any(owner == m or owner.startswith(m + ".") for m in lora_modules):
                continue  # the base weight and the adapter matrices of a LoRA layer, merged above
            if ".modules_to_save." in name or ".original_module." in name:
                raise NotImplementedError(f"merged_named_weights: peft modules_to_save ({name}) is not supported; "
                                          "train those modules with LoRA instead")
            yield name, cast(_dequantized(param))


__all__ = ["merged_named_weights"]
