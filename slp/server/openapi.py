"""The agent's OpenAPI 3.1 document, built from the same pydantic models the handlers validate with.

Request bodies come from `slp.server.schemas` (proxied OpenAI routes) and `slp.projects.schema`
(projects), so the documented checks are the checks. Response bodies are described by the models
below (and the project models), accurate to what the agent and llama-server really send; they allow
extra properties because llama-server adds fields (`timings`, `system_fingerprint`, …) over time.

`tests/test_docs.py` fails when a route in `app.router` has no entry in `operations()`
or the other way round, and fuzzes the live agent against this document.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode

import slp
from slp.projects.schema import (
    SESSION_ID_PATTERN,
    Project,
    ProjectCreate,
    ProjectUpdate,
    ProjectUsage,
    SessionDetail,
    SessionSummary,
)
from slp.server.docs_files import STATIC_FILES
from slp.server.schemas import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    ApplyTemplateRequest,
    ChatCompletionRequest,
    LoadModelRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    RerankRequest,
    ResponsesRequest,
    TokenizeRequest,
    _Known,
)
from slp.settings import DEFAULT_MODEL_ALIAS

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
EXAMPLE_PROJECT = "general_chat"


def ref(name: str) -> dict:
    return {"$ref": REF_TEMPLATE.format(model=name)}


# ----------------------------------------------------------------------------- response models

class _Open(BaseModel):
    """Responses may carry more fields than listed (llama-server adds some over versions)."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    message: str = Field(..., description="What went wrong, for a human.")
    type: str = Field(..., examples=["invalid_request_error"],
                      description="invalid_request_error, authentication_error, permission_error, conflict_error, "
                                  "rate_limit_error, service_unavailable, server_error.")
    param: Optional[str] = Field(..., description="The request field at fault, e.g. `messages.0.role`, or null.")
    code: Optional[str] = Field(..., examples=["model_not_found"], description="A machine-readable code, or null.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, used for every refusal by the agent itself."""

    error: ErrorDetail

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": {
        "message": "The model 'gpt-4' does not exist or is not installed; see GET /v1/models or `slp model list`",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}]})


class Usage(_Open):
    prompt_tokens: int = Field(..., ge=0)
    completion_tokens: int = Field(..., ge=0)
    total_tokens: int = Field(..., ge=0)


class ChatCompletionMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = Field(None, examples=["The capital of France is Paris."])


class ChatCompletionChoice(_Open):
    index: int = Field(..., ge=0)
    message: ChatCompletionMessage
    finish_reason: Optional[str] = Field(None, examples=["stop"], description="stop, length, tool_calls, …")


