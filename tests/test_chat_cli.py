"""`slp chat` and its commands, driven as a user would: the real command in a subprocess, with piped stdin
and in a pseudo-terminal (readline, Ctrl-C), against a real agent whose engine is the stand-in
(tests/standin_engine.py, named as such). What the engine received is read from the stand-in's record.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest
import requests

from conftest import (
    SLP,
    kill_all_under,
    make_agent,
    make_standin_agent,
    processes_under,
    wait_for,
    without_chat_template,
)

TOKEN_DELAY = 0.05  # seconds per streamed token: a 4-token reply takes 0.2 s, a 1000-token one 50 s


@pytest.fixture(scope="module")
def chat_agent(tmp_path_factory, default_model, second_model):
    """A stand-in agent that streams slowly enough to interrupt (4 tokens a reply unless told more)."""
    agent = make_standin_agent(tmp_path_factory.mktemp("chat-agent"), max_tokens="4")
    agent.env["STANDIN_TOKEN_DELAY"] = str(TOKEN_DELAY)
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


def engine_requests(agent) -> list[dict]:
    """The chat requests the stand-in engine got, oldest first."""
    files = sorted(agent.record.glob("*.request.json"), key=lambda p: p.stat().st_mtime_ns)
    bodies = [json.loads(p.read_text()) for p in files]
    return [b for b in bodies if "messages" in b]


def user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def new_project(agent, name: str, **fields) -> dict:
    reply = requests.post(f"{agent.url}/v1/projects", json={"name": name, **fields}, timeout=10)
    assert reply.status_code in (200, 201), reply.text
    return reply.json()


def sessions_of(agent, project_id: str) -> list[dict]:
    listed = requests.get(f"{agent.url}/v1/projects/{project_id}/sessions", timeout=10).json()["data"]
    return [requests.get(f"{agent.url}/v1/projects/{project_id}/sessions/{s['id']}", timeout=10).json()
            for s in listed]


SCRIPT = '''/help
/frobnicate now
/set temperature 0.2
/set temprature 1
/set temperature hot
/set temperature 3
/set top_k 5
/system Answer briefly.
hello there
/usage
/show
/retry
/model no-such-model
/clear
"""
line one
line two
"""
first \\
second
/exit
never sent
'''


def test_commands_in_a_piped_chat(chat_agent):
    """Each command does what /help says, mistakes are one line each (and exit 1 at the end of piped
    input), and no /command ever reaches the model."""
    project = new_project(chat_agent, "piped")
    before = len(engine_requests(chat_agent))
    proc = chat_agent.cli("chat", "--project", "piped", input=SCRIPT, timeout=60)
    assert proc.returncode == 1, "mistakes in piped input end in a non-zero exit"
    assert "Traceback" not in proc.stderr
    assert "/retry" in proc.stdout and "Multi-line input" in proc.stdout, "/help lists the commands"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: unknown command '/frobnicate'; /help lists the commands (nothing was sent)",
        "Error: unknown parameter 'temprature'; /set takes: temperature, top_p, top_k, min_p, max_tokens, seed, "
        "presence_penalty, frequency_penalty, repeat_penalty, stop",
        "Error: temperature takes a number, not 'hot'",
        "Error: temperature must be from 0 to 2, not 3",
        errors[4],
    ] and "no-such-model" in errors[4]
    assert re.search(r"Last reply: \d+ prompt \+ 4 completion tokens", proc.stdout), proc.stdout
    assert re.search(r"Parameters\s+temperature=0.2, top_k=5", proc.stdout) and "Answer briefly." in proc.stdout

    sent = engine_requests(chat_agent)[before:]
    assert [user_texts(b) for b in sent] == [["hello there"], ["hello there"], ["line one\nline two"],
                                             ["line one\nline two", "first \nsecond"]], \
        "commands are never sent; /retry resends; after /clear only the new conversation"
    assert all(b["temperature"] == 0.2 and b["top_k"] == 5 for b in sent), "/set applies to every reply"
    assert all(b["messages"][0] == {"role": "system", "content": "Answer briefly."} for b in sent)
    assert len([m for m in sent[1]["messages"] if m["role"] == "assistant"]) == 0, "/retry replaced the reply"

    stored = sessions_of(chat_agent, project["id"])
    by_first = {user_texts(s)[0]: s for s in stored}
    assert set(by_first) == {"hello there", "line one\nline two"}, "/clear started a second session"
    assert user_texts(by_first["line one\nline two"]) == ["line one\nline two", "first \nsecond"]
    second = by_first["line one\nline two"]
    assert f"slp chat --resume {second['id']}" in proc.stderr


def test_project_and_model_switches_and_the_base_model_warning(chat_agent):
    """/project applies that project's prompt and starts a session there; a base model is warned of
    before the chat starts and when /model picks one."""
    new_project(chat_agent, "plain")
    pirates = new_project(chat_agent, "pirates", system_prompt="You are a pirate.", params={"temperature": 1.5})
    new_project(chat_agent, "basic", model="gemma-3-270m")
    base = chat_agent.cli("chat", "--project", "basic", input="/exit\n", timeout=60)
    assert base.returncode == 0 and "Warning: gemma-3-270m is a base model" in base.stderr, base.stderr
    plain = chat_agent.cli("chat", "--project", "plain", input="/show\n/exit\n", timeout=60)
    assert plain.returncode == 0 and "Warning" not in plain.stderr, "a chat model is not warned of"

    before = len(engine_requests(chat_agent))
    proc = chat_agent.cli("chat", "--project", "plain",
                          input="/project pirates\nahoy\n/model gemma-3-270m\n/show\n/exit\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Warning: gemma-3-270m is a base model" in proc.stderr
    assert re.search(r"Model\s+gemma-3-270m\n", proc.stdout) and re.search(r"Project\s+pirates", proc.stdout)
    [sent] = engine_requests(chat_agent)[before:]
    assert sent["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert sent["temperature"] == 1.5, "the project's defaults apply"
    [session] = sessions_of(chat_agent, pirates["id"])
    assert user_texts(session) == ["ahoy"]


class Terminal:
    """`slp chat` in a pseudo-terminal: what it prints is read as it comes."""

    def __init__(self, agent):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([*SLP, "chat"], stdin=slave, stdout=slave, stderr=slave, env={
            **agent.env, "TERM": "dumb"}, close_fds=True)
        os.close(slave)
        self.master, self.seen = master, ""

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 20) -> re.Match:
        """Read until `pattern` matches what came after the last match."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.seen)
            if match:
                self.seen = self.seen[match.end():]
                return match
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.seen[-2000:]!r}"
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_ctrl_c_stops_the_reply_and_history_comes_back_with_up(chat_agent):
    """At a terminal: Ctrl-C mid-reply closes the stream (the engine stops sending) and the prompt
    comes back; the next message works; the up arrow recalls the last line; Ctrl-C at the prompt says how
    to leave; Ctrl-D leaves."""
    term = Terminal(chat_agent)
    try:
        term.expect(r"/help for commands")
        term.send("/set max_tokens 1000\n")
        term.expect(r"Set max_tokens = 1000")
        term.send("tell me a long story\n")
        term.expect(r" w3")
        term.proc.send_signal(signal.SIGINT)
        term.expect(r"\(stopped; this turn is dropped\)")
        term.expect(r"> ")
        assert term.proc.poll() is None, "Ctrl-C during a reply does not end the chat"
        story = [p for p in chat_agent.record.glob("*.request.json")
                 if "tell me a long story" in p.read_text()]
        reply = story[0].with_name(story[0].name.replace(".request.json", ".reply"))
        size = wait_for(lambda: (s := reply.stat().st_size) == (time.sleep(0.5) or reply.stat().st_size) and s,
                        10, "the engine to stop sending")
        assert reply.read_bytes().count(b'"content":" w') < 100 and b"[DONE]" not in reply.read_bytes(), size

        term.send("/set max_tokens\n")
        term.send("next one\n")
        term.expect(r" w1 w2 w3 w4")
        term.expect(r"> ")
        term.send("\x1b[A\n")  # up arrow: the last line again
        term.expect(r" w1 w2 w3 w4")
        term.expect(r"> ")
        last = engine_requests(chat_agent)[-1]
        assert user_texts(last) == ["next one", "next one"], "the stopped turn was dropped; up recalled"
        term.proc.send_signal(signal.SIGINT)  # at the prompt: a hint, not an exit
        term.expect(r"\(Ctrl-D or /exit to leave\)")
        term.expect(r"> ")  # readline reads again: a Ctrl-D sent before then went to a terminal in line mode
        assert term.proc.poll() is None
        term.send("\x04")  # Ctrl-D
        term.expect(r"slp chat --resume \w+")
        assert term.proc.wait(timeout=10) == 0
    finally:
        term.close()


