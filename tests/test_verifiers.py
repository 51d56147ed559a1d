"""The shared `Verifier` interface (TinyV arXiv 2505.14625 / General-Reasoner arXiv 2505.14652): prompts and parsers
of the two presets, the rule verifiers, and `LLMVerifier` on the tiny model (batched = one by one, caching, chat
template, retries)."""

from __future__ import annotations

import doctest
import math
import time

import pytest
import torch

import modules.verifiers.base
import modules.verifiers.llm
import modules.verifiers.rule
from modules.models import ModelNotFoundError
from modules.verifiers import (
    GENERAL_VERIFIER_PROMPT,
    TINYV_PROMPT,
    CallableVerifier,
    LLMVerifier,
    MathRuleVerifier,
    RuleStubVerifier,
    VerifierError,
    VerifierSettings,
    build_verifier,
    clear_verifier_cache,
    equivalent,
    fill_prompt,
    load_verifier_policy,
    parse_final_decision,
    parse_true_false,
)


@pytest.mark.parametrize("module", [modules.verifiers.base, modules.verifiers.llm, modules.verifiers.rule])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---- prompts and parsers -------------------------------------------------------------------------

def test_prompts_are_the_papers_texts():
    tinyv = fill_prompt(TINYV_PROMPT, "What is 1/2 + 1/4?", "3/4", "0.75")
    assert tinyv.startswith("You are an AI tasked with identifying false negatives in answer verification. ")
    assert ("<question>What is 1/2 + 1/4?</question>\n\n<ground_truth_answer>3/4</ground_truth_answer>\n\n"
            "<model_answer>0.75</model_answer>\n\n") in tinyv
    assert tinyv.endswith("Return \"True\" if the model's answer is correct, otherwise return \"False\".")
    gv = fill_prompt(GENERAL_VERIFIER_PROMPT, "Q?", "3 cm", "3")
    assert gv.startswith("User: ### Question: Q?\n\n### Ground Truth Answer: 3 cm\n\n### Student Answer: 3\n\n"
                         "For the above question, please verify if the student's answer is equivalent")
    assert gv.endswith('output "Final Decision: No". Assistant:')
    assert "Do not solve the question by yourself;" in gv


@pytest.mark.parametrize("text, expected", [("True", True), (" true.", True), ("TRUE", True), ("False", False),
                                            ("false, not true", True), ("maybe", False), ("", False)])
def test_tinyv_parser_is_lowercase_contains_true(text, expected):
    assert parse_true_false(text) is expected


@pytest.mark.parametrize("text, expected", [("Final Decision: Yes", True), ("... so\nFinal Decision: Yes.", True),
                                            ("Final Decision: No", False), ("final decision: yes", False),
                                            ("Yes", False)])
def test_general_verifier_parser_needs_the_exact_phrase(text, expected):
    assert parse_final_decision(text) is expected


# ---- rule verifiers ------------------------------------------------------------------------------

@pytest.mark.parametrize("gold, answer, expected", [
    ("1/2", "0.5", True), ("0.5", r"\frac{1}{2}", True), ("3 cm", "3", True),
    ("12 cm^2", "12 square centimeters", True),
    ("$4.75", "4.75 dollars", True), ("1,234", "1234", True), ("25%", "0.25", True), ("25%", "25", True),
    ("2, 3, 5", "[2, 3, 5]", True), ("(4, -2)", "x = 4, y = -2", True), ("Thursday", "thursday", True),
    (r"\text{Paris}", "paris.", True), ("30°", "30 degrees", True), ("x = 3", "3", True),
    ("7", "seven", False), ("2, 3", "3, 2", False), ("1/3", "0.333", False), ("5", "6", False), ("5", "", False),
])
def test_rule_stub_equivalence(gold, answer, expected):
    assert equivalent(gold, answer) is expected


