"""The CUDA engine end to end, on a machine with an NVIDIA GPU: `make test-gpu` (not part of `make test`).

The rest of the suite runs on such a machine too (it follows whichever engine build.py cached); these
tests add what only a GPU build can show: the build really is CUDA, the engine puts every layer on the
card, `slp status` names the card, and answers still come back through the agent.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from openai import OpenAI

from conftest import expected_gpu_row

pytestmark = pytest.mark.gpu


def test_the_cached_engine_is_a_cuda_build_that_sees_the_card(engine_binary):
    record = json.loads((engine_binary.parent.parent / "build.json").read_text())
    assert record["preset"] == "cuda" and record["variables"]["GGML_CUDA"] == "ON"
    devices = subprocess.run([str(engine_binary), "--list-devices"], capture_output=True, text=True, timeout=60)
    assert devices.returncode == 0, devices.stderr
    assert re.search(r"^\s*CUDA0: ", devices.stdout + devices.stderr, re.M), devices.stdout + devices.stderr


def test_the_engine_holds_the_model_in_gpu_memory(agent, default_model):
    """The whole model and its KV cache live on the card: nvidia-smi's per-process view of the engine
    (read here independently) exceeds the model file, and `slp status` reports the same figure."""
    info = agent.status()
    pid = info["engine"]["pid"]
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    held = {int(p): int(m) * 2**20 for p, m in (line.split(",") for line in out.splitlines() if line.strip())}
    assert pid in held, f"engine pid {pid} holds no GPU memory: {out!r}"
    assert held[pid] > default_model.stat().st_size
    reported = info["memory_usage"]["gpu_bytes"]
    assert reported == info["engine"]["memory"]["gpu_bytes"]
    assert abs(reported - held[pid]) <= 0.05 * held[pid]  # read a moment apart: allow a little drift


def test_status_names_the_card(agent, engine_binary):
    info = json.loads(agent.cli("status", "--json", check=True).stdout)
    assert info["gpu"] == expected_gpu_row(engine_binary) != "None (CPU only)"


def test_chat_and_stream_through_the_agent_on_the_gpu(agent):
    client = OpenAI(base_url=agent.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="slp-orchestra-mini", max_tokens=16,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="slp-orchestra-mini", max_tokens=16, stream=True,
        messages=[{"role": "user", "content": "Count to five."}]) if chunk.choices]
    assert len(pieces) > 1 and "".join(pieces).strip()
