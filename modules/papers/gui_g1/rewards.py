"""GUI-G1 (arXiv 2505.15810): box parsing, the three grounding rewards, difficulty weights and box metrics.

Spec section 5. The model answers a grounding instruction with a box in absolute pixels of the (resized) screen
image, in the Fast Thinking Template's form (no ``<think>``)::

    ```json
    [{"bbox_2d": [x1, y1, x2, y2]}]
    ```

Rewards (spec 5(b), from the repo's ``grpo_rec.py`` [repo]; the paper writes ``R_Hit + alpha R_IoU + beta R_Box``)
score the *first* predicted box against the ground truth (the ``solution`` column, ``[x1, y1, x2, y2]`` absolute
pixels) and sum to ``R = R_Hit + 0.25 IoU + 0.125 harmonic-mean closeness``:

- `gui_hit`: 1 when the predicted box's centre lies inside the ground-truth box (edges included), else 0;
- `gui_iou`: ``0.25 * IoU`` (plain continuous IoU; the repo adds 1 to widths for an inclusive-pixel intersection);
- `gui_box`: ``0.125 * 4 / sum_k 1 / (1 - |pred_k - gt_k| / D_k)``, D = image width for x1, x2 and height for
  y1, y2 (the ``image_size`` column, ``[width, height]``): the box-size constraint against reward hacking.

The weights 1, 0.25 and 0.125 are keyword arguments (`weight`) so a config can change them through the reward's
``kwargs``; give each reward ``weight: 1`` in the config's reward list, or the two weights multiply. A completion
that does not parse gives 0.0 for every term; a row without ground truth gives None.

The difficulty coefficient (the per-sample ``rate`` that multiplies the loss, spec 5(c)) is a pluggable function
`fn(box, image_size) -> float` in `DIFFICULTY_WEIGHTS`; `box_metrics` gives the evaluation numbers (hit rate,
mean IoU, predicted / ground-truth area ratio: the paper's reward-hacking signal, parse failures).
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

from modules.rewards.registry import completion_text, register_reward

GROUNDING_TEMPLATE = "Grounding instruction is: {instruction}. Report the bbox coordinates in JSON format."
"""The Fast Thinking Template's user text after the image (spec 5(d)): no system prompt, no think tags."""

HIT_WEIGHT, IOU_WEIGHT, BOX_WEIGHT = 1.0, 0.25, 0.125
"""The paper's term weights, from the repo's ``grpo_rec.py`` [repo] (effective alpha = 0.25, beta = 0.125)."""

Box = list[float]
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)


# ---- parsing ------------------------------------------------------------------------------------------

def _strip_fences(text: str) -> str:
    """The inside of the first ```` ```json ... ``` ```` (or plain ```` ``` ````) block; the whole text when none."""
    found = _FENCE.search(text)
    if found:
        return found.group(1)
    return text.replace("```json", "").replace("```", "").strip()  # an unclosed fence, as the repo's replace()


def _literal(text: str) -> Any:
    """`ast.literal_eval` (the repo's parser: Python literals, single quotes), then `json.loads` (true/null)."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except Exception:  # noqa: BLE001, S112 - SyntaxError, ValueError, RecursionError...: "does not parse"
            continue
    return None


def _as_box(value: Any) -> Box | None:
    """``[x1, y1, x2, y2]`` as floats, or None unless it is 4 finite real numbers (bools excluded) with x1 <= x2
    and y1 <= y2."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        return None
    box = [float(v) for v in value]
    if not all(math.isfinite(v) for v in box):
        return None
    if box[2] < box[0] or box[3] < box[1]:
        return None
    return box


