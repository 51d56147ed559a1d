"""One real-vLLM scenario in its own process (one engine per process): `python vllm_worker.py SCENARIO MODEL OUT`.

Scenarios: full (full fine-tune, weights pushed after a change), merged / adapter (LoRA, both sync modes),
qlora (4-bit base, merged push of the dequantized weights). Each compares the vLLM engine with the HF engine
on the same policy: greedy completions, the RolloutBatch layout, and vLLM's sampled log-probs against the
trainer's, before and after the policy's weights change. Writes OUT/result.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.policy import LoraSettings, Policy  # noqa: E402
from modules.rollout.engine import SamplingSettings  # noqa: E402
from modules.rollout.hf import HFGenerateEngine  # noqa: E402
from modules.rollout.vllm import VLLMEngine, VLLMSettings  # noqa: E402

PROMPTS = ["What is 2+3?", "Hello there", "Count to five", "Name a colour"]


def compare(policy, engine, hf) -> dict:
    a = engine.generate(PROMPTS, {}, num_generations=1, greedy=True)
    b = hf.generate(PROMPTS, {}, num_generations=1, greedy=True)
    width = min(a.completion_ids.shape[1], b.completion_ids.shape[1])
    layout = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("prompt_ids", "prompt_mask", "group_ids"))
    s = engine.generate(PROMPTS, {}, num_generations=4)
    with torch.no_grad():
        logps, _ = policy.token_logps(s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_attention_mask)
    mask = s.completion_mask.bool()
    return {"greedy_equal": bool(torch.equal(a.completion_ids[:, :width], b.completion_ids[:, :width])
                                 and torch.equal(a.completion_mask, b.completion_mask)),
            "greedy_texts_equal": a.completions == b.completions, "layout_equal": layout,
            "max_logp_diff": float((logps - s.rollout_logps).abs()[mask].max()),
            "rows": len(s), "tokens": int(mask.sum())}


def variety_reward(prompts, completions, **kwargs) -> list[float]:
    """Distinct characters per character: varies between a random model's samples, so every step moves the weights."""
    return [len(set(c)) / max(1, len(c)) for c in completions]


def main(scenario: str, model: str, out: str) -> None:
    lora = None if scenario == "full" else LoraSettings(r=8, alpha=16)
    policy = Policy.from_pretrained(model, lora=lora, quantization="4bit" if scenario == "qlora" else None)
    sampling = SamplingSettings(max_new_tokens=12)
    settings = VLLMSettings(weight_sync="adapter" if scenario == "adapter" else "merged", enforce_eager=True,
                            gpu_memory_utilization=0.2)
    engine, hf = VLLMEngine(policy, sampling, settings), HFGenerateEngine(policy, sampling)
    started = time.perf_counter()
    result = {"before": compare(policy, engine, hf), "start_and_first_s": time.perf_counter() - started}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the policy moves: every LoRA B, or every weight of a full model
        for name, p in policy.model.named_parameters():
            if lora is None or "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * (0.02 if lora is None else 0.3))
    engine.sync_weights()
    result["after"] = compare(policy, engine, hf)
    result["device"] = str(policy.device)
    Path(out, "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
