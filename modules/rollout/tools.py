"""Tools a policy can call during a rollout, and how calls are written in its text.

A tool is any callable ``tool(arguments: str, row: dict) -> str | image | list[image]``: `arguments` is what the
model wrote inside the call, `row` the dataset row of the prompt (a retriever reads its corpus id from it, a
calculator ignores it; a vision-language rollout adds `images_seen`, every image so far in order). What it returns
becomes the observation the policy reads next turn: text, or (vision-language policies) a PIL image or a list of
frames, which the engine shows as the next turn's images.

Two call formats:

- ``tags`` (Search-R1 / StepSearch style): ``<search>capital of France</search>`` calls the tool named
  ``search``; the observation is appended as ``<information>...</information>``.
- ``json`` (Qwen / Hermes function calling): ``<tool_call>{"name": "search", "arguments": "..."}</tool_call>``;
  the observation is appended as ``<tool_response>...</tool_response>``.
- ``chat``: the same calls, and the observation as the chat template's own tool turn (ChatML, as Qwen2.5's template
  renders `role: tool`): the assistant turn is closed, a ``<tool_response>`` turn follows, a new assistant turn opens.

A malformed call (unknown tool, bad JSON, empty arguments) or a tool that raises gives an error observation
the policy can read and react to; it never ends the rollout with an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

Tool = Callable[[str, dict], Any]  # -> str, a PIL image or a list of PIL images

FORMATS = ("tags", "json", "chat")


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: the tool name, its argument text, and an error message when the call is malformed."""

    name: str
    arguments: str
    error: str | None = None


@dataclass
class ToolCallFormat:
    """How tool calls and observations are written. `observation` is formatted with ``{result}``."""

    style: str = "tags"
    observation: str | None = None

    def __post_init__(self) -> None:
        if self.style not in FORMATS:
            raise ValueError(f"tool call format {self.style!r}; use one of {FORMATS}")
        if self.observation is None:
            self.observation = {"tags": "\n<information>{result}</information>\n",
                                "json": "\n<tool_response>\n{result}\n</tool_response>\n",
                                "chat": "<|im_end|>\n<|im_start|>user\n<tool_response>\n{result}\n</tool_response>"
                                        "<|im_end|>\n<|im_start|>assistant\n"}[self.style]
        if "{result}" not in self.observation:
            raise ValueError(f"observation template {self.observation!r} must contain {{result}}")

    def stop_strings(self, tool_names: list[str]) -> list[str]:
        """Strings that end a policy turn because a call is complete."""
        return [f"</{name}>" for name in tool_names] if self.style == "tags" else ["</tool_call>"]

    def parse(self, text: str, tool_names: list[str]) -> ToolCall | None:
        """The last complete call at the end of `text` (a turn that stopped on a closing tag), or None.

        >>> ToolCallFormat("tags").parse("I should look. <search> Paris </search>", ["search"])
        ToolCall(name='search', arguments='Paris', error=None)
        >>> ToolCallFormat("json").parse('<tool_call>{"name": "calc", "arguments": {"x": 1}}</tool_call>', ["calc"])
        ToolCall(name='calc', arguments='{"x": 1}', error=None)
        """
        stripped = text.rstrip()
        if self.style == "tags":
            for name in tool_names:
                close = f"</{name}>"
                if stripped.endswith(close):
                    start = stripped.rfind(f"<{name}>")
                    if start < 0:
                        return ToolCall(name, "", f"closing </{name}> without an opening <{name}>")
                    args = stripped[start + len(name) + 2:-len(close)].strip()
                    return ToolCall(name, args, None if args else f"empty <{name}> call")
            return None
        if not stripped.endswith("</tool_call>"):
            return None
        start = stripped.rfind("<tool_call>")
        if start < 0:
            return ToolCall("", "", "closing </tool_call> without an opening <tool_call>")
        body = stripped[start + len("<tool_call>"):-len("</tool_call>")].strip()
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as err:
            return ToolCall("", body, f"tool call is not valid JSON ({err.msg} at char {err.pos})")
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return ToolCall("", body, 'tool call must be a JSON object with a string "name"')
        args = payload.get("arguments", "")
        args = args if isinstance(args, str) else json.dumps(args)
        return ToolCall(payload["name"], args, None)

    def render(self, result: str) -> str:
        return self.observation.format(result=result)


def run_tool(call: ToolCall, tools: dict[str, Tool], row: dict[str, Any], *, images: bool = False
             ) -> tuple[str | list, bool]:
    """(observation, ok): text, or with `images` (a vision-language rollout) a list of PIL images when the tool
    returned an image or frames. Errors, unknown tools and tool exceptions become readable error observations."""
    if call.error is not None:
        return f"Error: {call.error}.", False
    tool = tools.get(call.name)
    if tool is None:
        return f"Error: unknown tool {call.name!r}; available tools: {', '.join(sorted(tools))}.", False
    try:
        result = tool(call.arguments, row)
    except Exception as err:  # noqa: BLE001 - a failing tool is an observation, not a crashed rollout
        return f"Error: tool {call.name!r} raised {type(err).__name__}: {err}", False
    if images and _is_images(result):
        out = list(result) if isinstance(result, (list, tuple)) else [result]
        return (out, True) if out else (f"Error: tool {call.name!r} returned no image.", False)
    if not isinstance(result, str):
        what = "text or images" if images else "text (image results need a vision-language policy)"
        return f"Error: tool {call.name!r} returned {type(result).__name__}, not {what}.", False
    return result, True


def _is_images(value: Any) -> bool:
    from PIL import Image

    if isinstance(value, Image.Image):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, Image.Image) for v in value)


_SPACES = re.compile(r"\s+")


def calculator(arguments: str, row: dict | None = None) -> str:
    """A safe arithmetic tool (integers, + - * / and parentheses), e.g. for tests and demos.

    >>> calculator("2 * (3 + 4)")
    '14'
    >>> calculator("7 / 2")
    '3.5'
    """
    from modules.rewards.countdown import evaluate_expression  # AST walk: no names, no calls, no eval

    value = evaluate_expression(_SPACES.sub(" ", arguments).strip())
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.6g}"
