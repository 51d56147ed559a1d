"""LASER / LASER-D / LASER-DE (arXiv 2505.15612, spec section 8): rewards, buckets, targets, repetition, recipe."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch
import yaml

import modules.papers.laser.rewards as laser
from modules.rewards import RewardSet
from modules.rollout.engine import SamplingSettings
from modules.papers.laser.rewards import (coverage_counts, difficulty_buckets, exploration_bonus, is_repetitive,
                                   laser_d_reward, laser_de_reward, laser_reward, length_thresholds, monitor_buckets,
                                   repetition_start, select_targets, targets_from_coverage)
from recipes.base import RecipeConfigError
from recipes.laser import LASER
from recipes.cli.registry import CONFIG_DIR

B = r"\boxed{%s}"


def test_doctests():
    result = doctest.testmod(laser)
    assert result.attempted > 15 and result.failed == 0


# ---- correctness C ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, require_think, expected", [
    (r"<think>6*7=42</think> The answer is \boxed{42}.", True, 1.0),
    (r"<think>6*7=41</think> \boxed{41}", True, -0.5),
    (r"<think>6*7=42</think> The answer is 42.", True, -1.0),  # no boxed answer
    (r"The answer is \boxed{42}.", True, -1.0),  # think tags required and missing
    (r"<think>\boxed{42}</think> so 42", True, -1.0),  # the boxed answer must come after </think>
    (r"<think>\boxed{41}</think> \boxed{42}", True, 1.0),  # only the part after </think> counts
    (r"The answer is \boxed{42}.", False, 1.0),
    (r"\boxed{42} hmm, or \boxed{43}", False, -0.5),  # the last box
    (r"\boxed{\frac{84}{2}}", False, 1.0),  # math-verify equivalence
])
def test_correctness_score(text, require_think, expected):
    assert laser.correctness_score(text, "42", require_think=require_think) == expected


def test_correctness_is_none_without_gold():
    assert laser_reward(None, [B % 1], [None], laser_targets=8, completion_lengths=[3]) == [None]


# ---- LASER step reward ----------------------------------------------------------------------------------

def test_laser_every_branch():
    texts = [B % 7, B % 7, B % 7, B % 8, B % 8, "7"]
    lengths = [5, 10, 11, 3, 30, 2]
    out = laser_reward(None, texts, ["7"] * 6, laser_targets=10, require_think=False, completion_lengths=lengths)
    # correct <= L_T: 1 + alpha; correct at L_T: 1 + alpha; correct > L_T: 1; wrong: -0.5 whatever the length;
    # no boxed answer: -1
    assert out == [1.5, 1.5, 1.0, -0.5, -0.5, -1.0]
    alpha = laser_reward(None, texts, ["7"] * 6, laser_targets=10, laser_alpha=0.2, require_think=False,
                         completion_lengths=lengths)
    assert alpha == pytest.approx([1.2, 1.2, 1.0, -0.5, -0.5, -1.0])
    with pytest.raises(ValueError, match="one target"):
        laser_reward(None, texts, ["7"] * 6, laser_targets={"easy": 1, "medium": 2, "hard": 3},
                     completion_lengths=lengths)
    with pytest.raises(ValueError, match="laser_targets"):
        laser_reward(None, texts, ["7"] * 6, completion_lengths=lengths)
    with pytest.raises(ValueError, match="completion_lengths"):
        laser_reward(None, texts, ["7"] * 6, laser_targets=10)


def test_laser_d_uses_the_bucket_target():
    targets = {"easy": 4, "medium": 8, "hard": 16}
    # group 0: 3/3 correct (easy); group 1: 1/3 (medium, 1/3 <= acc); group 2: 0/3 (hard)
    texts = [B % 1] * 3 + [B % 1, B % 2, B % 2] + [B % 2, B % 2, "1"]
    lengths = [4, 5, 6] + [8, 9, 9] + [16, 17, 17]
    info: dict = {}
    out = laser_d_reward(None, texts, ["1"] * 9, laser_targets=targets, require_think=False,
                         completion_lengths=lengths, group_ids=[0] * 3 + [1] * 3 + [2] * 3, laser_info=info)
    assert out == [1.5, 1.0, 1.0, 1.5, -0.5, -0.5, -0.5, -0.5, -1.0]
    assert info["bucket"] == ["easy"] * 3 + ["medium"] * 3 + ["hard"] * 3
    assert info["target"] == [4] * 3 + [8] * 3 + [16] * 3
    assert info["bonus"] == ["length", "none", "none", "length"] + ["none"] * 5
    # a medium prompt (1 of 3 correct) whose correct answer is 8 tokens: within 8, not within the easy target 4
    assert laser_d_reward(None, [B % 1, B % 2, B % 2], ["1"] * 3, laser_targets={"easy": 4, "medium": 8, "hard": 8},
                          require_think=False, completion_lengths=[8, 1, 1], group_ids=[5, 5, 5])[0] == 1.5
    # an int target is the same for every bucket (before the first monitor pass)
    assert laser_d_reward(None, texts, ["1"] * 9, laser_targets=8, require_think=False, completion_lengths=lengths,
                          group_ids=[0] * 3 + [1] * 3 + [2] * 3)[:4] == [1.5, 1.5, 1.5, 1.5]
    with pytest.raises(ValueError, match="lacks bucket"):
        laser_d_reward(None, texts, ["1"] * 9, laser_targets={"easy": 4}, completion_lengths=lengths,
                       group_ids=[0] * 9)
    with pytest.raises(ValueError, match="group_ids"):
        laser_d_reward(None, texts, ["1"] * 9, laser_targets=targets, completion_lengths=lengths)


def test_laser_de_bonus_only_for_wrong_long_non_repetitive():
    varied = list(range(100, 140))  # 40 distinct tokens: not repetitive
    looping = [1, 2, 3, 4] * 10  # repetitive
    rows = [  # (text, length, token ids, expected)
        (B % 3, 10, varied[:10], 1.5),  # correct within target: length bonus
        (B % 3, 40, varied, 1.0),  # correct beyond target: no bonus of either kind
        (B % 4, 10, varied[:10], -0.5),  # wrong within target: nothing
        (B % 4, 40, varied, 0.0),  # wrong beyond target, not repetitive: -0.5 + alpha
        (B % 4, 40, looping, -0.5),  # wrong beyond target but repetitive: nothing
        ("no answer", 40, varied, -1.0),  # -1 responses never get the exploration bonus
    ]
    texts, lengths, ids, expected = map(list, zip(*rows))
    info: dict = {}
    out = laser_de_reward(None, texts, ["3"] * 6, laser_targets=20, require_think=False, completion_lengths=lengths,
                          group_ids=[0] * 6, completion_token_ids=ids, laser_info=info)
    assert out == expected
    assert info["bonus"] == ["length", "none", "none", "explore", "repetitive", "none"]
    # LASER-D gives the same rows no exploration bonus
    d = laser_d_reward(None, texts, ["3"] * 6, laser_targets=20, require_think=False, completion_lengths=lengths,
                       group_ids=[0] * 6)
    assert d == [1.5, 1.0, -0.5, -0.5, -0.5, -1.0]
    assert exploration_bonus(1.0, 40, 20, 0.5, varied) == exploration_bonus(-1.0, 40, 20, 0.5, varied) == 0.0
    # without token ids the whitespace tokens of the text are checked
    loop_text = "so so so so so so so so so so " + B % 4
    assert laser_de_reward(None, [loop_text, "one two three four five six seven eight nine ten " + B % 4], ["3"] * 2,
                           laser_targets=5, require_think=False, completion_lengths=[11, 11],
                           group_ids=[0, 0]) == [-0.5, 0.0]


def test_rewards_run_through_a_reward_set_with_trainer_keywords():
    rs = RewardSet.from_specs([{"name": "laser_de", "kwargs": {"require_think": False}}])
    per_func, total = rs([None] * 2, [B % 2, B % 3], {"answer": ["2", "2"]}, completion_lengths=[3, 30],
                         group_ids=[0, 0], laser_targets={"easy": 4, "medium": 4, "hard": 4}, laser_alpha=0.5,
                         completion_token_ids=[[1, 2, 3], list(range(30))])
    assert total.tolist() == [1.5, 0.0]  # medium prompt (1/2): correct within 4 tokens; wrong, long, varied


# ---- buckets ---------------------------------------------------------------------------------------------

def test_bucket_boundaries_training_vs_monitor():
    # N = 6: accuracies 5/6, 4/6 = 2/3, 3/6, 2/6 = 1/3, 1/6, 0
    correct = [1] * 5 + [0] + [1] * 4 + [0] * 2 + [1] * 3 + [0] * 3 + [1] * 2 + [0] * 4 + [1] + [0] * 5 + [0] * 6
    groups = [g for g in range(6) for _ in range(6)]
    train = difficulty_buckets(correct, groups)[::6]
    monitor = monitor_buckets(correct, groups)[::6]
    assert train == ["easy", "easy", "medium", "medium", "hard", "hard"]  # acc >= 2/3, 1/3 <= acc < 2/3, < 1/3
    assert monitor == ["easy", "medium", "medium", "hard", "hard", "hard"]  # > 2/3, (1/3, 2/3], <= 1/3


def test_buckets_follow_group_ids_not_positions():
    assert difficulty_buckets([1, 0, 1, 0], ["a", "b", "a", "b"]) == ["easy", "hard", "easy", "hard"]
    with pytest.raises(ValueError):
        difficulty_buckets([1, 0], [0])


# ---- target selection ----------------------------------------------------------------------------------

def _monitor_set():
    """Made-up monitor set, N = 6 rollouts per prompt (n_easy = 4, n_medium = 2, n_hard = 1)."""
    prompts = [  # (correct flags, lengths)
        ([1, 1, 1, 1, 1, 1], [5, 6, 7, 12, 20, 30]),  # easy (6/6)
        ([1, 1, 1, 1, 1, 0], [10, 10, 18, 18, 18, 40]),  # easy (5/6)
        ([1, 1, 1, 0, 0, 0], [9, 17, 20, 25, 33, 33]),  # medium (3/6)
        ([1, 1, 1, 1, 0, 0], [12, 14, 16, 30, 30, 30]),  # medium (4/6 = 2/3, on the medium side when monitoring)
        ([1, 0, 0, 0, 0, 0], [20, 22, 24, 44, 50, 60]),  # hard (1/6)
    ]
    correct, lengths, groups = [], [], []
    for g, (c, l) in enumerate(prompts):
        correct += c
        lengths += l
        groups += [g] * len(c)
    return lengths, correct, groups


def test_select_targets_on_a_made_up_monitor_set():
    lengths, correct, groups = _monitor_set()
    thresholds = length_thresholds(8, 8, 64)
    assert thresholds == [8, 16, 24, 32, 40, 48, 56, 64]
    coverage = coverage_counts(lengths, monitor_buckets(correct, groups), thresholds)
    # coverage counts over all the bucket's responses, correct or not (easy: <= 8 holds 5, 6, 7)
    assert coverage["easy"] == ([3, 6, 10, 11, 12, 12, 12, 12], 12)
    assert coverage["medium"] == ([0, 4, 6, 10, 12, 12, 12, 12], 12)
    assert coverage["hard"] == ([0, 0, 3, 3, 3, 4, 5, 6], 6)
    # ECR_easy(8) = floor(3/12 * 4) = 1 -> 8.  medium: floor(4/12 * 2) = 0 at 16, floor(6/12 * 2) = 1 at 24 -> 24.
    # hard (n = 1) needs every response within l: the longest is 60 -> 64.
    targets = select_targets(lengths, correct, groups, num_generations=6, thresholds=thresholds, default=64)
    assert targets == {"easy": 8, "medium": 24, "hard": 64}
    # expecting 2 correct responses: easy needs coverage >= 1/2 (16); medium needs every response (40)
    assert select_targets(lengths, correct, groups, num_generations=6, thresholds=thresholds, default=64,
                          expected_correct=2) == {"easy": 16, "medium": 40, "hard": 64}
    # no threshold qualifies -> the default (max response length); a target is never above the default
    assert select_targets(lengths, correct, groups, num_generations=6, thresholds=[8, 16], default=48) == {
        "easy": 8, "medium": 48, "hard": 48}
    assert select_targets(lengths, correct, groups, num_generations=6, thresholds=thresholds, default=20) == {
        "easy": 8, "medium": 20, "hard": 20}


def test_target_selection_edge_cases():
    # an empty bucket gets the default
    assert targets_from_coverage({}, num_generations=8, thresholds=[8, 16], default=64) == {
        "easy": 64, "medium": 64, "hard": 64}
    # N = 8: n_easy = 5 so coverage 1/5 suffices (exact arithmetic, no float floor error); n_medium = 2 needs 1/2
    cov = {"easy": ([1, 2], 5), "medium": ([1, 2], 4), "hard": ([2, 3], 3)}
    assert targets_from_coverage(cov, num_generations=8, thresholds=[8, 16], default=64) == {
        "easy": 8, "medium": 16, "hard": 16}
    # ceil: n = ceil(2N/3) = 6, ceil(N/3) = 3 and no floor, so coverage 1/6 (easy) and 1/3 (medium) suffice
    low = {"easy": ([1, 6], 6), "medium": ([1, 3], 3), "hard": ([1, 1], 1)}
    assert targets_from_coverage(low, num_generations=8, thresholds=[8, 16], default=64) == {
        "easy": 16, "medium": 16, "hard": 8}
    assert targets_from_coverage(low, num_generations=8, thresholds=[8, 16], default=64, round_method="ceil") == {
        "easy": 8, "medium": 8, "hard": 8}
    # N = 2: n_medium = floor(2/3) = 0 -> the medium target is always the default
    assert targets_from_coverage(cov, num_generations=2, thresholds=[8, 16], default=64)["medium"] == 64
    assert length_thresholds(1024, 1024, 4096) == [1024, 2048, 3072, 4096]
    assert length_thresholds(512, 1024, 4096) == [512, 1024, 2048, 3072, 4096]
    with pytest.raises(ValueError):
        length_thresholds(64, 8, 32)
    with pytest.raises(ValueError, match="round_method"):
        targets_from_coverage(cov, num_generations=8, thresholds=[8, 16], default=64, round_method="round")


# ---- repetition detector ---------------------------------------------------------------------------------

def test_repetition_detector():
    assert not is_repetitive([1, 1, 1, 1, 1, 1, 1, 1])  # <= 8 tokens: never
    assert is_repetitive([1, 1, 1, 1, 1, 1, 1, 1, 1])
    # len < 30 uses bigrams: a bigram twice, 5 apart (< 20 // 3 = 6) is a repetition, 6 apart is not
    base = list(range(100, 120))
    close, far = base.copy(), base.copy()
    close[10:12] = close[5:7]
    far[11:13] = far[5:7]
    assert is_repetitive(close) and not is_repetitive(far)
    assert repetition_start(close) == 5 and repetition_start(far) == 20
    # 30 <= len < 100 uses trigrams: a repeated bigram alone is not a repetition any more
    long_base = list(range(200, 240))
    bigram = long_base.copy()
    bigram[15:17] = bigram[5:7]
    trigram = long_base.copy()
    trigram[15:18] = trigram[5:8]  # 10 apart (< 40 // 3 = 13)
    far_trigram = long_base.copy()
    far_trigram[20:23] = far_trigram[5:8]  # 15 apart: too far
    assert not is_repetitive(far_trigram)
    assert not is_repetitive(bigram) and is_repetitive(trigram)
    # a run of one token is skipped as an n-gram when n > 2 (but not with bigrams)
    run = long_base.copy()
    run[10:14] = [0, 0, 0, 0]
    short_run = base.copy()
    short_run[10:13] = [0, 0, 0]
    assert not is_repetitive(run) and is_repetitive(short_run)
    # len >= 200: an n-gram must be seen 3 times (twice suffices below 200)
    twice_long = list(range(1000, 1200))
    twice_long[50:54] = twice_long[40:44]
    twice_short = list(range(1000, 1150))
    twice_short[50:54] = twice_short[40:44]
    thrice_long = twice_long.copy()
    thrice_long[60:64] = thrice_long[40:44]
    assert not is_repetitive(twice_long) and is_repetitive(twice_short) and is_repetitive(thrice_long)
    # a 2n-token pattern seen twice, however far apart, is a repetition
    pattern = list(range(300, 360))
    pattern[45:51] = pattern[2:8]
    assert is_repetitive(pattern)
    # text tokens work as well
    assert is_repetitive("the cat sat and the cat sat and the cat".split())
    assert not is_repetitive("one two three four five six seven eight nine ten".split())


# ---- recipe ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rewards, options, expected", [
    (["accuracy"], {}, "exactly one of the rewards"),
    (["laser_d", "laser_de"], {}, "exactly one of the rewards"),
    (["laser_d"], {"variant": "laser_de"}, "rename that reward to 'laser_de'"),
    (["laser"], {"variant": "laser"}, "needs model.target_length"),
    ([{"name": "laser_d", "kwargs": {"laser_alpha": 0.3}}], {}, "LASER sets itself"),
    (["laser_d"], {"variant": "laser_x"}, "model.variant='laser_x'"),
    (["laser_d"], {"alpha": -1.0}, "model.alpha"),
    (["laser_d"], {"round_method": "round"}, "model.round_method"),
    (["laser_d"], {"length_low": 128, "length_max": 64}, "length_low"),
    (["laser_d"], {"monitor_every": 0}, "model.monitor_every"),
])
def test_config_errors_name_the_field_before_loading_a_model(rewards, options, expected):
    with pytest.raises(RecipeConfigError, match=re.escape(expected)):
        LASER("./no/such/model", rewards, **options)


def test_targets_survive_a_checkpoint(tiny_model_path):
    kwargs = dict(model_name_or_path=str(tiny_model_path), rewards=[{"name": "laser_de"}], variant=None,
                  sampling=SamplingSettings(max_new_tokens=16), length_low=4, length_step=4)
    module = LASER(**kwargs)
    assert module.variant == "laser_de"  # inferred from the rewards
    assert module.current_targets() == 16  # before the first monitor pass: max_new_tokens for every bucket
    module.targets, module.laser_step, module.monitor_step = {"easy": 4, "medium": 8, "hard": 16}, 7, 5
    module.monitor_stats = {"monitor_accuracy": 0.25}
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    checkpoint = torch.load(_roundtrip(checkpoint, tiny_model_path.parent / "laser.ckpt"), weights_only=True)
    fresh = LASER(**kwargs)
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.targets == {"easy": 4, "medium": 8, "hard": 16} and fresh.current_targets() == fresh.targets
    assert (fresh.laser_step, fresh.monitor_step, fresh.monitor_stats) == (7, 5, {"monitor_accuracy": 0.25})
    assert fresh.thresholds == [4, 8, 12, 16]


def _roundtrip(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["laser_d", "laser_de"])
def test_two_training_steps_end_to_end(variant, fit_metrics, tmp_path):
    override = tmp_path / "variant.yaml"
    override.write_text(yaml.safe_dump({"model": {"init_args": {"variant": variant, "rewards": [
        {"name": variant, "kwargs": {"require_think": False}},
        {"name": "accuracy", "weight": 0.0, "kwargs": {"extract": "boxed", "mode": "math"}}]}}}))
    _, train = fit_metrics([CONFIG_DIR / "laser.yaml", override], "--model.monitor_size", "4",
                           "--model.monitor_generations", "3", "--model.monitor_every", "1", "--model.length_low", "2",
                           "--model.length_step", "2", "--model.length_max", "8")
    for key in ("target_easy", "target_medium", "target_hard", "frac_easy", "frac_medium", "frac_hard",
                "length_bonus_rate", "monitor_accuracy", "monitor_frac_hard", "monitor_refreshed"):
        assert f"train/laser/{key}" in train, key
    assert train["train/laser/monitor_refreshed"].tolist() == [1.0, 1.0]  # monitor_every 1: at both steps
    assert train[[f"train/laser/frac_{b}" for b in ("easy", "medium", "hard")]].sum(axis=1).tolist() == [1.0, 1.0]
    for b in ("easy", "medium", "hard"):  # thresholds [2, 4, 6, 8]; default max_new_tokens = 8
        assert set(train[f"train/laser/target_{b}"]) <= {2.0, 4.0, 6.0, 8.0}
    checkpoint = torch.load(next(Path(tmp_path).rglob("*.ckpt")), weights_only=True)
    state = checkpoint["recipe_state"]
    assert state["laser_step"] == 2 and sorted(state["targets"]) == ["easy", "hard", "medium"]
    if variant == "laser_de":
        assert "train/laser/de_bonus_rate" in train and "train/laser/repetitive_rate" in train
