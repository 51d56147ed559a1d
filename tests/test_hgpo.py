"""LHRM / HGPO (spec 14): hand-computed rewards and per-token advantages (Eqs. 5-10), HAcc, the forced-mode rollout,
hybrid rewards and data, a 2-step `r1 fit` smoke run and the 2-stage pipeline (HFT SFT -> HGPO) with restart."""

from __future__ import annotations

import json
import math

import pytest
import torch

from datamodules.tasks.hybrid import make_hybrid, make_hybrid_sft
from modules.papers.hgpo.objectives import hgpo_advantages, hgpo_rewards, hybrid_accuracy, mode_token_mask, reference_mode
from modules.rollout.engine import SamplingSettings
from modules.papers.hgpo.rewards import extract_hybrid_answer, hybrid_correct, parse_mode, toy_chat_rm
from recipes.base import RecipeConfigError
from recipes.hgpo import HGPO, MODE_COLUMN, mode_token_span
from recipes.cli.registry import CONFIG_DIR

EPS = 1e-4
SD4 = math.sqrt(1 / 3)  # unbiased std of [1, 1, 0, 0]
G = 0.5 / (SD4 + EPS)  # GRPO value of a 1 (and minus that of a 0) in [1, 1, 0, 0]
THINK_FIRST = torch.tensor([1, 1, 0, 0])  # 2 think then 2 no-think responses of one query
ONE_GROUP = torch.zeros(4, dtype=torch.long)


# ------------------------------------------------------------------------------------------ Eqs. 5-9
def test_rewards_of_a_hand_made_group():
    # think rewards [1, 0] (mean 0.5), no-think [0.5, 0] (mean 0.25): 0.5 > 0.25 + 0.2 -> think wins.
    r = torch.tensor([1.0, 0.0, 0.5, 0.0])
    r_inter, r_intra = hgpo_rewards(r, THINK_FIRST, ONE_GROUP, delta=0.2)
    assert r_inter.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert r_intra.tolist() == [1.0, 0.0, 1.0, 0.0]  # the best of each mode
    # A larger margin flips the winner: 0.25 + 0.3 > 0.5.
    assert hgpo_rewards(r, THINK_FIRST, ONE_GROUP, delta=0.3)[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    # delta = 0: plain argmax of the means.
    assert hgpo_rewards(r, THINK_FIRST, ONE_GROUP, delta=0.0)[0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_argmax_ties():
    # Inter tie: 0.5 == 0.3 + 0.2 -> no-think wins (documented rule). Intra tie in no-think: [0.3, 0.3].
    r = torch.tensor([1.0, 0.0, 0.3, 0.3])
    r_inter, r_intra = hgpo_rewards(r, THINK_FIRST, ONE_GROUP, delta=0.2)
    assert r_inter.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert r_intra.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert hgpo_rewards(r, THINK_FIRST, ONE_GROUP, delta=0.2, ties="first")[1].tolist() == [1.0, 0.0, 1.0, 0.0]
    # All equal (e.g. every response wrong): no-think wins by the margin, every response is its mode's best.
    r_inter, r_intra = hgpo_rewards(torch.zeros(4), THINK_FIRST, ONE_GROUP)
    assert r_inter.tolist() == [0.0, 0.0, 1.0, 1.0] and r_intra.tolist() == [1.0] * 4


def test_rewards_work_per_query_and_need_both_modes():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    modes = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    r_inter, r_intra = hgpo_rewards(rewards, modes, groups)
    # query 0: think 0.5 > 0 + 0.2; query 1: think 0.5 < 1 + 0.2.
    assert r_inter.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert r_intra.tolist() == [1, 0, 1, 1, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="needs both modes"):
        hgpo_rewards(torch.zeros(2), torch.tensor([1, 1]), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------ Eq. 10
def _masks():
    completion = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])  # (4, T=4), right-padded
    mode = mode_token_mask(completion, [0, 0, 0, 0], [1, 1, 1, 1])  # the mode token is the first completion token
    return completion, mode


def test_advantages_match_eq_10_by_hand():
    completion, mode = _masks()
    r_inter, r_intra = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv = hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion, alpha=1.0)
    # GRPO over all 4 outputs of the query: r_inter -> [G, G, -G, -G], r_intra -> [G, -G, G, -G].
    expected = torch.tensor([
        [2 * G, G, G, 0.0],     # think, best of its mode: mode token gets intra + inter
        [0.0, -G, 0.0, 0.0],    # think, not best: -G + G on the mode token
        [0.0, G, G, G],         # no-think, best: G - G on the mode token
        [-2 * G, -G, -G, 0.0],  # no-think, not best
    ])
    assert torch.allclose(adv, expected, atol=1e-6)
    # alpha scales only the inter term on the mode token.
    half = hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion, alpha=0.5)
    assert torch.allclose(half[:, 0], torch.tensor([1.5 * G, -0.5 * G, 0.5 * G, -1.5 * G]), atol=1e-6)
    assert torch.allclose(half[:, 1:], expected[:, 1:], atol=1e-6)


