"""The trainable policy: a Hugging Face causal LM (full, LoRA or QLoRA) plus its tokenizer.

`Policy` owns the model, the tokenizer and the reference model, and computes per-token log-probs of
completion tokens (temperature-scaled as TRL does: logits / temperature) in micro-batches, optionally with the LM
head run a chunk of tokens at a time and recomputed in the backward (`logit_chunk_size`, `modules.lm_head`).
Reference log-probs come from the same weights with the LoRA adapter disabled, or from a frozen copy of
the starting checkpoint for a full fine-tune.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from modules.atomic import atomic_path
from modules.host_memory import release_freed_memory
from modules.lm_head import chunked_token_logps, entropy_from_logits, selective_log_softmax
from modules.models.loading import quiet_progress
from modules.vision import (VisionSettings, VisionSpec, forward_kwargs, is_vision_config, load_processor,
                            vision_module_names, vision_spec)


class PolicyConfigError(ValueError):
    """A bad policy setting (model path, LoRA target, quantization): the message names the field and the fix."""


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft `LoraConfig`)."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or "all-linear" (every linear layer except the LM head)."""
    bias: str = "none"
    """peft bias mode: none, all or lora_only."""


QUANTIZATION_MODES = ("4bit", "8bit")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise PolicyConfigError(f"model.dtype={dtype!r} is not a dtype; use one of {sorted(table)}")
    return table[dtype]


