"""Multi-turn tool rollouts: observation tokens are masked, malformed calls become error observations, budgets
hold, per-turn spans locate each turn. A scripted model writes the policy turns so the tests know every token."""

from __future__ import annotations

import pytest
import torch

from modules.policy import Policy
from modules.rollout.multiturn import MultiTurnToolEngine, place_turn_rewards, turn_end_positions
from modules.rollout.engine import SamplingSettings
from modules.rollout.tools import ToolCall, ToolCallFormat, calculator, run_tool


class ScriptedModel(torch.nn.Module):
    """`generate` returns, for each row, the next scripted turn of the script chosen by the row's context length
    (rows are told apart by their prompt); records every call's max_new_tokens."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], eos_id: int) -> None:
        super().__init__()
        self.tok, self.scripts, self.eos_id = tokenizer, scripts, eos_id
        self.generation_config = type("GC", (), {"eos_token_id": eos_id})()
        self.calls: list[int] = []
        self.turn: dict[str, int] = {}
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.calls.append(max_new_tokens)
        outs = []
        for ids, mask in zip(input_ids, attention_mask):
            text = self.tok.decode(ids[mask.bool()])
            key = next(k for k in self.scripts if k in text)
            count = text.count("<information>") + text.count("<tool_response>")  # turns already taken
            script = self.scripts[key]
            turn = script[min(count, len(script) - 1)]
            new = self.tok(turn, add_special_tokens=False)["input_ids"][:max_new_tokens]
            outs.append(new + [self.eos_id] * (max_new_tokens - len(new)))  # generate pads finished rows
        return torch.cat([input_ids, torch.tensor(outs, dtype=torch.long)], dim=1)


def make_engine(tiny_model_path, scripts, tools, **kwargs):
    real = Policy.from_pretrained(str(tiny_model_path), reference="none")
    tok = real.tokenizer
    policy = Policy(ScriptedModel(tok, scripts, tok.eos_token_id), tok, reference="none")
    sampling = SamplingSettings(max_new_tokens=kwargs.pop("max_new_tokens", 32), chat_template="never")
    return MultiTurnToolEngine(policy, sampling, tools=tools, **kwargs), tok


def lookup(arguments: str, row: dict) -> str:
    return row["facts"][arguments]


def test_observation_tokens_are_masked_and_spans_cover_policy_turns(tiny_model_path):
    scripts = {"Q1": ["<search>paris</search>", "<answer>France</answer><|im_end|>"]}
    engine, tok = make_engine(tiny_model_path, scripts, {"search": lookup})
    batch = engine.generate(["Q1"], {"facts": [{"paris": "Paris is in France"}]}, num_generations=2)
    assert batch.group_ids.tolist() == [0, 0]
    for i in range(2):
        ids = batch.completion_ids[i]
        real = batch.completion_attention_mask[i].bool()
        trained = batch.completion_mask[i].bool()
        observation = tok.decode(ids[real & ~trained])
        assert observation == "\n<information>Paris is in France</information>\n"
        assert tok.decode(ids[trained], skip_special_tokens=True) == "<search>paris</search><answer>France</answer>"
        spans = batch.turn_spans[i]
        assert len(spans) == 2 and spans[0][0] == 0
        assert tok.decode(ids[spans[0][0]:spans[0][1]]) == "<search>paris</search>"
        assert tok.decode(ids[spans[1][0]:spans[1][1]], skip_special_tokens=True) == "<answer>France</answer>"
        assert int(trained.sum()) == (spans[0][1] - spans[0][0]) + (spans[1][1] - spans[1][0])
    assert not batch.truncated.any()
    assert batch.completions[0] == "<search>paris</search>\n<information>Paris is in France</information>\n<answer>France</answer>"
    stats = batch.stats
    assert stats["tool_calls"] == 2 and stats["tool_errors"] == 0 and stats["turns"] == 2 * len(batch)
    # the injected tokens are exactly RolloutBatch.injected_mask
    assert torch.equal(batch.injected_mask.bool(), batch.completion_attention_mask.bool() & ~batch.completion_mask.bool())


def test_turn_rewards_land_on_the_last_token_of_each_turn(tiny_model_path):
    scripts = {"Q1": ["<search>paris</search>", "<answer>France</answer><|im_end|>"]}
    engine, tok = make_engine(tiny_model_path, scripts, {"search": lookup})
    batch = engine.generate(["Q1"], {"facts": [{"paris": "Paris is in France"}]}, num_generations=1)
    ends = turn_end_positions(batch)[0]
    assert tok.decode(batch.completion_ids[0, ends[0]]).endswith(">")  # the token closing </search>
    assert tok.decode(batch.completion_ids[0, :ends[0] + 1]) == "<search>paris</search>"
    placed = place_turn_rewards(batch, [[0.3, 1.0]])
    assert placed[0, ends[0]] == pytest.approx(0.3) and placed[0, ends[1]] == pytest.approx(1.0)
    assert placed.sum() == pytest.approx(1.3)
    with pytest.raises(ValueError, match="3 turn rewards for 2 policy turns"):
        place_turn_rewards(batch, [[1.0, 1.0, 1.0]])


def test_malformed_calls_give_error_observations_not_crashes(tiny_model_path):
    def broken(arguments, row):
        raise KeyError(arguments)

    scripts = {"Q1": ["<search></search>", "done<|im_end|>"], "Q2": ["<search>x</search>", "ok<|im_end|>"]}
    engine, tok = make_engine(tiny_model_path, scripts, {"search": broken})
    batch = engine.generate(["Q1", "Q2"], {}, num_generations=1)
    assert "<information>Error: empty <search> call.</information>" in batch.completions[0]
    assert "<information>Error: tool 'search' raised KeyError: 'x'</information>" in batch.completions[1]
    assert batch.completions[1].endswith("ok") and not batch.truncated.any()
    assert batch.stats["tool_errors"] == 2

    # json format: bad JSON and an unknown tool name
    scripts = {"Q1": ['<tool_call>{"name": "search", </tool_call>', "a<|im_end|>"],
               "Q2": ['<tool_call>{"name": "web", "arguments": "x"}</tool_call>', "b<|im_end|>"]}
    engine, tok = make_engine(tiny_model_path, scripts, {"search": lookup}, call_format="json", max_new_tokens=64)
    batch = engine.generate(["Q1", "Q2"], {}, num_generations=1)
    assert "Error: tool call is not valid JSON" in batch.completions[0]
    assert "Error: unknown tool 'web'; available tools: search." in batch.completions[1]


def test_turn_and_token_budgets_hold(tiny_model_path):
    always = {"Q1": ["<calc>1+1</calc>"]}  # never answers
    engine, tok = make_engine(tiny_model_path, always, {"calc": calculator}, max_turns=3)
    batch = engine.generate(["Q1"], {}, num_generations=1)
    assert len(batch.turn_spans[0]) == 3 and batch.truncated.tolist() == [True]
    assert batch.stats["tool_calls"] == 2  # the 3rd call has no turn left to read its result
    assert batch.completions[0].count("<information>2</information>") == 2

    long = {"Q1": ["<calc>" + "1+" * 40 + "1</calc>"]}
    engine, tok = make_engine(tiny_model_path, long, {"calc": calculator}, max_turns=4, max_new_tokens=10,
                              max_total_tokens=25)
    batch = engine.generate(["Q1"], {}, num_generations=1)
    assert int(batch.completion_attention_mask.sum()) <= 25
    assert all(end - start <= 10 for start, end in batch.turn_spans[0])
    assert batch.truncated.tolist() == [True]
    assert max(engine.policy.model.calls) <= 10


def test_call_formats_parse_and_run():
    tags = ToolCallFormat("tags")
    assert tags.parse("text <search>a b</search>\n", ["search"]) == ToolCall("search", "a b")
    assert tags.parse("no call", ["search"]) is None
    assert tags.parse("</search>", ["search"]).error == "closing </search> without an opening <search>"
    assert run_tool(ToolCall("calc", "2*(3+4)"), {"calc": calculator}, {}) == ("14", True)
    out, ok = run_tool(ToolCall("calc", "__import__('os')"), {"calc": calculator}, {})
    assert not ok and out.startswith("Error: tool 'calc' raised")
    with pytest.raises(ValueError, match="must contain"):
        ToolCallFormat("tags", observation="<obs></obs>")


def test_real_tiny_model_multi_turn_batch_feeds_log_probs(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path), reference="none")
    engine = MultiTurnToolEngine(policy, SamplingSettings(max_new_tokens=6, chat_template="never"),
                                 tools={"calc": calculator}, max_turns=2)
    torch.manual_seed(0)
    batch = engine.generate(["What is 2+2?", "Hi"], {"answer": ["4", "x"]}, num_generations=2)
    assert batch.completion_ids.shape[0] == 4 and batch.columns["answer"] == ["4", "4", "x", "x"]
    logps, _ = policy.token_logps(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                  batch.completion_attention_mask)
    assert logps.shape == batch.completion_ids.shape and torch.isfinite(logps[batch.completion_mask.bool()]).all()
