"""Prefix-shared group sampling in the HF engine: each prompt is prefilled once and its KV cache expanded to its G
rows (`HFGenerateEngine(share_prompt_prefill=True)`, the default); the plain path prefills all B*G rows."""

from __future__ import annotations

import pytest
import torch

from modules.policy import LoraSettings, Policy
from modules.rollout.engine import SamplingSettings
from modules.rollout.hf import HFGenerateEngine

PROMPTS = ["What is 2 + 3?", "Add 10 and 20 please, then tell me the total of the two numbers", "Hi",
           "Count to five slowly"]  # different lengths: left padding in every row but the longest
G = 4


def _scramble(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Larger random weights: the freshly built tiny model's greedy completions are one repeated token whatever the
    prompt, which would make a parity check vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def policy(tiny_model_path):
    policy = Policy.from_pretrained(str(tiny_model_path))
    _scramble(policy.model)
    return policy


def _generate(policy, *, share: bool, greedy: bool = True, gbs: int | None = None, max_new_tokens: int = 10,
              prompts=PROMPTS, g: int = G, **sampling):
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=max_new_tokens, **sampling),
                              generation_batch_size=gbs, share_prompt_prefill=share)
    return engine.generate(list(prompts), {"answer": [str(i) for i in range(len(prompts))]}, num_generations=g,
                           greedy=greedy)


def _assert_same(a, b) -> None:
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.completion_attention_mask, b.completion_attention_mask)
    assert torch.equal(a.completion_lengths, b.completion_lengths) and torch.equal(a.truncated, b.truncated)
    assert a.completions == b.completions and a.prompts == b.prompts and a.columns == b.columns
    assert torch.equal(a.group_ids, b.group_ids)
    assert a.stats.keys() == b.stats.keys() and a.stats["generated_tokens"] == b.stats["generated_tokens"]


def _with_eos(policy, token: int):
    """Context: `token` also ends a completion (through generation_config, where `_eos_ids` reads it)."""
    cfg = policy.model.generation_config

    class _Eos:
        def __enter__(self):
            self.before = cfg.eos_token_id
            ids = [self.before] if isinstance(self.before, int) else list(self.before or [])
            cfg.eos_token_id = ids + [token]

        def __exit__(self, *exc):
            cfg.eos_token_id = self.before

    return _Eos()


def test_greedy_parity_with_padding_and_eos(policy, one_thread):
    plain = _generate(policy, share=False)
    assert plain.prompt_mask[:, 0].eq(0).any() and plain.prompt_mask[:, -1].all()  # left padding present
    assert len({tuple(r) for r in plain.completion_ids.tolist()}) > 1  # the prompts lead to different completions
    _assert_same(plain, _generate(policy, share=True))
    # An extra EOS token met mid-completion in some rows: completions of different lengths, masks cut there.
    row = plain.completion_ids[4].tolist()
    with _with_eos(policy, row[3]):
        plain = _generate(policy, share=False)
        shared = _generate(policy, share=True)
    lengths = plain.completion_lengths.tolist()
    assert min(lengths) < 10 and len(set(lengths)) > 1
    _assert_same(plain, shared)


def test_greedy_parity_with_chunks_stop_strings_and_repetition_penalty(policy, one_thread):
    plain = _generate(policy, share=False)
    text = plain.completions[8]
    stop = next(ch for ch in text[2:] if ch.strip() and ch.isprintable())
    kwargs = dict(stop=[stop], repetition_penalty=1.3)
    reference = _generate(policy, share=False, **kwargs)
    # 8 rows = 2 whole prompts per generate call; 6 rows rounds down to 1 prompt (4 rows) per call; None: all at once.
    for gbs in (None, 8, 6):
        _assert_same(reference, _generate(policy, share=True, gbs=gbs, **kwargs))
    assert torch.equal(_generate(policy, share=False, gbs=8, **kwargs).completion_ids, reference.completion_ids)


