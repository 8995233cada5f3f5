"""The `slp` command: one sub-app per noun (agent, model, project), plus status, chat, doctor and version.

Commands load lazily: `COMMANDS` names each one's module and one-line help, so `slp --help` lists them
all without importing any, and running a command imports only its own module (which imports what that
command uses, when it runs). tests/test_cli_startup.py checks that each one-line help here is the one the
command itself declares.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

# Light (its checks are imported when it runs); tests/test_doctor.py expects it loaded with this module.
from slp.cli import doctor  # noqa: F401

# name: ("module:attribute", one-line help). The attribute is a command function or a sub-app (typer.Typer).
# The order is the order `slp --help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "ps": ("slp.cli.ps:ps",
           "Show the loaded models: PID, state, memory, threads, slots, queue, leases, last use, expiry."),
    "status": ("slp.cli.status:status",
               "Show the agent's server URL, model, memory, GPU and active project as a table."),
    "version": ("slp.cli.status:version", "Show slp's version and the engine build it runs."),
    "chat": ("slp.cli.chat:chat", "Chat with the agent; /help lists the commands, /exit or end of input stops."),
    "doctor": ("slp.cli.doctor:doctor",
               "Check this machine's slp setup, one line per check, with the fix for what is wrong."),
    "agent": ("slp.cli.agent:app", "Start, stop and inspect the slp agent."),
    "model": ("slp.cli.model:app", "Manage the local model store."),
    "project": ("slp.cli.project:app", "Named workspaces: model, system prompt, defaults, history, usage."),
    "service": ("slp.cli.service:app",
                "Run the agent as a user service that starts at login (systemd or launchd)."),
    "worker": ("slp.cli.worker:app",
               "Run llama.cpp RPC workers that engines can offload model layers to (see README: Workers)."),
}


def load_command(name: str) -> Any:
    """The command function or sub-app `COMMANDS[name]` points to (importing its module)."""
    module, _, attribute = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), attribute)


class _NoCoercion:
    """Typer coerces every parameter's value through a pydantic TypeAdapter, built on first use, and builds
    one for the --help flag even when --help is not given (its value is then None): that import of pydantic
    was half of a quick command's start-up. The help flag is only ever None or True, which need no
    coercion; this stands in for that adapter (tests/test_cli_startup.py notices if typer changes)."""

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        return value


class _QuickHelp:
    """Mixed into slp's commands and groups: their --help flag is parsed without building an adapter."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and getattr(option, "_runtime_param", None) is None:
            option._runtime_param = _NoCoercion()
        return option


class QuickHelpCommand(_QuickHelp, TyperCommand):
    pass


class QuickHelpGroup(_QuickHelp, TyperGroup):
    pass


def _quick_help(target: typer.Typer) -> typer.Typer:
    """Have the sub-app's commands built as QuickHelpCommand (typer registers them as TyperCommand)."""
    for info in target.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = QuickHelpCommand
    return target


class LazyCommand(TyperCommand):
    """A command known by name and one-line help only, until it runs: `slp --help` lists it as it is;
    running it builds the real click command (what `app.command()` / `app.add_typer()` would have built)
    and hands it the arguments."""

    def __init__(self, name: str, short_help: str, group: "LazyGroup") -> None:
        super().__init__(name=name, help=short_help)
        self.group = group
        self._real: Optional[Any] = None

    def real(self) -> Any:
        if self._real is None:
            from typer.main import get_command_from_info, get_group_from_info
            from typer.models import CommandInfo, TyperInfo

            target = load_command(self.name)
            # What `app.add_typer(target, name=...)` / `app.command(name)(target)` would have built.
            if isinstance(target, typer.Typer):
                info = TyperInfo(_quick_help(target), name=self.name, cls=QuickHelpGroup)
                self._real = get_group_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                 suggest_commands=self.group.suggest_commands,
                                                 rich_markup_mode=self.group.rich_markup_mode)
            else:
                info = CommandInfo(name=self.name, callback=target, cls=QuickHelpCommand)
                self._real = get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                   rich_markup_mode=self.group.rich_markup_mode)
        return self._real

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.help or ""  # the whole line, wrapped by the help formatter (click would cut it at `limit`)

    def make_context(self, info_name: Optional[str], args: list[str], parent: Any = None, **extra: Any) -> Any:
        # The group runs `cmd.make_context(...)` then `sub_ctx.command.invoke(sub_ctx)`: the real command's.
        return self.real().make_context(info_name, args, parent=parent, **extra)


class LazyGroup(QuickHelpGroup):
    """The top-level group: every command of `COMMANDS`, as a LazyCommand.

    `slp --help` is written plainly (click's formatter: usage, options, each command with its one-line
    help) instead of in rich's panels: typer's rich help imports rich, markdown-it and pygments' kin, which
    cost more than the rest of the command. Each command's own --help, and usage errors, stay rich."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, (_, short_help) in COMMANDS.items():
            self.commands[name] = LazyCommand(name, short_help, self)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            # Bare `slp`: the help on stdout, exit status 2, as typer does in rich mode (where drawing the
            # help prints it; the plain help is a string, which typer's rich error handler would drop).
            typer.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(2)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        markup, self.rich_markup_mode = self.rich_markup_mode, None  # TyperGroup: None = click's formatter
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = markup


def _no_options() -> None:
    """The group's own callback: it has no options; its commands come from LazyGroup."""


app = typer.Typer(help="slp: run a local LLM and talk to it from any OpenAI client.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=LazyGroup,
                  callback=_no_options)  # a callback makes typer build a group even with no command registered


def main() -> None:
    os.umask(0o077)  # every file slp (and its engine) creates is the user's only: state, DB, logs, keys
    app()


if __name__ == "__main__":
    main()
