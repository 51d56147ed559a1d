"""Synthetic real / fake clips (AvatarShield, spec 10(e)): the CPU substitute for FakeHumanVid, `make_fake_clips`.

A clip is `frames` square RGB frames of a filled circle or square in a saturated colour moving in a straight line at
constant speed over a uniform light background (every pixel is exactly the background or the shape colour; no
anti-aliasing). The speed is at most ``size * STEP_FRACTION`` pixels a frame (4 at size 112) and the whole path lies
inside the frame, so the shape's centroid moves at most that much (plus 2 px of rounding) between frames. A "real"
clip is just that; a "fake" clip breaks it one way, by `forgery_type`:

- ``teleport``: in one interior frame k (0 < k < frames - 1) the shape is drawn at least ``size * JUMP_FRACTION``
  pixels (28 at size 112) from where it should be, then returns: one large jump out and back;
- ``flicker``: in one interior frame k the shape vanishes or is drawn in another palette colour, so that frame has
  no pixel of the shape's colour;
- ``texture``: in 1 to ``frames // 2`` frames a square patch of side ``max(3, r)`` centred on the shape (so inside
  it; r is the shape's radius or half side) is the shape colour plus uniform noise of +-`texture_amplitude` per
  channel: a local pixel artifact, the motion stays smooth.

The default size 112 is a multiple of 28: Qwen2-VL / Qwen2.5-VL processors resize to multiples of 28 (14-pixel
patches merged 2 x 2), so frames reach the model unresized.

Row columns:

- ``question``: `QUESTION` (text only; the vision core inserts the video); ``system_prompt``: `AVATAR_SYSTEM_PROMPT`;
- ``frames``: list of PIL RGB frames, ``size x size``, in the order shown to the model;
- ``label``: "real" / "fake"; ``forgery_type``: "real" / "teleport" / "flicker" / "texture";
- ``forged_frames``: the altered frames' indices in the original order (``[]`` for a real clip);
- ``clip_id``: ``"<seed>-<row index>"``, the same for a clip and its shuffled copy;
- ``frames_shuffled``: False here, True on a copy from `with_shuffled_copies`;
- ``frame_order``: the original index of each shown frame (``list(range(frames))`` here; the permutation on a copy).

Shuffled copies (for the temporal compensation reward, `modules.papers.avatarshield.avatar_temporal`):
`with_shuffled_copies` returns ``[r0, r0~, r1, r1~, ...]``: each row followed by a copy with the same label,
clip_id and columns but its frames permuted (never the identity) and ``frames_shuffled`` True. The label is kept:
a model that uses the order of the frames should be less accurate on a shuffled clip (a shuffled real clip jumps
about), which is what the reward measures. Call it on each batch of rows, after the data loader's shuffling, so a
clip and its copy stay adjacent: with G generations per prompt row, clip j's completions are rows
``[2jG, 2jG + 2G)`` of the rollout, so merging a clip's two groups is ``group_id // 2``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

from datamodules.errors import DataConfigError

AVATAR_SYSTEM_PROMPT = (
    "You are a video forensics expert. You are shown the frames of a short video in order. Decide whether the video "
    "is real or AI-generated (fake): look for temporal inconsistencies between frames in motion and appearance, and "
    "for local texture artifacts within a frame. First reason step by step inside <think> </think> tags, then give "
    "only the word real or fake inside <answer> </answer> tags, for example: <think> ... </think> <answer> fake "
    "</answer>"
)
"""The system instruction of every row (``system_prompt`` column): the task and the think / answer layout."""

QUESTION = ("Is this video real or AI-generated? Think step by step inside <think> </think> tags, then answer real "
            "or fake inside <answer> </answer> tags.")
"""The user text after the video: spec 10(d)'s template [unverified] with the answer format spelled out."""

FAKE_TYPES = ("teleport", "flicker", "texture")
"""The forgeries a fake clip can carry (``forgery_type``); a real clip's forgery_type is "real"."""

PALETTE = ((220, 30, 30), (30, 160, 50), (30, 60, 220), (250, 130, 0), (140, 40, 180), (0, 170, 190),
           (210, 40, 150), (120, 80, 20))
"""Shape colours, saturated: each has a channel below 200, so none equals a background (every channel 215-245)."""