def test_only_the_mode_token_gets_the_inter_term():
    completion = torch.ones(4, 6, dtype=torch.long)
    mode = mode_token_mask(completion, [1, 1, 1, 1], [1, 1, 1, 1])  # e.g. "<", "think", ">": the 2nd token decides
    r_inter, r_intra = torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    with_inter = hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion)
    without = hgpo_advantages(torch.zeros(4), r_intra, ONE_GROUP, mode, completion)
    extra = with_inter - without  # (4, 6)
    assert torch.equal(extra != 0, mode.bool())
    assert torch.allclose(extra[:, 1], torch.tensor([-G, -G, G, G]), atol=1e-6)


def test_advantage_options_and_checks():
    completion, mode = _masks()
    r_inter, r_intra = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    # norm="mode": r_intra within each mode's pair [1, 0] -> +-0.5 / (std 0.7071 + eps); r_inter over all 4.
    g2 = 0.5 / (math.sqrt(0.5) + EPS)
    adv = hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion, norm="mode", modes=THINK_FIRST)
    assert torch.allclose(adv[:, 1], torch.tensor([g2, -g2, g2, -g2]), atol=1e-6)
    assert torch.allclose(adv[:, 0], torch.tensor([g2 + G, -g2 + G, g2 - G, -g2 - G]), atol=1e-6)
    # RLOO: x_i - mean of the other 3 = 4/3 * (x_i - mean).
    rloo = hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion, estimator="rloo")
    assert torch.allclose(rloo[0, :2], torch.tensor([4 / 3, 2 / 3]), atol=1e-6)
    # A query with equal rewards in every row gets no signal from that term.
    flat = hgpo_advantages(torch.ones(4), torch.ones(4), ONE_GROUP, mode, completion)
    assert torch.equal(flat, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="must be trained"):
        hgpo_advantages(r_inter, r_intra, ONE_GROUP, torch.ones(4, 4).long(), completion)
    with pytest.raises(ValueError, match="norm='mode' needs"):
        hgpo_advantages(r_inter, r_intra, ONE_GROUP, mode, completion, norm="mode")


def test_mode_token_span():
    assert mode_token_span({"think": [5, 7, 9], "no_think": [5, 8, 6, 9]}) == {"think": (1, 1), "no_think": (1, 1)}
    assert mode_token_span({"think": [508], "no_think": [30, 80, 81]}) == {"think": (0, 1), "no_think": (0, 1)}
    assert mode_token_span({"think": [5, 7], "no_think": [5, 8, 6]}, "tag") == {"think": (0, 2), "no_think": (0, 3)}
    with pytest.raises(ValueError, match="do not differ"):
        mode_token_span({"think": [5, 7], "no_think": [5, 7, 6]})


# ------------------------------------------------------------------------------------------ HAcc
def test_hybrid_accuracy_on_a_made_up_case():
    chosen = ["think", "think", "think", None]
    think_scores = [[1, 1], [1, 1], [0.5, 0.5], [0, 0]]
    no_think_scores = [[0, 0], [1, 1], [0.45, 0.45], [1, 0]]
    think_lengths = [[50, 50], [40, 40], [10, 10], [30, 30]]
    no_think_lengths = [[5, 5], [5, 5], [20, 20], [5, 5]]
    hacc, refs = hybrid_accuracy(chosen, think_scores, no_think_scores, think_lengths, no_think_lengths, margin=0.1)
    # q0: think scores higher; q1: tie -> shorter (no-think); q2: within the margin -> shorter (think here);
    # q3: no-think higher, and the model wrote no tag (never a match).
    assert refs == ["think", "no_think", "think", "no_think"]
    assert hacc == 0.5
    assert reference_mode([0.5], [0.45], [10], [20], margin=0.0) == "think"
    assert reference_mode([0.45], [0.5], [10], [20], margin=0.0) == "no_think"