class ChatCompletion(_Open):
    """A chat completion (non-streaming)."""

    id: str = Field(..., examples=["chatcmpl-3bU5KcTzK1mJm3o0tD5uNwYc7nG1sQpX"])
    object: Literal["chat.completion"]
    created: int = Field(..., description="Unix time (s).")
    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    choices: list[ChatCompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None
    timings: Optional[dict[str, Any]] = Field(None, description="llama-server: prompt/generation timings.")


class ChatCompletionDelta(_Open):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatCompletionChunkChoice(_Open):
    index: int = Field(..., ge=0)
    delta: ChatCompletionDelta
    finish_reason: Optional[str] = None


class ChatCompletionChunk(_Open):
    """One server-sent event of a streamed chat completion: `data: <this JSON>`; the stream ends with
    `data: [DONE]`. With `stream_options.include_usage` the last chunk has empty `choices` and `usage`."""

    id: str = Field(..., examples=["chatcmpl-3bU5KcTzK1mJm3o0tD5uNwYc7nG1sQpX"])
    object: Literal["chat.completion.chunk"]
    created: int
    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    choices: list[ChatCompletionChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class CompletionChoice(_Open):
    index: int = Field(..., ge=0)
    text: str
    logprobs: Optional[Any] = None
    finish_reason: Optional[str] = None


class Completion(_Open):
    """A text completion; a list `prompt` gets one choice per prompt. Streamed, each event is
    `data: <Completion JSON>` with a piece of text, then `data: [DONE]`."""

    id: str = Field(..., examples=["chatcmpl-0AtKlsnz6e8Y8c1WcPESXmjwvmldSaTD"])
    object: Literal["text_completion"]
    created: int
    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class Embedding(_Open):
    object: Literal["embedding"] = "embedding"
    index: int = Field(..., ge=0)
    embedding: Union[list[float], str] = Field(..., description="Floats, or base64 when encoding_format=base64.")


class EmbeddingUsage(_Open):
    prompt_tokens: int = Field(..., ge=0)
    total_tokens: int = Field(..., ge=0)


class EmbeddingList(_Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Optional[EmbeddingUsage] = None


class ModelFileInfo(_Open):
    path: str
    role: Literal["model", "mmproj"] = Field(..., description="A model file (or one part of a split one), "
                                                              "or a vision model's projector.")
    sha256: Optional[str] = Field(None, description="Checked at download (Hugging Face's LFS metadata, the "
                                                    "catalog's pin) or hashed when added; null if not known.")
    size: Optional[int] = None
    exists: bool


class ModelDetails(_Open):
    """What `slp model show --json` says: the GGUF's own facts and the store's."""

    name: str
    aliases: list[str]
    path: str = Field(..., description="The file the engine loads (a split model's first part).")
    size_bytes: int
    source: str = Field(..., description="catalog, store (a copy), file (used in place), or "
                                         "hf:OWNER/REPO/FILE@COMMIT.", examples=["catalog"])
    missing: bool = Field(..., description="A file it names has disappeared.")
    sha256: Optional[str]
    mmproj: Optional[str]
    files: list[ModelFileInfo]
    architecture: Optional[str]
    parameters: Optional[int]
    quantization: Optional[str]
    context_length: Optional[int]
    chat_template: Optional[bool]
    license: Optional[str]
    size_label: Optional[str]
    error: Optional[str] = Field(None, description="Why the file's facts are unknown (missing or damaged).")


class Model(_Open):
    id: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    object: Literal["model"]
    created: int
    owned_by: str = Field(..., examples=["slp"])
    root: str = Field(..., description="The installed model (GGUF file stem) this name serves.",
                      examples=["SmolLM2-135M-Instruct-Q4_1"])
    details: Optional[ModelDetails] = Field(None, description="Only from GET /v1/models/{model}.")


class ModelList(_Open):
    object: Literal["list"]
    data: list[Model]


class EngineHealth(_Open):
    state: Literal["stopped", "starting", "ready", "restarting", "failed", "stopping", "unloaded"]
    reason: str


class Health(_Open):
    """Agent liveness and engine readiness."""

    status: str = Field(..., description="`ok` when the engine is ready, else the engine's state.",
                        examples=["ok"])
    agent: Literal["ok"]
    engine: EngineHealth


class AgentInfo(_Open):
    pid: int
    version: str = Field(..., examples=[slp.__version__])
    uptime_s: float
    rss_bytes: int


class EngineMemory(_Open):
    rss_bytes: int
    percent: float
    cpu_seconds: float
    gpu_bytes: Optional[int] = Field(None, description="NVIDIA GPU memory the engine holds (CUDA builds).")


class EngineEvent(_Open):
    at: float = Field(..., description="Unix time (s).")
    state: str
    reason: str


class EngineExit(_Open):
    reason: str = Field(..., description="crash, hang, stall, start-timeout or spawn-failed.")
    detail: str
    code: Optional[int] = None
    signal: Optional[str] = None
    at: float
    log_tail: list[str]


class EngineStatus(_Open):
    state: Literal["stopped", "starting", "ready", "restarting", "failed", "stopping", "unloaded"]
    reason: str
    pid: Optional[int]
    port: Optional[int]
    model_path: Optional[str]
    restarts: int
    uptime_s: Optional[float]
    last_exit: Optional[EngineExit]
    memory: Optional[EngineMemory]
    history: list[EngineEvent]
    log_tail: Optional[list[str]] = Field(None, description="The engine log's last lines while it is not ready.")


class ModelInfo(_Open):
    """The served model: store facts plus its GGUF metadata (or `error` when that cannot be read)."""

    name: Optional[str]
    aliases: list[str]
    path: str
    size_bytes: int
    size: Optional[str] = Field(..., examples=["98.4 MB"])
    architecture: Optional[str] = None
    quantization: Optional[str] = None
    context_length: Optional[int] = None
    parameters: Optional[int] = None
    size_label: Optional[str] = None


class MemoryUsage(_Open):
    """The engine's share of system memory; `gpu_bytes` is its NVIDIA GPU memory (null on CPU builds)."""

    percent: Optional[float]
    rss_bytes: Optional[int]
    gpu_bytes: Optional[int] = None


class ActiveProject(_Open):
    id: str
    name: str = Field(..., examples=[EXAMPLE_PROJECT])


class ConfigState(_Open):
    """The last load of the settings (start, or a reload)."""

    loaded_at: float = Field(..., description="Unix time (s).")
    error: Optional[str] = Field(..., description="Why the last reload was refused, if it was.")
    changed: list[str] = Field(..., description="Settings the last reload changed.")
    needs_agent_restart: list[str] = Field(..., description="Changed settings that apply only after a restart.")


class EngineSlots(_Open):
    busy: int
    total: int


class EngineRow(_Open):
    """One loaded engine (a row of `slp ps`)."""

    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    aliases: list[str]
    path: str
    state: Literal["stopped", "starting", "ready", "restarting", "failed", "stopping", "unloading"]
    reason: str
    pid: Optional[int]
    port: Optional[int]
    threads: int = Field(..., description="Compute threads counted against the CPU cores (0: GPU engine).")
    leases: int = Field(..., description="Requests holding this engine (admitted, streaming or waiting for it).")
    pinned: bool = Field(..., description="Kept resident: never expires or is evicted.")
    keep_alive_s: Optional[float] = Field(..., description="Seconds it stays loaded once idle (null: until unloaded).")
    estimate_bytes: int = Field(..., description="Memory it was expected to need (weights + KV cache + buffers).")
    measured_bytes: Optional[int] = Field(..., description="Memory it was measured to hold (RSS, + GPU memory).")
    rss_bytes: Optional[int]
    gpu_bytes: Optional[int]
    slots: EngineSlots
    queued: int = Field(..., description="Requests sent to it beyond its slots.")
    loaded_at: float
    last_used: float
    expires_in_s: Optional[float] = Field(..., description="Seconds until it is unloaded if still idle.")
    restarts: int
    last_exit: Optional[EngineExit]
    uptime_s: Optional[float]


class ComputeState(_Open):
    """CPU engines compute at once only while their threads fit in the cores."""

    cores: int
    threads_in_use: int
    waiting: int


class EngineList(_Open):
    object: Literal["list"]
    data: list[EngineRow]
    budget_bytes: int = Field(..., description="SLP_MEMORY_BUDGET in bytes.")
    reserved_bytes: int = Field(..., description="What the loaded engines hold or are expected to hold.")
    waiting_for_memory: int
    compute: ComputeState


class MemoryBudget(_Open):
    budget_bytes: int
    reserved_bytes: int
    waiting_for_memory: int


class UnloadResult(_Open):
    model: str
    unloaded: bool = Field(..., description="False when the model was not loaded.")
    state: Literal["unloaded"]


class WorkerMemory(_Open):
    free_bytes: int
    total_bytes: int


class WorkerRow(_Open):
    """One llama.cpp RPC worker of `SLP_WORKERS`, as the last check found it."""

    address: str = Field(..., examples=["10.0.0.2:50052"])
    state: Literal["in-use", "ready", "down", "not-answering", "incompatible", "invalid", "unknown"] = Field(
        ..., description="in-use: an engine holds it (numbers from that engine's start); the others are what "
        "the last probe found (not used while not ready).")
    detail: str = Field(..., description="Why it is not used, or its RPC protocol.")
    rtt_ms: Optional[float] = Field(None, description="Round trip of the RPC hello.")
    version: Optional[str] = Field(None, examples=["7.0.0"])
    memory: Optional[WorkerMemory] = Field(None, description="What the worker reports for its devices.")
    engine: Optional[str] = Field(None, description="The model whose engine holds it.")


class WorkerLoss(_Open):
    address: str
    state: str
    detail: str
    engine: str
    at: float


class Status(_Open):
    """Everything `slp status` shows."""

    object: Literal["slp.status"]
    server: Optional[str] = Field(..., examples=["http://127.0.0.1:38540"])
    agent: AgentInfo
    engine: EngineStatus
    engine_build: dict[str, Any] = Field(..., description="How the llama-server binary was built (may be empty).")
    model: Optional[ModelInfo]
    quantization: Optional[str] = Field(..., examples=["Q4_1"])
    context_window: int = Field(..., examples=[4096])
    flash_attention: bool
    model_size: Optional[str]
    memory_usage: MemoryUsage
    gpu: str = Field(..., examples=["None (CPU only)"])
    restarts: int
    config: Optional[ConfigState] = None
    engines: list[EngineRow] = Field(default_factory=list, description="Every loaded engine (`slp ps`).")
    memory_budget: Optional[MemoryBudget] = None
    compute: Optional[ComputeState] = None
    workers: list[WorkerRow] = Field(default_factory=list, description="RPC workers (`SLP_WORKERS`).")
    worker_losses: list[WorkerLoss] = Field(default_factory=list, description="Workers an engine lost lately.")
    active_project: ActiveProject


class ProjectList(BaseModel):
    object: Literal["list"]
    data: list[Project]


class ProjectDeleted(BaseModel):
    id: str
    object: Literal["project.deleted"]
    deleted: bool


class SessionList(BaseModel):
    object: Literal["list"]
    data: list[SessionSummary]


class ResponsesUsage(_Open):
    input_tokens: int = Field(..., ge=0)
    output_tokens: int = Field(..., ge=0)
    total_tokens: int = Field(..., ge=0)


class ResponseObject(_Open):
    """An OpenAI Responses API response (llama-server's)."""

    id: str = Field(..., examples=["resp_jpkOuE1MdbviEIqc7l57cZ39zdh9ziee"])
    object: Literal["response"]
    created_at: int
    status: str = Field(..., examples=["completed"])
    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    output: list[dict[str, Any]] = Field(..., description="Output items, e.g. a `message` with `output_text` parts.")
    usage: Optional[ResponsesUsage] = None


class ResponseStreamEvent(_Open):
    """One event of a streamed response (`event: <type>`), e.g. `response.output_text.delta`; the last is
    `response.completed`, with the whole response."""

    type: str = Field(..., examples=["response.output_text.delta"])


class AnthropicUsage(_Open):
    input_tokens: int = Field(..., ge=0)
    output_tokens: int = Field(..., ge=0)


class AnthropicMessageResponse(_Open):
    """An Anthropic Messages API reply (llama-server's)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[dict[str, Any]] = Field(..., description="Content blocks, e.g. "
                                                           "`{\"type\": \"text\", \"text\": …}`.")
    model: str = Field(..., examples=[DEFAULT_MODEL_ALIAS])
    stop_reason: Optional[str] = Field(..., examples=["end_turn"])
    stop_sequence: Optional[str] = None
    usage: AnthropicUsage


class AnthropicStreamEvent(_Open):
    """One event of a streamed Anthropic message (`event: <type>`): message_start, content_block_start,
    content_block_delta, content_block_stop, message_delta, then message_stop."""

    type: str = Field(..., examples=["content_block_delta"])


class TokenCount(_Open):
    input_tokens: int = Field(..., ge=0)


class RerankResult(_Open):
    index: int = Field(..., ge=0)
    relevance_score: float


class RerankList(_Open):
    results: list[RerankResult]


class TokenPiece(_Open):
    id: int
    piece: Union[str, list[int]] = Field(..., description="The token's text, or its bytes when not valid UTF-8.")


class TokenList(_Open):
    tokens: Union[list[int], list[TokenPiece]] = Field(..., description="Ids, or id and piece with `with_pieces`.")


class DetokenizedText(_Open):
    content: str


class TemplatedPrompt(_Open):
    prompt: str = Field(..., description="The prompt the model would be given, project system prompt included.")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest, AnthropicMessagesRequest,
    AnthropicCountTokensRequest, RerankRequest, TokenizeRequest, DetokenizeRequest, ApplyTemplateRequest,
    ProjectCreate, ProjectUpdate, LoadModelRequest)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse, ChatCompletion, ChatCompletionChunk, Completion, EmbeddingList, ResponseObject, ResponseStreamEvent,
    AnthropicMessageResponse, AnthropicStreamEvent, TokenCount, RerankList, TokenList, DetokenizedText, TemplatedPrompt,
    Model, ModelList, Health, Status, EngineList, EngineRow, UnloadResult, Project, ProjectList, ProjectDeleted, ProjectUsage, SessionList, SessionDetail)


def with_known_fields(model: type[BaseModel], schema: dict) -> dict:
    """`_Known` models pass top-level fields they do not declare to the engine (refused only under
    SLP_STRICT, unless llama-server or OpenAI defines them: ENGINE_FIELDS): say so."""
    if issubclass(model, _Known) and UNKNOWN_FIELDS_NOTE not in schema.get("description", ""):
        schema["description"] = (schema.get("description", "").rstrip() + "\n\n" + UNKNOWN_FIELDS_NOTE).strip()
    return schema


UNKNOWN_FIELDS_NOTE = ("Besides the fields listed, any field is passed to the engine as it is (llama-server "
                       "ignores what it does not know); fields that neither llama-server nor OpenAI define are "
                       "named in the `X-SLP-Unknown-Fields` response header, and refused when the agent runs "
                       "with `SLP_STRICT=true`.")


def component_schemas() -> dict[str, dict]:
    """Every model's JSON schema, its nested models (`$defs`) gathered as components beside it."""
    schemas: dict[str, dict] = {}

    def put(name: str, schema: dict) -> None:
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"two different OpenAPI schemas are named {name!r}")
        schemas[name] = schema

    def add(model: type[BaseModel], mode: JsonSchemaMode) -> None:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        for name, nested in schema.pop("$defs", {}).items():
            put(name, nested)
        put(model.__name__, with_known_fields(model, schema))

    for model in REQUEST_MODELS:
        add(model, "validation")
    for model in RESPONSE_MODELS:
        add(model, "serialization")
    return schemas


# ----------------------------------------------------------------------------- responses

ERROR_CODES = {
    400: "Invalid request: bad JSON, a field of the wrong type or out of range (`param` names it).",
    401: "Missing or wrong API key (only when the agent has one): send `Authorization: Bearer <key>`.",
    403: "The Host header is not the agent's (DNS-rebinding protection; see SLP_ALLOWED_HOSTS).",
    404: "Not found.",
    409: "Conflict: the name is taken, or the built-in project cannot be changed this way.",
    413: "Request body larger than the agent accepts (SLP_MAX_BODY_BYTES, 8 MiB by default).",
    415: "Content-Type is not JSON.",
    422: "A value the project models refuse (`param` names it), or a model that is not installed.",
    429: "Too many requests are waiting for the engine; retry after `Retry-After` seconds.",
    500: "Internal error in the agent (a bug): see the agent log.",
    503: "The engine is (re)starting or has failed; retry after `Retry-After` seconds when it is sent.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}}


def error(status: int, description: Optional[str] = None) -> dict:
    response: dict[str, Any] = {"description": description or ERROR_CODES[status],
                                "content": {"application/json": {"schema": ref("ErrorResponse")}}}
    if status in (429, 503):
        response["headers"] = copy.deepcopy(RETRY_AFTER)
    elif status == 401:
        response["headers"] = copy.deepcopy(WWW_AUTHENTICATE)
    return response


def ok(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def common_errors(*, body: bool) -> dict:
    """What any route with the API key may answer: 401 and 403, plus 413 for one that reads a body."""
    out = {401: error(401), 403: error(403)}
    if body:
        out[413] = error(413)
    return out


def proxied_errors() -> dict:
    """Errors of the proxied OpenAI routes: slp's own refusals and llama-server's, passed through."""
    return {
        **common_errors(body=True),
        400: error(400, ERROR_CODES[400] + " Refusals of llama-server itself (e.g. a prompt longer than the "
                                           "context window) have a message starting with `engine:`."),
        404: error(404, "The model (`model`) is not installed, or the project (`project_id` / `X-SLP-Project`) "
                        "does not exist."),
        415: error(415),
        429: error(429),
        500: error(500, "An internal error, in the agent or in llama-server (message `engine: …`)."),
        503: error(503),
    }


def sse(schema_name: str, lines: list[str], description: str, done: bool = True) -> dict:
    """An event stream: OpenAPI 3.1's `schema` describes one event. Its `data` is JSON (a `schema_name`, or an
    ErrorResponse when the engine fails mid-stream) or, with `done`, the final `[DONE]`."""
    data: dict[str, Any] = {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [ref(schema_name), ref("ErrorResponse")]}}
    if done:
        data = {"type": "string", "if": {"const": "[DONE]"}, "else": data}
    data["description"] = f"A {schema_name} (or ErrorResponse) as JSON" + (", or `[DONE]`." if done else ".")
    return {"schema": {"type": "object", "description": description, "required": ["data"],
                       "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"},
                                      "retry": {"type": "integer"}}},
            "example": "".join(line if line.startswith("event:") else f"data: {line}\n\n" for line in lines)}


PROJECT_HEADER = {
    "name": "X-SLP-Project", "in": "header", "required": False,
    "description": "slp: the project (id or name) the request runs in, when the body has no `project_id`; "
                   "default: the active project. The project supplies the model, system prompt and generation "
                   "defaults the request does not set.",
    "schema": {"type": "string"}, "example": EXAMPLE_PROJECT,
}


def path_param(name: str, description: str, example: str, pattern: Optional[str] = None) -> dict:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema,
            "example": example}


