"""The two single-turn image recipes on tiny random VLMs: GUI-G1 (`recipes.gui_g1`) and 360-R1 (`recipes.omni_r1`).

Their maths on hand-computed cases (GUI-G1's /64 loss with per-sample difficulty weights, advantages without std;
the difficulty-weight options), their metrics, and a 2-step `r1 fit --config` of each recipe on each architecture.
"""

from __future__ import annotations

import pytest
import torch

from datamodules.tasks import make_task
from modules.papers.gui_g1.rewards import difficulty_weight
from recipes.base import RecipeConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ["qwen2_vl", "idefics3"]


def _rows(task, n, seed):
    return [{**r, "prompt": r["question"]} for r in make_task(task, n, seed=seed)]




@pytest.fixture
def vlm_paths(tiny_vlm):
    return {arch: tiny_vlm(arch) for arch in ARCHS}


def _gui(path, **kwargs):
    from recipes.gui_g1 import GUIG1

    return GUIG1(path, ["gui_hit", "gui_iou", "gui_box"], num_generations=2, sampling={"max_new_tokens": 6},
                 **kwargs)


def test_gui_g1_loss_is_each_rows_sum_over_64_times_its_difficulty_weight(vlm_paths):
    recipe = _gui(vlm_paths["qwen2_vl"])
    assert recipe.objective.loss_type == "dr_grpo" and recipe.objective.loss_divisor == 64
    assert recipe.objective.scale_rewards == "none" and recipe.objective.beta == 0.0
    rows = _rows("gui_screens", 3, 1)
    rollout = recipe.generate_and_score(rows, purpose="train", num_generations=2)
    assert torch.equal(rollout.sample_weights, torch.tensor([r["rate"] for r in rows for _ in range(2)]))
    assert len(set(rollout.sample_weights.tolist())) > 1  # the hand check below needs unequal weights
    rollout.advantages = torch.tensor([1.0, -0.5, 2.0, 0.0, -1.0, 0.25])
    loss, _ = recipe.loss(rollout, mini_rows=6.0, mini_tokens=float(rollout.completion_mask.sum()))
    # with pi_old = pi (one pass) every ratio is 1: token loss -A_i; row sum -A_i * |o_i|; / 64; times w_i; mean.
    lengths = rollout.completion_mask.sum(-1).float()
    expected = (rollout.sample_weights * -rollout.advantages * lengths / 64.0).mean()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=1e-5)
    # 64, not the 6-token budget Dr.GRPO would divide by
    assert abs(float(expected)) > 0 and not torch.isclose(expected, expected * 64 / 6)


def test_gui_g1_advantages_subtract_the_group_mean_without_std(vlm_paths):
    recipe = _gui(vlm_paths["idefics3"])
    rollout = recipe.generate_and_score(_rows("gui_screens", 2, 0), purpose="train", num_generations=2)
    rollout.rewards = torch.tensor([1.375, 0.0, 0.5, 0.25])
    advantages, _ = recipe.compute_advantages(rollout)
    torch.testing.assert_close(advantages, torch.tensor([0.6875, -0.6875, 0.125, -0.125]))


def test_gui_g1_difficulty_weight_options(vlm_paths):
    rows = _rows("gui_screens", 2, 3)
    computed = _gui(vlm_paths["qwen2_vl"], difficulty_weight="box_area")
    rollout = computed.generate_and_score([{k: v for k, v in r.items() if k != "rate"} for r in rows],
                                          purpose="train", num_generations=2)
    want = [difficulty_weight("box_area", r["solution"], r["image_size"]) for r in rows for _ in range(2)]
    torch.testing.assert_close(rollout.sample_weights, torch.tensor(want))
    off = _gui(vlm_paths["qwen2_vl"], difficulty_weight=None)
    assert off.generate_and_score(rows, purpose="train", num_generations=2).sample_weights is None
    evaluated = _gui(vlm_paths["qwen2_vl"]).generate_and_score(rows, purpose="eval", num_generations=1)
    assert evaluated.sample_weights is None  # weights are a training-loss matter only
    with pytest.raises(RecipeConfigError, match="model.difficulty_weight='area'; use 'rate'"):
        _gui(vlm_paths["qwen2_vl"], difficulty_weight="area")
    with pytest.raises(RecipeConfigError, match="the rows have no 'rate' column"):
        _gui(vlm_paths["qwen2_vl"]).generate_and_score([{"prompt": "x", "images": rows[0]["images"],
                                                         "solution": [0, 0, 1, 1], "image_size": [224, 168]}],
                                                       purpose="train", num_generations=2)


