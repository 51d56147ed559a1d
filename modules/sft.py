"""Supervised fine-tuning maths, shared by every SFT stage (distillation, LHRM stage 1, Mixture-of-Thought rounds).

The example format is the one the RL side samples with: the prompt is rendered by
`modules.rollout.engine.render_prompt` and tokenised exactly as `HFGenerateEngine.encode_prompts` does, and the
response is followed by the tokenizer's EOS token (the token `generate` stops at). So a model fine-tuned here
writes, and stops, exactly where an RL rollout later reads. Loss is next-token cross-entropy on the final
assistant response only ("Not All Correct Answers Are Equal", arXiv 2505.14464, section (c)).

Pure functions:
    sft_example(tokenizer, prompt, response, ...) -> {"input_ids", "attention_mask", "labels", "prompt_length",
                                                      "truncated"}
    collate_sft(examples, pad_token_id) -> padded tensors (right padding)
    sft_loss(logits, labels) -> (token-mean loss, number of trained tokens)
    response_nll(policy, examples) -> [(summed NLL, tokens)] per example (perplexity under a scoring model)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modules.rollout.engine import render_prompt

IGNORE_INDEX = -100
"""Label of a position that is not trained on (prompt, earlier turns, padding); `F.cross_entropy` skips it."""



def prompt_token_ids(tokenizer, prompt: str | list[dict], *, system_prompt: str | None = None,
                     chat_template: str = "auto") -> list[int]:
    """Token ids of the rendered prompt, exactly as `HFGenerateEngine.encode_prompts` builds them.

    A chat template already writes BOS and role tokens, so special tokens are added only to raw text.
    """
    text = render_prompt(tokenizer, prompt, system_prompt=system_prompt, chat_template=chat_template)
    templated = chat_template != "never" and getattr(tokenizer, "chat_template", None) is not None
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def sft_example(tokenizer, prompt: str | list[dict], response: str, *, system_prompt: str | None = None,
                chat_template: str = "auto", max_length: int | None = None) -> dict[str, Any]:
    """One training example: prompt tokens (label -100), then response tokens + EOS (labelled).

    `prompt` is text or chat messages; for a multi-turn conversation pass every earlier turn as messages
    (the assistant turns among them are context, never trained on) and the final assistant text as `response`.
    `max_length` keeps at most that many tokens: the response is cut from the right (the prompt is kept whole
    while it fits) and `truncated` is True; a prompt alone longer than `max_length` leaves no trained token.
    Returns lists: `input_ids`, `attention_mask`, `labels`, plus `prompt_length` and `truncated`.

    >>> class Tok:  # a toy tokenizer: one id per character, EOS = 0, no chat template
    ...     chat_template, eos_token_id = None, 0
    ...     def __call__(self, text, add_special_tokens=True):
    ...         return {"input_ids": [ord(c) for c in text]}
    >>> ex = sft_example(Tok(), "Q", "ab")
    >>> ex["input_ids"], ex["labels"]
    ([81, 97, 98, 0], [-100, 97, 98, 0])
    >>> sft_example(Tok(), "Q", "abc", max_length=3)["labels"], sft_example(Tok(), "Q", "abc", max_length=3)["truncated"]
    ([-100, 97, 98], True)
    """
    if not isinstance(response, str):
        raise ValueError(f"an SFT response must be text, got {type(response).__name__}: {response!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length} must be >= 1 (or None)")
    prompt_ids = prompt_token_ids(tokenizer, prompt, system_prompt=system_prompt, chat_template=chat_template)
    return sft_example_from_ids(tokenizer, prompt_ids, response, max_length=max_length)


def sft_example_from_ids(tokenizer, prompt_ids: list[int], response: str, *, max_length: int | None = None
                         ) -> dict[str, Any]:
    """`sft_example` for a prompt already tokenised (a vision-language prompt, expanded by its processor)."""
    if not isinstance(response, str):
        raise ValueError(f"an SFT response must be text, got {type(response).__name__}: {response!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; SFT needs it to teach the model where to stop")
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if not response_ids or response_ids[-1] != eos:  # a response may already end with the EOS text
        response_ids.append(eos)
    truncated = False
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        truncated = True
        prompt_ids = prompt_ids[:max_length]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids, "prompt_length": len(prompt_ids),
            "truncated": truncated}


def collate_sft(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad `sft_example` outputs into (B, L) tensors: ids with `pad_token_id`, mask 0, labels -100.

    >>> b = collate_sft([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]},
    ...                  {"input_ids": [7], "attention_mask": [1], "labels": [7]}], pad_token_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6], [7, 0]], [[-100, 6], [7, -100]], [[1, 1], [1, 0]])
    """
    if not examples:
        raise ValueError("collate_sft got no examples")
    width = max(len(e["input_ids"]) for e in examples)

    def pad(key: str, value: int) -> Tensor:
        return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

    return {"input_ids": pad("input_ids", pad_token_id), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
            "truncated": torch.tensor([bool(e.get("truncated", False)) for e in examples])}


def sft_loss(logits: Tensor, labels: Tensor, *, reduction: str = "mean") -> tuple[Tensor, int]:
    """Next-token cross-entropy over the labelled tokens: (loss, number of labelled tokens).

    Position t predicts label t+1 (the shift is done here). `reduction="mean"`: mean over every labelled token
    of the batch (0.0, still differentiable, when there is none); `"sum"`: the summed NLL (for perplexity).

    >>> loss, n = sft_loss(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]))  # uniform over 4 tokens
    >>> round(loss.item(), 4), n  # log 4
    (1.3863, 2)
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"sft_loss reduction={reduction!r}; use mean or sum")
    shift_logits = logits[:, :-1, :]  # (B, L-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:]  # (B, L-1)
    n = int((shift_labels != IGNORE_INDEX).sum())
    if n == 0:
        return shift_logits.sum() * 0.0, 0
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return (total / n if reduction == "mean" else total), n


@torch.no_grad()
def response_nll(policy, examples: list[dict[str, Any]], *, micro_batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each example's labelled tokens under `policy` (a `modules.policy.Policy`).

    Perplexity of a set of responses = exp(sum of NLL / sum of tokens). Uses `Policy.token_logps`, so only the
    response positions go through the LM head; prompts are left-padded and responses right-padded as in RL.
    """
    tok = policy.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[tuple[float, int]] = []
    for i in range(0, len(examples), micro_batch_size):
        chunk = examples[i:i + micro_batch_size]
        prompts = [e["input_ids"][: e["prompt_length"]] for e in chunk]
        responses = [e["input_ids"][e["prompt_length"]:] for e in chunk]
        p_width, r_width = max(1, max(map(len, prompts))), max(1, max(map(len, responses)))
        prompt_ids = torch.tensor([[pad] * (p_width - len(p)) + p for p in prompts])  # (n, P) left-padded
        prompt_mask = torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p in prompts])  # (n, P)
        completion_ids = torch.tensor([r + [pad] * (r_width - len(r)) for r in responses])  # (n, T)
        completion_mask = torch.tensor([[1] * len(r) + [0] * (r_width - len(r)) for r in responses])  # (n, T)
        device = policy.device
        logps, _ = policy.token_logps(prompt_ids.to(device), prompt_mask.to(device), completion_ids.to(device),
                                      completion_mask.to(device))
        nll = -(logps.float() * completion_mask.to(device)).sum(-1)  # (n,)
        out.extend((float(v), len(r)) for v, r in zip(nll.tolist(), responses))
    return out


__all__ = ["IGNORE_INDEX", "collate_sft", "prompt_token_ids", "response_nll",
           "sft_example", "sft_example_from_ids", "sft_loss"]
