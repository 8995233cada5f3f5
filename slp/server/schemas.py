"""Request models for the OpenAI routes: what the proxy validates before anything reaches the engine.

slp is a superset of the engine: these models refuse only what would make the engine misbehave or harm
the agent (wrong types, numbers its C types cannot hold or that it rejects itself, sizes, roles its chat
template cannot take) and let everything else through untouched: fields they do not know (the engine
ignores what it does not know), OpenAI's newer options, `null` for an optional field (the engine reads
it as "not set"), values beyond OpenAI's own limits that llama-server serves (`n` > 1, temperature > 2).
With `SLP_STRICT` unknown top-level fields are refused instead, so typos are caught.
The same models document the API (OpenAPI), so the docs cannot drift from the checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SLUG_OR_UUID = r"^[A-Za-z0-9_-]{1,64}$"
RETRIEVAL_FIELD = ("slp: `false` leaves the project's documents out of this request (default: the project's "
                   "`retrieval` setting; not sent to the engine).")
INT32_MAX = (1 << 31) - 1  # the engine reads counts into int32: larger values would wrap
FLOAT32_MAX = 3.4028234663852886e38  # and sampling numbers into float32: larger ones become inf


def _absent_by_default(schema: dict) -> None:
    """For optional-but-not-nullable fields: no `default: null` in the docs (it would not validate)."""
    schema.pop("default", None)


class _Open(BaseModel):
    """Extra fields are kept (validated by `_Known` at the top level, free inside messages)."""

    model_config = ConfigDict(extra="allow", strict=True)  # "yes" is not a bool, "0.5" not a number


# Fields a request may carry besides the declared ones: OpenAI's and llama-server's documented options.
# Any other field is passed to the engine as well (it ignores what it does not know) and reported in the
# `X-SLP-Unknown-Fields` response header; with SLP_STRICT it is refused like OpenAI does ("Unrecognized
# request argument"), so a typo such as `max_token` is reported instead of silently ignored.
ENGINE_FIELDS = frozenset("""
    adaptive_decay adaptive_target add_generation_prompt audio backend_sampling best_of cache_prompt
    chat_template_kwargs continue_final_message dimensions dry_allowed_length dry_base dry_multiplier
    dry_penalty_last_n dry_sequence_breakers dynatemp_exponent dynatemp_range echo embd_normalize
    function_call functions grammar id_slot ignore_eos input_extra json_schema logit_bias logprobs lora
    metadata min_keep mirostat mirostat_eta mirostat_tau modalities n_cache_reuse n_cmpl n_discard n_indent
    n_keep n_predict n_probs parallel_tool_calls parse_special post_sampling_probs prediction
    prompt_cache_key prompt_cache_retention reasoning_budget_tokens reasoning_effort reasoning_format
    repeat_last_n response_fields response_format return_progress return_tokens safety_identifier samplers
    service_tier sse_ping_interval store suffix t_max_predict_ms thinking_budget_tokens timings_per_token
    tool_choice tools top_logprobs top_n_sigma typical_p user verbose verbosity web_search_options
    xtc_probability xtc_threshold
""".split())


def validation_context(strict: bool) -> dict:
    """The context `_Known` models are validated with: `strict` refuses unknown top-level fields; the
    names found either way are left in `unknown`."""
    return {"strict": strict, "unknown": ()}


class _Known(_Open):
    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context
        if context is not None and isinstance(data, dict):
            fields = cls.model_fields
            unknown = [key for key in data if key not in fields and key not in ENGINE_FIELDS]
            if unknown:
                if context.get("strict"):
                    raise PydanticCustomError("unrecognized_argument", "Unrecognized request argument supplied: "
                                              "{key} (the agent runs with SLP_STRICT)", {"key": unknown[0]})
                context["unknown"] = unknown
        return data


class ContentPart(_Open):
    type: str = Field(..., min_length=1, max_length=64, examples=["text"])
    text: Union[str, SkipJsonSchema[None]] = Field(None, description="Required for `type: text`.",
                                                   json_schema_extra=_absent_by_default)

    @model_validator(mode="after")
    def _text_part_has_text(self) -> "ContentPart":
        if self.type == "text" and not isinstance(self.text, str):
            raise PydanticCustomError("missing_text", "a text part needs a string `text`")
        return self


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        ..., description="system: sets behaviour; user: the end user; assistant: earlier replies; tool: tool output.")
    content: Union[str, list[ContentPart], None] = Field(
        None, examples=["What is the capital of France?"], description="Only assistant messages may omit it.")
    name: Union[Annotated[str, Field(max_length=256)], SkipJsonSchema[None]] = Field(
        None, json_schema_extra=_absent_by_default)
    tool_calls: Union[list[dict], SkipJsonSchema[None]] = Field(None, json_schema_extra=_absent_by_default)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """Absent is fine, null is not: llama-server refuses `"name": null`. It needs a `content` key in
        every message but the assistant's (null is fine: it reads it as empty)."""
        if isinstance(data, dict):
            for key in ("name", "tool_calls"):
                if key in data and data[key] is None:
                    raise PydanticCustomError("null_field", "{key} must not be null (leave it out instead)",
                                              {"key": key})
            if "content" not in data and data.get("role") in ("system", "developer", "user", "tool"):
                raise PydanticCustomError("missing_content", "{role} messages need `content`",
                                          {"role": data.get("role")})
        return data


