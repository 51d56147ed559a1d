"""A stand-in for the `vllm` package at its boundary (LLM, SamplingParams, LoRARequest), for CI without vLLM.

`FakeLLM` keeps its own Hugging Face copy of the model loaded from `model=`, takes weights through
`collective_rpc("reload_weights", kwargs={"weights_iterator": ...})` as vLLM >= 0.31 does, samples with HF
`generate` (top-p / top-k included), and returns `RequestOutput`-shaped objects with the sampled tokens'
log-probs computed by its own copy as `logprobs_mode=processed_logprobs` gives them: after temperature and
top-k / top-p, renormalised over the kept tokens (through transformers' own warpers, not the trainer's code).
So a test sees exactly what the engine pushed: if the merge were wrong, its log-probs would not match the
trainer's. Every call is recorded in `FakeLLM.calls` (sleep/wake order, prefix-cache resets, LoRA requests).
The real engine is exercised by tests/test_vllm_real.py wherever vLLM is installed.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from types import SimpleNamespace

import torch


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_tokens: int = 16
    stop: list | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    logit_bias: dict | None = None


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, model: str, **kwargs) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        from modules.vision import is_vision_config, load_processor, vision_spec

        self.kwargs = {"model": model, **kwargs}
        vision = is_vision_config(AutoConfig.from_pretrained(model))
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        self.model = auto.from_pretrained(model, dtype=torch.float32).eval()
        # Like vLLM, a VLM engine has its own processor and expands the image placeholders of each prompt itself.
        self.processor = load_processor(model) if vision else None
        self.spec = vision_spec(self.model, self.processor) if vision else None
        self.calls: list[tuple] = []
        self.loaded_names: list[str] = []
        worker = SimpleNamespace(reload_weights=self._reload_weights)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))
        FakeLLM.instances.append(self)

    def _reload_weights(self, weights_iterator=None, **_):
        weights = dict(weights_iterator)
        self.loaded_names = sorted(weights)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected:
            raise KeyError(f"fake vLLM: unknown weights {unexpected}")

    def collective_rpc(self, method, args=(), kwargs=None):
        self.calls.append(("collective_rpc", method))
        return [getattr(self.llm_engine.model_executor.driver_worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        p = sampling_params
        self.calls.append(("generate", p.n, lora_request.lora_int_id if lora_request else None))
        eos = self.model.generation_config.eos_token_id
        outputs = []
        suppress = sorted(t for t, bias in (p.logit_bias or {}).items() if bias <= -100)
        for prompt in prompts:
            ids, extra = self._expand(prompt)
            greedy = p.temperature == 0.0
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=p.max_tokens,
                                      suppress_tokens=suppress or None, **extra,
                                      do_sample=not greedy, temperature=None if greedy else p.temperature,
                                      top_p=None if greedy or p.top_p >= 1.0 else p.top_p,
                                      top_k=None if greedy or not p.top_k else p.top_k,
                                      num_return_sequences=p.n, eos_token_id=eos,
                                      pad_token_id=eos)
            completions = []
            for index, row in enumerate(out[:, ids.shape[1]:].tolist()):
                if eos in row:
                    row = row[:row.index(eos) + 1]
                full = torch.cat([ids, torch.tensor([row], dtype=ids.dtype)], 1)
                vision = {} if self.spec is None else self._vision_kwargs(full, prompt)
                logits = self.model(full, **vision).logits[0, ids.shape[1] - 1:-1]
                if not greedy:
                    logits = logits / p.temperature
                    logits = _processed(logits.float(), p)
                logps = torch.log_softmax(logits.float(), -1)
                logprobs = [{t: SimpleNamespace(logprob=float(logps[j, t]), rank=1)} for j, t in enumerate(row)]
                finish = "stop" if row and row[-1] == eos else "length"
                completions.append(SimpleNamespace(index=index, token_ids=row, logprobs=logprobs,
                                                   finish_reason=finish))
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"],
                                           outputs=list(reversed(completions))))  # order by .index, not position
        return outputs


    def _expand(self, prompt):
        """(expanded prompt ids (1, P), vision keywords): a text prompt as it is; a multimodal one re-processed from
        its text and images, as vLLM's own input processor does (so pre-expanded ids would be expanded twice)."""
        ids = torch.tensor([prompt["prompt_token_ids"]])
        if "multi_modal_data" not in prompt:
            if self.spec is not None and (ids == self.spec.image_token_id).any():
                raise ValueError("fake vLLM: image placeholders in a prompt without multi_modal_data")
            return ids, {}
        text = self.processor.tokenizer.decode(prompt["prompt_token_ids"], skip_special_tokens=False)
        images = prompt["multi_modal_data"]["image"]
        placeholders = int((ids == self.spec.image_token_id).sum())
        if placeholders != len(images):  # vLLM: "Attempted to assign N multimodal tokens to M placeholders"
            raise ValueError(f"fake vLLM: {placeholders} image placeholders for {len(images)} images")
        out = self.processor(text=[text], images=images, return_tensors="pt")
        return out["input_ids"], self._vision_kwargs(out["input_ids"], prompt, out)

    def _vision_kwargs(self, full_ids, prompt, processed=None):
        from modules.vision import TOKEN_TYPE_KEYS, forward_kwargs

        if processed is None:
            text = self.processor.tokenizer.decode(prompt["prompt_token_ids"], skip_special_tokens=False)
            processed = self.processor(text=[text], images=prompt["multi_modal_data"]["image"], return_tensors="pt")
        vision = {k: v for k, v in processed.items() if k not in ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS)}
        return forward_kwargs(self.spec, full_ids, [vision])


def _processed(logits, p):
    """vLLM's order after temperature: top-k, then top-p over what top-k kept (masked to -inf)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    if p.top_k:
        logits = TopKLogitsWarper(p.top_k)(None, logits)
    if p.top_p < 1.0:
        logits = TopPLogitsWarper(p.top_p)(None, logits)
    return logits


def install(monkeypatch) -> type[FakeLLM]:
    """Make `import vllm` (and `vllm.lora.request`) return the fake for this test."""
    FakeLLM.instances = []
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = FakeLLM, SamplingParams, "fake"
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return FakeLLM
