r"""Pixel Reasoner's two visual operations as rollout tools (spec 2(a), 2(d)): zoom-in and select-frames.

A tool follows the multi-turn engine's contract ``tool(arguments: str, row: dict) -> str | Image | list[Image]``:
`arguments` is the JSON text of the call's arguments; `row` holds the dataset columns plus ``images_seen`` (every
PIL image of the rollout so far, in order: the prompt's images, then each image a tool returned) and ``frames``
(the row's video as PIL frames, None or absent when the row has none). A bad call raises `ValueError` whose
message names the argument, the value given and what is allowed; the engine shows it to the policy as an error
observation and counts it (``tool_errors``, ``last_tool_error``).

The model writes, in the json call format of `modules.rollout.tools` (the released prompt's own format)::

    <tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1}}</tool_call>
    <tool_call>{"name": "select_frames", "arguments": {"target_frames": [3, 4]}}</tool_call>

Indexing follows the released tool descriptions [repo ``experience_maker.py``]: ``target_image`` counts from 1
("Index from 1 to the number of images. Choose 1 to operate on original image.") over ``images_seen``, so image 2 is
the first image a tool returned; ``target_frames`` are frame numbers from 1 to the clip's length (1..16 there).

Where this differs from the released code, on purpose:

- coordinates must lie in [0, 1] (the repo reads any box with a coordinate >= 1 as absolute pixels and clamps
  the rest); a box outside [0, 1] is an error here;
- the repo pads the box by 0.1 on each side (`padding`, default 0.0 here: the crop is the box the model asked for);
- the repo rejects a crop of 28 px or less per side ("Crops must be >28 px per side", spec 2(d)) and lets the
  processor resize it (``smart_resize`` to at least 4 * 28 * 28 pixels in training); here a crop needs only
  `min_crop_px` (4) source pixels a side and is upsampled to `zoom_min_side` on its longer side, so a 6-px glyph
  in a small image can be zoomed into and the 28-px patch size is reached by the upsampling;
- select_frames allows `max_frames` frames (4 here for a tiny model; 8 in the repo) and rejects repeats (the repo
  does not check them).
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

from PIL import Image

ZOOM_MIN_SIDE = 224
"""Default least length in pixels of the zoomed image's longer side (8 patches of 28 px)."""
ZOOM_MAX_PIXELS = 448 * 448
"""Default largest area of the zoomed image: the upsampling never makes it larger (a crop that is already larger is
scaled down to this area). 448 x 448 = 256 patches of 28 x 28."""
MIN_CROP_PX = 4
"""Default least width and height of a crop, in source pixels."""
MAX_FRAMES = 4
"""Default most frames one select_frames call may take (the released prompt allows 8)."""

GUIDELINE = ("\n\nGuidelines: Understand the given visual information and the user query. Determine if it is "
             "beneficial to employ the given visual operations (tools). For a video, we can look closer by "
             "`select_frames`. For an image, we can look closer by `crop_image`. Reason with the visual information "
             "step by step, and put your final answer within \\boxed{}.")
"""The user-turn suffix of the released RL prompts ("vcot", spec 2(d)) [repo ``prompts_dataset.py``], verbatim."""


def tool_specs(*, max_frames: int = MAX_FRAMES, num_frames: int = 16) -> list[dict]:
    """The two tools as Qwen function-calling schemas (the released descriptions [repo], with our frame limit).

    >>> [spec["function"]["name"] for spec in tool_specs()]
    ['crop_image_normalized', 'select_frames']
    """
    return [
        {"type": "function", "function": {
            "name": "crop_image_normalized",
            "description": "Zoom in on the image based on the bounding box coordinates. It is useful when the object "
                           "or text in the image is too small to be seen.",
            "parameters": {"type": "object", "properties": {
                "bbox_2d": {"type": "array", "items": {"type": "number"},
                            "description": "coordinates for bounding box of the area you want to zoom in. Values "
                                           "should be within [0.0,1.0]."},
                "target_image": {"type": "number",
                                 "description": "The index of the image to crop. Index from 1 to the number of "
                                                "images. Choose 1 to operate on original image."}},
                "required": ["bbox_2d", "target_image"]}}},
        {"type": "function", "function": {
            "name": "select_frames",
            "description": "Select frames from a video.",
            "parameters": {"type": "object", "properties": {
                "target_frames": {"type": "array",
                                  "description": f"List of frame indices to select from the video (no more than "
                                                 f"{max_frames} frames in total).",
                                  "items": {"type": "integer", "description": f"Frame index from 1 to {num_frames}."}}},
                "required": ["target_frames"]}}},
    ]


