"""`slp chat`: a chat with the running agent, recorded as a project session, with commands as in
`ollama run` (/help lists them).

Reads stdin line by line, so it works at a terminal (a `> ` prompt, line editing and history through
readline) and with piped input. The agent stores each turn under `session_id`; `--resume` reloads that
history to continue it. Ctrl-C during a reply closes the stream (the engine stops generating) and returns
to the prompt; Ctrl-D or /exit leaves.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import quote

import typer

from slp.cli.client import AgentClient, CliError, run_cli

EXIT_COMMANDS = {"/exit", "/quit", "/bye"}
HELP = """Commands:
  /help                 this list
  /exit, /bye, Ctrl-D   leave (the session stays stored: slp chat --resume ID)
  /clear                forget this conversation and start a new session
  /model NAME           chat with another installed model (slp model list)
  /project NAME         switch project: its model, system prompt and defaults apply; a new session
  /system TEXT          a system message added after the project's prompt (/system alone removes it)
  /set NAME VALUE       a generation parameter for the next replies (/set alone lists them;
                        /set NAME alone goes back to the project's default)
  /show                 model, project, system message and parameters in use
  /usage                tokens and speed of the last reply, and of this chat so far
  /retry                ask again for the last reply
Multi-line input: start and end with \"\"\", or end a line with \\ to continue it.
Ctrl-C stops a reply in progress."""

# Generation parameters /set accepts: (type, lowest, highest); the project schema's bounds.
PARAMS: dict[str, tuple[type, Optional[float], Optional[float]]] = {
    "temperature": (float, 0, 2), "top_p": (float, 0, 1), "top_k": (int, 0, None), "min_p": (float, 0, 1),
    "max_tokens": (int, 1, None), "seed": (int, None, None), "presence_penalty": (float, -2, 2),
    "frequency_penalty": (float, -2, 2), "repeat_penalty": (float, 0, None), "stop": (str, None, None),
}


@dataclass
class Usage:
    """Tokens and time of one reply, or of every reply so far."""

    prompt: int = 0
    completion: int = 0
    seconds: float = 0.0

    def add(self, other: Usage) -> None:
        self.prompt, self.completion = self.prompt + other.prompt, self.completion + other.completion
        self.seconds += other.seconds

    def line(self) -> str:
        rate = f", {self.completion / self.seconds:.1f} tokens/s" if self.seconds > 0 and self.completion else ""
        return f"{self.prompt} prompt + {self.completion} completion tokens in {self.seconds:.2f} s{rate}"


@dataclass
class ChatState:
    """What the next request is built from; the commands change it."""

    project: dict
    session_id: str
    history: list = field(default_factory=list)
    model: Optional[str] = None  # /model: overrides the project's
    system: Optional[str] = None  # /system: added after the project's prompt
    params: dict = field(default_factory=dict)  # /set: override the project's defaults
    last: Optional[Usage] = None
    total: Usage = field(default_factory=Usage)

    @property
    def model_name(self) -> str:
        return self.model or self.project.get("model") or "(the agent's default)"

    def body(self, turn: list) -> dict:
        """The chat request for `turn` (the history plus the new user message)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        body = {"messages": [*system, *turn], "session_id": self.session_id, "project_id": self.project["id"],
                "stream_options": {"include_usage": True}, **self.params}
        if self.model:
            body["model"] = self.model
        return body

    def new_session(self) -> None:
        self.history, self.session_id = [], uuid.uuid4().hex[:12]


def _find_session(client: AgentClient, project: Optional[str], session_id: str) -> tuple[dict, list]:
    """The project holding `session_id` and its messages: the named project, else the active one, else any."""
    if project:
        candidates = [_get_project(client, project)]
    else:
        projects = client.request("GET", "/v1/projects")["data"]
        candidates = sorted(projects, key=lambda p: not p.get("active"))
    for candidate in candidates:
        try:
            detail = client.request("GET", f"/v1/projects/{candidate['id']}/sessions/{quote(session_id, safe='')}")
        except CliError:
            continue
        return candidate, detail["messages"]
    where = f"project '{project}'" if project else "any project"
    raise CliError(f"no session '{session_id}' in {where} (see: GET /v1/projects/<project>/sessions)")


def _get_project(client: AgentClient, name: str) -> dict:
    return client.request("GET", f"/v1/projects/{quote(name, safe='')}")


def _resolve_project(client: AgentClient, project: Optional[str]) -> dict:
    if project:
        return _get_project(client, project)
    projects = client.request("GET", "/v1/projects")["data"]
    return next((p for p in projects if p.get("active")), projects[0])


def _model_details(client: AgentClient, name: str) -> dict:
    """GET /v1/models/{name}'s details (CliError when the agent does not serve that name)."""
    return client.request("GET", f"/v1/models/{quote(name, safe='')}").get("details") or {}


def _warn_if_base(client: AgentClient, name: str) -> None:
    """Say so before chatting with a base model: it was never taught to chat, so replies ramble."""
    try:
        details = _model_details(client, name)
    except CliError:
        return
    if details.get("kind") != "base":
        return
    if details.get("chat_format") is None:  # the agent refuses its chats: say how to give it a template
        typer.secho(f"Warning: {name} is a base model without a chat template, so the agent refuses chats with "
                    f"it; choose one with `slp model template {name} chatml`, or a chat model with /model NAME.",
                    fg=typer.colors.YELLOW, err=True)
        return
    typer.secho(f"Warning: {name} is a base model (pretrained, not taught to chat): it continues text "
                "rather than answering; pick a chat model with /model NAME (slp model list shows KIND).",
                fg=typer.colors.YELLOW, err=True)


# ---------------------------------------------------------------------------------------------- input


def _read_line(interactive: bool, prompt: str) -> Optional[str]:
    """The next line of input without its newline, or None at end of input."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:
            typer.echo("")
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def read_message(read: Callable[[str], Optional[str]]) -> Optional[str]:
    """One message, which may span lines: a \"\"\" block, or lines ending in a backslash. None at end of input
    (an unfinished block is sent as it is)."""
    line = read("> ")
    if line is None:
        return None
    if line.lstrip().startswith('"""'):
        text = line.lstrip()[3:]
        if text.endswith('"""') and text:
            return text[:-3]
        parts = [text] if text else []
        while (more := read("... ")) is not None:
            if more.rstrip().endswith('"""'):
                parts.append(more.rstrip()[:-3])
                break
            parts.append(more)
        return "\n".join(parts).strip("\n")
    parts = []
    while line is not None and line.endswith("\\"):
        parts.append(line[:-1])
        line = read("... ")
    parts.append(line or "")
    return "\n".join(parts)


def _readline_history(history: list) -> None:
    """Arrow-key editing and history at a terminal; a resumed session's own messages come back with up."""
    try:
        import readline
    except ImportError:  # not on every platform: plain input() still works
        return
    for message in history:
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            readline.add_history(message["content"].replace("\n", " "))


# ---------------------------------------------------------------------------------------------- commands


def _set(state: ChatState, args: str) -> None:
    """/set NAME VALUE: parse and bound-check VALUE as the parameter's type (CliError says why not)."""
    name, _, raw = args.strip().partition(" ")
    raw = raw.strip()
    if not name:
        current = ", ".join(f"{k}={v}" for k, v in state.params.items()) or "none (the project's defaults)"
        typer.echo(f"Parameters: {', '.join(PARAMS)}. Set now: {current}")
        return
    if name not in PARAMS:
        raise CliError(f"unknown parameter '{name}'; /set takes: {', '.join(PARAMS)}")
    if not raw:
        state.params.pop(name, None)
        typer.echo(f"{name}: the project's default")
        return
    kind, low, high = PARAMS[name]
    try:
        value = kind(raw)
    except ValueError:
        raise CliError(f"{name} takes {'an integer' if kind is int else 'a number'}, not '{raw}'") from None
    if kind is not str and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = f"from {low} to {high}" if high is not None else (f"at least {low}" if low is not None else "")
        raise CliError(f"{name} must be {bounds}, not {raw}")
    state.params[name] = value
    typer.echo(f"Set {name} = {value}")


def _show(state: ChatState) -> None:
    project = state.project
    params = {**(project.get("params") or {}), **state.params}
    params.pop("keep_alive", None)
    rows = [("Model", state.model_name + ("" if state.model else " (the project's)")),
            ("Project", f"{project['name']} (id={project['id']})"),
            ("System prompt", project.get("system_prompt") or "-"),
            ("/system", state.system or "-"),
            ("Parameters", ", ".join(f"{k}={v}" for k, v in params.items()) or "the engine's defaults"),
            ("Session", f"{state.session_id} ({len(state.history)} messages)")]
    for name, value in rows:
        typer.echo(f"{name:<14} {value}")


def _usage(state: ChatState) -> None:
    if state.last is None:
        typer.echo("No reply yet.")
        return
    typer.echo(f"Last reply: {state.last.line()}")
    typer.echo(f"This chat:  {state.total.line()}")


def run_command(client: AgentClient, state: ChatState, line: str) -> Optional[str]:
    """Carry out a /command. Returns a message to send again in place of the last exchange (/retry), else
    None; CliError for a mistake."""
    name, _, args = line.strip().partition(" ")
    args = args.strip()
    if name == "/help" or name == "/?":
        typer.echo(HELP)
    elif name == "/clear":
        state.new_session()
        typer.echo(f"Cleared; new session {state.session_id}.")
    elif name == "/model":
        if not args:
            raise CliError("/model takes a model name (slp model list)")
        _model_details(client, args)
        state.model = args
        typer.echo(f"Model: {args}")
        _warn_if_base(client, args)
    elif name == "/project":
        if not args:
            raise CliError("/project takes a project name (slp project list)")
        state.project = _get_project(client, args)
        state.model, state.system, state.params = None, None, {}
        state.new_session()
        typer.echo(f"Project: {state.project['name']} (model {state.model_name}); new session {state.session_id}.")
        _warn_if_base(client, state.model_name)
    elif name == "/system":
        state.system = args or None
        typer.echo("System message set." if args else "System message removed.")
    elif name == "/set":
        _set(state, args)
    elif name == "/show":
        _show(state)
    elif name == "/usage":
        _usage(state)
    elif name == "/retry":
        if len(state.history) < 2:
            raise CliError("nothing to retry yet")
        return state.history[-2]["content"]
    else:
        raise CliError(f"unknown command '{name}'; /help lists the commands (nothing was sent)")
    return None


# ---------------------------------------------------------------------------------------------- replies


def send(client: AgentClient, state: ChatState, message: str, retry: bool = False) -> None:
    """Stream the reply to `message` (with `retry`, in place of the last exchange); on success it joins
    the history. Ctrl-C closes the stream, so the engine stops, and drops the turn, as an error does: the
    history stays as it was, so a failed /retry can be tried again."""
    turn = [*(state.history[:-2] if retry else state.history), {"role": "user", "content": message}]
    reply: list[str] = []
    usage: dict = {}
    started = time.monotonic()
    try:
        for delta in client.stream_chat(state.body(turn), usage=usage):
            reply.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        typer.echo("")
        typer.echo("(stopped; this turn is dropped)", err=True)
        return
    typer.echo("")
    state.last = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                       time.monotonic() - started)
    state.total.add(state.last)
    state.history = [*turn, {"role": "assistant", "content": "".join(reply)}]


