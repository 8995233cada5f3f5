"""A project's prompt prefix saved on disk when its engine stops and restored for its next request
(slp.server.prompt_cache), on the real engine: the engine's own timings show the restored tokens, the
answers at temperature 0 equal the uncached ones, and entries that must not be used are deleted while
the request still succeeds."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import requests

from conftest import kill_all_under, make_agent

pytestmark = pytest.mark.engine

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def rules(n: int, seed: int) -> str:
    """A system prompt of `n` made-up rules (about 18 tokens each in SmolLM2's tokenizer)."""
    rng = random.Random(seed)
    lines = [f"Rule {i}: when the user says {rng.choice(WORDS)} you reply {rng.choice(WORDS)} {rng.choice(WORDS)}."
             for i in range(1, n + 1)]
    return "You are a careful assistant. Follow these rules.\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def cache_agent(tmp_path_factory, default_model, engine_binary):
    agent = make_agent(tmp_path_factory.mktemp("prompt-cache"), prompt_cache_min_tokens="100")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def project(agent, name: str, system_prompt: str, model: str = "slp-orchestra-mini") -> dict:
    resp = requests.post(f"{agent.url}/v1/projects", json={
        "name": name, "model": model, "system_prompt": system_prompt,
        "params": {"temperature": 0, "max_tokens": 12}}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def ask(agent, name: str) -> tuple[str, dict]:
    """The answer to QUESTION in project `name`, and the engine's timings for it."""
    resp = requests.post(f"{agent.url}/v1/chat/completions", json={"messages": QUESTION, "project_id": name},
                         timeout=300)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    return data["choices"][0]["message"]["content"], data["timings"]


def unload(agent, model: str = "slp-orchestra-mini") -> None:
    resp = requests.post(f"{agent.url}/v1/models/{model}/unload", timeout=60)
    assert resp.status_code == 200 and resp.json()["unloaded"], resp.text


def cached(agent, name: str) -> list[dict]:
    return requests.get(f"{agent.url}/v1/projects/{name}", timeout=30).json()["prompt_cache"]


def entry_files(agent, project_id: str) -> list[Path]:
    return sorted((agent.home / "data" / "prompt-cache").glob(f"{project_id}--*"))


def metric(agent, name: str) -> float:
    text = requests.get(f"{agent.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_a_long_prompt_is_computed_once_across_an_unload_and_an_agent_restart(cache_agent):
    agent = cache_agent
    project(agent, "pc-long", rules(110, seed=1))
    cold, timings = ask(agent, "pc-long")
    assert timings["cache_n"] == 0 and timings["prompt_n"] > 1800, timings  # about 2,000 tokens, computed
    prompt_tokens = timings["prompt_n"]

    unload(agent)
    [entry] = cached(agent, "pc-long")
    assert entry["model"] == "slp-orchestra-mini" and entry["prefix_tokens"] > 1800, entry
    assert entry["tokens"] >= entry["prefix_tokens"] and entry["bytes"] > 1_000_000
    assert metric(agent, "slp_prompt_cache_saves_total") == 1

    answer, timings = ask(agent, "pc-long")  # a new engine: the prefix comes from disk
    assert timings["cache_n"] >= prompt_tokens - 1 and timings["prompt_n"] <= 1, timings
    assert answer == cold
    assert metric(agent, "slp_prompt_cache_restores_total") == 1
    assert 'slp_prompt_cache_restore_seconds_count 1.0' in requests.get(f"{agent.url}/metrics", timeout=30).text

    agent.stop()  # saved again as the agent stops, restored by the next one
    agent.start()
    answer, timings = ask(agent, "pc-long")
    assert timings["cache_n"] >= prompt_tokens - 1, timings
    assert answer == cold
    out = agent.cli("project", "show", "pc-long", check=True).stdout
    assert "prompt cache:" in out and "slp-orchestra-mini" in out, out

    cleared = requests.delete(f"{agent.url}/v1/projects/pc-long/prompt-cache", timeout=30).json()
    assert cleared["deleted"] == 1 and cleared["bytes"] > 1_000_000, cleared
    assert cached(agent, "pc-long") == []


def test_a_corrupt_entry_and_one_of_another_model_are_deleted_and_the_request_still_succeeds(
        cache_agent, second_model):
    agent = cache_agent
    short = project(agent, "pc-short", rules(8, seed=2))  # ~170 tokens: quick to compute again
    other = project(agent, "pc-gemma", rules(8, seed=2), model="gemma-3-270m")
    reference, _ = ask(agent, "pc-short")
    ask(agent, "pc-gemma")
    unload(agent)
    unload(agent, "gemma-3-270m")
    [mine] = [p for p in entry_files(agent, short["id"]) if p.suffix == ".bin"]
    [gemmas] = [p for p in entry_files(agent, other["id"]) if p.suffix == ".bin"]
    saved = mine.read_bytes()

    # 1. Bytes flipped in the middle of the KV data: the checksum catches it before the engine sees it.
    data = bytearray(saved)
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    mine.write_bytes(bytes(data))
    answer, timings = ask(agent, "pc-short")
    assert answer == reference and timings["cache_n"] == 0, timings
    assert entry_files(agent, short["id"]) == [] and metric(agent, "slp_prompt_cache_discards_total") == 1

    # 2. Gemma's entry put in its place, its description too: saved for another model, never restored.
    unload(agent)  # saves pc-short's prefix again
    shutil.copy(gemmas, mine)
    shutil.copy(gemmas.with_suffix(".json"), mine.with_suffix(".json"))
    answer, timings = ask(agent, "pc-short")
    assert answer == reference and timings["cache_n"] == 0, timings
    assert entry_files(agent, short["id"]) == [] and metric(agent, "slp_prompt_cache_discards_total") == 2

    # 3. Gemma's data under a description that claims it is ours (checksum and size recomputed): the
    #    engine refuses it, and the request goes on without it.
    unload(agent)
    description = json.loads(mine.with_suffix(".json").read_text())
    shutil.copy(gemmas, mine)
    other_description = json.loads(gemmas.with_suffix(".json").read_text())
    description.update(sha256=other_description["sha256"], bytes=other_description["bytes"])
    mine.with_suffix(".json").write_text(json.dumps(description))
    answer, timings = ask(agent, "pc-short")
    assert answer == reference and timings["cache_n"] == 0, timings
    assert entry_files(agent, short["id"]) == [] and metric(agent, "slp_prompt_cache_discards_total") == 3
    log = (agent.home / "logs" / "agent.log").read_text()
    assert "checksum" in log and "model_sha256" in log and "the engine refused it" in log


def test_the_size_bound_evicts_the_least_recently_used_prefix(fresh_agent):
    agent = fresh_agent(prompt_cache_min_tokens="100", prompt_cache_size="6MB")  # one ~4 MB entry fits
    agent.start()
    first = project(agent, "pc-first", rules(8, seed=3))
    second = project(agent, "pc-second", rules(8, seed=4))
    ask(agent, "pc-first")
    unload(agent)
    assert len(cached(agent, "pc-first")) == 1
    ask(agent, "pc-second")  # pc-first is not asked for on this engine: only pc-second is saved now
    unload(agent)  # returns once the engine is gone: its save (and the eviction after it) came first
    assert len(cached(agent, "pc-second")) == 1 and cached(agent, "pc-first") == [] and entry_files(agent, first["id"]) == []
    assert len(entry_files(agent, second["id"])) == 2  # its data and description
    assert "evicted" in (agent.home / "logs" / "agent.log").read_text()
