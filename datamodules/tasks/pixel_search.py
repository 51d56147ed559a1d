r"""Synthetic pixel-search questions (Pixel Reasoner's CPU substitute, spec 2(e)): `make_pixel_search`, and the
warm-start traces `tool_use_traces`.

Two kinds of rows, each answered by one character (a digit or capital letter from `CHARSET`, which leaves out
look-alikes such as 0/O, 1/I, 5/S, 8/B) drawn in PIL's built-in bitmap font (no font files):

- ``zoom``: a `size` x `size` image (a multiple of 28) of a noisy light background, `clutter` muted shapes and
  `decoys` grey characters, with ONE small red box holding the answer glyph in near-black ink. The glyph is 6-7 px
  tall, under a quarter of one 28-px patch, so a small VLM sees a red speck at the image's resolution; zooming in
  (``crop_image_normalized`` upsamples a crop to >= 224 px) makes it about 8x larger.
- ``video``: `frames` frames of `frame_size` px (a clip) in which a blue dot moves and bounces; exactly one frame
  (``answer_frame``) also shows a red-outlined box with the answer glyph drawn 2x (about 13 px tall: readable at
  the frame's size). The row's image is a **contact sheet**: every frame shrunk to `thumb` px, in reading order
  (4 x 4 cells of 28 px = 112 x 112 for 16 frames). The sheet shows *which* frame carries a box (a red smudge)
  but not the character (about 3 px tall there), so the answer needs ``select_frames``. A contact sheet rather
  than the first frame: the model can localise before it zooms, as with the zoom rows' red box.

Ink: the answer glyph is the only thing drawn with every channel <= `INK_MAX` (20); backgrounds, clutter,
decoys, the dot and the box outlines keep at least one channel >= 60 (tests check the glyph with this).

Every row has the same keys (columns are read from the first row of a batch): ``question``, ``answer``,
``images`` ([one PIL RGB image]), ``kind``, ``target_bbox`` (zoom: the glyph's ink box ``[x1, y1, x2, y2]``
as fractions of the image side, pixel edges; video: None), ``frames`` (video: the PIL frames; zoom: None) and
``answer_frame`` (video: the 0-based index into ``frames`` of the frame with the glyph, i.e. frame number
``answer_frame + 1`` for ``select_frames``; zoom: None). Rows alternate over `kinds`; deterministic given `seed`
(and the first k rows do not depend on `n`).
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from datamodules.errors import DataConfigError
from datamodules.tasks.gui_screens import bitmap_font as _font
from modules.papers.pixel_reasoner.tools import (
    GUIDELINE,
    MAX_FRAMES,
    TOOLS,
    tool_system_prompt,
)

KINDS = ("zoom", "video")
CHARSET = "234679ACEFHKLMNPRTUVXY"
"""Answer characters: digits and capitals whose 6 x 11 bitmap glyphs have no look-alike in the set."""
INK_MAX = 20
"""Largest channel value of the answer glyph's ink; nothing else in an image is that dark on all channels."""
RED = (225, 25, 25)
DOT = (30, 90, 225)

ZOOM_QUESTION = ("Which character (a digit or a capital letter) is written inside the small red box in the image? "
                 "Put the character in \\boxed{}.")
VIDEO_QUESTION = ("The image is a contact sheet of a {frames}-frame video clip: frames 1 to {frames} in reading order "
                  "(left to right, top to bottom). In one frame a character (a digit or a capital letter) appears "
                  "in a small box. Which character is it? Put the character in \\boxed{{}}.")



def glyph_mask(char: str, scale: int = 1) -> Image.Image:
    """The ink of `char` as a tight "L" mask (255 = ink), `scale` times larger (nearest neighbour).

    >>> glyph_mask("A").size, glyph_mask("7", 2).size
    ((6, 6), (10, 14))
    """
    canvas = Image.new("L", (8, 12), 0)
    ImageDraw.Draw(canvas).text((0, 0), char, fill=255, font=_font())
    mask = canvas.crop(canvas.getbbox())
    return mask if scale == 1 else mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)


