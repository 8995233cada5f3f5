"""What a GGUF file says about itself: the facts slp shows and sizes engines by, from its header
(`gguf_header`, which steps over the vocabulary that gguf's own reader spends seconds on).

`cached_metadata` remembers results per (path, mtime, size), in memory and in a sidecar file, so the
agent's status and model-list calls cost a `stat()`. The agent parses in a child process
(`isolate_parsing`), so gguf and numpy (about 20 MB) never stay resident in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from slp.models.errors import ModelError

if TYPE_CHECKING:
    from slp.models.gguf_header import Header


@dataclass(frozen=True)
class ModelMetadata:
    """The facts users and the engine care about; every field is JSON-friendly."""

    architecture: str
    name: Optional[str]
    quantization: str
    context_length: Optional[int]
    parameters: int
    size_bytes: int
    size_label: Optional[str]
    # What the KV cache costs per token of context (the memory budget's estimate); None when unknown.
    block_count: Optional[int] = None
    head_count_kv: Optional[int] = None
    key_length: Optional[int] = None
    value_length: Optional[int] = None
    chat_template: bool = False  # tokenizer.chat_template is set (else the engine falls back to a generic one)
    license: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kind(self) -> str:
        """`chat` when the file carries a chat template, else `base`: a pretrained model for text
        completion, which in a chat would get llama.cpp's generic template and answer in its tokens."""
        return "chat" if self.chat_template else "base"


# llama.cpp's built-in named templates (`--chat-template NAME`) for architectures whose every model uses
# one format: a base model of these gets its family's turn markers instead of the generic (ChatML) fallback.
BUILTIN_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}


def builtin_template(path: Union[os.PathLike, str]) -> Optional[str]:
    """The built-in template to pass the engine for a model without its own (None: it has one, its
    architecture has no single known format, or the file cannot be read; the engine then decides)."""
    own, architecture = template_facts(path)
    return None if own else BUILTIN_TEMPLATES.get(architecture or "")


_template_facts: dict[str, tuple[int, int, bool, Optional[str]]] = {}  # path -> (mtime_ns, size, own, architecture)


def template_facts(path: Union[os.PathLike, str]) -> tuple[bool, Optional[str]]:
    """(the file carries a chat template, its architecture), from the key/values alone: milliseconds, and
    no gguf or numpy in the agent; remembered per file version, so the proxy's model lookup pays a stat.
    A file that cannot be read says (True, None): the engine's own failure will say why, not a chat refusal."""
    from slp.models.gguf_header import read_header

    key = str(path)
    try:
        st = os.stat(path)
        known = _template_facts.get(key)
        if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
            return known[2], known[3]
        fields = read_header(path, tensors=False).fields
    except (OSError, ValueError):
        return True, None
    architecture = fields.get("general.architecture")
    facts = ("tokenizer.chat_template" in fields, architecture if isinstance(architecture, str) else None)
    if len(_template_facts) > 256:
        _template_facts.clear()
    _template_facts[key] = (st.st_mtime_ns, st.st_size, *facts)
    return facts


def chat_format(setting: Optional[str], own: bool, architecture: Optional[str]) -> Optional[str]:
    """What formats a chat with this model: the built-in template chosen for it (`slp model template`),
    else "own" (the template in its file), else its architecture's built-in one; None when there is none
    (the agent refuses chats with it rather than let llama.cpp fall back to ChatML the model never saw)."""
    if setting is not None:
        return setting
    return "own" if own else BUILTIN_TEMPLATES.get(architecture or "")


def _quantization(header: "Header") -> str:
    """llama.cpp's name for general.file_type (3 -> Q4_1), else the most common tensor type."""
    import gguf

    file_type = header.fields.get("general.file_type")
    if isinstance(file_type, int):
        try:
            member = gguf.LlamaFileType(file_type)
        except ValueError:
            member = None
        if member is not None and member is not gguf.LlamaFileType.GUESSED:
            return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    counts = Counter(t.type.name for t in header.tensors)
    return counts.most_common(1)[0][0] if counts else "unknown"


