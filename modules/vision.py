"""Images in the shared parts: processors, prompt rendering with image placeholders, and the processed vision inputs
that travel with a `RolloutBatch`.

The flow (VISION-NOTES §2, §4 and pitfalls (a)-(i)):
1. A prompt row carries `images` (PIL images, file paths, raw bytes, or `{"bytes"|"path": ...}` as `datasets`
   stores them). `chat_messages` puts one `{"type": "image"}` item per image into the user turn; the processor's
   chat template renders one placeholder per item and the processor expands it to the image's token count.
2. Each prompt is processed **once** (`encode_prompts`): its vision tensors (`pixel_values`, `image_grid_thw`,
   `pixel_attention_mask`, ...) are kept as one dict per prompt, and the G rows of a group hold the same dict
   object. Generation and every scoring micro-batch collate those dicts (`collate`); the image processor never
   runs again, and nothing is copied G times until a forward needs it.
3. Per-token type ids (`mm_token_type_ids` for Qwen-VL in transformers 5, `token_type_ids` for Gemma-3) are rebuilt
   from the token ids of each forward (prompt + completion), so they always match the sequence they describe.
4. Sampling suppresses the vision special tokens: a sampled `<|image_pad|>` would make the scoring forward fail
   with "image features and image tokens do not match" (R1-V #91, veRL #3469).

Architectures differ in the layout of `pixel_values`: Qwen-VL concatenates the flattened patches of all images,
LLaVA stacks images, Idefics3 keeps (rows, images, 3, H, W) with a `pixel_attention_mask`. `collate` concatenates
per-image tensors and pads per-row ones (zero images are what Idefics3 itself treats as padding).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modules.settings import SettingsError, check_number

TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
"""Per-token keys a processor may return; rebuilt from the ids for each forward (`forward_kwargs`)."""
_ROW_BATCHED = {"pixel_attention_mask"}  # per-row tensors (rows first) besides a 5-D pixel_values
_VISION_TOKEN_NAMES = ("image_token", "video_token", "vision_start_token", "vision_end_token", "boi_token",
                       "eoi_token", "fake_image_token", "global_image_token")


@dataclass(frozen=True)
class VisionSettings:
    """Vision-language models only (`model.vision.*`): what trains and how large images are."""

    train_tower: bool = False
    """Train the vision tower too: with LoRA, adapters also go on its linear layers; in a full fine-tune its weights
    are unfrozen. By default only the language model (and, in a full fine-tune, the connector) trains."""
    max_pixels: int | None = None
    """Qwen-VL processors: largest image area in pixels after resizing (null = the processor's own; GUI-G1 trains
    with 2359296). Each 28x28 block is one image token, so this bounds the prompt length."""
    min_pixels: int | None = None
    """Qwen-VL processors: smallest image area in pixels after resizing (null = the processor's own)."""

    def __post_init__(self) -> None:
        for name in ("max_pixels", "min_pixels"):
            value = getattr(self, name)
            if value is not None:
                check_number(f"model.vision.{name}", value, low=28 * 28, integer=True,
                             fix="at least one 28x28 block; null keeps the processor's value")
        if self.max_pixels is not None and self.min_pixels is not None and self.min_pixels > self.max_pixels:
            raise SettingsError(f"model.vision.min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}; "
                                "lower min_pixels or raise max_pixels")


@dataclass
class VisionSpec:
    """What the core needs to know about a loaded VLM."""

    image_token_id: int
    suppress_ids: list[int]  # vision special tokens the policy must never sample
    mrope: bool  # Qwen-style 3-D positions: the model computes them (never pass 1-D position ids)
    token_type_key: str | None = None  # per-token type ids the model's forward needs, rebuilt per forward
    video_token_id: int | None = None
    vision_modules: list[str] = field(default_factory=list)  # module-name prefixes of the vision tower


class VisionInputError(ValueError):
    """A prompt row's images or image placeholders are unusable; the message names the row and the fix."""


# ---------------------------------------------------------------------------------------------------- processors
def image_processor(name: str, **kwargs):
    """transformers' image processor class `name` (e.g. Qwen2VLImageProcessor): the torchvision-backed class when
    torchvision imports, else its PIL twin (`<name>Pil`): torchvision wheels built for CUDA break a CPU torch
    (VISION-NOTES pitfall (a)), and asking for the torchvision class without it only warns and falls back."""
    import transformers
    from transformers.utils import is_torchvision_available

    cls = getattr(transformers, name, None)
    if not is_torchvision_available():
        cls = getattr(transformers, f"{name}Pil", None) or cls
    if cls is None:
        raise ImportError(f"transformers has no {name}; upgrade transformers")
    return cls(**kwargs)


def qwen_image_processor(**kwargs):
    """Qwen2-VL's image processor (`image_processor`)."""
    return image_processor("Qwen2VLImageProcessor", **kwargs)


def idefics3_image_processor(**kwargs):
    """Idefics3's (SmolVLM's) image processor (`image_processor`)."""
    return image_processor("Idefics3ImageProcessor", **kwargs)


def _image_only_processor():
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor without its video part: `Qwen2VLProcessor` cannot be built or loaded without
        torchvision (VISION-NOTES pitfall (a)), and image recipes never need video. Sub-processors are read from
        `__init__`'s signature, so leaving `video_processor` out of it drops the video processor."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    ImageOnlyQwen2VLProcessor.__module__ = __name__
    return ImageOnlyQwen2VLProcessor


def __getattr__(name: str):  # transformers is imported only when the class is needed
    if name == "ImageOnlyQwen2VLProcessor":
        cls = _image_only_processor()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def is_vision_config(config) -> bool:  # noqa: ANN001
    """True for a vision-language model config (it has a vision tower config)."""
    return getattr(config, "vision_config", None) is not None


def load_processor(path: str, *, settings: VisionSettings | None = None, trust_remote_code: bool = False):
    """The processor of the VLM at `path`: `AutoProcessor`, or the image-only Qwen-VL processor where AutoProcessor
    cannot load the video part (no torchvision) or silently returns a bare tokenizer."""
    from transformers import AutoProcessor

    processor, error = None, None
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError, OSError, AttributeError, TypeError) as err:  # the video part needs torchvision
        error = err
    if processor is None or not hasattr(processor, "image_processor"):
        try:
            processor = _image_only_processor().from_pretrained(path)
        except Exception as err:  # noqa: BLE001 - report the first failure, which names the real cause
            raise VisionInputError(f"cannot load an image processor from {path!r}: {error or err}") from err
    if settings is not None:
        for name in ("max_pixels", "min_pixels"):
            if getattr(settings, name) is not None:
                set_pixel_bound(processor.image_processor, name, int(getattr(settings, name)))
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


