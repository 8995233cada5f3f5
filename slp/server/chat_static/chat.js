// The chat page: talks to the agent it came from (relative URLs only) through the same API any client
// uses: /v1/projects, /v1/models, /v1/engines, and /v1/chat/completions streamed. No build step, no
// framework: one module, the DOM, and two vendored libraries (marked, DOMPurify; vendor/manifest.json).
import { marked } from "./marked.esm.js";

const DOMPurify = window.DOMPurify; // purify.min.js, a classic script the page loads before this module
const $ = (id) => document.getElementById(id);
const KEY = "slp.apiKey"; // sessionStorage: this tab only, gone when it closes
const POLL_MS = 3000; // engines and the agent's liveness; faster while it is away
const RETRY_MS = 1000;

const state = {
  projects: [],
  project: null, // the project's id: the agent applies its model, system prompt and defaults
  messages: [], // {role, content, meta?}; meta: {usage, seconds, tokensPerSecond, stopped, error}
  sessionId: newSessionId(),
  controller: null, // the AbortController of the reply being streamed
  agentAway: false,
};

// ----------------------------------------------------------------------------- talking to the agent

class PageError extends Error {
  constructor(message, code = null, status = null) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function newSessionId() {
  // crypto.randomUUID exists only in secure contexts; a LAN address over http is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function api(path, { method = "GET", json, signal } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    agentAway();
    throw new PageError("The agent is not answering. The page retries until it is back.", "agent_away");
  }
  agentBack();
  if (response.status === 401) {
    askForKey(Boolean(key));
    throw new PageError("This agent needs its API key.", "invalid_api_key", 401);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch { /* not the agent's envelope: say what we know */ }
  return explain(error, response.status);
}

// The agent's error envelope, {message, code}, said for a person: what happened and what to do.
function explain(error, status = null) {
  const message = error.message || `HTTP ${status}`;
  const words = {
    engine_unavailable: `The engine is not ready (${message}). It is being restarted; send again in a moment.`,
    engine_failed: `The engine stopped in the middle of this reply (${message}). The agent restarts it; send again.`,
    model_too_large: `This model is too large for the memory budget: ${message}`,
    model_not_found: `Unknown model: ${message}`,
    rate_limit_exceeded: `The agent is busy (${message}). Try again shortly.`,
  }[error.code];
  return new PageError(words || message, error.code || null, status);
}

async function getJSON(path) {
  return (await api(path)).json();
}

// ----------------------------------------------------------------------------- the agent away and back

function banner(text) {
  const el = $("banner");
  el.textContent = text || "";
  el.hidden = !text;
}

function agentAway() {
  if (state.agentAway) return;
  state.agentAway = true;
  banner("The agent is not answering. Retrying…");
}

function agentBack() {
  if (!state.agentAway) return;
  state.agentAway = false;
  banner("");
  loadAll().catch(() => {});
}

async function pollEngines() {
  try {
    const engines = await getJSON("v1/engines");
    const list = $("engines");
    list.replaceChildren(...engines.data.map((row) => {
      const li = document.createElement("li");
      li.dataset.state = row.state;
      li.textContent = `${row.model}: ${row.state}${row.state === "ready" ? "" : ` (${row.reason})`}`;
      return li;
    }));
    if (!engines.data.length) list.replaceChildren(item("none loaded"));
  } catch { /* agentAway() said so; keep polling */ }
  setTimeout(pollEngines, state.agentAway ? RETRY_MS : POLL_MS);
}

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

// ----------------------------------------------------------------------------- projects, models, sessions

async function loadAll() {
  await loadProjects();
  await Promise.all([loadModels(), loadSessions()]);
}

async function loadProjects() {
  state.projects = (await getJSON("v1/projects")).data;
  const select = $("project");
  const chosen = state.project || state.projects.find((p) => p.active)?.id || state.projects[0]?.id;
  select.replaceChildren(...state.projects.map((p) => new Option(p.name, p.id, false, p.id === chosen)));
  state.project = chosen;
  showProject();
}

function currentProject() {
  return state.projects.find((p) => p.id === state.project);
}

function showProject() {
  const project = currentProject();
  $("system-prompt").textContent = project?.system_prompt || "(none)";
  $("model").options[0].textContent = `the project's (${project?.model ?? "?"})`;
}

async function loadModels() {
  const models = (await getJSON("v1/models")).data;
  // A base model (no chat template) continues text rather than holding a conversation: say so. The list
  // has no details; one request per installed file (its names share them) asks.
  const roots = [...new Set(models.map((m) => m.root))];
  const kinds = new Map(await Promise.all(roots.map(async (root) => {
    const model = await getJSON(`v1/models/${encodeURIComponent(root)}`).catch(() => null);
    return [root, model?.details?.kind];
  })));
  const select = $("model");
  const kept = select.value;
  select.replaceChildren(select.options[0], ...models.map((m) => {
    const base = kinds.get(m.root) === "base";
    const option = new Option(base ? `${m.id} (base model: continues text)` : m.id, m.id, false, m.id === kept);
    option.dataset.kind = kinds.get(m.root) || "";
    return option;
  }));
}

async function loadSessions() {
  if (!state.project) return;
  const sessions = (await getJSON(`v1/projects/${encodeURIComponent(state.project)}/sessions`)).data;
  $("sessions").replaceChildren(...sessions.map((s) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.session = s.id;
    button.textContent = `${new Date(s.updated_at).toLocaleString()} · ${s.message_count} messages`;
    if (s.id === state.sessionId) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openSession(s.id).catch(showError));
    li.append(button);
    return li;
  }));
  if (!sessions.length) $("sessions").replaceChildren(item("none yet"));
}

