"""Synthetic 360-degree panorama VQA (360-R1 / OmniVQA's CPU substitute, spec 17 (e)): `make_panorama`.

Each image is an equirectangular (ERP) panorama, 2:1, drawn with PIL: a ceiling band (pitch > 60), a wall band and
a floor (pitch < 0) split by a dark horizon line, and 3-6 filled circles / squares / triangles, each in a different
colour (so "the red object" is unique), at integer yaw in [-180, 180) and pitch in [-60, 60], at least `min_sep`
degrees of yaw apart. The angles map linearly to pixels (`yaw_to_x`, `pitch_to_y`):

    x = (yaw + 180) / 360 * width        y = (90 - pitch) / 180 * height

An object near the +-180 seam is drawn on both edges (the image wraps around behind the viewer).

Directions. Yaw grows to the right in the image, i.e. clockwise seen from above (turning right). "Right of X" is the
nearest other object going clockwise from X (increasing yaw); "left of X" the nearest going counter-clockwise
(decreasing yaw); both wrap across the seam (`right_of`, `left_of`: the smallest ``(yaw_Y - yaw_X) mod 360``, resp.
``(yaw_X - yaw_Y) mod 360``), so every object has a left and a right neighbour. "Behind you when you face X" is the
object nearest in yaw to ``yaw_X + 180`` (`behind`), asked only when it lies within 45 degrees of that direction and
at least 10 degrees nearer than any other object.

Question types, drawn in OmniVQA's mix (object identification 31.1%, attribute 25.9%, spatial relation 43.0%; each
type's share of `n` rows is exact up to rounding, the order shuffled with `seed`); within a type, one of the
templates valid for the scene is drawn uniformly, then one of its instances:

- identification: what is behind you facing X / the highest object / the lowest object -> "green square";
- attribute: what shape is the <colour> object -> "circle" / what colour is the <shape> (only one of it) -> "red";
- spatial: what is to the left / right of X -> "blue triangle" / is X above or below Y -> "above".

Row columns: ``question`` (text only; the recipe inserts the image placeholder), ``images`` ([PIL RGB image]),
``answer``, ``reasoning`` (a templated reference chain listing the objects' positions and the deduction: the
analogue of the paper's DeepSeek-R1 chains), ``question_type``, ``template`` and ``objects`` (dicts with name,
colour, shape, yaw, pitch, x, y, sorted by yaw) and ``system_prompt`` (`OMNI_SYSTEM_PROMPT`, the system instruction).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from datamodules.errors import DataConfigError

OMNI_SYSTEM_PROMPT = (
    "You are looking at a 360-degree equirectangular panorama: yaw runs from -180 degrees at the left edge to 180 "
    "degrees at the right edge, the two edges meet behind the viewer, and pitch runs from 90 degrees at the top to "
    "-90 degrees at the bottom. First reason step by step about where the objects are inside <think> </think> tags, "
    "then give only the short final answer inside <answer> </answer> tags, for example: "
    "<think> ... </think> <answer> green square </answer>"
)

QUESTION_TYPES = ("identification", "attribute", "spatial")
MIX = {"identification": 0.311, "attribute": 0.259, "spatial": 0.430}
"""OmniVQA's question-type shares (spec 17 (e))."""
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (240, 210, 20),
           "purple": (140, 40, 180), "orange": (250, 130, 0), "cyan": (0, 200, 210), "black": (15, 15, 15)}
CEILING, WALL, FLOOR, HORIZON = (228, 228, 234), (196, 184, 166), (112, 96, 80), (70, 70, 70)
PITCH_RANGE = 60
BEHIND_TOLERANCE, MARGIN, ABOVE_MARGIN = 45, 10, 15  # degrees
_NAME_HINT = " Answer with its colour and shape."
_MAX_TRIES = 200


# ------------------------------------------------------------------------------------------------ geometry
def yaw_to_x(yaw: float, width: int) -> float:
    """Equirectangular column of `yaw` (degrees, -180 at the left edge).

    >>> yaw_to_x(-180, 448), yaw_to_x(0, 448), yaw_to_x(90, 448)
    (0.0, 224.0, 336.0)
    """
    return (yaw + 180.0) / 360.0 * width


