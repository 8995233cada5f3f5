"""Models from Hugging Face, and GGUF files used where they are: offline, against the tests' own Hub
stand-in (tests/hub_standin.py) serving the real default model, through the real `slp` command line.

Each test has its own HF_HOME (the library's cache) and model store; nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import SLP, wait_for
from hub_standin import HubFile, HubRepo, HubStandIn
from slp.engine.command import engine_command
from slp.models.errors import ModelError
from slp.models.fetch import file_sha256
from slp.models.hub import ModelSet, RemoteFile, choose, parse_ref, quant_of
from slp.settings import Settings

REPO = "slp-test/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"
NAME = "smollm2-135m-instruct-q4_1"
TOKEN = "hf_standin_token"


@pytest.fixture
def hub(default_model):
    standin = HubStandIn(token=TOKEN)
    standin.repos[REPO] = HubRepo(files={
        FILE: HubFile(default_model),
        # Listed only (never downloaded): too big for the tests' memory budget.
        "smollm2-135m-instruct-f16.gguf": HubFile(default_model, declared_size=271_000_000),
        "README.md": HubFile(default_model, length=100, lfs=False),
    })
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def env(tmp_path, hub):
    """The command line's environment: the stand-in as the Hub, a private HF cache and model store."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SLP_"))}
    environment.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), SLP_HOME=str(tmp_path / "slp"),
                       SLP_MODELS_DIR=str(tmp_path / "models"), SLP_MEMORY_BUDGET="200MB",
                       HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    return environment


def slp(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SLP, *args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    # Before it, at most the line saying what the pull picked (stderr: stdout is for the installed path).
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], proc.stderr
    assert len(lines) <= 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def store_records(env: dict) -> list[str]:
    folder = Path(env["SLP_MODELS_DIR"])
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def cache_files(env: dict, repo: str = REPO) -> list[str]:
    folder = Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# --- choosing ----------------------------------------------------------------------------------------

def _set(name: str, size: int) -> ModelSet:
    return ModelSet(key=name, files=[RemoteFile(name=f"{name}.gguf", size=size, sha256=None)])


def test_choice_prefers_q4_k_m_then_the_largest_that_fits():
    sets = [_set("m-Q2_K", 300), _set("m-Q4_K_M", 500), _set("m-Q4_0", 450), _set("m-Q8_0", 900),
            _set("m-F16", 1700)]
    assert choose(sets, budget=10_000)[0].quant == "Q4_K_M"  # room for F16, yet the usual default
    assert choose(sets, budget=590)[0].quant == "Q4_0"  # Q4_K_M needs 600 with the 20% for the KV cache
    assert choose(sets, budget=400)[0].quant == "Q2_K"
    no_q4 = [_set("m-Q5_K_M", 600), _set("m-Q8_0", 900), _set("m-F16", 1700)]
    assert choose(no_q4, budget=1100)[0].quant == "Q8_0"  # largest quantized one, not full precision
    assert choose([_set("m-F16", 1700)], budget=3000)[0].quant == "F16"
    with pytest.raises(ModelError, match=r"no quantization fits .* the smallest, Q2_K, needs"):
        choose(sets, budget=100)


