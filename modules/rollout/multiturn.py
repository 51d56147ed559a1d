"""Multi-turn rollouts with tools: generate until a tool call, run the tool, append its output, continue.

Each row's completion is the interleaving ``policy turn, observation, policy turn, ...``:

- policy tokens are kept exactly as sampled (never re-tokenised) and have ``completion_mask = 1``;
- observation tokens (the tool output, tokenised once) have ``completion_mask = 0`` and
  ``completion_attention_mask = 1``: the policy reads them, but they are outside the loss and the KL;
- ``turn_spans[i]`` lists the ``(start, end)`` token span of each policy turn, so a reward can be placed on a
  given turn's tokens (StepSearch puts a step reward on the token that closes each search call).

Budgets: at most `max_turns` policy turns, at most `max_tokens_per_turn` new tokens per turn
(default `sampling.max_new_tokens`) and at most `max_total_tokens` completion tokens (policy + observations).
A row that hits a budget before the model ends its answer (EOS or a stop string) is `truncated`.

Vision-language policies: the prompt's images are processed once per prompt; a tool may return an image or a list
of frames, which becomes the next turn's images: the observation text holds one placeholder per image, expanded by
the processor, its tokens are masked like any observation, and the row's `RolloutBatch.vision` grows by the new
images in order, so every later turn and the scoring forward see every image the rollout saw. Tools receive
`images_seen` (all images so far) in their row. An image observation that does not fit the token budget ends the
row as truncated (an image is never cut). Each row's `tool_calls`, `tool_errors` and `last_tool_error` (its last
call failed and no later call succeeded) are added to the reward columns.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from modules.policy import Policy
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import SamplingSettings, repeat_columns
from modules.rollout.hf import HFGenerateEngine, _eos_ids
from modules.rollout.tools import Tool, ToolCallFormat, run_tool
from modules.vision import append_images, encode_observation, forward_kwargs, image_placeholder
from modules.vision import encode_prompts as encode_vision_prompts


class MultiTurnToolEngine(HFGenerateEngine):
    """HF `generate` in turns, calling `tools` whenever a turn ends with a complete call."""

    def __init__(self, policy: Policy, sampling: SamplingSettings | None = None, *, tools: dict[str, Tool],
                 call_format: ToolCallFormat | str = "tags", max_turns: int = 4, max_tokens_per_turn: int | None = None,
                 max_total_tokens: int | None = None, max_observation_tokens: int = 256,
                 generation_batch_size: int | None = None) -> None:
        super().__init__(policy, sampling, generation_batch_size=generation_batch_size)
        if not tools:
            raise ValueError("MultiTurnToolEngine needs at least one tool")
        for name, value in (("max_turns", max_turns), ("max_observation_tokens", max_observation_tokens)):
            if int(value) < 1:
                raise ValueError(f"{name}={value}; it must be >= 1")
        self.tools = dict(tools)
        self.call_format = ToolCallFormat(call_format) if isinstance(call_format, str) else call_format
        self.max_turns = int(max_turns)
        self.max_tokens_per_turn = int(max_tokens_per_turn or self.sampling.max_new_tokens)
        self.max_total_tokens = int(max_total_tokens or self.max_turns * self.max_tokens_per_turn)
        self.max_observation_tokens = int(max_observation_tokens)
        self.stop = list(dict.fromkeys([*self.call_format.stop_strings(list(self.tools)), *(self.sampling.stop or [])]))
        self._placeholder: str | None = None

    @torch.no_grad()
    def generate(self, prompts: list[Any], columns: dict[str, list[Any]], *, num_generations: int,
                 greedy: bool = False) -> RolloutBatch:
        policy, tok = self.policy, self.policy.tokenizer
        if not prompts:
            raise ValueError("generate() got no prompts")
        g, b = int(num_generations), len(prompts)
        started = time.perf_counter()
        system = columns.get("system_prompt", [None] * b)
        vision: list[dict] | None = None
        if policy.vision is not None:  # one processor pass per prompt; a row's dict grows with its tool images
            encoded = encode_vision_prompts(policy.processor, prompts, columns.get("images", [None] * b), system)
            prompt_ids, prompt_mask = encoded.ids, encoded.mask
            vision = [encoded.vision[i // g] for i in range(b * g)]
            seen = [list(encoded.images[i // g]) for i in range(b * g)]
        else:
            prompt_ids, prompt_mask = self.encode_prompts(prompts, system)
        prompt_ids = prompt_ids.repeat_interleave(g, dim=0)  # (N, P)
        prompt_mask = prompt_mask.repeat_interleave(g, dim=0)  # (N, P)
        n = prompt_ids.shape[0]
        row_columns = repeat_columns(columns, g)
        rows = [{**{k: v[i] for k, v in row_columns.items()}, "prompt": prompts[i // g]} for i in range(n)]
        if vision is not None:
            for i in range(n):
                rows[i]["images_seen"] = seen[i]  # the tools' view: grows with every image observation
        row_calls, row_errors, last_error = [0] * n, [0] * n, [False] * n
        prompt_tokens = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask)]
        eos_ids = _eos_ids(policy.model, tok)

        tokens: list[list[int]] = [[] for _ in range(n)]
        trained: list[list[int]] = [[] for _ in range(n)]
        spans: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        done, truncated = [False] * n, [False] * n
        calls = errors = images_shown = 0
        tool_seconds = 0.0
        policy_tokens = 0
        for turn in range(self.max_turns):
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            budget = {i: min(self.max_tokens_per_turn, self.max_total_tokens - len(tokens[i])) for i in active}
            new = self._generate_turn([prompt_tokens[i] + tokens[i] for i in active], max(budget.values()), greedy,
                                      vision=None if vision is None else [vision[i] for i in active])
            for i, ids in zip(active, new):
                cut, ended = self._cut(ids, eos_ids)
                if cut > budget[i]:
                    cut, ended = budget[i], False
                ids = ids[:cut]
                spans[i].append((len(tokens[i]), len(tokens[i]) + len(ids)))
                tokens[i] += ids
                trained[i] += [1] * len(ids)
                policy_tokens += len(ids)
                text = tok.decode(ids, skip_special_tokens=True)
                call = self.call_format.parse(text, list(self.tools)) if ended and ids and ids[-1] not in eos_ids else None
                if call is None:  # EOS, a user stop string, or out of tokens for this turn
                    done[i] = True
                    truncated[i] = not ended
                    continue
                if turn == self.max_turns - 1 or len(tokens[i]) >= self.max_total_tokens:
                    done[i], truncated[i] = True, True  # a call the turn budget leaves no room to answer
                    continue
                t0 = time.perf_counter()
                result, ok = run_tool(call, self.tools, rows[i], images=vision is not None)
                tool_seconds += time.perf_counter() - t0
                calls, errors = calls + 1, errors + (not ok)
                row_calls[i], row_errors[i], last_error[i] = row_calls[i] + 1, row_errors[i] + (not ok), not ok
                room = self.max_total_tokens - len(tokens[i])
                if isinstance(result, list):  # images: expanded by the processor, never cut
                    text = self.call_format.render(self.placeholder * len(result))
                    obs, more = encode_observation(policy.processor, text, result)
                    if len(obs) >= room:
                        done[i], truncated[i] = True, True
                        continue
                    vision[i] = append_images(vision[i], more)
                    rows[i]["images_seen"] = rows[i]["images_seen"] + result
                    images_shown += len(result)
                else:
                    obs = tok(self.call_format.render(result), add_special_tokens=False)["input_ids"]
                    obs = obs[:self.max_observation_tokens]
                    if len(obs) >= room:
                        obs = obs[:room]
                        done[i], truncated[i] = True, True
                tokens[i] += obs
                trained[i] += [0] * len(obs)

        width = max(1, max(len(t) for t in tokens))
        pad = tok.pad_token_id
        completion_ids = torch.full((n, width), pad, dtype=torch.long)  # (N, T)
        completion_mask = torch.zeros(n, width, dtype=torch.long)  # (N, T) policy tokens
        attention = torch.zeros(n, width, dtype=torch.long)  # (N, T) all real tokens
        for i in range(n):
            k = len(tokens[i])
            completion_ids[i, :k] = torch.tensor(tokens[i], dtype=torch.long)
            completion_mask[i, :k] = torch.tensor(trained[i], dtype=torch.long)
            attention[i, :k] = 1
        texts = [tok.decode(t, skip_special_tokens=True) for t in tokens]
        device = policy.device
        stats = {"generate_s": time.perf_counter() - started - tool_seconds, "generated_tokens": float(policy_tokens),
                 "tool_calls": float(calls), "tool_errors": float(errors), "tool_s": tool_seconds,
                 "turns": float(sum(len(s) for s in spans))}
        if vision is not None:
            stats["tool_images"] = float(images_shown)
        row_columns = {**row_columns, "tool_calls": row_calls, "tool_errors": row_errors,
                       "last_tool_error": last_error}
        return RolloutBatch(
            prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
            completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
            completion_attention_mask=attention.to(device), prompts=[p for p in prompts for _ in range(g)],
            completions=texts, group_ids=torch.arange(b, device=device).repeat_interleave(g), columns=row_columns,
            truncated=torch.tensor(truncated, device=device), pad_token_id=pad, turn_spans=spans,
            stats=stats, vision=vision)

    @property
    def placeholder(self) -> str:
        """The chat template's text for one image (what an image observation holds per image)."""
        if self._placeholder is None:
            self._placeholder = image_placeholder(self.policy.processor)
        return self._placeholder

    def _generate_turn(self, contexts: list[list[int]], max_new_tokens: int, greedy: bool,
                       vision: list[dict] | None = None) -> list[list[int]]:
        """New token ids for each context (left-padded batch), stopping at EOS or a call's closing tag; `vision`:
        each context's images (a vision-language policy)."""
        tok, s, model = self.policy.tokenizer, self.sampling, self.policy.model
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), tok.pad_token_id, dtype=torch.long)  # (n, W) left-padded
        mask = torch.zeros(len(contexts), width, dtype=torch.long)
        for j, ctx in enumerate(contexts):
            ids[j, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
            mask[j, width - len(ctx):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=_eos_ids(model, tok), stop_strings=self.stop, tokenizer=tok,
                                      use_cache=True)
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        if vision is not None:
            kwargs["suppress_tokens"] = list(self.policy.vision.suppress_ids)
        was_training = model.training
        model.eval()
        try:
            chunk = self.generation_batch_size or len(contexts)
            out: list[list[int]] = []
            for k in range(0, len(contexts), chunk):
                dev = self.policy.device
                extra = {} if vision is None else forward_kwargs(self.policy.vision, ids[k:k + chunk],
                                                                 vision[k:k + chunk], device=dev)
                gen = model.generate(input_ids=ids[k:k + chunk].to(dev), attention_mask=mask[k:k + chunk].to(dev),
                                     **kwargs, **extra)
                out += gen[:, width:].tolist()
        finally:
            model.train(was_training)
        return out

    def _cut(self, ids: list[int], eos_ids: list[int]) -> tuple[int, bool]:
        """(tokens to keep, ended): up to and including the first EOS or the first complete stop string."""
        eos = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), None)
        stop = _first_stop(self.policy.tokenizer, ids[:eos] if eos else ids, self.stop)
        ends = [k for k in (eos, stop) if k is not None]
        return (min(ends), True) if ends else (len(ids), False)


