"""Vision-language policies in the shared parts, on tiny random VLMs of three real architectures built locally:
Qwen2-VL (flattened patches, 3-D M-RoPE, `mm_token_type_ids`), Idefics3 (per-row images, 1-D RoPE) and LLaVA
(stacked images, a CLIP tower).

Parity: generate-time log-probs equal the scoring forward's; micro-batched scoring equals the full batch; image
placeholders are never sampled (so never trained on); the LoRA reference is the base model; the vision tower is
frozen unless asked; the vLLM engine sends unexpanded placeholders plus `multi_modal_data`.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import fake_vllm
from modules.models.tiny_vlm import build_tiny_vlm
from modules.policy import LoraSettings, Policy
from modules.rollout.engine import SamplingSettings
from modules.rollout.hf import HFGenerateEngine
from modules.vision import VisionInputError, VisionSettings, collate, encode_prompts, forward_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ["qwen2_vl", "qwen2_5_vl", "idefics3", "llava"]
# 224x168 -> (8 x 6) merged 28-px blocks; Idefics3: (64/8)^2 / 2^2; LLaVA: (64/16)^2 (the CLS feature dropped)
IMAGE_TOKENS = {"qwen2_vl": 48, "qwen2_5_vl": 48, "idefics3": 16, "llava": 16}
TOWERS = {"qwen2_vl": "model.visual", "qwen2_5_vl": "model.visual", "idefics3": "model.vision_model",
          "llava": "model.vision_tower"}




@pytest.fixture(params=ARCHS)
def vlm(request, tiny_vlm):
    return request.param, tiny_vlm(request.param)


def _image(colour, size=(224, 168)):
    img = Image.new("RGB", size, colour)
    img.paste((255, 255, 255), (10, 10, 60, 40))
    return img


def _rows():
    return (["Click OK.", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Two?"},
                                                        {"type": "image"}]}], "Colour?"],
            {"images": [[_image("red")], [_image("green"), _image("blue", (112, 112))], _image("yellow")]})


def test_tiny_vlms_reload_with_their_processor_and_image_token_count(vlm):
    arch, path = vlm
    policy = Policy.from_pretrained(path)
    assert policy.vision is not None and policy.processor is not None
    assert policy.vision.mrope == arch.startswith("qwen")
    enc = encode_prompts(policy.processor, ["Click OK."], [[_image("red")]], [None])
    assert int((enc.ids == policy.vision.image_token_id).sum()) == IMAGE_TOKENS[arch]
    assert enc.texts[0].count("<|image_pad|>" if arch.startswith("qwen") else "<image>") == 1  # unexpanded
    assert policy.vision.image_token_id in policy.vision.suppress_ids
    assert policy.vision.vision_modules == [TOWERS[arch]]


def test_generate_logps_equal_scoring_logps_and_micro_batches_equal_the_full_batch(vlm):
    arch, path = vlm
    policy = Policy.from_pretrained(path)
    prompts, columns = _rows()
    enc = encode_prompts(policy.processor, prompts, columns["images"], [None] * 3)
    kwargs = forward_kwargs(policy.vision, enc.ids, enc.vision)
    out = policy.model.generate(input_ids=enc.ids, attention_mask=enc.mask, **kwargs, do_sample=False,
                                max_new_tokens=6, suppress_tokens=policy.vision.suppress_ids, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=policy.tokenizer.pad_token_id,
                                eos_token_id=None)
    completion = out.sequences[:, enc.ids.shape[1]:]  # (3, 6)
    raw = torch.stack(out.logits, 1).float()  # (3, 6, V): raw logits, not the suppressed scores (pitfall (i))
    generated = torch.log_softmax(raw, -1).gather(-1, completion[..., None])[..., 0]
    ones = torch.ones_like(completion)
    with torch.no_grad():
        full, _ = policy.token_logps(enc.ids, enc.mask, completion, ones, vision=enc.vision)
        micro, _ = policy.token_logps(enc.ids, enc.mask, completion, ones, vision=enc.vision, micro_batch_size=2)
    torch.testing.assert_close(full, generated, atol=1e-5, rtol=0)
    torch.testing.assert_close(micro, full, atol=1e-6, rtol=0)
    if arch.startswith("qwen"):  # the text path's 1-D positions would be wrong for M-RoPE (VISION-NOTES pitfall (d))
        ids = torch.cat([enc.ids, completion], 1)
        att = torch.cat([enc.mask, ones], 1)
        one_d = (att.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = policy.model(input_ids=ids, attention_mask=att, position_ids=one_d, logits_to_keep=7,
                                  **forward_kwargs(policy.vision, ids, enc.vision)).logits[:, :-1].float()
        wrong = torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]
        assert (wrong - generated).abs().max() > 1e-4


def test_rows_of_a_group_share_one_processor_pass(vlm, monkeypatch):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    calls = []
    original = type(policy.processor).__call__
    monkeypatch.setattr(type(policy.processor), "__call__", lambda self, *a, **k: calls.append(1) or original(
        self, *a, **k))
    prompts, columns = _rows()
    batch = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=4)).generate(prompts, columns, num_generations=4)
    assert len(calls) == 3  # one pass per prompt, not per row
    assert len(batch.vision) == 12 and len({id(v) for v in batch.vision}) == 3
    assert all(batch.vision[i] is batch.vision[i - i % 4] for i in range(12))
    # select / concat keep the per-row vision inputs aligned with the rows
    part = batch.select([5, 0])
    assert part.vision[0] is batch.vision[5] and part.vision[1] is batch.vision[0]
    both = type(batch).concat([batch.select([0]), batch.select([11])])
    assert both.vision == [batch.vision[0], batch.vision[11]]


def test_image_placeholders_are_never_sampled(vlm):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=16, temperature=50.0))  # ~uniform sampling
    batch = engine.generate(["Click OK."], {"images": [[_image("red")]]}, num_generations=128)
    banned = torch.tensor(policy.vision.suppress_ids)
    assert not torch.isin(batch.completion_ids[batch.completion_mask.bool()], banned).any()
    # control: the same sampling without the suppression does draw them (8192 near-uniform draws over ~520 ids)
    enc = encode_prompts(policy.processor, ["Click OK."] * 128, [[_image("red")]] * 128, [None] * 128)
    out = policy.model.generate(input_ids=enc.ids, attention_mask=enc.mask, do_sample=True, temperature=50.0,
                                max_new_tokens=64, **forward_kwargs(policy.vision, enc.ids, enc.vision),
                                pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=None)
    if policy.vision.suppress_ids != [policy.vision.image_token_id] or "Llava" not in type(policy.model).__name__:
        assert torch.isin(out[:, enc.ids.shape[1]:], banned).any()
    # (transformers' LLaVA generate never proposes its only vision token, <image>, itself: 0 of 8192 draws here)


def test_lora_goes_on_the_language_model_and_its_reference_is_the_base(vlm):
    arch, path = vlm
    policy = Policy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8))
    tower = policy.vision.vision_modules[0].split(".")[-1]
    lora_names = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    assert not any(f".{tower}." in n for n in lora_names)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    prompts, columns = _rows()
    batch = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=5)).generate(prompts, columns, num_generations=2)
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_attention_mask)
    with torch.no_grad():
        ref = policy.ref_token_logps(*args, vision=batch.vision)
        trained, _ = policy.token_logps(*args, vision=batch.vision)
        base, _ = Policy.from_pretrained(path).token_logps(*args, vision=batch.vision)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(ref[mask], base[mask], atol=1e-5, rtol=0)
    assert (trained - base)[mask].abs().max() > 1e-3
    with_tower = Policy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8), vision=VisionSettings(train_tower=True))
    assert any(f".{tower}." in n for n, p in with_tower.model.named_parameters() if p.requires_grad)


def test_full_fine_tune_freezes_only_the_vision_tower(vlm):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    tower = policy.vision.vision_modules[0]
    frozen = {n for n, p in policy.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(tower + ".") for n in frozen)
    assert all(p.requires_grad for p in policy.model.get_submodule(tower).parameters()) is False
    assert sum(p.numel() for p in policy.trainable_parameters()) > 0
    unfrozen = Policy.from_pretrained(path, vision=VisionSettings(train_tower=True))
    assert all(p.requires_grad for p in unfrozen.model.parameters())


def test_images_load_from_pil_paths_and_bytes_alike(vlm, tmp_path):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    img = _image("red")
    img.save(tmp_path / "screen.png")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    forms = [img, str(tmp_path / "screen.png"), buffer.getvalue(), {"bytes": buffer.getvalue(), "path": None}]
    encoded = [encode_prompts(policy.processor, ["x"], [[f]], [None]).vision[0] for f in forms]
    for other in encoded[1:]:
        assert other.keys() == encoded[0].keys()
        for key in other:
            assert torch.equal(other[key], encoded[0][key]), key


def test_bad_image_rows_are_one_line_errors(vlm, tmp_path):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    two_items = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]}]
    with pytest.raises(VisionInputError, match=r"row 0: the prompt has 2 image item\(s\) but the row has 1"):
        encode_prompts(policy.processor, [two_items], [[_image("red")]], [None])
    with pytest.raises(VisionInputError, match=r"row 1: cannot read image .*missing.png"):
        encode_prompts(policy.processor, ["a", "b"], [None, str(tmp_path / "missing.png")], [None, None])
    with pytest.raises(VisionInputError, match="an image must be a PIL image, a file path or bytes, got int"):
        encode_prompts(policy.processor, ["a"], [[3]], [None])


def test_collate_pads_per_row_images_and_concatenates_per_image_tensors():
    a = {"pixel_values": torch.ones(1, 1, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 1, 4, 4)}
    b = {"pixel_values": torch.ones(1, 2, 3, 4, 6), "pixel_attention_mask": torch.ones(1, 2, 4, 6)}
    out = collate([a, b])
    assert out["pixel_values"].shape == (2, 2, 3, 4, 6)
    assert out["pixel_values"][0, 1].abs().sum() == 0  # a zero image is Idefics3's own padding
    assert out["pixel_attention_mask"][0, 0, :, 4:].sum() == 0 and out["pixel_attention_mask"][1].all()
    q1 = {"pixel_values": torch.zeros(48, 8), "image_grid_thw": torch.tensor([[1, 12, 16]])}
    q2 = {"pixel_values": torch.ones(16, 8), "image_grid_thw": torch.tensor([[1, 4, 4]])}
    out = collate([q1, q2, q1])
    assert out["pixel_values"].shape == (112, 8) and out["image_grid_thw"].tolist() == [[1, 12, 16], [1, 4, 4],
                                                                                         [1, 12, 16]]


def test_vllm_engine_sends_one_placeholder_per_image_and_its_logps_match(vlm, monkeypatch):
    from modules.rollout.vllm import VLLMEngine, VLLMSettings
    from modules.rollout.weights import merged_named_weights

    arch, path = vlm
    fake = fake_vllm.install(monkeypatch)
    policy = Policy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    engine = VLLMEngine(policy, SamplingSettings(max_new_tokens=5), VLLMSettings())
    prompts, columns = _rows()
    batch = engine.generate(prompts, columns, num_generations=2)
    (llm,) = fake.instances
    assert llm.kwargs["limit_mm_per_prompt"] == {"image": 8}
    # the policy's batch holds the processor-expanded prompt, exactly as the HF engine builds it
    hf = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=5)).generate(prompts, columns, num_generations=2)
    assert torch.equal(batch.prompt_ids, hf.prompt_ids) and len({id(v) for v in batch.vision}) == 3
    banned = torch.tensor(policy.vision.suppress_ids)
    assert not torch.isin(batch.completion_ids[batch.completion_mask.bool()], banned).any()
    with torch.no_grad():
        logps, _ = policy.token_logps(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_attention_mask, vision=batch.vision)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(batch.rollout_logps[mask], logps[mask], atol=1e-4, rtol=1e-4)
    # the pushed names are the plain model's (no peft prefix, no lora / base_layer): vLLM's Qwen2-VL loader maps
    # transformers' names with its hf_to_vllm_mapper ("model.language_model." -> "language_model.model.",
    # "model.visual." -> "visual.", "lm_head." -> "language_model.lm_head."); a peft name breaks it (TRL #6028)
    pushed = {name for name, _ in merged_named_weights(policy.model)}
    plain = {name for name, _ in Policy.from_pretrained(path).model.named_parameters()}
    assert pushed == plain
    if arch.startswith("qwen"):
        assert all(n.startswith(("model.language_model.", "model.visual.", "lm_head.")) for n in pushed)


def test_qlora_vlm_trains_on_cpu(vlm):
    pytest.importorskip("bitsandbytes")
    _, path = vlm
    policy = Policy.from_pretrained(path, lora=LoraSettings(r=4, alpha=8), quantization="4bit")
    prompts, columns = _rows()
    batch = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=4)).generate(prompts, columns, num_generations=2)
    logps, _ = policy.token_logps(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                  batch.completion_attention_mask, vision=batch.vision)
    (logps * batch.completion_mask).sum().backward()
    grads = [p.grad for n, p in policy.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_text_only_rows_mix_with_image_rows(vlm):
    _, path = vlm
    policy = Policy.from_pretrained(path)
    batch = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=4)).generate(
        ["Click OK.", "Hi there", "Colour?"], {"images": [[_image("red")], None, [_image("blue")]]},
        num_generations=2)
    assert batch.vision[2] == {}  # the text row carries no vision tensors
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_attention_mask)
    with torch.no_grad():
        full, _ = policy.token_logps(*args, vision=batch.vision)
        one, _ = policy.token_logps(*args, vision=batch.vision, micro_batch_size=1)  # text-only micro-batches too
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(one[mask], full[mask], atol=1e-5, rtol=0)


def test_sft_on_images_matches_the_rl_scoring_forward(vlm):
    """The SFT loss of image rows (right-padded, one forward) equals the response NLL that the RL side's scoring
    forward (left-padded prompts, `token_logps`) gives: both see the same images at the same positions."""
    from recipes.sft import SFT

    _, path = vlm
    sft = SFT(path)
    rows = [{"prompt": "Click OK.", "images": [_image("red")], "response": "[12, 34, 56, 78]"},
            {"prompt": "Colour?", "images": [_image("blue"), _image("green", (112, 112))], "response": "blue"}]
    batch = sft.encode(rows)
    assert len(batch["vision"]) == 2
    with torch.no_grad():
        loss, tokens, _ = sft.forward_loss(batch, reduction="sum")
        enc = encode_prompts(sft.policy.processor, [r["prompt"] for r in rows], [r["images"] for r in rows],
                             [None, None])
        responses = [sft.policy.tokenizer(r["response"], add_special_tokens=False)["input_ids"]
                     + [sft.policy.tokenizer.eos_token_id] for r in rows]
        width = max(map(len, responses))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in responses])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
        logps, _ = sft.policy.token_logps(enc.ids, enc.mask, ids, mask, vision=enc.vision)
    assert tokens == int(mask.sum())
    torch.testing.assert_close(loss, -(logps * mask).sum(), atol=1e-4, rtol=1e-5)


def test_max_pixels_bounds_the_image_tokens(tmp_path_factory):
    path = str(build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "q", architecture="qwen2_vl"))
    small = Policy.from_pretrained(path, vision=VisionSettings(max_pixels=28 * 28 * 16))
    enc = encode_prompts(small.processor, ["x"], [[_image("red", (448, 448))]], [None])
    assert int((enc.ids == small.vision.image_token_id).sum()) == 16  # 448x448 -> 4 x 4 merged blocks
    default = Policy.from_pretrained(path)
    enc = encode_prompts(default.processor, ["x"], [[_image("red", (448, 448))]], [None])
    assert int((enc.ids == default.vision.image_token_id).sum()) == 64  # the tiny processor's own bound
    with pytest.raises(Exception, match="model.vision.max_pixels=3136: the .* has no pixel-area bound"):
        Policy.from_pretrained(str(build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "i", architecture="idefics3")),
                               vision=VisionSettings(max_pixels=3136))
