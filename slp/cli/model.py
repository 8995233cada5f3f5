"""`slp model ...`: list, pull (catalog, Hugging Face, a file), add in place, scan, show, choose a chat template
for, and remove models."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from pydantic import ValidationError
from tabulate import tabulate

from slp.cli.progress import Bars
from slp.cli.ps import load, unload
from slp.models.errors import ModelError
from slp.models.store import InstalledModel, ModelStore
from slp.settings import DEFAULT_MODEL_ALIAS, Settings

app = typer.Typer(help="Manage the local model store.", no_args_is_help=True)

F = TypeVar("F", bound=Callable)


def _one_line_errors(func: F) -> F:
    """Turn user mistakes into `Error: ...` on stderr and exit status 1 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ModelError as exc:
            message = str(exc)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            message = f"invalid settings: {details}"
        except OSError as exc:
            message = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
        except ValueError as exc:  # e.g. an unreadable SLP_MEMORY_BUDGET
            message = str(exc)
        except KeyboardInterrupt:
            typer.echo("Interrupted: nothing was added to the store; run the same command again to resume.",
                       err=True)
            raise typer.Exit(130)
        typer.echo(f"Error: {' '.join(message.split())}", err=True)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def _store() -> ModelStore:
    return ModelStore(Settings().resolved_models_dir)


def human_count(n: Optional[int]) -> str:
    """135_000_000 -> '135M' (the way model sizes are usually named)."""
    if n is None:
        return "?"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """98_362_432 -> '98.4 MB' (decimal units, like the download bar)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _row(model: InstalledModel) -> list[str]:
    try:
        meta = model.metadata
        quant, params, ctx = meta.quantization, human_count(meta.parameters), str(meta.context_length or "?")
        kind = meta.kind
    except ModelError:
        quant, params, ctx, kind = "missing" if model.missing else "damaged", "?", "?", "?"
    return [model.name, ", ".join(model.aliases) or "-", kind, quant, params, ctx, human_bytes(model.size_bytes),
            _source(model)]


def _kind_line(kind: Optional[str]) -> str:
    """`slp model show`'s Kind row: a base model says what that means for a chat."""
    if kind == "base":
        return "base (pretrained, no chat template: text completion; chats use a built-in template if known)"
    return kind or "?"


def _chat_line(facts: dict) -> str:
    """`slp model show`'s Chat row: what formats a chat with it, and where that choice comes from."""
    used = facts["chat_format"]
    if facts["template"] is not None:
        return f"{used} (built-in template chosen with slp model template)"
    if used == "own":
        return "its own template"
    if used is not None:
        return f"{used} (llama.cpp's built-in template for {facts['architecture']})"
    if facts["error"]:
        return "?"
    return f"refused (no template; choose one: slp model template {facts['name']} chatml)"


def _source(model: InstalledModel) -> str:
    if model.source == "file":
        return f"in place: {model.path}"
    return model.source


