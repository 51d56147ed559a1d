"""TAPO (arXiv 2505.15692): the thought library, PCC retrieval and selection, template statistics, the word-problem
task, mixed-group composition, template-token masking, advantages over the combined group, checkpoints, and
2 steps through `r1 fit --config`."""

from __future__ import annotations

import doctest
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

import datamodules.tasks.word_problems
import modules.rollout.prefix
import modules.papers.tapo.rollout
import modules.papers.tapo.thoughts
from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from datamodules.tasks.word_problems import make_word_problems
from modules.objectives.advantages import group_advantages
from modules.rollout.engine import SamplingSettings
from modules.papers.tapo import (
    COMPLETION_HEADER,
    DEFAULT_LIBRARY,
    PROMPT_HEADER,
    TemplateStats,
    build_library_from_solutions,
    guided_prompt,
    load_library,
    problem_condition_complexity,
    retrieve_by_pcc,
    save_library,
    select_templates,
    ucb_score,
)
from modules.papers.tapo.rollout import interleave_groups
from recipes.base import RecipeConfigError
from recipes.cli.registry import CONFIG_DIR
from recipes.tapo import TAPO, TEMPLATE_COLUMN

LIB = load_library([{"name": n, "actions": a, "pcc": p} for n, a, p in
                    [("a", ["OST"], 1), ("b", ["SA", "CoT"], 3), ("c", ["SA", "DC", "CoT", "SR"], 5)]])


@pytest.mark.parametrize("module", [modules.papers.tapo.thoughts, modules.papers.tapo.rollout, modules.rollout.prefix,
                                    datamodules.tasks.word_problems])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---- library ----------------------------------------------------------------------------------------------

def test_default_library_and_json_round_trip(tmp_path):
    assert len(DEFAULT_LIBRARY) >= 5
    assert {a for t in DEFAULT_LIBRARY for a in t.actions} == {"SA", "DC", "OST", "CoT", "SR"}
    path = save_library(LIB, tmp_path / "lib.json")
    assert load_library(str(path)) == LIB
    (tmp_path / "wrapped.json").write_text(json.dumps({"templates": [t.to_dict() for t in LIB]}))
    assert load_library(tmp_path / "wrapped.json") == LIB


@pytest.mark.parametrize("entries, match", [
    ([{"name": "x", "actions": ["MCTS"], "pcc": 1}], "unknown action"),
    ([{"name": "x", "actions": ["CoT"], "pcc": 1}] * 2, "repeats template name"),
    ([{"name": "x y", "actions": ["CoT"], "pcc": 1}], "metric key"),
    ([{"name": "x", "actions": ["CoT"], "pcc": -1}], "pcc"),
    ([{"name": "x", "actions": ["CoT"]}], "name, actions and pcc"),
    ([], "empty"),
])
def test_bad_library_entries_name_the_problem(entries, match):
    with pytest.raises(ValueError, match=match):
        load_library(entries)


def test_build_library_abstracts_correct_action_sequences():
    records = [{"actions": ["SA", "DC", "CoT"], "pcc": 4}, {"actions": ["SA", "DC", "CoT"], "pcc": 6},
               {"actions": ["CoT"], "question": "Add 3 and 4 and 5."},
               {"actions": ["CoT"], "pcc": 9, "correct": False},
               {"actions": ["SR"], "pcc": 2, "correct": False}]
    lib = build_library_from_solutions(records)
    assert [(t.name, t.actions, t.pcc) for t in lib] == [("cot", ("CoT",), 3.0),
                                                         ("sa_dc_cot", ("SA", "DC", "CoT"), 5.0)]
    assert [t.name for t in build_library_from_solutions(records, min_successes=2)] == ["sa_dc_cot"]


# ---- PCC, retrieval, selection --------------------------------------------------------------------------------

def test_pcc_counts_given_quantities_and_matches_the_task_column():
    assert problem_condition_complexity("Ann has 3 pens and 12 pencils; she buys 2.5 kg of clay.") == 3
    rows = make_word_problems(200, seed=4, min_steps=1, max_steps=5)
    assert all(problem_condition_complexity(r["question"]) == r["num_conditions"] for r in rows)