def pitch_to_y(pitch: float, height: int) -> float:
    """Equirectangular row of `pitch` (degrees, 90 at the top edge).

    >>> pitch_to_y(90, 224), pitch_to_y(0, 224), pitch_to_y(-45, 224)
    (0.0, 112.0, 168.0)
    """
    return (90.0 - pitch) / 180.0 * height


def yaw_gap(a: float, b: float) -> float:
    """Angular distance between two yaws, in [0, 180].

    >>> yaw_gap(170, -170), yaw_gap(-90, 90)
    (20, 180)
    """
    d = (a - b) % 360
    return min(d, 360 - d)


def _find(objects: Sequence[dict], name: str) -> dict:
    for o in objects:
        if o["name"] == name:
            return o
    raise KeyError(f"no object named {name!r} among {[o['name'] for o in objects]}")


def left_of(objects: Sequence[dict], name: str) -> dict:
    """The nearest other object going counter-clockwise (decreasing yaw, wrapping from -180 to 180) from `name`.

    >>> objs = [{"name": "a", "yaw": -170}, {"name": "b", "yaw": 0}, {"name": "c", "yaw": 150}]
    >>> left_of(objs, "a")["name"], left_of(objs, "b")["name"]
    ('c', 'a')
    """
    x = _find(objects, name)
    return min((o for o in objects if o is not x), key=lambda o: (x["yaw"] - o["yaw"]) % 360)


def right_of(objects: Sequence[dict], name: str) -> dict:
    """The nearest other object going clockwise (increasing yaw, wrapping from 180 to -180) from `name`.

    >>> objs = [{"name": "a", "yaw": -170}, {"name": "b", "yaw": 0}, {"name": "c", "yaw": 150}]
    >>> right_of(objs, "c")["name"], right_of(objs, "a")["name"]
    ('a', 'b')
    """
    x = _find(objects, name)
    return min((o for o in objects if o is not x), key=lambda o: (o["yaw"] - x["yaw"]) % 360)


def behind(objects: Sequence[dict], name: str) -> tuple[dict, float, float]:
    """(the other object nearest in yaw to the direction behind `name`, its gap to that direction, the runner-up's
    gap; inf without a runner-up)."""
    x = _find(objects, name)
    opposite = x["yaw"] + 180
    gaps = sorted(((yaw_gap(o["yaw"], opposite), i) for i, o in enumerate(objects) if o is not x))
    runner_up = gaps[1][0] if len(gaps) > 1 else float("inf")
    return objects[gaps[0][1]], gaps[0][0], runner_up


def _wrap(yaw: float) -> int:
    return int((yaw + 180) % 360 - 180)


# --------------------------------------------------------------------------------------------------- scenes
def _layout(rng: random.Random, count: int, min_sep: int, width: int, height: int) -> list[dict]:
    for _ in range(_MAX_TRIES):
        yaws: list[int] = []
        for _ in range(_MAX_TRIES):
            yaw = rng.randrange(-180, 180)
            if all(yaw_gap(yaw, y) >= min_sep for y in yaws):
                yaws.append(yaw)
                if len(yaws) == count:
                    break
        if len(yaws) == count:
            break
    else:
        raise DataConfigError(f"make_panorama: cannot place {count} objects {min_sep} degrees apart; lower min_sep")
    colours = rng.sample(sorted(COLOURS), count)
    objects = []
    for yaw, colour in zip(yaws, colours):
        shape = rng.choice(SHAPES)
        pitch = rng.randint(-PITCH_RANGE, PITCH_RANGE)
        objects.append({"name": f"{colour} {shape}", "colour": colour, "shape": shape, "yaw": yaw, "pitch": pitch,
                        "x": yaw_to_x(yaw, width), "y": pitch_to_y(pitch, height)})
    return sorted(objects, key=lambda o: o["yaw"])


