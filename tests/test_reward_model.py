"""The ``reward_model`` reward: a tiny random sequence classifier built here, scored against direct forwards."""

from __future__ import annotations

import pytest
import torch

from modules.rewards import RewardError, RewardSet, RewardSpec, clear_reward_model_cache, get_reward

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Say hi.", "Count to three.", "Why is the sky blue?"]
COMPLETIONS = ["5", "Blue, like the sky on a clear day.", "hi", "one two three", "Rayleigh scattering."]


def _build_classifier(tokenizer_dir, out, num_labels: int, chat_template: bool):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=256)
    model = Qwen2ForSequenceClassification(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_path(tiny_model_path, tmp_path_factory):
    """num_labels=1, tokenizer with a chat template."""
    return _build_classifier(tiny_model_path, tmp_path_factory.mktemp("rm") / "rm", 1, chat_template=True)


@pytest.fixture(scope="module")
def rm2_path(tiny_model_path, tmp_path_factory):
    """num_labels=2, tokenizer without a chat template (plain concatenation)."""
    return _build_classifier(tiny_model_path, tmp_path_factory.mktemp("rm2") / "rm2", 2, chat_template=False)


def _direct(path, texts, label=0, special=False):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for text in texts:  # one unpadded text at a time
        ids = tok(text, return_tensors="pt", add_special_tokens=special)["input_ids"]
        with torch.no_grad():
            out.append(model(input_ids=ids).logits[0, label].item())
    return out


def test_scores_equal_a_direct_forward_with_the_chat_template(rm_path):
    from transformers import AutoTokenizer

    clear_reward_model_cache()
    fn = get_reward("reward_model")
    scores = fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm_path), batch_size=2)
    tok = AutoTokenizer.from_pretrained(rm_path)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                     tokenize=False) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert all("<|im_start|>assistant" in t and c in t for t, c in zip(texts, COMPLETIONS))
    assert scores == pytest.approx(_direct(rm_path, texts), abs=1e-4)
    assert len(set(round(s, 5) for s in scores)) > 1  # a random model still tells the pairs apart

    # conversational prompts and completions (TRL's form) read the same
    conv = fn([[{"role": "user", "content": p}] for p in PROMPTS], [[{"role": "assistant", "content": c}]
              for c in COMPLETIONS], model_name_or_path=str(rm_path))
    assert conv == pytest.approx(scores, abs=1e-4)


def test_micro_batching_does_not_change_scores(rm_path):
    fn = get_reward("reward_model")
    ref = fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm_path), batch_size=1)
    for bs in (2, 3, 8):
        assert fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm_path), batch_size=bs) == pytest.approx(ref, abs=1e-4)


def test_plain_concatenation_label_and_normalisation(rm2_path):
    fn = get_reward("reward_model")
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    for label in (0, 1):
        got = fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm2_path), label=label, batch_size=3)
        assert got == pytest.approx(_direct(rm2_path, texts, label, special=True), abs=1e-4)
    raw = torch.tensor(fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm2_path), label=1), dtype=torch.float64)
    sig = fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm2_path), label=1, normalize="sigmoid")
    assert sig == pytest.approx(torch.sigmoid(raw).tolist(), abs=1e-6)
    z = torch.tensor(fn(PROMPTS, COMPLETIONS, model_name_or_path=str(rm2_path), label=1, normalize="batch"))
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6) and z.std().item() == pytest.approx(1.0, abs=1e-5)


def test_loaded_once_per_path_device_dtype(rm_path):
    from modules.rewards import load_reward_model

    clear_reward_model_cache()
    a = load_reward_model(str(rm_path))
    assert load_reward_model(str(rm_path), "cpu", "float32")[0] is a[0]
    assert load_reward_model(str(rm_path), "cpu", "bfloat16")[0] is not a[0]
    clear_reward_model_cache()


def test_through_reward_set_with_options(rm_path):
    rs = RewardSet.from_specs([RewardSpec("reward_model", weight=2.0,
                                          kwargs={"model_name_or_path": str(rm_path), "batch_size": 2})])
    per_func, total, seconds = rs.score(PROMPTS, COMPLETIONS)
    direct = get_reward("reward_model")(PROMPTS, COMPLETIONS, model_name_or_path=str(rm_path))
    assert per_func[:, 0].tolist() == pytest.approx(direct, abs=1e-5)
    assert total.tolist() == pytest.approx([2 * d for d in direct], abs=1e-5)
    assert set(seconds) == {"reward_model"}


@pytest.mark.parametrize("kwargs, field", [
    ({"model_name_or_path": "/no/such/reward-model"}, "model_name_or_path="),
    ({}, "model_name_or_path is not set"),
    ({"normalize": "zscore"}, "normalize='zscore'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"label": 1}, "label=1"),
    ({"dtype": "float8"}, "dtype='float8'"),
    ({"device": "gpu0"}, "device='gpu0'"),
    ({"max_length": 0}, "max_length=0"),
])
def test_bad_path_or_option_is_one_line_naming_it(rm_path, tmp_path, kwargs, field):
    kwargs = {"model_name_or_path": str(rm_path), **kwargs} if kwargs else {}
    with pytest.raises(ValueError) as info:
        get_reward("reward_model")(PROMPTS[:2], COMPLETIONS[:2], **kwargs)
    msg = str(info.value)
    assert field in msg and "\n" not in msg and msg.startswith("reward_model:")
    # through a RewardSet: one line naming the reward and the option
    rs = RewardSet.from_specs([RewardSpec("reward_model", kwargs=kwargs)])
    with pytest.raises(RewardError, match="reward 'reward_model' raised ValueError") as info:
        rs.score(PROMPTS[:2], COMPLETIONS[:2])
    assert field in str(info.value) and "\n" not in str(info.value)


def test_a_folder_that_is_not_a_classifier_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model_name_or_path=") as info:
        get_reward("reward_model")(PROMPTS[:1], COMPLETIONS[:1], model_name_or_path=str(tmp_path))
    assert "\n" not in str(info.value)