def _load_base(path: str, *, dtype: torch.dtype, quantization: str | None, trust_remote_code: bool,
               attn_implementation: str | None, vision: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        if quantization not in QUANTIZATION_MODES:
            raise PolicyConfigError(f"model.quantization={quantization!r}; use one of {QUANTIZATION_MODES} or null")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise PolicyConfigError(
                f"model.quantization={quantization!r} needs bitsandbytes: pip install 'r1-recipes[quant]'") from err
        from transformers import BitsAndBytesConfig

        if quantization == "4bit":
            # QLoRA: NF4 storage, compute in the model dtype (float32 on CPU, bf16 is typical on GPU).
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
        else:
            kwargs["device_map"] = "cpu"
    with quiet_progress():  # no "Loading weights" bar per load (policy, reference copy, merge base...)
        return auto.from_pretrained(path, **kwargs)


class Policy(nn.Module):
    """A causal LM policy with optional LoRA/QLoRA adapters and a reference model for KL.

    Build it with `Policy.from_pretrained(path, lora=..., quantization=...)`.
    """

    def __init__(self, model: nn.Module, tokenizer, *, source: str | None = None, load_kwargs: dict | None = None,
                 reference: str = "auto", processor=None, logit_chunk_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor  # a vision-language model's processor (images -> vision inputs), else None
        self.vision: VisionSpec | None = None if processor is None else vision_spec(model, processor)
        self.source = source
        self._load_kwargs = load_kwargs or {}
        if reference not in ("auto", "adapter", "copy", "none"):
            raise PolicyConfigError(f"model.reference={reference!r}; use auto, adapter, copy or none")
        if reference == "auto":
            reference = "adapter" if self.is_peft else "copy"
        if reference == "adapter" and not self.is_peft:
            raise PolicyConfigError("model.reference='adapter' needs LoRA (set model.lora) ; use 'copy' for a full fine-tune")
        self.reference_mode = reference
        # A frozen copy is built on demand (only KL needs it). Kept in a list so it is not a registered
        # submodule: it is neither trained nor saved in checkpoints (it is reloaded from `source`).
        self._reference: list[nn.Module] = []
        if logit_chunk_size is not None and (isinstance(logit_chunk_size, bool)
                                             or not isinstance(logit_chunk_size, int) or logit_chunk_size < 1):
            raise PolicyConfigError(f"logit_chunk_size={logit_chunk_size!r}; give an integer >= 1 (completion tokens "
                                    "per LM-head chunk) or None for all at once")
        self.logit_chunk_size = logit_chunk_size
        """Completion tokens whose vocabulary logits exist at once in `token_logps` (the LM head is recomputed in the
        backward, `modules.lm_head.chunked_token_logps`); None: all of a micro-batch's at once, through the model's
        own forward. Models the chunked path cannot reproduce use the latter anyway (`lm_head_parts`)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str, *, lora: LoraSettings | dict | None = None, quantization: str | None = None,
                        dtype: str | torch.dtype = "float32", gradient_checkpointing: bool = False,
                        reference: str = "auto", trust_remote_code: bool = False,
                        attn_implementation: str | None = None, vision: VisionSettings | None = None,
                        logit_chunk_size: int | None = None) -> "Policy":
        """Load a causal LM + tokenizer, or a vision-language model + processor (any `AutoModelForImageTextToText`
        checkpoint), from a local path, an alias (see `modules.models`) or a hub id."""
        from transformers import AutoConfig, AutoTokenizer

        release_freed_memory()  # before the first large allocation: freed activations go back to the OS

        from modules.models.registry import resolve_model_path

        path = resolve_model_path(str(path))
        if quantization is not None and lora is None:
            raise PolicyConfigError(
                f"model.quantization={quantization!r} without model.lora: quantized weights cannot be trained; "
                "add a `lora:` block (QLoRA)")
        torch_dtype = _resolve_dtype(dtype)
        is_vlm = is_vision_config(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
        processor = None
        if is_vlm:
            processor = load_processor(path, settings=vision, trust_remote_code=trust_remote_code)
            tokenizer = processor.tokenizer
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = _load_base(path, dtype=torch_dtype, quantization=quantization, trust_remote_code=trust_remote_code,
                           attn_implementation=attn_implementation, vision=is_vlm)
        train_tower = bool(vision and vision.train_tower)
        if is_vlm and not train_tower:  # the vision tower stays frozen (LoRA targets skip it below)
            for name in vision_module_names(model):
                model.get_submodule(name).requires_grad_(False)
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            _keep_4bit_layout(model)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lora is not None:
                model.enable_input_require_grads()
        if gradient_checkpointing and getattr(model.config.get_text_config(), "use_cache", None) is not None:
            model.config.get_text_config().use_cache = False
        if lora is not None:
            model = _apply_lora(model, lora, skip=[] if train_tower or not is_vlm else vision_module_names(model))
        load_kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                       "attn_implementation": attn_implementation, "vision": is_vlm}
        return cls(model, tokenizer, source=path, load_kwargs=load_kwargs, reference=reference, processor=processor,
                   logit_chunk_size=logit_chunk_size)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config") and hasattr(self.model, "disable_adapter")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model was loaded in (for QLoRA, its compute dtype; the base is stored in 4 bits)."""
        return self._load_kwargs.get("dtype") or next(p for p in self.model.parameters() if p.is_floating_point()).dtype

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ reference model
    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The model that gives reference log-probs: the base with the adapter off, or a frozen copy."""
        if self.reference_mode == "none":
            raise PolicyConfigError("a KL term needs a reference model but model.reference='none'; set it to auto")
        if self.reference_mode == "adapter":
            with self.model.disable_adapter():
                yield self.model
            return
        if not self._reference:
            self._reference.append(self._load_frozen_copy())
        ref = self._reference[0]
        if ref.device != self.device:
            ref.to(self.device)
        yield ref

    def _load_frozen_copy(self) -> nn.Module:
        if self.source is None:
            import copy

            ref = copy.deepcopy(self.model)
        else:
            ref = _load_base(self.source, dtype=self._load_kwargs.get("dtype", torch.float32), quantization=None,
                             trust_remote_code=self._load_kwargs.get("trust_remote_code", False),
                             attn_implementation=self._load_kwargs.get("attn_implementation"),
                             vision=self._load_kwargs.get("vision", False))
        ref.eval().requires_grad_(False)
        return ref.to(self.device)

    # ------------------------------------------------------------------ log-probs
    def token_logps(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    completion_attention_mask: Tensor, *, temperature: float = 1.0, micro_batch_size: int | None = None,
                    with_entropy: bool = False, entropy_grad: bool = False, model: nn.Module | None = None,
                    truncation: tuple[float, int] | None = None, vision: list[dict] | None = None
                    ) -> tuple[Tensor, ...]:
        """Log-probs (N, T) of each completion token under `model` (default: the policy), with temperature.

        Only the T completion positions go through the LM head, one micro-batch at a time: with `logit_chunk_size`
        set (and a model whose head `lm_head_parts` finds), the decoder body gives the hidden states and
        `chunked_token_logps` computes everything from them `logit_chunk_size` tokens at a time, recomputing the
        head in the backward; otherwise the model's forward gives the (n, T, V) logits (`logits_to_keep`).
        Returns (logps, entropy) where entropy (N, T) is the full-distribution entropy at each position (a
        metric without a graph, unless `entropy_grad` is set for an entropy bonus in the loss). With `truncation`
        = (top_p, top_k), returns (logps, entropy, truncated) where `truncated` (N, T, no graph) are the log-probs
        renormalised over each position's top-k / top-p set, as vLLM's sampler gives them (same forward).

        `vision`: for a vision-language policy, each row's processed vision inputs (`RolloutBatch.vision`), collated
        per micro-batch. Qwen-VL models then compute their own 3-D M-RoPE positions (1-D positions are off by 2e-3 in
        log-prob, VISION-NOTES pitfall (d)); the other architectures get the same 1-D positions as text.
        """
        from modules.objectives.tis import truncated_logprobs

        model = self.model if model is None else model
        n, t = completion_ids.shape
        micro = n if not micro_batch_size else int(micro_batch_size)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P + T)
        attention = torch.cat([prompt_mask, completion_attention_mask], dim=1)  # (N, P + T)
        # Positions count real tokens only, exactly as `generate` builds them for left-padded prompts.
        position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)  # (N, P + T)
        if (vision is None) != (self.vision is None):
            raise ValueError("token_logps: a vision-language policy needs the rows' vision inputs and a text policy "
                             "takes none (RolloutBatch.vision)")
        parts = lm_head_parts(model) if self.logit_chunk_size else None
        logps, entropies, truncated = [], [], []
        for i in range(0, n, micro):
            extra = {} if self.vision is None else forward_kwargs(self.vision, input_ids[i:i + micro],
                                                                  vision[i:i + micro], device=input_ids.device)
            if self.vision is None or not self.vision.mrope:
                extra["position_ids"] = position_ids[i:i + micro]
            targets = completion_ids[i:i + micro]  # (n, T)
            if parts is not None:
                body, head = parts
                out = body(input_ids=input_ids[i:i + micro], attention_mask=attention[i:i + micro], use_cache=False,
                           **extra)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (n, P + T, H)
                # position j of the last T + 1 predicts completion token j
                logp, entropy, *trunc = chunked_token_logps(
                    hidden[:, hidden.shape[1] - t - 1:-1], head.weight, head.bias, targets, temperature=temperature,
                    chunk_size=self.logit_chunk_size, with_entropy=with_entropy, entropy_grad=entropy_grad,
                    truncation=truncation)  # (n, T) each
                logps.append(logp)
                entropies.append(entropy)
                truncated.extend(trunc)
                continue
            out = model(input_ids=input_ids[i:i + micro], attention_mask=attention[i:i + micro],
                        logits_to_keep=t + 1, use_cache=False, **extra)
            logits = out.logits[:, :-1, :].float()  # (n, T, V): position j predicts completion token j
            if temperature != 1.0:
                logits = logits / temperature
            lse = torch.logsumexp(logits, dim=-1)  # (n, T), shared by the log-probs and the entropy
            logps.append(selective_log_softmax(logits, targets, lse))
            if truncation is not None:
                with torch.no_grad():
                    truncated.append(truncated_logprobs(logits.detach(), targets, top_p=truncation[0],
                                                        top_k=truncation[1]))
            if with_entropy and entropy_grad:
                entropies.append(entropy_from_logits(logits, lse))
            elif with_entropy:  # a metric only: no graph through it
                with torch.no_grad():
                    entropies.append(entropy_from_logits(logits.detach(), lse.detach()))
        out = torch.cat(logps), (torch.cat(entropies) if with_entropy else None)
        return out if truncation is None else (*out, torch.cat(truncated))

    @torch.no_grad()
    def ref_token_logps(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_attention_mask: Tensor, *, temperature: float = 1.0,
                        micro_batch_size: int | None = None, vision: list[dict] | None = None) -> Tensor:
        """Reference log-probs (N, T), no grad."""
        with self.reference_model() as ref:
            logps, _ = self.token_logps(prompt_ids, prompt_mask, completion_ids, completion_attention_mask,
                                        temperature=temperature, micro_batch_size=micro_batch_size, model=ref,
                                        vision=vision)
        return logps

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the adapter only (LoRA) or the full model, plus the tokenizer.

        Under FSDP (sharded weights) every rank must call it: the weights are gathered, rank 0 writes."""
        directory = Path(directory)
        state_dict = self._gathered_state_dict()
        if state_dict is not None and not state_dict:  # FSDP, not rank 0: nothing to write
            return directory
        with atomic_path(directory, directory=True) as tmp, quiet_progress():  # never a half-written folder
            self.model.save_pretrained(tmp, state_dict=state_dict)
            (self.processor or self.tokenizer).save_pretrained(tmp)
        return directory

    def _gathered_state_dict(self) -> dict | None:
        """None (the model saves its own weights), or under FSDP the gathered full weights ({} off rank 0)."""
        from modules.sharded import full_state_dict, is_sharded

        return full_state_dict(self.model) if is_sharded(self.model) else None

    def save_merged(self, directory: str | Path) -> Path:
        """Save a plain Hugging Face checkpoint (LoRA merged into the base) plus the tokenizer.

        The result loads with `from_pretrained` like any model, so it can start the next stage of a pipeline.
        A full fine-tune is saved as it is. For LoRA/QLoRA the adapter is merged into a fresh, unquantized copy of
        the base loaded from `source` in the training dtype (on CPU): the training model is left untouched.
        """
        import tempfile

        directory = Path(directory)
        if not self.is_peft:
            return self.save_pretrained(directory)
        if self.source is None:
            raise PolicyConfigError("save_merged needs the base model path (Policy.source) to merge the adapter into")
        from peft import PeftModel

        state_dict = self._gathered_state_dict()  # FSDP: every rank gathers, rank 0 merges and writes
        if state_dict is not None and not state_dict:
            return directory
        with tempfile.TemporaryDirectory() as adapter_dir, quiet_progress():
            self.model.save_pretrained(adapter_dir, state_dict=state_dict)
            base = _load_base(self.source, dtype=self._load_kwargs.get("dtype", torch.float32), quantization=None,
                              trust_remote_code=self._load_kwargs.get("trust_remote_code", False),
                              attn_implementation=self._load_kwargs.get("attn_implementation"),
                              vision=self._load_kwargs.get("vision", False))
            merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
            with atomic_path(directory, directory=True) as tmp:
                merged.save_pretrained(tmp)
                (self.processor or self.tokenizer).save_pretrained(tmp)
        return directory


_HEAD_SCALES = ("lm_head_multiplier", "output_multiplier", "output_multiplier_scale", "dim_model_base",
                "mup_width_multiplier")
"""Config fields that scale the hidden states or logits around the head without "logit" in their name (Falcon-H1,
MiniCPM, muP models): other than 1 (or null), the chunked path is off."""


def _changes_logits(name: str, value) -> bool:  # noqa: ANN001
    """Whether config field `name` = `value` caps or scales the logits after the head (Gemma's
    `final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`, ...); attention caps do not."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    name = name.lower()
    if "attn" in name or "attention" in name or "router" in name:
        return False
    if "cap" in name and "logit" in name:
        return value != 0
    return (("logit" in name and "scal" in name) or name in _HEAD_SCALES) and value != 1


def lm_head_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(body, head) of a Hugging Face causal LM or vision-language model, when logits are exactly
    `head(body(...).last_hidden_state)`; else None (`Policy.token_logps` then runs the model's own forward).

    A peft model is unwrapped (`get_base_model()`): its LoRA layers sit inside the body, and `disable_adapter()`
    or a switched adapter applies to it as to the whole. The body is `base.<base_model_prefix>` (`.model` for Llama,
    Qwen2 and the Qwen2-VL / Idefics3 / LLaVA models), the head `get_output_embeddings()`. None when the head is not
    a plain `nn.Linear` (a LoRA-adapted or quantized head), carries hooks, is sharded (FSDP2: the body's forward
    alone would not gather the root's weights), or when the config caps or scales the logits.
    """
    from modules.sharded import is_sharded

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    prefix = getattr(base, "base_model_prefix", None)
    body = getattr(base, prefix, None) if isinstance(prefix, str) and prefix else None
    if type(head) is not nn.Linear or not isinstance(body, nn.Module) or body is base:
        return None
    if head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook") or is_sharded(model):
        return None
    if any(cls.__name__ == "DTensor" for cls in type(head.weight).__mro__):
        return None
    config = getattr(base, "config", None)
    configs = [c for c in (config, getattr(config, "get_text_config", lambda: None)()) if c is not None]
    if any(_changes_logits(name, value) for c in configs for name, value in vars(c).items()):
        return None
    return body, head


def _keep_4bit_layout(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit weights in their training layout on CPUs with AVX512-BF16.

    bitsandbytes >= 0.49 repacks a `Linear4bit`'s weight for its AVX512-BF16 CPU kernel the first time the module
    runs in eval mode without gradients (our `generate`), and never unpacks it: the next training forward then
    fails in autograd (an in-place bias add on a leaf's view) and scores with bf16 block scales instead of the
    trained ones. A policy trains and samples with the same weights, so the repacking is turned off (measured on a
    CPU with avx512_bf16: QLoRA training failed on the step after the first `generate`)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _apply_lora(model: nn.Module, lora: LoraSettings | dict, *, skip: list[str] = ()) -> nn.Module:
    """LoRA adapters on `lora.target_modules`, except inside the modules named in `skip` (a VLM's vision tower)."""
    from peft import LoraConfig, get_peft_model

    settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**dict(lora))
    targets = settings.target_modules
    if skip:
        targets = _targets_outside(model, targets, skip)
    config = LoraConfig(task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=targets, bias=settings.bias)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise PolicyConfigError(f"model.lora.target_modules={settings.target_modules!r}: {err}. "
                                "Use 'all-linear' or names from model.named_modules()") from err


def _targets_outside(model: nn.Module, targets: list[str] | str, skip: list[str]) -> list[str]:
    """The full names of the linear layers that `targets` (names, or "all-linear") selects outside the `skip`
    modules and the LM head: peft's name matching alone would also adapt a vision tower's `q_proj`s."""
    wanted = None if targets == "all-linear" else ([targets] if isinstance(targets, str) else list(targets))
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (wanted is None and leaf != "lm_head") or (wanted is not None and (leaf in wanted or name in wanted)):
            out.append(name)
    if not out:
        raise PolicyConfigError(f"model.lora.target_modules={targets!r} matches no linear layer of the language "
                                "model; use 'all-linear' or names from model.named_modules()")
    return out


__all__ = ["Policy", "LoraSettings", "PolicyConfigError", "selective_log_softmax", "entropy_from_logits",
           "lm_head_parts", "QUANTIZATION_MODES"]
