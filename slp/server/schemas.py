"""Request models for the OpenAI routes: what the proxy validates before anything reaches the engine.

They check what would make the engine misbehave or what a client surely got wrong (types, ranges,
roles, sizes) and let through the rest of OpenAI's and llama.cpp's many optional fields untouched.
The same models document the API (OpenAPI), so the docs cannot drift from the checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SLUG_OR_UUID = r"^[A-Za-z0-9_-]{1,64}$"


def _absent_by_default(schema: dict) -> None:
    """For optional-but-not-nullable fields: no `default: null` in the docs (it would not validate)."""
    schema.pop("default", None)


class _Open(BaseModel):
    """Extra fields are kept (validated by `_Known` at the top level, free inside messages)."""

    model_config = ConfigDict(extra="allow", strict=True)  # "yes" is not a bool, "0.5" not a number


# Fields a request may carry besides the declared ones: OpenAI's and llama-server's documented options.
# Anything else is refused like OpenAI does ("Unrecognized request argument"), so a typo such as
# `max_token` is reported instead of silently ignored.
ENGINE_FIELDS = frozenset("""
    audio cache_prompt chat_template_kwargs dimensions dry_allowed_length dry_base dry_multiplier
    dry_penalty_last_n dry_sequence_breakers dynatemp_exponent dynatemp_range echo embd_normalize
    function_call functions grammar id_slot ignore_eos input_extra json_schema logit_bias logprobs lora
    metadata min_keep mirostat mirostat_eta mirostat_tau modalities n_cache_reuse n_indent n_keep
    n_predict n_probs parallel_tool_calls parse_special post_sampling_probs prediction reasoning_effort
    reasoning_format response_fields response_format return_progress return_tokens samplers
    service_tier store suffix t_max_predict_ms timings_per_token tool_choice tools top_logprobs
    typical_p user verbosity web_search_options xtc_probability xtc_threshold best_of
""".split())


class _Known(_Open):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields and key not in ENGINE_FIELDS:
                    raise PydanticCustomError("unrecognized_argument",
                                              "Unrecognized request argument supplied: {key}", {"key": key})
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
        """Absent is fine, null is not: llama-server refuses `"name": null`."""
        if isinstance(data, dict):
            for key in ("name", "tool_calls"):
                if key in data and data[key] is None:
                    raise PydanticCustomError("null_field", "{key} must not be null (leave it out instead)",
                                              {"key": key})
        return data

    @model_validator(mode="after")
    def _content_unless_assistant(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError("missing_content", "{role} messages need `content`", {"role": self.role})
        return self


class StreamOptions(_Open):
    include_usage: Optional[bool] = None


class SamplingFields(_Known):
    model: Optional[str] = Field(None, max_length=256, examples=["slp-orchestra-mini"],
                                 description="A model name or alias (`slp-orchestra-mini`); default: the project's model.")
    stream: bool = Field(False, description="Send server-sent events (`data: {chunk}` … `data: [DONE]`).")
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, le=100000)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repeat_penalty: Optional[float] = Field(None, gt=0, le=10)
    seed: Optional[int] = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = Field(None, description="Up to 4 stop sequences.")
    n: Optional[int] = Field(None, ge=1, le=1, description="Only 1 choice per request is supported.")
    n_predict: Optional[int] = Field(None, ge=-1, le=1 << 20, description="llama.cpp's name for max_tokens.")
    n_probs: Optional[int] = Field(None, ge=0, le=100)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    ignore_eos: Optional[bool] = None
    tools: Optional[list[dict]] = None
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None
    logit_bias: Optional[dict] = None
    logprobs: Optional[bool] = None
    project_id: Optional[str] = Field(None, pattern=SLUG_OR_UUID, description="slp: the project (id or name) to run in.")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=4096)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    session_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]{1,128}$",
                                      description="slp: store this exchange under the project as a conversation.")

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"examples": [{
        "model": "slp-orchestra-mini",
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}]})


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int]] = Field(..., examples=["The capital of France is"])

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
    stream: bool = False
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
    stream: bool = False
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
