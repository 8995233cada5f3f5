"""Apply a project to an OpenAI request body before it reaches the engine.

The caller always wins: project params only fill what the request left unset, and the caller's
system text is kept, after the project's prompt. The input body is never mutated, so the proxy
can still store the caller's own messages as the conversation history.
"""

from __future__ import annotations

import copy
from typing import Any

from slp.projects.schema import Project

AGENT_FIELDS = ("project_id", "session_id")


def _text_of(content: Any) -> str:
    """Text of a message content: a string, or OpenAI content parts ([{"type": "text", "text": ...}])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def _base(body: dict, project: Project) -> dict:
    """Copy without the agent's own fields, with the project's model and params filled in."""
    shaped = {key: copy.deepcopy(value) for key, value in body.items() if key not in AGENT_FIELDS}
    if not shaped.get("model"):
        shaped["model"] = project.model
    for key, value in project.params.values().items():
        if shaped.get(key) is not None:
            continue
        if key == "max_tokens" and shaped.get("max_completion_tokens") is not None:
            continue
        shaped[key] = copy.deepcopy(value)
    if shaped.get("stream") is True and "stream_options" not in shaped:
        shaped["stream_options"] = {"include_usage": True}  # so streamed requests are counted too
    return shaped


def merge_system(messages: list, system_prompt: str) -> list:
    """One system message first: the project prompt, then the caller's system text (if any)."""
    if not system_prompt:
        return messages
    caller = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    caller_text = "\n\n".join(text for text in (_text_of(m.get("content")) for m in caller) if text)
    content = f"{system_prompt}\n\n{caller_text}" if caller_text else system_prompt
    return [{"role": "system", "content": content}, *rest]


def shape_chat(body: dict, project: Project) -> dict:
    """A new /v1/chat/completions body with the project's prompt, params and model applied."""
    shaped = _base(body, project)
    if isinstance(shaped.get("messages"), list):
        shaped["messages"] = merge_system(shaped["messages"], project.system_prompt)
    return shaped


def shape_completion(body: dict, project: Project) -> dict:
    """A new /v1/completions body with the project's params and model applied (no prompt merge)."""
    return _base(body, project)
