"""A corpus of client mistakes over every route: each gets a 4xx in OpenAI's shape naming the problem,
never a 5xx, and the engine keeps serving (nothing reached it that could crash or hang it).

What slp refuses is what would make the engine misbehave or harm the agent; what the engine serves passes
(tests/test_client_compat.py). Unknown fields are refused only under SLP_STRICT (the last tests here)."""

from __future__ import annotations

import http.client
import json
import re
import socket

import pytest
import requests

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def send(agent, method: str, path: str, body: bytes | None = None, content_type: str | None = "application/json",
         headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=60)
    hdrs = dict(headers or {})
    if content_type:
        hdrs["Content-Type"] = content_type
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, {"raw": raw.decode("utf-8", "replace")}


def j(obj) -> bytes:
    return json.dumps(obj).encode()


CASES = [
    # (id, method, path, body, content type, expected status, words the message must contain)
    ("malformed json", "POST", CHAT, b'{"messages": [', "application/json", 400, "not valid JSON"),
    ("not an object", "POST", CHAT, b"[1, 2, 3]", "application/json", 400, "JSON object"),
    ("empty body", "POST", CHAT, b"", "application/json", 400, "empty"),
    ("wrong content type", "POST", CHAT, b"<xml/>", "application/xml", 415, "Content-Type"),
    ("multipart", "POST", CHAT, b"--x--", "multipart/form-data; boundary=x", 415, "Content-Type"),
    ("invalid utf-8", "POST", CHAT, b'{"messages": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("deep nesting", "POST", CHAT, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 400,
     "nested"),
    ("deep nesting in an extra field", "POST", CHAT,
     j({"messages": OK_MESSAGES, "metadata": json.loads("[" * 100 + "]" * 100)}), "application/json", 400, "nested"),
    ("missing messages", "POST", CHAT, j({"model": "slp-orchestra-mini"}), "application/json", 400, "messages"),
    ("empty messages", "POST", CHAT, j({"messages": []}), "application/json", 400, "messages"),
    ("messages wrong type", "POST", CHAT, j({"messages": "hello"}), "application/json", 400, "messages"),
    ("bad role", "POST", CHAT, j({"messages": [{"role": "wizard", "content": "x"}]}), "application/json", 400, "role"),
    ("content wrong type", "POST", CHAT, j({"messages": [{"role": "user", "content": 42}]}), "application/json", 400,
     "content"),
    ("negative max_tokens", "POST", CHAT, j({"messages": OK_MESSAGES, "max_tokens": -5}), "application/json", 400,
     "max_tokens"),
    ("absurd max_tokens", "POST", CHAT, j({"messages": OK_MESSAGES, "max_tokens": 10**12}), "application/json", 400,
     "max_tokens"),
    ("temperature string", "POST", CHAT, j({"messages": OK_MESSAGES, "temperature": "hot"}), "application/json", 400,
     "temperature"),
    ("temperature absurd", "POST", CHAT, j({"messages": OK_MESSAGES, "temperature": 1e308}), "application/json",
     400, "temperature"),
    ("n < 1", "POST", CHAT, j({"messages": OK_MESSAGES, "n": 0}), "application/json", 400, "n"),
    ("n beyond int32", "POST", CHAT, j({"messages": OK_MESSAGES, "n": 1 << 32}), "application/json", 400, "n"),
    ("stream not bool", "POST", CHAT, j({"messages": OK_MESSAGES, "stream": "yes"}), "application/json", 400,
     "stream"),
    ("number as string", "POST", CHAT, j({"messages": OK_MESSAGES, "top_p": "0.5"}), "application/json", 400,
     "top_p"),
    ("too many stops", "POST", CHAT, j({"messages": OK_MESSAGES, "stop": [f"s{i}" for i in range(257)]}),
     "application/json", 400, "stop"),
    ("top_k beyond int32", "POST", CHAT, j({"messages": OK_MESSAGES, "top_k": 1 << 31}), "application/json", 400,
     "top_k"),
    ("null name", "POST", CHAT, j({"messages": [{"role": "user", "content": "x", "name": None}]}),
     "application/json", 400, "name"),
    ("legacy logprobs absurd", "POST", "/v1/completions", j({"prompt": "x", "logprobs": 10**6}), "application/json",
     400, "logprobs"),
    ("model path traversal", "POST", CHAT, j({"messages": OK_MESSAGES, "model": "../../../etc/passwd"}),
     "application/json", 404, "does not exist"),
    ("model odd characters", "POST", CHAT, j({"messages": OK_MESSAGES, "model": "a\u0000b\nc"}), "application/json",
     404, "does not exist"),
    ("model wrong type", "POST", CHAT, j({"messages": OK_MESSAGES, "model": ["x"]}), "application/json", 400, "model"),
    ("project traversal", "POST", CHAT, j({"messages": OK_MESSAGES, "project_id": "../../x"}), "application/json",
     400, "project_id"),
    ("session id odd", "POST", CHAT, j({"messages": OK_MESSAGES, "session_id": "a/b"}), "application/json", 400,
     "session_id"),
    ("completion prompt missing", "POST", "/v1/completions", j({"max_tokens": 3}), "application/json", 400, "prompt"),
    ("completion prompt wrong type", "POST", "/v1/completions", j({"prompt": {"a": 1}}), "application/json", 400,
     "prompt"),
    ("embedding input missing", "POST", "/v1/embeddings", j({"model": "slp-orchestra-mini"}), "application/json",
     400, "input"),
    ("project create bad name", "POST", "/v1/projects", j({"name": "../etc"}), "application/json", 422, "name"),
    ("project create unknown field", "POST", "/v1/projects", j({"name": "ok-name", "colour": "red"}),
     "application/json", 422, "colour"),
    ("project create unknown param", "POST", "/v1/projects", j({"name": "ok-name", "params": {"warp": 9}}),
     "application/json", 422, "warp"),
    ("project create wrong type", "POST", "/v1/projects", j({"name": "ok-name", "params": {"temperature": "x"}}),
     "application/json", 422, "temperature"),
    ("project create huge prompt", "POST", "/v1/projects", j({"name": "ok-name", "system_prompt": "x" * 200_001}),
     "application/json", 422, "system_prompt"),
    ("project create malformed", "POST", "/v1/projects", b"{", "application/json", 400, "not valid JSON"),
    ("project get traversal", "GET", "/v1/projects/..%2F..%2Fetc", None, None, 404, "no project"),
    ("project patch unknown", "PATCH", "/v1/projects/no-such", j({"description": "x"}), "application/json", 404,
     "no project"),
    ("project delete system", "DELETE", "/v1/projects/general_chat", None, None, 409, "general_chat"),
    ("model get unknown", "GET", "/v1/models/..%2Fx", None, None, 404, "does not exist"),
    ("unknown route", "GET", "/v1/nothing-here", None, None, 404, "no route"),
    ("wrong method", "DELETE", CHAT, None, None, 405, "not allowed"),
]


