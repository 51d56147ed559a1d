"""The Pixel Reasoner recipe on a tiny random Qwen2-VL: a scripted zoom through the recipe's own engine and tools,
its rewards end to end (correct + curiosity, a failed final operation forced to 0), the step metrics, a 2-step
`r1 fit --config`, and the warm start -> GRPO pipeline through `r1 run`."""

from __future__ import annotations

import json

import pytest

from datamodules.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def vlm_path(tiny_vlm):
    return tiny_vlm("qwen2_vl")


def _recipe(path, **kwargs):
    from recipes.pixel_reasoner import PixelReasoner

    return PixelReasoner(path, ["pixel_answer", "pixel_shaping"], num_generations=4,
                         sampling={"max_new_tokens": 200}, max_turns=2, **kwargs)


def _script(engine, turns: list[list[str]]):
    """Turn k of row j writes turns[k][j] (rows still active, in order)."""
    tok = engine.policy.tokenizer
    state = {"k": 0}

    def fake(contexts, max_new_tokens, greedy, vision=None):
        texts = turns[state["k"]]
        state["k"] += 1
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts[:len(contexts)]]

    engine._generate_turn = fake


def test_a_zoom_then_answer_earns_the_answer_and_the_curiosity_bonus(vlm_path):
    recipe = _recipe(vlm_path)
    row = next(r for r in make_task("pixel_search", 4, seed=0) if r["kind"] == "zoom")
    row = {**row, "prompt": row["question"]}
    zoom = json.dumps({"name": "crop_image_normalized",
                       "arguments": {"bbox_2d": [round(v, 2) for v in row["target_bbox"]],
                                     "target_image": 1}})
    bad = json.dumps({"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.5, 0.5, 0.1, 0.1],
                                                                     "target_image": 1}})
    answer = f"\\boxed{{{row['answer']}}}<|im_end|>"
    # row 0 zooms then answers; row 1 answers at once; row 2 errs and answers anyway; row 3 answers wrong
    _script(recipe.rollout_engine, [[f"<tool_call>{zoom}</tool_call>", answer, f"<tool_call>{bad}</tool_call>",
                                     "\\boxed{?}<|im_end|>"], [answer, answer]])
    rollout = recipe.generate_and_score([row], purpose="train", num_generations=4)
    assert "You may call one or more functions" in recipe.policy.tokenizer.decode(rollout.prompt_ids[0])
    assert rollout.columns["tool_calls"] == [1, 0, 1, 0] and rollout.columns["last_tool_error"] == [False, False,
                                                                                                    True, False]
    names = rollout.reward_names
    answer_r = rollout.rewards_per_func[:, names.index("pixel_answer")].tolist()
    shaping = rollout.rewards_per_func[:, names.index("pixel_shaping")].tolist()
    assert answer_r == [1.0, 1.0, 0.0, 0.0]  # the errored, never fixed operation forces 0
    # paper form: RaPR = 2/4 >= H = 0.3, so no curiosity; one operation each = N: no penalty
    assert shaping == [0.0, 0.0, 0.0, 0.0]
    n_images = rollout.vision[0]["image_grid_thw"].shape[0]
    assert n_images == 2 and rollout.vision[1]["image_grid_thw"].shape[0] == 1  # the crop joined row 0 only
    stats = recipe.on_step_end(rollout)
    assert stats == {"pixel/rapr": 0.5, "pixel/operations_per_rollout": 0.5, "pixel/operation_error_rate": 0.5}


def test_curiosity_applies_below_the_target_rate_in_both_forms(vlm_path):
    rows = [{**r, "prompt": r["question"]} for r in make_task("pixel_search", 2, seed=1) if r["kind"] == "zoom"]
    zoom = json.dumps({"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.0, 0.0, 0.5, 0.5],
                                                                      "target_image": 1}})
    rapr = 1 / 8  # one rollout of eight zooms
    expected = {"paper": 0.5 * (0.3 - rapr), "code": (0.3 - rapr) / 2 / rapr * 0.25}  # alpha 0.5 / 0.25, image: /2
    for form, bonus in expected.items():
        recipe = _recipe(vlm_path)
        recipe.num_generations = 8
        recipe.reward_set = type(recipe.reward_set).from_specs(
            ["pixel_answer", {"name": "pixel_shaping", "kwargs": {"form": form}}])
        _script(recipe.rollout_engine, [[f"<tool_call>{zoom}</tool_call>"] + [f"{i}<|im_end|>" for i in range(7)],
                                        ["\\boxed{x}<|im_end|>"]])
        rollout = recipe.generate_and_score(rows[:1], purpose="train", num_generations=8)
        shaping = rollout.rewards_per_func[:, 1].tolist()
        assert shaping[0] == pytest.approx(bonus) and shaping[1:] == [0.0] * 7, form
    assert expected["paper"] != pytest.approx(expected["code"])


def test_pixel_reasoner_refuses_a_text_model(tiny_model_path):
    from recipes.base import RecipeConfigError
    from recipes.pixel_reasoner import PixelReasoner

    with pytest.raises(RecipeConfigError, match="operations return images: .* is a text model"):
        PixelReasoner(str(tiny_model_path), ["pixel_answer"], num_generations=2)


def test_two_step_fit(fit_metrics, vlm_path):
    metrics, train = fit_metrics("recipes/configs/pixel_reasoner.yaml", "--model.model_name_or_path", vlm_path,
                                 "--model.sampling.max_new_tokens", "16")
    assert "train/pixel/rapr" in train.columns and train["train/pixel/rapr"].notna().all()
    assert metrics["eval/pixel/rapr"].notna().any()


def test_warm_start_then_grpo_pipeline_runs(vlm_path, tmp_path):
    from recipes.cli import main

    code = main(["run", "--config", "recipes/pipelines/pixel_reasoner.yaml", "--root", str(tmp_path),
                 "--model", vlm_path, "--override", "trainer.max_steps=2", "--override", "data.init_args.num_rows=12",
                 "--override", "data.init_args.val_size=2", "--override", "trainer.enable_progress_bar=false",
                 "--override", "model.init_args.sampling.max_new_tokens=16"])
    assert code == 0
    warm = json.loads((tmp_path / "warm" / "stage_output.json").read_text())
    grpo = json.loads((tmp_path / "grpo" / "stage_output.json").read_text())
    assert warm["global_step"] == 2 and grpo["global_step"] == 2
    assert warm["metrics"]["train/tokens"] > 0  # the SFT stage trained on trace tokens
    assert "train/pixel/rapr" in grpo["metrics"]