PROJECT_PARAM = path_param("project", "Project id or name.", EXAMPLE_PROJECT)
SESSION_PARAM = path_param("session_id", "Session id as sent in a chat request's `session_id`.", "my-session",
                           SESSION_ID_PATTERN)
MODEL_PARAM = path_param("model", "A model name or alias.", DEFAULT_MODEL_ALIAS)


def _examples_of(model: type[BaseModel]) -> Any:
    extra = model.model_config.get("json_schema_extra")
    return extra["examples"][0] if isinstance(extra, dict) and extra.get("examples") else None


def json_body(name: str, example: Any, description: str) -> dict:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": ref(name), "example": example}}}


CHAT_EXAMPLE = {"id": "chatcmpl-3bU5KcTzK1mJm3o0tD5uNwYc7nG1sQpX", "object": "chat.completion",
                "created": 1767225600, "model": DEFAULT_MODEL_ALIAS,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "The capital of France is Paris."}}],
                "usage": {"prompt_tokens": 36, "completion_tokens": 8, "total_tokens": 44},
                "system_fingerprint": "b0-0c1e5709"}
CHUNK_LINES = [
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}',
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{"content":"Paris"},"finish_reason":null}]}',
    '{"id":"chatcmpl-3bU5","object":"chat.completion.chunk","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    "[DONE]",
]
COMPLETION_LINES = [
    '{"id":"chatcmpl-0AtK","object":"text_completion","created":1767225600,"model":"slp-orchestra-mini",'
    '"choices":[{"index":0,"text":" Paris","logprobs":null,"finish_reason":null}]}',
    "[DONE]",
]
STREAM_NOTE = (" If the engine fails mid-stream, the stream ends with an `ErrorResponse` event instead of "
               "`[DONE]` (the status is already 200).")


