"""Tiny random vision-language models (Qwen2-VL, Qwen2.5-VL, Idefics3, LLaVA) with a locally trained tokenizer and a real
processor, for tests and smoke runs: saved and reloaded through `AutoModelForImageTextToText` and
`modules.vision.load_processor`, the path a real checkpoint takes.

Three architectures, because they differ where the core must get things right (VISION-NOTES §2):
- **Qwen2-VL / Qwen2.5-VL**: flattened patches (`pixel_values` (sum of t*h*w, 1176) + `image_grid_thw`), 3-D M-RoPE
  positions, `mm_token_type_ids`; the processor has a video part that cannot load without torchvision, so an
  image-only subclass (`modules.vision.ImageOnlyQwen2VLProcessor`) is saved.
- **Idefics3** (SmolVLM's architecture): per-row `pixel_values` (B, images, 3, H, W) + `pixel_attention_mask`,
  ordinary 1-D RoPE, a pixel-shuffle connector; loads with `AutoProcessor` as is.
- **LLaVA** (a CLIP tower + Llama): stacked images (images, 3, H, W), a projector, 1-D RoPE.

Token conventions follow the text `tiny-qwen2`: ChatML, `<|im_end|>` is eos and pad, the reasoning tags are single
tokens. Images are small (Qwen: at most 64 merged tokens; Idefics3: 16 tokens of a 64x64 tower input) so a CPU test
step stays well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from modules.models.cache import cached_build
from modules.models.loading import quiet_progress
from modules.models.tiny import EOS, STAMP_NAME, build_tokenizer

_FORMAT = 2  # bump when a build below changes, so cached builds are redone
ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl", "idefics3", "llava")

QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
IDEFICS3_VISION_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>")
LLAVA_VISION_TOKENS = ("<image>",)

# One placeholder per `{"type": "image"}` item (the processor expands it); `content` may be a string or a list.
_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}__IMAGE__{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN_TEMPLATE = _TEMPLATE.replace("__IMAGE__", "<|vision_start|><|image_pad|><|vision_end|>")
IDEFICS3_TEMPLATE = LLAVA_TEMPLATE = _TEMPLATE.replace("__IMAGE__", "<image>")

_VISION_CORPUS = [
    "Grounding instruction is: click the UI element OK. Report the bbox coordinates in JSON format.",
    '```json\n[{"bbox_2d": [12, 34, 56, 78]}]\n```',
    "What is to the left of the red circle? <think> The red circle is at yaw 30. </think> <answer> blue square </answer>",
    "What colour is the triangle? green yellow purple orange white black circle square triangle behind front",
]


def build_tiny_vlm(path: str | os.PathLike, *, architecture: str = "qwen2_vl", hidden_size: int = 64,
                   num_layers: int = 2, vocab_size: int = 512, corpus: Sequence[str] | None = None,
                   seed: int = 0) -> Path:
    """Build (or reuse) a random VLM of `architecture` (qwen2_vl, qwen2_5_vl, idefics3) + processor at `path`.

    The text model has `hidden_size`, `num_layers`, 4 heads (2 KV heads); the tokenizer has `vocab_size` ids plus
    the architecture's vision tokens. A build with the same arguments already at `path` is returned as is.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"build_tiny_vlm: architecture={architecture!r}; use one of {ARCHITECTURES}")
    if hidden_size % 8:
        raise ValueError(f"build_tiny_vlm: hidden_size={hidden_size} must be a multiple of 8 (4 heads, M-RoPE)")
    corpus = [*_VISION_CORPUS, *(corpus or [])]
    args = dict(architecture=architecture, hidden_size=hidden_size, num_layers=num_layers, vocab_size=vocab_size,
                seed=seed)
    stamp = {"builder": "build_tiny_vlm", "format": _FORMAT, **args,
             "corpus_sha256": hashlib.sha256(json.dumps(corpus).encode()).hexdigest()[:16]}
    return cached_build(path, stamp, lambda out: _build(out, corpus=corpus, **args), stamp_name=STAMP_NAME)


def _text_config(tok, hidden_size: int, num_layers: int, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids(EOS),
                pad_token_id=tok.pad_token_id, **extra)


