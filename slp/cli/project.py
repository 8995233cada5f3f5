"""`slp project ...`: manage projects through the running agent's /v1/projects API."""

from __future__ import annotations

import json
import time
from pathlib import Path
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


def size_text(n: int) -> str:
    """Bytes for people: 812 B, 9.1 KB, 3.4 MB (powers of 1000, as `slp model` shows sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _documents_text(stats: dict) -> str:
    if not stats.get("count"):
        return "none"
    return (f"{stats['count']} ({stats['chunks']} chunks, ~{stats['tokens']:,} tokens; index "
            f"{size_text(stats['index_bytes'])})")


def _switch(value: Optional[str], option: str) -> Optional[bool]:
    """An on/off option's value (None when not given)."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise CliError(f"{option} takes on or off, got '{value}'")


def _print_project(p: dict) -> None:
    rows = [
        ("name", p["name"] + ("  (active)" if p.get("active") else "")
         + ("  (built-in)" if p.get("is_system") else "")),
        ("id", p["id"]),
        ("model", p["model"]),
        ("description", p.get("description") or "-"),
        ("params", _params_text(p.get("params") or {})),
        ("documents", _documents_text(p.get("documents") or {})),
        ("retrieval", "on" if p.get("retrieval", True) else "off"),
        ("created", p["created_at"]),
        ("updated", p["updated_at"]),
    ]
    for label, value in rows:
        typer.echo(f"{label + ':':<13} {value}")
    entries = p.get("prompt_cache") or []
    typer.echo("prompt cache:" + ("" if entries else " -"))
    for e in entries:
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["saved_at"])) if e.get("saved_at") else "?"
        typer.echo(f"  {e.get('model')}: {e.get('prefix_tokens') or 0:,} prefix tokens ({e.get('tokens') or 0:,} "
                   f"in all), {size_text(e.get('bytes') or 0)}, saved {saved}")
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
    retrieval: Optional[str] = typer.Option(None, "--retrieval", help="on (default) or off: give chats the "
                                            "project's documents."),
) -> None:
    """Create a project.

    Example: slp project create notes --model slp-orchestra-mini --system "Be brief." --param temperature=0.2
    """
    body: dict[str, Any] = {"name": name}
    if retrieval is not None:
        body["retrieval"] = _switch(retrieval, "--retrieval")
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
    retrieval: Optional[str] = typer.Option(None, "--retrieval", help="on or off: give chats the project's "
                                            "documents."),
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
    if retrieval is not None:
        body["retrieval"] = _switch(retrieval, "--retrieval")
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