def test_references_and_quantization_names():
    ref = parse_ref("hf:owner/repo-GGUF:q4_k_m")
    assert (ref.repo, ref.quant, ref.filename, ref.revision) == ("owner/repo-GGUF", "Q4_K_M", None, None)
    ref = parse_ref("hf:owner/repo/sub/x-Q8_0.gguf@v1.0")
    assert (ref.repo, ref.filename, ref.revision) == ("owner/repo", "sub/x-Q8_0.gguf", "v1.0")
    for bad in ("hf:just-a-name", "hf:owner/repo/README.md", "hf:../x", "hf:owner/repo/../x.gguf"):
        with pytest.raises(ModelError):
            parse_ref(bad)
    assert quant_of("Llama-3.2-1B-Instruct-UD-Q4_K_XL-00001-of-00002.gguf") == "Q4_K_XL"
    assert quant_of("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert quant_of("mmproj-model-f16.gguf") == "F16"
    assert quant_of("model.gguf") is None


# --- pulling -------------------------------------------------------------------------------------

def test_pull_picks_what_fits_verifies_and_serves_a_chat(hub, env, default_model, fresh_agent):
    proc = slp(env, "model", "pull", f"hf:{REPO}")
    assert proc.returncode == 0, proc.stderr
    assert f"picked Q4_1: {FILE}" in proc.stderr and "also available: F16" in proc.stderr
    assert [r.method for r in hub.requests if r.path.endswith(FILE)] == ["HEAD", "GET"]

    shown = json.loads(slp(env, "model", "show", NAME, "--json").stdout)
    sha = file_sha256(default_model)
    assert shown["sha256"] == sha and shown["files"][0]["sha256"] == sha
    assert shown["source"] == f"hf:{REPO}/{FILE}@{hub.repos[REPO].commit}"
    assert (shown["architecture"], shown["quantization"], shown["chat_template"]) == ("llama", "Q4_1", True)
    assert shown["context_length"] == 8192 and 100_000_000 < shown["parameters"] < 200_000_000
    assert shown["mmproj"] is None and shown["missing"] is False
    path = Path(shown["path"])
    assert path.is_relative_to(Path(env["HF_HOME"])) and path.read_bytes()[:4] == b"GGUF"
    table = slp(env, "model", "show", NAME).stdout
    assert "Chat template" in table and "yes" in table and sha in table

    scanned = json.loads(slp(env, "model", "scan", "--json").stdout)  # the usual places include HF_HOME
    assert {"path": str(path), "name": NAME, "size_bytes": path.stat().st_size, "installed_as": NAME} in scanned
    from slp.models.store import ModelStore

    assert ModelStore(env["SLP_MODELS_DIR"]).for_path(path).name == NAME  # how the agent maps an engine back

    again = slp(env, "model", "pull", f"hf:{REPO}:Q4_1")  # already there: verified, not downloaded again
    assert again.returncode == 0, again.stderr
    assert len(hub.gets(FILE)) == 1

    agent = fresh_agent(models_dir=env["SLP_MODELS_DIR"], model=NAME, max_tokens="16")
    agent.start()

    body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    request = urllib.request.Request(agent.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        answer = json.load(resp)
    assert answer["choices"][0]["message"]["content"].strip()
    facts = agent.get(f"/v1/models/{NAME}")
    assert facts["id"] == NAME
    assert facts["details"]["sha256"] == sha and facts["details"]["quantization"] == "Q4_1"
    assert facts["details"]["source"] == shown["source"]
    agent.stop()

    removed = slp(env, "model", "rm", NAME, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not path.exists() and not path.is_symlink()  # slp downloaded it, so slp deletes it
    assert not any(name.startswith(("blobs/", "snapshots/")) for name in cache_files(env))
    assert NAME not in slp(env, "model", "list").stdout


def test_ctrl_c_leaves_nothing_in_the_store_and_the_next_pull_resumes(hub, env, default_model):
    from huggingface_hub import constants

    # A whole number of the library's read chunks: it writes nothing of a chunk it has not received whole.
    cut = 3 * constants.DOWNLOAD_CHUNK_SIZE
    hub.cut_next_download(FILE, after=cut)
    blobs = Path(env["HF_HOME"]) / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs"
    partial = blobs / f"{file_sha256(default_model)}.incomplete"
    pulling = subprocess.Popen([*SLP, "model", "pull", f"hf:{REPO}:Q4_1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: partial.is_file() and partial.stat().st_size >= cut, 60, "the first chunks on disk")
        pulling.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = pulling.communicate(timeout=30)
    finally:
        if pulling.poll() is None:
            pulling.kill()
    assert pulling.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1].startswith("Interrupted: nothing was added to the store")
    assert "Traceback" not in err
    assert store_records(env) == []
    assert partial.stat().st_size == cut
    hub.release()

    resumed = slp(env, "model", "pull", f"hf:{REPO}:Q4_1")
    assert resumed.returncode == 0, resumed.stderr
    assert [r.range for r in hub.gets(FILE)] == [None, f"bytes={cut}-"]
    size = default_model.stat().st_size
    assert [r.sent for r in hub.gets(FILE)] == [cut, size - cut], "the resumed pull fetched only the rest"
    assert not partial.exists()
    shown = json.loads(slp(env, "model", "show", NAME, "--json").stdout)
    assert file_sha256(Path(shown["path"])) == file_sha256(default_model) == shown["sha256"]


def test_a_file_whose_hash_does_not_match_is_refused(hub, env, default_model):
    hub.repos["slp-test/tampered-GGUF"] = HubRepo(files={FILE: HubFile(default_model, declared_sha256="ab" * 32)})
    proc = slp(env, "model", "pull", "hf:slp-test/tampered-GGUF")
    line = assert_one_line_error(proc, "sha256 mismatch", "ab" * 32, file_sha256(default_model))
    assert "nothing was installed" in line
    assert store_records(env) == []
    assert not any(name.startswith(("blobs/", "snapshots/")) for name in cache_files(env, "slp-test/tampered-GGUF"))


def test_split_models_come_whole_with_their_projector(hub, env, default_model):
    size = default_model.stat().st_size
    third = size // 3
    parts = {f"Smol-Q4_1-0000{i + 1}-of-00003.gguf": HubFile(default_model, start=i * third,
                                                              length=third if i < 2 else size - 2 * third)
             for i in range(3)}
    hub.repos["slp-test/vision-GGUF"] = HubRepo(files={**parts, "mmproj-Smol-f16.gguf": HubFile(default_model)})
    proc = slp(env, "model", "pull", "hf:slp-test/vision-GGUF:Q4_1")
    assert proc.returncode == 0, proc.stderr
    assert "in 3 parts" in proc.stderr and "vision projector mmproj-Smol-f16.gguf" in proc.stderr
    shown = json.loads(slp(env, "model", "show", "Smol-Q4_1", "--json").stdout)
    files = shown["files"]
    assert [Path(f["path"]).name for f in files] == [*parts, "mmproj-Smol-f16.gguf"]
    assert [f["role"] for f in files] == ["model"] * 3 + ["mmproj"]
    assert b"".join(Path(f["path"]).read_bytes() for f in files[:3]) == default_model.read_bytes()
    assert shown["path"] == files[0]["path"] and shown["mmproj"] == files[3]["path"]

    argv = engine_command(Settings(), Path("llama-server"), Path(shown["path"]), 1234, "key", "smol",
                          mmproj=Path(shown["mmproj"])).argv
    assert argv[argv.index("--mmproj") + 1] == shown["mmproj"]
    assert "--mmproj" not in engine_command(Settings(), Path("llama-server"), Path(shown["path"]), 1234, "key",
                                            "smol").argv


def test_errors_are_one_line_and_leave_nothing_behind(hub, env, default_model, tmp_path):
    hub.repos["slp-test/safetensors-only"] = HubRepo(files={"model.safetensors": HubFile(default_model)})
    hub.repos["slp-test/gated-GGUF"] = HubRepo(files={FILE: HubFile(default_model)}, gated=True)
    hub.repos["slp-test/huge-GGUF"] = HubRepo(files={FILE: HubFile(default_model, declared_size=10**17)})

    assert_one_line_error(slp(env, "model", "pull", "hf:slp-test/no-such-repo"),
                          "no repository slp-test/no-such-repo on the Hugging Face Hub")
    assert_one_line_error(slp(env, "model", "pull", "hf:slp-test/gated-GGUF"),
                          "slp-test/gated-GGUF is gated", "HF_TOKEN")
    assert_one_line_error(slp(env, "model", "pull", "hf:slp-test/safetensors-only"), "has no GGUF model files")
    assert_one_line_error(slp(env, "model", "pull", f"hf:{REPO}:Q8_0"),
                          f"{REPO} has no quantization Q8_0; it has: Q4_1, F16")
    assert_one_line_error(slp(env, "model", "pull", f"hf:{REPO}/nope.gguf"), "has no file 'nope.gguf'")
    assert_one_line_error(slp(env, "model", "pull", f"hf:{REPO}@no-such-branch"), "no revision 'no-such-branch'")
    assert_one_line_error(slp(env, "model", "pull", "hf:slp-test/huge-GGUF:Q4_1"), "not enough disk space")
    assert_one_line_error(slp({**env, "SLP_MEMORY_BUDGET": "50MB"}, "model", "pull", f"hf:{REPO}"),
                          "no quantization fits the memory budget")
    gone = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port: nothing listens
    assert_one_line_error(slp(gone, "model", "pull", f"hf:{REPO}"), "cannot reach the Hugging Face Hub")
    assert store_records(env) == []

    with_token = slp({**env, "HF_TOKEN": TOKEN}, "model", "pull", "hf:slp-test/gated-GGUF", "--name", "gated")
    assert with_token.returncode == 0, with_token.stderr
    assert hub.gets(FILE)[-1].authorization == f"Bearer {TOKEN}"


# --- in place ------------------------------------------------------------------------------------

def test_files_added_in_place_are_never_copied_or_deleted(env, default_model, tmp_path):
    lmstudio = tmp_path / "lmstudio" / "community" / "Smol-GGUF"
    lmstudio.mkdir(parents=True)
    user_file = lmstudio / "Smol-Q4_1.gguf"
    os.link(default_model, user_file)  # the user's own file (a hard link: cheap, and separate from the cache)

    found = json.loads(slp(env, "model", "scan", str(tmp_path / "lmstudio"), "--json").stdout)
    assert found == [{"path": str(user_file), "name": "Smol-Q4_1", "size_bytes": user_file.stat().st_size,
                      "installed_as": None}]

    added = slp(env, "model", "add", str(user_file))
    assert added.returncode == 0, added.stderr
    assert store_records(env) == ["Smol-Q4_1.model.json"]  # a record, no copy
    shown = json.loads(slp(env, "model", "show", "Smol-Q4_1", "--json").stdout)
    assert shown["path"] == str(user_file) and shown["source"] == "file"
    assert shown["sha256"] == file_sha256(default_model) and shown["quantization"] == "Q4_1"
    assert not list(lmstudio.glob(".*"))  # slp wrote nothing into the user's folder
    rescan = json.loads(slp(env, "model", "scan", str(tmp_path / "lmstudio"), "--json").stdout)
    assert rescan[0]["installed_as"] == "Smol-Q4_1"

    user_file.unlink()  # the user deletes or moves it
    listing = slp(env, "model", "list")
    assert listing.returncode == 0 and "missing" in listing.stdout
    shown = slp(env, "model", "show", "Smol-Q4_1")
    assert shown.returncode == 0 and "(missing)" in shown.stdout

    os.link(default_model, user_file)
    removed = slp(env, "model", "rm", "Smol-Q4_1", "--yes")
    assert removed.returncode == 0 and "its file stays" in removed.stdout
    assert user_file.is_file() and file_sha256(user_file) == file_sha256(default_model)
    assert store_records(env) == []
    assert_one_line_error(slp(env, "model", "add", str(tmp_path / "nope.gguf")), "no such file")