def _proxied_operations() -> dict:
    chat_desc = (
        "OpenAI-compatible chat completion, served by llama.cpp's llama-server. slp validates the request "
        "(schema below), applies the project (model, system prompt, generation defaults), starts or switches "
        "the engine when needed, then forwards it; unknown fields go to llama-server untouched.\n\n"
        "slp fields: `project_id` (or header `X-SLP-Project`) picks the project; `session_id` stores the "
        "exchange under the project as a conversation (GET /v1/projects/{project}/sessions/{session_id}).\n\n"
        "With `\"stream\": true` the reply is `text/event-stream`: `data: <ChatCompletionChunk>` events, "
        "then `data: [DONE]`." + STREAM_NOTE)
    return {
        ("post", "/v1/chat/completions"): {
            "tags": ["OpenAI-compatible"], "operationId": "createChatCompletion", "summary": "Chat completion",
            "description": chat_desc, "parameters": [PROJECT_HEADER],
            "requestBody": json_body("ChatCompletionRequest", _examples_of(ChatCompletionRequest),
                                     "Messages and sampling options (OpenAI's chat completion request)."),
            "responses": {
                200: {"description": "The completion, or a stream of chunks when `stream` is true.",
                      "content": {"application/json": {"schema": ref("ChatCompletion"), "example": CHAT_EXAMPLE},
                                  "text/event-stream": sse("ChatCompletionChunk", CHUNK_LINES,
                                                           "Server-sent events; each `data:` line holds a "
                                                           "ChatCompletionChunk, the last one `[DONE]`.")}},
                **proxied_errors()},
        },
        ("post", "/v1/completions"): {
            "tags": ["OpenAI-compatible"], "operationId": "createCompletion", "summary": "Text completion",
            "description": "OpenAI-compatible (legacy) text completion of `prompt`; the project's generation "
                           "defaults apply (its system prompt does not). `\"stream\": true` sends "
                           "`data: <Completion>` events, then `data: [DONE]`." + STREAM_NOTE,
            "parameters": [PROJECT_HEADER],
            "requestBody": json_body("CompletionRequest", _examples_of(CompletionRequest), "Prompt and options."),
            "responses": {
                200: {"description": "The completion, or a stream when `stream` is true.",
                      "content": {"application/json": {"schema": ref("Completion")},
                                  "text/event-stream": sse("Completion", COMPLETION_LINES,
                                                           "Server-sent events; each `data:` line holds a "
                                                           "Completion with a piece of text, the last `[DONE]`.")}},
                **proxied_errors()},
        },
        ("post", "/v1/embeddings"): {
            "tags": ["OpenAI-compatible"], "operationId": "createEmbedding", "summary": "Embeddings",
            "description": "OpenAI-compatible embeddings of `input`, forwarded to llama-server. llama-server "
                           "answers 501 when it was not started with embeddings enabled.",
            "parameters": [PROJECT_HEADER],
            "requestBody": json_body("EmbeddingRequest", {"model": DEFAULT_MODEL_ALIAS,
                                                          "input": "The capital of France is Paris."},
                                     "Text (or tokens) to embed."),
            "responses": {
                200: ok("EmbeddingList", "One embedding per input."),
                **proxied_errors(),
                501: error(501, "The engine does not serve embeddings (llama-server without `--embeddings`).")},
        },
    }