@app.command("list")
@_one_line_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List installed models.

    Example: slp model list --json
    """
    models = _store().list(include_missing=True)
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models], indent=2))
        return
    if not models:
        typer.echo(f"No models installed. Try: slp model pull {DEFAULT_MODEL_ALIAS}")
        return
    headers = ["NAME", "ALIASES", "KIND", "QUANT", "PARAMS", "CONTEXT", "SIZE", "SOURCE"]
    typer.echo(tabulate([_row(m) for m in models], headers=headers, tablefmt="plain"))


@app.command("pull")
@_one_line_errors
def pull(
    name_or_path: str = typer.Argument(DEFAULT_MODEL_ALIAS, metavar="NAME_OR_PATH",
                                       help="hf:OWNER/REPO[:QUANT], hf:OWNER/REPO/FILE.gguf[@REVISION], "
                                            "a catalog name or alias, or a path to a .gguf file (copied)."),
    name: Optional[str] = typer.Option(None, "--name", help="Install a Hugging Face model under this name."),
) -> None:
    """Download a model from Hugging Face or the catalog, or copy a local .gguf file, into the store.

    Without a file or quantization, a Hugging Face pull picks the best one that fits the memory budget
    (SLP_MEMORY_BUDGET) and says which. Interrupted pulls resume when run again.

    Example: slp model pull hf:bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
    """
    store = _store()
    if name_or_path.startswith("hf:"):
        from slp.engine.budget import memory_budget_bytes
        from slp.models import hub

        the_plan = hub.plan(name_or_path, memory_budget_bytes(Settings()))
        typer.echo(f"{the_plan.ref.repo}: {the_plan.note}", err=True)
        with Bars() as bars:
            model = hub.pull(store, the_plan, name=name, progress=bars)
        typer.echo(f"Installed {model.name} ({human_bytes(model.size_bytes)})", err=True)
    else:
        if name is not None:
            raise ModelError("--name applies to hf: pulls; a copied file keeps its file name")
        with Bars() as bars:
            model = store.pull(name_or_path, progress=bars)
    typer.echo(str(model.path))


@app.command("add")
@_one_line_errors
def add(
    path: Path = typer.Argument(..., help="A .gguf file (a split model's first part)."),
    name: Optional[str] = typer.Option(None, "--name", help="The model's name (default: from the file name)."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Its vision projector (found beside it "
                                                                  "when alone in its folder)."),
) -> None:
    """Register a GGUF file where it is, without copying it. `slp model rm` never deletes it.

    Example: slp model add ~/.lmstudio/models/lmstudio-community/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf
    """
    with Bars() as bars:
        model = _store().add(path, name=name, mmproj=mmproj, progress=bars)
    typer.echo(f"Added {model.name}: {model.path}" + (f" (projector {model.mmproj})" if model.mmproj else ""))


@app.command("scan")
@_one_line_errors
def scan(
    folders: Optional[list[Path]] = typer.Argument(None, help="Folders to search (default: the Hugging Face "
                                                              "cache, LM Studio's models, llama.cpp's cache)."),
    add_all: bool = typer.Option(False, "--add", help="Register every model found that is not yet known."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find GGUF models on disk and list what `slp model add` would register (nothing is copied).

    Example: slp model scan   |   slp model scan ~/models --add
    """
    from slp.models.scan import scan as find, usual_places

    store = _store()
    places = list(folders) if folders else usual_places()
    found = find(store, places)
    if as_json:
        typer.echo(json.dumps([{"path": str(f.path), "name": f.name, "size_bytes": f.size,
                                "installed_as": f.known_as} for f in found], indent=2))
    elif not found:
        typer.echo("No GGUF models found in " + (", ".join(map(str, places)) or "the usual places (none exist)"))
    else:
        rows = [[f.name, human_bytes(f.size), f.known_as and f"installed as {f.known_as}" or "would add",
                 str(f.path)] for f in found]
        typer.echo(tabulate(rows, headers=["NAME", "SIZE", "STATUS", "PATH"], tablefmt="plain"))
    if add_all:
        for f in found:
            if f.known_as is None:
                try:
                    model = store.add(f.path, name=f.name)
                    typer.echo(f"Added {model.name}")
                except ModelError as exc:
                    typer.echo(f"Skipped {f.path}: {exc}", err=True)


