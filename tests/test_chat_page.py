"""The chat page (`/` for a browser, `/chat`) in a real browser (Debian's Chromium, as tests/test_docs.py)
against a real agent over the real engine (SmolLM2):

- a reply streams (the page draws it several times before it ends) and shows its usage; Enter sends,
  Shift+Enter is a new line; regenerate resends without the old reply, edit resends the changed text;
- the models are listed, a base model marked; an unknown model is said in place;
- Esc stops a reply midway, and the engine cancels its task (its log says so, long before max_tokens);
- a project picked on the page applies its system prompt and defaults (the prompt grows by the system
  prompt's tokens; the project's max_tokens caps the reply); its sessions are listed and reopen, Markdown
  rendered and sanitised;
- an engine killed mid-reply shows the error in place, and the next message works once it is back;
- every request the page makes goes to the agent (each test checks what it recorded);
- with an API key, the page asks for it once and sends it; the page and its files stay public;
- when the agent stops answering, the page says so, and picks up again by itself once it is back.

One agent for the module (the engine-kill test runs last: it is the only one that disturbs it); the
API-key tests use an agent over the stand-in engine. Screenshots of light and dark land in tests/artifacts,
and in docs/screenshots with SLP_UPDATE_SCREENSHOTS=1 (what the README shows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal

import pytest
import requests

from conftest import ARTIFACTS, REPO, kill_all_under, make_agent, make_standin_agent, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATIC = REPO / "slp" / "server" / "chat_static"
SCREENSHOTS = REPO / "docs" / "screenshots"
KEY = "sk-chat-page-test-key"
LONG_SYSTEM_PROMPT = ("You are the harbour master's assistant. " * 12).strip()  # ~100 tokens, easy to count
USAGE = re.compile(r"^(\d+) tokens · prompt (\d+) · \d+\.\d s · \d+\.\d tokens/s$")

pytestmark = pytest.mark.engine


# ----------------------------------------------------------------------------- agents and the browser

@pytest.fixture(scope="module")
def chat_agent(tmp_path_factory, default_model, engine_binary):
    """This module's agent over the real engine, with short default answers. One engine thread: on shared,
    busy cores two threads that wait on each other made replies 5-10 times slower (this file took 83 s
    instead of 31 s at a load of 3 on 2 cores); what the page does does not depend on the thread count."""
    agent = make_agent(tmp_path_factory.mktemp("chat-page"), max_tokens="24", threads="1")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


@pytest.fixture(scope="module")
def keyed_standin(tmp_path_factory, default_model):
    """An agent with an API key over the stand-in engine (tests/standin_engine.py, named as such)."""
    agent = make_standin_agent(tmp_path_factory.mktemp("chat-page-keyed"), api_key=KEY, max_tokens="4")
    agent.start()
    yield agent
    agent.stop()
    kill_all_under(agent.home)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def chat_page(browser, agent, path: str = "/", color_scheme: str = "light", ready: bool = True,
              csp_blocks: bool = False, away: bool = False, provoked: tuple[int, ...] = ()):
    """A fresh tab (its own storage) on the agent's page. On exit: no JavaScript error, and every request
    the page made went to the agent's origin (nothing from a CDN or any other host). `csp_blocks`: the
    test shows the page hostile content, so what the page's Content-Security-Policy refused is logged (as
    `page.blocked`) rather than an error (DOMPurify's parse of an `onerror` attribute is refused and
    logged even though the handler is then removed). `away`: the test stops the agent, and the browser
    logs the page's refused connections meanwhile. `provoked`: the error statuses the test makes the agent
    answer (the browser logs each)."""
    context = browser.new_context(viewport={"width": 1200, "height": 800}, color_scheme=color_scheme)
    page = context.new_page()
    made: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: made.append(r.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    blocked: list[str] = []

    def console(msg) -> None:
        if msg.type != "error" or any(f"status of {status} " in msg.text for status in provoked):
            return
        if away and "ERR_CONNECTION_REFUSED" in msg.text:
            return
        (blocked if csp_blocks and "Content Security Policy" in msg.text else errors).append(msg.text)

    page.blocked = blocked
    page.on("console", console)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.status not in provoked
            else None)
    try:
        page.goto(agent.url + path)
        if ready:
            page.wait_for_selector("#project option", state="attached", timeout=30_000)
        yield page
    finally:
        context.close()
    foreign = [url for url in made if not url.startswith(agent.url + "/")]
    assert not foreign, f"the page fetched from other hosts: {foreign}"
    assert not errors, f"JavaScript errors on the page: {errors}"
    page.made = made


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def finished_reply(page, timeout: float = 60_000):
    """The last reply once it has ended (its usage, or its error, is shown under it)."""
    reply = page.locator("#conversation > article").last
    reply.locator(".usage, .error").first.wait_for(timeout=timeout)
    assert "assistant" in reply.get_attribute("class")
    return reply


def usage_of(reply) -> tuple[int, int]:
    """(completion, prompt) tokens as the page shows them under a reply."""
    text = reply.locator(".usage").inner_text()
    match = USAGE.match(text)
    assert match, f"usage line {text!r}"
    return int(match[1]), int(match[2])


def endless(route) -> None:
    """Add `ignore_eos` to the page's chat request: the engine then generates up to max_tokens whatever the
    model says, so a reply is surely still running when a test stops it or kills its engine."""
    body = json.loads(route.request.post_data)
    route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))


def engine_log(agent) -> str:
    return (agent.home / "logs" / "engine.log").read_text(errors="replace")


# ----------------------------------------------------------------------------- no browser

def test_root_answers_by_what_the_client_asks_for(chat_agent):
    page = requests.get(chat_agent.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
                        timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<title>slp chat</title>" in page.text and page.headers["Vary"] == "Accept"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for accept in (None, "*/*", "application/json"):
        plain = requests.get(chat_agent.url + "/", headers={"Accept": accept} if accept else {}, timeout=30)
        assert (plain.status_code, plain.text) == (200, "Ollama is running"), accept
        assert plain.headers["Content-Type"].startswith("text/plain")
    assert requests.head(chat_agent.url + "/", timeout=30).status_code == 200
    chat = requests.get(chat_agent.url + "/chat", headers={"Accept": "*/*"}, timeout=30)
    assert chat.status_code == 200 and chat.text == page.text, "/chat is the page whatever the client asks for"

    for name, ctype in (("chat.js", "text/javascript"), ("chat.css", "text/css"),
                        ("marked.esm.js", "text/javascript"), ("purify.min.js", "text/javascript")):
        served = requests.get(f"{chat_agent.url}/chat/static/{name}", timeout=30)
        assert served.status_code == 200 and served.headers["Content-Type"].startswith(ctype), name
        assert served.headers["Cache-Control"] == "no-cache" and served.headers["ETag"]
    missing = requests.get(chat_agent.url + "/chat/static/manifest.json", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_vendored_libraries_are_the_pinned_npm_files():
    """vendor/manifest.json names each library's npm version; the files are those bytes, with their licence."""
    manifest = json.loads((STATIC / "vendor" / "manifest.json").read_text())["files"]
    assert set(manifest) == {"marked.esm.js", "purify.min.js"}
    for name, entry in manifest.items():
        data = (STATIC / "vendor" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert entry["version"] in data[:400].decode(), f"{name} is not version {entry['version']}"
        assert (STATIC / "vendor" / entry["license_file"]).stat().st_size > 500
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]), "an exact version"