RESPONSES_LINES = [
    "event: response.created\n",
    '{"type":"response.created","response":{"id":"resp_53Wi","object":"response","status":"in_progress"}}',
    "event: response.output_text.delta\n",
    '{"type":"response.output_text.delta","item_id":"msg_13uV","delta":"Paris"}',
    "event: response.completed\n",
    '{"type":"response.completed","response":{"id":"resp_53Wi","object":"response","status":"completed",'
    '"model":"slp-orchestra-mini","output":[],"usage":{"input_tokens":26,"output_tokens":2,"total_tokens":28}}}',
]
ANTHROPIC_LINES = [
    "event: message_start\n",
    '{"type":"message_start","message":{"id":"chatcmpl-28Yf","type":"message","role":"assistant","content":[],'
    '"model":"slp-orchestra-mini","stop_reason":null,"stop_sequence":null,'
    '"usage":{"input_tokens":26,"output_tokens":0}}}',
    "event: content_block_delta\n",
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Paris"}}',
    "event: message_stop\n",
    '{"type":"message_stop"}',
]


def _engine_api_operations() -> dict:
    """llama-server's other APIs, proxied the same way (validation, project, engine, forward)."""

    def op(operation_id: str, summary: str, description: str, request_model: type[BaseModel], example: dict,
           ok_response: dict, tag: str = "Engine", extra: Optional[dict] = None) -> dict:
        return {"tags": [tag], "operationId": operation_id, "summary": summary,
                "description": description + " The project (`project_id` / `X-SLP-Project`) picks the model.",
                "parameters": [PROJECT_HEADER],
                "requestBody": json_body(request_model.__name__, example, request_model.__doc__ or summary),
                "responses": {200: ok_response, **proxied_errors(), **(extra or {})}}

    def both(name: str, stream: dict, description: str) -> dict:
        return {"description": description,
                "content": {"application/json": {"schema": ref(name)}, "text/event-stream": stream}}

    question = [{"role": "user", "content": "What is the capital of France?"}]
    return {
        ("post", "/v1/responses"): op(
            "createResponse", "Responses API", "OpenAI's Responses API, served by llama-server; the project's "
            "system prompt and defaults apply. `\"stream\": true` sends typed events ending with "
            "`response.completed`." + STREAM_NOTE, ResponsesRequest,
            {"model": DEFAULT_MODEL_ALIAS, "input": "What is the capital of France?", "max_output_tokens": 16},
            both("ResponseObject", sse("ResponseStreamEvent", RESPONSES_LINES, "Server-sent events, `event:` "
                                       "named by their `type`.", done=False), "The response, or its events."),
            tag="OpenAI-compatible"),
        ("post", "/v1/messages"): op(
            "createAnthropicMessage", "Anthropic Messages API", "Anthropic's Messages API, served by "
            "llama-server; the project's system prompt and defaults apply. `\"stream\": true` sends Anthropic's "
            "events ending with `message_stop`. Errors use the OpenAI envelope like every route." + STREAM_NOTE,
            AnthropicMessagesRequest, {"model": DEFAULT_MODEL_ALIAS, "max_tokens": 64, "messages": question},
            both("AnthropicMessageResponse", sse("AnthropicStreamEvent", ANTHROPIC_LINES, "Server-sent events, "
                                                 "`event:` named by their `type`.", done=False),
                 "The message, or its events.")),
        ("post", "/v1/messages/count_tokens"): op(
            "countAnthropicTokens", "Count a message's tokens", "Anthropic's token counting, by llama-server.",
            AnthropicCountTokensRequest, {"model": DEFAULT_MODEL_ALIAS, "messages": question},
            ok("TokenCount", "The prompt's token count.")),
        ("post", "/v1/rerank"): op(
            "rerank", "Rerank documents", "Scores `documents` against `query` (llama-server's rerank API). "
            "Needs an engine started with reranking; otherwise llama-server answers 501.", RerankRequest,
            {"model": DEFAULT_MODEL_ALIAS, "query": "What is the capital of France?",
             "documents": ["Paris is the capital of France.", "Bananas are yellow."]},
            ok("RerankList", "One relevance score per document."),
            extra={501: error(501, "The engine does not rerank (llama-server without `--reranking`).")}),
        ("post", "/tokenize"): op(
            "tokenize", "Text to tokens", "Tokenizes `content` with the model's tokenizer (llama-server).",
            TokenizeRequest, {"model": DEFAULT_MODEL_ALIAS, "content": "What is the capital of France?"},
            ok("TokenList", "The tokens.")),
        ("post", "/detokenize"): op(
            "detokenize", "Tokens to text", "Turns token ids back into text (llama-server).", DetokenizeRequest,
            {"model": DEFAULT_MODEL_ALIAS, "tokens": [1780, 314, 260, 3575]}, ok("DetokenizedText", "The text.")),
        ("post", "/apply-template"): op(
            "applyTemplate", "The prompt for a conversation", "Applies the model's chat template to `messages`, "
            "the project's system prompt included, without generating (llama-server).", ApplyTemplateRequest,
            {"model": DEFAULT_MODEL_ALIAS, "messages": question}, ok("TemplatedPrompt", "The prompt.")),
    }


