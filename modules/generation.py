"""Batched greedy generation with a frozen HF causal LM, for models used as tools (the LLM verifier of TinyV /
General-Reasoner, GELI's LLM decomposer); the policy's own sampling goes through `modules.rollout`."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def batched_greedy_generate(model, tokenizer, prompts: Sequence[Any], *,  # noqa: ANN001
                            max_new_tokens: int, batch_size: int, chat_template: str = "auto",
                            response_prefix: str = "", sort_by_length: bool = False,
                            decode: Callable[[Any, Any], list[str]] | None = None) -> list[str]:
    """Greedy completions of text or chat-message prompts, in input order.

    Each prompt is rendered with `modules.rollout.engine.render_prompt(..., chat_template=chat_template)`, followed
    by `response_prefix` (written at the start of the model's turn and returned as part of each completion, e.g. "["
    to start a JSON list), tokenised left-padded in chunks of `batch_size` (sorted by token length first when
    `sort_by_length`, so a chunk holds prompts of similar length) and decoded in eval mode without gradients
    (the model's train/eval mode is restored afterwards).

    `decode(input_ids (n, P), attention_mask (n, P)) -> n texts` replaces the default decoding of a chunk (greedy,
    `max_new_tokens`, pad = the tokenizer's pad or else eos token, special tokens skipped); the LLM verifier uses it
    for its retries and stop strings.
    """
    import torch

    from modules.rollout.engine import render_prompt

    texts = [render_prompt(tokenizer, p, chat_template=chat_template) + response_prefix for p in prompts]
    templated = chat_template != "never" and getattr(tokenizer, "chat_template", None) is not None
    order = list(range(len(texts)))
    if sort_by_length and len(texts) > batch_size:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    if decode is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def decode(ids, mask) -> list[str]:  # noqa: ANN001
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=pad)  # (n, P + T)
            return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)

    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=not templated)
            ids = enc["input_ids"].to(device)  # (n, P)
            mask = enc["attention_mask"].to(device)  # (n, P)
            with torch.no_grad():
                decoded = decode(ids, mask)
            for i, text in zip(chunk, decoded):
                outputs[i] = response_prefix + text
    finally:
        model.train(was_training)
    return outputs


__all__ = ["batched_greedy_generate"]