@pytest.mark.parametrize("name, method, path, body, ctype, status, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(agent, name, method, path, body, ctype, status, words):
    got, payload = send(agent, method, path, body, ctype)
    assert got == status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words.lower() in error["message"].lower(), error


def test_huge_body_is_413(agent):
    body = j({"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]})
    try:
        got, payload = send(agent, "POST", CHAT, body)
    except (ConnectionResetError, BrokenPipeError):
        pytest.fail("the agent must answer 413, not drop the connection")
    assert got == 413 and "too large" in payload["error"]["message"]


def test_header_injection_is_refused_or_harmless(agent):
    # A CR/LF inside a header value never reaches a handler: the HTTP parser refuses it.
    body = j({"messages": OK_MESSAGES, "max_tokens": 1})
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"X-SLP-Project: general_chat\rX-Evil: 1\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line
    # An odd but well-formed project header is a clean 404.
    got, payload = send(agent, "POST", CHAT, j({"messages": OK_MESSAGES}), headers={"X-SLP-Project": "<script>"})
    assert got == 404 and payload["error"]["code"] == "project_not_found"


def test_a_form_or_text_body_from_a_browser_page_is_refused(agent):
    """A page may POST a form or text type anywhere without a CORS preflight: from an origin that is not
    allowed, such a body is refused (application/json needs the preflight, which that origin fails)."""
    body = j({"messages": OK_MESSAGES, "max_tokens": 1})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        got, payload = send(agent, "POST", CHAT, body, ctype, headers={"Origin": "http://evil.example"})
        assert got == 403, (ctype, payload)
        assert payload["error"]["code"] == "origin_not_allowed" and "Content-Type" in payload["error"]["message"]
    preflight = requests.options(f"{agent.url}{CHAT}", timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 403 and "Access-Control-Allow-Origin" not in preflight.headers


def test_unknown_fields_are_refused_under_slp_strict(fresh_agent):
    """SLP_STRICT keeps refusing fields neither OpenAI nor llama-server defines (typos), before the engine;
    the fields they define, newer OpenAI ones included, still pass."""
    agent = fresh_agent(strict="true", max_tokens="4")
    agent.start()
    for path, body in [(CHAT, {"messages": OK_MESSAGES, "max_token": 3}),
                       ("/v1/completions", {"prompt": "x", "temprature": 0.5}),
                       ("/v1/embeddings", {"input": "x", "encodingformat": "float"})]:
        got, payload = send(agent, "POST", path, j(body))
        assert got == 400, (path, payload)
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "Unrecognized request argument" in error["message"] and "SLP_STRICT" in error["message"], error
        assert error["param"] in body
    got, payload = send(agent, "POST", CHAT, j({"messages": OK_MESSAGES, "prompt_cache_key": "k",
                                                 "safety_identifier": "u1", "n_probs": 0}))
    assert got == 200, payload


def test_regression_unknown_field_names_with_control_characters_cannot_break_the_headers(agent):
    """Found by the schemathesis fuzz: an unknown field named with a NUL or a newline went into the
    X-SLP-Unknown-Fields header as it was, aiohttp refused to write it, and the client got a dropped
    connection instead of an answer."""
    body = {"model": "slp-orchestra-mini", "prompt": "hello", "max_tokens": 2, "a\u0000b": 1, "x\ny": 2,
            "plain": 3}
    for stream in (False, True):
        resp = requests.post(f"{agent.url}/v1/completions", json={**body, "stream": stream}, timeout=60)
        assert resp.status_code == 200, resp.text
        names = resp.headers["X-SLP-Unknown-Fields"]
        assert '"a\\u0000b"' in names and '"x\\ny"' in names and "plain" in names, names


def test_the_engine_still_serves_after_the_corpus(agent):
    response = requests.post(f"{agent.url}{CHAT}", json={"messages": OK_MESSAGES, "max_tokens": 2}, timeout=60)
    assert response.status_code == 200
    assert agent.status()["engine"]["crashes"] == 0
