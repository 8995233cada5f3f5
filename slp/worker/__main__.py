"""`python -m slp.worker [--host] [--port] [--device] [--threads] [--cache] [--trusted-network]`: the worker
supervisor in the foreground, as `slp worker start` detaches it and `slp service install --worker` runs it.
No CLI framework is loaded; a problem the user must fix is one line on stderr and exit status 1 (2 for
bad options)."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from slp.settings import Settings, describe_settings_error, paths
from slp.worker import TRUST_WARNING, WorkerError, WorkerSpec
from slp.worker.probe import DEFAULT_PORT


def parse(argv: list[str]) -> WorkerSpec:
    parser = argparse.ArgumentParser(prog="python -m slp.worker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cache", action="store_true")
    parser.add_argument("--trusted-network", action="store_true", help=f"allow a non-loopback --host. {TRUST_WARNING}")
    args = parser.parse_args(argv)
    return WorkerSpec(host=args.host, port=args.port, device=args.device, threads=args.threads, cache=args.cache,
                      trusted_network=args.trusted_network)


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)
    spec = parse(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"Error: {describe_settings_error(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"Error: cannot read {paths().config_file}: {exc}", file=sys.stderr)
        return 1
    from slp.worker.runner import run_foreground

    try:
        return run_foreground(spec, settings)
    except WorkerError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