def test_the_page_and_its_files_are_public_but_the_api_needs_the_key(keyed_standin):
    url = keyed_standin.url
    assert requests.get(url + "/", headers={"Accept": "text/html"}, timeout=30).status_code == 200
    assert requests.get(url + "/", timeout=30).text == "Ollama is running"
    for path in ("/chat", "/chat/static/chat.js", "/chat/static/purify.min.js"):
        assert requests.get(url + path, timeout=30).status_code == 200, path
    assert requests.get(url + "/chat/static/index.html", timeout=30).status_code == 401, "only the listed files"
    assert requests.get(url + "/v1/projects", timeout=30).status_code == 401
    evil = requests.get(url + "/chat", headers={"Host": "evil.example"}, timeout=30)
    assert evil.status_code == 403, "the Host check still applies"


# ----------------------------------------------------------------------------- the real engine

def test_a_reply_streams_and_shows_its_usage(browser, chat_agent):
    with chat_page(browser, chat_agent) as page:
        assert page.locator("#project").input_value() == chat_agent.get("/v1/projects/general_chat")["id"]
        page.wait_for_selector("#engines li[data-state='ready']")
        page.fill("#max-tokens", "32")
        page.fill("#input", "Write a Python function")
        page.press("#input", "Shift+Enter")
        page.keyboard.type("that adds two numbers.")
        assert page.input_value("#input") == "Write a Python function\nthat adds two numbers.", "Shift+Enter is a new line"
        page.evaluate("""() => {
            window.seen = [];
            new MutationObserver(() => {
                const reply = document.querySelector('#conversation[aria-busy="true"] > article.assistant:last-child .content');
                if (reply && reply.textContent && window.seen.at(-1) !== reply.textContent) window.seen.push(reply.textContent);
            }).observe(document.getElementById('conversation'), {subtree: true, childList: true, characterData: true});
        }""")
        page.press("#input", "Enter")
        reply = finished_reply(page)
        completion, prompt = usage_of(reply)
        seen = page.evaluate("window.seen")
        final = reply.locator(".content").inner_text().strip()
        shoot(page)
    assert 1 <= completion <= 32 and prompt > 5
    assert len(seen) >= 3, f"the reply was drawn {len(seen)} times while it streamed"
    assert all(len(a) <= len(b) for a, b in zip(seen, seen[1:])), "each draw adds to the last"
    assert final, "the whole reply stays, rendered"
    assert {f"{chat_agent.url}/chat/static/{name}" for name in ("chat.js", "chat.css", "marked.esm.js",
                                                                  "purify.min.js")} <= set(page.made)
    assert f"{chat_agent.url}/v1/chat/completions" in page.made


