"""`python -m slp.server`: the agent process itself, as `slp agent start` and the services run it.

It skips the CLI (typer, rich and every command module), so the long-lived process holds only what
serving needs. Problems the user must fix end as one line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError

from slp.lifecycle import AgentError
from slp.runstate import clear_state
from slp.server.head_start import head_start
from slp.settings import Settings, describe_settings_error, paths


def main() -> int:
    os.umask(0o077)  # as the CLI: every file the agent and its engine create is the user's only
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"Error: {describe_settings_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # an unreadable or malformed config.toml
        print(f"Error: cannot read {paths().config_file}: {exc}", file=sys.stderr)
        return 1
    head = head_start(settings)  # the engine loads while the rest of the agent is imported
    try:
        from slp.server.runner import run_foreground

        run_foreground(settings, head)
    except AgentError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        if head is not None:
            head.discard()
            clear_state(settings.paths, agent_pid=os.getpid())  # the head start's, if the agent never served
    return 0


if __name__ == "__main__":
    sys.exit(main())
