"""Synthetic GUI screens for grounding (GUI-G1, spec 5(e)): the CPU substitute for the paper's 17K screenshots.

A screen is a light background with 3-8 non-overlapping coloured rectangles ("UI elements"), each labelled with a
short distinct word drawn inside it in PIL's built-in bitmap font (no font files, no downloads). A row asks for
one element by its label, in the Fast Thinking Template's words (`modules.papers.gui_g1.GROUNDING_TEMPLATE`), and
its ground truth is that rectangle in absolute pixels.

Boxes are pixel edges: ``[x1, y1, x2, y2]`` covers the pixels ``x1 <= x < x2``, ``y1 <= y < y2`` (width
``x2 - x1``), so areas and IoUs are exact in pixels. The default size 224 x 168 is a multiple of 28 on both sides:
Qwen2-VL / Qwen2.5-VL processors resize an image to multiples of 28 (14-pixel patches merged 2 x 2), so at such
sizes the image reaches the model unresized and the boxes need no rescaling. Other sizes are allowed; then
rescale boxes to the processor's size yourself.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFont

from datamodules.errors import DataConfigError
from modules.papers.gui_g1.rewards import (
    DIFFICULTY_WEIGHTS,
    GROUNDING_TEMPLATE,
    box_area,
    difficulty_weight,
)

QUESTION = GROUNDING_TEMPLATE.format(instruction="click the UI element {label}")
"""The user text after the image: "Grounding instruction is: click the UI element {label}. Report the bbox
coordinates in JSON format." """

LABELS = (
    "OK", "Save", "Open", "Close", "Send", "Edit", "Help", "Menu", "Home", "Back", "Next", "Find", "Copy", "Paste",
    "Print", "Share", "Login", "Exit", "Start", "Stop", "Play", "Undo", "Redo", "Zoom", "Mail", "Chat", "Cart",
    "Buy", "Add", "Delete", "Reset", "Apply", "Submit", "Cancel", "Search", "Upload", "Sync", "Like", "Post",
    "Files", "Tools", "View", "Sort", "Filter", "Crop", "Map", "Call", "News", "Shop", "Music", "Photo", "Video",
    "Notes", "Alarm", "Timer", "Clock", "Maps", "Wifi", "Pay",
)
"""Element labels (at most 6 characters, so each fits a small button); a screen draws distinct ones."""

PALETTE = (
    (220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (108, 113, 196), (42, 161, 152),
    (203, 75, 22), (181, 137, 0), (88, 110, 117), (0, 90, 50), (120, 40, 140), (30, 60, 120),
)
"""Element fill colours, all far from the light backgrounds; a screen's elements have distinct colours."""

DIFFICULTY_THRESHOLDS = (0.032, 0.045)
"""Target-area / image-area ratios splitting "hard" (< 0.032), "medium" (< 0.045) and "easy": about the terciles of
the target ratio at the default options (measured over 3,000 rows, seed 1: 32% hard / 34% medium / 34% easy)."""

EDGE_MARGIN = 2  # pixels between an element and the image border
GAP = 4  # pixels at least between two elements
PAD_X, PAD_Y = 4, 3  # least padding between an element's edge and its label
_TRIES_PER_ELEMENT = 100
_LAYOUT_RESTARTS = 50
_FONT = None


def bitmap_font() -> ImageFont.ImageFont:
    """PIL's built-in bitmap font, loaded once (the synthetic image tasks draw their labels with it)."""
    global _FONT
    if _FONT is None:  # PIL's built-in bitmap font (6 x 11 pixels a character); no FreeType or font file needed
        loader = getattr(ImageFont, "load_default_imagefont", None)
        _FONT = loader() if loader is not None else ImageFont.load_default()
    return _FONT


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=bitmap_font())
    return right - left, bottom - top