def tool_system_prompt(*, max_frames: int = MAX_FRAMES, num_frames: int = 16) -> str:
    """The Qwen / Hermes function-calling system prompt listing both tools (the released prompt's layout [repo])."""
    listed = "\n".join(json.dumps(spec) for spec in tool_specs(max_frames=max_frames, num_frames=num_frames))
    return ("You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
            "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{listed}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call>")


# ---- argument checks ---------------------------------------------------------------------------------

def _load_arguments(tool: str, arguments: str, required: tuple[str, ...]) -> dict:
    """The call's arguments as a dict holding every `required` key, or ValueError naming what is wrong."""
    try:
        payload = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as err:
        raise ValueError(f"{tool}: arguments {arguments!r} are not valid JSON ({err.msg} at char {err.pos}); write "
                         f"an object such as {_EXAMPLES[tool]}") from None
    if not isinstance(payload, dict):  # the engine's contract: every bad call raises ValueError
        raise ValueError(  # noqa: TRY004
            f"{tool}: arguments must be a JSON object such as {_EXAMPLES[tool]}, got {arguments!r}")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"{tool}: missing argument {missing[0]!r}; give {', '.join(required)} as in "
                         f"{_EXAMPLES[tool]}")
    return payload


_EXAMPLES = {
    "crop_image_normalized": '{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1}',
    "select_frames": '{"target_frames": [3, 4]}',
}


def _whole_number(value: Any) -> int | None:
    """`value` as an int when it is a whole number (1 or 1.0, not True, not 1.5), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return int(value) if math.isfinite(value) and float(value).is_integer() else None


def _pixel_box(bbox: Any, width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """The pixel edges (left, top, right, bottom) covering the normalised `bbox`, or ValueError naming bbox_2d."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"crop_image_normalized: bbox_2d={bbox!r} must be a list of 4 numbers [x1, y1, x2, y2] "
                         "in [0, 1]")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise ValueError(f"crop_image_normalized: bbox_2d={list(bbox)!r} must hold 4 finite numbers [x1, y1, x2, "
                         "y2] in [0, 1]")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise ValueError(f"crop_image_normalized: bbox_2d={list(bbox)!r} has a coordinate outside [0, 1]; "
                         "coordinates are fractions of the image's width and height")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop_image_normalized: bbox_2d={list(bbox)!r} needs x1 < x2 and y1 < y2 "
                         "([left, top, right, bottom])")
    x1, y1, x2, y2 = max(0.0, x1 - padding), max(0.0, y1 - padding), min(1.0, x2 + padding), min(1.0, y2 + padding)
    # outward rounding: the crop holds every pixel the box touches
    return (math.floor(x1 * width), math.floor(y1 * height), min(width, math.ceil(x2 * width)),
            min(height, math.ceil(y2 * height)))