def _first_stop(tokenizer, ids: list[int], stops: list[str]) -> int | None:
    """Smallest k such that the text of ids[:k] contains a stop string (binary search: containment is monotone)."""
    if not stops or not any(st in tokenizer.decode(ids, skip_special_tokens=False) for st in stops):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(st in tokenizer.decode(ids[:mid], skip_special_tokens=False) for st in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def turn_end_positions(rollout: RolloutBatch) -> list[list[int]]:
    """Per row, the index of the last token of each policy turn (where a per-turn reward is placed)."""
    if rollout.turn_spans is None:
        raise ValueError("this rollout has no turn_spans (it was not produced by a multi-turn engine)")
    return [[end - 1 for start, end in spans if end > start] for spans in rollout.turn_spans]


def place_turn_rewards(rollout: RolloutBatch, turn_rewards: list[list[float]]) -> Tensor:
    """(N, T) tensor with `turn_rewards[i][j]` on the last token of row i's j-th policy turn, 0 elsewhere."""
    out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)
    for i, (ends, values) in enumerate(zip(turn_end_positions(rollout), turn_rewards)):
        if len(values) > len(ends):
            raise ValueError(f"row {i}: {len(values)} turn rewards for {len(ends)} policy turns")
        for pos, value in zip(ends, values):
            out[i, pos] += float(value)
    return out.to(rollout.completion_ids.device)