def _apart(a: list[int], b: list[int]) -> bool:
    """Whether boxes `a` and `b` are at least `GAP` pixels apart on one axis."""
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def _layout(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int, count: int) -> list[dict] | None:
    """`count` elements ``{"label", "box", "color"}`` at random non-overlapping places, or None if one did not fit."""
    labels = rng.sample(LABELS, count)
    colors = rng.sample(PALETTE, count)
    elements: list[dict] = []
    for label, color in zip(labels, colors):
        text_w, text_h = _text_size(draw, label)
        min_w, min_h = text_w + 2 * PAD_X, text_h + 2 * PAD_Y
        max_w, max_h = max(min_w, min(width // 3, text_w + 60)), max(min_h, height // 4)
        for _ in range(_TRIES_PER_ELEMENT):
            w, h = rng.randint(min_w, max_w), rng.randint(min_h, max_h)
            if w > width - 2 * EDGE_MARGIN or h > height - 2 * EDGE_MARGIN:
                continue
            x1 = rng.randint(EDGE_MARGIN, width - EDGE_MARGIN - w)
            y1 = rng.randint(EDGE_MARGIN, height - EDGE_MARGIN - h)
            box = [x1, y1, x1 + w, y1 + h]
            if all(_apart(box, other["box"]) for other in elements):
                elements.append({"label": label, "box": box, "color": list(color)})
                break
        else:
            return None
    return elements


def _render(elements: list[dict], width: int, height: int, background: tuple[int, int, int]) -> Image.Image:
    """The screen: `background`, each element a filled rectangle with its label centred in black or white."""
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for element in elements:
        x1, y1, x2, y2 = element["box"]
        color = tuple(element["color"])
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)  # PIL's corners are inclusive: x1..x2-1
        text_w, text_h = _text_size(draw, element["label"])
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
        draw.text((x1 + (x2 - x1 - text_w) // 2, y1 + (y2 - y1 - text_h) // 2), element["label"], fill=ink,
                  font=bitmap_font())
    return image


def difficulty_of(box: list[int], image_size: list[int], thresholds: tuple[float, float] = DIFFICULTY_THRESHOLDS
                  ) -> str:
    """"hard" / "medium" / "easy" from the box-area / image-area ratio (`DIFFICULTY_THRESHOLDS`)."""
    ratio = box_area(box) / (image_size[0] * image_size[1])
    return "hard" if ratio < thresholds[0] else "medium" if ratio < thresholds[1] else "easy"


def make_gui_screens(n: int, *, seed: int = 0, width: int = 224, height: int = 168, min_elements: int = 3,
                     max_elements: int = 8, weighting: str = "box_area") -> list[dict]:
    """`n` rows of synthetic screens, each asking for one element by label.

    Row: ``question`` (the Fast Thinking Template text, `QUESTION`), ``images`` ([the PIL RGB screen]),
    ``solution`` ([x1, y1, x2, y2] integer pixel edges of the target), ``image_size`` ([width, height]),
    ``rate`` (the difficulty coefficient by `weighting`, a name in
    `modules.papers.gui_g1.rewards.DIFFICULTY_WEIGHTS`), ``difficulty`` ("easy" / "medium" / "hard" by
    `DIFFICULTY_THRESHOLDS`), ``label`` (the target's word) and ``elements`` (every element on the screen,
    ``{"label", "box", "color"}``, the target included). Each screen draws its element count uniformly from
    min_elements..max_elements, random sizes, places, distinct labels and colours, a light background, and one
    element as the target. Deterministic given `seed`.
    """
    if n < 0:
        raise DataConfigError(f"make_gui_screens: n={n} must be >= 0")
    if not 1 <= min_elements <= max_elements <= min(len(LABELS), len(PALETTE)):
        raise DataConfigError(f"make_gui_screens: need 1 <= min_elements <= max_elements <= "
                              f"{min(len(LABELS), len(PALETTE))}; got min_elements={min_elements}, "
                              f"max_elements={max_elements}")
    if width < 56 or height < 28:
        raise DataConfigError(f"make_gui_screens: width={width}, height={height} is too small for a labelled "
                              "element; use at least 56 x 28 (multiples of 28, e.g. 224 x 168)")
    if weighting not in DIFFICULTY_WEIGHTS:
        raise DataConfigError(f"make_gui_screens: unknown weighting {weighting!r}; choices: "
                              f"{', '.join(sorted(DIFFICULTY_WEIGHTS))}")
    rng = random.Random(seed)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # for text sizes only
    image_size = [width, height]
    rows = []
    for _ in range(n):
        for _ in range(_LAYOUT_RESTARTS):
            elements = _layout(rng, draw, width, height, rng.randint(min_elements, max_elements))
            if elements is not None:
                break
        else:
            raise DataConfigError(f"make_gui_screens: could not place {max_elements} elements on a {width} x "
                                  f"{height} screen; lower max_elements or enlarge the screen")
        background = tuple(rng.randint(232, 250) for _ in range(3))
        target = rng.choice(elements)
        rows.append({
            "question": QUESTION.format(label=target["label"]),
            "images": [_render(elements, width, height, background)],
            "solution": list(target["box"]),
            "image_size": list(image_size),
            "rate": float(difficulty_weight(weighting, target["box"], image_size)),
            "difficulty": difficulty_of(target["box"], image_size),
            "label": target["label"],
            "elements": elements,
        })
    return rows
