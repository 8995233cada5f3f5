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

from conftest import REPO, SLP

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
    assert set(presets) >= {"cpu", "cpu-portable", "metal", "cuda", "vulkan"}
    assert "base" not in presets
    for name, variables in presets.items():
        assert variables["GGML_RPC"] == "ON", name
        assert variables["BUILD_SHARED_LIBS"] == ("ON" if name == "cpu-portable" else "OFF"), name
        assert "-U__AMX_INT8__" in variables["CMAKE_CXX_FLAGS"].split(), name
        assert variables["LLAMA_OPENSSL"] == "OFF", name
        assert variables["LLAMA_BUILD_TESTS"] == "OFF", name
    assert presets["metal"]["GGML_METAL"] == "ON"
    assert presets["cuda"]["GGML_CUDA"] == "ON"
    assert presets["vulkan"]["GGML_VULKAN"] == "ON"
    assert "GGML_CUDA" not in presets["cpu"]
    assert presets["cpu"]["GGML_NATIVE"] == "ON"
    portable = presets["cpu-portable"]
    assert (portable["GGML_BACKEND_DL"], portable["GGML_CPU_ALL_VARIANTS"], portable["GGML_NATIVE"]) == ("ON", "ON", "OFF")
    assert build.is_portable(portable) and not build.is_portable(presets["cpu"])


def _pinned_source_file(member: str) -> str:
    """A file of the pinned llama.cpp, read from the sdist build.py downloaded (sha256-checked) for the build."""
    import tarfile

    pin = build.read_pin()
    archive = build.download_sdist(pin, build.cache_root() / "downloads")
    with tarfile.open(archive) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        return tar.extractfile(f"{top}/{pin.subtree}/{member}").read().decode()


AMX_GUARD = "#if defined(__AMX_INT8__) && defined(__AVX512VNNI__)"


def test_the_pinned_source_guards_its_amx_kernels_with_the_macros_the_presets_undefine():
    """llama.cpp compiles its AMX kernels, and registers their weight buffer (the repack that crashed),
    only under this guard; if an update changes the guard, the presets' flags must follow."""
    assert AMX_GUARD in _pinned_source_file("ggml/src/ggml-cpu/amx/amx.h")
    assert AMX_GUARD in _pinned_source_file("ggml/src/ggml-cpu/ggml-cpu.cpp")


@pytest.mark.parametrize("preset", ["cpu", "cuda"])
def test_a_native_build_on_an_amx_cpu_leaves_the_amx_kernels_out(tmp_path, preset):
    """What -march=native gives on a Sapphire Rapids Xeon (-march=sapphirerapids: AMX-INT8, AVX512-VNNI),
    compiled with the preset's flags: the guard is false, so no AMX kernel or buffer exists; without the
    flags it is true (the test can fail). Checked with this machine's compiler, whatever CPU it has."""
    source = tmp_path / "guard.cpp"
    source.write_text("#include <immintrin.h>\n" + AMX_GUARD + "\n#error AMX kernels compiled in\n#endif\n"
                      "#if !defined(__AVX512VNNI__) || !defined(__AVX512BF16__)\n#error AVX-512 lost\n#endif\n")
    flags = build.read_presets()[preset]["CMAKE_CXX_FLAGS"].split()
    compile_ = ["c++", "-march=sapphirerapids", "-fsyntax-only", str(source)]
    with_flags = subprocess.run([*compile_, *flags], capture_output=True, text=True)
    assert with_flags.returncode == 0, with_flags.stderr
    without = subprocess.run(compile_, capture_output=True, text=True)
    assert without.returncode != 0 and "AMX kernels compiled in" in without.stderr


def test_a_portable_build_does_not_install_the_variants_known_to_crash(tmp_path):
    names = ["llama-server", "ggml-rpc-server", "libllama.so", "libggml.so", "libggml-base.so",
             "libggml-cpu-haswell.so", "libggml-cpu-zen4.so", "libggml-cpu-sapphirerapids.so", "llama-bench", "x.o"]
    for name in names:
        (tmp_path / name).write_text("")
    chosen = {p.name for p in build.installed_files(tmp_path)}
    assert chosen == {"llama-server", "ggml-rpc-server", "libllama.so", "libggml.so", "libggml-base.so",
                      "libggml-cpu-haswell.so", "libggml-cpu-zen4.so"}
    assert "sapphirerapids" in build.KNOWN_BAD_VARIANTS and "#20824" in build.KNOWN_BAD_VARIANTS["sapphirerapids"]


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


def test_a_native_build_is_keyed_by_the_cpu_features_a_portable_one_is_not():
    base = dict(commit="a" * 40, preset="cpu", variables={"GGML_NATIVE": "ON"}, compiler="gcc 12",
                system="Linux", machine="x86_64")
    here, xeon = ["avx", "avx2", "fma"], ["avx", "avx2", "fma", "avx512f", "amx_tile"]
    assert build.cache_key(**base, cpu_features=here) != build.cache_key(**base, cpu_features=xeon)
    portable = {**base, "preset": "cpu-portable", "variables": build.read_presets()["cpu-portable"]}
    assert build.cache_key(**portable, cpu_features=here) == build.cache_key(**portable, cpu_features=xeon)


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