cache_app = typer.Typer(help="The project's prompt prefix saved on disk (restored after unloads and restarts).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
@run_cli
def cache_clear(name: str = typer.Argument(..., help="Project name or id.")) -> None:
    """Delete the project's saved prompt prefixes: its next request after an engine start computes it again.

    Example: slp project cache clear notes
    """
    cleared = AgentClient().request("DELETE", _path(name, "/prompt-cache"))
    typer.echo(f"Deleted {cleared['deleted']} saved prefix(es), {size_text(cleared['bytes'])}.")


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


# ----------------------------------------------------------------------------- documents

PROJECT_OPTION = typer.Option(None, "--project", "-P", help="Project name or id (default: the active project).")


def _target(client: AgentClient, project: Optional[str]) -> dict:
    """The project a documents command works on: the one named, else the active one."""
    if project:
        return client.request("GET", _path(project))
    return next(p for p in client.request("GET", "/v1/projects")["data"] if p.get("active"))


@app.command("add-doc")
@run_cli
def add_doc(
    paths: List[Path] = typer.Argument(..., help="Files or folders (a folder is walked: hidden, .gitignore'd and "
                                                "binary files are skipped)."),
    project: Optional[str] = PROJECT_OPTION,
) -> None:
    """Add documents to a project: text, Markdown, HTML, PDF, source code. Its chats then answer from them.

    A file added again replaces its old chunks when it changed; the same content is stored once.
    Example: slp project add-doc --project notes manual.pdf ~/notes/
    """
    from slp.projects.files import walk

    client = AgentClient()
    target = _target(client, project)
    try:
        found = walk(paths)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if not found.files:
        raise CliError("no documents to add" + (f" ({len(found.skipped)} files skipped: hidden, ignored or binary)"
                                                if found.skipped else ""))
    counts = {"added": 0, "replaced": 0, "unchanged": 0}
    failures: list[str] = []
    with _Progress(found.files) as advance:
        for path in found.files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                failures.append(f"cannot read {path}: {exc.strerror or exc}")
                advance(path)
                continue
            try:
                added = client.upload(_path(target["id"], "/documents"), path.name, data,
                                      {"source": str(path.resolve())})
                counts[added["status"]] += 1
            except CliError as exc:
                failures.append(str(exc))
            advance(path)
    done = sum(counts.values())
    if done or len(found.files) > 1:
        summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "nothing added"
        skipped = f"; skipped {len(found.skipped)} (hidden, ignored or binary)" if found.skipped else ""
        typer.echo(f"Project {target['name']}: {summary}{skipped}.")
    for failure in failures:
        typer.secho(f"Error: {failure}", fg=typer.colors.RED, err=True)
    if failures:
        raise typer.Exit(1)


class _Progress:
    """A rich progress bar over the files of a long add (several files, or over a megabyte), on a terminal;
    calling it with (path, bytes) advances it. Rich is imported only when a bar is drawn."""

    def __init__(self, files: list[Path]):
        self.sizes = {path: _size_of(path) for path in files}
        self.bar: Any = None

    def __enter__(self):
        import sys

        total = sum(self.sizes.values())
        if sys.stderr.isatty() and (len(self.sizes) > 1 or total > 1_000_000):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("adding", total=len(self.sizes))
        return self.advance

    def advance(self, path: Path) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=_short(path.name, 30))

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@app.command("docs")
@run_cli
def docs(
    project: Optional[str] = PROJECT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """List a project's documents.

    Example: slp project docs --project notes
    """
    client = AgentClient()
    target = _target(client, project)
    documents = client.request("GET", _path(target["id"], "/documents"))["data"]
    if as_json:
        _print_json(documents)
        return
    rows = [(d["name"], d["format"], d.get("pages") or "-", d["chunks"], d["tokens"], size_text(d["bytes"]),
             d["id"][:12]) for d in documents]
    typer.echo(tabulate(rows, headers=["NAME", "FORMAT", "PAGES", "CHUNKS", "TOKENS", "SIZE", "ID"],
                        tablefmt="simple"))


@app.command("rm-doc")
@run_cli
def rm_doc(
    documents: List[str] = typer.Argument(..., help="Document ids, names or sources."),
    project: Optional[str] = PROJECT_OPTION,
) -> None:
    """Remove documents (and their chunks) from a project.

    Example: slp project rm-doc --project notes manual.pdf
    """
    client = AgentClient()
    target = _target(client, project)
    for document in documents:
        found = client.request("GET", _path(target["id"], "/documents/" + quote(document, safe="")))
        client.request("DELETE", _path(target["id"], "/documents/" + found["id"]))
        typer.echo(f"Removed {found['name']} from project {target['name']}.")


@app.command("search")
@run_cli
def search(
    query: str = typer.Argument(..., help="What to look for."),
    project: Optional[str] = PROJECT_OPTION,
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=50, help="How many chunks to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Search a project's documents: the chunks a chat would be given, best first.

    Example: slp project search "bilge pump service interval" --project boat
    """
    client = AgentClient()
    target = _target(client, project)
    hits = client.request("POST", _path(target["id"], "/search"), {"query": query, "top_k": top_k})["data"]
    if as_json:
        _print_json(hits)
        return
    if not hits:
        typer.echo("No matches.")
    for number, hit in enumerate(hits, start=1):
        where = f"page {hit['page']}, " if hit.get("page") is not None else ""
        typer.echo(f"{number}. {hit['name']} ({where}chars {hit['start']}-{hit['end']}, score {hit['score']:.2f})")
        typer.echo(f"   {_short(hit['text'], 200)}")
