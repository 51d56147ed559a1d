"""A vision-language model with a real language model and no downloads: the packaged SmolLM2-135M-Instruct inside
transformers' Idefics3 architecture (SmolVLM's: a SigLIP-style tower, a pixel-shuffle connector, the LM), with a
**random, untrained** vision tower and connector (VISION-NOTES §1: no pretrained VLM or vision encoder is packaged).

The language model answers as SmolLM2 does; the image tokens carry no information until the tower and connector are
trained (`benchmarks/vlm_real_model.py` measures a short alignment stage). Built once into the cache (~30 s,
~560 MB); the alias is `smolvlm2-135m-untrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from modules.models.cache import cached_build, default_cache_dir
from modules.models.loading import quiet_progress
from modules.models.smollm2 import packaged_smollm2_path

_FORMAT = 2
IMAGE_SIZE, PATCH, SCALE = 384, 16, 4  # 24x24 patches, pixel shuffle 4 -> 36 image tokens per image
STAMP_NAME = "r1_smolvlm.json"
VISION_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_smolvlm(path: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Build (or reuse) the assembled SmolLM2 + random SigLIP-style tower Idefics3 model at `path` (default: the
    cache's `smolvlm2-135m-untrained`)."""
    target = Path(path) if path is not None else default_cache_dir() / "smolvlm2-135m-untrained"
    stamp = {"builder": "build_smolvlm", "format": _FORMAT, "seed": seed, "image_size": IMAGE_SIZE}
    return cached_build(target, stamp, lambda out: _build(out, seed=seed), stamp_name=STAMP_NAME)


def _build(out: Path, *, seed: int) -> None:
    import torch
    from transformers import (AutoTokenizer, GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3Processor, LlamaForCausalLM)

    from modules.vision import idefics3_image_processor

    smol = packaged_smollm2_path()
    tok = AutoTokenizer.from_pretrained(smol)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS + [f"<row_{i}_col_{j}>" for i in range(1, 7)
                                                                          for j in range(1, 7)]})
    tok.chat_template = TEMPLATE  # one <image> per image item (SmolLM2's own template takes text content only)
    image_processor = idefics3_image_processor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                               max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor, tok, image_seq_len=(IMAGE_SIZE // PATCH) ** 2 // SCALE ** 2,
                                  chat_template=TEMPLATE)
    with open(smol / "config.json") as f:
        text = {k: v for k, v in json.load(f).items()
                if k not in ("architectures", "transformers_version", "_model_name_or_path", "dtype", "torch_dtype")}
    text["vocab_size"] = len(tok)
    config = Idefics3Config(text_config=text, scale_factor=SCALE, image_token_id=processor.image_token_id,
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                            vision_config=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                                               num_attention_heads=3, image_size=IMAGE_SIZE, patch_size=PATCH))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    with quiet_progress():
        weights = LlamaForCausalLM.from_pretrained(smol, dtype=torch.float32).model.state_dict()
    embeddings = weights.pop("embed_tokens.weight")
    missing, unexpected = model.model.text_model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise RuntimeError(f"assembling SmolVLM: unexpected {unexpected[:3]}, missing {sorted(missing)[:3]}")
    with torch.no_grad():  # the 40 new vision tokens start at the mean embedding
        table = model.model.text_model.embed_tokens.weight
        table[: len(embeddings)] = embeddings
        table[len(embeddings):] = embeddings.mean(0)
    model.tie_weights()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with quiet_progress():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    tok.save_pretrained(out)


__all__ = ["build_smolvlm"]
