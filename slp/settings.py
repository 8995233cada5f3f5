"""The one Settings model, and (re-exported from slp.paths) the one place that decides where slp's files live.

Precedence (highest first): keyword arguments, `SLP_*` environment variables, the TOML config file
(`<config dir>/config.toml`), defaults. `SLP_HOME`, when set, roots every slp file (config, data,
logs, run state, models) under one folder; tests point it at a temp dir so no test touches a real home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# Where files live is decided in slp.paths (stdlib only, so the CLI can find the agent without pydantic);
# re-exported here, where every module has always looked for it.
from slp.paths import APP_NAME, ENV_PREFIX, Paths, ensure_private_dir, paths
from slp.sizes import parse_size

__all__ = ["APP_NAME", "DEFAULT_MODEL_ALIAS", "Paths", "Settings", "describe_settings_error",
           "ensure_private_dir", "paths"]

DEFAULT_MODEL_ALIAS = "slp-orchestra-mini"


class Settings(BaseSettings):
    """Everything a user can configure, as `SLP_<NAME>` or a key in config.toml."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the agent listens on.")
    port: int = Field(38540, ge=0, le=65535, description="Port the agent listens on (0 = any free port).")
    ollama_port: Optional[int] = Field(
        None, ge=0, le=65535,
        description="A second port serving the same API on `host` (Ollama's is 11434), for tools with Ollama's port "
                    "hard-coded; off when unset.")
    home: Optional[Path] = Field(None, description="Root for every slp file instead of the user dirs.")
    models_dir: Optional[Path] = Field(None, description="Where GGUF models are stored.")
    engine_bin: Optional[Path] = Field(None, description="llama-server binary to run instead of the built one.")
    model: str = Field(DEFAULT_MODEL_ALIAS, min_length=1, description="Model served when none is asked for.")

    ctx_size: int = Field(4096, ge=256, le=1 << 20, description="Context window in tokens.")
    flash_attn: bool = Field(False, description="Enable flash attention in the engine.")
    gpu_layers: Optional[int] = Field(None, ge=-1, description="Layers to offload to the GPU (None = engine default).")
    parallel: int = Field(4, ge=1, le=256, description="Engine slots serving requests at once.")
    embeddings: bool = Field(False, description="Also serve /v1/embeddings (mean pooling); costs some chat speed.")
    max_tokens: int = Field(2048, ge=-1, description="Tokens generated when a request sets no max_tokens (-1 = until the context is full).")
    threads: Optional[int] = Field(None, ge=1, description="Engine CPU threads (None = engine default).")
    poll: int = Field(0, ge=0, le=100, description="How hard idle engine threads busy-wait for work (llama.cpp --poll, "
                      "its default 50); 0 lets them sleep, leaving the CPU to the agent and its clients.")

    memory_budget: Optional[str] = Field(
        None, description="Memory the loaded engines may use together: bytes, a size such as '8GiB', or a share "
        "of this machine's RAM such as '75%' (None = 75% of RAM).")
    keep_alive: str = Field("10m", description="How long an idle engine stays loaded: a duration ('300', '90s', "
                            "'10m', '1h'), '0' = unload after each reply, '-1' = never.")
    stall_timeout: float = Field(30.0, gt=0, description="Seconds an engine with work in flight may deliver nothing "
                                 "while using no CPU before it counts as stalled and is replaced.")
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="llama.cpp RPC workers (host:port, comma-separated) the engines offload to.")
    strict: bool = Field(False, description="Refuse request fields the OpenAI API does not define (catches typos) "
                         "instead of passing them to the engine.")

    cache_ram: int = Field(256, ge=0, description="MiB of host memory each engine may keep as its prompt cache "
                           "(llama.cpp --cache-ram; 0 disables it). Counted in the memory budget.")
    prompt_cache: bool = Field(True, description="Keep each project's prompt prefix (its KV cache) on disk when "
                               "an engine stops, and restore it for the project's next request.")
    prompt_cache_size: str = Field("4GiB", description="Disk the saved prompts may use together: bytes, a size "
                                   "such as '4GiB', or a share of the disk such as '5%'; least recently used go first.")
    prompt_cache_min_tokens: int = Field(512, ge=1, description="Shortest project prefix (tokens) worth saving.")
    start_timeout: float = Field(60.0, gt=0, description="Seconds the engine may take to become healthy.")
    request_wait_timeout: float = Field(30.0, ge=0, description="Seconds a request waits for a (re)starting engine.")
    health_interval: float = Field(5.0, gt=0, description="Seconds between watchdog health probes.")
    health_timeout: float = Field(5.0, gt=0, description="A health probe slower than this counts as hung.")
    stop_grace: float = Field(5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping.")
    max_restarts: int = Field(5, ge=0, description="Crashes tolerated within restart_window before giving up.")
    restart_window: float = Field(120.0, gt=0, description="Window (s) in which crashes are counted.")
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait for a slot beyond the engine's slots.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_document_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Largest document a project accepts "
                                    "(a file added or uploaded), in bytes.")
    retrieval_share: float = Field(0.25, gt=0, le=0.9, description="Share of the context window (ctx_size) a chat "
                                   "in a project with documents may fill with their chunks.")
    api_key: Optional[SecretStr] = Field(None, description="Bearer key clients must send (required off loopback).")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra Host header names accepted besides loopback (comma-separated).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed by CORS (comma-separated; none by default).")

    @field_validator("allowed_hosts", "cors_origins", "workers", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("prompt_cache_size")
    @classmethod
    def _cache_size(cls, value: str) -> str:
        parse_size(value, 1 << 40, "prompt cache size")  # SizeError is a ValueError: one readable line
        return value

    @field_validator("home", "models_dir", "engine_bin", mode="after")
    @classmethod
    def _expand(cls, value: Optional[Path]) -> Optional[Path]:
        return value.expanduser() if value is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = paths().config_file
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @property
    def paths(self) -> Paths:
        return paths(self.home)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.paths.default_models_dir


def describe_settings_error(exc: ValidationError) -> str:
    """A bad setting in one line, the same everywhere: "invalid setting 'port': Input should be …"."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err.get("loc", ())) or "settings"
    return f"invalid setting '{field}': {err['msg']}"