def test_escape_stops_the_reply_and_the_engine(browser, chat_agent):
    with chat_page(browser, chat_agent) as page:
        page.route("**/v1/chat/completions", endless)
        page.fill("#max-tokens", "2000")
        before = len(engine_log(chat_agent))
        send(page, "Tell me a very long story.")
        page.wait_for_function("() => document.querySelector('#conversation > article.assistant:last-child "
                               ".content').textContent.length > 20", timeout=30_000)
        assert page.locator("#stop").is_visible()
        page.keyboard.press("Escape")
        reply = finished_reply(page)
        assert reply.locator(".usage").inner_text().startswith("stopped")
        assert page.locator("#send").is_visible() and page.locator("#stop").is_hidden()

    def cancelled():
        new = engine_log(chat_agent)[before:]
        released = re.findall(r"release: .*stop processing: n_tokens = (\d+)", new)
        return "cancel task" in new and released and int(released[-1])

    n_tokens = wait_for(cancelled, 15, "the engine to cancel the task after the page stopped")
    assert n_tokens < 1000, f"the engine went on for {n_tokens} tokens after the page stopped"


def test_a_project_s_system_prompt_and_defaults_apply(browser, chat_agent):
    created = requests.post(chat_agent.url + "/v1/projects", timeout=30, json={
        "name": "harbour", "system_prompt": LONG_SYSTEM_PROMPT, "params": {"max_tokens": 6, "temperature": 0}})
    assert created.status_code == 201, created.text
    project = created.json()
    system_tokens = len(requests.post(chat_agent.url + "/tokenize", json={"content": LONG_SYSTEM_PROMPT},
                                      timeout=30).json()["tokens"])
    with chat_page(browser, chat_agent) as page:
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/completions") else None)
        page.fill("#max-tokens", "2")
        send(page, "Hello, who are you?")
        _, general_prompt = usage_of(finished_reply(page))
        page.select_option("#project", label="harbour")
        assert page.locator("#system-prompt").text_content() == LONG_SYSTEM_PROMPT
        assert page.locator("#conversation > article").count() == 0, "another project starts a new chat"
        page.fill("#max-tokens", "")  # the project's default, then
        send(page, "Hello, who are you?")
        completion, prompt = usage_of(finished_reply(page))
    assert sent[-1]["project_id"] == project["id"] and "model" not in sent[-1]
    assert [m["role"] for m in sent[-1]["messages"]] == ["user"], "the page sends no system prompt itself"
    # The page sent the user's message alone; the engine saw the project's system prompt before it (the
    # general chat's prompt, with the model's default system line, is shorter than that system prompt alone).
    assert general_prompt < system_tokens <= prompt - 5, (general_prompt, system_tokens, prompt)
    assert completion == 6, "the project's max_tokens applies"
    sessions = chat_agent.get(f"/v1/projects/{project['id']}/sessions")["data"]
    assert [s["id"] for s in sessions] == [sent[-1]["session_id"]]


