"""NOVER (arXiv 2505.16022): reasoning perplexity, rank / efficiency rewards, the proxy model, a 2-step run."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.errors import DataConfigError
from datamodules.tasks import make_task
from modules.policy import LoraSettings, Policy
from modules.papers.nover.proxy import ProxyModel
from modules.papers.nover.rewards import (
    efficiency_rewards,
    gated_total,
    length_normaliser,
    parse_think_answer,
    rank_rewards,
    reasoning_perplexity,
    scoring_ids,
    target_token_logps,
)
from modules.rollout.batch import RolloutBatch
from modules.rollout.hf import HFGenerateEngine
from recipes.base import RecipeConfigError
from recipes.nover import NOVER, NOVER_TEMPLATE
from recipes.cli.registry import CONFIG_DIR

LORA = LoraSettings(r=4, alpha=8)


# ---- pure functions ---------------------------------------------------------------------------------

def test_length_normaliser_log10_default_and_other_bases():
    assert length_normaliser(1) == 1.0
    assert length_normaliser(1000) == pytest.approx(4.0)
    assert length_normaliser(1000, base=math.e) == pytest.approx(1 + math.log(1000))
    assert length_normaliser(0) == 1.0
    with pytest.raises(ValueError, match="base"):
        length_normaliser(10, base=1.0)


@pytest.mark.parametrize("text, expected", [
    ("<think>\n a b \n</think>\n\n<answer>\n cba \n</answer>\n", (True, "a b", "cba")),
    ("  <think>x</think><answer>y</answer>", (True, "x", "y")),
    ("<think>x</think> so <answer>y</answer>", (False, None, None)),  # text between the blocks
    ("<think>x</think><answer>y</answer> done", (False, None, None)),  # text after
    ("<answer>y</answer>", (False, None, None)),
    ("<think>x</think><answer>y</answer><answer>z</answer>", (False, None, None)),
    ("<think>x<think>w</think><answer>y</answer>", (False, None, None)),
])
def test_parse_think_answer_is_strict_up_to_whitespace(text, expected):
    assert parse_think_answer(text) == expected


def test_reasoning_perplexity_by_hand():
    logps = torch.log(torch.tensor([[0.1, 0.2, 1.0], [0.5, 0.5, 0.5]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = reasoning_perplexity(logps, mask, [10, 1000], base=10.0)
    nll0 = -(math.log(0.1) + math.log(0.2)) / 2  # N(10) = 2
    nll1 = math.log(2.0)  # N(1000) = 4
    assert got.tolist() == pytest.approx([math.exp(nll0 / 2), math.exp(nll1 / 4)], rel=1e-5)


def test_rank_and_efficiency_rewards_on_a_hand_made_group():
    # group 0: five rollouts, one invalid; group 1: a single valid rollout and one invalid.
    ppl = [4.0, 2.0, None, 8.0, 1.0, 3.0, None]
    valid = [p is not None for p in ppl]
    lens = [30, 10, 5, 40, 20, 7, 1]
    groups = [0, 0, 0, 0, 0, 1, 1]
    # valid in group 0 sorted by ppl: row4 (1.0), row1 (2.0), row0 (4.0), row3 (8.0) -> 4/4, 3/4, 2/4, 1/4
    assert rank_rewards(ppl, valid, groups) == [0.5, 0.75, 0.0, 0.25, 1.0, 1.0, 0.0]
    # row0 (30, 4.0) beats row3 (40, 8.0): 1/3. row1 (10, 2.0) beats row0 and row3: 2/3.
    # row4 (20, 1.0) beats row0 and row3: 2/3. row3 beats nobody. A lone valid rollout gets 0.
    assert efficiency_rewards(ppl, lens, valid, groups) == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0, 2 / 3, 0.0, 0.0])
    assert gated_total([1, 1, 0, 1, 1, 1, 0], rank_rewards(ppl, valid, groups),
                       efficiency_rewards(ppl, lens, valid, groups), (1.0, 2.0, 3.0)) == pytest.approx(
        [1 + 1.0 + 1.0, 1 + 1.5 + 2.0, 0.0, 1 + 0.5, 1 + 2.0 + 2.0, 1 + 2.0, 0.0])
    assert gated_total([0.0], [1.0], [1.0]) == [0.0]  # the gate


def test_rank_ties_keep_row_order():
    assert rank_rewards([1.0, 1.0, 2.0], [True] * 3, [0, 0, 0]) == pytest.approx([1.0, 2 / 3, 1 / 3])


# ---- perplexity on a tiny model ---------------------------------------------------------------------

def _direct_ppl(model, context: list[int], target: list[int], think_len: int, base: float) -> float:
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (L, V)
    nll = -sum(float(logp[len(context) - 1 + k, tok]) for k, tok in enumerate(target)) / len(target)
    return math.exp(nll / length_normaliser(think_len, base))


def test_reasoning_perplexity_on_a_tiny_model_equals_a_direct_computation(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    model, tok = policy.model.eval(), policy.tokenizer
    prompts = ["What is 2 + 2?", "Reverse the word 'tiger'. Think first.", "Sort 'cab'."]
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    thinks = ["two plus two is four", "t i g e r backwards", "a b c and more words to make it long"]
    answers = ["4", "regit", "abc"]
    contexts, targets, lens = scoring_ids(tok, prompt_ids, thinks, answers)
    assert targets[1] == tok("\n<answer>\nregit\n</answer>", add_special_tokens=False)["input_ids"]
    assert contexts[0] == prompt_ids[0] + tok("\n<think>\ntwo plus two is four\n</think>\n",
                                              add_special_tokens=False)["input_ids"]
    assert lens == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in thinks]
    logps, mask = target_token_logps(model, contexts, targets, pad_token_id=tok.pad_token_id)
    batched = reasoning_perplexity(logps, mask, lens, base=10.0)
    direct = [_direct_ppl(model, c, t, k, 10.0) for c, t, k in zip(contexts, targets, lens)]
    assert batched.tolist() == pytest.approx(direct, rel=1e-4)
    one_by_one, mask1 = target_token_logps(model, contexts, targets, pad_token_id=tok.pad_token_id,
                                           micro_batch_size=1)
    assert torch.equal(mask, mask1)
    torch.testing.assert_close(one_by_one, logps, rtol=1e-4, atol=1e-5)
    assert all(p > 1.0 for p in batched.tolist())


# ---- the proxy --------------------------------------------------------------------------------------

def test_proxy_adapter_mixes_0_9_0_1_and_switches_back(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path, lora=LORA)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    proxy = ProxyModel(policy)
    assert [n for n, p in policy.model.named_parameters() if p.requires_grad] == trainable  # proxy frozen
    pairs = proxy._pairs()
    assert len(pairs) == len(trainable)
    for pol, prox in pairs:
        assert torch.equal(pol, prox)  # starts equal to the policy
    with torch.no_grad():
        for k, (pol, prox) in enumerate(pairs):
            pol.fill_(1.0 + k)
            prox.fill_(-2.0)
    proxy.mix_(0.9)
    assert proxy.updates == 1
    for k, (pol, prox) in enumerate(pairs):
        assert torch.allclose(prox, torch.full_like(prox, 0.9 * -2.0 + 0.1 * (1.0 + k)), atol=1e-6)
        assert torch.equal(pol, torch.full_like(pol, 1.0 + k))  # the policy is untouched
    ids = torch.tensor([[5, 6, 7, 8]])
    policy.model.train()
    with torch.no_grad():
        out_policy = policy.model(input_ids=ids).logits
        with proxy.active() as model:
            assert model.active_adapter == "proxy" and not model.training
            assert not any(p.requires_grad for p in model.parameters())
            out_proxy = model(input_ids=ids).logits
        assert torch.equal(policy.model(input_ids=ids).logits, out_policy)
    assert not torch.allclose(out_policy, out_proxy)
    assert policy.model.active_adapter == "default" and policy.model.training
    assert [n for n, p in policy.model.named_parameters() if p.requires_grad] == trainable
    saved = proxy.state_dict()
    proxy.mix_(0.0)  # proxy <- policy
    for pol, prox in pairs:
        assert torch.equal(pol, prox)
    proxy.load_state_dict(saved)
    assert torch.allclose(pairs[0][1], torch.full_like(pairs[0][1], -1.7))


def test_proxy_of_a_full_fine_tune_is_a_frozen_copy(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    proxy = ProxyModel(policy)
    pol = next(policy.model.parameters())
    with torch.no_grad():
        before = pol.clone()
        pol.add_(1.0)
    proxy.mix_(0.9)
    with proxy.active() as model:
        assert model is not policy.model
        assert torch.allclose(next(model.parameters()), before + 0.1)
        assert not any(p.requires_grad for p in model.parameters())


# ---- the recipe -------------------------------------------------------------------------------------

def _valid(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


def _rollout(policy: Policy, prompts: list[str], completions: list[str], answers: list[str], g: int) -> RolloutBatch:
    tok = policy.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    comp = tok(completions, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    n = len(completions)
    return RolloutBatch(
        prompt_ids=enc["input_ids"], prompt_mask=enc["attention_mask"], completion_ids=comp["input_ids"],
        completion_mask=comp["attention_mask"], completion_attention_mask=comp["attention_mask"].clone(),
        prompts=prompts, completions=completions, group_ids=torch.arange(n // g).repeat_interleave(g),
        columns={"answer": answers}, pad_token_id=tok.pad_token_id)


def _recipe(path, **kwargs) -> NOVER:
    kwargs.setdefault("rewards", [{"name": "accuracy", "weight": 0.0, "kwargs": {"extract": "answer_tag",
                                                                                 "mode": "exact"}}])
    return NOVER(str(path), lora=LORA, num_generations=3, **kwargs)


def test_recipe_scores_with_the_proxy_and_gates(tiny_model_path):
    recipe = _recipe(tiny_model_path, reasoning_weight=2.0)
    assert recipe.reward_set.names == ["format", "reasoning", "efficiency", "accuracy"]
    assert recipe.objective.scale_rewards == "none" and recipe.objective.beta == 0.1
    assert recipe.sampling.temperature == 0.6 and recipe.sampling.chat_template == "never"
    prompts = [NOVER_TEMPLATE.format(question="Reverse 'abc'.")] * 3 + [NOVER_TEMPLATE.format(question="1, 2, 3?")] * 3
    completions = [_valid("reverse it", "cba"), "no tags at all", _valid("c then b then a, so the answer", "abc"),
                   _valid("count", "4"), _valid("one two three four five six", "4"), _valid("", "5")]
    answers = ["cba"] * 3 + ["4"] * 3
    rollout = recipe.score(_rollout(recipe.policy, prompts, completions, answers, g=3), purpose="train")
    cols = {name: rollout.rewards_per_func[:, j].tolist() for j, name in enumerate(rollout.reward_names)}
    assert cols["format"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert cols["accuracy"] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    ppl = rollout.columns["nover_perplexity"]
    assert ppl[1] is None and all(p is not None and p > 1 for i, p in enumerate(ppl) if i != 1)
    # the perplexities come from the proxy: score them again directly
    tok = recipe.policy.tokenizer
    valid = [0, 2, 3, 4, 5]
    parsed = [parse_think_answer(completions[i]) for i in valid]
    contexts, targets, lens = scoring_ids(tok, [tok(prompts[i])["input_ids"] for i in valid],
                                          [p[1] for p in parsed], [answers[i] for i in valid])
    with recipe.proxy.active() as model:
        expected = [_direct_ppl(model, c, t, k, 10.0) for c, t, k in zip(contexts, targets, lens)]
    assert [ppl[i] for i in valid] == pytest.approx(expected, rel=1e-4)
    valid_mask = [p is not None for p in ppl]
    assert cols["reasoning"] == pytest.approx(rank_rewards(ppl, valid_mask, [0, 0, 0, 1, 1, 1]))
    think_lens = [0] * 6
    for i, k in zip(valid, lens):
        think_lens[i] = k
    assert cols["efficiency"] == pytest.approx(efficiency_rewards(ppl, think_lens, valid_mask, [0, 0, 0, 1, 1, 1]))
    assert cols["reasoning"][1] == 0.0 and cols["efficiency"][1] == 0.0
    total = gated_total(cols["format"], cols["reasoning"], cols["efficiency"], (1.0, 2.0, 1.0))
    assert rollout.rewards.tolist() == pytest.approx(total)
    metrics = recipe.on_step_end(rollout)
    assert metrics["nover/valid_rate"] == pytest.approx(5 / 6)
    assert metrics["nover/perplexity"] == pytest.approx(sum(expected) / 5, rel=1e-4)


def test_kl_reference_is_the_proxy_and_checkpoint_keeps_it(tiny_model_path):
    recipe = _recipe(tiny_model_path, proxy_update_every=1)
    prompts = ["Q: a?"] * 3
    rollout = _rollout(recipe.policy, prompts, [_valid("x", "a")] * 3, ["a"] * 3, g=3)
    with torch.no_grad():  # move the policy away from the proxy
        for p in recipe.policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    recipe.prepare_logps(rollout)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_attention_mask)
    with recipe.proxy.active() as proxy:
        expected, _ = recipe.policy.token_logps(*args, temperature=0.6, model=proxy)
    torch.testing.assert_close(rollout.ref_logps, expected)
    policy_logps, _ = recipe.policy.token_logps(*args, temperature=0.6)
    assert not torch.allclose(rollout.ref_logps, policy_logps.detach())
    metrics = recipe.on_step_end(rollout)  # every step: one 0.9/0.1 update
    assert recipe.proxy.updates == 1 and metrics["nover/proxy_updates"] == 1.0
    checkpoint = {"state_dict": recipe.state_dict()}
    recipe.on_save_checkpoint(checkpoint)
    assert not any(".proxy." in k for k in checkpoint["state_dict"])  # frozen: only under our own key
    saved = checkpoint["recipe_state"]["nover_proxy"]
    assert saved["updates"] == 1 and saved["steps"] == 1 and any(".proxy." in k for k in saved["weights"])
    fresh = _recipe(tiny_model_path, proxy_update_every=1)
    fresh.on_load_checkpoint(checkpoint)
    for k, v in fresh.proxy.state_dict().items():
        assert torch.equal(v, saved["weights"][k])
    assert fresh.proxy.updates == 1 and fresh._nover_steps == 1


def test_bad_settings_name_the_field(tiny_model_path):
    with pytest.raises(RecipeConfigError, match="length_log_base"):
        NOVER("unused", length_log_base=1.0)
    with pytest.raises(RecipeConfigError, match="proxy_mix_alpha"):
        NOVER("unused", proxy_mix_alpha=1.5)
    recipe = _recipe(tiny_model_path, answer_column="reference")
    rollout = _rollout(recipe.policy, ["Q?"] * 3, [_valid("x", "a")] * 3, ["a"] * 3, g=3)
    with pytest.raises(RecipeConfigError, match="answer_column='reference'"):
        recipe.score(rollout, purpose="train")


def test_freeform_task_rows():
    rows = make_task("freeform_qa", 40, seed=3)
    assert {r["kind"] for r in rows} == {"reverse", "capital", "sort", "sequence"}
    for r in rows:
        assert set(r) == {"question", "answer", "kind"} and r["answer"]
        if r["kind"] == "reverse":
            assert r["answer"][::-1] in r["question"]
        if r["kind"] == "sort":
            assert r["answer"] == "".join(sorted(r["question"].split("'")[1]))
        if r["kind"] == "capital":
            country = r["question"].rsplit("capital of ", 1)[1].rstrip("?")
            assert f"{country}: {r['answer']}" in r["question"]
    assert make_task("freeform_qa", 5, seed=3) == rows[:5]
    with pytest.raises(DataConfigError, match="kinds"):
        make_task("freeform_qa", 2, kinds=["riddle"])


# ---- end to end -------------------------------------------------------------------------------------

class _ScriptedEngine(HFGenerateEngine):
    """Real prompt encoding, scripted well-formed completions (a random model never writes the tags)."""

    def generate(self, prompts, columns, *, num_generations, greedy=False):
        tok = self.policy.tokenizer
        prompt_ids, prompt_mask = self.encode_prompts(prompts, [None] * len(prompts))
        g = num_generations
        texts = [_valid("step " * (1 + k), a if k % 2 == 0 else "wrong") for a in columns["answer"] for k in range(g)]
        comp = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(g, 0), prompt_mask=prompt_mask.repeat_interleave(g, 0),
            completion_ids=comp["input_ids"], completion_mask=comp["attention_mask"],
            completion_attention_mask=comp["attention_mask"].clone(), prompts=[p for p in prompts for _ in range(g)],
            completions=texts, group_ids=torch.arange(len(prompts)).repeat_interleave(g),
            columns={k: [v for v in vs for _ in range(g)] for k, vs in columns.items()}, pad_token_id=tok.pad_token_id,
            stats={"generate_s": 0.01, "generated_tokens": float(comp["attention_mask"].sum())})


FAST = ["--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "8", "--data.num_rows", "24",
        "--data.val_size", "4", "--model.num_generations", "2", "--data.batch_size", "2",
        "--trainer.enable_progress_bar", "false", "--model.batching.skip_zero_signal_steps", "false",
        "--model.proxy_update_every", "1"]


def test_nover_config_trains_two_steps_on_the_tiny_model(fit_metrics, monkeypatch):
    monkeypatch.setattr(NOVER, "build_rollout", lambda self: _ScriptedEngine(self.policy, self.sampling))
    _, train = fit_metrics(CONFIG_DIR / "nover.yaml", "--trainer.callbacks", "[]", fast=FAST)
    assert train["train/nover/valid_rate"].tolist() == [1.0, 1.0]
    assert (train["train/nover/perplexity"] > 1.0).all()
    assert train["train/nover/proxy_updates"].tolist() == [1.0, 2.0]
    assert train["train/accuracy"].tolist() == [0.5, 0.5]  # the weight-0 exact-match diagnostic
    for name in ("format", "reasoning", "efficiency"):
        assert f"train/rewards/{name}/mean" in train
    assert (train["train/rewards/reasoning/mean"] == 0.75).all()  # ranks 1 and 1/2 in each group of 2


def test_nover_config_runs_with_real_generation(fit_metrics):
    metrics, train = fit_metrics(CONFIG_DIR / "nover.yaml", fast=FAST, finite=None)
    assert "train/nover/valid_rate" in train and "eval/reward" in metrics
