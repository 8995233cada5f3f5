"""`slp project ...`: manage projects through the running agent's /v1/projects API."""

from __future__ import annotations

import json
from typing import Any, List, Optional
from urllib.parse import quote

import typer
from tabulate import tabulate

from slp.cli.client import AgentClient, CliError, run_cli

app = typer.Typer(help="Named workspaces: model, system prompt, defaults, history, usage.", no_args_is_help=True)


def _path(name: str, suffix: str = "") -> str:
    return f"/v1/projects/{quote(name, safe='')}{suffix}"


def parse_params(pairs: List[str]) -> dict[str, Any]:
    """KEY=VALUE pairs to a dict; a value is JSON when it parses (0.2, ["\\n"], true), else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--param expects KEY=VALUE, got '{pair}'")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in params.items()) or "-"


def _print_project(p: dict) -> None:
    rows = [
        ("name", p["name"] + ("  (active)" if p.get("active") else "")
         + ("  (built-in)" if p.get("is_system") else "")),
        ("id", p["id"]),
        ("model", p["model"]),
        ("description", p.get("description") or "-"),
        ("params", _params_text(p.get("params") or {})),
        ("created", p["created_at"]),
        ("updated", p["updated_at"]),
    ]
    for label, value in rows:
        typer.echo(f"{label + ':':<13} {value}")
    prompt = p.get("system_prompt") or ""
    typer.echo("system prompt:" + ("" if prompt else " -"))
    for line in prompt.splitlines():
        typer.echo(f"  {line}")


@app.command("list")
@run_cli
def list_projects(as_json: bool = typer.Option(False, "--json", help="Print the API's JSON.")) -> None:
    """List projects; the active one is marked with *.

    Example: slp project list
    """
    projects = AgentClient().request("GET", "/v1/projects")["data"]
    if as_json:
        _print_json(projects)
        return
    rows = [("*" if p.get("active") else "", p["name"], p["model"], _short(p.get("description") or ""))
            for p in projects]
    typer.echo(tabulate(rows, headers=["", "NAME", "MODEL", "DESCRIPTION"], tablefmt="simple"))


def _short(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
@run_cli
def create(
    name: str = typer.Argument(..., help="Unique name: letters, digits, '_' or '-'."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Installed model name or alias."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    description: Optional[str] = typer.Option(None, "--description", "-d", help="What the project is for."),
    param: List[str] = typer.Option([], "--param", "-p", help="Generation default KEY=VALUE (repeatable)."),
) -> None:
    """Create a project.

    Example: slp project create notes --model slp-orchestra-mini --system "Be brief." --param temperature=0.2
    """
    body: dict[str, Any] = {"name": name}
    for key, value in (("model", model), ("system_prompt", system), ("description", description)):
        if value is not None:
            body[key] = value
    if param:
        body["params"] = parse_params(param)
    project = AgentClient().request("POST", "/v1/projects", body)
    typer.echo(f"Created project {project['name']} ({project['id']}).")


@app.command()
@run_cli
def show(
    name: str = typer.Argument(..., help="Project name or id."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Show a project's settings.

    Example: slp project show notes
    """
    project = AgentClient().request("GET", _path(name))
    if as_json:
        _print_json(project)
    else:
        _print_project(project)


@app.command()
@run_cli
def update(
    name: str = typer.Argument(..., help="Project name or id."),
    new_name: Optional[str] = typer.Option(None, "--name", help="Rename the project."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Installed model name or alias."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt ('' clears it)."),
    description: Optional[str] = typer.Option(None, "--description", "-d", help="Description ('' clears it)."),
    param: List[str] = typer.Option([], "--param", "-p", help="Set a generation default KEY=VALUE (repeatable)."),
    unset_param: List[str] = typer.Option([], "--unset-param", help="Remove a generation default (repeatable)."),
) -> None:
    """Change a project; only the options given change, other params are kept.

    Example: slp project update notes --param top_p=0.9 --unset-param temperature
    """
    body: dict[str, Any] = {}
    for key, value in (("name", new_name), ("model", model), ("system_prompt", system),
                       ("description", description)):
        if value is not None:
            body[key] = value
    params: dict[str, Any] = {key: None for key in unset_param}
    params.update(parse_params(param))
    if params:
        body["params"] = params
    if not body:
        raise CliError("nothing to update; give at least one option (see: slp project update --help)")
    project = AgentClient().request("PATCH", _path(name), body)
    typer.echo(f"Updated project {project['name']}.")


@app.command()
@run_cli
def use(name: str = typer.Argument(..., help="Project name or id.")) -> None:
    """Make a project the active one: requests that name no project use it.

    Example: slp project use notes
    """
    project = AgentClient().request("POST", _path(name, "/activate"))
    typer.echo(f"Active project: {project['name']}.")


@app.command()
@run_cli
def delete(
    name: str = typer.Argument(..., help="Project name or id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a project with its history and usage.

    Example: slp project delete notes --yes
    """
    client = AgentClient()
    project = client.request("GET", _path(name))  # a typo fails before the question
    if not yes and not typer.confirm(f"Delete project '{project['name']}' with its history and usage?"):
        typer.echo("Not deleted.", err=True)
        raise typer.Exit(1)
    client.request("DELETE", _path(project["id"]))
    typer.echo(f"Deleted project {project['name']}.")


@app.command()
@run_cli
def usage(
    name: Optional[str] = typer.Argument(None, help="Project name or id (default: every project)."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Show token usage per project.

    Example: slp project usage notes
    """
    client = AgentClient()
    names = [name] if name else [p["id"] for p in client.request("GET", "/v1/projects")["data"]]
    totals = [client.request("GET", _path(n, "/usage")) for n in names]
    if as_json:
        _print_json(totals[0] if name else totals)
        return
    rows = [(u["project"], u["requests"], u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
            for u in totals]
    typer.echo(tabulate(rows, headers=["PROJECT", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"], tablefmt="simple"))
