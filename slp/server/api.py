"""Every route of the agent, declared once: `ROUTES`.

`add_api_routes` fills the app's router from this list, and `/openapi.json` is made from the same list
(`slp.server.openapi`), so what is served and what is documented cannot drift apart: each entry names its
handler (or what the proxy forwards), its request and response models, its errors and whether it needs the
API key. The public paths the auth middleware lets through (`PUBLIC_PATHS`) come from it too.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

from aiohttp import web

from slp.projects.schema import (
    SESSION_ID_PATTERN,
    Document,
    DocumentAdded,
    DocumentPath,
    Project,
    ProjectCreate,
    ProjectUpdate,
    ProjectUsage,
    SearchQuery,
    SessionDetail,
)
from slp.projects.shaping import shape_anthropic, shape_chat, shape_completion, shape_responses
from slp.server import chat_page, docs, documents_routes, engines_routes, keys, projects_routes, routes
from slp.server.chat_files import STATIC_FILES as CHAT_FILES
from slp.server.docs_files import STATIC_FILES
from slp.server.ollama_schemas import (
    NDJSON,
    OllamaChatRequest,
    OllamaChatResponse,
    OllamaCopyRequest,
    OllamaEmbeddingResponse,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaErrorResponse,
    OllamaGenerateRequest,
    OllamaGenerateResponse,
    OllamaModelRequest,
    OllamaProgress,
    OllamaPs,
    OllamaPullRequest,
    OllamaShow,
    OllamaTags,
    OllamaUnsupportedRequest,
    OllamaVersion,
)
from slp.server.projects_routes import PROJECT_ROUTES, ProjectRoutes
from slp.server.responses import (
    EXAMPLE_PROJECT,
    AnthropicMessageResponse,
    AnthropicStreamEvent,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    DetokenizedText,
    DocumentDeleted,
    DocumentList,
    EmbeddingList,
    EngineList,
    EngineRow,
    Health,
    Model,
    ModelList,
    ProjectDeleted,
    PromptCacheCleared,
    ProjectList,
    RerankList,
    ResponseObject,
    SearchResults,
    ResponseStreamEvent,
    SessionList,
    Status,
    TemplatedPrompt,
    TokenCount,
    TokenList,
    UnloadResult,
)
from slp.server.route_table import (
    Answer,
    Forward,
    Handler,
    Route,
    Stream,
    lazy_handler,
    path_param,
    public_paths,
    register,
)
from slp.server.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    ApplyTemplateRequest,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    LoadModelRequest,
    RerankRequest,
    ResponsesRequest,
    TokenizeRequest,
)
from slp.settings import DEFAULT_MODEL_ALIAS

# ----------------------------------------------------------------------------- parameters and examples

PROJECT_HEADER = {
    "name": "X-SLP-Project", "in": "header", "required": False,
    "description": "slp: the project (id or name) the request runs in, when the body has no `project_id`; "
                   "default: the active project. The project supplies the model, system prompt and generation "
                   "defaults the request does not set.",
    "schema": {"type": "string"}, "example": EXAMPLE_PROJECT,
}
PROJECT_PARAM = path_param("project", "Project id or name.", EXAMPLE_PROJECT)
SESSION_PARAM = path_param("session_id", "Session id as sent in a chat request's `session_id`.", "my-session",
                           SESSION_ID_PATTERN)
MODEL_PARAM = path_param("model", "A model name or alias.", DEFAULT_MODEL_ALIAS)
DOCUMENT_PARAM = path_param("document", "A document's id, or its name or source when no other document has it.",
                            "manual.pdf")
FILENAME_PARAM = path_param("filename", "One of the files the page loads.", "swagger-ui.css", enum=STATIC_FILES)
CHAT_FILENAME_PARAM = path_param("filename", "One of the files the chat page loads.", "chat.js", enum=CHAT_FILES)
HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}


def static_files_route(path: str, operation: str, summary: str, tag: str, handler: Callable, description: str,
                       param: dict, content_types: set[str]) -> Route:
    """A page's files (the docs', the chat page's): public, by name from a fixed list, revalidated by ETag."""
    return Route("GET", path, operation, summary, tag, handler=handler,
                 description=description + " Answered without an API key.", params=(param,),
                 answers={200: Answer("The file.", content={ctype: {"schema": {}} for ctype in sorted(content_types)}),
                          304: Answer("Not modified (the ETag matched).")},
                 errors={404: "Not one of the files.",
                         401: "Not one of the files, and the agent has an API key (any other name is an unknown "
                              "path, which needs the key like every path)."},
                 public=True)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_EXAMPLE = {"id": "chatcmpl-3bU5KcTzK1mJm3o0tD5uNwYc7nG1sQpX", "object": "chat.completion",
                "created": 1767225600, "model": DEFAULT_MODEL_ALIAS,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "The capital of France is Paris."}}],
                "usage": {"prompt_tokens": 36, "completion_tokens": 8, "total_tokens": 44},
                "system_fingerprint": "b0-0c1e5709"}
