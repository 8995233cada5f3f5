"""Request and response models of Ollama's REST API (`/api/...`), as its API reference describes them.

The request models validate what `slp.server.ollama` translates (strict types: "0.5" is not a number, as
on the OpenAI routes); fields they do not declare are kept and named in `X-SLP-Unknown-Fields`. The
response models are what slp answers, checked in the tests against real answers; both document the routes
in /openapi.json through the route table.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from slp.settings import DEFAULT_MODEL_ALIAS

NDJSON = "application/x-ndjson"  # the media type of Ollama's streams

MODEL_NAME = Field(..., min_length=1, max_length=512, examples=[DEFAULT_MODEL_ALIAS],
                   description="An installed model (as `GET /api/tags` lists it, `:latest` optional), an "
                               "`hf.co/OWNER/REPO:QUANT` model pulled under that name, or a project's name "
                               "(its model, system prompt and defaults apply).")
KeepAlive = Union[str, float, None]
KEEP_ALIVE = Field(None, examples=["5m"], description="How long the model stays loaded after this request: a "
                                                      "duration (`5m`, `90s`), seconds, `0` unloads at once, a "
                                                      "negative value keeps it loaded.")
Format = Union[Literal["", "json"], dict[str, Any], None]
FORMAT = Field(None, description="`json`, or a JSON schema the answer must follow (the engine's grammar).")
Think = Union[bool, Literal["low", "medium", "high"], None]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class OllamaOptions(_Open):
    """Generation options, mapped onto llama-server's sampling fields. Options that size the engine
    (`num_ctx`, `num_gpu`, `num_thread`, `num_batch`, ...) are set by the agent's settings, not per
    request: they are accepted and named in `X-SLP-Unknown-Fields`; other unknown options go to the engine."""

    num_predict: Optional[int] = Field(None, ge=-2, le=(1 << 31) - 1, description="Tokens to generate (-1: no limit).")
    temperature: Optional[float] = Field(None, ge=0, le=1e6)
    top_k: Optional[int] = Field(None, ge=0, le=(1 << 31) - 1)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    typical_p: Optional[float] = Field(None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(None, gt=0, le=1e6)
    repeat_last_n: Optional[int] = Field(None, ge=-1, le=(1 << 31) - 1)
    presence_penalty: Optional[float] = Field(None, ge=-1e6, le=1e6)
    frequency_penalty: Optional[float] = Field(None, ge=-1e6, le=1e6)
    seed: Optional[int] = Field(None, ge=-(1 << 31), le=(1 << 32) - 1)
    stop: Optional[list[str]] = Field(None, max_length=16)
    mirostat: Optional[int] = Field(None, ge=0, le=2)
    mirostat_tau: Optional[float] = Field(None, ge=0, le=1e6)
    mirostat_eta: Optional[float] = Field(None, ge=0, le=1e6)
    num_keep: Optional[int] = Field(None, ge=-1, le=(1 << 31) - 1)
    num_ctx: Optional[int] = Field(None, ge=0, le=(1 << 31) - 1, description="Accepted; the context window is "
                                                                             "the agent's (SLP_CTX_SIZE).")


class OllamaToolFunctionCall(_Open):
    name: str = Field(..., max_length=256)
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: Optional[int] = None


class OllamaToolCall(_Open):
    function: OllamaToolFunctionCall
    id: Optional[str] = None


class OllamaMessage(_Open):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = ""
    images: Optional[list[str]] = Field(None, description="Base64 images (the model needs a vision projector).")
    tool_calls: Optional[list[OllamaToolCall]] = None
    thinking: Optional[str] = None
    tool_name: Optional[str] = Field(None, max_length=256)


class _Generating(_Open):
    model: str = MODEL_NAME
    stream: Optional[bool] = Field(None, description="NDJSON objects as they come (default), or one object.")
    format: Format = FORMAT
    options: Optional[OllamaOptions] = None
    keep_alive: KeepAlive = KEEP_ALIVE
    think: Think = Field(None, description="Thinking on or off, for models whose template supports it.")


class OllamaChatRequest(_Generating):
    """A conversation to continue. An empty `messages` only loads the model (or, with `keep_alive: 0`,
    unloads it)."""

    messages: Optional[list[OllamaMessage]] = Field(None, max_length=4096)
    tools: Optional[list[dict[str, Any]]] = Field(None, max_length=256)


class OllamaGenerateRequest(_Generating):
    """A completion of `prompt`: through the model's chat template with `system`, or as it is with `raw`;
    with `suffix`, the text between `prompt` and `suffix` (fill-in-the-middle). An empty prompt only loads
    the model (or unloads it with `keep_alive: 0`)."""

    prompt: Optional[str] = ""
    suffix: Optional[str] = None
    system: Optional[str] = None
    raw: Optional[bool] = None
    images: Optional[list[str]] = None


class OllamaEmbedRequest(_Open):
    """Text to embed: one string or several."""

    model: str = MODEL_NAME
    input: Union[str, list[str]] = Field(..., examples=["The capital of France is Paris."])
    truncate: Optional[bool] = None
    dimensions: Optional[int] = Field(None, ge=1, le=1 << 20)
    options: Optional[OllamaOptions] = None
    keep_alive: KeepAlive = KEEP_ALIVE


class OllamaEmbeddingsRequest(_Open):
    """The older embeddings call: one `prompt`."""

    model: str = MODEL_NAME
    prompt: str = Field(..., examples=["The capital of France is Paris."])
    options: Optional[OllamaOptions] = None
    keep_alive: KeepAlive = KEEP_ALIVE


class OllamaModelRequest(_Open):
    """Names one model (`model`; older clients send `name`)."""

    model: Optional[str] = Field(None, min_length=1, max_length=512, examples=[DEFAULT_MODEL_ALIAS])
    name: Optional[str] = Field(None, min_length=1, max_length=512)
    verbose: Optional[bool] = Field(None, description="show: the GGUF's long arrays (the vocabulary) too.")


class OllamaPullRequest(_Open):
    """What `slp model pull` accepts: a catalog model, `hf.co/OWNER/REPO[:QUANT]` (Ollama's spelling of
    `hf:OWNER/REPO[:QUANT]`) or a path to a .gguf file."""

    model: Optional[str] = Field(None, min_length=1, max_length=1024, examples=[DEFAULT_MODEL_ALIAS])
    name: Optional[str] = Field(None, min_length=1, max_length=1024)
    insecure: Optional[bool] = None
    stream: Optional[bool] = None


class OllamaCopyRequest(_Open):
    """Another name for an installed model (no file is copied)."""

    source: str = Field(..., min_length=1, max_length=512, examples=[DEFAULT_MODEL_ALIAS])
    destination: str = Field(..., min_length=1, max_length=128, examples=["my-model"])


class OllamaUnsupportedRequest(_Open):
    """Any body: the route answers with an error."""


# ----------------------------------------------------------------------------- answers

class OllamaErrorResponse(BaseModel):
    """Ollama's error: one message. A stream that fails midway ends with one of these."""

    error: str