def render_panorama(objects: Sequence[dict], width: int, height: int, radius: int | None = None):
    """The PIL RGB panorama of `objects` (each drawn at its `x`, `y`, and again one width over near the seam)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), WALL)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width, pitch_to_y(PITCH_RANGE, height)], fill=CEILING)
    horizon = pitch_to_y(0, height)
    draw.rectangle([0, horizon, width, height], fill=FLOOR)
    draw.line([0, horizon, width, horizon], fill=HORIZON, width=1)
    r = radius if radius is not None else max(4, round(0.03 * width))
    for o in objects:
        fill, y = COLOURS[o["colour"]], o["y"]
        for x in (o["x"] - width, o["x"], o["x"] + width):  # the copies off the canvas are clipped
            if o["shape"] == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            elif o["shape"] == "square":
                s = 0.85 * r
                draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
            else:
                draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    return img


# ------------------------------------------------------------------------------------------------ questions
def _positions(objects: Sequence[dict]) -> str:
    listed = "; ".join(f"the {o['name']} at yaw {o['yaw']}°, pitch {o['pitch']}°" for o in objects)
    return ("In the equirectangular panorama yaw runs from -180° at the left edge to 180° at the right edge, and the "
            f"two edges meet behind me. From left to right I see {listed}.")


def _candidates(kind: str, objects: list[dict]) -> list[tuple[str, str, str, str]]:
    """Every valid (template, question, answer, deduction) of question type `kind` for the scene."""
    out = []
    if kind == "identification":
        for a in objects:
            b, gap, runner_up = behind(objects, a["name"])
            if gap <= BEHIND_TOLERANCE and runner_up - gap >= MARGIN:
                opposite = _wrap(a["yaw"] + 180)
                out.append(("behind", f"What object is directly behind you when you face the {a['name']}?"
                            + _NAME_HINT, b["name"],
                            f"Facing the {a['name']} at yaw {a['yaw']}°, the direction behind me is yaw {a['yaw']}° "
                            f"+ 180° = {opposite}°. The object nearest to yaw {opposite}° is the {b['name']} at yaw "
                            f"{b['yaw']}°, {yaw_gap(b['yaw'], opposite)}° away; every other object is farther."))
        by_pitch = sorted(objects, key=lambda o: o["pitch"])
        for template, first, second in (("highest", by_pitch[-1], by_pitch[-2]), ("lowest", by_pitch[0], by_pitch[1])):
            if abs(first["pitch"] - second["pitch"]) >= MARGIN:
                out.append((template, f"Which object is the {template} in the panorama?" + _NAME_HINT, first["name"],
                            f"Comparing pitches, the {first['name']} at pitch {first['pitch']}° is the {template}; "
                            f"the next is the {second['name']} at pitch {second['pitch']}°."))
    elif kind == "attribute":
        for o in objects:
            out.append(("shape", f"What shape is the {o['colour']} object? Answer with one word.", o["shape"],
                        f"The {o['colour']} object is at yaw {o['yaw']}°, pitch {o['pitch']}°, and it is a "
                        f"{o['shape']}."))
            if sum(p["shape"] == o["shape"] for p in objects) == 1:
                out.append(("colour", f"What colour is the {o['shape']}? Answer with one word.", o["colour"],
                            f"There is only one {o['shape']}, at yaw {o['yaw']}°, pitch {o['pitch']}°, and it is "
                            f"{o['colour']}."))
    elif kind == "spatial":
        for a in objects:
            for template, find, turn, sign in (("left", left_of, "left (counter-clockwise, decreasing yaw)", -1),
                                               ("right", right_of, "right (clockwise, increasing yaw)", 1)):
                b = find(objects, a["name"])
                gap = (sign * (b["yaw"] - a["yaw"])) % 360
                seam = " and across the ±180° seam" if (b["yaw"] - a["yaw"]) * sign < 0 else ""
                out.append((template, f"What is to the {template} of the {a['name']}?" + _NAME_HINT, b["name"],
                            f"Turning {turn} from the {a['name']} at yaw {a['yaw']}°{seam}, the first object is the "
                            f"{b['name']} at yaw {b['yaw']}°, {gap}° away."))
            for b in objects:
                if b is not a and abs(a["pitch"] - b["pitch"]) >= ABOVE_MARGIN:
                    where = "above" if a["pitch"] > b["pitch"] else "below"
                    out.append(("above_below", f"Is the {a['name']} above or below the {b['name']}? Answer above "
                                "or below.", where,
                                f"The {a['name']} is at pitch {a['pitch']}° and the {b['name']} at pitch "
                                f"{b['pitch']}°, so the {a['name']} is {where} the {b['name']}."))
    else:
        raise ValueError(f"unknown question type {kind!r}")
    return out


def _type_sequence(n: int, mix: dict[str, float], rng: random.Random) -> list[str]:
    """`n` question types with each type's count round(share * n) (largest remainder), shuffled."""
    total = sum(mix.values())
    quotas = {t: mix[t] / total * n for t in mix}
    counts = {t: int(q) for t, q in quotas.items()}
    by_remainder = sorted(mix, key=lambda t: quotas[t] - counts[t], reverse=True)
    for t in by_remainder[:n - sum(counts.values())]:
        counts[t] += 1
    types = [t for t in mix for _ in range(counts[t])]
    rng.shuffle(types)
    return types


