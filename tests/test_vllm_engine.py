"""The vLLM engine's logic on CPU without vLLM: its RolloutBatch layout is the HF engine's, weight pushes reach the
engine (checked through a fake `vllm` that holds its own model copy), sleep/wake order, adapter versions, config
errors, and the importance correction in a 2-step recipe run. The real engine: tests/test_vllm_real.py."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

import fake_vllm
from modules.policy import LoraSettings, Policy
from modules.rollout.engine import SamplingSettings
from modules.rollout.hf import HFGenerateEngine
from modules.rollout.vllm import VLLMEngine, VLLMSettings, completions_from_outputs, rollout_from_token_ids

PROMPTS = ["What is 2+3?", "Hi", "Count to five please"]


def _perturb(model, seed=0, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def test_completions_from_outputs_orders_by_index_and_reads_sampled_logprobs():
    lp = lambda t, v: {t: SimpleNamespace(logprob=v, rank=1)}  # noqa: E731
    outputs = [SimpleNamespace(outputs=[
        SimpleNamespace(index=1, token_ids=[7], logprobs=[lp(7, -0.5)], finish_reason="length"),
        SimpleNamespace(index=0, token_ids=[5, 2], logprobs=[lp(5, -1.0), {9: SimpleNamespace(logprob=-3.0)}],
                        finish_reason="stop")])]
    ids, logps, finished = completions_from_outputs(outputs, 2)
    assert ids == [[5, 2], [7]] and finished == [True, False]
    assert logps[0][0] == -1.0 and logps[1] == [-0.5]
    assert logps[0][1] != logps[0][1]  # the sampled token 2 was not returned: NaN
    with pytest.raises(RuntimeError, match="returned 2 completions for a prompt, expected 3"):
        completions_from_outputs(outputs, 3)


def test_rollout_layout_equals_the_hf_engines(tiny_model_path):
    """Same prompts and completions -> the same RolloutBatch tensors as HFGenerateEngine builds."""
    policy = Policy.from_pretrained(str(tiny_model_path))
    hf = HFGenerateEngine(policy, SamplingSettings(max_new_tokens=6))
    ref = hf.generate(PROMPTS, {"answer": ["5", "x", "y"]}, num_generations=2)
    prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(ref.prompt_ids[::2], ref.prompt_mask[::2])]
    # the vLLM engine tokenizes each prompt alone: the ids must be the HF engine's, without the padding
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.policy, engine.sampling = policy, hf.sampling
    assert engine.encode_prompts(PROMPTS, [None] * 3) == prompt_ids
    completions = [row[mask.bool()].tolist() for row, mask in zip(ref.completion_ids, ref.completion_mask)]
    batch = rollout_from_token_ids(prompt_ids, completions, None, (~ref.truncated).tolist(), prompts=PROMPTS,
                                   columns={"answer": ["5", "x", "y"]}, num_generations=2,
                                   pad_token_id=policy.tokenizer.pad_token_id, tokenizer=policy.tokenizer)
    width = batch.completion_ids.shape[1]
    for name in ("prompt_ids", "prompt_mask", "group_ids", "truncated"):
        assert torch.equal(getattr(batch, name), getattr(ref, name)), name
    for name in ("completion_ids", "completion_mask", "completion_attention_mask"):
        assert torch.equal(getattr(batch, name), getattr(ref, name)[:, :width]), name
    assert batch.completions == ref.completions and batch.columns == ref.columns and batch.prompts == ref.prompts
    assert batch.rollout_logps is None


def test_merged_push_reaches_the_engine_and_its_logps_match_the_trainer(tiny_model_path, monkeypatch):
    fake = fake_vllm.install(monkeypatch)
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    engine = VLLMEngine(policy, SamplingSettings(max_new_tokens=5), VLLMSettings())
    _perturb(policy.model)
    engine.sync_weights()
    batch = engine.generate(PROMPTS, {}, num_generations=2)
    (llm,) = fake.instances
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["model"] == policy.source
    assert not any("lora" in n or "base_layer" in n for n in llm.loaded_names)
    assert llm.calls[:3] == [("collective_rpc", "reload_weights"), ("reset_prefix_cache",), ("generate", 2, None)]
    logps, _ = policy.token_logps(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                  batch.completion_attention_mask)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(batch.rollout_logps[mask], logps.detach()[mask], atol=1e-4, rtol=1e-4)
    # no new push until the policy changes again
    again = engine.generate(PROMPTS, {}, num_generations=1, greedy=True)
    assert [c[0] for c in llm.calls].count("collective_rpc") == 1
    assert again.stats["weight_sync_s"] == 0.0


def test_sleep_mode_wakes_weights_before_the_push_and_sleeps_after_generating(tiny_model_path, monkeypatch):
    fake = fake_vllm.install(monkeypatch)
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # sleep mode is refused without CUDA
    engine = VLLMEngine(policy, SamplingSettings(max_new_tokens=3), VLLMSettings(enable_sleep_mode=True))
    engine.generate(PROMPTS[:1], {}, num_generations=2)
    engine.generate(PROMPTS[:1], {}, num_generations=2)  # level 2 discarded the weights: they are pushed again
    (llm,) = fake.instances
    names = [c[0] if c[0] != "wake_up" else f"wake_up{c[1]}" for c in llm.calls]
    assert names == ["collective_rpc", "reset_prefix_cache", "generate", "sleep",
                     "wake_up('weights',)", "collective_rpc", "reset_prefix_cache", "wake_up('kv_cache',)",
                     "generate", "sleep"]
    assert ("sleep", 2) in llm.calls


def test_adapter_sync_sends_a_new_lora_request_per_version(tiny_model_path, monkeypatch, tmp_path):
    fake = fake_vllm.install(monkeypatch)
    policy = Policy.from_pretrained(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8))
    engine = VLLMEngine(policy, SamplingSettings(max_new_tokens=3), VLLMSettings(weight_sync="adapter"))
    engine.generate(PROMPTS[:1], {}, num_generations=1)
    first = engine._lora_request
    engine.sync_weights()
    engine.generate(PROMPTS[:1], {}, num_generations=1)
    (llm,) = fake.instances
    assert llm.kwargs["enable_lora"] and llm.kwargs["max_lora_rank"] == 8  # rank 4 rounded up to vLLM's 8
    assert [c for c in llm.calls if c[0] == "generate"] == [("generate", 1, 1), ("generate", 1, 2)]
    assert not any(c[0] == "collective_rpc" for c in llm.calls)  # the base weights are never pushed
    import os

    assert not os.path.exists(first.lora_path) and os.path.exists(engine._lora_request.lora_path)
    assert os.path.exists(os.path.join(engine._lora_request.lora_path, "adapter_config.json"))
    engine.close()
    assert not os.path.exists(engine._lora_request.lora_path)


@pytest.mark.parametrize("overrides, message", [
    (["--model.rollout_engine", "sglang"], "model.rollout_engine='sglang'"),
    (["--model.rollout_engine", "vllm", "--model.lora", "null", "--model.vllm.weight_sync", "adapter"],
     "weight_sync='adapter' needs a LoRA policy"),
    (["--model.rollout_engine", "vllm", "--model.vllm.weight_sync", "adapter", "--model.vllm.sleep_level", "2"],
     "sleep_level=2 discards"),
    (["--model.rollout_correction", '{"mode": "token_truncate", "clip_max": null}'], "needs clip_max"),
    (["--model.rollout_correction.mode", "tis"], "rollout_correction.mode='tis'"),
    (["--model.rollout_engine", "vllm"], "pip install 'r1-recipes\\[vllm\\]'"),
    (["--model.rollout_engine", "vllm", "--model.vllm.kv_cache_memory_gib", "0"], "kv_cache_memory_gib=0.0; give a size"),
    pytest.param(["--model.rollout_engine", "vllm", "--model.vllm.enable_sleep_mode", "true"],
                 "sleep mode is CUDA-only", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CPU only")),
])
def test_bad_engine_settings_are_one_line_errors(tiny_model_path, monkeypatch, capsys, overrides, message):
    from conftest import FAST
    from recipes.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vLLM: `import vllm` fails
    if "weight_sync" in " ".join(overrides):
        fake_vllm.install(monkeypatch)
    code = main(["fit", "--config", "recipes/configs/grpo.yaml", *FAST, "--model.model_name_or_path",
                 str(tiny_model_path), *overrides])
    assert code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_recipe_trains_through_the_vllm_engine_with_the_importance_correction(fit_metrics, monkeypatch):
    fake = fake_vllm.install(monkeypatch)
    _, train = fit_metrics("recipes/configs/grpo.yaml", "--model.rollout_engine", "vllm",
                           "--model.rollout_correction.mode", "sequence_mask",
                           "--trainer.callbacks", "null")
    (llm,) = fake.instances
    # pushed before step 0's generation and again after step 0's optimiser steps
    assert [c[0] for c in llm.calls].count("collective_rpc") == 2
    assert (train["train/rollout_correction/logp_diff/max"] < 1e-3).all()
    assert (train["train/rollout_correction/is_weight/mean"] - 1.0).abs().max() < 1e-3
    assert "train/time/weight_sync_s" in train


def test_the_vllm_fragment_composes_with_a_recipe_config(capsys):
    import yaml

    from recipes.cli import main

    with pytest.raises(SystemExit) as exit_:  # --print_config prints and exits
        main(["fit", "--config", "recipes/configs/grpo.yaml", "--config", "recipes/configs/engines/vllm.yaml",
              "--print_config"])
    assert exit_.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"] == "recipes.grpo.GRPO"  # the recipe stays; only the engine settings change
    args = model["init_args"]
    assert args["rollout_engine"] == "vllm" and args["vllm"]["weight_sync"] == "merged"
    assert args["rollout_correction"] == {"mode": "token_truncate", "clip_max": 2.0, "clip_min": None,
                                          "offpolicy_threshold": None}
    assert args["objective"]["beta"] == 0.04  # grpo.yaml's own settings are kept


def test_the_cpu_fragment_gives_vllm_a_fixed_kv_cache_and_eager_mode(tiny_model_path, monkeypatch):
    """engines/vllm-cpu.yaml: on vLLM's CPU build `gpu_memory_utilization` is a share of host RAM that the colocated
    trainer already holds, so the fragment sizes the KV cache in GiB (vLLM's kv_cache_memory_bytes) and skips the
    torch.compile warm-up; the engine is built with exactly those arguments."""
    from conftest import FAST
    from recipes.cli import main

    fake = fake_vllm.install(monkeypatch)
    code = main(["fit", "--config", "recipes/configs/grpo.yaml", "--config", "recipes/configs/engines/vllm-cpu.yaml",
                 *FAST, "--model.model_name_or_path", str(tiny_model_path), "--trainer.max_steps", "1",
                 "--trainer.callbacks", "null"])
    assert code in (0, None)
    (llm,) = fake.instances
    assert llm.kwargs["kv_cache_memory_bytes"] == 2**30 and llm.kwargs["enforce_eager"] is True


def test_a_single_pass_takes_pi_old_from_the_training_forward(fit_metrics, monkeypatch):
    """num_iterations = steps_per_generation = 1: the importance weights use the loss forward's own log-probs, so no
    extra no-grad forward of the policy runs (the step's weights are those vLLM sampled with)."""
    fake_vllm.install(monkeypatch)
    extra_forwards = []
    original = Policy.token_logps

    def counting(self, *args, model=None, **kwargs):
        if model is None and not torch.is_grad_enabled():
            extra_forwards.append(1)
        return original(self, *args, model=model, **kwargs)

    monkeypatch.setattr(Policy, "token_logps", counting)
    _, train = fit_metrics("recipes/configs/grpo.yaml", "--model.rollout_engine", "vllm",
                           "--model.batching.skip_zero_signal_steps", "false", "--trainer.callbacks", "null")
    assert not extra_forwards
    assert (train["train/rollout_correction/logp_diff/max"] < 1e-3).all()
    assert (train["train/rollout_correction/is_weight/max"] <= 2.0).all()


def test_a_recipe_with_its_own_engine_refuses_vllm_by_name(tiny_model_path, monkeypatch, capsys):
    from conftest import FAST
    from recipes.cli import main

    fake_vllm.install(monkeypatch)
    code = main(["fit", "--config", "recipes/configs/stepsearch.yaml", *FAST, "--model.model_name_or_path",
                 str(tiny_model_path), "--model.rollout_engine", "vllm"])
    assert code == 2
    assert "StepSearch builds its own rollout engine" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--model.sampling.top_p", "0.7"],  # single pass: pi_old from the loss forward
    ["--model.sampling.top_p", "0.9", "--model.sampling.top_k", "5", "--model.batching.num_iterations", "2",
     "--trainer.max_steps", "4"],
])
def test_top_p_top_k_sampling_is_corrected_like_with_like(fit_metrics, monkeypatch, extra):
    """vLLM's processed log-probs are renormalised over the top-k / top-p set: the trainer's pi_old for the weights
    replays that truncation, so identical weights give no mismatch (full-vocabulary pi_old would not)."""
    fake_vllm.install(monkeypatch)
    _, train = fit_metrics("recipes/configs/grpo.yaml", "--model.rollout_engine", "vllm", *extra,
                           "--model.batching.skip_zero_signal_steps", "false", "--trainer.callbacks", "null")
    assert (train["train/rollout_correction/logp_diff/max"] < 1e-3).all()
    assert (train["train/rollout_correction/is_weight/mean"] - 1.0).abs().max() < 1e-3