def set_pixel_bound(ip, name: str, value: int) -> None:  # noqa: ANN001
    """Set a Qwen-VL image processor's `max_pixels` / `min_pixels` (the image area after resizing). transformers 5
    keeps them in `size` as longest_edge / shortest_edge (areas, not sides); older versions as attributes."""
    if not hasattr(ip, "temporal_patch_size"):  # not the Qwen-VL family: its `size` edges are sides, not areas
        raise SettingsError(f"model.vision.{name}={value}: the {type(ip).__name__} of this model has no pixel-area "
                            f"bound; leave it null (it applies to Qwen-VL image processors)")
    if hasattr(ip, name):
        setattr(ip, name, value)
    edge = "longest_edge" if name == "max_pixels" else "shortest_edge"
    size = ip.size
    if isinstance(size, dict):
        ip.size = {**size, edge: value}
    else:  # transformers' SizeDict (a dataclass)
        import dataclasses

        ip.size = dataclasses.replace(size, **{edge: value})


def vision_spec(model, processor) -> VisionSpec:  # noqa: ANN001
    """The `VisionSpec` of a loaded VLM (plain or peft-wrapped: module names are the plain model's) and its
    processor."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    config = model.config
    tok = processor.tokenizer
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    if image_id is None:
        image_id = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    video_id = getattr(config, "video_token_id", None)
    suppress = {int(image_id)} | ({int(video_id)} if video_id is not None else set())
    for name in _VISION_TOKEN_NAMES:
        token = getattr(processor, name, None)
        if isinstance(token, str):
            tid = tok.convert_tokens_to_ids(token)
            if tid is not None and tid != tok.unk_token_id:
                suppress.add(int(tid))
    for name in ("vision_start_token_id", "vision_end_token_id", "boi_token_id", "eoi_token_id"):
        if getattr(config, name, None) is not None:
            suppress.add(int(getattr(config, name)))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    mrope = isinstance(rope, dict) and "mrope_section" in rope
    import inspect

    params = inspect.signature(type(model).forward).parameters
    token_type = next((k for k in TOKEN_TYPE_KEYS if k in params), None)
    return VisionSpec(image_token_id=int(image_id), suppress_ids=sorted(suppress), mrope=mrope,
                      token_type_key=token_type, video_token_id=None if video_id is None else int(video_id),
                      vision_modules=vision_module_names(model))


def vision_module_names(model) -> list[str]:  # noqa: ANN001
    """Module names of the vision tower (e.g. `model.visual`, `model.vision_model`, `model.vision_tower`)."""
    names = []
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("visual", "vision_model", "vision_tower", "vision_encoder") and \
                not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------- prompts
def load_image(value: Any, *, row: int = 0):
    """A PIL RGB image from a PIL image, a file path, raw bytes or a `datasets` image dict."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, Path)):
            image = Image.open(Path(value).expanduser())
        else:
            raise VisionInputError(f"row {row}: an image must be a PIL image, a file path or bytes, got "
                                   f"{type(value).__name__}")
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        if isinstance(err, VisionInputError):
            raise
        raise VisionInputError(f"row {row}: cannot read image {str(value)[:80]!r} ({err}); check the `images` "
                               "column") from None