async function openSession(id) {
  stop();
  const session = await getJSON(`v1/projects/${encodeURIComponent(state.project)}/sessions/${encodeURIComponent(id)}`);
  state.sessionId = id;
  state.messages = session.messages
    .filter((m) => m.role === "user" || m.role === "assistant")
    .map((m) => ({ role: m.role, content: textOf(m.content) }));
  render();
  loadSessions().catch(() => {});
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => part.text || "").join("");
  return "";
}

function newChat() {
  stop();
  state.messages = [];
  state.sessionId = newSessionId();
  render();
  $("input").focus();
}

// ----------------------------------------------------------------------------- the conversation

// A reply is untrusted text: its Markdown becomes HTML that DOMPurify sanitises. An image from another host
// is not loaded (it would tell that host what the page shows; the page's CSP would refuse it anyway), and
// links open in a new tab without access to this one.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "IMG" && node.hasAttribute("src")) {
    const url = new URL(node.getAttribute("src"), location.href);
    if (url.protocol !== "data:" && url.origin !== location.origin) {
      node.removeAttribute("src");
      node.title = `not loaded: ${url.href}`;
    }
  }
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.target = "_blank";
    node.rel = "noopener noreferrer";
  }
});

function markdown(text) {
  return DOMPurify.sanitize(marked.parse(text));
}

function render() {
  $("conversation").replaceChildren(...state.messages.map(messageView));
  const last = $("conversation").lastElementChild;
  if (last) last.scrollIntoView({ block: "end" });
}

function messageView(message, index) {
  const article = document.createElement("article");
  article.className = `message ${message.role}`;
  article.setAttribute("aria-label", message.role === "user" ? "You" : "Assistant");
  const content = document.createElement("div");
  content.className = "content";
  content.innerHTML = markdown(message.content);
  article.append(content);
  const meta = message.meta;
  if (meta?.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    error.textContent = meta.error;
    article.append(error);
  }
  if (meta?.usage || meta?.stopped) article.append(usageView(meta));
  if (!message.streaming) article.append(actionsFor(message, index));
  return article;
}

function usageView(meta) {
  const p = document.createElement("p");
  p.className = "usage";
  const parts = [];
  if (meta.stopped) parts.push("stopped");
  if (meta.usage) {
    p.dataset.promptTokens = meta.usage.prompt_tokens;
    p.dataset.completionTokens = meta.usage.completion_tokens;
    parts.push(`${meta.usage.completion_tokens} tokens`, `prompt ${meta.usage.prompt_tokens}`);
  }
  parts.push(`${meta.seconds.toFixed(1)} s`);
  if (meta.tokensPerSecond) parts.push(`${meta.tokensPerSecond.toFixed(1)} tokens/s`);
  p.textContent = parts.join(" · ");
  return p;
}

