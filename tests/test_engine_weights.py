"""The weights pushed into an inference engine: LoRA folded in, QLoRA bases dequantized, the training model untouched."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from modules.policy import LoraSettings, Policy
from modules.rollout.weights import merged_named_weights


def _perturb_adapters(model, seed=0):
    """LoRA B starts at zero (the adapter is a no-op): give it values so the merge is visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _plain_model_with(path, weights):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(dict(weights), strict=False)
    assert not unexpected, unexpected
    # a tied LM head is not a separate parameter; nothing else may be missing
    assert set(missing) <= {"lm_head.weight"}, missing
    return plain


def test_full_model_names_are_the_checkpoint_names(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path))
    names = dict(merged_named_weights(policy.model))
    assert names.keys() == dict(policy.model.named_parameters()).keys()


def test_lora_merge_equals_peft_merge_and_leaves_the_model_alone(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    _perturb_adapters(policy.model)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    merged = dict(merged_named_weights(policy.model))
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in before.items())  # untouched
    import copy

    reference = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], msg=name)
    ids = torch.randint(0, 100, (2, 7))
    plain = _plain_model_with(tiny_model_path, merged.items())
    torch.testing.assert_close(_logits(plain, ids), _logits(policy.model, ids), rtol=1e-4, atol=1e-5)


def test_disabled_adapter_is_not_merged(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    _perturb_adapters(policy.model)
    with policy.model.disable_adapter():
        merged = dict(merged_named_weights(policy.model))
    base = dict(policy.model.get_base_model().named_parameters())
    q = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(merged[f"{q}.weight"], base[f"{q}.base_layer.weight"])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_weights_are_dequantized_and_merged_without_touching_the_4bit_base(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8), quantization="4bit")
    _perturb_adapters(policy.model, seed=1)
    q = policy.model.get_base_model().model.layers[0].self_attn.q_proj
    packed = q.base_layer.weight.data.clone()
    merged = dict(merged_named_weights(policy.model, dtype=torch.float32))
    assert torch.equal(q.base_layer.weight.data, packed)  # the NF4 storage is not rewritten
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32
    # A plain float model holding the merged weights computes what the QLoRA model computes.
    ids = torch.randint(0, 100, (2, 7))
    plain = _plain_model_with(tiny_model_path, merged.items())
    torch.testing.assert_close(_logits(plain, ids), _logits(policy.model, ids), rtol=1e-3, atol=1e-4)