def row_images(value: Any, *, row: int = 0) -> list:
    """The `images` value of a row (one image or a list; None = none) as PIL RGB images."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [load_image(v, row=row) for v in values]


def _count_image_items(messages: list[dict]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for c in content if isinstance(c, dict) and c.get("type") == "image")
    return n


def chat_messages(prompt: Any, num_images: int, *, system_prompt: str | None = None, row: int = 0) -> list[dict]:
    """Chat messages with one `{"type": "image"}` item per image and list-of-items content everywhere.

    A text prompt becomes one user turn: the images, then the text. Chat messages keep their own image items, whose
    number must equal `num_images`; when they have none, the images go first in the first user turn.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]}]
    elif isinstance(prompt, list):
        messages = [{"role": m["role"], "content": ([{"type": "text", "text": m["content"]}]
                                                    if isinstance(m["content"], str) else list(m["content"]))}
                    for m in prompt]
        found = _count_image_items(messages)
        if found == 0 and num_images:
            user = next((m for m in messages if m["role"] == "user"), None)
            if user is None:
                raise VisionInputError(f"row {row}: the prompt has no user turn to put its {num_images} image(s) in")
            user["content"] = [{"type": "image"}] * num_images + user["content"]
        elif found != num_images:
            raise VisionInputError(f"row {row}: the prompt has {found} image item(s) but the row has {num_images} "
                                   "image(s) in `images`; give one {'type': 'image'} item per image")
    else:
        raise VisionInputError(f"row {row}: a prompt must be text or chat messages, got {type(prompt).__name__}")
    if system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages


@dataclass
class EncodedPrompts:
    """B prompts rendered and processed once each (`encode_prompts`)."""

    ids: Tensor  # (B, P) left-padded, image placeholders expanded by the processor (what the policy sees)
    mask: Tensor  # (B, P)
    vision: list[dict[str, Tensor]]  # per prompt: the processor's vision tensors
    texts: list[str]  # per prompt: the rendered text, one placeholder per image (what vLLM takes)
    images: list[list]  # per prompt: the PIL images


def encode_prompts(processor, prompts: list[Any], images: list[Any], system_prompts: list[str | None]
                   ) -> EncodedPrompts:  # noqa: ANN001
    """Render and process B prompts with their images (`images[b]`: one image, a list or None), once each."""
    tok = processor.tokenizer
    ids, vision, texts, pils = [], [], [], []
    for i, (prompt, imgs, system) in enumerate(zip(prompts, images, system_prompts)):
        pil = row_images(imgs, row=i)
        pils.append(pil)
        messages = chat_messages(prompt, len(pil), system_prompt=system, row=i)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out = processor(text=[text], images=pil or None, return_tensors="pt")
        row_ids = out["input_ids"][0]
        expected_tokens = int((row_ids == _image_token_id(processor)).sum())
        if pil and expected_tokens == 0:
            raise VisionInputError(f"row {i}: the chat template rendered no image placeholder for {len(pil)} "
                                   "image(s); the processor's chat_template must emit one per {'type': 'image'} item")
        ids.append(row_ids)
        vision.append({k: v for k, v in out.items()
                       if k not in ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS) and isinstance(v, Tensor)})
        texts.append(text)
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    prompt_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        prompt_ids[r, width - len(x):] = x
        prompt_mask[r, width - len(x):] = 1
    return EncodedPrompts(prompt_ids, prompt_mask, vision, texts, pils)


def _image_token_id(processor) -> int:  # noqa: ANN001
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tid = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    return int(tid)


# ---------------------------------------------------------------------------------------------------- forwards
def collate(rows: list[dict[str, Tensor]], device: torch.device | str | None = None) -> dict[str, Tensor]:
    """One forward's vision inputs from per-prompt dicts (one per row, repeats allowed), in row order.

    Per-image tensors (Qwen `pixel_values` / `image_grid_thw`, LLaVA images) are concatenated; per-row ones (a 5-D
    Idefics3 `pixel_values`, `pixel_attention_mask`) are zero-padded to the largest image count and size first.
    """
    keys = list(dict.fromkeys(k for r in rows for k in r))  # a text-only row (no images) has none of them
    out = {}
    for key in keys:
        present = [r[key] for r in rows if key in r]
        if _row_batched(key, present[0]):  # a row without images gets a zero-image entry (padding)
            empty = present[0].new_zeros((1, 0, *present[0].shape[2:]))
            value = torch.cat(_pad_common([r.get(key, empty) for r in rows], from_dim=1))
        else:
            value = torch.cat(present)
        out[key] = value if device is None else value.to(device)
    return out


