"""Policy: log-probs against a direct computation, LoRA / QLoRA references, what a step changes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.policy import LoraSettings, Policy, PolicyConfigError

LORA = LoraSettings(r=4, alpha=8, target_modules="all-linear")


def _batch(policy: Policy, prompts: list[str], completions: list[str]):
    tok = policy.tokenizer
    p = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    c = tok(completions, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    return p["input_ids"], p["attention_mask"], c["input_ids"], c["attention_mask"]


def _direct_logps(model, prompt: str, completion: str, tok, temperature: float = 1.0):
    """(log-probs, entropies) of each completion token from one unpadded forward pass."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0] / temperature  # (L, V)
    logp = torch.log_softmax(logits, dim=-1)
    rows = [len(p) - 1 + j for j in range(len(c))]
    entropy = -(logp.exp() * logp).sum(-1)  # (L,)
    return torch.stack([logp[r, t] for r, t in zip(rows, c)]), entropy[rows]


def test_token_logps_match_direct_computation_with_padding(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    policy.model.eval()
    prompts = ["What is 2 + 3?", "Hi"]  # different lengths -> the second prompt is left-padded
    completions = ["5 is the answer", "7"]  # -> the second completion is right-padded
    pi, pm, ci, cm = _batch(policy, prompts, completions)
    assert pm[1, 0] == 0 and cm[1, -1] == 0
    with torch.no_grad():
        logps, entropy = policy.token_logps(pi, pm, ci, cm, temperature=0.7, micro_batch_size=1, with_entropy=True)
    for row in range(2):
        expected, expected_entropy = _direct_logps(policy.model, prompts[row], completions[row], policy.tokenizer,
                                                   temperature=0.7)
        n = int(cm[row].sum())
        torch.testing.assert_close(logps[row, :n], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(entropy[row, :n], expected_entropy, atol=1e-4, rtol=1e-4)
    assert entropy.shape == logps.shape
    assert bool((entropy[cm.bool()] > 0).all())
    assert bool((entropy <= torch.log(torch.tensor(float(policy.model.config.vocab_size))) + 1e-4).all())


def test_lora_reference_is_base_model_and_only_adapters_train(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path, lora=LORA)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    assert policy.is_peft and policy.reference_mode == "adapter"
    batch = _batch(policy, ["What is 1 + 1?", "Sum 3 and 4"], ["2", "the answer is 7"])
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    opt = torch.optim.AdamW(list(policy.trainable_parameters()), lr=1e-2)
    policy.model.train()
    logps, _ = policy.token_logps(*batch)
    (-(logps * batch[3]).sum()).backward()
    opt.step()
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "the step changed nothing"
    assert all("lora_" in n for n in changed), f"non-adapter weights changed: {sorted(changed)[:3]}"
    policy.model.eval()
    ref = policy.ref_token_logps(*batch)
    with torch.no_grad():
        now, _ = policy.token_logps(*batch)
        base_logps, _ = policy.token_logps(*batch, model=base)
    torch.testing.assert_close(ref, base_logps, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(now, base_logps, atol=1e-4), "the adapter step did not move the policy"


def test_full_finetune_reference_is_frozen_starting_weights(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    assert policy.reference_mode == "copy"
    batch = _batch(policy, ["What is 1 + 1?"], ["2"])
    policy.model.eval()
    start = policy.ref_token_logps(*batch)
    opt = torch.optim.SGD(list(policy.trainable_parameters()), lr=1.0)
    logps, _ = policy.token_logps(*batch)
    (-logps.sum()).backward()
    opt.step()
    torch.testing.assert_close(policy.ref_token_logps(*batch), start)
    assert not any(p.requires_grad for p in policy._reference[0].parameters())
    # The frozen copy is not a submodule: it is neither trained nor saved in a state_dict.
    assert not any(k.startswith("_reference") for k in policy.state_dict())


def test_qlora_4bit_on_cpu(tiny_model_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    policy = Policy.from_pretrained(tiny_model_path, lora=LORA, quantization="4bit")
    four_bit = [m for m in policy.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no NF4 Linear4bit layer in the QLoRA policy"
    assert four_bit[0].weight.quant_state.quant_type == "nf4"
    frozen_before = [m.weight.detach().clone() for m in four_bit]
    batch = _batch(policy, ["What is 1 + 1?", "Sum 3 and 4"], ["2", "the answer is 7"])
    policy.model.eval()
    ref_before = policy.ref_token_logps(*batch)
    policy.model.train()
    opt = torch.optim.AdamW(list(policy.trainable_parameters()), lr=5e-2)
    logps, _ = policy.token_logps(*batch)
    (-(logps * batch[3]).sum()).backward()
    opt.step()
    assert all(torch.equal(m.weight.detach(), w) for m, w in zip(four_bit, frozen_before))
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.model.named_parameters()
               if p.dtype.is_floating_point)
    policy.model.eval()
    # The reference (adapter disabled) is still the quantized base; the policy has moved.
    torch.testing.assert_close(policy.ref_token_logps(*batch), ref_before, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        now, _ = policy.token_logps(*batch)
    assert not torch.allclose(now, ref_before, atol=1e-4)


def test_gradient_checkpointing_gives_same_gradients(tiny_model_path):
    grads = []
    for gc in (False, True):
        torch.manual_seed(0)
        policy = Policy.from_pretrained(tiny_model_path, lora=LORA, gradient_checkpointing=gc)
        assert policy.model.is_gradient_checkpointing == gc
        policy.model.train()
        batch = _batch(policy, ["What is 1 + 1?"], ["2 and more"])
        logps, _ = policy.token_logps(*batch)
        logps.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bad_settings_name_the_field(tiny_model_path):
    with pytest.raises(PolicyConfigError, match="model.quantization"):
        Policy.from_pretrained(tiny_model_path, quantization="4bit")  # no LoRA
    with pytest.raises(PolicyConfigError, match="model.dtype"):
        Policy.from_pretrained(tiny_model_path, dtype="float7")
    with pytest.raises(PolicyConfigError, match="target_modules"):
        Policy.from_pretrained(tiny_model_path, lora=LoraSettings(target_modules=["no_such_proj"]))