def zoom_size(width: int, height: int, *, zoom_min_side: int = ZOOM_MIN_SIDE,
              zoom_max_pixels: int = ZOOM_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) a `width` x `height` crop is resized to, aspect ratio kept (up to rounding).

    Scale s = max(1, zoom_min_side / longer side) (never shrink to reach the minimum), then, if the area
    s^2 * width * height exceeds `zoom_max_pixels`, s = sqrt(zoom_max_pixels / (width * height)). Sides are
    rounded down and at least 1.

    >>> zoom_size(8, 6), zoom_size(300, 100), zoom_size(4, 400), zoom_size(1000, 1000)
    ((224, 168), (300, 100), (4, 400), (448, 448))
    """
    scale = max(1.0, zoom_min_side / max(width, height))
    if scale * scale * width * height > zoom_max_pixels:
        scale = math.sqrt(zoom_max_pixels / (width * height))
    return max(1, int(width * scale + 1e-9)), max(1, int(height * scale + 1e-9))


# ---- the tools -----------------------------------------------------------------------------------------

def crop_image_normalized(arguments: str, row: dict, *, zoom_min_side: int = ZOOM_MIN_SIDE,
                          zoom_max_pixels: int = ZOOM_MAX_PIXELS, min_crop_px: int = MIN_CROP_PX,
                          padding: float = 0.0) -> Image.Image:
    """Zoom-in: crop ``images_seen[target_image - 1]`` to ``bbox_2d`` and upsample it (spec 2(a), 2(d)).

    Arguments (JSON): ``bbox_2d`` = [x1, y1, x2, y2], fractions of the image's width and height in [0, 1] with
    x1 < x2, y1 < y2; ``target_image`` = the image's number, **1-based** over ``row["images_seen"]`` (1 = the
    prompt's first image; whole-number floats such as 1.0 are accepted, the released schema types it "number").
    The crop covers every pixel the box touches (edges rounded outwards), after widening the box by `padding` on
    each side (clamped to the image; the repo uses 0.1). It is then resized with bicubic interpolation to
    `zoom_size` (longer side at least `zoom_min_side`, area at most `zoom_max_pixels`).

    ValueError (naming the argument) for: malformed JSON or a non-object, a missing argument, ``target_image`` not
    a whole number or outside 1..len(images_seen), ``bbox_2d`` not 4 finite numbers, a coordinate outside [0, 1],
    x2 <= x1 or y2 <= y1, and a crop narrower or shorter than `min_crop_px` source pixels.

    >>> img = Image.new("RGB", (100, 50))
    >>> crop_image_normalized('{"bbox_2d": [0, 0, 0.1, 0.2], "target_image": 1}', {"images_seen": [img]}).size
    (224, 224)
    """
    args = _load_arguments("crop_image_normalized", arguments, ("bbox_2d", "target_image"))
    images = row.get("images_seen") or []
    index = _whole_number(args["target_image"])
    if not images:
        raise ValueError(f"crop_image_normalized: target_image={args['target_image']!r} but this rollout has no "
                         "image to crop")
    if index is None or not 1 <= index <= len(images):
        raise ValueError(f"crop_image_normalized: target_image={args['target_image']!r} is out of range; images "
                         f"are numbered 1 to {len(images)} (1 = the original image)")
    image = images[index - 1]
    if not isinstance(image, Image.Image):
        raise TypeError(f"crop_image_normalized: image {index} of images_seen is a {type(image).__name__}, not a "
                        "PIL image (the engine must pass PIL images)")
    width, height = image.size
    left, top, right, bottom = _pixel_box(args["bbox_2d"], width, height, padding)
    if right - left < min_crop_px or bottom - top < min_crop_px:
        raise ValueError(f"crop_image_normalized: bbox_2d={list(args['bbox_2d'])!r} selects only {right - left} x "
                         f"{bottom - top} pixels of image {index} ({width} x {height}); a crop needs at least "
                         f"{min_crop_px} pixels on each side, so widen the box")
    crop = image.crop((left, top, right, bottom))
    size = zoom_size(crop.width, crop.height, zoom_min_side=zoom_min_side, zoom_max_pixels=zoom_max_pixels)
    return crop if size == crop.size else crop.resize(size, Image.Resampling.BICUBIC)


def select_frames(arguments: str, row: dict, *, max_frames: int = MAX_FRAMES) -> list[Image.Image]:
    """Select-frames: the frames ``row["frames"][i - 1]`` for i in ``target_frames``, in the order asked.

    Arguments (JSON): ``target_frames`` = a non-empty list of distinct frame numbers, **1-based** (1..number of
    frames, 1..16 in the paper), at most `max_frames` of them (the released prompt allows 8).

    ValueError (naming target_frames) for: malformed JSON, a missing argument, a row without frames (an image
    question: use crop_image_normalized), a value that is not a list, an empty list, more than `max_frames`
    numbers, a non-integer, a number outside 1..len(frames), a repeated number.

    >>> frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(5)]
    >>> [f.getpixel((0, 0))[0] for f in select_frames('{"target_frames": [4, 2]}', {"frames": frames})]
    [3, 1]
    """
    args = _load_arguments("select_frames", arguments, ("target_frames",))
    frames = row.get("frames") or []
    target = args["target_frames"]
    if not frames:
        raise ValueError(f"select_frames: target_frames={target!r} but this question has no video frames; use "
                         "crop_image_normalized to look closer at an image")
    if not isinstance(target, list):
        raise ValueError(  # noqa: TRY004
            f"select_frames: target_frames={target!r} must be a list of frame numbers such as [3, 4]")
    if not target:
        raise ValueError(f"select_frames: target_frames=[] is empty; give 1 to {max_frames} frame numbers from 1 to "
                         f"{len(frames)}")
    if len(target) > max_frames:
        raise ValueError(f"select_frames: target_frames={target!r} selects {len(target)} frames; select at most "
                         f"{max_frames}")
    picked = [_whole_number(v) for v in target]
    for value, number in zip(target, picked):
        if number is None:
            raise ValueError(f"select_frames: target_frames={target!r} holds {value!r}; frame numbers are integers "
                             f"from 1 to {len(frames)}")
        if not 1 <= number <= len(frames):
            raise ValueError(f"select_frames: target_frames={target!r} holds {number}, out of range; frames are "
                             f"numbered 1 to {len(frames)}")
    if len(set(picked)) != len(picked):
        repeated = next(n for n in picked if picked.count(n) > 1)
        raise ValueError(f"select_frames: target_frames={target!r} repeats frame {repeated}; list each frame once")
    return [frames[n - 1] for n in picked]


TOOLS = {"crop_image_normalized": crop_image_normalized, "select_frames": select_frames}
"""The paper's tools by the names the model calls them (the rollout engine's ``tools`` mapping)."""
