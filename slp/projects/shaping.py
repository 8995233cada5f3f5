"""Apply a project to an OpenAI request body before it reaches the engine.

The caller always wins: project params only fill what the request left unset, and the caller's
system text is kept, after the project's prompt. The input body is never mutated, so the proxy
can still store the caller's own messages as the conversation history.

What a project contributes is worked out once per project object (`plan_of`), not per request: the
proxy's project cache hands out the same object until the project changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slp.projects.schema import Project

AGENT_FIELDS = ("project_id", "session_id", "retrieval")  # the agent's own: never sent to the engine


@dataclass(frozen=True, slots=True)
class Plan:
    """A project's part in every request: its params (keep_alive apart), its keep-alive in seconds, and
    whether its chats are given its documents (retrieval on and documents there: a project without them
    pays nothing per request, not even a query)."""

    params: dict[str, Any]  # set params, keep_alive left out (it is the agent's, never the engine's)
    keep_alive: object  # seconds (None: never unload), or UNSET when the project sets none
    documents: bool = False


_plans: dict[int, tuple[Project, Plan]] = {}  # id(project) -> (that project, its plan); holds it, so ids stay unique


def plan_of(project: Project) -> Plan:
    """The project's Plan, made once per project object (projects are never edited in place: a change,
    adding or removing a document included, makes a new object, which gets its own plan)."""
    known = _plans.get(id(project))
    if known is not None and known[0] is project:
        return known[1]
    from slp.engine.pool import UNSET, parse_keep_alive  # the pool module pulls in the supervisor

    values = project.params.values()
    keep_alive = values.pop("keep_alive", None)
    plan = Plan(params=values, keep_alive=UNSET if keep_alive is None else parse_keep_alive(keep_alive),
                documents=project.retrieval and project.documents.count > 0)
    if len(_plans) >= 1024:  # projects replaced by changes are let go of now and then
        _plans.clear()
    _plans[id(project)] = (project, plan)
    return plan


def _copy(value: Any) -> Any:
    """Param values are JSON scalars or a list of strings (stop): only a list needs a new object."""
    return list(value) if type(value) is list else value


def text_of(content: Any) -> str:
    """Text of a message content: a string, or OpenAI content parts ([{"type": "text", "text": ...}])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def shape_plain(body: dict, project: Project) -> dict:
    """A new body without the agent's own fields, on the project's model unless it names one.

    Copies are shallow on purpose (this runs on every request): shaping only ever replaces top-level
    values, never edits nested ones, so the caller's objects stay as they were.
    """
    shaped = {key: value for key, value in body.items() if key not in AGENT_FIELDS}
    if not shaped.get("model"):
        shaped["model"] = project.model
    return shaped


def _base(body: dict, project: Project) -> dict:
    """`shape_plain`, with the project's params filled in where the request left them unset."""
    shaped = shape_plain(body, project)
    for key, value in plan_of(project).params.items():
        if shaped.get(key) is not None:
            continue
        if key == "max_tokens" and shaped.get("max_completion_tokens") is not None:
            continue
        shaped[key] = _copy(value)
    if shaped.get("stream") is True and not wants_usage(shaped):
        # So streamed requests are counted too; the proxy keeps the usage event from a caller that did
        # not ask for it (see added_usage).
        options = shaped.get("stream_options")
        shaped["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
            "include_usage": True}
    return shaped


def wants_usage(body: dict) -> bool:
    """Whether a request asks for a stream's usage event (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def added_usage(caller: dict, shaped: dict) -> bool:
    """Whether shaping asked the engine for a usage event the caller did not ask for."""
    return wants_usage(shaped) and not wants_usage(caller)


def merge_system(messages: list, system_prompt: str) -> list:
    """One system message first: the project prompt, then the caller's system text (if any)."""
    if not system_prompt:
        return messages
    caller = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    caller_text = "\n\n".join(text for text in (text_of(m.get("content")) for m in caller) if text)
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


# Other APIs the engine speaks: the same rules (caller wins, project prompt first), their field names.
_RESPONSES_PARAMS = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_output_tokens"}
_ANTHROPIC_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_tokens": "max_tokens",
                     "stop": "stop_sequences"}


def _fill(body: dict, project: Project, names: dict[str, str]) -> dict:
    shaped = shape_plain(body, project)
    for ours, theirs in names.items():
        value = plan_of(project).params.get(ours)
        if value is not None and shaped.get(theirs) is None:
            shaped[theirs] = [value] if theirs == "stop_sequences" and isinstance(value, str) else _copy(value)
    return shaped


def shape_responses(body: dict, project: Project) -> dict:
    """OpenAI Responses API: the project prompt goes first in `instructions`."""
    shaped = _fill(body, project, _RESPONSES_PARAMS)
    if project.system_prompt:
        caller = shaped.get("instructions")
        shaped["instructions"] = f"{project.system_prompt}\n\n{caller}" if caller else project.system_prompt
    return shaped


def shape_anthropic(body: dict, project: Project) -> dict:
    """Anthropic Messages API: the project prompt goes first in `system` (a string or text blocks)."""
    shaped = _fill(body, project, _ANTHROPIC_PARAMS)
    if project.system_prompt:
        caller = shaped.get("system")
        if isinstance(caller, list):
            shaped["system"] = [{"type": "text", "text": project.system_prompt}, *caller]
        else:
            shaped["system"] = f"{project.system_prompt}\n\n{caller}" if caller else project.system_prompt
    return shaped
