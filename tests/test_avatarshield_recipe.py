"""The AvatarShield recipe on a tiny random Qwen2-VL: clips shown as sampled frames, the shuffled copies of the
temporal reward generated and scored with their clip then left out of the loss (hand-computed bonus), held-out
metrics per forgery type, and a 2-step `r1 fit --config`."""

from __future__ import annotations

import pytest
import torch

from datamodules.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vlm_path(tiny_vlm):
    return tiny_vlm("qwen2_vl")


def _recipe(path, **kwargs):
    from recipes.avatarshield import AvatarShield

    return AvatarShield(path, ["avatar_accuracy", "avatar_format", "avatar_temporal"], num_generations=2,
                        sampling={"max_new_tokens": 4}, **kwargs)


def _rows(n, seed=0):
    return [{**r, "prompt": r["question"]} for r in make_task("fake_clips", n, seed=seed)]


def test_shuffled_copies_are_scored_with_their_clip_then_left_out_of_the_loss(vlm_path):
    recipe = _recipe(vlm_path, frame_budget=4)
    rows = _rows(2)
    rollout = recipe.generate(rows, purpose="train", num_generations=2)
    assert len(rollout) == 8 and rollout.columns["frames_shuffled"] == [False, False, True, True] * 2
    assert rollout.vision[0]["image_grid_thw"].shape[0] == 4  # frame_budget images per clip
    # the shuffled copy shows the same clip's frames in another order
    assert rollout.columns["clip_id"][0] == rollout.columns["clip_id"][2]
    assert not torch.equal(rollout.vision[0]["pixel_values"], rollout.vision[2]["pixel_values"])
    gold = [rows[0]["label"]] * 4 + [rows[1]["label"]] * 4
    wrong = {"real": "fake", "fake": "real"}
    answers = [gold[0], wrong[gold[0]], wrong[gold[0]], wrong[gold[0]],  # clip 0: ordered 1/2, shuffled 0/2
               wrong[gold[4]], wrong[gold[4]], gold[4], gold[4]]  # clip 1: ordered 0/2, shuffled 2/2
    rollout.completions = [f"<think>look</think><answer>{a}</answer>" for a in answers]
    scored = recipe.score(rollout, purpose="train")
    assert len(scored) == 4 and scored.columns["frames_shuffled"] == [False] * 4
    names = scored.reward_names
    temporal = scored.rewards_per_func[:, names.index("avatar_temporal")].tolist()
    # clip 0: 0.5 >= 0.8 x 0 -> the correct ordered row gets 0.3; clip 1: 0 < 0.8 x 1 -> nothing
    assert temporal == pytest.approx([0.3, 0.0, 0.0, 0.0])
    assert scored.rewards.tolist() == pytest.approx([2.3, 1.0, 1.0, 1.0])  # accuracy + format + temporal
    assert recipe.on_step_end(scored) == {"avatar/temporal_bonus_rate": 0.25}


def test_evaluation_shows_ordered_clips_only_and_reports_per_forgery_type(vlm_path):
    recipe = _recipe(vlm_path)
    rows = _rows(8, seed=3)
    metrics = recipe.evaluate(rows, batch_size=8)
    assert "eval/rewards/avatar_temporal/mean" not in metrics  # no shuffled copies: no temporal score
    assert metrics["eval/avatar/parse_failure_rate"] == 1.0  # a random policy writes no answer block
    kinds = {r["forgery_type"] for r in rows}
    assert {k for k in metrics if k.startswith("eval/avatar/accuracy/")} == {f"eval/avatar/accuracy/{k}"
                                                                              for k in kinds}


def test_without_the_temporal_reward_no_copies_are_made(vlm_path):
    from recipes.avatarshield import AvatarShield

    recipe = AvatarShield(vlm_path, ["avatar_accuracy"], num_generations=2, sampling={"max_new_tokens": 4})
    assert len(recipe.generate(_rows(2), purpose="train", num_generations=2)) == 4


def test_avatarshield_refuses_text_models_and_frameless_rows(tiny_model_path, vlm_path):
    from recipes.avatarshield import AvatarShield
    from recipes.base import RecipeConfigError

    with pytest.raises(RecipeConfigError, match="watches video frames: .* is a text model"):
        AvatarShield(str(tiny_model_path), ["avatar_accuracy"], num_generations=2)
    with pytest.raises(RecipeConfigError, match="row 0 has no `frames`"):
        _recipe(vlm_path).generate([{"prompt": "x", "label": "real"}], purpose="eval")


def test_two_step_fit(fit_metrics, vlm_path):
    metrics, train = fit_metrics("recipes/configs/avatarshield.yaml", "--model.model_name_or_path", vlm_path)
    assert train["train/avatar/temporal_bonus_rate"].notna().all()
    assert metrics["eval/avatar/accuracy"].notna().any()
