"""`slp model ...`: list, pull and remove models in the local store."""

from __future__ import annotations

import functools
import json
from typing import Callable, Optional, TypeVar

import typer
from pydantic import ValidationError
from tabulate import tabulate

from slp.models.store import InstalledModel, ModelError, ModelStore
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
    except ModelError:
        quant, params, ctx = "damaged", "?", "?"
    return [model.name, ", ".join(model.aliases) or "-", quant, params, ctx, human_bytes(model.size_bytes)]


@app.command("list")
@_one_line_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List installed models.

    Example: slp model list --json
    """
    models = _store().list()
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models], indent=2))
        return
    if not models:
        typer.echo(f"No models installed. Try: slp model pull {DEFAULT_MODEL_ALIAS}")
        return
    headers = ["NAME", "ALIASES", "QUANT", "PARAMS", "CONTEXT", "SIZE"]
    typer.echo(tabulate([_row(m) for m in models], headers=headers, tablefmt="plain"))


@app.command("pull")
@_one_line_errors
def pull(
    name_or_path: str = typer.Argument(DEFAULT_MODEL_ALIAS, metavar="NAME_OR_PATH",
                                       help="Catalog name or alias, or a path to a .gguf file."),
) -> None:
    """Download a catalog model, or copy a local .gguf file, into the store.

    Example: slp model pull slp-orchestra-mini   |   slp model pull ./my-model.Q4_K_M.gguf
    """
    model = _store().pull(name_or_path, progress=True)
    typer.echo(str(model.path))


@app.command("rm")
@_one_line_errors
def rm(
    name: str = typer.Argument(..., help="Installed model name or alias."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove an installed model from the store.

    Example: slp model rm SmolLM2-135M-Instruct-Q4_1 --yes
    """
    store = _store()
    model = store.resolve(name)
    if model is None:
        raise ModelError(f"no installed model named {name!r} in {store.root}")
    if not yes:
        typer.confirm(f"Remove {model.name} ({human_bytes(model.size_bytes)}) from {store.root}?", abort=True)
    store.remove(model.name)
    typer.echo(f"Removed {model.name}")