def make_panorama(n: int, *, seed: int = 0, width: int = 448, height: int = 224, min_objects: int = 3,
                  max_objects: int = 6, min_sep: int = 30, mix: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """`n` panorama VQA rows (see the module docstring for the columns); deterministic per `seed`.

    `width` x `height`: the image size, 2:1 (the defaults are multiples of 28, Qwen2.5-VL's patch grid);
    `min_objects`..`max_objects`: objects per scene; `min_sep`: least yaw between two objects (degrees);
    `mix`: {question type: share} (default `MIX`, OmniVQA's).

    >>> row = make_panorama(1, seed=3)[0]
    >>> row["images"][0].size, row["question_type"] in QUESTION_TYPES, row["answer"] in row["reasoning"]
    ((448, 224), True, True)
    """
    if n < 0:
        raise DataConfigError(f"make_panorama: n={n} must be >= 0")
    if height < 28 or width != 2 * height:
        raise DataConfigError(f"make_panorama: width={width}, height={height}; an equirectangular panorama is 2:1 "
                              "with height >= 28 (e.g. 448 x 224)")
    if not 2 <= min_objects <= max_objects <= len(COLOURS):
        raise DataConfigError(f"make_panorama: objects {min_objects}..{max_objects}; need 2 <= min_objects <= "
                              f"max_objects <= {len(COLOURS)} (one colour each)")
    if min_sep < 0 or max_objects * min_sep > 360:
        raise DataConfigError(f"make_panorama: min_sep={min_sep} must be >= 0 with max_objects * min_sep <= 360")
    mix = dict(MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(QUESTION_TYPES))
    if unknown or not mix or any(not w >= 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise DataConfigError(f"make_panorama: mix={mix!r}; give shares >= 0 (not all 0) for some of "
                              f"{list(QUESTION_TYPES)}")
    types = _type_sequence(n, mix, random.Random(f"panorama-types:{seed}"))
    rows = []
    for i, kind in enumerate(types):
        rng = random.Random(f"panorama:{seed}:{i}")
        for _ in range(_MAX_TRIES):
            objects = _layout(rng, rng.randint(min_objects, max_objects), min_sep, width, height)
            candidates = _candidates(kind, objects)
            if candidates:
                break
        else:
            raise DataConfigError(f"make_panorama: no valid {kind} question in {_MAX_TRIES} scenes; widen the "
                                  "object counts")
        template = rng.choice(list(dict.fromkeys(c[0] for c in candidates)))  # each valid template equally likely
        _, question, answer, deduction = rng.choice([c for c in candidates if c[0] == template])
        rows.append({
            "question": question,
            "images": [render_panorama(objects, width, height)],
            "answer": answer,
            "reasoning": f"{_positions(objects)} {deduction} So the answer is {answer}.",
            "question_type": kind,
            "template": template,
            "objects": objects,
            "system_prompt": OMNI_SYSTEM_PROMPT,  # the engines render it as the system turn (--data.system_prompt wins)
        })
    return rows


__all__ = ["COLOURS", "MIX", "OMNI_SYSTEM_PROMPT", "QUESTION_TYPES", "SHAPES", "behind", "left_of", "make_panorama",
           "pitch_to_y", "render_panorama", "right_of", "yaw_gap", "yaw_to_x"]