class OllamaVersion(BaseModel):
    version: str = Field(..., description="The Ollama API version slp follows.")


class OllamaDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class OllamaTag(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaTags(BaseModel):
    models: list[OllamaTag]


class OllamaShow(BaseModel):
    modelfile: str
    parameters: str
    template: str
    license: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    system: Optional[str] = None


class OllamaRunning(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails
    expires_at: str
    size_vram: int
    context_length: int


class OllamaPs(BaseModel):
    models: list[OllamaRunning]


class _Counters(BaseModel):
    """What the last object of a generation adds (nanoseconds and tokens)."""

    done_reason: Optional[str] = None
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None


class OllamaReplyMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    thinking: Optional[str] = None
    tool_calls: Optional[list[OllamaToolCall]] = None


class OllamaChatResponse(_Counters):
    """One object of a chat stream, or the whole answer (`done: true` with the counters)."""

    model: str
    created_at: str
    message: OllamaReplyMessage
    done: bool


class OllamaGenerateResponse(_Counters):
    """One object of a generate stream, or the whole answer (`done: true` with the counters)."""

    model: str
    created_at: str
    response: str
    thinking: Optional[str] = None
    done: bool


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingResponse(BaseModel):
    embedding: list[float]


class OllamaProgress(BaseModel):
    """One step of a pull: `status`, and for a file `digest` (its name), `total` and `completed` bytes."""

    status: str
    digest: Optional[str] = None
    total: Optional[int] = None
    completed: Optional[int] = None
