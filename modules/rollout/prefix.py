"""Completions whose first tokens are forced (TAPO's template in the completion, HGPO's `<think>` / `<no_think>`
mode tag): generate after the prefix, then return prefix + generated tokens with the prefix trained or masked."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from modules.rollout.batch import RolloutBatch
from modules.rollout.hf import HFGenerateEngine, _eos_ids, completion_lengths, generate_kwargs


def prefix_masks(prefix_lengths: list[int], generated_lengths: list[int], *, train_prefix: bool
                 ) -> tuple[Tensor, Tensor]:
    """(completion_mask, completion_attention_mask), both (N, T), for completions = forced prefix + generated tokens:
    attention is 1 on every real token; the trained mask is 0 on the prefix unless `train_prefix`.

    >>> m, a = prefix_masks([2, 1], [1, 3], train_prefix=False)
    >>> m.tolist(), a.tolist()
    ([[0, 0, 1, 0], [0, 1, 1, 1]], [[1, 1, 1, 0], [1, 1, 1, 1]])
    """
    width = max(1, max(p + g for p, g in zip(prefix_lengths, generated_lengths)))
    pos = torch.arange(width)[None, :]  # (1, T)
    pre = torch.tensor(prefix_lengths)[:, None]  # (N, 1)
    end = pre + torch.tensor(generated_lengths)[:, None]  # (N, 1)
    attention = (pos < end).long()  # (N, T)
    trained = attention if train_prefix else (attention * (pos >= pre)).long()
    return trained, attention


@torch.no_grad()
def generate_with_prefix(engine: HFGenerateEngine, prompts: list[Any], columns: dict[str, list[Any]],
                         prefix_ids: list[list[int]], *, train_prefix: bool = False, greedy: bool = False
                         ) -> RolloutBatch:
    """One completion per prompt whose first tokens are `prefix_ids[i]` (forced, not sampled), then sampled with the
    engine's settings for up to `max_new_tokens` more. The prefix is part of the completion (the policy reads it;
    `completion_attention_mask` = 1) and is trained only when `train_prefix`."""
    policy, tok, s = engine.policy, engine.policy.tokenizer, engine.sampling
    b = len(prompts)
    if len(prefix_ids) != b:
        raise ValueError(f"generate_with_prefix: {len(prefix_ids)} prefixes for {b} prompts")
    prompt_ids, prompt_mask = engine.encode_prompts(prompts, columns.get("system_prompt", [None] * b))  # (B, P)
    contexts = [ids[m.bool()].tolist() + list(pre) for ids, m, pre in zip(prompt_ids, prompt_mask, prefix_ids)]
    width = max(len(c) for c in contexts)
    ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long)  # (B, W) left-padded
    mask = torch.zeros(b, width, dtype=torch.long)
    for j, ctx in enumerate(contexts):
        ids[j, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
        mask[j, width - len(ctx):] = 1
    eos_ids = _eos_ids(policy.model, tok)
    kwargs = generate_kwargs(s, tok, eos_ids, greedy=greedy)
    model, device = policy.model, policy.device
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    chunk = engine.generation_batch_size or b
    outs = []
    try:
        for i in range(0, b, chunk):
            out = model.generate(input_ids=ids[i:i + chunk].to(device), attention_mask=mask[i:i + chunk].to(device),
                                 **kwargs)
            outs += out[:, width:].tolist()
    finally:
        model.train(was_training)
    gen_width = max(1, max(len(o) for o in outs))
    generated = torch.full((b, gen_width), tok.pad_token_id, dtype=torch.long)  # (B, T_gen)
    for j, o in enumerate(outs):
        generated[j, :len(o)] = torch.tensor(o, dtype=torch.long)
    lengths, truncated = completion_lengths(generated, eos_ids, stopped_by_string=engine._stopped_by_string(generated))
    tokens = [list(pre) + o[:n] for pre, o, n in zip(prefix_ids, outs, lengths.tolist())]
    trained, attention = prefix_masks([len(p) for p in prefix_ids], lengths.tolist(), train_prefix=train_prefix)
    completion_ids = torch.full(trained.shape, tok.pad_token_id, dtype=torch.long)  # (B, T)
    for j, t in enumerate(tokens):
        completion_ids[j, :len(t)] = torch.tensor(t, dtype=torch.long)
    texts = tok.batch_decode(tokens, skip_special_tokens=True)
    batch = RolloutBatch(
        prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device), completion_ids=completion_ids.to(device),
        completion_mask=trained.to(device), completion_attention_mask=attention.to(device), prompts=list(prompts),
        completions=texts, group_ids=torch.arange(b, device=device), columns={k: list(v) for k, v in columns.items()},
        truncated=truncated.to(device), pad_token_id=tok.pad_token_id,
        stats={"generate_s": time.perf_counter() - started, "generated_tokens": float(lengths.sum())})
    return batch
