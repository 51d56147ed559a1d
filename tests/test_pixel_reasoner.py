"""Pixel Reasoner (spec 2): the crop / select-frames tools, the answer reward, RaPR, the curiosity bonus and the
efficiency penalty in both forms, the synthetic pixel-search task and the warm-start traces. No model."""

from __future__ import annotations

import doctest
import json

import pytest
import torch
from PIL import Image

import datamodules.tasks.pixel_search as ps
import modules.papers.pixel_reasoner.rewards as pr
import modules.papers.pixel_reasoner.tools as pt
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from modules.papers.pixel_reasoner import (
    TOOLS,
    crop_image_normalized,
    curiosity_bonus,
    efficiency_penalty,
    group_modifiers,
    pixel_answer,
    rapr,
    select_frames,
)
from modules.rewards import get_reward
from modules.rewards.accuracy import extract_boxed
from modules.rollout.tools import ToolCallFormat
from modules.vision import chat_messages

TOOL_NAMES = list(TOOLS)


def ink_pixels(image: Image.Image, limit: int = 50) -> list[tuple[int, int]]:
    """(x, y) of the pixels dark on every channel: only the answer glyph is drawn that dark."""
    w = image.width
    return [(i % w, i // w) for i, p in enumerate(image.convert("RGB").getdata()) if max(p) < limit]


def call(tool, row, **arguments):
    return tool(json.dumps(arguments), row)


@pytest.fixture(scope="module")
def rows():
    return make_task("pixel_search", 6, seed=5)


def test_doctests():
    for module in (pr, pt, ps):
        assert doctest.testmod(module).failed == 0, module.__name__


# ---- crop_image_normalized -----------------------------------------------------------------------------

def gradient(width=100, height=50) -> Image.Image:
    """Pixel (x, y) = (x, y, 0): a crop's first pixel tells where it starts."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x, y, 0) for y in range(height) for x in range(width)])
    return image


def test_crop_region_is_the_box_rounded_outwards():
    row = {"images_seen": [gradient()]}
    crop = crop_image_normalized('{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1}', row, zoom_min_side=1)
    assert crop.size == (20, 10) and crop.getpixel((0, 0)) == (10, 10, 0) and crop.getpixel((19, 9)) == (29, 19, 0)
    # 0.105 * 100 = 10.5 -> starts at pixel 10; 0.295 * 100 = 29.5 -> ends after pixel 29
    crop = crop_image_normalized('{"bbox_2d": [0.105, 0.2, 0.295, 0.4], "target_image": 1}', row, zoom_min_side=1)
    assert crop.size == (20, 10) and crop.getpixel((0, 0)) == (10, 10, 0)
    padded = crop_image_normalized('{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1}', row, zoom_min_side=1,
                                   padding=0.1)
    assert padded.size == (40, 20) and padded.getpixel((0, 0)) == (0, 5, 0)


def test_target_image_is_one_based_over_images_seen():
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    row = {"images_seen": [red, blue]}
    assert call(crop_image_normalized, row, bbox_2d=[0, 0, 0.5, 0.5], target_image=1).getpixel((3, 3)) == (255, 0, 0)
    assert call(crop_image_normalized, row, bbox_2d=[0, 0, 0.5, 0.5], target_image=2).getpixel((3, 3)) == (0, 0, 255)
    assert call(crop_image_normalized, row, bbox_2d=[0, 0, 0.5, 0.5], target_image=2.0).getpixel((3, 3)) == (0, 0, 255)


def test_zoom_size_rule():
    assert pt.zoom_size(8, 6) == (224, 168)  # longer side up to 224, aspect kept
    assert pt.zoom_size(4, 100) == (8, 224)
    assert pt.zoom_size(300, 120) == (300, 120)  # already long enough: unchanged
    assert pt.zoom_size(20, 10, zoom_min_side=1000) == (633, 316)  # capped: s = sqrt(448 * 448 / 200), floored
    assert 633 * 316 <= pt.ZOOM_MAX_PIXELS < 634 * 317
    assert pt.zoom_size(1000, 500, zoom_max_pixels=200 * 100) == (200, 100)  # a large crop shrinks to the cap
    crop = call(crop_image_normalized, {"images_seen": [gradient()]}, bbox_2d=[0.1, 0.2, 0.3, 0.4], target_image=1)
    assert crop.size == (224, 112)
    crop = crop_image_normalized('{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "target_image": 1}',
                                 {"images_seen": [gradient()]}, zoom_min_side=56)
    assert crop.size == (56, 28)


def test_crop_of_the_glyph_box_holds_the_glyph(rows):
    for row in (r for r in rows if r["kind"] == "zoom"):
        x1, y1, x2, y2 = row["target_bbox"]
        seen = {"images_seen": row["images"]}
        crop = call(crop_image_normalized, seen, bbox_2d=[x1 - 0.02, y1 - 0.02, x2 + 0.02, y2 + 0.02], target_image=1)
        assert max(crop.size) >= 224 and len(ink_pixels(crop)) > 50  # a 6-px glyph, about 8x larger
        far = [0.0, 0.0, 0.2, 0.2] if x1 > 0.5 or y1 > 0.5 else [0.8, 0.8, 1.0, 1.0]
        assert ink_pixels(call(crop_image_normalized, seen, bbox_2d=far, target_image=1)) == []


IMG_ROW = {"images_seen": [Image.new("RGB", (224, 224), "white"), Image.new("RGB", (224, 224), "white")]}
CROP_ERRORS = [
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": ', "not valid JSON"),
    ("[0, 0, 1, 1]", "must be a JSON object"),
    ('{"bbox_2d": [0, 0, 1, 1]}', "missing argument 'target_image'"),
    ('{"target_image": 1}', "missing argument 'bbox_2d'"),
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": 0}', "target_image=0 is out of range; images are numbered 1 to 2"),
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": 3}', "target_image=3 is out of range"),
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": 1.5}', "target_image=1.5 is out of range"),
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": "1"}', "target_image='1' is out of range"),
    ('{"bbox_2d": [0, 0, 1, 1], "target_image": true}', "target_image=True is out of range"),
    ('{"bbox_2d": [0, 0, 1], "target_image": 1}', "bbox_2d=[0, 0, 1] must be a list of 4 numbers"),
    ('{"bbox_2d": "0,0,1,1", "target_image": 1}', "bbox_2d='0,0,1,1' must be a list of 4 numbers"),
    ('{"bbox_2d": ["a", 0, 1, 1], "target_image": 1}', "bbox_2d=['a', 0, 1, 1] must hold 4 finite numbers"),
    ('{"bbox_2d": [NaN, 0, 1, 1], "target_image": 1}', "bbox_2d=[nan, 0, 1, 1] must hold 4 finite numbers"),
    ('{"bbox_2d": [0, 0, 1.2, 1], "target_image": 1}', "bbox_2d=[0, 0, 1.2, 1] has a coordinate outside [0, 1]"),
    ('{"bbox_2d": [-0.1, 0, 1, 1], "target_image": 1}', "has a coordinate outside [0, 1]"),
    ('{"bbox_2d": [10, 20, 50, 60], "target_image": 1}', "has a coordinate outside [0, 1]"),
    ('{"bbox_2d": [0.5, 0, 0.5, 1], "target_image": 1}', "bbox_2d=[0.5, 0, 0.5, 1] needs x1 < x2 and y1 < y2"),
    ('{"bbox_2d": [0.6, 0, 0.5, 1], "target_image": 1}', "needs x1 < x2"),
    ('{"bbox_2d": [0, 0.7, 1, 0.2], "target_image": 1}', "needs x1 < x2 and y1 < y2"),
    ('{"bbox_2d": [0.5, 0.5, 0.51, 0.9], "target_image": 1}',
     "selects only 3 x 90 pixels of image 1 (224 x 224); a crop needs at least 4 pixels"),
]


@pytest.mark.parametrize("arguments,message", CROP_ERRORS)
def test_crop_errors_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match="crop_image_normalized: ") as err:
        crop_image_normalized(arguments, IMG_ROW)
    assert message in str(err.value)


def test_crop_minimum_size_is_a_keyword_and_no_images_is_an_error():
    arguments = '{"bbox_2d": [0.5, 0.5, 0.51, 0.51], "target_image": 1}'  # 3 x 3 source pixels
    assert crop_image_normalized(arguments, IMG_ROW, min_crop_px=3).size == (224, 224)
    with pytest.raises(ValueError, match="target_image=1 but this rollout has no image"):
        crop_image_normalized('{"bbox_2d": [0, 0, 1, 1], "target_image": 1}', {"images_seen": []})


# ---- select_frames ----------------------------------------------------------------------------------------

FRAMES = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(16)]


def test_select_frames_order_and_limit():
    picked = call(select_frames, {"frames": FRAMES}, target_frames=[16, 1, 7])
    assert [f.getpixel((0, 0))[0] for f in picked] == [15, 0, 6]  # 1-based, in the order asked
    assert len(select_frames(json.dumps({"target_frames": list(range(1, 9))}), {"frames": FRAMES}, max_frames=8)) == 8
    assert [f.getpixel((0, 0))[0] for f in call(select_frames, {"frames": FRAMES}, target_frames=[3.0])] == [2]


FRAME_ERRORS = [
    ('{"target_frames": [1', "not valid JSON"),
    ('{"frames": [1]}', "missing argument 'target_frames'"),
    ('{"target_frames": []}', "target_frames=[] is empty; give 1 to 4 frame numbers from 1 to 16"),
    ('{"target_frames": 3}', "target_frames=3 must be a list"),
    ('{"target_frames": [1, 2, 3, 4, 5]}', "target_frames=[1, 2, 3, 4, 5] selects 5 frames; select at most 4"),
    ('{"target_frames": [0, 2]}', "target_frames=[0, 2] holds 0, out of range; frames are numbered 1 to 16"),
    ('{"target_frames": [17]}', "holds 17, out of range"),
    ('{"target_frames": [2, 5, 2]}', "target_frames=[2, 5, 2] repeats frame 2"),
    ('{"target_frames": [1.5]}', "target_frames=[1.5] holds 1.5; frame numbers are integers"),
    ('{"target_frames": ["2"]}', "holds '2'; frame numbers are integers"),
    ('{"target_frames": [true]}', "holds True; frame numbers are integers"),
]


@pytest.mark.parametrize("arguments,message", FRAME_ERRORS)
def test_select_frames_errors_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match="select_frames: ") as err:
        select_frames(arguments, {"frames": FRAMES})
    assert message in str(err.value)


@pytest.mark.parametrize("row", [{}, {"frames": None}, {"frames": []}])
def test_select_frames_without_a_video(row):
    with pytest.raises(ValueError, match=r"target_frames=\[1\] but this question has no video frames"):
        select_frames('{"target_frames": [1]}', row)


def test_tool_specs_and_prompt_list_both_tools():
    specs = pt.tool_specs(max_frames=8)
    assert [s["function"]["name"] for s in specs] == list(TOOLS) == ["crop_image_normalized", "select_frames"]
    assert specs[0]["function"]["parameters"]["required"] == ["bbox_2d", "target_image"]
    assert "no more than 8 frames" in json.dumps(specs[1])
    prompt = pt.tool_system_prompt()
    assert '"name": "crop_image_normalized"' in prompt and "no more than 4 frames" in prompt
    assert "<tool_call>" in prompt


# ---- answer reward -----------------------------------------------------------------------------------------

def test_pixel_answer():
    completions = [r"I see \boxed{ k }.", r"\boxed{\text{K}}", r"\boxed{X}", "K", r"\boxed{7}", r"\boxed{K}"]
    gold = ["K", "K", "K", "K", "7", None]
    assert pixel_answer(None, completions, answer=gold) == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    forced = pixel_answer(None, completions, answer=gold, last_tool_error=[True, False, False, False, True, False])
    assert forced == [0.0, 1.0, 0.0, 0.0, 0.0, None]  # an error never fixed zeroes a correct answer
    assert pixel_answer(None, [[{"role": "assistant", "content": r"\boxed{K}"}]], answer=["K"]) == [1.0]
    assert get_reward("pixel_answer") is pixel_answer
    with pytest.raises(ValueError, match="needs the per-row column 'answer'"):
        pixel_answer(None, ["x"])
    with pytest.raises(ValueError, match="give one per row"):
        pixel_answer(None, ["x", "y"], answer=["K", "K"], last_tool_error=[False])


# ---- RaPR, curiosity, penalty ----------------------------------------------------------------------------

G8_ONE, G8_TWO, G8_THREE = [1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]


def test_rapr():
    assert rapr([True, False, False, True]) == 0.5
    assert rapr(torch.tensor([0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)) == 0.125
    assert rapr([0, 0, 0]) == 0.0 and rapr([1, 1]) == 1.0
    assert rapr([1, 0], correct=[0, 1]) == rapr([1, 0], correct=[1, 1]) == 0.5  # correctness does not enter
    with pytest.raises(ValueError, match="empty"):
        rapr([])
    with pytest.raises(ValueError, match="2 used_tool values but 3 correct"):
        rapr([1, 0], correct=[1, 0, 1])
    with pytest.raises(ValueError, match=r"shape \(G,\)"):
        rapr(torch.zeros(2, 4))


def test_curiosity_paper_form():
    # RaPR 1/8: alpha * (0.3 - 0.125) = 0.5 * 0.175; RaPR 2/8: 0.5 * 0.05; RaPR 3/8 >= H: nothing
    assert curiosity_bonus(G8_ONE) == pytest.approx([0.0875] + [0.0] * 7)
    assert curiosity_bonus(G8_TWO) == pytest.approx([0.025, 0.025] + [0.0] * 6)
    assert curiosity_bonus(G8_THREE) == [0.0] * 8
    assert curiosity_bonus([0] * 8) == [0.0] * 8
    assert curiosity_bonus(G8_TWO, alpha=1.0, H=0.5) == pytest.approx([0.25, 0.25] + [0.0] * 6)
    assert curiosity_bonus(G8_TWO, video=True) == curiosity_bonus(G8_TWO)  # the paper form has no kind divisor


def test_curiosity_code_form():
    # 0.25 * (0.3 - RaPR) / (d * RaPR): d = 2 image, 1.5 video
    assert curiosity_bonus(G8_ONE, form="code") == pytest.approx([0.175] + [0.0] * 7)  # 0.25 * 0.175 / 0.25
    assert curiosity_bonus(G8_ONE, form="code", video=True) == pytest.approx([0.7 / 3] + [0.0] * 7)
    assert curiosity_bonus(G8_TWO, form="code") == pytest.approx([0.025, 0.025] + [0.0] * 6)
    assert curiosity_bonus(G8_TWO, form="code", video=True) == pytest.approx([0.1 / 3, 0.1 / 3] + [0.0] * 6)
    assert curiosity_bonus(G8_THREE, form="code") == [0.0] * 8
    assert curiosity_bonus([0] * 8, form="code") == [0.0] * 8  # RaPR 0: no division by zero
    for used in (G8_ONE, G8_TWO, [1, 1, 0, 0]):  # the released expression, transcribed
        r = sum(used) / len(used)
        for video, d in ((False, 2.0), (True, 1.5)):
            expected = (max(0.3 - r, 0.0) / d) / r * 0.25
            got = curiosity_bonus(torch.tensor(used), form="code", video=video)
            assert got == pytest.approx([expected if u else 0.0 for u in used])
    with pytest.raises(ValueError, match="form='repo'"):
        curiosity_bonus(G8_ONE, form="repo")


def test_efficiency_penalty_both_forms():
    calls = [0, 1, 2, 3]
    assert efficiency_penalty(calls) == pytest.approx([0.0, 0.0, -0.05, -0.1])
    assert efficiency_penalty(calls, form="code") == pytest.approx([0.0, 0.0, -0.05, -0.1])  # same when N = 1
    assert efficiency_penalty(calls, N=2) == pytest.approx([0.0, 0.0, 0.0, -0.05])
    assert efficiency_penalty(calls, form="code", N=2) == pytest.approx([0.0, 0.05, 0.0, -0.05])  # code: -b(n - N)
    assert efficiency_penalty(torch.tensor(calls), beta=0.1) == pytest.approx([0.0, 0.0, -0.1, -0.2])


def test_group_modifiers():
    used, n_calls = [1, 1, 0, 0, 0, 0, 0, 0], [1, 3, 0, 0, 0, 0, 0, 0]
    correct = [1, 0, 1, 0, 0, 0, 0, 0]
    assert group_modifiers(used, n_calls, correct) == pytest.approx([0.025, 0.025 - 0.1] + [0.0] * 6)
    code = group_modifiers(torch.tensor(used), torch.tensor(n_calls), torch.tensor(correct), form="code", video=True)
    assert code == pytest.approx([0.1 / 3, 0.1 / 3 - 0.1] + [0.0] * 6)
    assert group_modifiers(used, n_calls, form="code", N=2, beta=0.1, alpha=0.5, H=0.5) == pytest.approx(
        [0.5 * 0.25 / 0.5 + 0.1, 0.5 * 0.25 / 0.5 - 0.1] + [0.0] * 6)
    with pytest.raises(ValueError, match="one value per rollout"):
        group_modifiers([1, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="one value per rollout"):
        group_modifiers([1, 0], [1, 0], [1])


def test_pixel_shaping_groups_by_group_ids():
    tool_calls = [1, 0, 0, 0, 2, 2, 0, 0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    kind = ["zoom"] * 4 + ["video"] * 4
    got = pr.pixel_shaping(None, [""] * 8, tool_calls=tool_calls, group_ids=groups, kind=kind, form="code")
    first = group_modifiers([1, 0, 0, 0], [1, 0, 0, 0], form="code")
    second = group_modifiers([1, 1, 0, 0], [2, 2, 0, 0], form="code", video=True)
    assert got == pytest.approx(first + second) and got[0] == pytest.approx(0.25 * 0.05 / 0.5)
    assert get_reward("pixel_shaping") is pr.pixel_shaping
    with pytest.raises(ValueError, match="needs the per-row column 'tool_calls'"):
        pr.pixel_shaping(None, [""])


# ---- the task ------------------------------------------------------------------------------------------------

def test_task_is_deterministic_and_alternates(rows):
    again = ps.make_pixel_search(6, seed=5)
    assert [r["answer"] for r in rows] == [r["answer"] for r in again]
    assert all(a["images"][0].tobytes() == b["images"][0].tobytes() for a, b in zip(rows, again))
    assert rows[1]["frames"][3].tobytes() == again[1]["frames"][3].tobytes()
    other = ps.make_pixel_search(6, seed=6)
    assert any(a["images"][0].tobytes() != b["images"][0].tobytes() for a, b in zip(rows, other))
    assert [r["answer"] for r in ps.make_pixel_search(3, seed=5)] == [r["answer"] for r in rows[:3]]
    assert [r["kind"] for r in rows] == ["zoom", "video"] * 3
    assert {frozenset(r) for r in rows} == {frozenset(["question", "answer", "images", "kind", "target_bbox",
                                                       "frames", "answer_frame"])}
    assert [r["kind"] for r in ps.make_pixel_search(2, kinds=["video"])] == ["video", "video"]


def test_zoom_rows_glyph_is_in_its_box():
    for row in ps.make_pixel_search(12, seed=2, kinds=("zoom",)):
        image = row["images"][0]
        assert image.size == (224, 224) and row["answer"] in ps.CHARSET and "red box" in row["question"]
        x1, y1, x2, y2 = (round(v * 224) for v in row["target_bbox"])
        assert 5 <= x2 - x1 <= 7 and 6 <= y2 - y1 <= 8  # a 6-7 px glyph
        ink = ink_pixels(image, ps.INK_MAX + 1)
        assert len(ink) >= 8 and all(x1 <= x < x2 and y1 <= y < y2 for x, y in ink)  # ink only in the glyph box
        xs, ys = [x for x, _ in ink], [y for _, y in ink]
        assert (min(xs), min(ys), max(xs) + 1, max(ys) + 1) == (x1, y1, x2, y2)  # and the box is tight


def test_video_rows_only_the_answer_frame_shows_the_glyph():
    for row in ps.make_pixel_search(6, seed=3, kinds=("video",), frames=12):
        frames = row["frames"]
        assert len(frames) == 12 and all(f.size == (112, 112) for f in frames)
        dark = [len(ink_pixels(f, ps.INK_MAX + 1)) for f in frames]
        assert dark[row["answer_frame"]] >= 20 and sum(dark) == dark[row["answer_frame"]]
        assert row["images"][0].size == (112, 84)  # 4 x 3 cells of 28 px
        assert row["target_bbox"] is None and "12-frame" in row["question"]
    sheet = ps.make_pixel_search(2, seed=0)[1]["images"][0]
    assert sheet.size == (112, 112)


@pytest.mark.parametrize("options,message", [
    ({"size": 100}, "size=100"), ({"kinds": ["zoom", "audio"]}, "kinds="), ({"frames": 1}, "frames=1"),
    ({"clutter": -1}, "clutter=-1"),
])
def test_task_rejects_bad_options(options, message):
    with pytest.raises(DataConfigError, match=message):
        ps.make_pixel_search(2, **options)


def test_guideline_option():
    row = ps.make_pixel_search(1, guideline=True)[0]
    assert row["question"].endswith(pt.GUIDELINE) and "Guidelines:" not in ps.make_pixel_search(1)[0]["question"]


# ---- warm-start traces -----------------------------------------------------------------------------------

def test_traces_call_then_answer(rows):
    traces = ps.tool_use_traces(rows)
    assert len(traces) == 2 * len(rows) and [t["turn"] for t in traces[:2]] == [0, 1]
    fmt = ToolCallFormat("json")
    for row, (first, last) in zip(rows, zip(traces[::2], traces[1::2])):
        parsed = fmt.parse(first["response"], TOOL_NAMES)
        assert parsed is not None and parsed.error is None
        arguments = json.loads(parsed.arguments)
        if row["kind"] == "zoom":
            assert parsed.name == "crop_image_normalized" and arguments["target_image"] == 1
            crop = crop_image_normalized(parsed.arguments, {"images_seen": row["images"]})
            assert len(ink_pixels(crop)) > 50 and last["images"][1].tobytes() == crop.tobytes()
        else:
            assert parsed.name == "select_frames" and row["answer_frame"] + 1 in arguments["target_frames"]
            assert len(last["images"]) == 1 + len(arguments["target_frames"])
        assert fmt.parse(last["response"], TOOL_NAMES) is None
        assert extract_boxed(last["response"]) == row["answer"]
        assert pixel_answer(None, [last["response"]], answer=[row["answer"]]) == [1.0]
        for trace in (first, last):  # the prompt's image items match the row's images
            messages = chat_messages(trace["prompt"], len(trace["images"]))
            assert sum(c.get("type") == "image" for m in messages for c in m["content"]) == len(trace["images"])
            assert trace["images"][0] is row["images"][0] and "crop_image_normalized" in trace["system_prompt"]
        assert last["prompt"][1] == {"role": "assistant", "content": first["response"]}


def test_self_correcting_traces():
    rows = ps.make_pixel_search(4, seed=9)
    traces = ps.tool_use_traces(rows, self_correct=1.0)
    assert len(traces) == 3 * len(rows) and {t["turns"] for t in traces} == {3}
    fmt = ToolCallFormat("json")
    for row, i in zip(rows, range(0, len(traces), 3)):
        wrong = fmt.parse(traces[i]["response"], TOOL_NAMES)
        right = fmt.parse(traces[i + 1]["response"], TOOL_NAMES)
        assert wrong.error is None and right.error is None and wrong.arguments != right.arguments
        if row["kind"] == "zoom":
            assert ink_pixels(traces[i + 1]["images"][1]) == []  # the first crop misses the glyph
            assert len(ink_pixels(traces[i + 2]["images"][2])) > 50
        else:
            assert row["answer_frame"] + 1 not in json.loads(wrong.arguments)["target_frames"]
            assert row["answer_frame"] + 1 in json.loads(right.arguments)["target_frames"]
        assert extract_boxed(traces[i + 2]["response"]) == row["answer"]
    assert len(ps.tool_use_traces(rows, self_correct=0.0)) == 2 * len(rows)
    with pytest.raises(DataConfigError, match="self_correct=2"):
        ps.tool_use_traces(rows, self_correct=2)
