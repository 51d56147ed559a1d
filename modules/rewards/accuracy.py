"""Answer accuracy: extract the final answer, compare it with the gold `answer` column.

Comparison modes: ``math`` (symbolic equivalence with HF math-verify), ``exact`` (normalised string
match), ``number`` (the last number equals the gold numerically).

Before math-verify sees a text (gold, extracted answer or whole completion), currency signs are removed
(`strip_currency`): an escaped dollar ``\\$`` (LaTeX's literal dollar) is no math delimiter, and math-verify
cannot read a number behind it; ``€18`` is no LaTeX, so a bare answer read as LaTeX would not parse.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation

from modules.rewards.registry import completion_text, register_reward

EXTRACT_MODES = ("auto", "answer_tag", "boxed", "last_number", "none")
COMPARE_MODES = ("math", "exact", "number")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# 1,234,567.5 | -12 | 3.25 | .5 ; a trailing sentence period is not part of the number.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
# A currency sign: a LaTeX-escaped dollar (not itself escaped: "\\$" is a line break and a "$") or one of the
# signs math-verify's plain-number reader accepts (a bare "$" is a math delimiter, not a sign here).
_CURRENCY_SIGNS = "€£¥₹₽₪₩₫฿₡₢₣₤₥₦₧₨₭₮₯₰₱₲₳₴₵₶₷₸₺₻₼₾₿"
_CURRENCY = re.compile(rf"(?<!\\)\\\$|[{_CURRENCY_SIGNS}]")
_CURRENCY_DROP = re.compile(rf"(?<![^\s\-+({{\[])(?:\\\$|[{_CURRENCY_SIGNS}])")  # after a sign, bracket, space, start
# What may stand between two \boxed{} of one answer (a list such as "\boxed{-2}, \boxed{1}"): whitespace,
# commas, semicolons, "and" / "or" (also in \text{}), alignment and spacing commands, math delimiters, and the
# label of the next box ("x = \boxed{1}, y_2 = \boxed{2}").
_LIST_GAP = re.compile(
    r"(?:\s|[,;&~$]|\\\\|\\[()\[\]]|\\(?:q?quad|[,;:! ])|\b(?:and|or)\b"
    r"|\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?:,|and|or)?\s*\}"
    r"|\b[A-Za-z](?:_\{?\w+\}?)?\s*=)*"
)


def extract_last_number(text: str) -> str | None:
    """The last integer or decimal in `text` (thousands commas removed), or None.

    >>> extract_last_number("so 1,234 + 0.5 = 1,234.5.")
    '1234.5'
    """
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces allowed), or None.

    >>> extract_boxed(r"so \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced


def _top_level_boxes(text: str) -> list[tuple[int, int, str | None]]:
    """``(start, end, content)`` of each outermost ``\\boxed{...}``, left to right; an unbalanced box (a
    truncated completion) is last, with content None and `end` at the end of the text."""
    boxes: list[tuple[int, int, str | None]] = []
    pos = 0
    while (start := text.find("\\boxed{", pos)) >= 0:
        i = start + len("\\boxed{")
        depth = 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                boxes.append((start, j + 1, text[i:j]))
                pos = j + 1
                break
        else:
            boxes.append((start, len(text), None))
            break
    return boxes


def extract_boxed_answer(text: str) -> str | None:
    r"""The final boxed answer: the last ``\boxed{...}`` together with the boxes right before it that only list
    punctuation separates from it, their contents joined by ", " (repeats dropped); None without a box or when
    the last box is unbalanced.

    The rule for several boxes: boxes are one answer (a list, which math-verify compares as a set or tuple)
    when nothing but whitespace, commas, semicolons, "and" / "or" (also as ``\text{and}``), ``&``, ``\\``,
    spacing commands (``\quad``, ``\,``), math delimiters (``$``, ``\(``, ``\]``) and the next box's label
    (``y_2 =``) stands between them.
    Any other text between two boxes ends the answer there, so an intermediate box followed by more working
    ("x = \boxed{3}. Wait, that is wrong ... x = \boxed{5}") leaves only the last box. (math-verify's own
    rule also joins boxes less than 10 characters apart, or less than 70 apart with a comma or "and" in
    between: "\boxed{3}, no, \boxed{5}" is one answer there, the last box here.)

    >>> extract_boxed_answer(r"\boxed{-2} \text{and} \boxed{1}")
    '-2, 1'
    >>> extract_boxed_answer(r"x = \boxed{3}. Wait, that is wrong: x = \boxed{5}.")
    '5'
    """
    boxes = _top_level_boxes(text)
    if not boxes or boxes[-1][2] is None:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _LIST_GAP.fullmatch(text[box[1]:group[0][0]]):
            break
        group.insert(0, box)
    return ", ".join(dict.fromkeys(content.strip() for _, _, content in group))


def extract_answer(text: str, how: str = "auto") -> str | None:
    """The answer part of a completion, or None when `how` finds nothing.

    ``auto``: content of the last ``<answer>...</answer>`` (unwrapping a ``\\boxed{}`` inside it), else
    the final boxed answer (`extract_boxed_answer`: the last box, or the last list of boxes), else the whole
    text. ``answer_tag`` / ``boxed`` / ``last_number``: only that source. ``none``: the whole text.

    >>> extract_answer("<think>..</think><answer>\\\\boxed{7}</answer>")
    '7'
    """
    if how not in EXTRACT_MODES:
        raise ValueError(f"extract={how!r} is not one of {EXTRACT_MODES}")
    if how == "none":
        return text
    if how == "last_number":
        return extract_last_number(text)
    if how in ("auto", "answer_tag"):
        tags = _ANSWER_TAG.findall(text)
        if tags:
            inner = tags[-1].strip()
            return (extract_boxed_answer(inner) or inner) if how == "auto" else inner
        if how == "answer_tag":
            return None
    boxed = extract_boxed_answer(text)
    if boxed is not None:
        return boxed
    return text if how == "auto" else None


def normalize_text(text: str) -> str:
    """Strip, casefold, collapse whitespace, drop trailing periods (for ``mode="exact"``)."""
    return " ".join(str(text).split()).casefold().rstrip(".").strip()


def _to_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


# ---- math-verify options -----------------------------------------------------------------------

EXTRACTION_MODES = ("any_match", "first_match")
FALLBACK_MODES = ("first_match", "no_fallback")
_TARGET_HELP = ("use 'latex', 'expr' or 'string', a dict such as {'type': 'latex', 'boxed_match_priority': 0}, "
                "or a math_verify LatexExtractionConfig / ExprExtractionConfig / StringExtractionConfig")


@dataclass(frozen=True)
class MathVerifyOptions:
    """math-verify's own options (names and defaults of math-verify 0.9's `parse` and `verify`), validated.

    Build it with `math_verify_options`, which checks every value; the ``accuracy`` reward takes the same
    names as keyword arguments.
    """

    float_rounding: int = 6
    numeric_precision: int = 15
    strict: bool = True
    allow_set_relation_comp: bool = False
    extraction_config: tuple | None = None  # None: math-verify's default (LaTeX, then plain expressions)
    gold_extraction_config: tuple | None = None  # None: the same as extraction_config
    extraction_mode: str = "any_match"
    fallback_mode: str = "first_match"


def _bad(name: str, value, fix: str) -> ValueError:
    return ValueError(f"accuracy reward: {name}={value!r} is invalid; {fix}")


def _check_int(name: str, value, low: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(name, value, fix)
    return value


def _check_bool(name: str, value, fix: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, value, fix)
    return value


def _check_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise _bad(name, value, f"use one of {choices}")
    return value


def _target_fields(name: str, spec, kind: type, given: dict) -> dict:
    """`given` fields of the extraction target `kind` (from `spec`), checked and converted (a
    normalization_config dict becomes a LatexNormalizationConfig)."""
    from math_verify import LatexNormalizationConfig

    known = {f.name for f in fields(kind)}
    out = {}
    for key, value in given.items():
        where = f"{name}.{key}"
        if key not in known:
            raise _bad(name, spec, f"{kind.__name__} has no field {key!r}: use one of {sorted(known)}")
        if key in ("try_extract_without_anchor", "lowercase"):
            value = _check_bool(where, value, "use true or false")
        elif key == "boxed_match_priority":
            value = _check_int(where, value, -1, "use an integer >= 0 (lower is matched first: 0 before the "
                                                 "'final answer is' patterns at 50) or -1 to ignore \\boxed{}")
        elif key == "strings":
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
                    or not all(isinstance(v, str) and v for v in value):
                raise _bad(where, value, "use a non-empty list of non-empty strings, e.g. ['A', 'B', 'C', 'D']")
            value = tuple(value)
        elif key == "normalization_config":
            if isinstance(value, dict):
                norm_known = {f.name for f in fields(LatexNormalizationConfig)}
                unknown = sorted(set(value) - norm_known)
                if unknown:
                    raise _bad(where, value, f"NormalizationConfig has no field {unknown[0]!r}: use one of "
                                             f"{sorted(norm_known)}")
                for k, v in value.items():
                    if k == "boxed":
                        _check_choice(f"{where}.boxed", v, ("all", "last", "none"))
                    else:
                        _check_bool(f"{where}.{k}", v, "use true or false")
                value = LatexNormalizationConfig(**value)
            elif not isinstance(value, LatexNormalizationConfig):
                raise _bad(where, value, "use a dict of NormalizationConfig fields or a "
                                         "math_verify.LatexNormalizationConfig")
        out[key] = value
    return out


def _extraction_target(name: str, spec):
    """One math-verify extraction target from a name, a ``{'type': ..., **fields}`` dict or a config object."""
    from math_verify import (
        ExprExtractionConfig,
        LatexExtractionConfig,
        StringExtractionConfig,
    )

    kinds = {"latex": LatexExtractionConfig, "expr": ExprExtractionConfig, "string": StringExtractionConfig}
    if isinstance(spec, tuple(kinds.values())):
        checked = _target_fields(name, spec, type(spec), {f.name: getattr(spec, f.name) for f in fields(spec)})
        return replace(spec, **checked)  # strings as a tuple: the config must be hashable
    if isinstance(spec, str) and spec in kinds:
        return kinds[spec]()
    if isinstance(spec, dict) and spec.get("type") in kinds:
        kind = kinds[spec["type"]]
        return kind(**_target_fields(name, spec, kind, {k: v for k, v in spec.items() if k != "type"}))
    raise _bad(name, spec, _TARGET_HELP)


def _extraction_config(name: str, value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
        value = [value]  # a single target
    if not value:
        raise _bad(name, value, f"use at least one target ({_TARGET_HELP[4:]}), or null for math-verify's default")
    return tuple(_extraction_target(f"{name}[{i}]", spec) for i, spec in enumerate(value))


def math_verify_options(
    *,
    float_rounding: int = 6,
    numeric_precision: int = 15,
    strict: bool = True,
    allow_set_relation_comp: bool = False,
    extraction_config=None,
    gold_extraction_config=None,
    extraction_mode: str = "any_match",
    fallback_mode: str = "first_match",
) -> MathVerifyOptions:
    """Validated `MathVerifyOptions`; a bad value raises a one-line ValueError naming it and the fix.

    >>> math_verify_options(float_rounding=2, extraction_config=["expr"]).extraction_config
    (ExprExtractionConfig(try_extract_without_anchor=True),)
    >>> math_verify_options(float_rounding=-1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: accuracy reward: float_rounding=-1 is invalid; use an integer >= 0 (decimal places floats ...
    """
    return MathVerifyOptions(
        float_rounding=_check_int("float_rounding", float_rounding, 0, "use an integer >= 0 (decimal places "
                                  "floats are rounded to before comparing; math-verify's default is 6)"),
        numeric_precision=_check_int("numeric_precision", numeric_precision, 1, "use an integer >= 1 (significant "
                                     "digits of the numeric evaluation; math-verify's default is 15)"),
        strict=_check_bool("strict", strict, "use true (variables and set-vs-tuple matter) or false"),
        allow_set_relation_comp=_check_bool("allow_set_relation_comp", allow_set_relation_comp,
                                            "use true (a gold set/interval also matches an inequality) or false"),
        extraction_config=_extraction_config("extraction_config", extraction_config),
        gold_extraction_config=_extraction_config("gold_extraction_config", gold_extraction_config),
        extraction_mode=_check_choice("extraction_mode", extraction_mode, EXTRACTION_MODES),
        fallback_mode=_check_choice("fallback_mode", fallback_mode, FALLBACK_MODES),
    )


DEFAULT_OPTIONS = MathVerifyOptions()


# ---- math-verify -------------------------------------------------------------------------------

def _timeout(seconds: int | None) -> int | None:
    """math-verify times out with signal.alarm, which only works in the main thread: no timeout elsewhere."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def strip_currency(text: str) -> str:
    r"""`text` without currency signs (``€``, ``£``, ... and LaTeX's escaped dollar ``\$``; a plain ``$`` is a
    math delimiter), which never carry a value and which math-verify cannot read inside LaTeX nor, for ``\$``,
    anywhere. Dropped after a sign, bracket, space or the start (``-\$5`` -> ``-5``), otherwise replaced by a
    space, so that a number after ``total:`` or ``=`` is still read as one.

    >>> strip_currency(r"costs \$18 or €17, a loss of -\$5, total:\$13; $x\\$")
    'costs 18 or 17, a loss of -5, total: 13; $x\\\\$'
    """
    return _CURRENCY.sub(" ", _CURRENCY_DROP.sub("", text))


@functools.lru_cache(maxsize=4096)
def _parse(text: str, wrap: bool, timeout: int | None, config: tuple | None = None,
           extraction_mode: str = "any_match", fallback_mode: str = "first_match") -> list:
    """math-verify parse of `text` without currency signs. Bare LaTeX (``\\frac{1}{2}``, ``x^2+1``) only
    parses inside ``$...$``, so text without math delimiters is tried wrapped first when `wrap`, then as it is."""
    from math_verify import parse

    kwargs = {"parsing_timeout": timeout, "extraction_mode": extraction_mode, "fallback_mode": fallback_mode}
    if config is not None:
        kwargs["extraction_config"] = config
    text = strip_currency(text)
    if wrap and not any(d in text for d in _DELIMITERS):
        parsed = parse(f"${text}$", **kwargs)
        if parsed:
            return parsed
    return parse(text, **kwargs)


def _math_equal(gold: str, pred: str, wrap_pred: bool, timeout_seconds: int | None,
                options: MathVerifyOptions) -> bool:
    from math_verify import verify

    timeout = _timeout(timeout_seconds)
    modes = (options.extraction_mode, options.fallback_mode)
    gold_config = options.extraction_config if options.gold_extraction_config is None \
        else options.gold_extraction_config
    gold_parsed = _parse(gold, True, timeout, gold_config, *modes)
    if not gold_parsed:
        warnings.warn(f"accuracy reward: math-verify could not parse the gold answer {gold!r}; "
                      "every completion scores 0 on it (use mode='exact' or fix the answer)", stacklevel=3)
        return False
    pred_parsed = _parse(pred, wrap_pred, timeout, options.extraction_config, *modes)
    return bool(pred_parsed) and verify(
        gold_parsed, pred_parsed, float_rounding=options.float_rounding,
        numeric_precision=options.numeric_precision, strict=options.strict,
        allow_set_relation_comp=options.allow_set_relation_comp, timeout_seconds=timeout)


def math_equal(gold: str, pred: str, *, wrap_pred: bool = True, timeout_seconds: int | None = 5,
               **options) -> bool:
    """Whether `pred` is mathematically equivalent to `gold` (math-verify ``verify(gold, pred)``).

    `options`: math-verify's options as in `math_verify_options` (``float_rounding``, ``strict``, ...).

    >>> math_equal("1/3", "0.33", float_rounding=2), math_equal("1/3", "0.33")
    (True, False)
    """
    opts = math_verify_options(**options) if options else DEFAULT_OPTIONS
    return _math_equal(gold, pred, wrap_pred, timeout_seconds, opts)


# ---- reward ------------------------------------------------------------------------------------

def _score(completion: str, gold, extract: str, mode: str, timeout_seconds: int | None,
           options: MathVerifyOptions) -> float | None:
    if gold is None:
        return None
    pred = extract_answer(completion, extract)
    if pred is None:
        return 0.0
    if mode == "exact":
        return float(normalize_text(pred) == normalize_text(gold))
    if mode == "number":
        gold_num = _to_decimal(str(gold).strip().replace(",", "").rstrip("."))
        if gold_num is None:
            raise ValueError(f"mode='number' needs numeric answers, got answer={gold!r}; use mode='math' or 'exact'")
        pred_num = extract_last_number(pred)
        return float(pred_num is not None and _to_decimal(pred_num) == gold_num)
    # math: text found by a tag / box is a bare expression (wrap it in $...$); the whole completion is prose.
    whole = pred is completion
    return float(_math_equal(str(gold), pred, not whole, timeout_seconds, options))


@register_reward("accuracy")
def accuracy_reward(
    prompts: list,
    completions: list,
    answer: list | None = None,
    *,
    extract: str = "auto",
    mode: str = "math",
    timeout_seconds: int | None = 5,
    float_rounding: int = 6,
    numeric_precision: int = 15,
    strict: bool = True,
    allow_set_relation_comp: bool = False,
    extraction_config=None,
    gold_extraction_config=None,
    extraction_mode: str = "any_match",
    fallback_mode: str = "first_match",
    **kwargs,
) -> list[float | None]:
    r"""1.0 when the extracted answer matches the gold `answer` column, 0.0 otherwise, None where the
    gold is None.

    `extract`: see `extract_answer` (several boxes: `extract_boxed_answer`). `mode`: ``math`` = math-verify
    equivalence (``\frac{1}{2}`` == ``0.5``; math-verify's signal timeout of `timeout_seconds` applies in the
    main thread only), ``exact`` = `normalize_text` equality, ``number`` = last number equals the gold (exact
    decimal). An answer missing from the completion (nothing to extract) scores 0.0.

    ``math`` mode: an extracted answer without math delimiters, and a bare gold, are read as LaTeX (wrapped in
    ``$...$``) first; the whole completion (``extract='none'``, or ``auto`` without tag or box) is read as prose,
    as math-verify reads it. Percentages follow math-verify: gold ``50`` matches ``50\%`` but not ``0.5``; gold
    ``0.5`` matches ``50\%`` but not ``50``; gold ``50\%`` matches all three. Thousands separators are read
    (``1,000`` == ``1000``); a comma list is a set (``1,-2`` == ``-2, 1``).

    math-verify's own options (names and defaults of math-verify's `parse` / `verify`; a bad value raises a
    one-line ValueError naming it):

    - `float_rounding` (6): decimal places both sides are rounded to when one of them is a float
      (``0.333`` == ``1/3`` with 3, not with 4).
    - `numeric_precision` (15): significant digits of the numeric check ``evalf(gold - pred) == 0``.
    - `strict` (True): variables must match and a set never equals a tuple; False matches variables by
      position and lets ``{1, 2}`` equal ``(1, 2)``.
    - `allow_set_relation_comp` (False): let a gold set or interval (``x \in [-2, 7]``) equal an inequality
      (``-2 \le x \le 7``); the other way round (gold inequality, predicted set) always compares.
    - `extraction_config` (None = math-verify's default, LaTeX then plain expressions): what `parse` looks for,
      a list of targets, each ``'latex'``, ``'expr'``, ``'string'``, a dict ``{'type': 'latex',
      'boxed_match_priority': 0, 'try_extract_without_anchor': False, 'normalization_config': {...}}`` (the
      fields of math-verify's LatexExtractionConfig / ExprExtractionConfig / StringExtractionConfig; lower
      priority matches first) or such a config object. `gold_extraction_config` (None = the same): for the gold.
    - `extraction_mode` ('any_match'): try every match until one parses; 'first_match': only the first.
    - `fallback_mode` ('first_match'): keep the first matched string when nothing parses (compared as a
      string); 'no_fallback': drop it.

    To reproduce ``math_verify.verify(parse(gold), parse(completion), ...)`` use ``extract='none'`` with the same
    options and ``$...$``-delimited golds (currency signs are still dropped, see the module docstring).

    >>> accuracy_reward(None, ["<answer>\\frac{1}{2}</answer>", "<answer>2</answer>"], answer=["0.5", "0.5"])
    [1.0, 0.0]
    >>> accuracy_reward(None, ["The answer is 42.", "42"], answer=["42", None], mode="number")
    [1.0, None]
    >>> accuracy_reward(None, [r"\boxed{\$18}", r"\boxed{-2}, \boxed{1}"], answer=["18", "1,-2"])
    [1.0, 1.0]
    >>> accuracy_reward(None, [r"\boxed{0.33}"] * 2, answer=["1/3"] * 2)[0], \
    ...     accuracy_reward(None, [r"\boxed{0.33}"], answer=["1/3"], float_rounding=2)[0]
    (0.0, 1.0)
    """
    if answer is None:
        raise ValueError(f"accuracy reward needs the per-row column 'answer' (gold answers); got columns "
                         f"{sorted(kwargs)}. Add an 'answer' field to the dataset rows.")
    if extract not in EXTRACT_MODES:
        raise ValueError(f"accuracy reward: extract={extract!r} is not one of {EXTRACT_MODES}")
    if mode not in COMPARE_MODES:
        raise ValueError(f"accuracy reward: mode={mode!r} is not one of {COMPARE_MODES}")
    if timeout_seconds is not None and (isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int)
                                        or timeout_seconds < 1):
        raise _bad("timeout_seconds", timeout_seconds, "use a whole number of seconds >= 1, or null for no timeout")
    options = math_verify_options(
        float_rounding=float_rounding, numeric_precision=numeric_precision, strict=strict,
        allow_set_relation_comp=allow_set_relation_comp, extraction_config=extraction_config,
        gold_extraction_config=gold_extraction_config, extraction_mode=extraction_mode, fallback_mode=fallback_mode)
    return [_score(completion_text(c), g, extract, mode, timeout_seconds, options)
            for c, g in zip(completions, answer)]


@register_reward("answer_forms")
def answer_forms_reward(prompts: list, completions: list, answer: list | None = None, forms: list | None = None, *,
                        extract: str = "boxed", **kwargs) -> list[float | None]:
    r"""A reference judge for tasks whose rows list every accepted way of writing the answer (the `forms` column of
    `general_qa`): 1.0 when the extracted answer is math-verify-equal to the gold `answer` (the `accuracy` reward's
    ``math`` mode) or `normalize_text`-equal to one of the row's `forms`, 0.0 otherwise, None where the gold is None.
    Knowing every form, it measures another verifier's false negatives: answers it accepts that the verifier
    rejected (`r1 compare --preset tinyv`). Weight 0 in a config logs it without training on it.

    >>> answer_forms_reward([""] * 3, [r"\boxed{seven}", r"\boxed{7}", r"\boxed{8}"], ["7"] * 3,
    ...                     [["7.0", "seven"]] * 3)
    [1.0, 1.0, 0.0]
    """
    check = accuracy_reward(prompts, completions, answer, extract=extract, mode="math", **kwargs)
    forms = forms if forms is not None else [None] * len(completions)
    out: list[float | None] = []
    for completion, ok, row_forms in zip(completions, check, forms):
        if ok is None or ok == 1.0:
            out.append(ok)
            continue
        pred = extract_answer(completion_text(completion), extract)
        accepted = {normalize_text(f) for f in row_forms or []}
        out.append(float(pred is not None and normalize_text(pred) in accepted))
    return out
