"""The `slp` command: one sub-app per noun (agent, model, project), plus status, chat, doctor and version."""

from __future__ import annotations

import os

import typer

from slp.cli import agent, chat, doctor, model, project, ps, service, status, worker

app = typer.Typer(help="slp: run a local LLM and talk to it from any OpenAI client.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(agent.app, name="agent")
app.add_typer(model.app, name="model")
app.add_typer(project.app, name="project")
app.add_typer(service.app, name="service")
app.add_typer(worker.app, name="worker")
model.app.command("load")(ps.load)
model.app.command("unload")(ps.unload)
app.command("ps")(ps.ps)
app.command("status")(status.status)
app.command("version")(status.version)
app.command("chat")(chat.chat)
app.command("doctor")(doctor.doctor)


def main() -> None:
    os.umask(0o077)  # every file slp (and its engine) creates is the user's only: state, DB, logs, keys
    app()