def test_the_gemma_base_model_chats_in_its_own_turn_format(agent, second_model):
    """On the real engine: gemma-3-270m has no chat template, so slp starts its engine with llama.cpp's
    built-in `gemma` one; the prompt a chat builds is Gemma's turns, not the generic ChatML fallback."""
    details = requests.get(f"{agent.url}/v1/models/gemma-3-270m", timeout=60).json()["details"]
    assert details["kind"] == "base" and "not chat" in details["purpose"]
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Name a colour."}]}
    shaped = requests.post(f"{agent.url}/apply-template", json=body, timeout=120)
    assert shaped.status_code == 200, shaped.text
    prompt = shaped.json()["prompt"]
    assert "<start_of_turn>user\nName a colour.<end_of_turn>" in prompt and "<|im_start|>" not in prompt, prompt
    reply = requests.post(f"{agent.url}/v1/chat/completions", json={**body, "max_tokens": 8}, timeout=120)
    assert reply.status_code == 200 and "<|im_start|>" not in reply.json()["choices"][0]["message"]["content"]


def test_a_model_without_any_chat_template_is_refused_a_chat_until_one_is_chosen(tmp_path, default_model,
                                                                                 engine_binary):
    """On the real engine, SmolLM2 copied without its chat template (a llama: no single known format): every
    route that would format a chat refuses it with one clear 400 (OpenAI's envelope, Ollama's for /api/chat),
    which `slp chat` prints as its one line; text completion works. A misspelt template changes nothing;
    `slp model template plain chatml` restarts its engine with `--chat-template chatml` and it chats."""
    models = tmp_path / "models"
    plain = without_chat_template(default_model, models / "plain.gguf")
    agent = make_agent(tmp_path / "home", model="plain", models_dir=str(models), max_tokens="16")
    try:
        agent.start()
        question = [{"role": "user", "content": "What is the capital of France?"}]
        for path, body in (("/v1/chat/completions", {"messages": question}),
                           ("/v1/chat/completions", {"messages": question, "stream": True}),
                           ("/v1/responses", {"input": "What is the capital of France?"}),
                           ("/v1/messages", {"messages": question, "max_tokens": 8}),
                           ("/api/chat", {"messages": question}),
                           ("/api/generate", {"prompt": "What is the capital of France?"})):
            reply = requests.post(agent.url + path, json={"model": "plain", **body}, timeout=60)
            assert reply.status_code == 400, (path, reply.text)
            error = reply.json()["error"]
            message = error if path.startswith("/api/") else error["message"]
            if not path.startswith("/api/"):
                assert (error["code"], error["type"], error["param"]) == \
                    ("model_has_no_chat_template", "invalid_request_error", "model"), error
            assert message.startswith("The model 'plain' is a base model without a chat template") and \
                "`slp model template plain chatml`" in message and "/v1/completions" in message, message

        proc = agent.cli("chat", input="/model plain\nhello\n/exit\n", timeout=60)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert errors == [f"Error: {message}"], proc.stderr
        assert "Warning: plain is a base model without a chat template" in proc.stderr

        text = requests.post(agent.url + "/v1/completions", json={"model": "plain", "prompt": "The capital of "
                             "France is", "max_tokens": 4, "temperature": 0}, timeout=120)
        assert text.status_code == 200 and text.json()["choices"][0]["text"], text.text

        wrong = agent.cli("model", "template", "plain", "chatmk")
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert wrong.stderr.startswith("Error: unknown chat template 'chatmk'") and "Traceback" not in wrong.stderr
        assert not (models / ".plain.settings.json").exists()

        chosen = agent.cli("model", "template", "plain", "chatml")
        assert chosen.returncode == 0 and "Unloaded plain in the agent" in chosen.stderr, chosen.stderr
        details = requests.get(f"{agent.url}/v1/models/plain", timeout=60).json()["details"]
        assert (details["kind"], details["template"], details["chat_format"]) == ("base", "chatml", "chatml")
        reply = requests.post(f"{agent.url}/v1/chat/completions", timeout=120,
                              json={"model": "plain", "messages": question, "temperature": 0, "max_tokens": 10})
        assert reply.status_code == 200, reply.text
        content = reply.json()["choices"][0]["message"]["content"]
        assert "Paris" in content and "<|im_start|>" not in content, content
        engines = [p.cmdline() for p in processes_under(agent.home) if str(plain) in p.cmdline()]
        assert len(engines) == 1 and "--chat-template chatml" in " ".join(engines[0]), engines
    finally:
        agent.stop()
        kill_all_under(agent.home)
