"""llama.cpp's built-in chat templates by name: what `slp model template` accepts for a model whose file has
no chat template (a base model) or one that does not suit, and the engine is given as `--chat-template NAME`.

The names are the pinned llama.cpp's (src/llama-chat.cpp, LLM_CHAT_TEMPLATES at the commit in
vendor/llama.cpp.lock): checked here so a misspelt name is one line at the command line, not an engine that
silently formats chats some other way.
"""

from __future__ import annotations

from typing import Optional

from slp.models.errors import ModelError

NAMES = (
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1", "mistral-v3",
    "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr", "monarch",
    "gemma", "orion", "openchat", "vicuna", "vicuna-orca", "deepseek", "deepseek2", "deepseek3", "deepseek-ocr",
    "command-r", "llama3", "chatglm3", "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "exaone-moe",
    "rwkv-world", "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex", "bailing",
    "bailing-think", "bailing2", "llama4", "smolvlm", "hunyuan-moe", "gpt-oss", "hunyuan-dense", "hunyuan-vl",
    "kimi-k2", "seed_oss", "grok-2", "pangu-embedded", "solar-open",
)

CLEAR = "none"  # `slp model template NAME none`: back to the file's own template (or none)


def checked_template(name: str) -> Optional[str]:
    """`name` if llama.cpp knows it, None for `none` (remove the setting); anything else raises ModelError."""
    if name == CLEAR:
        return None
    if name not in NAMES:
        raise ModelError(f"unknown chat template {name!r}: use one of llama.cpp's built-in templates "
                         f"({', '.join(NAMES)}), or {CLEAR} to remove the setting")
    return name