def _agent_operations() -> dict:
    return {
        ("get", "/health"): {
            "tags": ["Agent"], "operationId": "health", "summary": "Liveness and engine readiness",
            "description": "Answered without an API key (for service managers). 200 when the engine is ready, "
                           "503 with the engine's state and why otherwise.",
            "security": [],
            "responses": {200: ok("Health", "The engine is ready."),
                          503: ok("Health", "The engine is not ready (starting, restarting, failed, …)."),
                          403: error(403)},
        },
        ("get", "/v1/status"): {
            "tags": ["Agent"], "operationId": "getStatus", "summary": "Agent, engine, model and active project",
            "description": "Everything `slp status` shows: the agent process, the engine (state, pid, memory, "
                           "restarts, recent history), its build, the model and its metadata, context window, "
                           "GPU and the active project.",
            "responses": {200: ok("Status", "The status."), **common_errors(body=False)},
        },
        ("get", "/metrics"): {
            "tags": ["Agent"], "operationId": "getMetrics", "summary": "Prometheus metrics",
            "description": "slp's metrics (requests, latency, engine state, restarts, memory), then llama-server's "
                           "own when the engine is ready, in Prometheus' text format.",
            "responses": {200: {"description": "The metrics.",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **common_errors(body=False)},
        },
        ("get", "/v1/models"): {
            "tags": ["OpenAI-compatible"], "operationId": "listModels", "summary": "Installed models",
            "description": "Every installed model, once per alias and once under its own name (OpenAI list shape).",
            "responses": {200: ok("ModelList", "The models."), **common_errors(body=False)},
        },
        ("get", "/v1/engines"): {
            "tags": ["Agent"], "operationId": "listEngines", "summary": "Loaded engines",
            "description": "One engine per loaded model: PID, state, memory, threads, slots, queue, leases, last use "
                           "and expiry, plus the memory budget (what `slp ps` shows).",
            "responses": {200: ok("EngineList", "The engines."), **common_errors(body=False)},
        },
        ("post", "/v1/models/{model}/load"): {
            "tags": ["Agent"], "operationId": "loadModel", "summary": "Load a model now",
            "description": "Starts the model's engine (if it is not loaded) and waits until it is ready. `pin` keeps "
                           "it resident; `keep_alive` sets how long it stays once idle. The body is optional.",
            "parameters": [MODEL_PARAM],
            "requestBody": {**json_body("LoadModelRequest", {"pin": True}, "Optional: pin it, or set its keep-alive."),
                            "required": False},
            "responses": {200: ok("EngineRow", "The engine, ready."),
                          404: error(404, "No installed model has that name."), 503: error(503),
                          **common_errors(body=True), 400: error(400, "A bad option, or a model larger than the "
                                                                      "memory budget (`model_too_large`)."),
                          415: error(415)},
        },
        ("post", "/v1/models/{model}/unload"): {
            "tags": ["Agent"], "operationId": "unloadModel", "summary": "Unload a model",
            "description": "Stops the model's engine once the requests it serves have finished (none is cut).",
            "parameters": [MODEL_PARAM],
            "responses": {200: ok("UnloadResult", "Unloaded (or was not loaded)."),
                          404: error(404, "No installed model has that name."), **common_errors(body=False)},
        },
        ("get", "/v1/models/{model}"): {
            "tags": ["OpenAI-compatible"], "operationId": "retrieveModel", "summary": "One model",
            "parameters": [MODEL_PARAM],
            "responses": {200: ok("Model", "The model."), 404: error(404, "No installed model has that name."),
                          **common_errors(body=False)},
        },
    }


def _project_operations() -> dict:
    body_errors = {**common_errors(body=True), 400: error(400, "The body is not a JSON object."), 415: error(415),
                   422: error(422)}
    not_found = {404: error(404, "No project has that id or name.")}
    return {
        ("get", "/v1/projects"): {
            "tags": ["Projects"], "operationId": "listProjects", "summary": "List projects",
            "responses": {200: ok("ProjectList", "Every project, the built-in `general_chat` included."),
                          **common_errors(body=False)},
        },
        ("post", "/v1/projects"): {
            "tags": ["Projects"], "operationId": "createProject", "summary": "Create a project",
            "requestBody": json_body("ProjectCreate", {"name": "travel", "description": "Trip planning",
                                                       "system_prompt": "You are a concise travel assistant.",
                                                       "params": {"temperature": 0.7, "max_tokens": 256}},
                                     "The new project; `model` must be installed when given."),
            "responses": {201: ok("Project", "The created project."),
                          409: error(409, "A project with that name exists."), **body_errors},
        },
        ("get", "/v1/projects/{project}"): {
            "tags": ["Projects"], "operationId": "getProject", "summary": "Get a project",
            "parameters": [PROJECT_PARAM],
            "responses": {200: ok("Project", "The project."), **not_found, **common_errors(body=False)},
        },
        ("patch", "/v1/projects/{project}"): {
            "tags": ["Projects"], "operationId": "updateProject", "summary": "Change a project",
            "parameters": [PROJECT_PARAM],
            "requestBody": json_body("ProjectUpdate", {"system_prompt": "Answer in one sentence.",
                                                       "params": {"temperature": 0.2}},
                                     "Only the fields given change; see ProjectUpdate for null and `params`."),
            "responses": {200: ok("Project", "The changed project."), **not_found,
                          409: error(409, "The new name is taken, or the built-in project cannot be renamed."),
                          **body_errors},
        },
        ("delete", "/v1/projects/{project}"): {
            "tags": ["Projects"], "operationId": "deleteProject", "summary": "Delete a project",
            "description": "Deletes the project with its usage and sessions; the built-in project cannot be "
                           "deleted (409). Deleting the active project makes `general_chat` active.",
            "parameters": [PROJECT_PARAM],
            "responses": {200: ok("ProjectDeleted", "Deleted."), **not_found,
                          409: error(409, "The built-in project cannot be deleted."),
                          **common_errors(body=False)},
        },
        ("post", "/v1/projects/{project}/activate"): {
            "tags": ["Projects"], "operationId": "activateProject", "summary": "Make a project the active one",
            "description": "Requests that name no project run in the active one.",
            "parameters": [PROJECT_PARAM],
            "responses": {200: ok("Project", "The project, now active."), **not_found,
                          **common_errors(body=False)},
        },
        ("get", "/v1/projects/{project}/usage"): {
            "tags": ["Projects"], "operationId": "getProjectUsage", "summary": "Token usage of a project",
            "parameters": [PROJECT_PARAM],
            "responses": {200: ok("ProjectUsage", "Totals over every request served under the project."),
                          **not_found, **common_errors(body=False)},
        },
        ("get", "/v1/projects/{project}/sessions"): {
            "tags": ["Projects"], "operationId": "listSessions", "summary": "Conversations of a project",
            "description": "Sessions are created by chat requests that send a `session_id`; most recent first.",
            "parameters": [PROJECT_PARAM],
            "responses": {200: ok("SessionList", "The sessions."), **not_found, **common_errors(body=False)},
        },
        ("get", "/v1/projects/{project}/sessions/{session_id}"): {
            "tags": ["Projects"], "operationId": "getSession", "summary": "One conversation with its history",
            "parameters": [PROJECT_PARAM, SESSION_PARAM],
            "responses": {200: ok("SessionDetail", "The session."),
                          404: error(404, "No such project, or the project has no such session."),
                          **common_errors(body=False)},
        },
    }


def _docs_operations() -> dict:
    return {
        ("get", "/openapi.json"): {
            "tags": ["Docs"], "operationId": "getOpenAPI", "summary": "This OpenAPI 3.1 document",
            "description": "Answered without an API key.", "security": [],
            "responses": {200: {"description": "The document.",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                          403: error(403)},
        },
        ("get", "/docs"): {
            "tags": ["Docs"], "operationId": "getDocs", "summary": "Interactive API documentation (Swagger UI)",
            "description": "Swagger UI for this document; its files are served from the agent under "
                           "`/docs/static/` (never a CDN). Answered without an API key; use Authorize to "
                           "send one with \"Try it out\".",
            "security": [],
            "responses": {200: {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                          403: error(403)},
        },
        ("get", "/docs/static/{filename}"): {
            "tags": ["Docs"], "operationId": "getDocsFile", "summary": "A file of Swagger UI",
            "description": "The Swagger UI files /docs loads, from the installed swagger-ui-bundle-v2 package. "
                           "Answered without an API key.",
            "security": [],
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(STATIC_FILES)},
                            "example": "swagger-ui.css"}],
            "responses": {200: {"description": "The file.",
                                "content": {ctype: {"schema": {}} for ctype in sorted({*STATIC_FILES.values()})}},
                          304: {"description": "Not modified (the ETag matched)."},
                          401: error(401, "Not one of the files, and the agent has an API key (any other name is "
                                          "an unknown path, which needs the key like every path)."),
                          404: error(404, "Not one of the files."), 403: error(403)},
        },
    }