CHUNK_LINES = (
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}',
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":null}]}',
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    "[DONE]",
)
COMPLETION_LINES = (
    '{"id":"chatcmpl-0AtK","object":"text_completion","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null}]}',
    "[DONE]",
)
RESPONSES_LINES = (
    "event: response.created\n",
    '{"type":"response.created","response":{"id":"resp_53Wi","object":"response","status":"in_progress"}}',
    "event: response.output_text.delta\n",
    '{"type":"response.output_text.delta","item_id":"msg_13uV","delta":"Paris"}',
    "event: response.completed\n",
    '{"type":"response.completed","response":{"id":"resp_53Wi","object":"response","status":"completed",'
    '"model":"slp-orchestra-mini","output":[],"usage":{"input_tokens":26,"output_tokens":2,"total_tokens":28}}}',
)
ANTHROPIC_LINES = (
    "event: message_start\n",
    '{"type":"message_start","message":{"id":"chatcmpl-28Yf","type":"message","role":"assistant","content":[],'
    '"model":"slp-orchestra-mini","stop_reason":null,"stop_sequence":null,'
    '"usage":{"input_tokens":26,"output_tokens":0}}}',
    "event: content_block_delta\n",
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Paris"}}',
    "event: message_stop\n",
    '{"type":"message_stop"}',
)
STREAM_NOTE = (" If the engine fails mid-stream, the stream ends with an `ErrorResponse` event instead of "
               "`[DONE]` (the status is already 200).")
PICKS_MODEL = " The project (`project_id` / `X-SLP-Project`) picks the model."
CHAT_DESCRIPTION = (
    "OpenAI-compatible chat completion, served by llama.cpp's llama-server. slp validates the request "
    "(schema below), applies the project (model, system prompt, generation defaults), starts or switches "
    "the engine when needed, then forwards it; unknown fields go to llama-server untouched.\n\n"
    "slp fields: `project_id` (or header `X-SLP-Project`) picks the project; `session_id` stores the "
    "exchange under the project as a conversation (GET /v1/projects/{project}/sessions/{session_id}); in a "
    "project with documents the best chunks for the last user message join the system prompt and the reply "
    "names them in `choices[0].message.annotations` (a stream: in its last chunk); `\"retrieval\": false` "
    "leaves them out.\n\n"
    "With `\"stream\": true` the reply is `text/event-stream`: `data: <ChatCompletionChunk>` events, "
    "then `data: [DONE]`." + STREAM_NOTE)


def _example_of(model: type) -> Any:
    extra = model.model_config.get("json_schema_extra")
    return extra["examples"][0] if isinstance(extra, dict) and extra.get("examples") else None


# ----------------------------------------------------------------------------- errors by kind of route

# Proxied routes: slp's own refusals and llama-server's, passed through (401, 403, 413 are added for all).
PROXIED = {
    400: "Invalid request: bad JSON, a field of the wrong type or out of range (`param` names it). Refusals of "
         "llama-server itself (e.g. a prompt longer than the context window) have a message starting with "
         "`engine:`.",
    404: "The model (`model`) is not installed, or the project (`project_id` / `X-SLP-Project`) does not exist.",
    415: None, 429: None,
    500: "An internal error, in the agent or in llama-server (message `engine: …`).",
    503: None,
}
# Proxied routes that format messages with the model's chat template (slp.server.proxy.CHAT_PATHS).
CHATS = {**PROXIED, 400: PROXIED[400] + " A model without a chat template (a base model, none chosen with "
                         "`slp model template`) is refused with code `model_has_no_chat_template`."}
PROJECT_BODY = {400: "The body is not a JSON object.", 415: None, 422: None}
NO_PROJECT = {404: "No project has that id or name."}
NO_MODEL = {404: "No installed model has that name."}
NO_DOCUMENT = {404: "No such project, or the project has no such document."}
UPLOAD = {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream",
                 "description": "The document: text, Markdown, HTML, PDF or source code (its file name picks the "
                                "format, a PDF is also known by its content)."},
        "source": {"type": "string", "maxLength": 4096,
                   "description": "What identifies the document (default: the file name), e.g. the path it came "
                                  "from: adding the same source again replaces its chunks."}}},
    "encoding": {"file": {"contentType": "application/octet-stream"}}}}
DOCUMENT_ERRORS = {
    **PROJECT_BODY, 404: "No project has that id or name.",
    400: "The body is not a JSON object or a multipart upload with a `file`, or the document cannot be indexed: "
         "empty, no text, an encrypted or unreadable PDF, a path that is relative, missing, unreadable, a folder "
         "or hidden (`code` says which).",
    403: "A document given by path from a client that is not on loopback, or an upload from a browser origin "
         "that SLP_CORS_ORIGINS does not allow.",
    413: "The document is over SLP_MAX_DOCUMENT_BYTES (32 MiB by default), or the JSON body over "
         "SLP_MAX_BODY_BYTES.",
    415: "A binary file, or text that is not UTF-8 (`code: document_binary`); or a body that is neither JSON nor "
         "multipart.",
}
DOCUMENTS_NOTE = (" A chat in a project with documents (and `retrieval` on) is given the chunks that best match "
                  "its last user message, within a share of the context window (SLP_RETRIEVAL_SHARE), and names "
                  "them in `choices[0].message.annotations` (`file_citation`; a stream: in its last chunk).")