def test_rule_stub_writes_the_preset_decision_text_and_parses_it():
    gv = RuleStubVerifier("general_verifier").verify(["q", "q"], ["3 cm", "3 cm"], ["3", "4"])
    assert [(r.correct, r.text) for r in gv] == [(True, "Final Decision: Yes"), (False, "Final Decision: No")]
    tv = RuleStubVerifier("tinyv").verify(["q", "q"], ["3 cm", "3 cm"], ["3", "4"])
    assert [(r.correct, r.text) for r in tv] == [(True, "True"), (False, "False")]
    with pytest.raises(ValueError, match="preset"):
        RuleStubVerifier("nope")


def test_math_rule_verifier_has_false_negatives_the_stub_recovers():
    golds, answers = ["12 cm^2", "60 km/h", "1/2"], ["12", "60", "0.5"]
    rule = [r.correct for r in MathRuleVerifier().verify(["q"] * 3, golds, answers)]
    assert rule == [False, False, True]
    assert all(r.correct for r in RuleStubVerifier().verify(["q"] * 3, golds, answers))


def test_base_interface_checks_lengths_and_counts():
    v = CallableVerifier(lambda q, g, a: a == g)
    assert v.verify([], [], []) == [] and v.stats.calls == 0
    with pytest.raises(VerifierError, match="equally long"):
        v.verify(["q"], ["1", "2"], ["1"])
    v.verify(["q"] * 3, ["1"] * 3, ["1", "2", "1"])
    assert (v.stats.calls, v.stats.items, v.stats.positives) == (1, 3, 2) and v.stats.seconds >= 0
    with pytest.raises(VerifierError, match="parse"):
        CallableVerifier(lambda q, g, a: "True").verify(["q"], ["1"], ["1"])


# ---- LLMVerifier on the tiny model ---------------------------------------------------------------

ITEMS = (["What is 2 + 2?", "Simplify 6/8.", "A rectangle is 3 cm by 4 cm; its area?", "Which day follows Monday?",
          "List the primes below 8.", "Write 42 in words."],
         ["4", "3/4", "12 cm^2", "Tuesday", "2, 3, 5, 7", "forty-two"],
         ["four", "0.75", "12", "tuesday", "2,3,5,7", "forty two"])


def test_llm_verifier_batched_equals_one_by_one(tiny_model_path, capsys):
    # Decisions of a random model under the tinyv parser are all False; an output-length parser gives mixed
    # decisions, so equal decisions here mean equal generated texts.
    parse = lambda text: len(text) % 2 == 0  # noqa: E731
    batched = LLMVerifier(str(tiny_model_path), "tinyv", parse=parse, max_new_tokens=8, batch_size=4)
    single = LLMVerifier(str(tiny_model_path), "tinyv", parse=parse, max_new_tokens=8, batch_size=1)
    batched.verify(*[x[:1] for x in ITEMS])  # load + warm up
    started = time.perf_counter()
    a = batched.verify(*ITEMS)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    b = single.verify(*ITEMS)
    t_single = time.perf_counter() - started
    assert [r.correct for r in a] == [r.correct for r in b]
    assert [r.text for r in a] == [r.text for r in b]
    assert batched.stats.generate_calls == 1 + math.ceil(6 / 4) and single.stats.generate_calls == 6
    assert batched.policy is single.policy  # one cached model per (path, dtype)
    with capsys.disabled():
        print(f"\n[verifier batching, tiny model, 6 items] batched {t_batched:.3f} s, one by one {t_single:.3f} s "
              f"({t_single / max(t_batched, 1e-9):.1f}x)")


def test_llm_verifier_loads_once_and_lazily(tiny_model_path, monkeypatch):
    from modules.policy import Policy

    clear_verifier_cache()
    loads = []
    real = Policy.from_pretrained

    def counting(path, **kwargs):
        loads.append((path, kwargs))
        return real(path, **kwargs)

    monkeypatch.setattr(Policy, "from_pretrained", staticmethod(counting))
    v = LLMVerifier(str(tiny_model_path), "general_verifier", max_new_tokens=2)
    assert loads == []  # nothing loaded at construction
    v.verify(*[x[:2] for x in ITEMS])
    LLMVerifier(str(tiny_model_path), "tinyv", max_new_tokens=2).verify(*[x[:2] for x in ITEMS])
    assert len(loads) == 1 and loads[0][1]["reference"] == "none"  # the policy-loading code, no reference model
    model = load_verifier_policy(str(tiny_model_path)).model
    assert model.training is False and not any(p.requires_grad for p in model.parameters())