def parse_boxes(text: Any) -> list[Box] | None:
    """Every box of a completion, ``[[x1, y1, x2, y2], ...]`` as floats, or None when it does not parse.

    Accepted (after stripping a ```` ```json ```` fence): ``[{"bbox_2d": [...]}, ...]`` (the template's form), a
    bare ``{"bbox_2d": [...]}``, or a bare 4-number list ``[x1, y1, x2, y2]``; parsed with `ast.literal_eval` as
    the repo does, then `json.loads`. None for anything else: no literal, an empty list, a dict without
    ``bbox_2d``, a box that is not 4 real numbers, or a box with x2 < x1 or y2 < y1 (malformed: coordinates are
    not sorted for the model, since a swapped box is not the answer format). One malformed box anywhere makes
    the whole completion a parse failure. The rewards score the first box. A completion may be a string or a
    list of chat messages.

    >>> parse_boxes('```json\\n[{"bbox_2d": [10, 20, 30, 40]}]\\n```')
    [[10.0, 20.0, 30.0, 40.0]]
    >>> parse_boxes("{'bbox_2d': [1, 2, 3, 4]}"), parse_boxes("[1, 2, 3.5, 4]")
    ([[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0, 3.5, 4.0]])
    >>> parse_boxes("[30, 20, 10, 40]"), parse_boxes('[{"bbox_2d": [1, 2, 3]}]'), parse_boxes("click it")
    (None, None, None)
    """
    value = _literal(_strip_fences(completion_text(text)))
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not isinstance(value[0], dict):  # a bare [x1, y1, x2, y2]
        box = _as_box(value)
        return None if box is None else [box]
    boxes = []
    for item in value:
        if not isinstance(item, dict) or "bbox_2d" not in item:
            return None
        box = _as_box(item["bbox_2d"])
        if box is None:
            return None
        boxes.append(box)
    return boxes


def first_box(completion: Any) -> Box | None:
    """The box the rewards score: the first of `parse_boxes`, or None on a parse failure."""
    boxes = parse_boxes(completion)
    return None if boxes is None else boxes[0]


# ---- box maths ----------------------------------------------------------------------------------------

def box_area(box: Sequence[float]) -> float:
    """``(x2 - x1) * (y2 - y1)``, 0 for an empty box."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Plain continuous IoU in [0, 1]; 0 when the union is empty.

    >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
    0.3333333333333333
    """
    inter = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0])) * max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    union = box_area(pred) + box_area(gt) - inter
    return inter / union if union > 0 else 0.0


def centre_hit(pred: Sequence[float], gt: Sequence[float]) -> bool:
    """Whether the centre of `pred` lies inside `gt`, edges included."""
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def clip_box(box: Sequence[float], image_size: Sequence[float]) -> Box:
    """`box` with x clipped to [0, width] and y to [0, height]."""
    width, height = float(image_size[0]), float(image_size[1])
    return [min(max(float(box[0]), 0.0), width), min(max(float(box[1]), 0.0), height),
            min(max(float(box[2]), 0.0), width), min(max(float(box[3]), 0.0), height)]


def box_closeness(pred: Sequence[float], gt: Sequence[float], image_size: Sequence[float]) -> float:
    """Harmonic mean over k in (x1, y1, x2, y2) of ``c_k = 1 - |pred_k - gt_k| / D_k`` (D = width for x, height
    for y), in [0, 1]; 0 when any c_k is 0. The prediction is first clipped to the image (our choice: the repo
    does not clip, and a coordinate far off-screen would make c_k negative and the harmonic mean meaningless), so
    each c_k lies in [0, 1] for a ground truth inside the image.

    >>> box_closeness([0, 0, 50, 50], [0, 0, 100, 100], [200, 100])  # c = (1, 1, 0.75, 0.5)
    0.75
    """
    if image_size is None or len(image_size) != 2 or not all(float(d) > 0 for d in image_size):
        raise ValueError(f"image_size must be [width, height] with both > 0, got {image_size!r}")
    pred = clip_box(pred, image_size)
    dims = (float(image_size[0]), float(image_size[1])) * 2  # (W, H, W, H) for (x1, y1, x2, y2)
    inverse = 0.0
    for p, g, d in zip(pred, gt, dims):
        c = 1.0 - abs(p - float(g)) / d
        if c <= 0.0:
            return 0.0
        inverse += 1.0 / min(c, 1.0)
    return 4.0 / inverse


# ---- rewards ------------------------------------------------------------------------------------------