SHAPES = ("circle", "square")
STEP_FRACTION = 1 / 28
"""Largest per-frame move of a real clip's shape, as a fraction of `size` (4 pixels at 112)."""
JUMP_FRACTION = 1 / 4
"""Least distance of a teleport from the shape's true position, as a fraction of `size` (28 pixels at 112)."""

_TRIES = 200


def _check(n: int, frames: int, size: int, fake_ratio: float, forgery_types: Sequence[str],
           texture_amplitude: int) -> None:
    if n < 0:
        raise DataConfigError(f"make_fake_clips: n={n} must be >= 0")
    if frames < 4:
        raise DataConfigError(f"make_fake_clips: frames={frames}; use at least 4 (the spec's clips have 8-16)")
    if size < 56 or size % 28:
        raise DataConfigError(f"make_fake_clips: size={size}; use a multiple of 28, at least 56 (e.g. 112)")
    if not 0.0 <= fake_ratio <= 1.0:
        raise DataConfigError(f"make_fake_clips: fake_ratio={fake_ratio} must lie in [0, 1]")
    if isinstance(forgery_types, str) or not forgery_types or any(t not in FAKE_TYPES for t in forgery_types):
        raise DataConfigError(f"make_fake_clips: forgery_types={forgery_types!r}; use a non-empty list of "
                              f"{', '.join(FAKE_TYPES)}")
    if not 1 <= texture_amplitude <= 255:
        raise DataConfigError(f"make_fake_clips: texture_amplitude={texture_amplitude}; use 1..255")


def _path(rng: random.Random, frames: int, size: int, radius: int) -> list[tuple[float, float]]:
    """Centres of a straight constant-speed path inside the frame (the shape never touches the border)."""
    lo, hi = radius + 1, size - radius - 2
    step = min(size * STEP_FRACTION, 0.9 * (hi - lo) / (frames - 1))
    speed = rng.uniform(0.5, 1.0) * step
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    travel_x, travel_y = (frames - 1) * vx, (frames - 1) * vy
    x0 = rng.uniform(lo - min(0.0, travel_x), hi - max(0.0, travel_x))
    y0 = rng.uniform(lo - min(0.0, travel_y), hi - max(0.0, travel_y))
    return [(x0 + t * vx, y0 + t * vy) for t in range(frames)]


def _far_point(rng: random.Random, centre: tuple[float, float], size: int, radius: int) -> tuple[float, float]:
    """A centre inside the frame at least ``size * JUMP_FRACTION`` from `centre`."""
    lo, hi = radius + 1, size - radius - 2
    for _ in range(_TRIES):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if math.dist((x, y), centre) >= size * JUMP_FRACTION:
            return x, y
    raise RuntimeError("make_fake_clips: no teleport target found")  # unreachable at size >= 56


def _draw_shape(image: Image.Image, shape: str, centre: tuple[float, float], radius: int,
                colour: tuple[int, int, int]) -> None:
    x, y = round(centre[0]), round(centre[1])
    box = [x - radius, y - radius, x + radius, y + radius]  # PIL corners are inclusive: 2r + 1 pixels across
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)


def _noise_patch(image: Image.Image, rng: random.Random, centre: tuple[float, float], radius: int,
                 colour: tuple[int, int, int], amplitude: int) -> None:
    """Overwrite a square of side ``max(3, radius)`` centred on the shape with its colour plus uniform noise."""
    side = max(3, radius)
    x1, y1 = round(centre[0]) - side // 2, round(centre[1]) - side // 2
    data = bytes(min(255, max(0, c + rng.randint(-amplitude, amplitude))) for _ in range(side * side) for c in colour)
    image.paste(Image.frombytes("RGB", (side, side), data), (x1, y1))