def test_retrieval_ranks_by_pcc_distance():
    assert retrieve_by_pcc(3, LIB, 1) == [1]
    assert retrieve_by_pcc(4.2, LIB, 2) == [2, 1]  # |5-4.2| = 0.8 < |3-4.2| = 1.2
    assert retrieve_by_pcc(2, LIB, None) == [0, 1, 2]  # tie a/b (distance 1) keeps library order


def test_selection_modes():
    rng = random.Random(0)
    assert select_templates(5, LIB, 3, mode="pcc", top_k=1, rng=rng) == [2, 2, 2]  # one candidate: repeats
    for _ in range(20):  # without replacement among the top-k while n <= k
        assert sorted(select_templates(3, LIB, 2, mode="uniform", top_k=2, rng=rng)) == [0, 1]
    draws = [select_templates(3, LIB, 1, mode="pcc", top_k=None, rng=rng)[0] for _ in range(3000)]
    # weights 1/(1+|d|): a 1/3, b 1, c 1/3 -> b drawn 3/5 of the time
    assert abs(draws.count(1) / 3000 - 0.6) < 0.04 and abs(draws.count(0) / 3000 - 0.2) < 0.04
    with pytest.raises(ValueError, match="selection"):
        select_templates(3, LIB, 1, mode="best")


def test_ucb_prefers_observed_success_over_the_pcc_prior():
    stats = TemplateStats()
    assert select_templates(3, LIB, 1, mode="ucb", stats=stats, exploration=0.0) == [1]  # prior: PCC match
    for _ in range(10):
        stats.update("a", 1.0, True)
        stats.update("b", 0.0, False)
    # a: (10 + 2 * 0.5) / 12 = 0.917 ; b: (0 + 2 * 1) / 12 = 0.167
    assert select_templates(3, LIB, 2, mode="ucb", stats=stats, exploration=0.0, top_k=2) == [0, 1]
    assert ucb_score(10, 12, 20, prior=0.5) == pytest.approx(11 / 14 + math.sqrt(math.log(21) / 13))


def test_template_stats_and_state_dict():
    s = TemplateStats()
    for reward, ok in [(1.0, True), (0.0, False), (1.0, True), (0.5, False)]:
        s.update("b", reward, ok)
    assert (s.uses("b"), s.mean_reward("b"), s.success_rate("b"), s.total_uses) == (4, 0.625, 0.5, 4)
    assert s.metrics(["b", "c"]) == {"tapo/template/b/uses": 4.0, "tapo/template/b/reward": 0.625,
                                     "tapo/template/b/success": 0.5, "tapo/template/c/uses": 0.0,
                                     "tapo/template/c/reward": 0.0, "tapo/template/c/success": 0.0}
    t = TemplateStats()
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.state_dict() == s.state_dict()


def test_guided_prompt_text_and_chat_form():
    text = guided_prompt("Q?", LIB[1])
    assert text == f"Q?\n\n{PROMPT_HEADER}\n1. {LIB[1].steps()[0]}\n2. {LIB[1].steps()[1]}"
    chat = guided_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}], LIB[1])
    assert chat[0]["content"] == "S" and chat[1]["content"] == text


# ---- word problems --------------------------------------------------------------------------------------------

def _solve(question: str) -> int:
    """An independent reading of the generated story."""
    value = int(re.match(r"\w+ has (\d+)", question).group(1))
    for sentence in question.split(". ")[1:]:
        if m := re.search(r"(?:buys|gives \w+) (\d+) more", sentence):
            value += int(m.group(1))
        elif m := re.search(r"(?:gives|loses) (\d+)", sentence):
            value -= int(m.group(1))
        elif m := re.search(r"have (\d+) times", sentence):
            value *= int(m.group(1))
        elif m := re.search(r"into (\d+) boxes", sentence):
            assert value % int(m.group(1)) == 0
            value //= int(m.group(1))
    return value


def test_word_problems_have_exact_answers_and_condition_counts():
    rows = make_word_problems(300, seed=7, min_steps=2, max_steps=4)
    assert rows == make_word_problems(300, seed=7, min_steps=2, max_steps=4)
    assert set(rows[0]) == {"question", "answer", "num_conditions"}
    assert {r["num_conditions"] for r in rows} == {3, 4, 5}
    assert all(int(r["answer"]) == _solve(r["question"]) >= 0 for r in rows)
    assert make_task("word_problems", 3, seed=7) == make_word_problems(3, seed=7)
    with pytest.raises(DataConfigError, match="min_steps"):
        make_word_problems(2, min_steps=3, max_steps=2)


