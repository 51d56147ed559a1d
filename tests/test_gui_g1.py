"""GUI-G1 (spec 5): box parsing, the hit / IoU / box-size rewards, difficulty weights, box metrics and the synthetic
screen task. No model."""

from __future__ import annotations

import doctest
import itertools
import json
import math
from collections import Counter

import pytest

import datamodules.tasks.gui_screens as screens
import modules.papers.gui_g1.rewards as g1
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from modules.papers.gui_g1.rewards import (
    DIFFICULTY_WEIGHTS,
    box_metrics,
    difficulty_weight,
    gui_box,
    gui_hit,
    gui_iou,
    parse_boxes,
)
from modules.rewards import RewardSet, get_reward

W, H = 224, 168
GT = [92, 74, 132, 94]  # 40 x 20, centred on the screen's centre (112, 84)
SIZE = [W, H]


def answer(box) -> str:
    return f'```json\n[{{"bbox_2d": {json.dumps(box)}}}]\n```'


def score_all(completions, solution=GT, size=SIZE):
    n = len(completions)
    kw = {"solution": [solution] * n}
    return (gui_hit(None, completions, **kw), gui_iou(None, completions, **kw),
            gui_box(None, completions, **kw, image_size=[size] * n))


def test_doctests():
    for module in (g1, screens):
        result = doctest.testmod(module)
        assert result.failed == 0


