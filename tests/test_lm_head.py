"""Chunked LM-head log-probs and entropy (`modules.lm_head.chunked_token_logps`) against the plain computation from
full logits: values, gradients to hidden states / head weight / bias, no (N, T, V) tensor kept for the backward; and
`Policy.token_logps` with `logit_chunk_size` against the model's own forward on a tiny LM (LoRA and full fine-tune,
tied and untied heads, the reference) and a tiny vision-language model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.lm_head import chunked_token_logps, entropy_from_logits, selective_log_softmax
from modules.objectives.tis import truncated_logprobs
from modules.policy import LoraSettings, Policy, lm_head_parts

pytestmark = pytest.mark.usefixtures("one_thread")
N, T, H, V = 3, 7, 16, 50


def _reference(hidden, weight, bias, targets, temperature):
    """(logps, entropy, logits): the unchunked computation from the full logits (N, T, V)."""
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (N, T, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # .float(), float64 stays
    lse = torch.logsumexp(logits, dim=-1)
    return selective_log_softmax(logits, targets, lse), entropy_from_logits(logits, lse), logits


def _inputs(dtype, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g, dtype=dtype).requires_grad_()
    weight = (0.3 * torch.randn(V, H, generator=g, dtype=dtype)).requires_grad_()
    bias = (0.3 * torch.randn(V, generator=g, dtype=dtype)).requires_grad_() if with_bias else None
    targets = torch.randint(V, (N, T), generator=g)
    coefs = torch.randn(2, N, T, generator=g, dtype=dtype)  # per-token loss weights for logps and entropy
    return hidden, weight, bias, targets, coefs


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [x for x in tensors if x is not None], retain_graph=True)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 5, 21, 1000])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, (1e-6, 1e-5)), (torch.float32, (1e-5, 1e-5))],
                         ids=["float64", "float32"])
def test_chunked_matches_full_logits(chunk_size, temperature, with_bias, dtype, tol):
    value_tol, grad_tol = tol
    hidden, weight, bias, targets, (a, b) = _inputs(dtype, with_bias)
    leaves = (hidden, weight, bias)
    ref_logps, ref_entropy, _ = _reference(hidden, weight, bias, targets, temperature)
    logps, entropy = chunked_token_logps(hidden, weight, bias, targets, temperature=temperature,
                                         chunk_size=chunk_size, with_entropy=True, entropy_grad=True)
    torch.testing.assert_close(logps, ref_logps, atol=value_tol, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=value_tol, rtol=0)
    # a loss mixing log-probs and an entropy bonus: both gradients flow
    got = _grads((a * logps).sum() + (b * entropy).sum(), leaves)
    want = _grads((a * ref_logps).sum() + (b * ref_entropy).sum(), leaves)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=grad_tol, rtol=0)
    # entropy as a metric: no graph through it, the gradient is the log-probs' alone
    logps, entropy = chunked_token_logps(hidden, weight, bias, targets, temperature=temperature,
                                         chunk_size=chunk_size, with_entropy=True, entropy_grad=False)
    assert not entropy.requires_grad
    torch.testing.assert_close(entropy, ref_entropy.detach(), atol=value_tol, rtol=0)
    got = _grads((a * logps).sum(), leaves)
    want = _grads((a * ref_logps).sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=grad_tol, rtol=0)
    # the entropy alone: the log-probs' gradient term is skipped
    _, entropy = chunked_token_logps(hidden, weight, bias, targets, temperature=temperature, chunk_size=chunk_size,
                                     with_entropy=True, entropy_grad=True)
    for g, w in zip(_grads((b * entropy).sum(), leaves), _grads((b * ref_entropy).sum(), leaves)):
        torch.testing.assert_close(g, w, atol=grad_tol, rtol=0)


def test_only_the_inputs_that_train_get_gradients_and_no_logits_are_saved():
    hidden, weight, bias, targets, (a, b) = _inputs(torch.float32, True)
    weight.requires_grad_(False)  # LoRA: the head (tied to the embeddings) is frozen
    bias.requires_grad_(False)
    saved = []

    def pack(x):
        saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logps, entropy = chunked_token_logps(hidden, weight, bias, targets, temperature=0.7, chunk_size=4,
                                             with_entropy=True, entropy_grad=True)
    assert saved and max(torch.Size(s).numel() for s in saved) < N * T * V, saved
    assert not any(V in s and (N * T in s or T in s) for s in saved), saved
    node = logps.grad_fn.next_functions[0][0]  # the view's input: the chunked Function
    assert all(x.numel() < N * T * V for x in node.saved_tensors if x is not None)
    loss = (a * logps).sum() + (b * entropy).sum()
    ref_logps, ref_entropy, _ = _reference(hidden, weight, bias, targets, 0.7)
    (grad,) = torch.autograd.grad(loss, [hidden])
    (want,) = torch.autograd.grad((a * ref_logps).sum() + (b * ref_entropy).sum(), [hidden])
    torch.testing.assert_close(grad, want, atol=1e-5, rtol=0)
    with torch.no_grad():  # a reference pass builds no graph
        logps, entropy = chunked_token_logps(hidden, weight, None, targets, chunk_size=4, with_entropy=True,
                                             entropy_grad=True)
    assert not logps.requires_grad and not entropy.requires_grad


def test_without_entropy_and_with_truncation():
    hidden, weight, bias, targets, _ = _inputs(torch.float32, True)
    ref_logps, _, logits = _reference(hidden, weight, bias, targets, 0.7)
    logps, entropy = chunked_token_logps(hidden, weight, bias, targets, temperature=0.7, chunk_size=4)
    assert entropy is None
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=0)
    for top_p, top_k in [(0.8, 0), (1.0, 5), (0.9, 10)]:
        logps, entropy, truncated = chunked_token_logps(hidden, weight, bias, targets, temperature=0.7, chunk_size=4,
                                                        with_entropy=True, truncation=(top_p, top_k))
        want = truncated_logprobs(logits.detach(), targets, top_p=top_p, top_k=top_k)
        assert not truncated.requires_grad and truncated.shape == (N, T)
        torch.testing.assert_close(truncated, want, atol=1e-5, rtol=0)  # -inf where the token was cut, both


def test_bfloat16_inputs_compute_as_an_nn_linear_then_float():
    hidden, weight, bias, targets, (a, _) = _inputs(torch.bfloat16, True)
    logps, _ = chunked_token_logps(hidden, weight, bias, targets, temperature=0.7, chunk_size=5)
    ref_logps, _, _ = _reference(hidden, weight, bias, targets, 0.7)  # bf16 logits, then float32
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=0)
    got = _grads((a.float() * logps).sum(), (hidden, weight, bias))
    want = _grads((a.float() * ref_logps).sum(), (hidden, weight, bias))
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), atol=2e-2, rtol=2e-2)


def test_bad_arguments_are_one_line_errors():
    hidden, weight, bias, targets, _ = _inputs(torch.float32, True)
    with pytest.raises(ValueError, match="chunk_size=0; give an integer >= 1"):
        chunked_token_logps(hidden, weight, bias, targets, chunk_size=0)
    with pytest.raises(ValueError, match=r"weight \(16, 50\) is not \(V, 16\)"):
        chunked_token_logps(hidden, weight.T, bias, targets, chunk_size=4)
    with pytest.raises(ValueError, match=r"targets \(3, 6\) do not match"):
        chunked_token_logps(hidden, weight, bias, targets[:, 1:], chunk_size=4)


# ---------------------------------------------------------------------------------------------- Policy.token_logps
def _batch(policy: Policy):
    tok = policy.tokenizer
    p = tok(["What is 2 + 3?", "Hi", "Sum 3 and 4 please"], return_tensors="pt", padding=True, padding_side="left",
            add_special_tokens=False)
    c = tok(["5 is the answer", "7", "the sum is 7."], return_tensors="pt", padding=True, padding_side="right",
            add_special_tokens=False)
    return p["input_ids"], p["attention_mask"], c["input_ids"], c["attention_mask"]


@pytest.fixture
def chunked_calls(monkeypatch):
    """The calls `Policy.token_logps` makes to `chunked_token_logps` (to tell the chunked path from the fallback)."""
    import modules.policy

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["chunk_size"])
        return chunked_token_logps(*args, **kwargs)

    monkeypatch.setattr(modules.policy, "chunked_token_logps", spy)
    return calls


def _scores(policy: Policy, batch, chunk: int | None, *, micro_batch_size=None, vision=None):
    """(logps, entropy, truncated) and the gradients of a loss on logps + entropy, at `logit_chunk_size=chunk`."""
    policy.logit_chunk_size = chunk
    policy.model.zero_grad(set_to_none=True)
    mask = batch[3].float()
    logps, entropy, truncated = policy.token_logps(*batch, temperature=0.7, with_entropy=True, entropy_grad=True,
                                                   truncation=(0.9, 20), micro_batch_size=micro_batch_size,
                                                   vision=vision)
    loss = -(logps * mask).sum() - 0.1 * (entropy * mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return logps.detach(), entropy.detach(), truncated, grads


def _assert_same(chunked, full, mask):
    mask = mask.bool()
    for got, want in zip(chunked[:3], full[:3]):
        torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=0)
    assert chunked[3].keys() == full[3].keys() and full[3]
    for name in full[3]:
        torch.testing.assert_close(chunked[3][name], full[3][name], atol=1e-5, rtol=0, msg=name)


def test_lora_policy_chunked_equals_unchunked_and_reference_is_the_base(tiny_model_path, chunked_calls):
    policy = Policy.from_pretrained(tiny_model_path, lora=LoraSettings(r=4, alpha=8), logit_chunk_size=3)
    assert policy.logit_chunk_size == 3
    body, head = lm_head_parts(policy.model)
    assert body is policy.model.get_base_model().model and head is policy.model.get_base_model().lm_head
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    policy.model.eval()
    batch = _batch(policy)
    full = _scores(policy, batch, None)
    assert any("lora_A" in n for n in full[3]) and all("lora_" in n for n in full[3])
    assert not chunked_calls
    _assert_same(_scores(policy, batch, 3), full, batch[3])
    _assert_same(_scores(policy, batch, 3, micro_batch_size=2), full, batch[3])
    assert chunked_calls == [3] * 3
    policy.logit_chunk_size = 3
    ref = policy.ref_token_logps(*batch, temperature=0.7)
    assert len(chunked_calls) == 4
    base = Policy.from_pretrained(tiny_model_path)  # unchunked, no adapter
    with torch.no_grad():
        want, _ = base.token_logps(*batch, temperature=0.7)
    mask = batch[3].bool()
    torch.testing.assert_close(ref[mask], want[mask], atol=1e-5, rtol=0)
    assert (full[0] - want)[mask].abs().max() > 1e-3, "the adapter does not change the policy"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied_with_bias"])
def test_full_fine_tune_chunked_equals_unchunked_including_the_head(tiny_model_path, tied, chunked_calls):
    policy = Policy.from_pretrained(tiny_model_path)
    model = policy.model.eval()
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        assert model.get_output_embeddings() is model.lm_head
    else:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    batch = _batch(policy)
    full = _scores(policy, batch, None)
    assert "lm_head.weight" in full[3] or "model.embed_tokens.weight" in full[3]
    if not tied:
        assert "lm_head.bias" in full[3]
    _assert_same(_scores(policy, batch, 3), full, batch[3])
    with torch.no_grad():  # the frozen reference copy goes through the chunked path too
        policy.logit_chunk_size = 3
        ref = policy.ref_token_logps(*batch, temperature=0.7)
    assert len(chunked_calls) == 2
    with torch.no_grad():
        policy.logit_chunk_size = None
        want = policy.ref_token_logps(*batch, temperature=0.7)
    torch.testing.assert_close(ref, want, atol=1e-5, rtol=0)


def test_models_the_chunked_path_cannot_reproduce_fall_back(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path, logit_chunk_size=3)
    assert lm_head_parts(policy.model) is not None
    policy.model.config.final_logit_softcapping = 30.0  # Gemma 2/3 cap the logits after the head
    assert lm_head_parts(policy.model) is None
    policy.model.config.final_logit_softcapping = None
    policy.model.config.logit_scale = 0.0625  # Cohere
    assert lm_head_parts(policy.model) is None
    policy.model.config.logit_scale = 1.0
    policy.model.config.attn_logit_softcapping = 50.0  # inside the attention, the body's business
    assert lm_head_parts(policy.model) is not None
    lora_head = Policy.from_pretrained(tiny_model_path, lora=LoraSettings(r=4, alpha=8, target_modules=["lm_head"]))
    assert lm_head_parts(lora_head.model) is None  # an adapted head is not a plain nn.Linear
    with pytest.raises(ValueError, match="logit_chunk_size=0; give an integer >= 1"):
        Policy.from_pretrained(tiny_model_path, logit_chunk_size=0)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "idefics3", "llava"])
def test_vision_language_policy_chunked_equals_unchunked(tiny_vlm, arch, chunked_calls):
    from PIL import Image

    from modules.vision import encode_prompts

    policy = Policy.from_pretrained(tiny_vlm(arch), lora=LoraSettings(r=4, alpha=8))
    assert lm_head_parts(policy.model) is not None
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    policy.model.eval()
    images = [[Image.new("RGB", (112, 84), "red")], None, [Image.new("RGB", (56, 56), "blue")]]
    enc = encode_prompts(policy.processor, ["Click OK.", "Hi", "Colour?"], images, [None] * 3)
    c = policy.tokenizer(["ok then", "yes", "it is blue"], return_tensors="pt", padding=True, padding_side="right",
                         add_special_tokens=False)
    batch = (enc.ids, enc.mask, c["input_ids"], c["attention_mask"])
    full = _scores(policy, batch, None, vision=enc.vision)
    _assert_same(_scores(policy, batch, 3, vision=enc.vision), full, batch[3])
    assert chunked_calls == [3]