class StreamOptions(_Open):
    include_usage: Optional[bool] = None


class SamplingFields(_Known):
    model: Optional[str] = Field(None, max_length=256, examples=["slp-orchestra-mini"],
                                 description="A model name or alias (`slp-orchestra-mini`); default: the project's model.")
    stream: Optional[bool] = Field(False, description="Send server-sent events (`data: {chunk}` … `data: [DONE]`).")
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=-1, le=INT32_MAX, description="-1: until the context is full.")
    temperature: Optional[float] = Field(None, ge=0, le=FLOAT32_MAX)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, le=INT32_MAX)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    # Penalties stay in OpenAI's range: a huge one multiplied by a token's count overflows the logits to
    # infinity, and the sampler's probabilities to NaN.
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repeat_penalty: Optional[float] = Field(None, gt=0, le=10)
    seed: Optional[int] = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: Union[str, Annotated[list[str], Field(max_length=256)], None] = Field(
        None, description="Up to 256 stop sequences.")
    n: Optional[int] = Field(None, ge=1, le=INT32_MAX,
                             description="Choices to generate; the engine serves up to its slots (`SLP_PARALLEL`).")
    n_predict: Optional[int] = Field(None, ge=-1, le=INT32_MAX, description="llama.cpp's name for max_tokens.")
    n_probs: Optional[int] = Field(None, ge=0, le=100)
    top_logprobs: Optional[int] = Field(None, ge=0, le=100)
    ignore_eos: Optional[bool] = None
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None
    logit_bias: Union[dict, list, None] = Field(None, description="Token id → bias, or llama.cpp's [[token, bias]].")
    logprobs: Optional[bool] = None
    project_id: Optional[str] = Field(None, pattern=SLUG_OR_UUID, description="slp: the project (id or name) to run in.")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=4096)
    max_completion_tokens: Optional[int] = Field(None, ge=-1, le=INT32_MAX)
    session_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]{1,128}$",
                                      description="slp: store this exchange under the project as a conversation.")
    retrieval: Optional[bool] = Field(None, description=RETRIEVAL_FIELD)

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [{
        "model": "slp-orchestra-mini",
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}]})


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(..., examples=["The capital of France is"])
    logprobs: Union[bool, Annotated[int, Field(ge=0, le=100)], None] = Field(
        None, description="The legacy API's number of most likely tokens to report per token.")

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [{
        "model": "slp-orchestra-mini", "prompt": "The capital of France is", "max_tokens": 8}]})


class EmbeddingRequest(_Known):
    model: Optional[str] = Field(None, max_length=256, examples=["slp-orchestra-mini"])
    input: Union[str, list[str], list[int], list[list[int]]] = Field(..., examples=["The capital of France is Paris."])
    encoding_format: Optional[Literal["float", "base64"]] = None


class _EngineAPI(_Open):
    """Requests for the engine's other APIs: the fields slp uses are checked, the rest passed on."""

    model: Optional[str] = Field(None, max_length=256, examples=["slp-orchestra-mini"])
    project_id: Optional[str] = Field(None, pattern=SLUG_OR_UUID, description="slp: the project (id or name) to run in.")


class ResponsesRequest(_EngineAPI):
    """OpenAI Responses API (`POST /v1/responses`)."""

    input: Union[str, list[dict]] = Field(..., examples=["What is the capital of France?"])
    instructions: Optional[str] = None
    stream: Optional[bool] = False
    max_output_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: Union[str, list[dict]]