def operations() -> dict[tuple[str, str], dict]:
    """(method, path) → OpenAPI operation for every route the agent serves (GET routes also answer HEAD)."""
    return {**_proxied_operations(), **_engine_api_operations(), **_agent_operations(), **_project_operations(),
            **_docs_operations()}


def build_openapi(api_key_required: bool = False) -> dict:
    """The OpenAPI 3.1 document. With `api_key_required`, operations other than the public ones
    (/health, /docs, /openapi.json) require the bearer key; without, sending one is optional."""
    paths: dict[str, dict] = {}
    for (method, path), op in operations().items():
        op = copy.deepcopy(op)
        op["responses"] = {str(code): resp for code, resp in sorted(op["responses"].items())}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "slp agent API",
            "version": slp.__version__,
            "summary": "A local LLM agent: llama.cpp's llama-server behind an OpenAI-compatible API, with projects.",
            "description": (
                "The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, "
                "`/v1/models`) work with any OpenAI client: base URL `http://127.0.0.1:38540/v1`, any API key "
                "unless the agent has one. slp adds projects (a model, a system prompt and generation defaults "
                "per project, usage and stored conversations) and status.\n\n"
                "Every error is OpenAI's envelope `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. "
                "Requests must carry a loopback Host (or one in SLP_ALLOWED_HOSTS) and, when the agent has "
                "an API key, `Authorization: Bearer <key>` (use Authorize). Bodies over 8 MiB "
                "(SLP_MAX_BODY_BYTES) are refused with 413."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": "This agent"}],
        "tags": [
            {"name": "OpenAI-compatible", "description": "Proxied to llama-server, OpenAI's request/response shapes."},
            {"name": "Engine", "description": "llama-server's other APIs (Anthropic, rerank, tokenizer), proxied."},
            {"name": "Agent", "description": "Health and status of the agent and its engine."},
            {"name": "Projects", "description": "Projects, their usage and conversations."},
            {"name": "Docs", "description": "This documentation."},
        ],
        "security": [{"bearerAuth": []}] if api_key_required else [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "The agent's API key (SLP_API_KEY), when it has one."}},
        },
    }