def _score(completions: list, solution: Sequence | None, term: Callable[[Box, Sequence[float], int], float],
           name: str) -> list[float | None]:
    """Apply `term(pred, gt, row)` per row: None without ground truth, 0.0 on a parse failure."""
    if solution is None:
        raise ValueError(f"{name} needs a `solution` column ([x1, y1, x2, y2] absolute pixels)")
    out: list[float | None] = []
    for i, (completion, gt) in enumerate(zip(completions, solution, strict=True)):
        if gt is None:
            out.append(None)
            continue
        pred = first_box(completion)
        out.append(0.0 if pred is None else float(term(pred, gt, i)))
    return out


@register_reward("gui_hit")
def gui_hit(prompts: list, completions: list, *, solution: Sequence | None = None, weight: float = HIT_WEIGHT,
            **kwargs) -> list[float | None]:
    """R_Hit: `weight` (default 1, from the repo's ``grpo_rec.py`` [repo]) when the first predicted box's centre
    lies inside the ``solution`` box (edges included), else 0; 0 on a parse failure, None where solution is None.

    >>> gui_hit(None, ['[{"bbox_2d": [10, 10, 20, 20]}]', "[0, 0, 4, 4]", "no box"], solution=[[12, 12, 30, 30]] * 3)
    [1.0, 0.0, 0.0]
    """
    return _score(completions, solution, lambda p, g, i: weight if centre_hit(p, g) else 0.0, "gui_hit")


@register_reward("gui_iou")
def gui_iou(prompts: list, completions: list, *, solution: Sequence | None = None, weight: float = IOU_WEIGHT,
            **kwargs) -> list[float | None]:
    """R_IoU: ``weight * IoU(first predicted box, solution)`` (weight 0.25 from the repo's ``grpo_rec.py``
    [repo]; plain continuous IoU); 0 on a parse failure, None where solution is None.

    >>> gui_iou(None, ["[0, 0, 10, 10]", "[5, 0, 15, 10]"], solution=[[0, 0, 10, 10]] * 2)
    [0.25, 0.08333333333333333]
    """
    return _score(completions, solution, lambda p, g, i: weight * box_iou(p, g), "gui_iou")


@register_reward("gui_box")
def gui_box(prompts: list, completions: list, *, solution: Sequence | None = None,
            image_size: Sequence | None = None, weight: float = BOX_WEIGHT, **kwargs) -> list[float | None]:
    """R_Box, the box-size constraint: ``weight * 4 / sum_k 1 / (1 - |pred_k - gt_k| / D_k)`` over the four
    coordinates, D = image width for x and height for y (``image_size`` column, ``[width, height]``), i.e. weight
    x the harmonic mean of the closenesses (`box_closeness`; the prediction is clipped to the image first, and a
    closeness of 0 gives 0). Weight 0.125 from the repo's ``grpo_rec.py`` [repo]. 0 on a parse failure, None
    where solution is None.

    >>> gui_box(None, ["[0, 0, 50, 50]"], solution=[[0, 0, 100, 100]], image_size=[[200, 100]])
    [0.09375]
    """
    if image_size is None:
        raise ValueError("gui_box needs an `image_size` column ([width, height] of the image the boxes refer to)")
    sizes = list(image_size)
    if len(sizes) != len(completions):
        raise ValueError(f"gui_box: image_size has {len(sizes)} values for {len(completions)} completions")
    return _score(completions, solution, lambda p, g, i: weight * box_closeness(p, g, sizes[i]), "gui_box")


# ---- difficulty weights (the per-sample `rate`) ------------------------------------------------------

BOX_AREA_REF_RATIO = 0.04
"""Box-area / image-area ratio that weighs 1 in `box_area_weight` (about the median target of `gui_screens`)."""