@app.command("show")
@_one_line_errors
def show(
    name: str = typer.Argument(..., help="Installed model name or alias."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """What a model is: architecture, parameters, quantization, context, chat template, license,
    files, source and sha256.

    Example: slp model show slp-orchestra-mini --json
    """
    store = _store()
    model = store.resolve(name, include_missing=True)
    if model is None:
        raise ModelError(f"no installed model named {name!r} in {store.root}")
    facts = model.facts()
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    rows = [["Name", model.name], ["Aliases", ", ".join(model.aliases) or "-"], ["Source", _source(model)]]
    if facts["error"]:
        rows.append(["Problem", facts["error"]])
    if facts["purpose"]:
        rows.append(["For", facts["purpose"]])
    rows += [["Architecture", facts["architecture"] or "?"], ["Parameters", human_count(facts["parameters"])],
             ["Quantization", facts["quantization"] or "?"], ["Context length", facts["context_length"] or "?"],
             ["Chat template", {True: "yes", False: "no", None: "?"}[facts["chat_template"]]],
             ["Kind", _kind_line(facts["kind"])], ["Chat", _chat_line(facts)],
             ["License", facts["license"] or "-"], ["Size", human_bytes(model.size_bytes)]]
    for f in facts["files"]:
        state = "" if f["exists"] else " (missing)"
        rows.append([f"File ({f['role']})", f"{f['path']}{state}"])
        rows.append(["sha256", f["sha256"] or "not recorded"])
    typer.echo(tabulate(rows, tablefmt="plain"))


@app.command("rm")
@_one_line_errors
def rm(
    name: str = typer.Argument(..., help="Installed model name or alias."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove a model from the store. A file added in place is only forgotten, never deleted.

    Example: slp model rm SmolLM2-135M-Instruct-Q4_1 --yes
    """
    store = _store()
    model = store.resolve(name, include_missing=True)
    if model is None:
        raise ModelError(f"no installed model named {name!r} in {store.root}")
    owned = any(f.owned for f in model.files)
    if not yes:
        what = f"Remove {model.name} ({human_bytes(model.size_bytes)})" if owned else f"Forget {model.name}"
        typer.confirm(f"{what}?", abort=True)
    store.remove(model.name)
    typer.echo(f"Removed {model.name}" + ("" if owned else f" (its file stays: {model.path})"))


@app.command("template")
@_one_line_errors
def template(
    name: str = typer.Argument(..., help="Installed model name or alias."),
    chosen: Optional[str] = typer.Argument(None, metavar="TEMPLATE",
                                           help="One of llama.cpp's built-in templates (chatml, llama3, gemma, "
                                                "mistral-v7, phi3, zephyr, ...), or none to remove the choice. "
                                                "Without it: show the choice and the names."),
) -> None:
    """Choose the chat template a model's engine formats chats with: for a base model without one (chats
    with it are refused until it has one), or a model whose own does not suit. It takes precedence over
    the file's own template; a running agent unloads the model so its next request starts with it.

    Example: slp model template my-base-model chatml   |   slp model template my-base-model none
    """
    from slp.models.templates import NAMES

    store = _store()
    if chosen is None:
        model = store.resolve(name, include_missing=True)
        if model is None:
            raise ModelError(f"no installed model named {name!r} in {store.root}")
        typer.echo(f"{model.name}: {model.template or 'no template chosen'}")
        typer.echo(f"llama.cpp's built-in templates: {', '.join(NAMES)}")
        return
    model = store.set_template(name, chosen)
    typer.echo(f"{model.name}: chats use {model.template}" if model.template else
               f"{model.name}: no template chosen (chats use its own, or its architecture's, or are refused)")
    _restart_in_agent(model.name)


def _restart_in_agent(name: str) -> None:
    """Unload the model in a running agent, so its next request starts an engine with the new template."""
    from slp.cli.client import AgentClient, CliError, load_settings, running_agent

    state = running_agent()
    if not state:
        return
    try:
        result = AgentClient(state["url"], settings=load_settings()).request("POST", f"/v1/models/{name}/unload")
    except CliError as exc:
        typer.echo(f"Warning: the agent did not unload {name} ({exc}); run: slp model unload {name}", err=True)
        return
    if result.get("unloaded"):
        typer.echo(f"Unloaded {name} in the agent: its next request starts it with the new template.", err=True)


# `slp model load|unload` talk to the running agent; they live with `slp ps`, which shows what they change.
app.command("load")(load)
app.command("unload")(unload)
