r"""Prior prompts (training-time instructions) for the five pPE strategies.

pPE (Taveekitworachai et al., arXiv 2505.14157; spec 19 (a), (d)) keeps the RL algorithm fixed and varies only the
*prior prompt*: an instruction that turns an inference-time prompting method into a training-time output format,
``<x> ... </x><answer> ... </answer>``, with one tag per strategy.

How a prompt is built (our choice): the strategy's instruction is the **system prompt** and the question is the
user message, unchanged. With a chat template the instruction becomes the system turn; without one,
`modules.rollout.engine.render_prompt` writes ``instruction + "\n\n" + question``, which is what `prior_prompt`
returns. So a datamodule only needs ``system_prompt=instruction(strategy)`` and ``template="{question}"``.

The instruction wording is **ours**: the paper's exact five prompts are NOT FOUND in the spec (it only gives the
tags and the inference-time methods). Every instruction names its tag, says what goes inside it, and asks for the
final answer as ``\boxed{...}`` inside ``<answer></answer>``, in exactly that order, with nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

ANSWER_TAG = "answer"


@dataclass(frozen=True)
class PriorStrategy:
    """One pPE strategy: its tag, the inference-time method it comes from, and what the model writes in the tag."""

    tag: str
    """The XML tag of the first block, e.g. ``plan`` for ``<plan>...</plan>``."""
    method: str
    """The inference-time prompting method the strategy comes from (spec 19 (a))."""
    task: str
    """What the model writes inside the tag (our wording; completes "The assistant first ...")."""

    def instruction(self) -> str:
        """The full prior prompt (our wording): the R1-Zero-style preamble, the task, the exact output format."""
        t, a = self.tag, ANSWER_TAG
        return (
            "A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
            f"The Assistant first {self.task} inside <{t}> </{t}> tags, then gives the final answer inside "
            f"<{a}> </{a}> tags, with the final result written as \\boxed{{...}}. Reply in exactly this format "
            f"and write nothing outside the tags: <{t}> ... </{t}> <{a}> \\boxed{{final answer}} </{a}>"
        )


STRATEGIES: dict[str, PriorStrategy] = {
    "think": PriorStrategy(
        "think", "chain-of-thought prompting (Wei et al. 2022)",
        "reasons about the problem step by step"),
    "plan": PriorStrategy(
        "plan", "Plan-and-Solve prompting (Wang et al. 2023)",
        "devises a plan that splits the problem into steps and carries the plan out step by step"),
    "code": PriorStrategy(
        "code", "Program-of-Thought prompting (Chen et al. 2022)",
        "writes a short Python program that computes the answer, and works out by hand what it prints"),
    "knowledge": PriorStrategy(
        "knowledge", "Generated Knowledge prompting (Liu et al. 2022)",
        "recalls the facts, definitions and formulas the question needs, and uses them to solve it"),
    "examples": PriorStrategy(
        "examples", "Null-shot prompting (Taveekitworachai et al. 2024)",
        "writes a few worked examples of similar problems with their solutions, and uses them to solve it"),
}
"""The five pPE strategies by name (spec 19 (a)); each name equals its tag."""


def get_strategy(name: str) -> PriorStrategy:
    """The strategy `name`, or a ValueError listing the five names.

    >>> get_strategy("plan").tag
    'plan'
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown pPE strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def instruction(strategy: str) -> str:
    """The prior prompt (system prompt) of `strategy`.

    >>> "<examples> </examples>" in instruction("examples")
    True
    """
    return get_strategy(strategy).instruction()


def prior_prompt(strategy: str, question: str) -> str:
    """The plain-text prompt the model sees without a chat template: instruction, a blank line, the question
    (exactly `render_prompt(tok, question, system_prompt=instruction(strategy))` for a template-less tokenizer).

    >>> prior_prompt("code", "What is 2 + 3?").endswith("</answer>\\n\\nWhat is 2 + 3?")
    True
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"prior_prompt: the question must be non-empty text, got {question!r}")
    return f"{instruction(strategy)}\n\n{question}"