def _muted(rng: random.Random) -> tuple[int, int, int]:
    """A clutter colour: every channel in 80..200, never red-dominant (only the target box is red)."""
    r, g, b = (rng.randint(80, 200) for _ in range(3))
    return min(r, max(g, b) + 30), g, b


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _glyph_box(draw: ImageDraw.ImageDraw, image: Image.Image, mask: Image.Image, x: int, y: int, pad: int,
               ink: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Draw a white box with a red outline and the glyph inside, its ink's top-left at (x, y); the ink box."""
    draw.rectangle([x - pad - 1, y - pad - 1, x + mask.width + pad, y + mask.height + pad], fill=(255, 255, 255),
                   outline=RED)
    image.paste(ink, (x, y, x + mask.width, y + mask.height), mask)
    return x, y, x + mask.width, y + mask.height


def _zoom_row(rng: random.Random, size: int, clutter: int, decoys: int, guideline: bool) -> dict:
    noise = np.random.default_rng(rng.getrandbits(63))
    base = np.array([rng.randint(195, 235) for _ in range(3)], dtype=np.int16)
    pixels = np.clip(base + noise.integers(-25, 26, size=(size, size, 3)), 150, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    answer = rng.choice(CHARSET)
    mask = glyph_mask(answer)
    pad = 2
    margin = pad + 3
    gx = rng.randint(margin, size - margin - mask.width)
    gy = rng.randint(margin, size - margin - mask.height)
    zone = (gx - margin, gy - margin, gx + mask.width + margin, gy + mask.height + margin)
    for _ in range(clutter):
        x, y = rng.randrange(size), rng.randrange(size)
        w, h = rng.randint(6, size // 4), rng.randint(6, size // 4)
        shape, color = rng.choice(("line", "rect", "ellipse", "fill")), _muted(rng)
        if shape == "line":
            draw.line([x, y, x + rng.randint(-w, w), y + rng.randint(-h, h)], fill=color, width=rng.randint(1, 2))
        elif shape == "rect":
            draw.rectangle([x, y, x + w, y + h], outline=color)
        elif shape == "ellipse":
            draw.ellipse([x, y, x + w, y + h], outline=color)
        else:
            draw.rectangle([x, y, x + w // 3, y + h // 3], fill=color)
    for _ in range(decoys):
        decoy = glyph_mask(rng.choice(CHARSET))
        for _ in range(20):
            x, y = rng.randint(0, size - decoy.width), rng.randint(0, size - decoy.height)
            if not _overlaps((x, y, x + decoy.width, y + decoy.height), zone, 4):
                image.paste((rng.randint(90, 140),) * 3, (x, y, x + decoy.width, y + decoy.height), decoy)
                break
    ink = tuple(rng.randint(0, INK_MAX) for _ in range(3))
    x1, y1, x2, y2 = _glyph_box(draw, image, mask, gx, gy, pad, ink)
    return {"question": ZOOM_QUESTION + (GUIDELINE if guideline else ""), "answer": answer, "images": [image],
            "kind": "zoom", "target_bbox": [x1 / size, y1 / size, x2 / size, y2 / size], "frames": None,
            "answer_frame": None}


def contact_sheet(frames: list[Image.Image], thumb: int = 28) -> Image.Image:
    """The frames shrunk to `thumb` x `thumb` cells, ceil(sqrt(F)) per row, in reading order (white when unused).

    >>> contact_sheet([Image.new("RGB", (112, 112))] * 16).size, contact_sheet([Image.new("RGB", (50, 50))] * 5).size
    ((112, 112), (84, 56))
    """
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (cols * thumb, rows * thumb), (255, 255, 255))
    for i, frame in enumerate(frames):
        sheet.paste(frame.resize((thumb, thumb), Image.Resampling.BILINEAR), ((i % cols) * thumb, (i // cols) * thumb))
    return sheet


def _video_row(rng: random.Random, frames: int, frame_size: int, thumb: int, guideline: bool) -> dict:
    background = tuple(rng.randint(215, 245) for _ in range(3))
    static = [(_muted(rng), [rng.randrange(frame_size) for _ in range(4)]) for _ in range(3)]
    radius = 5
    x, y = rng.uniform(radius, frame_size - radius), rng.uniform(radius, frame_size - radius)
    vx, vy = rng.choice((-1, 1)) * rng.uniform(3, 7), rng.choice((-1, 1)) * rng.uniform(3, 7)
    answer, answer_frame = rng.choice(CHARSET), rng.randrange(frames)
    mask, pad = glyph_mask(answer, 2), 3
    clip = []
    for t in range(frames):
        frame = Image.new("RGB", (frame_size, frame_size), background)
        draw = ImageDraw.Draw(frame)
        for color, (a, b, c, d) in static:
            draw.line([a, b, c, d], fill=color, width=2)
        dot = (round(x) - radius, round(y) - radius, round(x) + radius, round(y) + radius)
        draw.ellipse(dot, fill=DOT)
        if t == answer_frame:
            margin = pad + 2
            for _ in range(100):
                gx = rng.randint(margin, frame_size - margin - mask.width)
                gy = rng.randint(margin, frame_size - margin - mask.height)
                if not _overlaps((gx, gy, gx + mask.width, gy + mask.height), dot, margin):
                    break
            _glyph_box(draw, frame, mask, gx, gy, pad, tuple(rng.randint(0, INK_MAX) for _ in range(3)))
        clip.append(frame)
        x, y = x + vx, y + vy
        if not radius <= x <= frame_size - radius:  # bounce off the walls
            vx, x = -vx, min(max(x, radius), frame_size - radius)
        if not radius <= y <= frame_size - radius:
            vy, y = -vy, min(max(y, radius), frame_size - radius)
    question = VIDEO_QUESTION.format(frames=frames) + (GUIDELINE if guideline else "")
    return {"question": question, "answer": answer, "images": [contact_sheet(clip, thumb)], "kind": "video",
            "target_bbox": None, "frames": clip, "answer_frame": answer_frame}


def make_pixel_search(n: int, *, seed: int = 0, size: int = 224, kinds: tuple[str, ...] | list[str] = KINDS,
                      frames: int = 16, frame_size: int = 112, thumb: int = 28, clutter: int = 24, decoys: int = 3,
                      guideline: bool = False) -> list[dict]:
    """`n` pixel-search rows, kinds alternating over `kinds` ("zoom", "video"); see the module docstring for the
    rows. `size`: the zoom image's side (a multiple of 28, >= 56); `frames`: frames per clip (2..64) of
    `frame_size` px (>= 56); `thumb`: a frame's cell in the contact sheet; `clutter` / `decoys`: shapes and grey
    characters in a zoom image; `guideline`: append the released prompt's guideline (`GUIDELINE`) to questions.

    >>> rows = make_pixel_search(2, seed=1)
    >>> [r["kind"] for r in rows], rows[0]["images"][0].size, len(rows[1]["frames"]), rows[1]["images"][0].size
    (['zoom', 'video'], (224, 224), 16, (112, 112))
    """
    if n < 0:
        raise DataConfigError(f"make_pixel_search: n={n} must be >= 0")
    if size < 56 or size % 28:
        raise DataConfigError(f"make_pixel_search: size={size}; use a multiple of 28, at least 56 (e.g. 224)")
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise DataConfigError(f"make_pixel_search: kinds={list(kinds)}; use a non-empty list from {list(KINDS)}")
    if not 2 <= frames <= 64:
        raise DataConfigError(f"make_pixel_search: frames={frames}; use 2 to 64 frames a clip (the paper uses 16)")
    if frame_size < 56 or thumb < 4:
        raise DataConfigError(f"make_pixel_search: frame_size={frame_size} must be >= 56 and thumb={thumb} >= 4")
    if clutter < 0 or decoys < 0:
        raise DataConfigError(f"make_pixel_search: clutter={clutter} and decoys={decoys} must be >= 0")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if kinds[i % len(kinds)] == "zoom":
            rows.append(_zoom_row(rng, size, clutter, decoys, guideline))
        else:
            rows.append(_video_row(rng, frames, frame_size, thumb, guideline))
    return rows


# ---- warm-start traces ------------------------------------------------------------------------------------

def _call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def _zoom_box(cx: float, cy: float, half: float) -> list[float]:
    """A normalised box of half-side `half` around (cx, cy), shifted inside [0, 1], rounded outwards to 2 places."""
    cx, cy = min(max(cx, half), 1 - half), min(max(cy, half), 1 - half)
    return [math.floor((cx - half) * 100) / 100, math.floor((cy - half) * 100) / 100,
            math.ceil((cx + half) * 100) / 100, math.ceil((cy + half) * 100) / 100]


def _zoom_steps(row: dict, wrong_first: bool) -> list[tuple[str, str, dict] | str]:
    x1, y1, x2, y2 = row["target_bbox"]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1, 0.1)  # about 4 glyph heights across at 224 px
    right = {"bbox_2d": _zoom_box(cx, cy, half), "target_image": 1}
    steps: list = []
    if wrong_first:  # the far corner: a crop that misses the box, then the fix
        wrong = {"bbox_2d": _zoom_box(0.15 if cx > 0.5 else 0.85, 0.15 if cy > 0.5 else 0.85, 0.1),
                 "target_image": 1}
        steps.append(("The red box is too small for me to read the character in it. I will zoom in on it.\n"
                      + _call("crop_image_normalized", wrong), "crop_image_normalized", wrong))
        steps.append(("The zoomed region does not contain the red box: I cropped the wrong area. Let me zoom in on "
                      "the red box again.\n" + _call("crop_image_normalized", right), "crop_image_normalized", right))
    else:
        steps.append(("The red box is too small for me to read the character in it. I will zoom in on it.\n"
                      + _call("crop_image_normalized", right), "crop_image_normalized", right))
    steps.append(f"The zoomed image shows the character {row['answer']} inside the red box.\n\n"
                 f"\\boxed{{{row['answer']}}}")
    return steps


def _frame_window(center: int, count: int, width: int) -> list[int]:
    """`width` consecutive 1-based frame numbers around `center`, inside 1..count."""
    start = min(max(center - width // 2, 1), max(count - width + 1, 1))
    return list(range(start, min(start + width, count + 1)))


def _video_steps(row: dict, wrong_first: bool, max_frames: int) -> list[tuple[str, str, dict] | str]:
    count, k = len(row["frames"]), row["answer_frame"] + 1
    width = min(3, max_frames)
    right = {"target_frames": _frame_window(k, count, width)}
    far = (k + count // 2 - 1) % count + 1
    wrong = {"target_frames": [f for f in _frame_window(far, count, width) if f != k]}
    steps: list = []
    if wrong_first and wrong["target_frames"]:  # frames away from the marked one, then the fix
        steps.append(("The character is too small to read on the contact sheet. I will look at some frames more "
                      "closely.\n" + _call("select_frames", wrong), "select_frames", wrong))
        steps.append((f"None of these frames shows the box; on the contact sheet the box is in frame {k}. Let me "
                      "select the frames around it.\n" + _call("select_frames", right), "select_frames", right))
    else:
        steps.append((f"On the contact sheet a small box appears in frame {k}, too small to read. I will look at the "
                      "frames around it.\n" + _call("select_frames", right), "select_frames", right))
    steps.append(f"Frame {k} shows the character {row['answer']} inside the box.\n\n\\boxed{{{row['answer']}}}")
    return steps


def _observation(name: str, output, first_number: int) -> list[dict]:
    """The user turn returning a tool's images, worded as the released rollouts word it [repo]."""
    images = output if isinstance(output, list) else [output]
    w, h = images[0].size
    if name == "crop_image_normalized":
        text = f"\nHere is the cropped image (Image Size: {w}x{h}):"
    else:
        text = (f"\nHere are the selected frames (Frame Size: {w}x{h}, Numbered {first_number} to "
                f"{first_number + len(images) - 1}):")
    return [{"type": "text", "text": text}] + [{"type": "image"}] * len(images)


def tool_use_traces(rows: list[dict], *, self_correct: float = 0.0, seed: int = 0,
                    max_frames: int = MAX_FRAMES) -> list[dict]:
    r"""Warm-start SFT rows: a correct tool-using trace for each `make_pixel_search` row, split into one SFT row
    per assistant turn.

    The paper warm-starts with SFT on about 7.5k synthesized traces that use the operations, including deliberate
    self-correction traces (a first operation that misses, then a fixed one) (spec 2(a), [2nd]); the released SFT
    data are multi-turn conversations in which the tool's images come back in the next user turn and only the
    assistant turns are trained [repo ``sft_tooltrainer.py``]. An SFT row here is (prompt, response, images) with
    one trained response, so a trace of T assistant turns becomes T rows: row t's ``prompt`` is the chat so far
    (chat messages: the user question with the row's image, the earlier assistant turns, and each tool's returned
    images as ``{"type": "image"}`` items in a user turn worded as the repo's rollouts: "Here is the cropped image
    (Image Size: WxH):"), ``images`` every image those messages hold, in order (computed by running the real
    tools), and ``response`` assistant turn t. Turns before the last end with a call::

        The red box is too small for me to read the character in it. I will zoom in on it.
        <tool_call>
        {"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.41, 0.3, 0.62, 0.51], "target_image": 1}}
        </tool_call>

    (video rows: ``select_frames`` with up to 3 frame numbers around ``answer_frame + 1``), the last one reads the
    answer off the returned image(s) and ends with ``\boxed{answer}``. With probability `self_correct` (drawn with
    `seed`) a trace first calls on the wrong region / frames, then corrects itself (3 turns instead of 2).
    The simplification: how the RL engine wraps an image observation (tags, wording) is the engine's; traces
    use the repo's wording, which may differ from it.

    Row keys: ``prompt``, ``response``, ``images``, ``system_prompt`` (`tool_system_prompt`), ``answer``, ``kind``,
    ``turn`` (0-based) and ``turns``.
    """
    if not 0.0 <= self_correct <= 1.0:
        raise DataConfigError(f"tool_use_traces: self_correct={self_correct} must be a probability in [0, 1]")
    rng = random.Random(seed)
    system_prompt = tool_system_prompt(max_frames=max_frames)
    out = []
    for i, row in enumerate(rows):
        if row.get("kind") not in KINDS:
            raise DataConfigError(f"tool_use_traces: row {i} has kind={row.get('kind')!r}; give make_pixel_search rows")
        wrong_first = rng.random() < self_correct
        steps = (_zoom_steps(row, wrong_first) if row["kind"] == "zoom"
                 else _video_steps(row, wrong_first, max_frames))
        images = list(row["images"])
        messages = [{"role": "user", "content": [{"type": "image"}] * len(images)
                     + [{"type": "text", "text": row["question"]}]}]
        for turn, step in enumerate(steps):
            text = step if isinstance(step, str) else step[0]
            out.append({"prompt": [dict(m) for m in messages], "response": text, "images": list(images),
                        "system_prompt": system_prompt, "answer": row["answer"], "kind": row["kind"], "turn": turn,
                        "turns": len(steps)})
            if isinstance(step, str):
                break
            _, name, arguments = step
            result = TOOLS[name](json.dumps(arguments), {**row, "images_seen": images})
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": _observation(name, result, len(images) + 1)}]
            images += result if isinstance(result, list) else [result]
    return out


def make_pixel_traces(n: int, *, seed: int = 0, self_correct: float = 0.25, kinds: tuple[str, ...] | list[str] = KINDS,
                      max_frames: int = MAX_FRAMES) -> list[dict]:
    """Warm-start SFT rows (`tool_use_traces`) for `n` `make_pixel_search` problems (about 2-3 rows each: one per
    assistant turn), a quarter of them self-correcting by default."""
    return tool_use_traces(make_pixel_search(n, seed=seed, kinds=kinds), self_correct=self_correct, seed=seed,
                           max_frames=max_frames)
