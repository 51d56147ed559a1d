"""StepSearch (spec 11): answer F1, the format gate, the keyword overwrite rule, information gain and redundancy
by hand, the token that carries each step reward (a scripted search agent), GAE on a StepSearch-shaped trajectory,
the two-hop task and its BM25 corpus, and 2 training steps through `r1 fit`."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest
import torch

import datamodules.tasks.two_hop as two_hop_module
import modules.retrieval as retrieval_module
import modules.papers.stepsearch.rewards as stepsearch_module
from datamodules.tasks.two_hop import make_two_hop
from modules.objectives.ppo import gae_advantages
from modules.policy import Policy
from modules.retrieval import BM25Retriever, corpus_retriever, format_docs, parse_docs, search_tool
from modules.papers.stepsearch.rewards import (
    final_answer,
    global_score,
    information_gain_steps,
    keyword_reward,
    normalize_answer,
    place_token_rewards,
    redundancy_steps,
    search_queries,
    stepsearch_f1,
    stepsearch_format,
    tfidf_cosines,
    token_f1,
)
from modules.rollout.engine import SamplingSettings
from recipes.base import RecipeConfigError
from recipes.cli.registry import CONFIG_DIR

REWARDS = [{"name": "stepsearch_f1", "weight": 1.0}, {"name": "stepsearch_keyword", "weight": 0.618},
           {"name": "stepsearch_format", "weight": 0.0}]


@pytest.mark.parametrize("module", [stepsearch_module, retrieval_module, two_hop_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------------------------------------ answers
def test_normalisation_and_f1_by_hand():
    assert normalize_answer("  The Kelport,  City! ") == "kelport city"
    assert normalize_answer("An apple a day") == "apple day"
    # pred "kelport harbour city" vs "kelport" (P 1/3, R 1 -> 0.5) and vs "kelport city" (P 2/3, R 1 -> 0.8)
    assert token_f1("Kelport harbour city", ["Kelport", "Kelport City"]) == pytest.approx(0.8)
    assert token_f1("the Kelport", "Kelport") == 1.0
    assert token_f1("Lyon", ["Kelport"]) == 0.0 and token_f1("", ["Kelport"]) == 0.0
    assert global_score(0.8, 0.5) == pytest.approx(0.8 + 0.618 * 0.5)


def test_format_gate_and_f1_reward():
    good = "<plan>p</plan><search>q</search>\n<information>Doc 1<## Title: T ##> x</information>\n<answer> Kelport </answer>\n"
    assert final_answer(good) == "Kelport"
    assert final_answer("<answer>a</answer> then <answer>b</answer>  ") == "b"
    for bad in ("<answer>Kelport</answer> and more", "no answer", "<answer>Kelport", "Kelport</answer>"):
        assert final_answer(bad) is None, bad
    completions = [good, "<answer>Kelport</answer> more text", "<answer>Kelport city</answer>"]
    answers, aliases = ["Kelport"] * 3, [["City of Kelport"]] * 3
    # "kelport city" vs "kelport": P 1/2, R 1 -> 2/3; vs the alias "city of kelport": P 1, R 2/3 -> 0.8 (the max)
    assert stepsearch_f1(None, completions, answer=answers, aliases=aliases) == pytest.approx([1.0, 0.0, 0.8])
    assert stepsearch_format(None, completions) == [1.0, 0.0, 1.0]


def test_keyword_reward_overwrites_instead_of_taking_the_max():
    groups = [["alden voss born", "where was alden voss born"], ["norvania capital"]]
    # a query picks the best phrasing of each group
    assert keyword_reward(["where was Alden Voss born?"], groups) == pytest.approx(0.5)
    # group 1 first gets 1.0, then "capital" (F1 2/3 with "norvania capital") overwrites it
    assert keyword_reward(["alden voss born", "norvania capital", "capital"], groups) == pytest.approx((1 + 2 / 3) / 2)
    # the max rule would keep 1.0 here: the later, worse query wins
    assert keyword_reward(["norvania capital", "capital"], groups) == pytest.approx(1 / 3)
    # a query matching nothing ties at 0 and lands on the first group (the rule as written)
    assert keyword_reward(["alden voss born", "zzz"], groups) == 0.0
    assert keyword_reward([], groups) == 0.0 and keyword_reward(["x"], []) == 0.0
    text = "<search>a b</search>\n<information>Doc 1<## Title: T ##> <search>no</search></information>\n<search>c</search>"
    assert search_queries(text) == ["a b", "c"]


# ---------------------------------------------------------------------------------------- step rewards
def test_information_gain_and_redundancy_on_a_hand_made_trajectory():
    golds = ["Alice born Paris", "France capital Lyon"]
    # TF-IDF refit on [d, g1, g2] for d = "alice born lyon": alice, born, lyon have df 2 -> idf a; paris, france,
    # capital df 1 -> idf b (smoothed: ln((1 + 3) / (1 + df)) + 1); tf = 1, rows l2-normalised.
    a, b = math.log(4 / 3) + 1, math.log(2) + 1
    c1 = 2 * a / (math.sqrt(3) * math.sqrt(2 * a * a + b * b))
    c2 = a / (math.sqrt(3) * math.sqrt(a * a + 2 * b * b))
    assert tfidf_cosines("Alice born Lyon", golds) == pytest.approx([c1, c2])
    steps = [
        ["Alice born Lyon", "cats purr"],  # c = [c1, c2]; nothing seen before
        ["Alice born Paris", "Alice born Lyon"],  # c = [1, c2]; the second doc was seen in step 1
        ["France capital Lyon", "France capital Lyon"],  # c = [0, 1]; the copy repeats a doc of the same step
        [],  # a failed search: no docs
    ]
    ig = information_gain_steps(steps, golds)
    assert ig == pytest.approx([(c1 + c2) / 2, (1 - c1) / 2, (1 - c2) / 2, 0.0])
    assert redundancy_steps(steps) == pytest.approx([0.0, 0.5, 0.5, 0.0])
    assert sum(ig) == pytest.approx(1.0)  # the running max caps the total gain at 1


def test_step_rewards_are_placed_then_the_score_overwrites_the_last_token():
    out = place_token_rewards((2, 6), [[1, 3], [5]], [[0.5, -1.0], [2.0]], [1.3, -1.0], [5, 5], coef=0.6)
    assert out[0].tolist() == pytest.approx([0, 0.3, 0, -0.6, 0, 1.3])
    assert out[1].tolist() == pytest.approx([0, 0, 0, 0, 0, -1.0])  # S overwrites a step reward on the same token
    with pytest.raises(ValueError, match="2 step positions for 1 step rewards"):
        place_token_rewards((1, 3), [[0, 1]], [[1.0]], [0.0], [2])


def test_gae_on_a_stepsearch_shaped_trajectory():
    # search turn (3 tokens, the last closes </search>), observation (3 tokens), answer turn (2 tokens)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1]])
    s = 1.0 + 0.618 * 0.5
    rewards = place_token_rewards((1, 8), [[2]], [[0.5]], [s], [7])  # 0.3 on token 2, S on token 7
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0, 9.0, 9.0, 0.4, 0.5]])  # values of observation tokens are unused
    adv, ret = gae_advantages(rewards, values, mask)  # gamma = lam = 1: return-to-go minus value
    rtg = [0.3 + s, 0.3 + s, 0.3 + s, s, s]
    policy = [0, 1, 2, 6, 7]
    assert adv[0, policy].tolist() == pytest.approx([g - v for g, v in zip(rtg, [0.1, 0.2, 0.3, 0.4, 0.5])])
    assert ret[0, policy].tolist() == pytest.approx(rtg) and adv[0, 3:6].tolist() == [0, 0, 0]
    # gamma 0.9, lam 0.8: the next state of token 2 is token 6 (the observation is the environment's move)
    g, lam = 0.9, 0.8
    v = [0.1, 0.2, 0.3, 0.4, 0.5]
    r = [0.0, 0.0, 0.3, 0.0, s]
    delta = [r[k] + g * (v[k + 1] if k < 4 else 0.0) - v[k] for k in range(5)]
    expect = [0.0] * 5
    for k in range(4, -1, -1):
        expect[k] = delta[k] + (g * lam * expect[k + 1] if k < 4 else 0.0)
    adv, _ = gae_advantages(rewards, values, mask, gamma=g, lam=lam)
    assert adv[0, policy].tolist() == pytest.approx(expect)


# ------------------------------------------------------------------------------------- retrieval and data
def test_docs_format_round_trip_and_cached_per_row_retrievers(tmp_path):
    docs = [{"id": "0", "title": "Alice", "text": "Alice was born in Norvania."},
            {"id": "1", "title": "Norvania", "text": "Norvania's capital is Kelport."}]
    obs = "\n<information>" + format_docs(docs) + "</information>\n"
    assert obs == ("\n<information>Doc 1<## Title: Alice ##> Alice was born in Norvania.\n"
                   "Doc 2<## Title: Norvania ##> Norvania's capital is Kelport.</information>\n")
    assert parse_docs(obs) == [{"title": d["title"], "text": d["text"]} for d in docs]
    assert parse_docs(obs[:49]) == [{"title": "Alice", "text": "Alice was"}]  # cut by the observation cap
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({**d, "corpus_id": cid}) + "\n" for d, cid in zip(docs * 2, "aabb")))
    assert corpus_retriever(path, "a", 1) is corpus_retriever(str(path), "a", 1)  # indexed once
    tool = search_tool(k=1)
    assert tool("capital of Norvania", {"corpus": str(path), "corpus_id": "b"}) == \
        "Doc 1<## Title: Norvania ##> Norvania's capital is Kelport."
    with pytest.raises(ValueError, match="no documents with corpus_id='z'"):
        tool("x", {"corpus": str(path), "corpus_id": "z"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tool("x", {"corpus": str(tmp_path / "none.jsonl")})
    assert [d["id"] for d in BM25Retriever(docs, k=2).search("Kelport")] == ["1", "0"]


def test_two_hop_rows_corpora_and_keyword_search(tmp_path):
    rows = make_two_hop(30, seed=3, corpus_dir=str(tmp_path))
    assert rows == make_two_hop(30, seed=3, corpus_dir=str(tmp_path))  # deterministic, same file
    assert len({r["question"] for r in rows}) == 30 and len(list(tmp_path.glob("*.jsonl"))) == 1
    docs = [json.loads(line) for line in Path(rows[0]["corpus"]).read_text().splitlines()]
    for cid in {r["corpus_id"] for r in rows}:
        texts = [d["text"] for d in docs if d["corpus_id"] == cid]
        assert 45 <= len(texts) <= 200 and len(set(texts)) == len(texts)
    for row in rows:
        birth, capital = row["support_docs"]
        assert f"{row['person']} was born in {row['country']}" in birth
        assert f"{row['country']}'s capital is {row['answer']}" in capital
        assert row["answer"] in row["aliases"][0] and len(row["search_keys"]) == 2
        retriever = corpus_retriever(row["corpus"], row["corpus_id"], 3)
        assert birth in [d["text"] for d in retriever.search(row["search_keys"][0][0])]
        assert capital in [d["text"] for d in retriever.search(row["search_keys"][1][1])]
    with pytest.raises(ValueError, match="n=0"):
        make_two_hop(0, corpus_dir=str(tmp_path))


# -------------------------------------------------------------------------------- the recipe, scripted
class ScriptedModel(torch.nn.Module):
    """Writes the next turn of the script whose key is in the context; turn = number of observations so far."""

    def __init__(self, tok, scripts: dict[str, list[str]]) -> None:
        super().__init__()
        self.tok, self.scripts = tok, scripts
        self.generation_config = type("GC", (), {"eos_token_id": tok.eos_token_id})()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        outs = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tok.decode(ids[mask.bool()])
            script = self.scripts[next(k for k in self.scripts if k in text)]
            turn = script[min(text.count("<information>"), len(script) - 1)]
            new = self.tok(turn, add_special_tokens=False)["input_ids"][:max_new_tokens]
            outs.append(new + [self.tok.eos_token_id] * (max_new_tokens - len(new)))
        return torch.cat([input_ids, torch.tensor(outs, dtype=torch.long)], dim=1)


def test_step_rewards_land_on_the_token_closing_each_search(tiny_model_path, tmp_path):
    from recipes.stepsearch import StepSearch, search_steps

    docs = [{"title": "Alice", "text": "Alice was born in Norvania."},
            {"title": "Norvania", "text": "Norvania's capital is Kelport."},
            {"title": "Bob", "text": "Bob likes cats."}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    recipe = StepSearch(model_name_or_path=str(tiny_model_path), rewards=REWARDS, corpus=str(corpus), top_k=1,
                        sampling=SamplingSettings(max_new_tokens=48, chat_template="never"), num_generations=1,
                        max_turns=4)
    tok = recipe.policy.tokenizer
    scripts = {"Q1": ["<plan>find it</plan><search>Alice born</search>", "<search>Alice born</search>",
                      "<answer> Kelport </answer> trailing words the stop string cuts off"],
               "Q2": ["<search></search>", "<search>Bob</search>", "I give up"]}
    recipe.rollout_engine.policy = Policy(ScriptedModel(tok, scripts), tok, reference="none")
    rows = [{"prompt": q, "answer": "Kelport", "aliases": [], "search_keys": [["alice born"], ["norvania capital"]],
             "support_docs": [docs[0]["text"], {"text": docs[1]["text"]}]} for q in ("Q1", "Q2")]
    rollout = recipe.generate_and_score(rows, purpose="train", num_generations=1)
    assert rollout.completions[0].endswith("<answer> Kelport </answer>")

    steps = search_steps(rollout, tok)
    assert [s.query for s in steps[0]] == ["Alice born", "Alice born"]
    assert [s.docs for s in steps[0]] == [[docs[0]["text"]]] * 2
    assert [s.query for s in steps[1]] == ["", "Bob"] and [s.error for s in steps[1]] == [True, False]
    for i, row in enumerate(steps):
        for step, (start, end) in zip(row, rollout.turn_spans[i]):
            assert step.position == end - 1 and rollout.completion_mask[i, step.position] == 1
            assert tok.decode(rollout.completion_ids[i, :step.position + 1]).endswith("</search>")
            assert rollout.completion_mask[i, step.position + 1] == 0  # the observation follows

    # row 0: F1 1, keyword groups [1, 0] -> S = 1 + 0.618 / 2; row 1 fails the gate -> -1
    s = 1.0 + 0.618 * 0.5
    assert rollout.rewards.tolist() == pytest.approx([s, -1.0])
    placed, m = recipe.token_rewards(rollout)
    last = [int(rollout.completion_mask[i].nonzero().max()) for i in range(2)]
    # step 1: IG (1 + 0) / 2 (the golds share no word), P 0 -> 0.3; step 2: IG 0, P 1 -> -0.6
    expected = torch.zeros_like(placed)
    expected[0, steps[0][0].position], expected[0, steps[0][1].position], expected[0, last[0]] = 0.3, -0.6, s
    expected[1, last[1]] = -1.0  # no step rewards when the format gate fails
    torch.testing.assert_close(placed, expected)
    assert m["stepsearch/searches"] == 2.0 and m["stepsearch/tool_errors"] == 0.5
    assert m["stepsearch/format_fail"] == 0.5 and m["stepsearch/ig"] == pytest.approx(0.5 / 4)
    assert m["stepsearch/redundancy"] == pytest.approx(1 / 4)  # step 2 of row 0 only; Bob's doc is new


def test_config_errors_name_the_field(tiny_model_path, tmp_path):
    from recipes.stepsearch import StepSearch

    with pytest.raises(RecipeConfigError, match="model.format_reward='stepsearch_format' is not one of"):
        StepSearch(model_name_or_path=str(tiny_model_path), rewards=["stepsearch_f1"])
    with pytest.raises(RecipeConfigError, match="model.corpus='nope.jsonl' is not a file"):
        StepSearch(model_name_or_path=str(tiny_model_path), rewards=REWARDS, corpus="nope.jsonl")
    with pytest.raises(RecipeConfigError, match="model.top_k=0"):
        StepSearch(model_name_or_path=str(tiny_model_path), rewards=REWARDS, top_k=0)
    recipe = StepSearch(model_name_or_path=str(tiny_model_path), rewards=REWARDS)
    with pytest.raises(RecipeConfigError, match="no corpus: set model.corpus"):
        recipe._check_corpus({"answer": ["x"]})


# ------------------------------------------------------------------------------------------- smoke
@pytest.mark.slow
def test_stepsearch_config_trains_two_steps(fit_metrics, tmp_path, monkeypatch):
    monkeypatch.setenv("R1_CACHE", str(tmp_path / "cache"))  # the two-hop corpus file goes here
    metrics, train = fit_metrics(CONFIG_DIR / "stepsearch.yaml", "--model.max_turns", "3",
                                 "--model.batching.steps_per_generation", "1",  # one optimiser step (= one trainer step)
                                 "--model.batching.skip_zero_signal_steps", "false")
    for key in ("ig", "redundancy", "searches", "step_reward", "f1", "keyword", "format_fail", "tool_errors"):
        assert f"train/stepsearch/{key}" in train, key
    for key in ("train/value_loss", "train/kl_in_reward", "train/grad_norm/critic", "train/rewards/stepsearch_f1/mean"):
        assert key in train, key
    assert (train["train/reward"] >= -1.0).all() and "eval/reward" in metrics