# ------------------------------------------------------------------------------------------ rewards and data
def test_hybrid_rewards_and_data():
    assert parse_mode("\n<no_think>x</no_think>") == "no_think" and parse_mode("<think>") == "think"
    assert extract_hybrid_answer("<think>a</think>b</think> 12") == "12"
    assert extract_hybrid_answer("<no_think>7") is None
    assert hybrid_correct(None, ["<think>2*6=12</think>The answer is 12.", "<no_think>12</no_think> 13",
                                 "<think>12", "<no_think>-4</no_think>"], answer=["12", "12", "12", "-4"]) \
        == [1.0, 1.0, 0.0, 1.0]
    assert toy_chat_rm(None, ["<think>greet</think>Hello there", "<no_think>" + "word " * 30 + "Ana</no_think>"],
                       keywords=[["hello", "Ana"], ["ana"]]) == pytest.approx([0.35 + 0.3, 0.7])
    rows = make_hybrid(60, seed=0)
    assert {r["kind"] for r in rows} == {"easy", "multi", "chat"}
    for r in rows:
        assert (r["answer"] is None) == (r["kind"] == "chat") == (r["keywords"] is not None)
        if r["kind"] == "multi":  # the question is a valid expression with the stated answer
            assert eval(r["question"].removeprefix("Compute ").rstrip(".")) == int(r["answer"])
    sft = make_hybrid_sft(200, seed=0, cross_share=0.0)
    for r in sft:
        assert r["target_mode"] == ("think" if r["kind"] == "multi" else "no_think")
        assert parse_mode(r["response"]) == r["target_mode"]
        scored = hybrid_correct(None, [r["response"]], answer=[r["answer"]]) if r["answer"] else \
            toy_chat_rm(None, [r["response"]], keywords=[r["keywords"]])
        assert scored == [1.0]  # every target earns the full reward
    crossed = make_hybrid_sft(400, seed=0, cross_share=0.25)
    share = sum(r["target_mode"] != ("think" if r["kind"] == "multi" else "no_think") for r in crossed) / 400
    assert 0.15 < share < 0.35


# ------------------------------------------------------------------------------------------ the recipe
REWARDS = [{"name": "hybrid_correct"}, {"name": "toy_chat_rm"}]


def test_forced_rollout_trains_the_mode_token_and_advantages_land_on_it(tiny_model_path):
    torch.manual_seed(0)
    module = HGPO(str(tiny_model_path), rewards=REWARDS, num_generations=4,
                  sampling=SamplingSettings(max_new_tokens=5, temperature=0.6, top_p=0.95))
    rows = [{"prompt": r["question"], **r} for r in make_hybrid(2, seed=3, chat_share=0.5)]
    rollout = module.generate_and_score(rows, purpose="train", num_generations=4)  # training: forced per mode
    assert rollout.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert rollout.columns[MODE_COLUMN] == ["think", "think", "no_think", "no_think"] * 2
    for text, mode in zip(rollout.completions, rollout.columns[MODE_COLUMN]):
        assert parse_mode(text) == mode
    prefix = {m: len(ids) for m, ids in module.prefixes.items()}
    for i, mode in enumerate(rollout.columns[MODE_COLUMN]):  # the forced tag is trained
        assert rollout.completion_mask[i, :prefix[mode]].tolist() == [1] * prefix[mode]
        assert rollout.completion_ids[i, :prefix[mode]].tolist() == module.prefixes[mode]
    rollout.rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    adv, metrics = module.compute_advantages(rollout)  # (N, T)
    mask = module.mode_mask(rollout)
    start = module.mode_spans["think"][0]
    assert mask.sum(-1).tolist() == [1] * 8 and bool((mask[:, start] == 1).all())
    trained = rollout.completion_mask.bool()
    # Query 0: think [1, 0] beats no-think [0.5, 0] + 0.2; r_intra [1, 0, 1, 0] -> +-G.
    # Query 1: no-think [1, 0] + 0.2 beats think [0, 0]; r_intra [1, 1, 1, 0] (think tie: ties="all").
    sd = torch.tensor([1.0, 1.0, 1.0, 0.0]).std().item()  # 0.5
    a_intra = torch.cat([torch.tensor([G, -G, G, -G]), torch.tensor([0.25, 0.25, 0.25, -0.75]) / (sd + EPS)])
    a_inter = torch.tensor([G, G, -G, -G, -G, -G, G, G])
    expected = (a_intra[:, None] + a_inter[:, None] * mask) * trained
    assert torch.allclose(adv, expected, atol=1e-5)
    assert metrics["hgpo/r_inter/think"] == 0.5 and metrics["hgpo/reward/think"] == 0.25
    free = module.generate_and_score(rows, purpose="eval", num_generations=1)  # evaluation: the model picks
    assert MODE_COLUMN not in free.columns and len(free) == 2


