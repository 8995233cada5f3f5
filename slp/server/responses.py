"""The bodies the agent answers with, as pydantic models: slp's own routes build and return them, and the
OpenAPI document is made from them, so the docs cannot drift from the answers.

Models of what llama-server sends (chat completions, streams, …) only document the proxied routes; they
allow extra properties because llama-server adds fields (`timings`, `system_fingerprint`, …) over time.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

import slp
from slp.projects.schema import Document, Project, SearchHit, SessionSummary
from slp.settings import DEFAULT_MODEL_ALIAS

EXAMPLE_PROJECT = "general_chat"


class _Open(BaseModel):
    """Responses may carry more fields than listed (llama-server adds some over versions)."""

    model_config = ConfigDict(extra="allow", defer_build=True)


def dump_json(body: BaseModel) -> bytes:
    """The JSON of a reply. slp's own answers (`_Open` models) carry only the fields they were given, as the
    dicts they replaced did: `log_tail` appears while an engine is not ready, a model's GGUF facts when they
    could be read. Other models (projects, from the store) carry every field, defaults included."""
    return body.model_dump_json(exclude_unset=isinstance(body, _Open))


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


ANNOTATIONS = ("slp: in a project with documents, the chunks the prompt was given, as OpenAI's "
               "`file_citation` annotations: `{\"type\": \"file_citation\", \"file_citation\": {\"document\", "
               "\"name\", \"start\", \"end\"}}`.")


class ChatCompletionMessage(_Open):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = Field(None, examples=["The capital of France is Paris."])
    annotations: Optional[list[dict[str, Any]]] = Field(None, description=ANNOTATIONS)


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
    annotations: Optional[list[dict[str, Any]]] = Field(None, description=ANNOTATIONS + " Sent in the stream's "
                                                        "last chunk, before `[DONE]`.")


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
    kind: Optional[Literal["chat", "base"]] = Field(None, description="`base`: a pretrained model without a chat "
                                                   "template, for text completion (`/v1/completions`), not chat.")
    purpose: Optional[str] = Field(None, description="What the catalog says the model is for (null: not from "
                                                     "the catalog).")
    template: Optional[str] = Field(None, description="The llama.cpp built-in chat template chosen for it "
                                    "(`slp model template NAME TEMPLATE`); null: none chosen.")
    chat_format: Optional[str] = Field(None, description="What formats a chat with it: the chosen template, "
                                       "`own` (the file's), or its architecture's built-in one; null: nothing "
                                       "does, and chats are refused (400 `model_has_no_chat_template`).",
                                       examples=["own"])
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


RESTARTS = ("Engines started in place of this one, for any reason (crash, hang, stall, a config change, "
            "a new model for the engine), as `slp_engine_restarts_total` counts them.")
CRASHES = ("Engines that ended unasked (exit, failed health, stall); each is restarted (and counted in "
           "`restarts`) unless too many came within SLP_RESTART_WINDOW.")


class EngineExit(_Open):
    reason: str = Field(..., description="crash, crash-at-load (killed by a fault signal such as SIGSEGV while "
                                         "loading or in its first decode; twice in a row starts safe mode), hang, "
                                         "stall, start-timeout or spawn-failed.")
    detail: str
    code: Optional[int] = None
    signal: Optional[str] = None
    at: float
    log_tail: list[str]


class EngineDegraded(_Open):
    """The engine serves in safe mode: llama-server's own argv plus `args`."""

    reason: str = Field(..., examples=["crashed twice at load, killed by SIGSEGV"],
                        description="Why safe mode was needed.")
    since: float = Field(..., description="Unix time (s) the safe-mode engine became ready.")
    args: list[str] = Field(..., examples=[["--no-repack", "--flash-attn", "off"]],
                            description="Appended to the engine's command line (the last `--flash-attn` wins).")


class LingeringEngine(_Open):
    """An engine killed by the watchdog that has not exited yet (frozen by a tracer, stuck in a driver);
    its requests have ended and a replacement serves. It goes from the list once it has exited."""

    pid: int
    killed_at: float = Field(..., description="Unix time (s).")
    reason: str = Field(..., examples=["stall"], description="stall or hang.")


DEGRADED = ("Null in normal mode; set while the engine serves in safe mode (--no-repack, flash attention off) "
            "because it crashed twice at load. Kept until a user's restart or another model.")
LINGERING = "Killed engines (stall, hang) that have not exited yet."


class EngineStatus(_Open):
    state: Literal["stopped", "starting", "ready", "restarting", "failed", "stopping", "unloaded"]
    reason: str
    pid: Optional[int]
    port: Optional[int]
    model_path: Optional[str]
    restarts: int = Field(..., description=RESTARTS)
    crashes: int = Field(0, description=CRASHES)
    uptime_s: Optional[float]
    last_exit: Optional[EngineExit]
    memory: Optional[EngineMemory]
    history: list[EngineEvent]
    log_tail: Optional[list[str]] = Field(None, description="The engine log's last lines while it is not ready.")
    degraded: Optional[EngineDegraded] = Field(None, description=DEGRADED)
    lingering: list[LingeringEngine] = Field(default_factory=list, description=LINGERING)


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
    restarts: int = Field(..., description=RESTARTS)
    crashes: int = Field(0, description=CRASHES)
    last_exit: Optional[EngineExit]
    uptime_s: Optional[float]
    degraded: Optional[EngineDegraded] = Field(None, description=DEGRADED)
    lingering: list[LingeringEngine] = Field(default_factory=list, description=LINGERING)


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
    restarts: int = Field(..., description="`engine.restarts`: " + RESTARTS)
    crashes: int = Field(..., description="`engine.crashes`: " + CRASHES)
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


class PromptCacheCleared(BaseModel):
    object: Literal["project.prompt_cache.cleared"]
    project_id: str
    deleted: int = Field(description="Saved prefixes deleted.")
    bytes: int = Field(description="Disk freed.")


class SessionList(BaseModel):
    object: Literal["list"]
    data: list[SessionSummary]


class DocumentList(BaseModel):
    object: Literal["list"]
    data: list[Document]


class DocumentDeleted(BaseModel):
    id: str
    object: Literal["project.document.deleted"]
    deleted: bool


class SearchResults(BaseModel):
    object: Literal["list"]
    data: list[SearchHit] = Field(..., description="The best chunks, best first (none when nothing matches).")


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