# ---- the recipe -----------------------------------------------------------------------------------------------

def guided_first(prompts, completions, tapo_template=None, **kwargs):
    """Test reward: 1 for guided rows, 0 for plain ones."""
    return [1.0 if t is not None else 0.0 for t in tapo_template or [None] * len(completions)]


def _recipe(path, **kwargs) -> TAPO:
    torch.manual_seed(0)
    options = dict(rewards=[guided_first], sampling=SamplingSettings(max_new_tokens=4), num_generations=4,
                   n_guided=1, library=[t.to_dict() for t in LIB], accuracy_reward=None)
    return TAPO(model_name_or_path=str(path), **{**options, **kwargs})


ROWS = [{"prompt": f"{q['question']} Answer in \\boxed{{}}.", **q} for q in make_word_problems(2, seed=1)]


def _unpadded(ids, mask):
    return ids[mask.bool()].tolist()


def test_interleave_groups_hand_example():
    assert interleave_groups(2, 3, 1) == [0, 1, 2, 6, 3, 4, 5, 7]
    assert interleave_groups(2, 0, 2) == [0, 1, 2, 3]


def test_group_composition_and_advantages_over_the_combined_group(tiny_model_path):
    recipe = _recipe(tiny_model_path, n_guided=1, num_generations=4)
    rollout = recipe.generate_and_score([dict(r) for r in ROWS], purpose="train", num_generations=4)
    assert rollout.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    names = rollout.columns[TEMPLATE_COLUMN]
    assert [n is None for n in names] == [True, True, True, False] * 2
    assert all(rollout.columns["answer"][i] == ROWS[i // 4]["answer"] for i in range(8))
    for i, prompt in enumerate(rollout.prompts):
        assert (PROMPT_HEADER in prompt) == (names[i] is not None) and prompt.startswith(ROWS[i // 4]["prompt"])
    assert (rollout.injected_mask == 0).all()  # the template is in the prompt: nothing injected in completions
    # group rewards [0, 0, 0, 1]: mean 0.25, unbiased std 0.5 -> plain -0.5, guided +1.5
    adv, _ = recipe.compute_advantages(rollout)
    assert adv.tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5] * 2, abs=1e-3)
    assert torch.allclose(adv, group_advantages(rollout.rewards, 4))
    # at the step's end the guided row's template is recorded with its reward and success
    metrics = recipe.on_step_end(rollout)
    assert recipe.template_stats.total_uses == 2
    assert all(recipe.template_stats.mean_reward(n) == 1.0 for n in names if n)
    # the closest templates by PCC: top_k=3 over LIB, num_conditions of the rows
    assert metrics["tapo/guided_share"] == 0.25 and metrics["tapo/guided_reward"] == 1.0
    assert metrics["tapo/plain_reward"] == 0.0
    assert sum(metrics[f"tapo/template/{t.name}/uses"] for t in LIB) == 2.0
    plain = recipe.generate_and_score([dict(ROWS[0])], purpose="eval", num_generations=2)  # evaluation stays plain
    assert TEMPLATE_COLUMN not in plain.columns and PROMPT_HEADER not in plain.prompts[0]


def test_train_context_plain_rescores_under_the_plain_prompt(tiny_model_path):
    on = _recipe(tiny_model_path, n_guided=2, num_generations=3)
    guided = on.generate_and_score([dict(r) for r in ROWS], purpose="train", num_generations=3)
    off = _recipe(tiny_model_path, n_guided=2, num_generations=3, train_context="plain")
    rescored = off.generate_and_score([dict(r) for r in ROWS], purpose="train", num_generations=3)
    for r in range(6):
        plain_row = (r // 3) * 3
        same = _unpadded(rescored.prompt_ids[r], rescored.prompt_mask[r]) == \
            _unpadded(rescored.prompt_ids[plain_row], rescored.prompt_mask[plain_row])
        assert same  # every row of a group is scored under the plain prompt
        assert rescored.prompts[r] == ROWS[r // 3]["prompt"]
        is_guided = guided.columns[TEMPLATE_COLUMN][r] is not None
        longer = guided.prompt_mask[r].sum() > guided.prompt_mask[plain_row].sum()
        assert bool(longer) == is_guided  # on-policy: the guided prompt (with its template) is kept
    assert rescored.columns[TEMPLATE_COLUMN][1] is not None


@pytest.mark.parametrize("mask_template", [True, False])
def test_template_in_completion_masks_the_forced_tokens(tiny_model_path, mask_template):
    recipe = _recipe(tiny_model_path, n_guided=1, num_generations=2, template_in="completion",
                     mask_template=mask_template)
    rollout = recipe.generate_and_score([dict(r) for r in ROWS], purpose="train", num_generations=2)
    tok = recipe.policy.tokenizer
    for i, name in enumerate(rollout.columns[TEMPLATE_COLUMN]):
        attention, trained = rollout.completion_attention_mask[i], rollout.completion_mask[i]
        if name is None:
            assert torch.equal(attention, trained)
            continue
        template = next(t for t in LIB if t.name == name)
        prefix = tok(modules.papers.tapo.thoughts.guidance_text(template, header=COMPLETION_HEADER, numbered=False) + "\n",
                     add_special_tokens=False)["input_ids"]
        k = len(prefix)
        assert rollout.completion_ids[i, :k].tolist() == prefix  # forced, not sampled
        assert rollout.completions[i].startswith(COMPLETION_HEADER)
        assert attention[:k].tolist() == [1] * k
        assert trained[:k].tolist() == ([0] * k if mask_template else [1] * k)
        assert torch.equal(trained[k:], attention[k:])  # generated tokens are trained
        assert int(rollout.injected_mask[i].sum()) == (k if mask_template else 0)
        assert rollout.prompts[i] == ROWS[i // 2]["prompt"]  # the prompt itself is plain
    metrics = recipe.on_step_end(rollout)
    assert (metrics["tapo/masked_template_tokens"] > 0) == mask_template


def test_checkpoint_keeps_template_stats_and_draw_state(tiny_model_path, tmp_path):
    recipe = _recipe(tiny_model_path)
    recipe.template_stats.update("b", 1.0, True)
    recipe._rng.random()
    ckpt = {"state_dict": recipe.state_dict()}
    recipe.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    fresh = _recipe(tiny_model_path)
    fresh.on_load_checkpoint(loaded)
    assert fresh.template_stats.state_dict() == recipe.template_stats.state_dict()
    assert fresh._rng.random() == recipe._rng.random()


@pytest.mark.parametrize("options, match", [
    (dict(n_guided=5, num_generations=4), "n_guided=5"),
    (dict(selection="best"), "selection='best'"),
    (dict(template_in="completion", train_context="plain"), "train_context='plain'"),
    (dict(mask_template=False), "mask_template=false"),
    (dict(top_k=0), "top_k=0"),
    (dict(library=[{"name": "x", "actions": ["XX"], "pcc": 1}]), "model.library"),
])
def test_bad_options_fail_before_the_model_loads(options, match):
    with pytest.raises(RecipeConfigError, match=re.escape(match)):
        TAPO(model_name_or_path="./no/such/model", rewards=["accuracy"], **options)


# ---- end to end -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    [],
    ["--model.template_in", "completion", "--model.selection", "ucb", "--model.train_context", "guided"],
], ids=["prompt", "completion-ucb"])
def test_config_trains_two_steps_on_the_tiny_model(fit_metrics, tmp_path, variant):
    _, train = fit_metrics(CONFIG_DIR / "tapo.yaml", "--model.n_guided", "1", *variant,
                           "--model.batching.skip_zero_signal_steps", "false")
    for key in ("guided_reward", "plain_reward", "guided_accuracy", "plain_accuracy", "guided_share", "pcc"):
        assert f"train/tapo/{key}" in train
    assert (train["train/tapo/guided_share"] == 0.5).all()
    uses = train.filter(regex=r"^train/tapo/template/.*/uses$")
    assert len(uses.columns) == len(DEFAULT_LIBRARY) and "train/tapo/template/one_step/reward" in train
    assert uses.sum(axis=1).tolist() == [2.0, 4.0]  # 2 prompts x 1 guided rollout per step, cumulative
    if variant:
        assert "train/tapo/masked_template_tokens" in train
    ckpt = torch.load(next(Path(tmp_path).rglob("*.ckpt")), weights_only=True)
    assert sum(v["uses"] for v in ckpt["recipe_state"]["template_stats"].values()) == 4
