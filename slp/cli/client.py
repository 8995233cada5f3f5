"""A small synchronous client for the running agent's HTTP API, for CLI commands.

Stdlib only (http.client): the CLI stays quick to start and has one error path, `CliError`,
which `run_cli` prints as a single red line. Settings (pydantic-settings) and http.client are imported
when a command needs them: `agent_paths()` finds the agent without them.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar
from urllib.parse import urlsplit

import typer

from slp.paths import Paths, configured_paths, paths
from slp.runstate import agent_url, live_state

if TYPE_CHECKING:
    import http.client

    from slp.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """A user-facing failure: printed as `Error: <message>`, exit code 1, no traceback."""


def load_settings() -> Settings:
    """Settings(), with an unreadable config file reported as a CliError (bad values stay ValidationError)."""
    from pydantic import ValidationError

    from slp.settings import Settings

    try:
        return Settings()
    except ValidationError:
        raise
    except (ValueError, OSError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise CliError(f"cannot read {paths().config_file}: {exc}") from exc


def agent_paths() -> Paths:
    """Where the agent's files are (`Settings().paths`), found without loading every setting, so asking
    whether an agent runs costs no pydantic. A config file that cannot be read is a CliError, as in
    `load_settings`; a `home` in it that is no path is left to Settings to describe."""
    try:
        return configured_paths()
    except TypeError:
        return load_settings().paths
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read {paths().config_file}: {exc}") from exc


def running_agent() -> Optional[dict]:
    """The live agent's run state (url, agent_pid, ...), or None when none runs."""
    return live_state(agent_paths())


def _is_validation_error(exc: BaseException) -> bool:
    """A bad setting (pydantic's ValidationError), checked without importing pydantic: if it is not loaded,
    nothing raised one."""
    pydantic_core = sys.modules.get("pydantic_core")
    return pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError)


def fail(message: str) -> None:
    """Print one red error line on stderr and exit 1."""
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def run_cli(fn: F) -> F:
    """Decorate a command so CliError and bad settings end as one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            fail(str(exc))
        except Exception as exc:
            if not _is_validation_error(exc):
                raise
            from slp.settings import describe_settings_error

            fail(describe_settings_error(exc))

    return wrapper  # type: ignore[return-value]


def _error_message(status: int, raw: bytes) -> str:
    """The message of an OpenAI error envelope, or a short description of an odd reply."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    text = raw.decode("utf-8", "replace").strip()[:200]
    return f"the agent answered HTTP {status}" + (f": {text}" if text else "")


class AgentClient:
    """Talks to the agent at `base_url` (default: where slp.runstate says it runs)."""

    def __init__(self, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 settings: Optional[Settings] = None, timeout: float = 60.0):
        if base_url is None or api_key is None:
            settings = settings or load_settings()
            base_url = base_url or agent_url(settings)
            if api_key is None and settings.api_key is not None:
                api_key = settings.api_key.get_secret_value()
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"invalid agent URL '{self.base_url}'")
        self._parts = parts

    def _send(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None,
              raw: Optional[tuple[bytes, str]] = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        import http.client

        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._parts.hostname, self._parts.port, timeout=timeout or self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data, headers["Content-Type"] = raw
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, self._parts.path + path, body=data, headers=headers)
            return conn, conn.getresponse()
        except (ConnectionRefusedError, socket.gaierror, ConnectionResetError) as exc:
            conn.close()
            raise CliError(f"slp agent is not running at {self.base_url}; start it with: slp agent start") from exc
        except (TimeoutError, socket.timeout) as exc:
            conn.close()
            raise CliError(f"the agent at {self.base_url} did not answer in time") from exc
        except OSError as exc:
            conn.close()
            raise CliError(f"cannot reach the agent at {self.base_url}: {exc}") from exc

    def upload(self, path: str, file_name: str, data: bytes, fields: dict[str, str], timeout: float = 600) -> dict:
        """POST `data` as the `file` part of a multipart/form-data body (with text `fields`); the JSON answered."""
        import secrets

        boundary = "slp-" + secrets.token_hex(16)
        quoted = file_name.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
                 for key, value in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, raw=(body, f"multipart/form-data; boundary={boundary}"), timeout=timeout)

    def request(self, method: str, path: str, json: Any = None, raw: Optional[tuple[bytes, str]] = None,
                timeout: Optional[float] = None) -> dict:
        """Send one request (a JSON body, or `raw` bytes and their content type); return the JSON object
        answered, or raise CliError with the agent's message."""
        conn, resp = self._send(method, path, json, timeout=timeout, raw=raw)
        try:
            raw = resp.read()
        except OSError as exc:
            raise CliError(f"the agent at {self.base_url} dropped the connection: {exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            raise CliError(_error_message(resp.status, raw))
        try:
            return _json_loads(raw) if raw else {}
        except ValueError:
            raise CliError(f"the agent answered something that is not JSON (HTTP {resp.status})") from None

    def stream_chat(self, body: dict, usage: Optional[dict] = None) -> Iterator[str]:
        """Stream a chat completion (forces stream=true); yield content deltas until [DONE]. The stream's
        `usage` (asked for with stream_options.include_usage) is copied into `usage` when given."""
        import http.client

        conn, resp = self._send("POST", "/v1/chat/completions", {**body, "stream": True}, timeout=600)
        try:
            if resp.status >= 400:
                raise CliError(_error_message(resp.status, resp.read()))
            for raw_line in resp:
                line = raw_line.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = _json_loads(data)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    raise CliError(_error_message(500, data.encode()))
                if usage is not None and isinstance(event.get("usage"), dict):
                    usage.update(event["usage"])
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
        except (TimeoutError, socket.timeout) as exc:
            raise CliError(f"the agent at {self.base_url} stopped answering") from exc
        except (http.client.HTTPException, ConnectionError) as exc:
            raise CliError(f"the agent at {self.base_url} dropped the connection: {exc}") from exc
        finally:
            conn.close()


_json_loads = json.loads  # `request` has a parameter named json