def test_gui_g1_metrics_split_by_difficulty(vlm_paths):
    from recipes.gui_g1 import box_statistics

    recipe = _gui(vlm_paths["qwen2_vl"])
    rows = _rows("gui_screens", 6, 2)
    rollout = recipe.generate_and_score(rows, purpose="eval", num_generations=1)
    # overwrite the random policy's text with hand-made answers: a hit on row 0, a miss on row 1, junk elsewhere
    x1, y1, x2, y2 = rows[0]["solution"]
    rollout.completions = [f'[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}]', '[{"bbox_2d": [0, 0, 1, 1]}]'] + \
        ["no box"] * 4
    stats = box_statistics(rollout)
    assert stats["all/hit_rate"] == pytest.approx(1 / 6) and stats["all/parse_failure_rate"] == pytest.approx(4 / 6)
    level = rows[0]["difficulty"]
    n_level = sum(r["difficulty"] == level for r in rows)
    assert stats[f"{level}/hit_rate"] == pytest.approx(1 / n_level)
    out = recipe.eval_metrics([rollout])
    assert out["eval/gui/all/mean_iou"] == pytest.approx(1 / 6)


def test_image_recipes_refuse_a_text_model(tiny_model_path):
    from recipes.omni_r1 import OmniR1

    with pytest.raises(RecipeConfigError, match="GUI-G1 grounds boxes in screenshots: .* is a text model"):
        _gui(str(tiny_model_path))
    with pytest.raises(RecipeConfigError, match="360-R1 answers questions about panorama images"):
        OmniR1(str(tiny_model_path), ["omni_format"], num_generations=2)


def test_omni_r1_rewards_and_metrics_per_question_type(vlm_paths):
    from recipes.omni_r1 import OmniR1

    recipe = OmniR1(vlm_paths["qwen2_vl"], [{"name": "omni_reasoning", "weight": 0.5}, "omni_answer", "omni_format"],
                    num_generations=2, sampling={"max_new_tokens": 4}, metrics_encoder="tfidf",
                    accuracy_reward=None)
    rows = _rows("panorama", 3, 0)
    rollout = recipe.generate_and_score(rows, purpose="eval", num_generations=1)
    assert "You are looking at a 360-degree" in recipe.policy.tokenizer.decode(rollout.prompt_ids[0])
    rollout.completions = [f"<think> {rows[0]['reasoning']} </think> <answer> {rows[0]['answer']} </answer>",
                           f"<think> x </think> <answer> {rows[1]['answer']} </answer>", "nothing"]
    scored = recipe.score(rollout, purpose="eval")
    per = scored.rewards_per_func  # (3, 3): reasoning, answer, format
    assert per[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert per[1, 1] == pytest.approx(1.0, abs=1e-4) and per[1, 0] < 0.5 and per[1, 2] == 1.0
    assert per[2].tolist() == [0.0, 0.0, 0.0]
    assert scored.rewards[0] == pytest.approx(2.5, abs=1e-4)  # the reasoning reward's weight 0.5 applies
    stats = recipe.eval_metrics([scored])
    kinds = [r["question_type"] for r in rows]
    assert stats["eval/omni/accuracy"] == pytest.approx(2 / 3)
    assert stats[f"eval/omni/accuracy/{kinds[2]}"] < 1.0 or kinds.count(kinds[2]) > 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config,metric", [("gui_g1.yaml", "train/gui/all/parse_failure_rate"),
                                           ("omni_r1.yaml", "train/omni/accuracy")])
def test_two_step_fit_of_each_image_recipe_on_each_architecture(fit_metrics, vlm_paths, arch, config, metric):
    metrics, train = fit_metrics(f"recipes/configs/{config}", "--model.model_name_or_path", vlm_paths[arch],
                                 "--model.num_generations", "2")
    assert metric in train.columns and train[metric].notna().all()
    assert metrics.filter(regex="^eval/").notna().any().any()  # the held-out callback ran the recipe's metrics


def test_r1_list_shows_the_four_image_papers_as_implemented(capsys):
    from recipes.cli import main
    from recipes.cli.registry import RECIPES

    assert main(["list"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    for paper in ("2505.15810", "2505.14197", "2505.15966", "2505.15173"):  # GUI-G1, 360-R1, Pixel Reasoner, AvatarShield
        assert paper in out
    assert {RECIPES[name].status for name in ("gui_g1", "omni_r1", "pixel_reasoner", "avatarshield")} == {"implemented"}


@pytest.mark.parametrize("config,images", [("scale/gui_g1-qwen2.5-vl-3b-lora.yaml", "{width: 224, height: 168}"),
                                           ("scale/gui_g1-qwen2.5-vl-3b-qlora-24gb.yaml", "{width: 224, height: 168}"),
                                           ("scale/omni_r1-qwen2.5-vl-3b-lora.yaml", "{width: 448, height: 224}")])
def test_gpu_configs_run_two_steps_on_a_tiny_stand_in(fit_metrics, vlm_paths, config, images):
    """The configs a user runs on a GPU (Qwen2.5-VL-3B, LoRA / QLoRA, gradient checkpointing, max_pixels), on CPU
    with the tiny Qwen2-VL in the model's place and small images: every setting they hold is accepted and used."""
    if "qlora" in config:
        pytest.importorskip("bitsandbytes")
    metrics, train = fit_metrics(f"recipes/configs/{config}", "--model.model_name_or_path", vlm_paths["qwen2_vl"],
                                 "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.dtype",
                                 "float32", "--data.task_kwargs", images, "--model.sampling.max_new_tokens", "8")
    assert (train["train/skipped_backward"] == 1).all() or train["train/grad_norm"].notna().all()
