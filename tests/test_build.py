"""build.py: pin, presets, auto-detection, cache keys, and the real cached engine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("slp_build", REPO / "build.py")
build = importlib.util.module_from_spec(spec)
sys.modules["slp_build"] = build  # dataclasses look their module up while the class is made
spec.loader.exec_module(build)


def test_pin_is_parsed_from_the_lock_file():
    pin = build.read_pin()
    assert pin.commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert pin.package == "llama-cpp-python" and pin.version == "0.3.36"
    assert pin.sha256 == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    assert pin.subtree == "vendor/llama.cpp"


@pytest.mark.parametrize("text, problem", [
    ("[llama_cpp]\ncommit = 'abc'\n[source]\npackage='p'\nversion='1'\nfilename='f'\nsha256='" + "0" * 64 + "'\nsubtree='v'\n",
     "40 hex digits"),
    ("[llama_cpp]\n", "malformed"),
    ("not toml [", "malformed"),
])
def test_a_bad_pin_is_one_clear_error(tmp_path, text, problem):
    lock = tmp_path / "llama.cpp.lock"
    lock.write_text(text)
    with pytest.raises(build.BuildError, match=problem):
        build.read_pin(lock)


def test_presets_resolve_inheritance_and_hide_the_base():
    presets = build.read_presets()
    assert set(presets) >= {"cpu", "metal", "cuda", "vulkan"}
    assert "base" not in presets
    for name, variables in presets.items():
        assert variables["GGML_RPC"] == "ON", name
        assert variables["BUILD_SHARED_LIBS"] == "OFF", name
        assert variables["LLAMA_OPENSSL"] == "OFF", name
        assert variables["LLAMA_BUILD_TESTS"] == "OFF", name
    assert presets["metal"]["GGML_METAL"] == "ON"
    assert presets["cuda"]["GGML_CUDA"] == "ON"
    assert presets["vulkan"]["GGML_VULKAN"] == "ON"
    assert "GGML_CUDA" not in presets["cpu"]


def test_preset_inheritance_loop_is_reported(tmp_path):
    path = tmp_path / "CMakePresets.json"
    path.write_text(json.dumps({"configurePresets": [{"name": "a", "inherits": "b"}, {"name": "b", "inherits": "a"}]}))
    with pytest.raises(build.BuildError, match="loop"):
        build.read_presets(path)


@pytest.mark.parametrize("system, machine, nvcc, gpu, expected", [
    ("Darwin", "arm64", False, False, "metal"),
    ("Darwin", "arm64", True, True, "metal"),
    ("Darwin", "x86_64", False, False, "cpu"),
    ("Linux", "x86_64", True, True, "cuda"),
    ("Linux", "x86_64", True, False, "cpu"),  # toolkit without a GPU (like this CI machine)
    ("Linux", "aarch64", False, False, "cpu"),
])
def test_auto_detection(system, machine, nvcc, gpu, expected):
    assert build.detect_preset(system, machine, nvcc, gpu) == expected


def test_cache_key_changes_with_every_input():
    base = dict(commit="a" * 40, preset="cpu", variables={"X": "1"}, compiler="gcc 12", system="Linux", machine="x86_64")
    key = build.cache_key(**base)
    assert key == build.cache_key(**base)
    for change in ({"commit": "b" * 40}, {"preset": "cuda"}, {"variables": {"X": "2"}},
                   {"compiler": "clang 17"}, {"system": "Darwin"}, {"machine": "arm64"}):
        assert build.cache_key(**{**base, **change}) != key, change


def test_the_source_comes_through_pip_and_the_users_index(tmp_path, monkeypatch):
    """The sdist is fetched by `pip download`, so pip's index settings apply: pointed at a local
    index (a stand-in that knows no packages), pip asks it, and the failure is one clear line."""
    import http.server
    import threading

    asked: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nindex-url = http://127.0.0.1:{server.server_port}/simple\n")
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))  # the user's own configuration, and nothing else
    try:
        with pytest.raises(build.BuildError, match=r"cannot download llama-cpp-python==0\.3\.36"):
            build.download_sdist(build.read_pin(), tmp_path / "downloads")
    finally:
        server.shutdown()
    assert "/simple/llama-cpp-python/" in asked
    assert not [p for p in (tmp_path / "downloads").iterdir()]  # no partial download left


def test_project_files_name_no_package_index_host():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    hosts = ("pypi.org", "pythonhosted.org", "/simple\"")
    for name in tracked.stdout.split():
        path = REPO / name
        if path.suffix in (".py", ".lock", ".toml", ".md", ".json", ".cfg", ".txt") or name == "Makefile":
            if name.startswith("tests/js/") or not path.is_file():
                continue
            text = path.read_text(errors="replace")
            assert not [h for h in hosts if h in text and name != "tests/test_build.py"], name


def run_build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], capture_output=True, text=True,
                          timeout=120, env=env or os.environ.copy())


def test_unknown_preset_is_one_line_and_nonzero():
    proc = run_build("--preset", "tpu")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown preset 'tpu'" in proc.stderr and "Traceback" not in proc.stderr


def test_cuda_preset_without_nvcc_is_refused():
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = run_build("--preset", "cuda", env=env)
    assert proc.returncode == 1 and "nvcc" in proc.stderr and "Traceback" not in proc.stderr


def test_help_documents_presets_source_and_force():
    out = run_build("--help").stdout
    for word in ("--preset", "--source", "--force", "cpu", "metal", "cuda", "vulkan"):
        assert word in out


def test_cached_build_is_a_fast_no_op_that_prints_the_binary(engine_binary):
    started = time.monotonic()
    proc = run_build("--preset", "cpu")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    last = Path(proc.stdout.strip().splitlines()[-1])
    assert last.is_absolute() and last.name == "llama-server" and os.access(last, os.X_OK)
    assert "cached build" in proc.stdout
    assert elapsed < 10, f"cached build.py took {elapsed:.1f}s"
    record = json.loads((last.parent.parent / "build.json").read_text())
    assert record["commit"] == build.read_pin().commit and record["preset"] == "cpu"
    assert (last.parent / "ggml-rpc-server").is_file()


def test_built_engine_reports_the_pinned_commit(engine_binary):
    proc = subprocess.run([str(engine_binary), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert build.read_pin().commit[:8] in proc.stdout + proc.stderr


def test_engine_binary_is_self_contained(engine_binary):
    """Static build: no libllama/libggml shared objects needed next to it."""
    if sys.platform != "linux":
        pytest.fail("this check is written for Linux (ldd)")
    out = subprocess.run(["ldd", str(engine_binary)], capture_output=True, text=True).stdout
    assert "libllama" not in out and "libggml" not in out and "not found" not in out