def read_metadata(path: Union[os.PathLike, str]) -> ModelMetadata:
    """Parse `path` as GGUF; anything that is not a complete GGUF file raises ModelError."""
    from slp.models.gguf_header import read_header

    path = Path(path)
    try:
        size = path.stat().st_size
        header = read_header(path)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ModelError(f"{path} is not a valid GGUF model: {exc}") from None
    field = header.fields.get
    architecture = field("general.architecture")
    if not isinstance(architecture, str):
        raise ModelError(f"{path} is not a valid GGUF model: it has no general.architecture")
    context = field(f"{architecture}.context_length")
    heads = field(f"{architecture}.attention.head_count")
    heads_kv = field(f"{architecture}.attention.head_count_kv")
    if isinstance(heads_kv, list):  # per-layer counts in some architectures
        heads_kv = max(heads_kv) if heads_kv else None
    if isinstance(heads, list):
        heads = max(heads) if heads else None
    embedding = field(f"{architecture}.embedding_length")
    head_dim = int(embedding) // int(heads) if embedding and heads else None
    key_length = field(f"{architecture}.attention.key_length") or head_dim
    value_length = field(f"{architecture}.attention.value_length") or head_dim
    blocks = field(f"{architecture}.block_count")
    return ModelMetadata(
        architecture=architecture,
        name=field("general.name"),
        quantization=_quantization(header),
        context_length=int(context) if context is not None else None,
        parameters=sum(t.n_elements for t in header.tensors),
        size_bytes=size,
        size_label=field("general.size_label"),
        block_count=int(blocks) if blocks is not None else None,
        head_count_kv=int(heads_kv if heads_kv is not None else heads) if (heads_kv or heads) else None,
        key_length=int(key_length) if key_length else None,
        value_length=int(value_length) if value_length else None,
        chat_template="tokenizer.chat_template" in header.fields,
        license=field("general.license"),
    )


def read_metadata_isolated(path: Union[os.PathLike, str]) -> ModelMetadata:
    """`read_metadata` in a child process (`python -m slp.models.metadata PATH`)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "slp.models.metadata", str(path)], capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelError(f"cannot read {path}: the metadata reader failed ({exc})") from None
    if proc.returncode == 0:
        return ModelMetadata(**json.loads(proc.stdout))
    lines = proc.stderr.strip().splitlines()
    raise ModelError(lines[-1] if lines else f"cannot read {path}: the metadata reader exited {proc.returncode}")


def metadata_sidecar(path: Path) -> Path:
    """Where a model's parsed metadata is kept beside it (a dot file: the store never lists it)."""
    return path.with_name(f".{path.name}.meta.json")


_parse: Callable[[Union[os.PathLike, str]], ModelMetadata] = read_metadata


def isolate_parsing() -> None:
    """From now on parse in a child process (the agent calls this; short-lived commands need not)."""
    global _parse
    _parse = read_metadata_isolated


SIDECAR_FORMAT = 3  # bumped when ModelMetadata gains fields, so older sidecars are parsed again

_cache: dict[tuple[str, int, int], Union[ModelMetadata, ModelError]] = {}
_file_locks: dict[str, threading.Lock] = {}  # one per model file: a parse blocks only lookups of that file
_locks_lock = threading.Lock()


def _load_sidecar(sidecar: Path, version: list[int]) -> Optional[ModelMetadata]:
    try:
        saved = json.loads(sidecar.read_text())
        if saved.get("version") == version:
            return ModelMetadata(**saved["metadata"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _save_sidecar(target: Path, version: list[int], meta: ModelMetadata) -> None:
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": version, "metadata": meta.to_dict()}))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only store just parses again next time


def cached_metadata(path: Union[os.PathLike, str], sidecar: Optional[Path] = None) -> ModelMetadata:
    """`read_metadata`, remembered (errors too) until the file's mtime or size changes.

    `sidecar` is where the result is kept on disk (default: a dot file beside the model; the store
    passes its own folder for files it does not own, so slp writes nothing into the user's folders).

    A result is also kept on disk beside the model, so each file version is parsed once per machine
    (the agent parses in a child process, which costs more than the parse).
    Concurrent callers for one file wait for one parse instead of each doing their own; other files'
    lookups do not wait on it.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    version = [st.st_mtime_ns, st.st_size, SIDECAR_FORMAT]
    sidecar = sidecar if sidecar is not None else metadata_sidecar(path)
    with _locks_lock:
        file_lock = _file_locks.setdefault(key[0], threading.Lock())
    with file_lock:
        hit = _cache.get(key)
        if hit is None:
            hit = _load_sidecar(sidecar, version)
            if hit is None:
                try:
                    hit = _parse(path)
                    _save_sidecar(sidecar, version, hit)
                except ModelError as exc:
                    hit = exc
            for old in [k for k in _cache if k[0] == key[0]]:
                del _cache[old]
            _cache[key] = hit
    if isinstance(hit, ModelError):
        raise ModelError(str(hit))
    return hit


if __name__ == "__main__":
    try:
        print(json.dumps(read_metadata(sys.argv[1]).to_dict()))
    except ModelError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