def test_bad_settings_name_the_field(tiny_model_path):
    with pytest.raises(RecipeConfigError, match="num_generations=3"):
        HGPO(str(tiny_model_path), rewards=REWARDS, num_generations=3)
    with pytest.raises(RecipeConfigError, match="advantage_norm='query'"):
        HGPO(str(tiny_model_path), rewards=REWARDS, advantage_norm="query")
    with pytest.raises(RecipeConfigError, match="scale_rewards='batch'"):
        HGPO(str(tiny_model_path), rewards=REWARDS, objective={"scale_rewards": "batch"})


def test_config_trains_two_steps_on_the_tiny_model(fit_metrics):
    # A per-function reward mean is NaN when no row of the batch has that kind (no chat prompt): not checked.
    metrics, train = fit_metrics(CONFIG_DIR / "hgpo.yaml", "--model.batching.skip_zero_signal_steps", "false",
                                 finite=r"^train/(?!rewards/.*/mean$)")
    for key in ("think_rate", "no_mode_rate", "r_inter/think", "r_inter/no_think", "reward/think",
                "reward/no_think", "length/think", "length/no_think"):
        assert train[f"train/hgpo/{key}"].notna().all(), key
    hacc = metrics.dropna(subset=["eval/hacc"])
    assert hacc["step"].tolist() == [0, 2] and hacc["eval/hacc"].between(0, 1).all()
    assert "eval/hacc/think_rate/easy" in metrics


@pytest.mark.slow
def test_two_stage_pipeline_runs_and_restarts_from_hgpo(tiny_model_path, tmp_path):
    from recipes.cli.stages import main as run_main, read_done

    pipeline = CONFIG_DIR.parent / "pipelines" / "lhrm.yaml"
    overrides = ["trainer.max_steps=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 "trainer.logger=false", "data.init_args.num_rows=32", "data.init_args.val_size=4",
                 "data.init_args.batch_size=2", "model.init_args.sampling.max_new_tokens=6"]
    args = ["--config", str(pipeline), "--model", str(tiny_model_path), "--root", str(tmp_path)]
    for o in overrides:
        args += ["--override", o]
    assert run_main(args) == 0
    hft, hgpo = read_done(tmp_path / "hft"), read_done(tmp_path / "hgpo")
    assert hft["kind"] == hgpo["kind"] == "fit"
    stage2 = (tmp_path / "hgpo" / "fit_config.yaml").read_text()
    assert hft["model_path"] in stage2 and "recipes.hgpo.HGPO" in stage2  # HGPO starts from the merged HFT model
    assert "recipes.sft.SFT" in (tmp_path / "hft" / "fit_config.yaml").read_text()
    assert 0.0 <= hft["metrics"]["eval/hacc"] <= 1.0 and 0.0 <= hgpo["metrics"]["eval/hacc"] <= 1.0
    assert math.isfinite(hgpo["metrics"]["train/hgpo/r_inter/think"])
    stamp = (tmp_path / "hft" / "DONE.json").stat().st_mtime_ns
    hgpo_stamp = (tmp_path / "hgpo" / "DONE.json").stat().st_mtime_ns
    assert run_main(args + ["--restart_from", "hgpo"]) == 0
    assert (tmp_path / "hft" / "DONE.json").stat().st_mtime_ns == stamp  # the finished stage is skipped
    assert (tmp_path / "hgpo" / "DONE.json").stat().st_mtime_ns != hgpo_stamp
    assert json.loads((tmp_path / "hgpo" / "DONE.json").read_text())["model_path"] == str(tmp_path / "hgpo" / "model")