def _row_batched(key: str, value: Tensor) -> bool:
    """Whether a vision tensor is laid out per row (Idefics3: rows, images, ...) rather than per image."""
    return key in _ROW_BATCHED or (key == "pixel_values" and value.dim() == 5)


def _pad_common(values: list[Tensor], *, from_dim: int) -> list[Tensor]:
    """`values` zero-padded at the end of every dim from `from_dim` on to their common largest size."""
    shape = [max(v.shape[d] for v in values) for d in range(from_dim, values[0].dim())]
    return [torch.nn.functional.pad(v, [p for d in reversed(range(from_dim, v.dim()))
                                        for p in (0, shape[d - from_dim] - v.shape[d])]) for v in values]


def forward_kwargs(spec: VisionSpec, input_ids: Tensor, vision: list[dict[str, Tensor]], *,
                   device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The vision keywords of a forward / generate over `input_ids` (n, L): collated vision tensors plus the
    per-token type ids the model needs, rebuilt from the ids (1 = image token, 2 = video token)."""
    kwargs = collate(vision, device)
    pixels = kwargs.get("pixel_values")
    if pixels is not None and pixels.dim() == 5 and pixels.shape[1] == 0:  # per-row layout, no row has an image
        kwargs = {}
    if spec.token_type_key is not None:
        types = (input_ids == spec.image_token_id).long()
        if spec.video_token_id is not None:
            types = types + 2 * (input_ids == spec.video_token_id).long()
        kwargs[spec.token_type_key] = types
    return kwargs


def image_placeholder(processor) -> str:  # noqa: ANN001
    """The text the chat template writes for one `{"type": "image"}` item (Qwen: `<|vision_start|><|image_pad|>
    <|vision_end|>`, Idefics3 / LLaVA: `<image>`), found by rendering a turn with and without one image."""
    def render(content: list) -> str:
        return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)

    with_image = render([{"type": "image"}, {"type": "text", "text": "x"}])
    without = render([{"type": "text", "text": "x"}])
    start = next(i for i, (a, b) in enumerate(zip(with_image, without)) if a != b)
    return with_image[start:len(with_image) - (len(without) - start)]


def encode_observation(processor, text: str, images: list) -> tuple[list[int], dict[str, Tensor]]:  # noqa: ANN001
    """(token ids, vision tensors) of an observation `text` holding one unexpanded placeholder per image: the
    processor expands the placeholders and processes the images (no special tokens added)."""
    out = processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
    vision = {k: v for k, v in out.items()
              if k not in ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS) and isinstance(v, Tensor)}
    return out["input_ids"][0].tolist(), vision


def append_images(vision: dict[str, Tensor], more: dict[str, Tensor]) -> dict[str, Tensor]:
    """One row's vision inputs followed by more images of the same row (a tool's observation), in order: per-image
    tensors are concatenated, per-row ones (Idefics3) joined along the image axis after padding to a common size."""
    out = dict(vision)
    for key, value in more.items():
        if key not in out:
            out[key] = value
            continue
        if _row_batched(key, value):  # join along the image axis
            out[key] = torch.cat(_pad_common([out[key], value], from_dim=2), dim=1)
        else:
            out[key] = torch.cat([out[key], value])
    return out


def sample_frames(frames: list, budget: int) -> list:
    """At most `budget` frames of a clip, evenly spaced, first and last kept (a video given as a list of images).

    >>> sample_frames(list(range(10)), 4)
    [0, 3, 6, 9]
    """
    if budget < 1:
        raise ValueError(f"frame budget {budget}; it must be >= 1")
    if len(frames) <= budget:
        return list(frames)
    if budget == 1:
        return [frames[0]]
    return [frames[round(i * (len(frames) - 1) / (budget - 1))] for i in range(budget)]


__all__ = ["TOKEN_TYPE_KEYS", "EncodedPrompts", "VisionInputError", "VisionSettings", "VisionSpec", "append_images",
           "chat_messages", "collate", "encode_observation", "encode_prompts", "forward_kwargs",
           "idefics3_image_processor", "image_placeholder", "image_processor", "is_vision_config", "load_image",
           "load_processor", "qwen_image_processor", "row_images", "sample_frames", "vision_module_names",
           "vision_spec"]