def _error(exc: CliError) -> None:
    typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)


@run_cli
def chat(
    project: Optional[str] = typer.Option(None, "--project", help="Project name or id (default: the active one)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Session id to continue."),
) -> None:
    """Chat with the agent; /help lists the commands, /exit or end of input stops.

    Example: slp chat --project notes       (then: slp chat --resume <session id>)
    """
    client = AgentClient()
    if resume:
        target, history = _find_session(client, project, resume)
        state = ChatState(project=target, session_id=resume, history=list(history))
        typer.echo(f"Resumed session {resume} of project {target['name']} ({len(history)} messages).", err=True)
    else:
        state = ChatState(project=_resolve_project(client, project), session_id=uuid.uuid4().hex[:12])
    interactive = sys.stdin.isatty()
    if interactive:
        _readline_history(state.history)
        typer.echo(f"Chatting with {state.model_name} (project {state.project['name']}); /help for commands.",
                   err=True)
    _warn_if_base(client, state.model_name)
    failed = False
    try:
        while True:
            try:
                message = read_message(lambda prompt: _read_line(interactive, prompt))
            except KeyboardInterrupt:
                if not interactive:
                    typer.echo("")
                    break
                typer.echo("\n(Ctrl-D or /exit to leave)", err=True)
                continue
            if message is None or message.strip() in EXIT_COMMANDS:
                break
            if not message.strip():
                continue
            retry = False
            if message.lstrip().startswith("/"):
                try:
                    message = run_command(client, state, message)
                except CliError as exc:
                    _error(exc)
                    failed, message = True, None
                if message is None:
                    continue
                retry = True
            try:
                send(client, state, message, retry=retry)
            except CliError as exc:
                _error(exc)
                failed = True
    finally:
        if state.history:
            typer.echo(f"slp chat --resume {state.session_id}", err=True)
    if failed and not interactive:
        raise typer.Exit(1)