# A stand-in llama-server (named as such) that dies as llama.cpp's AMX build did on newer Xeons: it answers
# `--version`, logs the start of a load, then faults in a function of the same name during "warm-up".
CRASHING_ENGINE = r"""
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) void ggml_backend_amx_mul_mat(volatile int *tile) { *tile = 42; }
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--version") == 0) { printf("version: 1 (stand-in)\n"); return 0; }
    printf("load_tensors: loading model tensors\ncommon_init_from_params: warming up the model\n");
    fflush(stdout);
    ggml_backend_amx_mul_mat((volatile int *)0);
    return 0;
}
"""


def test_the_self_test_refuses_a_crashing_binary_and_installs_nothing(tmp_path, default_model):
    bin_dir = tmp_path / "build-bin"
    bin_dir.mkdir()
    source = tmp_path / "crash.c"
    source.write_text(CRASHING_ENGINE)
    subprocess.run(["cc", "-g", "-O0", "-o", str(bin_dir / "llama-server"), str(source)], check=True)
    entry = tmp_path / "cache" / "0c1e57098bba-cpu-0123456789abcdef"
    record = {"commit": "0" * 40, "preset": "cpu"}
    with pytest.raises(build.BuildError) as refused:
        build.install_entry(bin_dir, entry, record, default_model)
    message = str(refused.value)
    assert "killed by SIGSEGV in ggml_backend_amx_mul_mat while loading the model" in message
    assert "was not installed" in message
    assert "--preset cpu-portable" in message and "SLP_CMAKE_ARGS" in message
    assert "warming up the model" in message  # the log's last words
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == [f"selftest-{entry.name}.log"]  # the log, kept
    assert "\n" not in message


def test_the_installed_engine_passed_its_self_test_and_says_so(engine_binary, default_model, tmp_path):
    record = json.loads((engine_binary.parent.parent / "build.json").read_text())
    test = record["self_test"]
    assert test["ok"] is True and test["rpc_server"] is True
    assert test["prompt_tokens"] >= 64 and test["generated_tokens"] >= 8
    assert test["prompt_tokens_per_s"] > 0 and test["decode_tokens_per_s"] > 0
    assert record["cpu"]["features"] and record["portable"] is False
    out = subprocess.run([*SLP, "version"], capture_output=True, text=True, timeout=60).stdout
    assert f"{test['prompt_tokens']} prompt tokens at {test['prompt_tokens_per_s']} tok/s" in out
    assert f"{test['generated_tokens']} generated at {test['decode_tokens_per_s']} tok/s" in out
    # and the binary proves itself again, now
    again = build.selftest.run(engine_binary.parent, default_model, tmp_path / "selftest.log")
    assert again["prompt_tokens"] >= 64 and again["generated_tokens"] == 8 and again["rpc_server"]


def _fake_build(root: Path, name: str, record: dict) -> Path:
    entry = root / name
    (entry / "bin").mkdir(parents=True)
    binary = entry / "bin" / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (entry / "build.json").write_text(json.dumps(record))
    return binary


def test_slp_runs_only_a_build_made_for_this_cpu(tmp_path, monkeypatch):
    """A cache shared by machines of different CPUs: the newest build this CPU can run is chosen; a build
    for a CPU with more features, or one its self-test refused, never is."""
    from slp.engine import cpuinfo
    from slp.engine.binary import EngineNotFound, find_engine
    from slp.settings import Settings

    monkeypatch.setenv("SLP_ENGINE_CACHE", str(tmp_path))
    here = {"arch": build.platform.machine(), "features": cpuinfo.cpu_features()}
    xeon = {**here, "features": here["features"] + ["amx_tile", "avx512f"]}
    ours = _fake_build(tmp_path, "a-ours", {"built_at": "2026-01-01", "cpu": here, "self_test": {"ok": True}})
    _fake_build(tmp_path, "b-xeon", {"built_at": "2026-02-01", "cpu": xeon, "self_test": {"ok": True}})
    _fake_build(tmp_path, "c-refused", {"built_at": "2026-03-01", "cpu": here, "self_test": {"ok": False}})
    assert find_engine(Settings())[0] == ours
    portable = _fake_build(tmp_path, "d-portable", {"built_at": "2026-04-01", "portable": True, "cpu": xeon})
    assert find_engine(Settings())[0] == portable
    for name in ("a-ours", "d-portable"):
        build.shutil.rmtree(tmp_path / name)
    with pytest.raises(EngineNotFound, match=r"built for another CPU \(this one lacks amx_tile, avx512f\).*cpu-portable"):
        find_engine(Settings())