def test_without_the_replay_top_p_would_bias_the_weights(fit_metrics, monkeypatch):
    """The check above is sensitive: with the trainer's full-vocabulary pi_old the same run shows the mismatch."""
    from recipes.base import RLRecipe

    fake_vllm.install(monkeypatch)
    monkeypatch.setattr(RLRecipe, "sampler_truncation", lambda self: None)
    _, train = fit_metrics("recipes/configs/grpo.yaml", "--model.rollout_engine", "vllm", "--model.sampling.top_p",
                           "0.7", "--model.batching.skip_zero_signal_steps", "false", "--trainer.callbacks", "null")
    assert (train["train/rollout_correction/logp_diff/max"] > 1e-2).all()


@pytest.mark.parametrize("correction, extra", [
    ('{"mode": "offpolicy_mask", "offpolicy_threshold": 0.01}',  # multi-pass: the advantages reach `begin`
     ["--model.batching.num_iterations", "2", "--trainer.max_steps", "4"]),
    ('{"mode": "geometric_mask", "clip_min": 0.99, "clip_max": 1.01}', []),  # single pass: through `observe`
])
def test_offpolicy_and_geometric_masks_train_through_the_vllm_engine(fit_metrics, monkeypatch, correction, extra):
    fake_vllm.install(monkeypatch)
    _, train = fit_metrics("recipes/configs/grpo.yaml", "--model.rollout_engine", "vllm",
                           "--model.rollout_correction", correction, *extra,
                           "--model.batching.skip_zero_signal_steps", "false", "--trainer.callbacks", "null")
    assert (train["train/rollout_correction/is_weight/mean"] == 1.0).all()  # identical weights: nothing drifted
    assert (train["train/rollout_correction/is_corrected_frac"] == 0.0).all()