def test_an_earlier_session_reopens_rendered_and_sanitised(browser, chat_agent):
    question = ("Say **hello** `code` <img src=\"data:,\" onerror=\"window.owned=1\"><script>window.owned=2</script>"
                " ![tracker](http://tracker.example/pixel.png)")
    stored = requests.post(chat_agent.url + "/v1/chat/completions", timeout=60, json={
        "session_id": "reopen-me", "max_tokens": 6, "messages": [{"role": "user", "content": question}]})
    assert stored.status_code == 200, stored.text
    answer = stored.json()["choices"][0]["message"]["content"]
    with chat_page(browser, chat_agent, csp_blocks=True) as page:
        page.click("#sessions button[data-session='reopen-me']")
        user = page.locator("#conversation > article.user")
        user.wait_for()
        assert user.locator("strong").inner_text() == "hello" and user.locator("code").inner_text() == "code"
        assert user.locator("script").count() == 0 and user.locator("img[onerror]").count() == 0
        assert page.evaluate("window.owned") is None, "Markdown's HTML is sanitised"
        tracker = user.locator("img[alt='tracker']")
        assert tracker.get_attribute("src") is None, "another host's image is not loaded (nor asked for)"
        assert tracker.get_attribute("title") == "not loaded: http://tracker.example/pixel.png"
        shown = page.locator("#conversation > article.assistant .content").inner_text()
        assert re.findall(r"\w+", shown) == re.findall(r"\w+", answer), "the stored reply, rendered"
        page.fill("#max-tokens", "4")
        send(page, "And again?")
        finished_reply(page)
        assert page.locator("#sessions button[aria-current='true']").get_attribute("data-session") == "reopen-me"
    session = chat_agent.get("/v1/projects/general_chat/sessions/reopen-me")
    assert [m["content"] for m in session["messages"] if m["role"] == "user"] == [question, "And again?"]


def test_regenerate_and_edit_resend(browser, chat_agent):
    with chat_page(browser, chat_agent) as page:
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/completions") else None)
        page.fill("#max-tokens", "3")
        send(page, "Name a colour.")
        finished_reply(page)
        page.get_by_role("button", name="Ask again for this reply").click()  # drops the old reply at once
        finished_reply(page)
        assert page.locator("#conversation > article").count() == 2, "the new reply replaced the old one"
        page.get_by_role("button", name="Edit and resend this message").click()
        assert page.input_value("#input") == "Name a colour." and page.locator("#conversation > article").count() == 0
        assert page.evaluate("document.activeElement.id") == "input", "the text is ready to edit"
        page.fill("#input", "Name a fruit.")
        page.press("#input", "Enter")
        finished_reply(page)
        assert page.locator("#conversation > article.user .content").inner_text() == "Name a fruit."
    assert [[m["content"] for m in body["messages"]] for body in sent] == [
        ["Name a colour."], ["Name a colour."], ["Name a fruit."]], "regenerate resends without the old reply"
    assert len({body["session_id"] for body in sent}) == 1, "one conversation"


def test_models_are_listed_a_base_model_marked_and_an_unknown_one_said_in_place(browser, chat_agent, second_model):
    with chat_page(browser, chat_agent, provoked=(404,)) as page:
        page.wait_for_selector("#model option[value='gemma-3-270m']", state="attached")
        assert page.locator("#model option[value='gemma-3-270m']").inner_text() == \
            "gemma-3-270m (base model: continues text)"
        assert page.locator("#model option[value='slp-orchestra-mini']").inner_text() == "slp-orchestra-mini"
        # The list is from when the page loaded: a model removed since then is unknown to the agent.
        page.evaluate("document.getElementById('model').add(new Option('removed-since', 'removed-since'))")
        page.select_option("#model", "removed-since")
        send(page, "hi")
        error = finished_reply(page).locator(".error")
        assert error.inner_text().startswith("Unknown model: The model 'removed-since' does not exist")
        assert error.get_attribute("role") == "alert"


