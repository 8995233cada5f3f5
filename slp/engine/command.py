"""How settings become a llama-server command line (and nothing else does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from slp.engine.process import EngineCommand
from slp.models.store import ModelStore, engine_template
from slp.settings import Settings


# Every setting engine_command reads: changing one (config reload) restarts the engine.
ENGINE_SETTINGS = ("ctx_size", "flash_attn", "gpu_layers", "parallel", "threads", "max_tokens", "embeddings", "poll",
                   "cache_ram", "prompt_cache")


def prompt_cache_dir(settings: Settings) -> Path:
    """The folder of saved project prefixes (the engine writes and reads its slot files there)."""
    return settings.paths.data_dir / "prompt-cache"


def engine_command(settings: Settings, binary: Path, model_path: Path, port: int, api_key: str,
                   alias: str, workers: Sequence[str] = (), mmproj: Optional[Path] = None) -> EngineCommand:
    """The argv for one engine: loopback only, on the agent's private port, guarded by `api_key`.

    The key travels in the environment (LLAMA_API_KEY), not argv, so other local users cannot read it
    from `ps` and bypass the agent. All slots share one KV buffer (--kv-unified) so a single long
    request can use the whole context window. `--poll 0` (our default) stops idle compute threads from
    spinning: on a small machine the spin took the cores the agent and the client needed to answer.
    `--cache-ram` bounds llama.cpp's host-memory prompt cache (8 GiB per engine by default, which grew
    under a soak and would have escaped the memory budget); the budget counts it.
    `mmproj` is a vision model's projector (`slp.models` records it beside the model).
    `workers` are llama.cpp RPC workers (host:port) that answered the pre-start check: the engine
    offloads layers to them (`--rpc`), split by their free memory.
    A model given a chat template (`slp model template`), or without one whose architecture has one known
    format (Gemma), gets llama.cpp's built-in template of that name (`--no-jinja --chat-template`: with Jinja
    on, llama-server would take the name itself as the template text), not the generic fallback it would
    answer garbage in.
    """
    argv = [str(binary), "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
            "--alias", alias, "--ctx-size", str(settings.ctx_size), "--parallel", str(settings.parallel),
            "--kv-unified", "--flash-attn", "on" if settings.flash_attn else "off",
            "--n-predict", str(settings.max_tokens), "--poll", str(settings.poll), "--cache-ram", str(settings.cache_ram),
            "--metrics", "--no-webui"]
    if settings.gpu_layers is not None:
        argv += ["--n-gpu-layers", str(settings.gpu_layers)]
    if settings.embeddings:
        argv += ["--embeddings", "--pooling", "mean"]
    if settings.threads is not None:
        argv += ["--threads", str(settings.threads)]
    if workers:
        argv += ["--rpc", ",".join(workers)]
    if mmproj is not None:
        argv += ["--mmproj", str(mmproj)]
    if settings.prompt_cache and mmproj is None:  # where the prompt cache's saves go (slp.server.prompt_cache)
        argv += ["--slot-save-path", f"{prompt_cache_dir(settings)}{os.sep}"]
    template = engine_template(ModelStore(settings.resolved_models_dir), model_path)  # chosen, else known
    if template is not None:
        argv += ["--no-jinja", "--chat-template", template]  # with Jinja on (the default) a name is a template
    env = {"LLAMA_API_KEY": api_key}
    if workers:
        # A lost worker makes llama-server abort; ggml would first attach gdb for a backtrace, which took
        # seconds here: the restart and the stream's error waited for it, and the worker was often back
        # before the next start could see it gone.
        env["GGML_NO_BACKTRACE"] = "1"
    return EngineCommand(argv=argv, env=env, log_path=settings.paths.engine_log)