# ---- parsing --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (answer([1, 2, 3, 4]), [[1.0, 2.0, 3.0, 4.0]]),
    ('Here it is: ```json [{"bbox_2d": [1, 2, 3, 4]}] ``` done', [[1.0, 2.0, 3.0, 4.0]]),
    ('```\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', [[1.0, 2.0, 3.0, 4.0]]),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4]}]', [[1.0, 2.0, 3.0, 4.0]]),  # unclosed fence
    ("[{'bbox_2d': [1.5, 2, 3, 4]}, {'bbox_2d': [5, 6, 7, 8]}]", [[1.5, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
    ('{"bbox_2d": [1, 2, 3, 4]}', [[1.0, 2.0, 3.0, 4.0]]),
    ("[1, 2, 3, 4]", [[1.0, 2.0, 3.0, 4.0]]),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": null}]', [[1.0, 2.0, 3.0, 4.0]]),  # JSON null: json.loads fallback
    ('[{"bbox_2d": [5, 5, 5, 9]}]', [[5.0, 5.0, 5.0, 9.0]]),  # zero width is allowed
    ([{"role": "assistant", "content": "[1, 2, 3, 4]"}], [[1.0, 2.0, 3.0, 4.0]]),  # chat form
])
def test_parse_boxes_accepts(text, expected):
    assert parse_boxes(text) == expected


@pytest.mark.parametrize("text", [
    "", "click the Save button", "[]", "{}", "[1, 2, 3]", "[1, 2, 3, 4, 5]", '[{"box": [1, 2, 3, 4]}]',
    '[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [1, 2]}]', '[{"bbox_2d": ["1", 2, 3, 4]}]', "[True, 2, 3, 4]",
    "[30, 20, 10, 40]", "[10, 40, 30, 20]", '[{"bbox_2d": [1, 2, 3, 4]}, [1, 2, 3, 4]]', "[NaN, 1, 2, 3]",
    "[[1, 2, 3, 4]]", "```json\n[{'bbox_2d': [1, 2, 3, 4]\n```",
])
def test_parse_boxes_rejects(text):
    assert parse_boxes(text) is None


def test_a_parse_failure_scores_zero_on_every_term():
    bad = ["no box here", "[132, 94, 92, 74]", '[{"bbox_2d": [92, 74, 132]}]']
    for values in score_all(bad):
        assert values == [0.0, 0.0, 0.0]


def test_rows_without_ground_truth_score_none():
    assert gui_hit(None, [answer(GT)], solution=[None]) == [None]
    assert gui_box(None, [answer(GT)], solution=[None], image_size=[SIZE]) == [None]
    with pytest.raises(ValueError, match="solution"):
        gui_iou(None, [answer(GT)])
    with pytest.raises(ValueError, match="image_size"):
        gui_box(None, [answer(GT)], solution=[GT])


# ---- rewards --------------------------------------------------------------------------------------------

def test_exact_box_scores_the_paper_weights():
    hit, iou, box = score_all([answer(GT)])
    assert hit == [1.0] and iou == [0.25] and box == [0.125]


def test_hit_uses_the_centre_with_inclusive_edges():
    completions = [answer([80, 70, 104, 78]),  # centre (92, 74): the GT's top-left corner -> inside
                   answer([80, 70, 103, 78]),  # centre (91.5, 74): just left of it
                   answer([0, 0, 264, 188])]   # centre (132, 94): bottom-right corner -> inside
    assert gui_hit(None, completions, solution=[GT] * 3) == [1.0, 0.0, 1.0]


def test_hacking_tiny_box_centred_on_the_target():
    """Hit-only training shrinks boxes: a 1-pixel box at the centre still hits, but its IoU is about 0."""
    hit, iou, box = score_all([answer([111.5, 83.5, 112.5, 84.5])])
    assert hit == [1.0]
    assert iou[0] == pytest.approx(0.25 * 1 / 800)
    assert iou[0] < 0.001
    exact = score_all([answer(GT)])[2][0]
    assert box[0] < exact


def test_hacking_huge_box_covering_the_screen():
    """IoU-only training inflates boxes: a screen-sized box hits the centre but gets low IoU and box closeness."""
    hit, iou, box = score_all([answer([0, 0, W, H])])
    assert hit == [1.0]
    assert iou[0] == pytest.approx(0.25 * 800 / (W * H))
    assert iou[0] < 0.01
    c = [1 - 92 / W, 1 - 74 / H, 1 - 92 / W, 1 - 74 / H]
    assert box[0] == pytest.approx(0.125 * 4 / sum(1 / x for x in c))
    assert box[0] < 0.6 * 0.125
    near = score_all([answer([90, 72, 134, 96])])[2][0]  # 2 pixels off on every side
    assert box[0] < near < 0.125


def test_box_closeness_hand_computed_and_clipped():
    # c = (1 - 10/100, 1, 1 - 10/100, 1) on a 100 x 200 image
    value = gui_box(None, ["[10, 20, 50, 60]"], solution=[[20, 20, 40, 60]], image_size=[[100, 200]])[0]
    assert value == pytest.approx(0.125 * 4 / (2 / 0.9 + 2))
    assert value == pytest.approx(0.11842105263157894)
    # an off-screen prediction is clipped to the image: same value as the screen-sized box, not negative closeness
    huge = score_all([answer([-1000, -1000, 5000, 5000]), answer([0, 0, W, H])])[2]
    assert huge[0] == pytest.approx(huge[1]) and huge[0] > 0
    # a closeness of exactly 0 (x1 a full image width away) gives 0
    assert gui_box(None, ["[100, 0, 100, 10]"], solution=[[0, 0, 100, 10]], image_size=[[100, 50]]) == [0.0]


def test_weights_are_keyword_arguments_and_configurable_through_reward_specs():
    assert gui_iou(None, [answer(GT)], solution=[GT], weight=1.0) == [1.0]
    assert gui_hit(None, [answer(GT)], solution=[GT], weight=2.0) == [2.0]
    assert gui_box(None, [answer(GT)], solution=[GT], image_size=[SIZE], weight=1.0) == [1.0]
    assert get_reward("gui_hit") is gui_hit and get_reward("gui_iou") is gui_iou and get_reward("gui_box") is gui_box
    rewards = RewardSet.from_specs(["gui_hit", "gui_iou", {"name": "gui_box", "kwargs": {"weight": 0.5}}])
    per_func, total = rewards(None, [answer(GT), "nothing"], {"solution": [GT, GT], "image_size": [SIZE, SIZE]})
    assert per_func.tolist() == [[1.0, 0.25, 0.5], [0.0, 0.0, 0.0]]
    assert total.tolist() == [1.75, 0.0]


def test_first_box_is_scored():
    two = '[{"bbox_2d": [92, 74, 132, 94]}, {"bbox_2d": [0, 0, 10, 10]}]'
    swapped = '[{"bbox_2d": [0, 0, 10, 10]}, {"bbox_2d": [92, 74, 132, 94]}]'
    small = score_all([answer([0, 0, 10, 10])])
    assert score_all([two, swapped]) == ([1.0, small[0][0]], [0.25, small[1][0]], [0.125, small[2][0]])
    assert small[0][0] == 0.0 and small[2][0] < 0.125


# ---- difficulty weights ---------------------------------------------------------------------------------

def test_box_area_weight_is_monotone_bounded_and_normalised():
    sides = [1, 2, 5, 10, 20, 30, 50, 80, 100]
    weights = [difficulty_weight("box_area", [0, 0, s, s], [100, 100]) for s in sides]
    assert all(a >= b for a, b in itertools.pairwise(weights))  # smaller boxes weigh more
    assert weights[0] > weights[-1]
    assert all(0.5 <= w <= 2.0 for w in weights)
    assert weights[0] == 2.0 and weights[-1] == 0.5  # the bounds are reached
    assert difficulty_weight("box_area", [0, 0, 20, 20], [100, 100]) == pytest.approx(1.0)  # ratio 0.04 = ref
    # strictly between the bounds: the formula (ratio / ref) ** -0.5
    assert difficulty_weight("box_area", [0, 0, 10, 20], [100, 100]) == pytest.approx((0.02 / 0.04) ** -0.5)
    assert difficulty_weight("box_area", [5, 5, 5, 9], [100, 100]) == 2.0  # empty box: the cap
    assert difficulty_weight("box_area", [0, 0, 10, 10], [100, 100], low=0.1, high=10.0) == pytest.approx(2.0)
    assert difficulty_weight("box_area", [0, 0, 1, 1], [100, 100], high=3.0) == 3.0


def test_uniform_weight_and_unknown_names():
    assert set(DIFFICULTY_WEIGHTS) >= {"box_area", "uniform"}
    assert difficulty_weight("uniform", [0, 0, 1, 1], [100, 100]) == 1.0
    with pytest.raises(ValueError, match=r"'inverse'.*box_area.*uniform"):
        difficulty_weight("inverse", [0, 0, 1, 1], [100, 100])
    with pytest.raises(ValueError, match="image_size"):
        difficulty_weight("box_area", [0, 0, 1, 1], [0, 100])
    with pytest.raises(ValueError, match="low"):
        difficulty_weight("box_area", [0, 0, 1, 1], [100, 100], low=3.0, high=2.0)


# ---- metrics --------------------------------------------------------------------------------------------

def test_box_metrics_on_a_hand_made_batch():
    completions = [answer(GT),                    # hit, IoU 1, area ratio 1
                   answer([0, 0, W, H]),          # hit, IoU 800 / 37632, area ratio 37632 / 800
                   answer([0, 0, 10, 10]),        # miss, IoU 0, area ratio 100 / 800
                   "I cannot see it"]             # parse failure
    m = box_metrics(completions, [GT] * 4, [SIZE] * 4)
    assert m["n"] == 4
    assert m["hit_rate"] == pytest.approx(2 / 4)
    assert m["mean_iou"] == pytest.approx((1 + 800 / (W * H)) / 4)
    assert m["area_ratio"] == pytest.approx((1 + W * H / 800 + 100 / 800) / 3)
    assert m["parse_failure_rate"] == pytest.approx(1 / 4)
    # the area inside the image counts: an off-screen box has the screen's ratio
    off = box_metrics([answer([-50, -50, W + 50, H + 50])], [GT], [SIZE])
    assert off["area_ratio"] == pytest.approx(W * H / 800)
    empty = box_metrics([], [], [])
    assert empty["n"] == 0 and math.isnan(empty["hit_rate"])
    failed = box_metrics(["x"], [GT], [SIZE])
    assert failed["parse_failure_rate"] == 1.0 and math.isnan(failed["area_ratio"]) and failed["hit_rate"] == 0.0


# ---- the task -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return screens.make_gui_screens(40, seed=7)


def test_rows_schema_and_question(rows):
    for row in rows:
        assert set(row) == {"question", "images", "solution", "image_size", "rate", "difficulty", "label",
                            "elements"}
        assert row["question"] == (f"Grounding instruction is: click the UI element {row['label']}. "
                                   "Report the bbox coordinates in JSON format.")
        assert row["image_size"] == [W, H] and W % 28 == 0 and H % 28 == 0
        (image,) = row["images"]
        assert image.mode == "RGB" and image.size == (W, H)
        assert all(isinstance(v, int) for v in row["solution"])
        labels = [e["label"] for e in row["elements"]]
        assert len(set(labels)) == len(labels) and 3 <= len(labels) <= 8
        assert len({tuple(e["color"]) for e in row["elements"]}) == len(labels)
        target = next(e for e in row["elements"] if e["label"] == row["label"])
        assert target["box"] == row["solution"]
        assert row["rate"] == pytest.approx(difficulty_weight("box_area", row["solution"], [W, H]))
        x1, y1, x2, y2 = row["solution"]
        ratio = (x2 - x1) * (y2 - y1) / (W * H)
        lo, hi = screens.DIFFICULTY_THRESHOLDS
        assert row["difficulty"] == ("hard" if ratio < lo else "medium" if ratio < hi else "easy")


def test_boxes_inside_the_image_and_apart(rows):
    for row in rows:
        boxes = [e["box"] for e in row["elements"]]
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w < 0 or overlap_h < 0, (a, b)  # apart, not even touching


def test_the_rendered_target_has_its_colour_and_a_label(rows):
    for row in rows:
        image = row["images"][0]
        x1, y1, x2, y2 = row["solution"]
        color = tuple(next(e["color"] for e in row["elements"] if e["label"] == row["label"]))
        assert color in screens.PALETTE
        for x, y in ((x1, y1), (x2 - 1, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)):  # inner corners
            assert image.getpixel((x, y)) == color
        inside = Counter(image.crop((x1, y1, x2, y2)).getdata())
        assert inside.most_common(1)[0][0] == color
        assert inside[color] >= 0.5 * (x2 - x1) * (y2 - y1)
        assert len(inside) >= 2  # the label's ink is drawn inside
        background = image.getpixel((0, 0))
        assert background not in screens.PALETTE and min(background) >= 232
        for x in range(x1, x2):  # one pixel outside the box is background on every side
            assert image.getpixel((x, y1 - 1)) == background and image.getpixel((x, y2)) == background
        for y in range(y1, y2):
            assert image.getpixel((x1 - 1, y)) == background and image.getpixel((x2, y)) == background


def test_deterministic_per_seed_and_varied():
    a, b = screens.make_gui_screens(6, seed=3), screens.make_gui_screens(6, seed=3)
    c = screens.make_gui_screens(6, seed=4)
    for ra, rb in zip(a, b):
        assert ra["images"][0].tobytes() == rb["images"][0].tobytes()
        assert {k: v for k, v in ra.items() if k != "images"} == {k: v for k, v in rb.items() if k != "images"}
    assert [r["solution"] for r in a] != [r["solution"] for r in c]
    assert a[0]["images"][0].tobytes() != c[0]["images"][0].tobytes()
    many = screens.make_gui_screens(60, seed=0)
    assert len({(r["question"], tuple(r["solution"])) for r in many}) >= 55
    assert len({r["label"] for r in many}) >= 25
    assert len({r["difficulty"] for r in many}) == 3


def test_task_options_and_registry():
    rows = make_task("gui_screens", 3, seed=1, weighting="uniform", width=280, height=224, min_elements=2,
                     max_elements=2)
    assert [r["rate"] for r in rows] == [1.0, 1.0, 1.0]
    assert all(len(r["elements"]) == 2 and r["images"][0].size == (280, 224) for r in rows)
    assert screens.make_gui_screens(0) == []
    with pytest.raises(DataConfigError, match="weighting"):
        screens.make_gui_screens(1, weighting="nope")
    with pytest.raises(DataConfigError, match="min_elements"):
        screens.make_gui_screens(1, min_elements=5, max_elements=4)
    with pytest.raises(DataConfigError, match="too small"):
        screens.make_gui_screens(1, width=28, height=28)
    with pytest.raises(DataConfigError, match="could not place"):
        screens.make_gui_screens(1, width=56, height=28, min_elements=8)


def test_a_perfect_answer_to_each_row_scores_the_maximum(rows):
    completions = [answer(r["solution"]) for r in rows]
    columns = {"solution": [r["solution"] for r in rows], "image_size": [r["image_size"] for r in rows]}
    _, total = RewardSet.from_specs(["gui_hit", "gui_iou", "gui_box"])(None, completions, columns)
    assert total.tolist() == pytest.approx([1.375] * len(rows))
    m = box_metrics(completions, columns["solution"], columns["image_size"])
    assert m["hit_rate"] == 1.0 and m["mean_iou"] == 1.0 and m["area_ratio"] == 1.0
