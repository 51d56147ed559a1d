"""AvatarShield (spec 10): real / fake parsing, the accuracy / format / temporal compensation rewards, forgery
metrics and the synthetic clip task with its shuffled copies. No model."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import numpy as np
import pytest

import datamodules.tasks.fake_clips as fc
import modules.papers.avatarshield.rewards as av
from datamodules.errors import DataConfigError
from datamodules.tasks import TASKS, make_task
from modules.papers.avatarshield import forgery_metrics, parse_label, temporal_bonus
from modules.papers.avatarshield.rewards import avatar_accuracy, avatar_format, avatar_temporal
from modules.rewards import RewardSet
from modules.rewards.format import format_reward

SIZE = 112
STEP = SIZE * fc.STEP_FRACTION + 2  # a real clip's largest centroid move per frame, rounding included
JUMP = SIZE * fc.JUMP_FRACTION - SIZE * fc.STEP_FRACTION - 2  # a teleport's least move from a neighbour frame


def ans(label: str) -> str:
    return f"<think>looked at the frames</think>\n<answer>{label}</answer>"


def test_doctests():
    for module in (av, fc):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---- parsing and accuracy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, synonyms, expected", [
    ("<answer>real</answer>", True, "real"),
    ("<answer> FAKE. </answer>", True, "fake"),
    ("<answer>Ai Generated</answer>", True, "fake"),
    ("<answer>AI-generated</answer>", False, None),
    ("<answer>authentic</answer>", True, None),  # not in the spec: not read
    ("<answer>forged</answer>", True, None),
    ("<answer>real or fake</answer>", True, None),
    ("<answer>real</answer> then <answer>fake</answer>", True, "fake"),  # the last block counts
    ("the video is fake", True, None),  # no answer block
    ([{"role": "assistant", "content": "<answer>real</answer>"}], True, "real"),
])
def test_parse_label(text, synonyms, expected):
    assert parse_label(text, synonyms=synonyms) == expected


def test_accuracy_on_hand_cases():
    completions = [ans("Real"), ans("fake"), ans("ai-generated"), "fake", ans("real"), ans("fake")]
    label = ["real", "real", "fake", "fake", None, "FAKE"]
    assert avatar_accuracy(None, completions, label=label) == [1.0, 0.0, 1.0, 0.0, None, 1.0]
    assert avatar_accuracy(None, completions, label=label, synonyms=False) == [1.0, 0.0, 0.0, 0.0, None, 1.0]
    with pytest.raises(ValueError, match="label"):
        avatar_accuracy(None, completions)
    with pytest.raises(ValueError, match="gold label"):
        avatar_accuracy(None, [ans("real")], label=["maybe"])


@pytest.mark.parametrize("text, expected", [
    ("<think>a</think><answer>real</answer>", 1.0),
    ("  <think>multi\nline</think>\n\n<answer> FAKE </answer>\n", 1.0),
    ("<answer>real</answer>", 0.0),  # no think block
    ("<think>a</think><answer>ai-generated</answer>", 0.0),  # only the two labels
    ("<think>a</think><answer>real.</answer>", 0.0),
    ("<think>a</think><answer></answer>", 0.0),
    ("<think>a</think><answer>real</answer><answer>fake</answer>", 0.0),
    ("<think>a</think><think>b</think><answer>real</answer>", 0.0),
    ("<think>a <answer>fake</answer></think><answer>real</answer>", 0.0),
    ("<think>a</think> so <answer>real</answer>", 0.0),  # text between the blocks
    ("<think>a</think><answer>real</answer> done", 0.0),  # text after
    ("<answer>real</answer><think>a</think>", 0.0),
])
def test_format_on_hand_cases(text, expected):
    assert avatar_format(None, [text]) == [expected]
    # a thin alias of the shared reward: the same answer as format_reward with the pattern
    assert format_reward(None, [text], pattern=av.AVATAR_FORMAT_PATTERN) == [expected]


def test_format_differs_from_the_plain_format_reward_only_on_the_label():
    texts = ["<think>a</think><answer>real</answer>", "<think>a</think><answer>42</answer>"]
    assert format_reward(None, texts) == [1.0, 1.0]
    assert avatar_format(None, texts) == [1.0, 0.0]


# ---- temporal compensation ------------------------------------------------------------------------------

@pytest.mark.parametrize("ordered, shuffled, t_grpo, exceeds", [
    # p, p~ -> t_grpo: p >= 0.8 p~ ; exceeds: p > p~ ; alpha 0.3 to the correct ordered rows
    ([1, 1, 1, 0], [1, 1, 0, 0], [0.3, 0.3, 0.3, 0.0], [0.3, 0.3, 0.3, 0.0]),  # 0.75 vs 0.5
    ([1, 0, 1, 0], [0, 1, 1, 0], [0.3, 0.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]),  # 0.5 vs 0.5: tie
    ([1, 1, 1, 1, 0], [1, 1], [0.3, 0.3, 0.3, 0.3, 0.0], [0.0] * 5),  # 0.8 vs 1.0: exactly mu * p~
    ([1, 1, 1, 0, 0], [1, 1], [0.0] * 5, [0.0] * 5),  # 0.6 < 0.8
    ([0, 0], [0, 0, 0], [0.0, 0.0], [0.0, 0.0]),  # granted (0 >= 0) but nobody is correct
    ([True, False], [False], [0.3, 0.0], [0.3, 0.0]),  # bools, G != G~
])
def test_temporal_bonus_hand_computed(ordered, shuffled, t_grpo, exceeds):
    assert temporal_bonus(ordered, shuffled) == pytest.approx(t_grpo)
    assert temporal_bonus(ordered, shuffled, rule="exceeds") == pytest.approx(exceeds)


def test_temporal_bonus_constants_are_keyword_arguments():
    # p = 0.25, p~ = 0.5: not granted with mu 0.8, granted with mu 0.5 (0.25 >= 0.25)
    assert temporal_bonus([1, 0, 0, 0], [1, 0]) == [0.0] * 4
    assert temporal_bonus([1, 0, 0, 0], [1, 0], alpha=1.0, mu=0.5) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rule"):
        temporal_bonus([1], [1], rule="video_r1")
    with pytest.raises(ValueError, match="0 / 1"):
        temporal_bonus([0.5], [1])
    with pytest.raises(ValueError, match="at least one"):
        temporal_bonus([1, 0], [])


def _temporal_batch():
    """Clip A: one merged group, 3 ordered (2 right) + 2 shuffled (1 right): p 2/3 vs p~ 1/2 -> granted both ways.
    Clip B: two groups, 2 ordered (1 right) + 2 shuffled (both right): p 1/2 < 0.8 -> no bonus.
    Clip C: 2 ordered (tie with its shuffled: p = p~ = 1): granted by t_grpo only.
    Clip D: ordered rows only (an eval batch): None. One ordered row of A has no gold label: None, left out."""
    rows = [
        # (clip, group, shuffled, label, answer)
        ("A", 0, False, "fake", "fake"), ("A", 0, False, "fake", "fake"), ("A", 0, False, "fake", "real"),
        ("A", 0, True, "fake", "fake"), ("A", 0, True, "fake", "real"), ("A", 0, False, None, "real"),
        ("B", 1, False, "real", "real"), ("B", 1, False, "real", "fake"),
        ("B", 2, True, "real", "real"), ("B", 2, True, "real", "real"),
        ("C", 3, False, "real", "real"), ("C", 3, False, "real", "real"), ("C", 4, True, "real", "real"),
        ("D", 5, False, "fake", "fake"),
    ]
    columns = {"clip_id": [r[0] for r in rows], "frames_shuffled": [r[2] for r in rows],
               "label": [r[3] for r in rows]}
    return [ans(r[4]) for r in rows], columns, [r[1] for r in rows]


def test_avatar_temporal_on_a_hand_made_batch():
    completions, columns, groups = _temporal_batch()
    out = avatar_temporal(None, completions, group_ids=groups, **columns)
    assert out == [0.3, 0.3, 0.0, None, None, None,
                   0.0, 0.0, None, None,
                   0.3, 0.3, None,
                   None]
    exceeds = avatar_temporal(None, completions, group_ids=groups, rule="exceeds", alpha=0.5, **columns)
    assert exceeds == [0.5, 0.5, 0.0, None, None, None, 0.0, 0.0, None, None, 0.0, 0.0, None, None]


def test_avatar_temporal_through_a_reward_set_with_options():
    completions, columns, groups = _temporal_batch()
    keep = [i for i, gold in enumerate(columns["label"]) if gold is not None]  # a row with no reward at all raises
    completions, groups = [completions[i] for i in keep], [groups[i] for i in keep]
    columns = {k: [v[i] for i in keep] for k, v in columns.items()}
    rs = RewardSet.from_specs(["avatar_accuracy", {"name": "avatar_temporal", "kwargs": {"mu": 0.0}}])
    per_func, total = rs(None, completions, columns, group_ids=groups)
    assert [round(v, 6) if v == v else None for v in per_func[:, 1].tolist()] == [
        0.3, 0.3, 0.0, None, None, 0.3, 0.0, None, None, 0.3, 0.3, None, None]
    # mu = 0: granted for every clip that has both sides, so B's correct ordered row gets 0.3 too
    assert per_func[5, 1].item() == pytest.approx(0.3) and total[5].item() == pytest.approx(1.3)
    assert math.isnan(per_func[3, 1].item()) and total[3].item() == pytest.approx(1.0)  # shuffled row: no bonus
    assert total[0].item() == pytest.approx(1.3) and total[2].item() == pytest.approx(0.0)


def test_avatar_temporal_checks_its_columns():
    completions, columns, groups = _temporal_batch()
    with pytest.raises(ValueError, match="clip_id"):
        avatar_temporal(None, completions, group_ids=groups, label=columns["label"],
                        frames_shuffled=columns["frames_shuffled"])
    with pytest.raises(ValueError, match="group_ids"):
        avatar_temporal(None, completions, **columns)
    mixed = [0] * len(groups)  # one group holding clips A..D
    with pytest.raises(ValueError, match="one clip"):
        avatar_temporal(None, completions, group_ids=mixed, **columns)


# ---- metrics ----------------------------------------------------------------------------------------------

def test_forgery_metrics_hand_computed():
    completions = [ans("real"), ans("fake"), ans("real"), ans("fake"), ans("AI-generated"), "no answer",
                   ans("fake")]
    label = ["real", "real", "fake", "fake", "fake", "fake", "fake"]
    kinds = ["real", "real", "teleport", "teleport", "flicker", "flicker", "flicker"]
    m = forgery_metrics(completions, label, kinds)
    assert m["n"] == 7
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["accuracy/real"] == 0.5 and m["accuracy/teleport"] == 0.5
    assert m["accuracy/flicker"] == pytest.approx(2 / 3)
    assert math.isnan(m["accuracy/texture"])  # no texture rows
    assert m["fake_rate"] == pytest.approx(4 / 7)  # answers 2, 4, 5 (synonym), 7
    assert m["parse_failure_rate"] == pytest.approx(1 / 7)
    assert forgery_metrics(completions, label, kinds, synonyms=False)["accuracy/flicker"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="forgery_type"):
        forgery_metrics([ans("real")], ["real"], ["deepfake"])
    assert math.isnan(forgery_metrics([], [], [])["accuracy"])


# ---- the task: pixels ---------------------------------------------------------------------------------------

def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)  # (H, W, 3)


def palette(row) -> tuple[np.ndarray, np.ndarray]:
    """(background, shape colour) read from frame 0 (never forged by teleport / flicker): the most common colour,
    and the most common other one."""
    colours, counts = np.unique(pixels(row["frames"][0]).reshape(-1, 3), axis=0, return_counts=True)
    first, second = np.argsort(-counts, kind="stable")[:2]
    return colours[first], colours[second]


def colour_mask(image, colour) -> np.ndarray:
    return np.all(pixels(image) == colour, axis=-1)  # (H, W)


def centroid(image, colour) -> np.ndarray | None:
    ys, xs = np.nonzero(colour_mask(image, colour))
    return None if xs.size == 0 else np.array([xs.mean(), ys.mean()])


def odd_pixels(image, background, colour) -> np.ndarray:
    """(H, W) mask of pixels that are neither the background nor the shape colour."""
    return ~colour_mask(image, background) & ~colour_mask(image, colour)


def steps(row) -> list[float]:
    _, colour = palette(row)
    cs = [centroid(f, colour) for f in row["frames"]]
    return [float(np.linalg.norm(b - a)) for a, b in zip(cs, cs[1:])]


@pytest.fixture(scope="module")
def rows():
    return make_task("fake_clips", 36, seed=5, frames=8)


def test_rows_schema_and_balance(rows):
    kinds = Counter(r["forgery_type"] for r in rows)
    assert kinds == {"real": 18, "teleport": 6, "flicker": 6, "texture": 6}
    for i, r in enumerate(rows):
        assert r["label"] == ("real" if r["forgery_type"] == "real" else "fake")
        assert len(r["frames"]) == 8 and all(f.mode == "RGB" and f.size == (SIZE, SIZE) for f in r["frames"])
        assert r["clip_id"] == f"5-{i}" and r["frames_shuffled"] is False and r["frame_order"] == list(range(8))
        assert r["question"] == fc.QUESTION and "real or AI-generated" in r["question"]
        assert "<think>" in r["question"] and "<answer>" in r["question"]
        assert r["system_prompt"] == fc.AVATAR_SYSTEM_PROMPT
        assert (r["forged_frames"] == []) == (r["forgery_type"] == "real")
    assert len({r["clip_id"] for r in rows}) == len(rows)


def test_deterministic_per_seed():
    a, b, c = (fc.make_fake_clips(6, seed=s, frames=5, size=56) for s in (3, 3, 4))

    def key(rows):
        return [(r["label"], r["forgery_type"], r["forged_frames"], [f.tobytes() for f in r["frames"]]) for r in rows]
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_real_clips_move_smoothly(rows):
    for r in (r for r in rows if r["forgery_type"] == "real"):
        background, colour = palette(r)
        assert all(not odd_pixels(f, background, colour).any() for f in r["frames"])  # two colours only
        moves = steps(r)
        assert max(moves) <= STEP, (r["clip_id"], moves)
        _, colour = palette(r)
        travel = np.linalg.norm(centroid(r["frames"][-1], colour) - centroid(r["frames"][0], colour))
        assert travel >= len(moves) * SIZE * fc.STEP_FRACTION / 2 - 2  # it moves: >= half the top speed a frame


def test_teleport_is_one_large_jump_out_and_back(rows):
    for r in (r for r in rows if r["forgery_type"] == "teleport"):
        (k,) = r["forged_frames"]
        assert 0 < k < len(r["frames"]) - 1
        moves = steps(r)
        large = [t for t, d in enumerate(moves) if d > STEP]
        assert large == [k - 1, k], (r["clip_id"], moves)  # into frame k and back out
        assert min(moves[k - 1], moves[k]) >= JUMP
        background, colour = palette(r)
        assert all(colour_mask(f, colour).any() for f in r["frames"])  # the shape never vanishes


def test_flicker_is_one_frame_without_the_shape_colour(rows):
    variants = set()
    for r in (r for r in rows if r["forgery_type"] == "flicker"):
        (k,) = r["forged_frames"]
        background, colour = palette(r)
        present = [bool(colour_mask(f, colour).any()) for f in r["frames"]]
        assert present == [t != k for t in range(len(r["frames"]))], r["clip_id"]
        variants.add("recolour" if odd_pixels(r["frames"][k], background, colour).any() else "vanish")
        cs = [centroid(f, colour) for t, f in enumerate(r["frames"]) if t != k]
        assert all(np.linalg.norm(b - a) <= 2 * STEP for a, b in zip(cs, cs[1:]))  # otherwise smooth
    assert variants == {"recolour", "vanish"}


def test_texture_is_a_noisy_patch_on_the_shape(rows):
    for r in (r for r in rows if r["forgery_type"] == "texture"):
        background, colour = palette(r)
        assert 1 <= len(r["forged_frames"]) <= len(r["frames"]) // 2
        for t, frame in enumerate(r["frames"]):
            odd = odd_pixels(frame, background, colour)
            if t not in r["forged_frames"]:
                assert not odd.any(), (r["clip_id"], t)
                continue
            ys, xs = np.nonzero(odd)
            assert xs.size >= 9  # a patch of at least 3 x 3 noisy pixels
            assert len(set(map(tuple, pixels(frame)[odd]))) >= xs.size // 2  # noise: many distinct colours
            shape = colour_mask(frame, colour) | odd  # the artifact sits inside the shape's extent
            sy, sx = np.nonzero(shape)
            assert sx.min() < xs.min() and xs.max() < sx.max() and sy.min() < ys.min() and ys.max() < sy.max()
        assert max(steps(r)) <= STEP + 1  # the motion stays smooth


def test_task_options_are_checked_and_registered():
    assert TASKS["fake_clips"] == "datamodules.tasks.fake_clips.make_fake_clips"
    only = fc.make_fake_clips(9, seed=1, frames=4, size=56, fake_ratio=1.0, forgery_types=["flicker"])
    assert {r["forgery_type"] for r in only} == {"flicker"}
    assert {r["label"] for r in fc.make_fake_clips(5, frames=4, size=56, fake_ratio=0.0)} == {"real"}
    for bad in ({"size": 100}, {"frames": 3}, {"fake_ratio": 1.5}, {"forgery_types": ["morph"]},
                {"forgery_types": "texture"}):
        with pytest.raises(DataConfigError):
            fc.make_fake_clips(2, **bad)
    with pytest.raises(DataConfigError, match="option"):
        make_task("fake_clips", 2, colour="red")


# ---- shuffled copies ----------------------------------------------------------------------------------------

def test_shuffled_copies_layout_and_permutation(rows):
    batch = rows[:10]
    before = [[f.tobytes() for f in r["frames"]] for r in batch]
    out = fc.with_shuffled_copies(batch, seed=7)
    assert len(out) == 20
    for j, r in enumerate(batch):
        orig, copy = out[2 * j], out[2 * j + 1]
        assert orig is r and orig["frames_shuffled"] is False and copy["frames_shuffled"] is True
        for col in ("clip_id", "label", "forgery_type", "forged_frames", "question", "system_prompt"):
            assert copy[col] == orig[col]
        order = copy["frame_order"]
        assert sorted(order) == list(range(8)) and order != list(range(8))
        assert [f.tobytes() for f in copy["frames"]] == [before[j][i] for i in order]  # the same frames, permuted
        assert [f.tobytes() for f in r["frames"]] == before[j]  # the original row is untouched


def test_shuffled_copies_are_deterministic_per_seed_and_clip(rows):
    def orders(batch, seed):
        return {r["clip_id"]: r["frame_order"] for r in fc.with_shuffled_copies(batch, seed=seed)[1::2]}
    a = orders(rows[:12], 1)
    assert a == orders(rows[:12], 1)
    assert a != orders(rows[:12], 2)
    assert orders(rows[6:12][::-1], 1) == {k: a[k] for k in (r["clip_id"] for r in rows[6:12])}  # batch-independent
    with pytest.raises(DataConfigError, match="already"):
        fc.with_shuffled_copies(fc.with_shuffled_copies(rows[:1]))


def test_shuffling_hurts_a_temporal_detector_and_the_reward_sees_it(rows):
    """The spec's premise end to end: a pixel 'detector' that calls a clip fake when its motion is not smooth is
    right on every ordered real clip but wrong on most shuffled ones, so avatar_temporal pays its correct ordered
    answers (one completion per row; groups = the clip's pair)."""
    real = [r for r in rows if r["forgery_type"] == "real"]
    batch = fc.with_shuffled_copies(real, seed=0)
    answers = [ans("fake" if max(steps(r)) > STEP else "real") for r in batch]
    correct = avatar_accuracy(None, answers, label=[r["label"] for r in batch])
    ordered, shuffled = correct[0::2], correct[1::2]
    assert all(ordered) and sum(shuffled) <= len(shuffled) / 2
    bonus = avatar_temporal(None, answers, label=[r["label"] for r in batch],
                            clip_id=[r["clip_id"] for r in batch],
                            frames_shuffled=[r["frames_shuffled"] for r in batch],
                            group_ids=[i // 2 for i in range(len(batch))])
    assert bonus[0::2] == [0.3] * len(real) and bonus[1::2] == [None] * len(real)
    strict = avatar_temporal(None, answers, label=[r["label"] for r in batch],
                             clip_id=[r["clip_id"] for r in batch],
                             frames_shuffled=[r["frames_shuffled"] for r in batch],
                             group_ids=[i // 2 for i in range(len(batch))], rule="exceeds")
    assert strict[0::2] == [0.0 if s else 0.3 for s in shuffled]  # paid only where shuffling fooled the detector
