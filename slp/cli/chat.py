"""`slp chat`: a line-based chat with the running agent, recorded as a project session.

Reads stdin line by line, so it works at a terminal (with a `> ` prompt) and with piped input.
The agent stores each turn under `session_id`; `--resume` reloads that history to continue it.
"""

from __future__ import annotations

import sys
import uuid
from typing import Optional
from urllib.parse import quote

import typer

from slp.cli.client import AgentClient, CliError, run_cli

EXIT_COMMANDS = {"/exit", "/quit"}


def _find_session(client: AgentClient, project: Optional[str], session_id: str) -> tuple[dict, list]:
    """The project holding `session_id` and its messages: the named project, else the active one, else any."""
    if project:
        candidates = [client.request("GET", f"/v1/projects/{quote(project, safe='')}")]
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


def _resolve_project(client: AgentClient, project: Optional[str]) -> dict:
    if project:
        return client.request("GET", f"/v1/projects/{quote(project, safe='')}")
    projects = client.request("GET", "/v1/projects")["data"]
    return next((p for p in projects if p.get("active")), projects[0])


def _read_line(interactive: bool) -> Optional[str]:
    """The next line of input without its newline, or None at end of input."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


@run_cli
def chat(
    project: Optional[str] = typer.Option(None, "--project", help="Project name or id (default: the active one)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Session id to continue."),
) -> None:
    """Chat with the agent; /exit, /quit or end of input stops.

    Example: slp chat --project notes       (then: slp chat --resume <session id>)
    """
    client = AgentClient()
    if resume:
        target, history = _find_session(client, project, resume)
        session_id = resume
        typer.echo(f"Resumed session {session_id} of project {target['name']} ({len(history)} messages).", err=True)
    else:
        target, history, session_id = _resolve_project(client, project), [], uuid.uuid4().hex[:12]
    interactive = sys.stdin.isatty()
    failed = False
    try:
        while True:
            try:
                line = _read_line(interactive)
            except KeyboardInterrupt:
                typer.echo("")
                break
            if line is None or line.strip() in EXIT_COMMANDS:
                break
            if not line.strip():
                continue
            turn = [*history, {"role": "user", "content": line}]
            body = {"messages": turn, "session_id": session_id, "project_id": target["id"]}
            reply: list[str] = []
            try:
                for delta in client.stream_chat(body):
                    reply.append(delta)
                    sys.stdout.write(delta)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                typer.echo("\n(interrupted; this turn is dropped)", err=True)
                continue
            except CliError as exc:
                typer.echo("")
                typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
                failed = True
                continue
            typer.echo("")
            history = [*turn, {"role": "assistant", "content": "".join(reply)}]
    finally:
        if history:
            typer.echo(f"slp chat --resume {session_id}", err=True)
    if failed and not interactive:
        raise typer.Exit(1)
