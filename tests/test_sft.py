"""SFT: response-only labels, the loss against a direct computation, padding, the data module, a module that
overfits a few examples, and merged-model saving."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamodules.errors import DataConfigError
from datamodules.sft import SFTDataModule
from modules.policy import LoraSettings, Policy
from modules.rollout.engine import render_prompt
from modules.rollout.hf import HFGenerateEngine
from modules.sft import IGNORE_INDEX, collate_sft, sft_example, sft_loss
from recipes.sft import SFT

CONVERSATION = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "It is 5."},
                {"role": "user", "content": "And 4 + 4?"}]
RESPONSE = "<think> 4 + 4 = 8 </think> <answer> 8 </answer>"


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_two_turn_conversation_labels_only_the_final_response_and_eos(tok):
    ex = sft_example(tok, CONVERSATION, RESPONSE, system_prompt="Be brief.")
    rendered = render_prompt(tok, CONVERSATION, system_prompt="Be brief.")
    response_ids = tok(RESPONSE, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    p = ex["prompt_length"]
    assert ex["input_ids"][p:] == response_ids
    assert ex["labels"] == [IGNORE_INDEX] * p + response_ids
    assert tok.decode(ex["input_ids"][:p]) == rendered  # the prompt holds both earlier turns and the system prompt
    assert "It is 5." in rendered and "Be brief." in rendered
    assert not ex["truncated"] and ex["attention_mask"] == [1] * len(ex["input_ids"])
    # The first assistant turn ("It is 5.") lies in the prompt part, so none of its tokens carries a label.


def test_prompt_tokens_are_the_ones_rl_rollouts_condition_on(tok):
    engine = HFGenerateEngine(SimpleNamespace(tokenizer=tok))
    for prompt in ("What is 7 + 8?", CONVERSATION):
        ids, _ = engine.encode_prompts([prompt], ["sys"])
        ex = sft_example(tok, prompt, "8", system_prompt="sys")
        assert ex["input_ids"][: ex["prompt_length"]] == ids[0].tolist()


def test_max_length_cuts_the_response_and_reports_it(tok):
    full = sft_example(tok, "What is 7 + 8?", RESPONSE)
    p = full["prompt_length"]
    cut = sft_example(tok, "What is 7 + 8?", RESPONSE, max_length=p + 3)
    assert cut["truncated"] and len(cut["input_ids"]) == p + 3
    assert cut["input_ids"] == full["input_ids"][: p + 3] and cut["labels"][p:] == full["labels"][p:p + 3]
    assert not sft_example(tok, "What is 7 + 8?", RESPONSE, max_length=len(full["input_ids"]))["truncated"]
    # A response that already ends with EOS text does not get a second one.
    assert sft_example(tok, "Q", "8" + tok.eos_token)["labels"][-2:] != [tok.eos_token_id] * 2


def test_sft_loss_equals_a_direct_token_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1], [IGNORE_INDEX, 2, 6, IGNORE_INDEX, IGNORE_INDEX]])
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-logp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 5) if labels[b, t] != IGNORE_INDEX]
    loss, n = sft_loss(logits, labels)
    assert n == len(terms) == 5
    assert torch.allclose(loss, torch.stack(terms).mean())
    total, _ = sft_loss(logits, labels, reduction="sum")
    assert torch.allclose(total, torch.stack(terms).sum())
    zero, none = sft_loss(logits, torch.full_like(labels, IGNORE_INDEX))
    assert none == 0 and zero.item() == 0.0


def test_collate_right_pads_ids_mask_and_labels(tok):
    a, b = sft_example(tok, "What is 7 + 8?", RESPONSE), sft_example(tok, "Hi", "8")
    batch = collate_sft([a, b], pad_token_id=tok.pad_token_id)
    width = len(a["input_ids"])
    assert batch["input_ids"].shape == (2, width) and len(b["input_ids"]) < width
    n = len(b["input_ids"])
    assert batch["input_ids"][1, :n].tolist() == b["input_ids"]
    assert (batch["input_ids"][1, n:] == tok.pad_token_id).all()
    assert (batch["attention_mask"][1, n:] == 0).all() and (batch["labels"][1, n:] == IGNORE_INDEX).all()
    assert batch["truncated"].tolist() == [False, False]


def test_datamodule_checks_responses_and_batches_held_out_rows():
    rows = [{"q": f"What is {i} + 1?", "target": str(i + 1)} for i in range(10)]
    dm = SFTDataModule(rows=rows, template="{q}", response_column="target", val_size=3, batch_size=2, val_batch_size=2)
    dm.setup("fit")
    assert all(r["response"] == r["target"] for r in dm.train_rows + dm.val_rows)
    assert [len(b) for b in dm.val_dataloader()] == [2, 1]
    with pytest.raises(DataConfigError, match="response column 'response'"):
        SFTDataModule(rows=rows, template="{q}").setup("fit")
    with pytest.raises(DataConfigError, match="only 1 training row"):
        dm.replace_train_rows(dm.train_rows[:1])
    dm.replace_train_rows(dm.train_rows[:4])
    assert len(dm.train_dataloader().rows) == 4


def test_sft_module_overfits_three_examples(tiny_model_path):
    torch.manual_seed(0)
    module = SFT(tiny_model_path, optimizer={"learning_rate": 1e-2}, system_prompt="Answer briefly.")
    rows = [{"prompt": f"What is {a} + {b}?", "response": f"<answer>{a + b}</answer>"} for a, b in ((2, 3), (4, 4), (7, 1))]
    opt = torch.optim.AdamW(module.policy.trainable_parameters(), lr=1e-2)
    batch = module.encode(rows)
    assert batch["labels"].ne(IGNORE_INDEX).sum() > 0
    losses = []
    for _ in range(25):
        loss, n, _ = module.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    # Evaluation generation sees the module's system prompt, as training did.
    assert module.system_prompt_for({"prompt": "x"}) == "Answer briefly."
    assert module.system_prompt_for({"prompt": "x", "system_prompt": "row"}) == "row"


def test_save_merged_writes_a_plain_model_equal_to_base_plus_adapter(tiny_model_path, tmp_path):
    policy = Policy.from_pretrained(tiny_model_path, lora=LoraSettings(r=4, alpha=8), reference="none")
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-zero adapter, so merging changes the weights
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    policy.model.eval()
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path)(input_ids=ids).logits
    out = policy.save_merged(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, base, atol=1e-3)
    assert AutoTokenizer.from_pretrained(out).eos_token == policy.tokenizer.eos_token
    assert policy.is_peft  # the training model is untouched
    assert math.isfinite(float(got.sum()))
