"""What the numbers were measured on: CPU, cores, memory, load, engine build, slp version, date."""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import psutil

import slp
from slp.settings import Settings


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(settings: Settings, binary: Path, build: Optional[dict], model_path: Path) -> dict:
    busy = psutil.cpu_percent(interval=0.5)  # how busy the machine was just before the run (noise)
    build = build or {}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_avg_1m_before": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_busy_pct_before": busy,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "slp_version": slp.__version__,
        "engine_binary": str(binary),
        "engine_build": {k: build.get(k) for k in ("commit", "preset", "built_at", "compiler", "version_output")
                         if build.get(k) is not None},
        "model": model_path.name,
        "model_bytes": model_path.stat().st_size,
        # llama-server's HTTP threads when --threads-http is not given (tools/server/server-http.cpp): it
        # serves that many keep-alive connections at once; more wait in its accept queue.
        "engine_http_threads": max(settings.parallel + 4, (os.cpu_count() or 1) - 1),
        "engine_settings": {"ctx_size": settings.ctx_size, "parallel": settings.parallel,
                            "flash_attn": settings.flash_attn, "threads": settings.threads,
                            "gpu_layers": settings.gpu_layers},
        "timestamp": time.time(),
    }
