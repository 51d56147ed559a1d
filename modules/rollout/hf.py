"""Rollouts with Hugging Face `generate` (CPU or GPU): the default engine.

Prefix-shared group sampling (`share_prompt_prefill`, on by default): the G rows of a group have the same prompt,
so a text policy prefills each prompt once (B rows) and hands `generate` the KV cache repeated to the B*G rows;
`generate` then runs the prompt's last token onward, exactly as it does after its own prefill (see `prefill_cache`).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from modules.sharded import gathered_for_generation
from modules.policy import Policy
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import RolloutEngine, SamplingSettings, render_prompts, repeat_columns
from modules.vision import encode_prompts as encode_vision_prompts
from modules.vision import forward_kwargs


class HFGenerateEngine(RolloutEngine):
    """G samples per prompt with `model.generate`, left-padded prompts, stop strings, chat template.

    The engine shares the policy's weights, so there is nothing to sync after an optimiser step.

    `share_prompt_prefill` (default on): prefill each distinct prompt once and expand its KV cache to its G rows
    instead of prefilling every row (a text policy with G > 1; see `uses_shared_prefill` for when the plain path is
    taken anyway). Greedy outputs are the same tokens either way; False restores one full `generate` per row chunk.
    """

    def __init__(self, policy: Policy, sampling: SamplingSettings | None = None, *,
                 generation_batch_size: int | None = None, share_prompt_prefill: bool = True) -> None:
        self.policy = policy
        self.sampling = sampling or SamplingSettings()
        self.generation_batch_size = generation_batch_size
        self.share_prompt_prefill = bool(share_prompt_prefill)

    def encode_prompts(self, prompts: list[Any], system_prompts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text prompts only; a vision-language policy's prompts go through `modules.vision.encode_prompts`."""
        tok = self.policy.tokenizer
        texts, special = render_prompts(tok, prompts, system_prompts, self.sampling.chat_template)
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=special)
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def generate(self, prompts: list[Any], columns: dict[str, list[Any]], *, num_generations: int,
                 greedy: bool = False) -> RolloutBatch:
        policy, tok, s = self.policy, self.policy.tokenizer, self.sampling
        if not prompts:
            raise ValueError("generate() got no prompts")
        system = columns.get("system_prompt", [None] * len(prompts))
        g = int(num_generations)
        vision = None
        if policy.vision is not None:  # each prompt's images are processed once; its G rows share the result
            encoded = encode_vision_prompts(policy.processor, prompts, columns.get("images", [None] * len(prompts)),
                                            system)
            prompt_ids, prompt_mask = encoded.ids, encoded.mask
            vision = [v for v in encoded.vision for _ in range(g)]
        else:
            prompt_ids, prompt_mask = self.encode_prompts(prompts, system)
        device = policy.device
        unique_ids, unique_mask = prompt_ids.to(device), prompt_mask.to(device)  # (B, P), one row per prompt
        prompt_ids = unique_ids.repeat_interleave(g, dim=0)  # (B*G, P)
        prompt_mask = unique_mask.repeat_interleave(g, dim=0)  # (B*G, P)
        eos_ids = _eos_ids(policy.model, tok)
        gen_kwargs = generate_kwargs(s, tok, eos_ids, greedy=greedy)
        if policy.vision is not None:  # a sampled image placeholder would break the scoring forward
            gen_kwargs["suppress_tokens"] = list(policy.vision.suppress_ids)

        model = policy.model
        # Vision-language policies keep one full generate per row chunk: their prefill also carries the pixel
        # inputs (and e.g. Qwen2-VL's rope deltas), which `prefill_cache` does not reproduce.
        share = vision is None and self.uses_shared_prefill(unique_mask, g)
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        chunk = self.generation_batch_size or prompt_ids.shape[0]
        outs = []
        try:
            with gathered_for_generation(model):  # FSDP: gather the weights once, not per token (prefill included)
                if share:
                    # Group-aligned chunks: whole prompts, G rows each, at most `generation_batch_size` rows.
                    per_chunk = chunk // g
                    for j in range(0, unique_ids.shape[0], per_chunk):
                        ids, mask = unique_ids[j:j + per_chunk], unique_mask[j:j + per_chunk]  # (n, P)
                        cache = prefill_cache(model, ids, mask)  # KV of the first P-1 tokens, n rows
                        cache.batch_repeat_interleave(g)  # n*G rows, each group's rows adjacent as in prompt_ids
                        out = model.generate(input_ids=ids.repeat_interleave(g, dim=0),
                                             attention_mask=mask.repeat_interleave(g, dim=0), past_key_values=cache,
                                             **gen_kwargs)
                        del cache
                        outs.append(out[:, prompt_ids.shape[1]:])  # (n*G, T_j)
                else:
                    for i in range(0, prompt_ids.shape[0], chunk):
                        extra = {} if vision is None else forward_kwargs(policy.vision, prompt_ids[i:i + chunk],
                                                                         vision[i:i + chunk], device=device)
                        out = model.generate(input_ids=prompt_ids[i:i + chunk],
                                             attention_mask=prompt_mask[i:i + chunk], **gen_kwargs, **extra)
                        outs.append(out[:, prompt_ids.shape[1]:])  # (n, T_i)
        finally:
            model.train(was_training)
        width = max(o.shape[1] for o in outs)
        completion_ids = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=tok.pad_token_id)
                                    for o in outs])  # (N, T)
        lengths, truncated = completion_lengths(completion_ids, eos_ids,
                                                stopped_by_string=self._stopped_by_string(completion_ids))
        positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        completion_mask = (positions[None, :] < lengths[:, None]).long()  # (N, T)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tok.pad_token_id)
        texts = tok.batch_decode([ids[:n] for ids, n in zip(completion_ids.tolist(), lengths.tolist())],
                                 skip_special_tokens=True)
        elapsed = time.perf_counter() - started
        b = len(prompts)
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            completion_mask=completion_mask, completion_attention_mask=completion_mask.clone(),
            prompts=[p for p in prompts for _ in range(g)], completions=texts,
            group_ids=torch.arange(b, device=device).repeat_interleave(g),
            columns=repeat_columns(columns, g), truncated=truncated, pad_token_id=tok.pad_token_id,
            stats={"generate_s": elapsed, "generated_tokens": float(lengths.sum())}, vision=vision)

    def uses_shared_prefill(self, prompt_mask: torch.Tensor, num_generations: int) -> bool:
        """Whether `generate` prefills each of these (B, P) left-padded prompts once for its `num_generations` rows.

        No (the plain path, one full `generate` per row chunk) when: the flag is off; G = 1 (nothing to share);
        P = 1 (no prompt token before the last one to cache); `generation_batch_size` < G (one group's G rows
        would exceed the row cap; a cap >= G is rounded down to whole groups instead); a row is not left-padded;
        or the model cannot take a prefilled `DynamicCache` (`shares_prefill`). The caller also skips it for a
        vision-language policy.
        """
        g = int(num_generations)
        if not self.share_prompt_prefill or g < 2 or prompt_mask.shape[1] < 2:
            return False
        if self.generation_batch_size is not None and int(self.generation_batch_size) < g:
            return False
        if not bool(prompt_mask[:, -1].all()):  # right padding: the last column must be every prompt's last token
            return False
        return shares_prefill(self.policy.model)

    def _stopped_by_string(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """(N,) the length up to and including the first stop string, or 0 where none occurs."""
        stops = self.sampling.stop or []
        out = torch.zeros(completion_ids.shape[0], dtype=torch.long, device=completion_ids.device)
        if not stops:
            return out
        tok = self.policy.tokenizer
        for row, ids in enumerate(completion_ids.tolist()):
            text = tok.decode(ids, skip_special_tokens=False)
            if not any(st in text for st in stops):
                continue
            # Shortest prefix whose text contains a stop string (tokens after it are generate's padding).
            for k in range(1, len(ids) + 1):
                if any(st in tok.decode(ids[:k], skip_special_tokens=False) for st in stops):
                    out[row] = k
                    break
        return out


def shares_prefill(model) -> bool:
    """Whether `model` can continue `generate` from a cache that `prefill_cache` built: a decoder-only torch module
    whose generation config asks for no cache implementation of its own (`generate` refuses a passed cache next to
    `cache_implementation`, e.g. a static or hybrid cache) and that uses the default `DynamicCache` (not Mamba-like).
    A wrapper that only mimics `generate` (e.g. GETeR's prefix-splicing view) is not a module: plain path."""
    if not isinstance(model, torch.nn.Module):
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None) is not None:
        return False
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(supports()) if callable(supports) else True


