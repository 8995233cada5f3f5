"""Which accelerator the engine uses, in words for `slp status`, and how much of its memory the engine holds."""

from __future__ import annotations

import functools
import shutil
import subprocess
from typing import Optional


def nvidia_gpus(timeout: float = 10) -> tuple[list[tuple[str, str]], Optional[str]]:
    """([(name, driver version)] of the NVIDIA GPUs nvidia-smi lists, why it could not list them)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return [], None
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi did not answer within {timeout:g}s"
    except OSError as exc:
        return [], f"nvidia-smi: {exc.strerror or exc}"
    if out.returncode != 0:
        words = (out.stdout + out.stderr).strip().splitlines()
        return [], "nvidia-smi: " + (words[0] if words else f"exit status {out.returncode}")
    gpus = []
    for line in out.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip():
            gpus.append((name.strip(), driver.strip()))
    return gpus, None


@functools.lru_cache(maxsize=1)
def nvidia_device_name() -> Optional[str]:
    gpus, _ = nvidia_gpus()
    return gpus[0][0] if gpus else None


def gpu_memory_of(pid: Optional[int]) -> Optional[int]:
    """Bytes of NVIDIA GPU memory process `pid` holds (nvidia-smi's per-process view), or None when there is
    no NVIDIA driver or the process holds none. A subprocess call: keep it off the event loop."""
    smi = shutil.which("nvidia-smi")
    if not smi or not pid:
        return None
    try:
        out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in out.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            total += int(fields[1]) * 1024 * 1024  # MiB
    return total or None


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