def _capture_generate(monkeypatch, policy, fail_times: int = 0):
    seen: list[dict] = []
    real = policy.model.generate

    def fake(*args, **kwargs):
        seen.append(kwargs)
        if len(seen) <= fail_times:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(policy.model, "generate", fake)
    return seen


def test_presets_render_chat_template_or_raw_text_greedy(tiny_model_path, monkeypatch):
    policy = load_verifier_policy(str(tiny_model_path))
    seen = _capture_generate(monkeypatch, policy)
    LLMVerifier(str(tiny_model_path), "tinyv").verify(["q"], ["1"], ["1"])
    LLMVerifier(str(tiny_model_path), "general_verifier", max_new_tokens=3).verify(["q"], ["1"], ["1"])
    tinyv_text = policy.tokenizer.decode(seen[0]["input_ids"][0], skip_special_tokens=False)
    gv_text = policy.tokenizer.decode(seen[1]["input_ids"][0], skip_special_tokens=False)
    assert tinyv_text.startswith("<|im_start|>user\nYou are an AI tasked")  # chat-templated
    assert gv_text.startswith("User: ### Question: q") and "<|im_start|>" not in gv_text  # raw
    assert seen[0]["max_new_tokens"] == 8 and seen[1]["max_new_tokens"] == 3
    assert all(kw["do_sample"] is False for kw in seen)
    assert LLMVerifier(str(tiny_model_path), "general_verifier").max_new_tokens == 2048


def test_generate_errors_are_retried_at_higher_temperature(tiny_model_path, monkeypatch):
    policy = load_verifier_policy(str(tiny_model_path))
    seen = _capture_generate(monkeypatch, policy, fail_times=2)
    v = LLMVerifier(str(tiny_model_path), "tinyv", max_new_tokens=2)
    assert len(v.verify(["q"], ["1"], ["1"])) == 1
    assert [kw["do_sample"] for kw in seen] == [False, True, True]
    assert [kw["temperature"] for kw in seen[1:]] == pytest.approx([0.3, 0.6])
    assert (v.stats.retries, v.stats.generate_calls) == (2, 3)
    seen.clear()
    _capture_generate(monkeypatch, policy, fail_times=99)
    with pytest.raises(VerifierError, match="failed 4 times.*out of memory"):
        LLMVerifier(str(tiny_model_path), "tinyv", max_new_tokens=2, retries=3).verify(["q"], ["1"], ["1"])


def test_bad_verifier_settings_name_the_field(tiny_model_path):
    with pytest.raises(ValueError, match="neither a preset"):
        LLMVerifier(str(tiny_model_path), "no such preset")
    with pytest.raises(ValueError, match="needs `parse`"):
        LLMVerifier(str(tiny_model_path), "Is {answer} the same as {gold}?")
    with pytest.raises(ValueError, match="batch_size"):
        LLMVerifier(str(tiny_model_path), batch_size=0)
    with pytest.raises(ValueError, match="parse='yes'"):
        LLMVerifier(str(tiny_model_path), parse="yes")
    with pytest.raises(ModelNotFoundError):
        LLMVerifier("./no/such/verifier")
    with pytest.raises(ValueError, match="verifier.kind='gpt'"):
        build_verifier(VerifierSettings(kind="gpt"))
    custom = LLMVerifier(str(tiny_model_path), "Same? {gold} {answer}", parse="final_decision")
    assert custom.parse is parse_final_decision
    assert isinstance(build_verifier({"kind": "rule"}, default_prompt="general_verifier"), RuleStubVerifier)
    assert build_verifier(VerifierSettings(model_name_or_path=str(tiny_model_path))).template == TINYV_PROMPT


def test_llm_verifier_runs_on_gpu_when_there_is_one(tiny_model_path):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    v = LLMVerifier(str(tiny_model_path), "tinyv", max_new_tokens=4).to("cuda:0")
    assert len(v.verify(*ITEMS)) == 6 and v.policy.device.type == "cuda"
