"""A reward model (any ``AutoModelForSequenceClassification``) as a reward function: ``reward_model``.

Config::

    rewards:
      - {name: reward_model, weight: 1.0,
         kwargs: {model_name_or_path: /models/my-rm, batch_size: 8, device: cpu, normalize: none}}

Each (prompt, completion) pair is written with the reward model's chat template when its tokenizer has one (the
prompt as the user turn(s), the completion as the assistant turn), else as the plain text ``prompt + completion``;
the score is the logit of `label` (the single label of a usual reward model). The model is loaded once per
(path, device, dtype) and kept (`clear_reward_model_cache` frees it).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import torch

from modules.rewards.registry import completion_text, register_reward

NORMALIZE = ("none", "sigmoid", "batch")
"""none: the raw logit; sigmoid: ``sigmoid(logit)`` in (0, 1) (a Bradley-Terry model's win probability against a
reward-0 answer); batch: the logits standardised over the batch (mean 0, std 1; all 0 when the batch has one row
or all logits are equal)."""
DTYPES = ("float32", "bfloat16", "float16")

_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


def load_reward_model(model_name_or_path: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a sequence-classification reward model, loaded once per (path, device, dtype),
    frozen, in eval mode, with a pad token set (the EOS token when the tokenizer has none)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modules.models import resolve_model_path

    try:
        path = resolve_model_path(str(model_name_or_path))
    except Exception as err:  # noqa: BLE001 - re-raised as one line naming the option
        raise ValueError(f"reward_model: model_name_or_path={model_name_or_path!r}: {err}") from err
    key = (path, str(torch.device(device)), dtype)
    with _LOCK:
        if key not in _MODELS:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
            except Exception as err:  # noqa: BLE001
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"reward_model: model_name_or_path={model_name_or_path!r} does not load as a "
                                 f"sequence-classification model ({type(err).__name__}: {first})") from err
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise ValueError(f"reward_model: model_name_or_path={model_name_or_path!r}: the tokenizer has "
                                     "neither a pad nor an EOS token; add a pad token to it")
                tokenizer.pad_token = tokenizer.eos_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            model.to(device).eval().requires_grad_(False)
            _MODELS[key] = (model, tokenizer)
        return _MODELS[key]


def clear_reward_model_cache() -> None:
    """Forget every cached reward model."""
    with _LOCK:
        _MODELS.clear()


def reward_model_texts(tokenizer: Any, prompts: Sequence, completions: Sequence) -> list[str]:
    """The text the reward model reads for each pair: its chat template (prompt as user, completion as assistant)
    when the tokenizer has one, else ``prompt + completion``. A prompt may be a string or a list of chat messages."""
    texts = []
    for prompt, completion in zip(prompts, completions):
        answer = completion_text(completion)
        messages = prompt if isinstance(prompt, (list, tuple)) else [{"role": "user", "content": str(prompt)}]
        if getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}],
                                                       tokenize=False))
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages) if isinstance(prompt, (list, tuple)) \
                else str(prompt)
            texts.append(text + answer)
    return texts


@register_reward("reward_model")
def reward_model_reward(prompts: list, completions: list, *, model_name_or_path: str | None = None,
                        batch_size: int = 8, device: str = "cpu", dtype: str = "float32", label: int = 0,
                        normalize: str = "none", max_length: int | None = None, **_: Any) -> list[float]:
    """The reward model's score of each (prompt, completion).

    Options (``kwargs`` of the reward entry):
        model_name_or_path: Local directory (or alias / cached hub id) of an ``AutoModelForSequenceClassification``.
        batch_size: Pairs per forward pass (the reward model's own micro-batch size).
        device: Where the reward model runs (cpu, cuda, cuda:1, ...).
        dtype: float32, bfloat16 or float16.
        label: Which logit is the score (0: the single label of a usual reward model).
        normalize: none (raw logit), sigmoid (in (0, 1)) or batch (standardised over the batch); see `NORMALIZE`.
        max_length: Keep at most this many tokens per pair, cutting from the left so the completion's end stays;
            null = no cut.
    """
    if not model_name_or_path:
        raise ValueError("reward_model: model_name_or_path is not set; give the reward model's directory in the "
                         "reward entry's kwargs ({name: reward_model, kwargs: {model_name_or_path: ...}})")
    if normalize not in NORMALIZE:
        raise ValueError(f"reward_model: normalize={normalize!r}; use one of {', '.join(NORMALIZE)}")
    if dtype not in DTYPES:
        raise ValueError(f"reward_model: dtype={dtype!r}; use one of {', '.join(DTYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"reward_model: batch_size={batch_size!r}; it must be an integer >= 1")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"reward_model: max_length={max_length!r}; it must be an integer >= 1 or null")
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"reward_model: device={device!r} is not a device ({err})") from None
    model, tokenizer = load_reward_model(model_name_or_path, device, dtype)
    num_labels = int(model.config.num_labels)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
        raise ValueError(f"reward_model: label={label!r}; the model has {num_labels} label(s), use 0..{num_labels - 1}")
    if len(prompts) != len(completions):
        raise ValueError(f"reward_model: got {len(prompts)} prompts for {len(completions)} completions")

    texts = reward_model_texts(tokenizer, prompts, completions)
    scores: list[float] = []
    # a chat-templated text already holds its special tokens (BOS, ...); plain text gets the tokenizer's own
    special = not getattr(tokenizer, "chat_template", None)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            # right padding: the real tokens keep positions 0.., so a pair scores the same in any micro-batch
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, padding_side="right",
                            add_special_tokens=special, truncation=max_length is not None, max_length=max_length)
            with torch.inference_mode():
                logits = model(input_ids=enc["input_ids"].to(device),
                               attention_mask=enc["attention_mask"].to(device)).logits  # (b, num_labels)
            scores.extend(logits[:, label].float().cpu().tolist())
    finally:
        tokenizer.truncation_side = side
    values = torch.tensor(scores, dtype=torch.float64)
    if normalize == "sigmoid":
        values = torch.sigmoid(values)
    elif normalize == "batch":
        std = values.std() if values.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        values = (values - values.mean()) / std if std > 0 else torch.zeros_like(values)
    return values.tolist()