def _clip(rng: random.Random, frames: int, size: int, forgery: str, amplitude: int
          ) -> tuple[list[Image.Image], list[int]]:
    """The frames of one clip with forgery `forgery` ("real" or one of `FAKE_TYPES`) and the forged frame indices."""
    radius = rng.randint(max(4, size // 12), max(5, size // 8))
    shape = rng.choice(SHAPES)
    colour = rng.choice(PALETTE)
    background = tuple(rng.randint(215, 245) for _ in range(3))
    centres = _path(rng, frames, size, radius)
    colours: list[tuple[int, int, int] | None] = [colour] * frames
    forged: list[int] = []
    if forgery == "teleport":
        k = rng.randint(1, frames - 2)
        centres[k] = _far_point(rng, centres[k], size, radius)
        forged = [k]
    elif forgery == "flicker":
        k = rng.randint(1, frames - 2)
        colours[k] = None if rng.random() < 0.5 else rng.choice([c for c in PALETTE if c != colour])
        forged = [k]
    elif forgery == "texture":
        forged = sorted(rng.sample(range(frames), rng.randint(1, max(1, frames // 2))))
    images = []
    for t in range(frames):
        image = Image.new("RGB", (size, size), background)
        if colours[t] is not None:
            _draw_shape(image, shape, centres[t], radius, colours[t])
        if forgery == "texture" and t in forged:
            _noise_patch(image, rng, centres[t], radius, colour, amplitude)
        images.append(image)
    return images, forged


def make_fake_clips(n: int, *, seed: int = 0, frames: int = 8, size: int = 112, fake_ratio: float = 0.5,
                    forgery_types: Sequence[str] = FAKE_TYPES, texture_amplitude: int = 64) -> list[dict]:
    """`n` synthetic clips of `frames` frames, ``size x size`` pixels (a multiple of 28), in the module's schema.

    ``round(n * fake_ratio)`` clips are fake, their forgeries cycling through `forgery_types` (so each type's
    count is exact up to one), the rest real; the order is shuffled. Shape, colour, background, radius, path and
    forgery are drawn per clip. Deterministic given `seed`.

    >>> rows = make_fake_clips(4, seed=1, frames=4, size=56)
    >>> sorted(r["label"] for r in rows), rows[0]["frames"][0].size, rows[0]["frames_shuffled"]
    (['fake', 'fake', 'real', 'real'], (56, 56), False)
    """
    _check(n, frames, size, fake_ratio, forgery_types, texture_amplitude)
    rng = random.Random(seed)
    n_fake = round(n * fake_ratio)
    kinds = [forgery_types[i % len(forgery_types)] for i in range(n_fake)] + ["real"] * (n - n_fake)
    rng.shuffle(kinds)
    rows = []
    for i, kind in enumerate(kinds):
        images, forged = _clip(rng, frames, size, kind, texture_amplitude)
        rows.append({
            "question": QUESTION,
            "system_prompt": AVATAR_SYSTEM_PROMPT,
            "frames": images,
            "label": "real" if kind == "real" else "fake",
            "forgery_type": kind,
            "forged_frames": forged,
            "clip_id": f"{seed}-{i}",
            "frames_shuffled": False,
            "frame_order": list(range(frames)),
        })
    return rows


def with_shuffled_copies(rows: Sequence[dict], *, seed: int = 0) -> list[dict]:
    """``[r0, r0~, r1, r1~, ...]``: each row followed by a copy showing its frames in a shuffled order.

    A copy has the row's columns (same ``label``, ``clip_id``, question), ``frames_shuffled`` True, ``frames``
    permuted (the same PIL images, never in the original order) and ``frame_order`` permuted alike (the original
    index of each shown frame). The permutation depends only on `seed` and the row's ``clip_id``, so a clip is
    shuffled the same way in whatever batch it comes. Rows need ``clip_id`` and ``frames`` (>= 2) and must not be
    shuffled copies themselves.

    >>> pair = with_shuffled_copies(make_fake_clips(1, frames=4, size=56), seed=3)
    >>> [r["frames_shuffled"] for r in pair], pair[0]["clip_id"] == pair[1]["clip_id"], sorted(pair[1]["frame_order"])
    ([False, True], True, [0, 1, 2, 3])
    """
    out = []
    for row in rows:
        if row.get("frames_shuffled"):
            raise DataConfigError(f"with_shuffled_copies: row {row.get('clip_id')!r} is already a shuffled copy")
        if "clip_id" not in row or len(row.get("frames") or ()) < 2:
            raise DataConfigError("with_shuffled_copies: each row needs a `clip_id` and at least 2 `frames`")
        count = len(row["frames"])
        order = list(row.get("frame_order") or range(count))
        rng = random.Random(f"{seed}:{row['clip_id']}")  # str seeds hash with sha512: stable across processes
        perm = list(range(count))
        while perm == sorted(perm):
            rng.shuffle(perm)
        copy = dict(row)
        copy.update(frames=[row["frames"][j] for j in perm], frame_order=[order[j] for j in perm],
                    frames_shuffled=True)
        out += [row, copy]
    return out


__all__ = ["AVATAR_SYSTEM_PROMPT", "FAKE_TYPES", "QUESTION", "make_fake_clips", "with_shuffled_copies"]
