"""RolloutBatch bookkeeping and the HF generate engine."""

from __future__ import annotations

import pytest
import torch

from modules.policy import Policy
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings, render_prompt
from modules.rollout.hf import HFGenerateEngine, completion_lengths


def _toy_batch(n: int, t: int, group: int, offset: int = 0) -> RolloutBatch:
    return RolloutBatch(
        prompt_ids=torch.arange(n * 2).view(n, 2), prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.arange(n * t).view(n, t) + 100, completion_mask=torch.ones(n, t, dtype=torch.long),
        completion_attention_mask=torch.ones(n, t, dtype=torch.long),
        prompts=[f"p{i // group + offset}" for i in range(n)], completions=[f"c{i}" for i in range(n)],
        group_ids=torch.arange(n) // group, columns={"answer": [str(i) for i in range(n)]},
        rewards=torch.arange(n, dtype=torch.float))


def test_select_and_concat_keep_rows_aligned():
    a, b = _toy_batch(4, 3, 2), _toy_batch(2, 5, 2, offset=10)
    sub = a.select([1, 3])
    assert sub.completions == ["c1", "c3"] and sub.columns["answer"] == ["1", "3"]
    assert sub.rewards.tolist() == [1.0, 3.0] and sub.completion_ids[1, 0] == 109
    both = RolloutBatch.concat([a, b])
    assert both.completion_ids.shape == (6, 5)
    assert both.completion_mask[:4, 3:].sum() == 0 and both.completion_mask[4:].sum() == 10  # right padding
    assert both.group_ids.tolist() == [0, 0, 1, 1, 2, 2]  # ids made unique
    assert both.group_size == 2 and both.num_groups == 3
    assert [len(m) for m in both.micro_batches(4)] == [4, 2]
    with pytest.raises(ValueError, match="columns"):
        RolloutBatch(prompt_ids=a.prompt_ids, prompt_mask=a.prompt_mask, completion_ids=a.completion_ids,
                     completion_mask=a.completion_mask, completion_attention_mask=a.completion_mask,
                     prompts=a.prompts, completions=a.completions, group_ids=a.group_ids, columns={"x": [1]})


def test_injected_mask_marks_tool_tokens():
    b = _toy_batch(2, 3, 2)
    b.completion_mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    b.completion_attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert b.injected_mask.tolist() == [[0, 1, 0], [0, 0, 0]]


def test_completion_lengths_eos_stop_and_truncation():
    ids = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [5, 9, 0, 0]])
    lengths, truncated = completion_lengths(ids, [2], stopped_by_string=torch.tensor([0, 0, 2]))
    assert lengths.tolist() == [3, 4, 2]  # EOS included (as TRL), full budget, up to the stop string
    assert truncated.tolist() == [False, True, False]


def test_hf_engine_groups_padding_template_and_masks(tiny_model_path):
    torch.manual_seed(0)
    policy = Policy.from_pretrained(tiny_model_path)
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=6, temperature=1.0))
    prompts = ["What is 2 + 3?", "Add 10 and 20 please, then tell me the total"]
    batch = engine.generate(prompts, {"answer": ["5", "30"]}, num_generations=3)
    assert len(batch) == 6 and batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.columns["answer"] == ["5"] * 3 + ["30"] * 3
    assert batch.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    # Prompts are left-padded and carry the chat template.
    assert batch.prompt_mask[0, 0] == 0 and batch.prompt_mask[3, 0] == 1
    text = policy.tokenizer.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    # Completion masks are a prefix of each row; truncated rows use the whole budget.
    assert batch.completion_ids.shape[1] <= 6
    for row in range(6):
        n = int(batch.completion_mask[row].sum())
        assert batch.completion_mask[row, :n].all() and not batch.completion_mask[row, n:].any()
        assert bool(batch.truncated[row]) == (n == 6 and policy.tokenizer.eos_token_id not in batch.completion_ids[row].tolist())
    assert batch.injected_mask.sum() == 0
    stats = batch.stats
    assert stats["generated_tokens"] == float(batch.completion_mask.sum()) and stats["generate_s"] > 0


def test_hf_engine_stop_string_cuts_mask(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    tok = policy.tokenizer
    torch.manual_seed(1)
    free = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=12)).generate(["Hi"], {}, num_generations=1)
    ids = free.completion_ids[0, : int(free.completion_mask[0].sum())].tolist()
    # Stop on the first later token whose text is visible and new; the same seed replays the same samples.
    k, stop = next((k, tok.decode([t])) for k, t in enumerate(ids) if k >= 1 and tok.decode([t]).strip()
                   and tok.decode([t]) not in tok.decode(ids[:k]))
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=12, stop=[stop]))
    torch.manual_seed(1)
    cut = engine.generate(["Hi"], {}, num_generations=1)
    assert int(cut.completion_mask[0].sum()) == k + 1  # up to and including the stop string's token
    assert cut.completions[0] == tok.decode(ids[: k + 1], skip_special_tokens=True)
    assert not bool(cut.truncated[0])


def test_render_prompt_modes(tiny_model_path):
    policy = Policy.from_pretrained(tiny_model_path)
    tok = policy.tokenizer
    assert render_prompt(tok, "hi", chat_template="never") == "hi"
    templated = render_prompt(tok, "hi", system_prompt="be brief")
    assert templated.index("system") < templated.index("hi")
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(tok, "hi", chat_template="sometimes")
