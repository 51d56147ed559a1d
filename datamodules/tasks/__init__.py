"""Synthetic tasks with exact answers, by name: `make_task("arithmetic", 256, digits=2, seed=0)`.

A task is a builder `fn(n, *, seed, ...) -> list[dict]`. Registered names map to a builder or to its dotted import
path (imported on first use, so a task's dependencies load only when it is used); a config may also name any
builder by dotted path (``task: my_pkg.tasks.make_my_task``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from datamodules.errors import DataConfigError
from datamodules.tasks.arithmetic import make_arithmetic
from datamodules.tasks.countdown import make_countdown

TASKS: dict[str, Callable[..., list[dict]] | str] = {
    "arithmetic": make_arithmetic,
    "countdown": make_countdown,
    "freeform_qa": "datamodules.tasks.freeform.make_freeform_qa",  # NOVER: free-form answers, no verifier
    "multi_domain": "datamodules.tasks.multi_domain.make_multi_domain",  # DISCO: imbalanced domain mix
    "general_qa": "datamodules.tasks.general_qa.make_general_qa",  # TinyV / General-Reasoner: varied answer forms
    "word_problems": "datamodules.tasks.word_problems.make_word_problems",  # TAPO: multi-step word problems
    "two_hop": "datamodules.tasks.two_hop.make_two_hop",  # StepSearch: two-hop QA with BM25 corpora
    "dialogues": "datamodules.tasks.dialogues.make_dialogue_prompts",  # LLM-GELI: chat histories, hidden quality
    "hybrid": "datamodules.tasks.hybrid.make_hybrid",  # LHRM: easy / multi-step arithmetic + chat prompts
    "hybrid_sft": "datamodules.tasks.hybrid.make_hybrid_sft",  # LHRM stage 1 (HFT): <think>/<no_think> targets
    "logic": "datamodules.tasks.logic.make_logic",  # Mixture-of-Thought: propositional logic, truth-table labels
    "logic_sft": "datamodules.tasks.logic.make_logic_sft",  # MoT: oracle rationales in nl / code / truth_table
    "teacher_traces": "datamodules.tasks.teacher_traces.make_teacher_traces",  # Distillation: synthetic teachers
    "temporal_kg": "datamodules.tasks.temporal_kg.make_temporal_kg",  # GETER: toy temporal KG, Yes/No/Unsure
    "safety_sft": "datamodules.tasks.safety_sft.make_safety_sft",  # Safety subspaces demo: refuse/comply/arith
    "panorama": "datamodules.tasks.panorama.make_panorama",  # 360-R1: synthetic 360° panoramas, spatial VQA
    "gui_screens": "datamodules.tasks.gui_screens.make_gui_screens",  # GUI-G1: synthetic screens, box grounding
    "pixel_search": "datamodules.tasks.pixel_search.make_pixel_search",  # Pixel Reasoner: tiny glyphs to zoom / frames
    "pixel_traces": "datamodules.tasks.pixel_search.make_pixel_traces",  # Pixel Reasoner warm start: tool-use SFT
    "fake_clips": "datamodules.tasks.fake_clips.make_fake_clips",  # AvatarShield: moving-shape clips, real / fake
}


def get_task(name: str) -> Callable[..., list[dict]]:
    """The builder registered as `name`, or the function at dotted path `name`."""
    target = TASKS.get(name, name)
    if callable(target):
        return target
    if "." not in target:
        raise DataConfigError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}, or give a dotted path "
                              "to your own builder (my_pkg.tasks.make_rows)")
    module_name, _, attr = target.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise DataConfigError(f"task {name!r}: cannot load {target!r} ({err})") from None
    if not callable(builder):
        raise DataConfigError(f"task {name!r}: {target!r} is not a function")
    return builder


def make_task(name: str, n: int, **kwargs) -> list[dict]:
    """`n` rows of the task `name`; `kwargs` go to its builder (e.g. `seed`, `digits`)."""
    builder = get_task(name)
    options = [p for p in inspect.signature(builder).parameters if p != "n"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise DataConfigError(f"task {name!r} has no option(s) {unknown}; its options: {options}")
    return builder(n, **kwargs)


__all__ = ["TASKS", "get_task", "make_arithmetic", "make_countdown", "make_task"]