def shoot(page) -> None:
    """Light, then dark through the page's toggle (checked to change the colours): tests/artifacts, and
    docs/screenshots when SLP_UPDATE_SCREENSHOTS=1."""
    folders = [ARTIFACTS] + ([SCREENSHOTS] if os.environ.get("SLP_UPDATE_SCREENSHOTS") == "1" else [])
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / "chat-light.png"))
    page.click("#theme")
    dark = page.evaluate(background)
    assert light != dark and page.get_attribute("html", "data-theme") == "dark"
    for folder in folders:
        page.screenshot(path=str(folder / "chat-dark.png"))


def test_the_api_key_is_asked_once_and_sent(browser, keyed_standin):
    with chat_page(browser, keyed_standin, path="/chat", ready=False, provoked=(401,)) as page:
        dialog = page.locator("#key-dialog")
        dialog.wait_for()
        page.fill("#key", "wrong")
        page.press("#key", "Enter")
        page.wait_for_selector("#key-error", state="visible")
        page.fill("#key", KEY)
        page.press("#key", "Enter")
        page.wait_for_selector("#project option", state="attached")
        assert page.evaluate("sessionStorage.getItem('slp.apiKey')") == KEY
        authorized: list[str] = []
        page.on("request", lambda r: authorized.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
        send(page, "hi")
        reply = finished_reply(page)
        assert reply.locator(".content").inner_text().strip() == "w1 w2 w3 w4"  # the stand-in's four tokens
        page.reload()
        page.wait_for_selector("#project option", state="attached")
        assert dialog.is_hidden(), "asked once: the key is kept for the tab"
    assert authorized and set(authorized) == {f"Bearer {KEY}"}


def test_the_page_picks_up_again_when_the_agent_comes_back(browser, keyed_standin):
    """After the key test: it stops and restarts that module's agent (on the same port)."""
    with chat_page(browser, keyed_standin, path="/chat", ready=False, away=True, provoked=(401,)) as page:
        page.fill("#key", KEY)
        page.press("#key", "Enter")
        page.wait_for_selector("#engines li[data-state='ready']")
        keyed_standin.stop()
        page.wait_for_selector("#banner:has-text('not answering')", timeout=10_000)
        keyed_standin.start()
        page.wait_for_selector("#banner", state="hidden", timeout=15_000)
        page.wait_for_selector("#engines li[data-state='ready']")
        send(page, "hi")
        assert finished_reply(page).locator(".content").inner_text().strip() == "w1 w2 w3 w4"


def test_an_engine_killed_mid_reply_shows_the_error_and_the_next_message_works(browser, chat_agent):
    """Last: it is the one test that disturbs the module's agent."""
    with chat_page(browser, chat_agent) as page:
        page.route("**/v1/chat/completions", endless)
        page.fill("#max-tokens", "2000")
        pid = chat_agent.engine_pid()
        send(page, "Tell me a very long story.")
        page.wait_for_function("() => document.querySelector('#conversation > article.assistant:last-child "
                               ".content').textContent.length > 10", timeout=30_000)
        os.kill(pid, signal.SIGKILL)
        reply = finished_reply(page)
        assert "engine stopped in the middle of this reply" in reply.locator(".error").inner_text()
        assert reply.locator(".content").inner_text(), "what came before the crash stays"
        assert reply.get_by_role("button", name="Ask again for this reply").inner_text() == "Retry"
        wait_for(lambda: chat_agent.status()["engine"]["state"] == "ready" and chat_agent.engine_pid() != pid, 60,
                 "the supervisor to restart the engine")
        page.wait_for_selector("#engines li[data-state='ready']", timeout=15_000)
        page.unroute("**/v1/chat/completions")
        page.fill("#max-tokens", "4")
        send(page, "Hello?")
        completion, _ = usage_of(finished_reply(page))
        assert 1 <= completion <= 4
        assert page.locator("#conversation .error").count() == 0, "the failed reply made way for the new turn"