class AnthropicCountTokensRequest(_EngineAPI):
    """Anthropic token counting (`POST /v1/messages/count_tokens`)."""

    messages: list[AnthropicMessage] = Field(..., min_length=1, max_length=4096,
                                             examples=[[{"role": "user", "content": "What is the capital of France?"}]])
    system: Union[str, list[dict], None] = None


class AnthropicMessagesRequest(AnthropicCountTokensRequest):
    """Anthropic Messages API (`POST /v1/messages`)."""

    max_tokens: int = Field(..., ge=1, le=1 << 20, examples=[64])
    stream: Optional[bool] = False
    temperature: Optional[float] = Field(None, ge=0, le=1)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    stop_sequences: Optional[Annotated[list[str], Field(max_length=16)]] = None


class RerankRequest(_EngineAPI):
    """Rerank documents against a query (`POST /v1/rerank`; needs a reranking model)."""

    query: str = Field(..., examples=["What is the capital of France?"])
    documents: list[str] = Field(..., min_length=1, max_length=1024, examples=[["Paris is in France.", "Bananas."]])
    top_n: Optional[int] = Field(None, ge=1)


class TokenizeRequest(_EngineAPI):
    """Text to tokens with the served model's tokenizer (`POST /tokenize`)."""

    content: str = Field(..., examples=["What is the capital of France?"])
    add_special: Optional[bool] = None
    with_pieces: Optional[bool] = None


class DetokenizeRequest(_EngineAPI):
    """Tokens back to text (`POST /detokenize`)."""

    tokens: list[Annotated[int, Field(ge=0, lt=1 << 31)]] = Field(..., max_length=1 << 20, examples=[[1, 2, 3]])


class ApplyTemplateRequest(_EngineAPI):
    """The prompt the model would see for these messages, project prompt included (`POST /apply-template`)."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=4096,
                                        examples=[[{"role": "user", "content": "What is the capital of France?"}]])
    retrieval: Optional[bool] = Field(None, description=RETRIEVAL_FIELD)


class LoadModelRequest(BaseModel):
    """Body of `POST /v1/models/{model}/load` (optional): pin the engine, or say how long it stays once idle."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"pin": True}]})

    pin: bool = Field(False, description="Keep it resident: it never expires and is never evicted.")
    keep_alive: Optional[Union[int, str]] = Field(
        None, description="How long it stays loaded once idle: '10m', seconds, 0 or -1 (never unload).")


# --------------------------------------------------------------------------- the common chat, checked fast

def _int_in(low: int, high: int):
    return lambda v: type(v) is int and low <= v <= high


def _float_in(low: float, high: float):
    return lambda v: (type(v) is float or type(v) is int) and low <= v <= high  # NaN fails both bounds


_ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))
_FAST_CHAT_FIELDS = {
    "model": lambda v: v is None or (type(v) is str and len(v) <= 256),
    "stream": lambda v: type(v) is bool,
    "max_tokens": _int_in(-1, INT32_MAX),
    "max_completion_tokens": _int_in(-1, INT32_MAX),
    "temperature": _float_in(0, FLOAT32_MAX),
    "top_p": _float_in(0, 1),
    "top_k": _int_in(0, INT32_MAX),
    "min_p": _float_in(0, 1),
    "seed": _int_in(-(1 << 63), (1 << 64) - 1),
    "stop": lambda v: type(v) is str or (type(v) is list and len(v) <= 256 and all(type(s) is str for s in v)),
    "stream_options": lambda v: type(v) is dict and v.keys() <= {"include_usage"}
    and type(v.get("include_usage", False)) is bool,
}


def plainly_valid_chat(body: dict) -> bool:
    """True when a chat request is one `ChatCompletionRequest` accepts for certain, checked without
    building it: known fields of the plain types, and messages that are a role and a string. Anything
    else (False) goes through the model, which gives the errors; so this only ever saves time, and
    `test_bad_input`'s cases and a property test keep it no looser than the model."""
    messages = body.get("messages")
    if type(messages) is not list or not 1 <= len(messages) <= 4096:
        return False
    for message in messages:
        if type(message) is not dict or len(message) != 2 or type(message.get("content")) is not str \
                or message.get("role") not in _ROLES:
            return False
    checks = _FAST_CHAT_FIELDS
    for key, value in body.items():
        if key != "messages":
            check = checks.get(key)
            if check is None or not check(value):
                return False
    return True