def prefill_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The KV cache (a transformers `Cache`) of (n, P) left-padded prompts' first P-1 tokens.

    Passed to `generate(input_ids=(n*G, P) ids, attention_mask=(n*G, P), past_key_values=cache.repeated)`, it makes
    `generate` compute what it computes after its own prefill (transformers 5.x `generation/utils.py`): `_prefill`
    sees a cache of P-1 tokens and a mask as long as `input_ids`, so it feeds only the last column
    (`next_sequence_length = P - (P-1) = 1`); `position_ids` come from the full (n*G, P) mask (cumsum - 1, padding
    -> 0) and are sliced to that column, so each row's last token keeps its position; the mask still hides each
    row's left padding from it and from every later token; logits processors and stopping criteria (repetition
    penalty, stop strings, max_length = P + max_new_tokens) still see the whole prompt in `input_ids`. Here the
    same positions (`clamp(min=0)` = generate's `masked_fill(mask == 0, 0)`) and the mask are given, and the mask is
    dropped when it is all ones, as `generate` drops it. The caller holds `torch.no_grad()` and eval mode.
    """
    ids, mask = input_ids[:, :-1], attention_mask[:, :-1]  # (n, P-1)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (n, P-1)
    kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=None if bool(mask.all()) else mask,
                                  position_ids=position_ids, use_cache=True)
    if _accepts(model, "logits_to_keep"):  # the prefill's logits are never read: compute one position, not P-1
        kwargs["logits_to_keep"] = 1
    return model(**kwargs).past_key_values


def _accepts(model, name: str) -> bool:
    """Whether `model`'s forward (a peft wrapper's base model's) takes the keyword `name`."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def generate_kwargs(s: SamplingSettings, tokenizer, eos_ids: list[int], *, greedy: bool) -> dict[str, Any]:
    """`model.generate` keywords for the sampling settings `s` (greedy: do_sample off, the sampling knobs unset)."""
    kwargs: dict[str, Any] = dict(max_new_tokens=s.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=eos_ids, use_cache=True)
    if greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
    if s.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = s.repetition_penalty
    if s.stop:
        kwargs.update(stop_strings=list(s.stop), tokenizer=tokenizer)
    return kwargs


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer and generation_config define no eos_token_id; set one")
    return ids


def completion_lengths(completion_ids: torch.Tensor, eos_ids: list[int], *, stopped_by_string: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths, truncated): tokens up to and including the first EOS (as TRL masks them), else up to the
    stop string, else everything generated; truncated = no EOS and no stop string within the budget."""
    t = completion_ids.shape[1]
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # (N, T)
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, t, dtype=torch.long))
    lengths = first_eos.long()
    if stopped_by_string is not None:
        by_stop = stopped_by_string > 0
        lengths = torch.where(by_stop & (stopped_by_string < lengths), stopped_by_string, lengths)
        ended = has_eos | by_stop
    else:
        ended = has_eos
    truncated = ~ended
    return lengths, truncated