def box_area_weight(box: Sequence[float], image_size: Sequence[float], *, ref_ratio: float = BOX_AREA_REF_RATIO,
                    power: float = 0.5, low: float = 0.5, high: float = 2.0) -> float:
    """Difficulty coefficient from the target's relative size: ``clip((a / ref_ratio) ** -power, low, high)``,
    ``a = box area / (width * height)`` [unverified].

    The paper ties difficulty to the relative size of the target box (small targets are hard) but the exact
    formula of the repo's ``rate`` is not in the repo (its shipped sample has ``rate: 1``; spec 5(c)), so this
    bounded, normalised inverse area ratio is our choice: a box of `ref_ratio` of the screen weighs 1, one 4x
    smaller 2 (the cap `high`), one 4x larger 0.5 (the floor `low`); an empty box weighs `high`.

    >>> box_area_weight([0, 0, 20, 20], [100, 100]), box_area_weight([0, 0, 5, 5], [100, 100])
    (1.0, 2.0)
    """
    if not (ref_ratio > 0 and power >= 0 and 0 < low <= high):
        raise ValueError(f"box_area_weight: need ref_ratio > 0, power >= 0 and 0 < low <= high; got "
                         f"ref_ratio={ref_ratio}, power={power}, low={low}, high={high}")
    width, height = float(image_size[0]), float(image_size[1])
    if not (width > 0 and height > 0):
        raise ValueError(f"image_size must be [width, height] with both > 0, got {image_size!r}")
    ratio = box_area(box) / (width * height)
    if ratio <= 0:
        return float(high)
    return float(min(max((ratio / ref_ratio) ** -power, low), high))


def uniform_weight(box: Sequence[float], image_size: Sequence[float]) -> float:
    """1.0 for every sample (GRPO's uniform weighting; the repo's shipped sample has ``rate: 1``)."""
    return 1.0


DIFFICULTY_WEIGHTS: dict[str, Callable[..., float]] = {"box_area": box_area_weight, "uniform": uniform_weight}
"""Difficulty-coefficient functions ``fn(box, image_size, **options) -> float`` by name."""


def difficulty_weight(name: str, box: Sequence[float], image_size: Sequence[float], **kw) -> float:
    """The difficulty coefficient of the target `box` on an image of `image_size` by the function `name`.

    >>> difficulty_weight("uniform", [0, 0, 1, 1], [10, 10])
    1.0
    """
    fn = DIFFICULTY_WEIGHTS.get(name)
    if fn is None:
        raise ValueError(f"unknown difficulty weight {name!r}; choices: {', '.join(sorted(DIFFICULTY_WEIGHTS))}")
    return fn(box, image_size, **kw)


# ---- evaluation ---------------------------------------------------------------------------------------

def box_metrics(completions: Sequence, solution: Sequence, image_size: Sequence) -> dict[str, float]:
    """Grounding metrics over a batch: ``{"hit_rate", "mean_iou", "area_ratio", "parse_failure_rate", "n"}``.

    `hit_rate` and `mean_iou` are over all rows (a parse failure counts as a miss with IoU 0); `area_ratio` is the
    mean of (predicted-box area inside the image) / (ground-truth area) over the rows that parsed (NaN if none
    did, ground truths of zero area skipped): above 1 the model draws boxes too big (IoU hacking), well below 1
    too small (hit hacking). `n` is the row count; an empty batch gives NaN rates.

    >>> box_metrics(["[0, 0, 10, 10]", "[0, 0, 20, 20]", "oops"], [[0, 0, 10, 10]] * 3, [[100, 100]] * 3)
    {'hit_rate': 0.6666666666666666, 'mean_iou': 0.4166666666666667, 'area_ratio': 2.5, 'parse_failure_rate': 0.3333333333333333, 'n': 3}
    """
    rows = list(zip(completions, solution, image_size, strict=True))
    if not rows:
        nan = float("nan")
        return {"hit_rate": nan, "mean_iou": nan, "area_ratio": nan, "parse_failure_rate": nan, "n": 0}
    hits, ious, ratios, failures = 0, 0.0, [], 0
    for completion, gt, size in rows:
        pred = first_box(completion)
        if pred is None:
            failures += 1
            continue
        hits += centre_hit(pred, gt)
        ious += box_iou(pred, gt)
        gt_area = box_area(gt)
        if gt_area > 0:
            ratios.append(box_area(clip_box(pred, size)) / gt_area)
    n = len(rows)
    return {"hit_rate": hits / n, "mean_iou": ious / n,
            "area_ratio": sum(ratios) / len(ratios) if ratios else float("nan"),
            "parse_failure_rate": failures / n, "n": n}