function actionsFor(message, index) {
  const actions = document.createElement("div");
  actions.className = "actions";
  const last = index === state.messages.length - 1;
  if (message.role === "user") {
    actions.append(button("Edit", "Edit and resend this message", () => edit(index)));
  } else if (last) {
    actions.append(button(message.meta?.error ? "Retry" : "Regenerate", "Ask again for this reply", regenerate));
  }
  return actions;
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function edit(index) {
  if (state.controller) return;
  $("input").value = state.messages[index].content;
  state.messages = state.messages.slice(0, index); // what followed was an answer to the old text
  render();
  $("input").focus();
}

function regenerate() {
  if (state.controller) return;
  if (state.messages.at(-1)?.role === "assistant") state.messages.pop();
  render();
  reply();
}

function send() {
  const input = $("input");
  const text = input.value.trim();
  if (!text || state.controller) return;
  input.value = "";
  if (state.messages.at(-1)?.meta?.error) state.messages.pop(); // the failed reply is replaced by this turn
  state.messages.push({ role: "user", content: text });
  render();
  reply();
}

function request() {
  const body = {
    messages: state.messages.filter((m) => !m.meta?.error).map(({ role, content }) => ({ role, content })),
    stream: true,
    stream_options: { include_usage: true },
    project_id: state.project,
    session_id: state.sessionId,
  };
  const model = $("model").value;
  if (model) body.model = model;
  const temperature = $("temperature").value;
  if (temperature !== "") body.temperature = Number(temperature);
  const maxTokens = $("max-tokens").value;
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

// One reply, streamed: server-sent events read from fetch's ReadableStream, drawn at most once a frame.
async function reply() {
  const body = request();
  const message = { role: "assistant", content: "", streaming: true };
  state.messages.push(message);
  render();
  const view = $("conversation").lastElementChild;
  const content = view.querySelector(".content");
  const controller = new AbortController();
  state.controller = controller;
  busy(true);
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let drawn = false;
  const draw = () => {
    drawn = false;
    content.innerHTML = markdown(message.content);
    view.scrollIntoView({ block: "end" });
  };
  try {
    const response = await api("v1/chat/completions", { method: "POST", json: body, signal: controller.signal });
    for await (const event of serverSentEvents(response.body)) {
      if (event === "[DONE]") break;
      const chunk = JSON.parse(event);
      if (chunk.error) throw explain(chunk.error);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        firstToken ??= performance.now();
        message.content += delta;
        if (!drawn) {
          drawn = true;
          requestAnimationFrame(draw);
        }
      }
      if (chunk.usage) usage = chunk.usage;
    }
    message.meta = { usage, ...timing(started, firstToken, usage) };
  } catch (err) {
    if (err.name === "AbortError") {
      message.meta = { stopped: true, ...timing(started, firstToken, null) };
    } else {
      message.meta = { error: err.message, ...timing(started, firstToken, null) };
    }
  } finally {
    delete message.streaming;
    state.controller = null;
    busy(false);
    render();
    $("input").focus();
    loadSessions().catch(() => {});
  }
}

function timing(started, firstToken, usage) {
  const end = performance.now();
  const generating = firstToken === null ? 0 : (end - firstToken) / 1000;
  const tokensPerSecond = usage && generating > 0 ? usage.completion_tokens / generating : null;
  return { seconds: (end - started) / 1000, tokensPerSecond };
}

async function* serverSentEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r", "");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield data;
    }
  }
}

// Aborting the fetch closes the connection; the agent then cancels the engine's request (it stops generating).
function stop() {
  state.controller?.abort();
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("conversation").setAttribute("aria-busy", String(on));
}

function showError(err) {
  banner(err.message);
}

// ----------------------------------------------------------------------------- the key, the theme, the keys

function askForKey(refused) {
  const dialog = $("key-dialog");
  $("key-error").hidden = !refused;
  if (!dialog.open) dialog.showModal();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("key-dialog").close();
  loadAll().catch(showError);
});

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  const dark = theme ? theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  $("theme").textContent = dark ? "Light" : "Dark";
  $("theme").setAttribute("aria-label", dark ? "Switch to the light theme" : "Switch to the dark theme");
}

$("theme").addEventListener("click", () => {
  const theme = $("theme").textContent === "Dark" ? "dark" : "light";
  localStorage.setItem("slp.theme", theme);
  applyTheme(theme);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.controller) {
    event.preventDefault();
    stop();
  }
});

$("stop").addEventListener("click", stop);
$("new-chat").addEventListener("click", newChat);
$("project").addEventListener("change", () => {
  state.project = $("project").value;
  showProject();
  newChat();
  loadSessions().catch(showError);
});

applyTheme(localStorage.getItem("slp.theme"));
loadAll().catch(showError);
pollEngines();
