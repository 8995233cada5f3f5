"""What engines may use together: memory (estimated before a load, measured after) and CPU threads.

Memory: a model needs its weights (the GGUF file), its KV cache (context × layers × KV heads × key and
value lengths, f16, one unified buffer for all slots) and compute buffers. The estimate is corrected by
what the engine really holds once loaded (its RSS; on GPUs the memory nvidia-smi charges it), and the
larger of the two is remembered per model file for the next load.

CPU: on a CPU build every engine's compute threads spin on the same cores; two engines decoding at
once with all cores each collapse to a fraction of one engine's speed. See `ComputeGate`.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import TYPE_CHECKING, Optional

import psutil

from slp.sizes import SizeError, parse_size

if TYPE_CHECKING:
    from slp.models.metadata import ModelMetadata
    from slp.settings import Settings

DEFAULT_SHARE = 0.75  # of the machine's RAM, when SLP_MEMORY_BUDGET is unset
COMPUTE_BUFFER_BYTES = 64 * 1024 * 1024  # llama.cpp's CPU compute buffers for small batches, and slack
# A budget that cannot be read (one line for the user); the size parsing is shared with other settings.
BudgetError = SizeError


def parse_budget(value: Optional[str], total: int) -> int:
    """Bytes from '8GiB', '6GB', '500M', '75%' (of `total`) or a plain number of bytes; None means the
    default share."""
    if value is None or str(value).strip() == "":
        return int(total * DEFAULT_SHARE)
    return parse_size(value, total, "memory budget")


def memory_budget_bytes(settings: "Settings") -> int:
    """The bytes every loaded engine may hold together (SLP_MEMORY_BUDGET, default 75% of RAM)."""
    return parse_budget(settings.memory_budget, psutil.virtual_memory().total)


def kv_cache_bytes(meta: "ModelMetadata", ctx_size: int) -> int:
    """f16 K and V for `ctx_size` tokens in every layer; a size-based guess when the GGUF lacks the shape."""
    if meta.block_count and meta.head_count_kv and meta.key_length and meta.value_length:
        per_token = meta.block_count * meta.head_count_kv * (meta.key_length + meta.value_length) * 2
        return per_token * ctx_size
    return meta.size_bytes // 2  # unknown shape: small models' caches at 4k context are about this size


def estimate_bytes(meta: "ModelMetadata", ctx_size: int, cache_ram_mib: int = 0) -> int:
    """Weights + KV cache + compute buffers + the prompt cache's limit for one engine serving `meta`."""
    return meta.size_bytes + kv_cache_bytes(meta, ctx_size) + COMPUTE_BUFFER_BYTES + cache_ram_mib * 1024 * 1024


def estimate_from_size(size_bytes: int, cache_ram_mib: int = 0) -> int:
    """`estimate_bytes` when the GGUF's metadata cannot be read: the file and half again for its KV cache."""
    return size_bytes * 3 // 2 + COMPUTE_BUFFER_BYTES + cache_ram_mib * 1024 * 1024


def cpu_cores() -> int:
    """The cores llama.cpp sizes its default thread pool by (physical cores), at least 1."""
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ComputeGate:
    """Lets engines compute at once only while their threads fit in the cores.

    An engine that is already computing admits more requests at once (they join its batch and cost no
    more threads), unless someone is waiting for the cores: then newcomers queue behind them, first come
    first served, so a busy model cannot starve another. Engines with `threads == 0` (fully offloaded to
    a GPU) are never held. `enter` blocks until admitted; `leave` must follow every admitted `enter`.
    """

    def __init__(self, cores: int):
        self.cores = cores
        self._active: dict[object, tuple[int, int]] = {}  # engine -> (requests computing, threads)
        self._waiting: deque[tuple[object, int, asyncio.Future]] = deque()
        self.waits = 0  # requests that had to wait for the cores (metrics)

    def threads_in_use(self) -> int:
        return sum(threads for _, threads in self._active.values())

    def _fits(self, engine: object, threads: int) -> bool:
        if threads == 0 or engine in self._active:
            return True
        return self.threads_in_use() + min(threads, self.cores) <= self.cores or not self._active

    def _admit(self, engine: object, threads: int) -> None:
        count, _ = self._active.get(engine, (0, min(threads, self.cores)))
        self._active[engine] = (count + 1, min(threads, self.cores))

    async def enter(self, engine: object, threads: int) -> None:
        if not self._waiting and self._fits(engine, threads):
            self._admit(engine, threads)
            return
        self.waits += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((engine, threads, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.leave(engine)  # admitted just as the waiter was cancelled: give the turn back
            else:
                self._waiting = deque(w for w in self._waiting if w[2] is not future)
                self._wake()
            raise

    def leave(self, engine: object) -> None:
        count, threads = self._active.get(engine, (0, 0))
        if count <= 1:
            self._active.pop(engine, None)
        else:
            self._active[engine] = (count - 1, threads)
        self._wake()

    def _wake(self) -> None:
        """Admit waiters in order while the first one fits (FIFO: no overtaking)."""
        while self._waiting:
            engine, threads, future = self._waiting[0]
            if future.done():
                self._waiting.popleft()
                continue
            if not self._fits(engine, threads):
                return
            self._waiting.popleft()
            self._admit(engine, threads)
            future.set_result(None)

    def snapshot(self) -> dict:
        return {"cores": self.cores, "threads_in_use": self.threads_in_use(), "waiting": len(self._waiting)}
