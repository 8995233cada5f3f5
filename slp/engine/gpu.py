"""Which accelerator the engine uses, in words for `slp status`."""

from __future__ import annotations

import functools
import shutil
import subprocess
from typing import Optional


@functools.lru_cache(maxsize=1)
def nvidia_device_name() -> Optional[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def gpu_description(preset: Optional[str], gpu_layers: Optional[int]) -> str:
    """"Apple Silicon (MPS)" for Metal, the NVIDIA device name for CUDA, else "None (CPU only)"."""
    if gpu_layers == 0 or preset in (None, "cpu"):
        return "None (CPU only)"
    if preset == "metal":
        return "Apple Silicon (MPS)"
    if preset == "cuda":
        return nvidia_device_name() or "NVIDIA GPU (CUDA)"
    if preset == "vulkan":
        return nvidia_device_name() or "GPU (Vulkan)"
    return "None (CPU only)"
