"""What this CPU can execute: the instruction-set features a native engine build depends on.

A `cpu` (or `cuda`, `vulkan`) build compiles llama.cpp's CPU backend with `-march=native`, so the binary
uses every feature of the machine that built it. Run on a CPU without one of them it dies by SIGILL; so
build.py keys its cache by these features and records them, and slp picks (and `slp doctor` checks) a
build whose features this CPU has.

Standard library only: build.py loads this file by path before slp is installed.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

# x86 flags from /proc/cpuinfo that name instructions a compiler may emit under -march=native (the rest
# of that line is about the platform: caches, power, virtualisation, mitigations).
_X86_ISA = re.compile(r"^(sse\w*|ssse3|pni|avx\w*|amx\w*|fma\w*|f16c|bmi\d|abm|lzcnt|popcnt|movbe|aes|vaes|"
                      r"pclmulqdq|vpclmulqdq|gfni|sha_ni|adx|rdrand|rdseed|cx16|xsave\w*|clflushopt|clwb|"
                      r"rdpid|movdir\w*|serialize|waitpkg|cldemote|prefetchw|3dnowprefetch|sse4a|xop|tbm)$")


def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", name] if name == "hw.optional" else ["sysctl", "-n", name],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The sorted ISA features of this CPU (lower case, /proc/cpuinfo's names on Linux)."""
    if sys.platform.startswith("linux"):
        text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":  # x86
                return sorted({f for f in value.split() if _X86_ISA.match(f)})
            if key.strip() == "Features":  # ARM: every entry is an ISA feature
                return sorted(set(value.split()))
        return []
    if sys.platform == "darwin":
        if platform.machine() == "arm64":
            # `hw.optional.arm.FEAT_DotProd: 1` and the like
            names = [line.split(":")[0].rsplit(".", 1)[-1].lower() for line in _sysctl("hw.optional").splitlines()
                     if line.strip().endswith(": 1") and ".arm." in line]
            return sorted(set(names))
        words = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).lower().split()
        return sorted({w.replace(".", "_") for w in words})
    return []


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name, for messages ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8480+")."""
    if sys.platform.startswith("linux"):
        text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor()
    return platform.processor() or platform.machine()


def describe() -> dict:
    """This CPU as a build record keeps it: architecture, name, features."""
    return {"arch": platform.machine(), "model": cpu_model(), "features": cpu_features()}


def missing_features(record: dict, features: list[str] | None = None) -> list[str]:
    """The features a build record's binary was compiled for that this CPU lacks ([] when it fits).

    A portable build (several CPU variants, one picked at start) and a record from before features were
    recorded need none; a build for another architecture lacks everything."""
    if record.get("portable") or not isinstance(record.get("cpu"), dict):
        return []
    built = record["cpu"]
    if built.get("arch") and built["arch"] != platform.machine():
        return [f"arch {built['arch']}"]
    have = set(cpu_features() if features is None else features)
    return sorted(set(built.get("features") or ()) - have)