def test_shared_path_prefills_each_prompt_once(policy, one_thread):
    calls: list[tuple[int, ...]] = []
    hook = policy.model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        shared = _generate(policy, share=True, max_new_tokens=5)
        shared_calls, calls[:] = list(calls), []
        plain = _generate(policy, share=False, max_new_tokens=5)
        plain_calls = list(calls)
    finally:
        hook.remove()
    b, p = len(PROMPTS), shared.prompt_ids.shape[1]
    assert plain_calls[0] == (b * G, p)  # the plain path prefills every row
    assert shared_calls[0] == (b, p - 1)  # one prompt row each, all but the last token ...
    assert all(shape == (b * G, 1) for shape in shared_calls[1:])  # ... then one token per row and step
    assert len(shared_calls) == len(plain_calls) + 1
    prompt_tokens = sum(r * t for r, t in shared_calls) - b * G * (len(shared_calls) - 1)
    assert prompt_tokens == b * (p - 1)
    _assert_same(plain, shared)


def test_chunked_shared_prefill_stays_group_aligned(policy, one_thread):
    calls: list[tuple[int, ...]] = []
    hook = policy.model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        batch = _generate(policy, share=True, gbs=8, max_new_tokens=3)
    finally:
        hook.remove()
    p = batch.prompt_ids.shape[1]
    assert [c for c in calls if c[1] > 1] == [(2, p - 1), (2, p - 1)]  # 2 prompts per call, G rows each
    assert max(c[0] for c in calls) == 8


def test_fallbacks_to_the_plain_path(policy, one_thread):
    engine = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=4))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert engine.uses_shared_prefill(mask, 4)
    assert not engine.uses_shared_prefill(mask, 1)  # G = 1: nothing to share
    assert not engine.uses_shared_prefill(mask[:, :1], 4)  # a 1-token prompt: no P-1 tokens to cache
    assert not engine.uses_shared_prefill(torch.tensor([[1, 1, 0], [1, 1, 1]]), 4)  # right padding
    assert not HFGenerateEngine(policy, generation_batch_size=3).uses_shared_prefill(mask, 4)  # cap < G
    assert HFGenerateEngine(policy, generation_batch_size=6).uses_shared_prefill(mask, 4)  # rounded down to 4
    assert not HFGenerateEngine(policy, share_prompt_prefill=False).uses_shared_prefill(mask, 4)
    # One-token prompts (no chat template): the plain path runs and the batch is whole.
    tok = policy.tokenizer
    one = next(t for t in ("a", "b", "1") if len(tok(t, add_special_tokens=False)["input_ids"]) == 1)
    batch = _generate(policy, share=True, prompts=[one, one], max_new_tokens=3, chat_template="never")
    assert batch.prompt_ids.shape == (2 * G, 1) and len(batch) == 2 * G
    _assert_same(_generate(policy, share=False, prompts=[one, one], max_new_tokens=3, chat_template="never"), batch)


def test_sampled_shared_batch_is_consistent(policy, one_thread):
    torch.manual_seed(0)
    batch = _generate(policy, share=True, greedy=False, max_new_tokens=8, temperature=1.0)
    torch.manual_seed(0)
    again = _generate(policy, share=True, greedy=False, max_new_tokens=8, temperature=1.0)
    assert torch.equal(batch.completion_ids, again.completion_ids)  # a fixed seed replays the samples
    n = len(PROMPTS) * G
    assert batch.prompt_ids.shape[0] == n and batch.completion_ids.shape[0] == n and batch.completion_ids.shape[1] <= 8
    assert batch.group_ids.tolist() == [i for i in range(len(PROMPTS)) for _ in range(G)]
    assert torch.equal(batch.prompt_ids[::G].repeat_interleave(G, 0), batch.prompt_ids)
    pad = policy.tokenizer.pad_token_id
    for row in range(n):
        k = int(batch.completion_mask[row].sum())
        assert batch.completion_mask[row, :k].all() and not batch.completion_mask[row, k:].any()
        assert batch.completion_ids[row, k:].eq(pad).all()
    assert torch.equal(batch.completion_attention_mask, batch.completion_mask)
    assert batch.stats["generated_tokens"] == float(batch.completion_mask.sum())
    # The G samples of a prompt differ (they are sampled, not copies of one row).
    assert len({tuple(r) for r in batch.completion_ids[:G].tolist()}) > 1


def test_model_mode_is_restored(policy, one_thread):
    policy.model.train()
    try:
        _generate(policy, share=True, max_new_tokens=2)
        assert policy.model.training
    finally:
        policy.model.eval()


def test_lora_policy_greedy_parity(tiny_model_path, one_thread):
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    _scramble(policy.model, seed=1)  # base and adapter weights alike: the adapter is not the identity
    plain = _generate(policy, share=False, max_new_tokens=6)
    _assert_same(plain, _generate(policy, share=True, max_new_tokens=6))