def _build(out: Path, *, corpus: list[str], architecture: str, hidden_size: int, num_layers: int, vocab_size: int,
           seed: int) -> None:
    import torch
    from transformers import GenerationConfig

    tok = build_tokenizer(vocab_size, corpus)
    torch.manual_seed(seed)
    if architecture in ("qwen2_vl", "qwen2_5_vl"):
        model, processor = _qwen(tok, architecture, hidden_size, num_layers)
    elif architecture == "idefics3":
        model, processor = _idefics3(tok, hidden_size, num_layers)
    else:
        model, processor = _llava(tok, hidden_size, num_layers)
    eos = tok.convert_tokens_to_ids(EOS)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    with quiet_progress():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    tok.save_pretrained(out)  # AutoTokenizer alone (rewards, verifiers) loads the same tokenizer


def _qwen(tok, architecture: str, hidden_size: int, num_layers: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, \
        Qwen2VLForConditionalGeneration

    from modules.vision import ImageOnlyQwen2VLProcessor, qwen_image_processor

    tok.add_special_tokens({"additional_special_tokens": list(QWEN_VISION_TOKENS)})
    tok.chat_template = QWEN_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VISION_TOKENS}
    head = hidden_size // 4
    section = [head // 8, head * 3 // 16, head // 2 - head // 8 - head * 3 // 16]  # t, h, w halves of the head
    text = _text_config(tok, hidden_size, num_layers,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": section})
    common = dict(text_config=text, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  tie_word_embeddings=True)
    if architecture == "qwen2_vl":
        config = Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=2,
                                                  mlp_ratio=2), **common)
        model = Qwen2VLForConditionalGeneration(config)
    else:
        config = Qwen2_5_VLConfig(vision_config=dict(depth=2, hidden_size=32, intermediate_size=64,
                                                     out_hidden_size=hidden_size, num_heads=2, window_size=56,
                                                     fullatt_block_indexes=[1]), **common)
        model = Qwen2_5_VLForConditionalGeneration(config)
    processor = ImageOnlyQwen2VLProcessor(qwen_image_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
                                          tok, chat_template=QWEN_TEMPLATE)
    return model, processor


def _idefics3(tok, hidden_size: int, num_layers: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    from modules.vision import idefics3_image_processor

    tok.add_special_tokens({"additional_special_tokens": list(IDEFICS3_VISION_TOKENS)})
    tok.chat_template = IDEFICS3_TEMPLATE
    size, patch, scale = 64, 8, 2  # 8x8 patches, pixel shuffle 2 -> 16 image tokens per image
    image_processor = idefics3_image_processor(do_image_splitting=False, size={"longest_edge": size},
                                             max_image_size={"longest_edge": size})
    processor = Idefics3Processor(image_processor, tok, image_seq_len=(size // patch) ** 2 // scale ** 2,
                                  chat_template=IDEFICS3_TEMPLATE)
    text = _text_config(tok, hidden_size, num_layers, model_type="llama", tie_word_embeddings=True)
    config = Idefics3Config(text_config=text, scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"),
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=size, patch_size=patch))
    return Idefics3ForConditionalGeneration(config), processor


def _llava(tok, hidden_size: int, num_layers: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from modules.vision import image_processor

    tok.add_special_tokens({"additional_special_tokens": list(LLAVA_VISION_TOKENS)})
    tok.chat_template = LLAVA_TEMPLATE
    size, patch = 64, 16  # 4x4 patches -> 16 image tokens (the CLS feature is dropped: strategy "default")
    processor = LlavaProcessor(image_processor=image_processor("CLIPImageProcessor", size={"shortest_edge": size},
                                                               crop_size={"height": size, "width": size}),
                               tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token="<image>", chat_template=LLAVA_TEMPLATE)
    text = _text_config(tok, hidden_size, num_layers, model_type="llama", tie_word_embeddings=True)
    config = LlavaConfig(text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=True,
                         vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, image_size=size,
                                            patch_size=patch, projection_dim=32))
    return LlavaForConditionalGeneration(config), processor


__all__ = ["ARCHITECTURES", "build_tiny_vlm"]