# ----------------------------------------------------------------------------- the document

@functools.lru_cache(maxsize=2)
def _document(api_key_required: bool) -> bytes:
    """The OpenAPI document as JSON, made on first request: building it (every model's JSON schema) costs
    memory the agent otherwise never needs, so `slp.server.openapi` is imported only here."""
    from slp.server.openapi import build_openapi

    return json.dumps(build_openapi(ROUTES, api_key_required=api_key_required)).encode()


async def openapi_json(request: web.Request) -> web.Response:
    document = _document(request.app[keys.SETTINGS].api_key is not None)
    return web.Response(body=document, content_type="application/json", headers={"Cache-Control": "no-cache"})


# ----------------------------------------------------------------------------- the Ollama API

OLLAMA_QUESTION = {"model": DEFAULT_MODEL_ALIAS, "messages": QUESTION, "stream": False,
                   "options": {"num_predict": 16}}
OLLAMA_CHAT_LINES = (
    '{"model":"slp-orchestra-mini","created_at":"2026-01-01T00:00:00.000000Z","message":{"role":"assistant",'
    '"content":"Paris"},"done":false}',
    '{"model":"slp-orchestra-mini","created_at":"2026-01-01T00:00:00.100000Z","message":{"role":"assistant",'
    '"content":""},"done":true,"done_reason":"stop","total_duration":120000000,"load_duration":1000000,'
    '"prompt_eval_count":36,"prompt_eval_duration":40000000,"eval_count":2,"eval_duration":60000000}',
)
OLLAMA_GENERATE_LINES = (
    '{"model":"slp-orchestra-mini","created_at":"2026-01-01T00:00:00.000000Z","response":"Paris","done":false}',
    '{"model":"slp-orchestra-mini","created_at":"2026-01-01T00:00:00.100000Z","response":"","done":true,'
    '"done_reason":"stop","total_duration":120000000,"load_duration":1000000,"prompt_eval_count":36,'
    '"prompt_eval_duration":40000000,"eval_count":2,"eval_duration":60000000}',
)
OLLAMA_PULL_LINES = ('{"status":"pulling manifest"}',
                     '{"status":"pulling model.gguf","digest":"model.gguf","completed":1048576,"total":2097152}',
                     '{"status":"success"}')
OLLAMA_NOTE = (" Ollama's API (its clients work with `OLLAMA_HOST=http://127.0.0.1:38540`); errors are "
               "Ollama's `{\"error\": \"...\"}`.")
OLLAMA_STREAM = (" NDJSON objects as the engine generates (default), the last with `done: true`, the counters "
                 "and durations (nanoseconds, from the engine's timings); one object with `\"stream\": false`. "
                 "A stream that fails midway ends with an error object. `model` may name a project (its model, "
                 "system prompt and defaults apply; usage is counted for it).")
OLLAMA_GENERATING = {400: "Invalid request, or a refusal of the engine (message `engine: ...`).",
                     404: "No installed model or project has that name.", 429: None, 500: None, 503: None}
OLLAMA_MODEL = {400: "Invalid request.", 404: "No installed model has that name."}

# ----------------------------------------------------------------------------- the table


def ollama(name: str) -> Handler:
    """An Ollama route's handler in slp.server.ollama, imported on its first request."""
    return lazy_handler("slp.server.ollama", name)

