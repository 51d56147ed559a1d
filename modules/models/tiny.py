"""A tiny random Qwen2-style causal LM with a locally trained byte-level BPE tokenizer.

Tests and smoke runs load it through the same ``AutoModelForCausalLM/AutoTokenizer.from_pretrained``
path a real checkpoint takes. Token conventions mirror SmolLM2-135M-Instruct, the demo model:
``<|im_end|>`` is both eos and pad, ``<|im_start|>`` is bos (never added automatically), and the chat
template is ChatML. The reasoning tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` are
ordinary added tokens: one id each, kept when decoding with ``skip_special_tokens=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from modules.models.cache import cached_build
from modules.models.loading import quiet_progress

STAMP_NAME = "r1_tiny.json"
_FORMAT = 1  # bump when the build below changes, so cached builds are redone

EOS, BOS, UNK = "<|im_end|>", "<|im_start|>", "<|endoftext|>"
SPECIAL_TOKENS = (UNK, BOS, EOS)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
# Qwen2's pre-tokenizer split (digits one by one), as in transformers' Qwen2Tokenizer.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tiny chat template: role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to and in is it that for on with as was be by this are or from at not but have "
    "what which how many much if then so because answer question think step first next finally "
    "number sum difference product total add plus minus times divided equals result let us we "
    "you I he she they has had each more less than half twice left right value solve find "
    "apple book car dog cat bird student box coin day hour minute mile dollar cookie pencil "
    "Tom Anna Lisa John Mary Sam Maria James buy sell give get eat read walk run cost make need "
    "want true false yes no correct wrong check again therefore here there when where who why "
    "all some any every other another same different new old big small long short high low "
    "good bad great little own few most only very also just even still already always never "
    "often sometimes today tomorrow week month year time people person man woman child friend "
    "family teacher school class room house home city country world water food money work play "
    "game team group part place point line side end start begin stop turn move keep hold bring "
    "take put set show tell ask say speak talk write count measure compare divide multiply "
    "subtract remainder fraction percent ratio rate speed distance length width height area "
    "volume square circle triangle angle shape even odd prime digit integer decimal equation "
    "expression variable function graph table list order pattern rule reason proof because "
    "since after before during while until between among under over above below across along "
    "around behind inside outside into onto through toward without within about against "
    "could would should might must will can may shall do does did done being been having "
    "know learn teach understand remember forget believe feel look see watch hear listen help "
    "try use open close win lose pay spend save share cut fill pour mix plant grow build paint"
).split()


def build_tiny_model(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    corpus: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Build (or reuse) a random ``Qwen2ForCausalLM`` + tokenizer saved at ``path``; return the path.

    ``intermediate_size`` defaults to ``4 * hidden_size``; ``corpus`` adds tokenizer training text.
    The model's vocabulary is exactly ``vocab_size``: if the corpus supports fewer BPE merges,
    the tokenizer is filled with ``<|reserved_N|>`` special tokens (as Llama 3 does). A build with
    the same arguments already at ``path`` (recorded in ``r1_tiny.json``) is returned as is.
    """
    corpus = list(corpus or [])
    _check_sizes(hidden_size, num_layers, num_heads, num_kv_heads, vocab_size)
    args = dict(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        vocab_size=vocab_size,
        seed=seed,
    )
    corpus_hash = hashlib.sha256(json.dumps(corpus).encode()).hexdigest()[:16]
    stamp = {"builder": "build_tiny_model", "format": _FORMAT, **args, "corpus_sha256": corpus_hash}

    return cached_build(path, stamp, lambda out: _build(out, corpus=corpus, **args), stamp_name=STAMP_NAME)


def _check_sizes(hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int, vocab_size: int) -> None:
    for name, value in dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                            num_kv_heads=num_kv_heads).items():
        if value < 1:
            raise ValueError(f"build_tiny_model: {name}={value} must be >= 1")
    if hidden_size % num_heads:
        raise ValueError(f"build_tiny_model: hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    if (hidden_size // num_heads) % 2:
        raise ValueError(
            f"build_tiny_model: head size hidden_size/num_heads={hidden_size // num_heads} must be even (RoPE); "
            "change hidden_size or num_heads"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"build_tiny_model: num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
    smallest = 256 + len(SPECIAL_TOKENS) + len(TAG_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"build_tiny_model: vocab_size={vocab_size} is below {smallest} "
            "(256 byte tokens + special and tag tokens); pass vocab_size >= 512"
        )


def _build(out: Path, *, corpus: list[str], hidden_size: int, num_layers: int, num_heads: int,
           num_kv_heads: int, intermediate_size: int, vocab_size: int, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(vocab_size, corpus)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with quiet_progress():  # no "Writing model shards" bar on a smoke run's first start
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tokenizer(vocab_size: int, corpus: Sequence[str] = ()):
    """Train a byte-level BPE tokenizer of exactly ``vocab_size`` ids on the built-in corpus plus
    ``corpus``; return it as a ``PreTrainedTokenizerFast`` with the ChatML template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Qwen2's pipeline exactly: transformers 5 rebuilds it for model_type "qwen2" on load, so the
    # tokenizer saved here and the one AutoTokenizer returns split text the same way.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*default_corpus(), *corpus], trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    n_reserved = vocab_size - tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(n_reserved)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def default_corpus() -> list[str]:
    """Built-in tokenizer training text: numbers 0-999, arithmetic questions with worked answers in
    ``<think>``/``<answer>`` tags, chat markup and common English words with their inflections
    (enough text for about 3,800 BPE tokens)."""
    lines = [" ".join(str(i) for i in range(start, start + 50)) for start in range(0, 1000, 50)]
    for a in range(0, 100, 7):
        for b in range(1, 100, 13):
            lines.append(f"What is {a} + {b}? <think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>")
            lines.append(f"What is {a} * {b}? Let me think step by step. {a} times {b} equals {a * b}.")
            lines.append(f"Solve for x: x - {b} = {a}. The answer is x = {a + b}.")
    lines += [f"<|im_start|>{role}\n" for role in ("system", "user", "assistant")]
    lines += [" ".join(w + suffix for w in _WORDS) for suffix in ("", "s", "ed", "ing", "er", "ly")]
    lines += [" ".join(w.capitalize() for w in _WORDS), " ".join(w.upper() for w in _WORDS)]
    return lines
