"""`python -m slp.server`: the agent process itself, as `slp agent start` and the services run it.

It skips the CLI (typer, rich and every command module), so the long-lived process holds only what
serving needs. Problems the user must fix end as one line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import sys

from slp.server.head_plan import spawn_planned


def main() -> int:
    """`--no-fetch` (the CLI's `slp agent start`): a model that is not installed ends the start with status
    MODEL_NOT_INSTALLED, so the CLI fetches it with a progress bar; otherwise the agent fetches it itself."""
    os.umask(0o077)  # as the CLI: every file the agent and its engine create is the user's only
    planned = spawn_planned()  # the last start's engine, before any import that is not stdlib
    from pydantic import ValidationError

    from slp.lifecycle import MODEL_NOT_INSTALLED, AgentError
    from slp.runstate import clear_state
    from slp.server.head_start import head_start
    from slp.settings import Settings, describe_settings_error, paths

    try:
        settings = Settings()
    except ValidationError as exc:
        if planned is not None:
            planned.kill()
        print(f"Error: {describe_settings_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # an unreadable or malformed config.toml
        if planned is not None:
            planned.kill()
        print(f"Error: cannot read {paths().config_file}: {exc}", file=sys.stderr)
        return 1
    head = head_start(settings, planned)  # the engine loads while the rest of the agent is imported
    try:
        from slp.server.runner import ModelNotInstalled, run_foreground

        run_foreground(settings, head, fetch="--no-fetch" not in sys.argv[1:])
    except ModelNotInstalled as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return MODEL_NOT_INSTALLED
    except AgentError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        if head is not None:
            head.discard()
            clear_state(settings.paths, agent_pid=os.getpid())  # the head start's, if the agent never served
    return 0


def exit_now(code: int) -> None:
    """Exit once the agent has stopped and written what it had to: the interpreter's own teardown (every
    module and object of a long-lived process) took a quarter of a second that `slp agent stop` waited for."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