ROUTES: tuple[Route, ...] = (
    # --- OpenAI-compatible, proxied to llama-server
    Route("POST", "/v1/chat/completions", "createChatCompletion", "Chat completion", "OpenAI-compatible",
          forward=Forward(handler="chat_completions"), description=CHAT_DESCRIPTION, params=(PROJECT_HEADER,),
          request=ChatCompletionRequest, request_example=_example_of(ChatCompletionRequest),
          request_description="Messages and sampling options (OpenAI's chat completion request).",
          answers={200: Answer("The completion, or a stream of chunks when `stream` is true.", ChatCompletion,
                               example=CHAT_EXAMPLE,
                               stream=Stream(ChatCompletionChunk, CHUNK_LINES, "Server-sent events; each `data:` "
                                             "line holds a ChatCompletionChunk, the last one `[DONE]`."))},
          errors=CHATS),
    Route("POST", "/v1/completions", "createCompletion", "Text completion", "OpenAI-compatible",
          forward=Forward(shape=shape_completion),
          description="OpenAI-compatible (legacy) text completion of `prompt`; the project's generation "
                      "defaults apply (its system prompt does not). `\"stream\": true` sends "
                      "`data: <Completion>` events, then `data: [DONE]`." + STREAM_NOTE,
          params=(PROJECT_HEADER,), request=CompletionRequest, request_example=_example_of(CompletionRequest),
          request_description="Prompt and options.",
          answers={200: Answer("The completion, or a stream when `stream` is true.", Completion,
                               stream=Stream(Completion, COMPLETION_LINES, "Server-sent events; each `data:` line "
                                             "holds a Completion with a piece of text, the last `[DONE]`."))},
          errors=PROXIED),
    Route("POST", "/v1/embeddings", "createEmbedding", "Embeddings", "OpenAI-compatible", forward=Forward(),
          description="OpenAI-compatible embeddings of `input`, forwarded to llama-server. llama-server "
                      "answers 501 when it was not started with embeddings enabled.",
          params=(PROJECT_HEADER,), request=EmbeddingRequest,
          request_example={"model": DEFAULT_MODEL_ALIAS, "input": "The capital of France is Paris."},
          request_description="Text (or tokens) to embed.",
          answers={200: Answer("One embedding per input.", EmbeddingList)},
          errors={**PROXIED, 501: "The engine does not serve embeddings (llama-server without `--embeddings`)."}),
    Route("POST", "/v1/responses", "createResponse", "Responses API", "OpenAI-compatible",
          forward=Forward(shape=shape_responses, end_marker=b"response.completed"),
          description="OpenAI's Responses API, served by llama-server; the project's system prompt and defaults "
                      "apply. `\"stream\": true` sends typed events ending with `response.completed`."
                      + STREAM_NOTE + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=ResponsesRequest, request_description=ResponsesRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "input": "What is the capital of France?",
                           "max_output_tokens": 16},
          answers={200: Answer("The response, or its events.", ResponseObject,
                               stream=Stream(ResponseStreamEvent, RESPONSES_LINES, "Server-sent events, `event:` "
                                             "named by their `type`.", done=False))},
          errors=CHATS),
    # --- llama-server's other APIs, proxied the same way (validation, project, engine, forward)
    Route("POST", "/v1/messages", "createAnthropicMessage", "Anthropic Messages API", "Engine",
          forward=Forward(shape=shape_anthropic, end_marker=b"message_stop"),
          description="Anthropic's Messages API, served by llama-server; the project's system prompt and "
                      "defaults apply. `\"stream\": true` sends Anthropic's events ending with `message_stop`. "
                      "Errors use the OpenAI envelope like every route." + STREAM_NOTE + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=AnthropicMessagesRequest,
          request_description=AnthropicMessagesRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "max_tokens": 64, "messages": QUESTION},
          answers={200: Answer("The message, or its events.", AnthropicMessageResponse,
                               stream=Stream(AnthropicStreamEvent, ANTHROPIC_LINES, "Server-sent events, `event:` "
                                             "named by their `type`.", done=False))},
          errors=CHATS),
    Route("POST", "/v1/messages/count_tokens", "countAnthropicTokens", "Count a message's tokens", "Engine",
          forward=Forward(shape=shape_anthropic, account=False),
          description="Anthropic's token counting, by llama-server." + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=AnthropicCountTokensRequest,
          request_description=AnthropicCountTokensRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "messages": QUESTION},
          answers={200: Answer("The prompt's token count.", TokenCount)}, errors=PROXIED),
    Route("POST", "/v1/rerank", "rerank", "Rerank documents", "Engine", forward=Forward(account=False),
          description="Scores `documents` against `query` (llama-server's rerank API). Needs an engine started "
                      "with reranking; otherwise llama-server answers 501." + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=RerankRequest, request_description=RerankRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "query": "What is the capital of France?",
                           "documents": ["Paris is the capital of France.", "Bananas are yellow."]},
          answers={200: Answer("One relevance score per document.", RerankList)},
          errors={**PROXIED, 501: "The engine does not rerank (llama-server without `--reranking`)."}),
    Route("POST", "/tokenize", "tokenize", "Text to tokens", "Engine", forward=Forward(account=False),
          description="Tokenizes `content` with the model's tokenizer (llama-server)." + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=TokenizeRequest, request_description=TokenizeRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "content": "What is the capital of France?"},
          answers={200: Answer("The tokens.", TokenList)}, errors=PROXIED),
    Route("POST", "/detokenize", "detokenize", "Tokens to text", "Engine", forward=Forward(account=False),
          description="Turns token ids back into text (llama-server)." + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=DetokenizeRequest, request_description=DetokenizeRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "tokens": [1780, 314, 260, 3575]},
          answers={200: Answer("The text.", DetokenizedText)}, errors=PROXIED),
    Route("POST", "/apply-template", "applyTemplate", "The prompt for a conversation", "Engine",
          forward=Forward(shape=shape_chat, account=False, documents=True),
          description="Applies the model's chat template to `messages`, the project's system prompt and the "
                      "chunks of its documents a chat would be given included, without generating (llama-server)."
                      + PICKS_MODEL,
          params=(PROJECT_HEADER,), request=ApplyTemplateRequest, request_description=ApplyTemplateRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "messages": QUESTION},
          answers={200: Answer("The prompt.", TemplatedPrompt)}, errors=PROXIED),

    # --- the agent
    Route("GET", "/health", "health", "Liveness and engine readiness", "Agent", handler=routes.health,
          description="Answered without an API key (for service managers). 200 when the engine is ready, "
                      "503 with the engine's state and why otherwise.",
          answers={200: Answer("The engine is ready.", Health),
                   503: Answer("The engine is not ready (starting, restarting, failed, …).", Health)},
          public=True),
    Route("GET", "/v1/status", "getStatus", "Agent, engine, model and active project", "Agent",
          handler=routes.status,
          description="Everything `slp status` shows: the agent process, the engine (state, pid, memory, "
                      "restarts, recent history), its build, the model and its metadata, context window, "
                      "GPU and the active project.",
          answers={200: Answer("The status.", Status)}),
    Route("GET", "/metrics", "getMetrics", "Prometheus metrics", "Agent", handler=routes.metrics,
          description="slp's metrics (requests, latency, engine state, restarts, memory), then llama-server's "
                      "own when the engine is ready, in Prometheus' text format.",
          answers={200: Answer("The metrics.", content={"text/plain": {"schema": {"type": "string"}}})}),
    Route("GET", "/v1/models", "listModels", "Installed models", "OpenAI-compatible", handler=routes.list_models,
          description="Every installed model, once per alias and once under its own name (OpenAI list shape).",
          answers={200: Answer("The models.", ModelList)}),
    Route("GET", "/v1/engines", "listEngines", "Loaded engines", "Agent", handler=engines_routes.list_engines,
          description="One engine per loaded model: PID, state, memory, threads, slots, queue, leases, last use "
                      "and expiry, plus the memory budget (what `slp ps` shows).",
          answers={200: Answer("The engines.", EngineList)}),
    Route("POST", "/v1/models/{model}/load", "loadModel", "Load a model now", "Agent",
          handler=engines_routes.load_model,
          description="Starts the model's engine (if it is not loaded) and waits until it is ready. `pin` keeps "
                      "it resident; `keep_alive` sets how long it stays once idle. The body is optional.",
          params=(MODEL_PARAM,), request=LoadModelRequest, request_example={"pin": True},
          request_description="Optional: pin it, or set its keep-alive.", request_required=False,
          answers={200: Answer("The engine, ready.", EngineRow)},
          errors={**NO_MODEL, 503: None, 415: None,
                  400: "A bad option, or a model larger than the memory budget (`model_too_large`)."}),
    Route("POST", "/v1/models/{model}/unload", "unloadModel", "Unload a model", "Agent",
          handler=engines_routes.unload_model,
          description="Stops the model's engine once the requests it serves have finished (none is cut).",
          params=(MODEL_PARAM,), answers={200: Answer("Unloaded (or was not loaded).", UnloadResult)},
          errors=NO_MODEL),
    Route("GET", "/v1/models/{model}", "retrieveModel", "One model", "OpenAI-compatible", handler=routes.get_model,
          params=(MODEL_PARAM,), answers={200: Answer("The model.", Model)}, errors=NO_MODEL),

    # --- projects
    Route("GET", "/v1/projects", "listProjects", "List projects", "Projects", handler=projects_routes.list_projects,
          answers={200: Answer("Every project, the built-in `general_chat` included.", ProjectList)}),
    Route("POST", "/v1/projects", "createProject", "Create a project", "Projects",
          handler=projects_routes.create_project, request=ProjectCreate,
          request_example={"name": "travel", "description": "Trip planning",
                           "system_prompt": "You are a concise travel assistant.",
                           "params": {"temperature": 0.7, "max_tokens": 256}},
          request_description="The new project; `model` must be installed when given.",
          answers={201: Answer("The created project.", Project)},
          errors={**PROJECT_BODY, 409: "A project with that name exists."}),
    Route("GET", "/v1/projects/{project}", "getProject", "Get a project", "Projects",
          handler=projects_routes.get_project, params=(PROJECT_PARAM,),
          answers={200: Answer("The project.", Project)}, errors=NO_PROJECT),
    Route("PATCH", "/v1/projects/{project}", "updateProject", "Change a project", "Projects",
          handler=projects_routes.update_project, params=(PROJECT_PARAM,), request=ProjectUpdate,
          request_example={"system_prompt": "Answer in one sentence.", "params": {"temperature": 0.2}},
          request_description="Only the fields given change; see ProjectUpdate for null and `params`.",
          answers={200: Answer("The changed project.", Project)},
          errors={**NO_PROJECT, **PROJECT_BODY,
                  409: "The new name is taken, or the built-in project cannot be renamed."}),
    Route("DELETE", "/v1/projects/{project}", "deleteProject", "Delete a project", "Projects",
          handler=projects_routes.delete_project,
          description="Deletes the project with its usage and sessions; the built-in project cannot be "
                      "deleted (409). Deleting the active project makes `general_chat` active.",
          params=(PROJECT_PARAM,), answers={200: Answer("Deleted.", ProjectDeleted)},
          errors={**NO_PROJECT, 409: "The built-in project cannot be deleted."}),
    Route("DELETE", "/v1/projects/{project}/prompt-cache", "clearPromptCache", "Forget a project's saved prefixes",
          "Projects", handler=projects_routes.clear_prompt_cache,
          description="Deletes the project's prefixes saved on disk (see `prompt_cache` in the project): its next "
                      "request after an engine start computes its prompt again.",
          params=(PROJECT_PARAM,), answers={200: Answer("What was deleted.", PromptCacheCleared)},
          errors=NO_PROJECT),
    Route("POST", "/v1/projects/{project}/activate", "activateProject", "Make a project the active one",
          "Projects", handler=projects_routes.activate_project,
          description="Requests that name no project run in the active one.", params=(PROJECT_PARAM,),
          answers={200: Answer("The project, now active.", Project)}, errors=NO_PROJECT),
    Route("GET", "/v1/projects/{project}/usage", "getProjectUsage", "Token usage of a project", "Projects",
          handler=projects_routes.project_usage, params=(PROJECT_PARAM,),
          answers={200: Answer("Totals over every request served under the project.", ProjectUsage)},
          errors=NO_PROJECT),
    Route("GET", "/v1/projects/{project}/sessions", "listSessions", "Conversations of a project", "Projects",
          handler=projects_routes.list_sessions,
          description="Sessions are created by chat requests that send a `session_id`; most recent first.",
          params=(PROJECT_PARAM,), answers={200: Answer("The sessions.", SessionList)}, errors=NO_PROJECT),
    Route("GET", "/v1/projects/{project}/sessions/{session_id}", "getSession", "One conversation with its history",
          "Projects", handler=projects_routes.get_session, params=(PROJECT_PARAM, SESSION_PARAM),
          answers={200: Answer("The session.", SessionDetail)},
          errors={404: "No such project, or the project has no such session."}),

    # --- a project's documents
    Route("POST", "/v1/projects/{project}/documents", "addDocument", "Add a document to a project", "Documents",
          handler=documents_routes.add_document,
          description="Indexes a document for the project's chats and search: an upload (multipart/form-data, "
                      "`file`), or JSON `{\"path\": ...}` for a file on the agent's machine (only from loopback; "
                      "no hidden paths). The text is cut into overlapping chunks of about 192 tokens, with their "
                      "offsets, indexed with SQLite FTS5. The same source added again replaces its chunks; content "
                      "already in the project is stored once (`unchanged`, 200). A document that cannot be "
                      "indexed leaves the index as it was." + DOCUMENTS_NOTE,
          params=(PROJECT_PARAM,), request=DocumentPath, request_media=UPLOAD,
          request_example={"path": "/home/me/manuals/boat.pdf"},
          request_description="A multipart upload (`file`, optional `source`), or a path on this machine as JSON.",
          answers={201: Answer("Added, or replaced (the source had other content).", DocumentAdded),
                   200: Answer("Unchanged: this content is already in the project.", DocumentAdded)},
          errors=DOCUMENT_ERRORS),
    Route("GET", "/v1/projects/{project}/documents", "listDocuments", "Documents of a project", "Documents",
          handler=documents_routes.list_documents, params=(PROJECT_PARAM,),
          answers={200: Answer("The documents, oldest first.", DocumentList)}, errors=NO_PROJECT),
    Route("GET", "/v1/projects/{project}/documents/{document}", "getDocument", "One document", "Documents",
          handler=documents_routes.get_document, params=(PROJECT_PARAM, DOCUMENT_PARAM),
          answers={200: Answer("The document.", Document)},
          errors={**NO_DOCUMENT, 400: "Several documents have that name: use the id."}),
    Route("DELETE", "/v1/projects/{project}/documents/{document}", "deleteDocument", "Remove a document",
          "Documents", handler=documents_routes.delete_document,
          description="Removes the document with its chunks: chats and searches no longer find them.",
          params=(PROJECT_PARAM, DOCUMENT_PARAM), answers={200: Answer("Removed.", DocumentDeleted)},
          errors={**NO_DOCUMENT, 400: "Several documents have that name: use the id."}),
    Route("POST", "/v1/projects/{project}/search", "searchDocuments", "Search a project's documents", "Documents",
          handler=documents_routes.search,
          description="The chunks that best match `query` (SQLite FTS5, BM25 over the query's words; stop words "
                      "left out), best first, with their document, offsets and PDF page.",
          params=(PROJECT_PARAM,), request=SearchQuery,
          request_example={"query": "How often should the bilge pump be serviced?", "top_k": 5},
          request_description="The question and how many chunks to return.",
          answers={200: Answer("The best chunks.", SearchResults)}, errors={**NO_PROJECT, **PROJECT_BODY}),

    # --- Ollama's API, translated to the same engines (slp.server.ollama)
    Route("GET", "/", "ollamaRoot", "Ollama's liveness probe, or the chat page for a browser", "Ollama",
          handler=chat_page.root,
          description="`Ollama is running`, which Ollama clients probe (HEAD or GET); a browser (`Accept` with "
                      "`text/html`) gets the chat page instead (as at `/chat`). Answered without an API key.",
          answers={200: Answer("Plain text, or the page.", content={
              "text/plain": {"schema": {"type": "string"}, "example": "Ollama is running"}, **HTML_PAGE})},
          public=True),
    Route("GET", "/api/version", "ollamaVersion", "Ollama API version", "Ollama", handler=ollama("version"),
          description="The Ollama API version these routes follow." + OLLAMA_NOTE,
          answers={200: Answer("The version.", OllamaVersion)}, error_model=OllamaErrorResponse),
    Route("GET", "/api/tags", "ollamaTags", "Installed models (Ollama)", "Ollama", handler=ollama("tags"),
          description="Every installed model with Ollama's `details` (format, family, parameter size, "
                      "quantization), size, digest (the file's sha256 when known) and time." + OLLAMA_NOTE,
          answers={200: Answer("The models.", OllamaTags)}, error_model=OllamaErrorResponse),
    Route("POST", "/api/show", "ollamaShow", "One model's facts (Ollama)", "Ollama", handler=ollama("show"),
          description="Details, `model_info` (the GGUF's key-value facts; long arrays null unless `verbose`), "
                      "the chat template, license and capabilities; for a project also its system prompt "
                      "and parameters." + OLLAMA_NOTE,
          request=OllamaModelRequest, request_example={"model": DEFAULT_MODEL_ALIAS},
          request_description=OllamaModelRequest.__doc__, answers={200: Answer("The model.", OllamaShow)},
          errors=OLLAMA_MODEL, error_model=OllamaErrorResponse),
    Route("GET", "/api/ps", "ollamaPs", "Loaded models (Ollama)", "Ollama", handler=ollama("ps"),
          description="One entry per loaded engine: memory, GPU memory, expiry, context length." + OLLAMA_NOTE,
          answers={200: Answer("The loaded models.", OllamaPs)}, error_model=OllamaErrorResponse),
    Route("POST", "/api/chat", "ollamaChat", "Chat (Ollama)", "Ollama", handler=ollama("chat"),
          description="A chat turn through the model's engine (`/v1/chat/completions`): `options` map onto the "
                      "engine's sampling fields, `format` onto its JSON schema constraint, `tools`, `think`, "
                      "`images` (vision models), `keep_alive` as in Ollama; an empty `messages` loads the model "
                      "(`keep_alive: 0` unloads it)." + OLLAMA_STREAM + OLLAMA_NOTE,
          request=OllamaChatRequest, request_example=OLLAMA_QUESTION,
          request_description=OllamaChatRequest.__doc__,
          answers={200: Answer("The answer, or its NDJSON objects.", OllamaChatResponse,
                               stream=Stream(OllamaChatResponse, OLLAMA_CHAT_LINES, "One object per line.",
                                             media=NDJSON, error_event=OllamaErrorResponse))},
          errors=OLLAMA_GENERATING, error_model=OllamaErrorResponse),
    Route("POST", "/api/generate", "ollamaGenerate", "Generate (Ollama)", "Ollama", handler=ollama("generate"),
          description="A completion of `prompt`: through the chat template with `system`, as it is with `raw` "
                      "(the engine's `/completion`), or between `prompt` and `suffix` (`/infill`, for models "
                      "with fill-in-the-middle tokens); an empty prompt loads the model." + OLLAMA_STREAM
                      + OLLAMA_NOTE,
          request=OllamaGenerateRequest, request_description=OllamaGenerateRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "prompt": "What is the capital of France?",
                           "stream": False, "options": {"num_predict": 16}},
          answers={200: Answer("The answer, or its NDJSON objects.", OllamaGenerateResponse,
                               stream=Stream(OllamaGenerateResponse, OLLAMA_GENERATE_LINES, "One object per line.",
                                             media=NDJSON, error_event=OllamaErrorResponse))},
          errors=OLLAMA_GENERATING, error_model=OllamaErrorResponse),
    Route("POST", "/api/embed", "ollamaEmbed", "Embeddings (Ollama)", "Ollama", handler=ollama("embed"),
          description="Embeddings of `input` through the engine's `/v1/embeddings` (the agent runs with "
                      "SLP_EMBEDDINGS=true; otherwise a 400 says so)." + OLLAMA_NOTE,
          request=OllamaEmbedRequest, request_description=OllamaEmbedRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "input": ["The capital of France is Paris."]},
          answers={200: Answer("One vector per input.", OllamaEmbedResponse)},
          errors=OLLAMA_GENERATING, error_model=OllamaErrorResponse),
    Route("POST", "/api/embeddings", "ollamaEmbeddings", "Embedding (Ollama, older)", "Ollama",
          handler=ollama("embeddings"), description="The older call: one `prompt`, one `embedding`." + OLLAMA_NOTE,
          request=OllamaEmbeddingsRequest, request_description=OllamaEmbeddingsRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "prompt": "The capital of France is Paris."},
          answers={200: Answer("The vector.", OllamaEmbeddingResponse)},
          errors=OLLAMA_GENERATING, error_model=OllamaErrorResponse),
    Route("POST", "/api/pull", "ollamaPull", "Pull a model (Ollama)", "Ollama", handler=ollama("pull"),
          description="Installs what `slp model pull` accepts: a catalog model, `hf.co/OWNER/REPO[:QUANT]` "
                      "(installed under its file's name and also answering to that name) or a .gguf path. "
                      "NDJSON progress objects (`\"stream\": false`: one `success`); a pull that fails midway "
                      "ends with an error object." + OLLAMA_NOTE,
          request=OllamaPullRequest, request_description=OllamaPullRequest.__doc__,
          request_example={"model": DEFAULT_MODEL_ALIAS, "stream": False},
          answers={200: Answer("Done, or the progress objects.", OllamaProgress,
                               stream=Stream(OllamaProgress, OLLAMA_PULL_LINES, "One object per line.",
                                             media=NDJSON, error_event=OllamaErrorResponse))},
          errors={400: "Not something slp can pull, or the pull failed (the message says why)."},
          error_model=OllamaErrorResponse),
    Route("DELETE", "/api/delete", "ollamaDelete", "Delete a model (Ollama)", "Ollama", handler=ollama("delete"),
          description="`slp model rm`: forgets the model and deletes the files slp downloaded (never a file "
                      "registered in place), after unloading its engine." + OLLAMA_NOTE,
          request=OllamaModelRequest, request_description=OllamaModelRequest.__doc__,
          request_example={"model": "my-model"}, answers={200: Answer("Deleted (no body).")},
          errors=OLLAMA_MODEL, error_model=OllamaErrorResponse),
    Route("POST", "/api/copy", "ollamaCopy", "Another name for a model (Ollama)", "Ollama", handler=ollama("copy"),
          description="Records `destination` as a model on the same files (nothing is copied; deleting it "
                      "leaves the files)." + OLLAMA_NOTE,
          request=OllamaCopyRequest, request_description=OllamaCopyRequest.__doc__,
          request_example={"source": DEFAULT_MODEL_ALIAS, "destination": "my-model"},
          answers={200: Answer("Copied (no body).")},
          errors={400: "An invalid or taken destination.", 404: "No installed model has the source's name."},
          error_model=OllamaErrorResponse),
    Route("POST", "/api/create", "ollamaCreate", "Create a model (not served)", "Ollama", handler=ollama("unsupported"),
          description="slp keeps GGUF files, not Ollama images: always a 400 that says what to do instead.",
          request=OllamaUnsupportedRequest, request_description=OllamaUnsupportedRequest.__doc__,
          request_example={"model": "my-model", "from": DEFAULT_MODEL_ALIAS},
          answers={200: Answer("Never.")}, errors={400: "Always."}, error_model=OllamaErrorResponse),
    Route("POST", "/api/push", "ollamaPush", "Push a model (not served)", "Ollama", handler=ollama("unsupported"),
          description="slp does not push to registries: always a 400.",
          request=OllamaUnsupportedRequest, request_description=OllamaUnsupportedRequest.__doc__,
          request_example={"model": "my-model"},
          answers={200: Answer("Never.")}, errors={400: "Always."}, error_model=OllamaErrorResponse),

    # --- this documentation: public (a browser cannot send a key when it opens /docs, and these hold no
    # data; every operation tried from the page still needs the key, entered with Swagger's Authorize)
    Route("GET", "/openapi.json", "getOpenAPI", "This OpenAPI 3.1 document", "Docs",
          handler=openapi_json, description="Answered without an API key.",
          answers={200: Answer("The document.", content={"application/json": {"schema": {"type": "object"}}})},
          public=True),
    Route("GET", "/docs", "getDocs", "Interactive API documentation (Swagger UI)", "Docs", handler=docs.docs_page,
          description="Swagger UI for this document; its files are served from the agent under "
                      "`/docs/static/` (never a CDN). Answered without an API key; use Authorize to "
                      "send one with \"Try it out\".",
          answers={200: Answer("The page.", content={"text/html": {"schema": {"type": "string"}}})}, public=True),
    static_files_route("/docs/static/{filename}", "getDocsFile", "A file of Swagger UI", "Docs", docs.static_file,
                       "The Swagger UI files /docs loads, from the installed swagger-ui-bundle-v2 package.",
                       FILENAME_PARAM, set(STATIC_FILES.values())),

    # --- the chat page: public like the docs (it asks for the key, and sends it with every API call)
    Route("GET", "/chat", "getChatPage", "The chat page", "Chat", handler=chat_page.chat_page,
          description="A chat in the browser: projects and models, streamed replies rendered as Markdown, stop, "
                      "regenerate, edit, earlier sessions, usage and the loaded engines. Its files come from the "
                      "agent under `/chat/static/` (never a CDN). Answered without an API key; the page asks for "
                      "it when the agent has one.",
          answers={200: Answer("The page.", content=HTML_PAGE)}, public=True),
    static_files_route("/chat/static/{filename}", "getChatFile", "A file of the chat page", "Chat",
                       chat_page.static_file, "The chat page's script, style sheet and vendored libraries (marked, "
                       "DOMPurify), from the slp package.", CHAT_FILENAME_PARAM, {c for _, c in CHAT_FILES.values()}),
)

PUBLIC_PATHS = public_paths(ROUTES)


def add_api_routes(app: web.Application, proxy: Any, projects: ProjectRoutes) -> None:
    """Serve every route of `ROUTES` on `app`: the proxied ones by `proxy`, the project ones with `projects`."""
    app[PROJECT_ROUTES] = projects
    app[keys.PROXY] = proxy  # the Ollama routes translate through the proxy's lease and accounting
    register(app, ROUTES, proxy)
