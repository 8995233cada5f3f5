"""Pydantic models for projects: the one source of validation for the store, the routes and the OpenAPI doc.

`Project.model_dump(mode="json")` is exactly what the API returns for a project.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional, Union

from pydantic.json_schema import SkipJsonSchema
from pydantic import BaseModel, ConfigDict, Field, Strict, field_serializer, field_validator

from slp.settings import DEFAULT_MODEL_ALIAS

SYSTEM_PROJECT = "general_chat"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
StrictBool = Annotated[bool, Strict()]
RETRIEVAL_DESCRIPTION = ("Whether chats in the project are given the best chunks of its documents for the last "
                         "user message (a request can turn it off with `\"retrieval\": false`).")

class GenerationParams(BaseModel):
    """Generation defaults a project applies to requests that don't set them.

    Strict and closed: a typo or a string where a number belongs is refused, naming the field,
    instead of being silently ignored by the engine.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    stop: Optional[Union[str, Annotated[list[str], Field(max_length=4)]]] = Field(
        None, description="A stop string or up to 4 of them.")
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    repeat_penalty: Optional[float] = Field(None, ge=0)
    keep_alive: Optional[Union[int, str]] = Field(
        None, description="How long the model stays loaded after this project's requests: '10m', seconds, "
        "0 (unload after the reply) or -1 (never). Not sent to the engine.")

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: Optional[Union[int, str]]) -> Optional[Union[int, str]]:
        from slp.engine.pool import parse_keep_alive

        if value is not None:
            parse_keep_alive(value)  # ValueError names the accepted forms
        return value

    def values(self) -> dict[str, Any]:
        """Only the params that are set: what gets stored and merged into requests."""
        return self.model_dump(exclude_none=True)


class ProjectCreate(BaseModel):
    """Body of POST /v1/projects."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique slug: 1-64 letters, digits, '_' or '-'.")
    description: str = Field("", max_length=2000)
    model: str = Field(DEFAULT_MODEL_ALIAS, min_length=1, max_length=256,
                       description="Installed model name or alias used when a request names none.")
    system_prompt: str = Field("", max_length=100_000)
    params: GenerationParams = Field(default_factory=GenerationParams)
    retrieval: StrictBool = Field(True, description=RETRIEVAL_DESCRIPTION)


def _no_default(schema: dict) -> None:
    """Optional but not nullable: leave `default: null` out of the docs (null is refused)."""
    schema.pop("default", None)


class ProjectUpdate(BaseModel):
    """Body of PATCH /v1/projects/{project}: only the fields given change.

    `params` is merged into the current params: a key with a value replaces it, a key with
    null removes it; `"params": null` removes them all. A null description or system_prompt clears it.
    """

    model_config = ConfigDict(extra="forbid")

    name: Union[Annotated[str, Field(pattern=NAME_PATTERN)], SkipJsonSchema[None]] = Field(
        None, json_schema_extra=_no_default, description="New name (not for the system project).")
    description: Optional[str] = Field(None, max_length=2000)
    model: Union[Annotated[str, Field(min_length=1, max_length=256)], SkipJsonSchema[None]] = Field(
        None, json_schema_extra=_no_default)
    system_prompt: Optional[str] = Field(None, max_length=100_000)
    params: Optional[GenerationParams] = None
    retrieval: Union[StrictBool, SkipJsonSchema[None]] = Field(None, json_schema_extra=_no_default,
                                                               description=RETRIEVAL_DESCRIPTION)


class DocumentStats(BaseModel):
    """What a project's document index holds."""

    count: int = 0
    chunks: int = 0
    tokens: int = Field(0, description="Estimated tokens of the chunks.")
    index_bytes: int = Field(0, description="Bytes of chunk text the index holds.")


class PromptCacheEntry(BaseModel):
    """A project's prefix saved on disk for one model (slp.server.prompt_cache): restored, not recomputed,
    when the model's engine next serves the project."""

    model: Optional[str] = Field(None, description="The engine (model) it was saved from.")
    prefix_tokens: Optional[int] = Field(None, description="Tokens of the project's prefix it holds.")
    tokens: Optional[int] = Field(None, description="Tokens it holds in all (the prefix and the conversation "
                                  "that followed it in the slot).")
    bytes: Optional[int] = Field(None, description="Size on disk.")
    saved_at: Optional[float] = Field(None, description="Unix time it was saved.")
    used_at: Optional[float] = Field(None, description="Unix time it was last saved or restored.")


class Project(BaseModel):
    """A project as stored and as the API shows it."""

    object: Literal["project"] = "project"
    id: str
    name: str
    description: str = ""
    model: str = DEFAULT_MODEL_ALIAS
    system_prompt: str = ""
    params: GenerationParams = Field(default_factory=GenerationParams)
    created_at: datetime
    updated_at: datetime
    is_system: bool = False
    active: bool = False
    retrieval: bool = True
    documents: DocumentStats = Field(default_factory=DocumentStats)
    prompt_cache: list[PromptCacheEntry] = Field(
        default_factory=list, description="Its prefix saved on disk, per model (only in GET /v1/projects/{project}).")

    @field_serializer("params")
    def _params(self, params: GenerationParams) -> dict[str, Any]:
        return params.values()


class ProjectUsage(BaseModel):
    """Token totals of every request served under a project."""

    object: Literal["project.usage"] = "project.usage"
    project_id: str
    project: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0


class Exchange(BaseModel):
    """One request/reply of a session, as the agent received and answered it."""

    messages: list[dict[str, Any]]
    assistant: dict[str, Any]
    usage: Optional[dict[str, Any]] = None
    sources: Optional[list[dict[str, Any]]] = Field(
        None, description="The document chunks retrieval put into the prompt (absent: none).")
    created_at: datetime


class SessionSummary(BaseModel):
    """A conversation in a project; `message_count` counts the messages of `SessionDetail.messages`."""

    object: Literal["project.session"] = "project.session"
    id: str
    project_id: str
    exchange_count: int
    message_count: int
    created_at: datetime
    updated_at: datetime


class SessionDetail(SessionSummary):
    """A session with its history.

    Clients resend the whole history each turn, so `messages` is the last exchange's request
    messages plus its reply: the conversation to continue. `exchanges` keeps every exchange.
    """

    messages: list[dict[str, Any]]
    exchanges: list[Exchange]


# ----------------------------------------------------------------------------- documents

DocumentFormat = Literal["text", "markdown", "html", "pdf", "code"]


class Document(BaseModel):
    """A document of a project, as indexed."""

    object: Literal["project.document"] = "project.document"
    id: str
    project_id: str
    name: str = Field(..., description="The file's name.")
    source: str = Field(..., description="What identifies it: the file's path, or the upload's name or `source`. "
                                         "Adding the same source again replaces the document.")
    format: DocumentFormat
    sha256: str = Field(..., description="Of the file's bytes: the same content is stored once per project.")
    bytes: int = Field(..., description="The file's size.")
    pages: Optional[int] = Field(None, description="A PDF's page count.")
    chunks: int
    tokens: int = Field(..., description="Estimated tokens of its chunks (about 4 characters each).")
    index_bytes: int = Field(..., description="Bytes of chunk text in the index.")
    created_at: datetime
    updated_at: datetime


class DocumentAdded(BaseModel):
    """The outcome of adding a document: `added`, `replaced` (the source had other content: its chunks were
    replaced) or `unchanged` (this content is already in the project, under `document.source`)."""

    object: Literal["project.document.added"] = "project.document.added"
    status: Literal["added", "replaced", "unchanged"]
    document: Document


class DocumentPath(BaseModel):
    """Body of POST /v1/projects/{project}/documents as JSON: a file on the agent's machine (only from a
    loopback client). Uploads use multipart/form-data instead."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(..., min_length=1, max_length=4096, description="An absolute path to a readable file; "
                      "no hidden component (dot files and folders, where credentials live, are refused).")


class SearchQuery(BaseModel):
    """Body of POST /v1/projects/{project}/search."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=4000, description="The question or words to look for.")
    top_k: Annotated[int, Strict()] = Field(5, ge=1, le=50, description="How many chunks to return at most.")


class SearchHit(BaseModel):
    """A chunk that matches, best first."""

    document: str = Field(..., description="The document's id.")
    name: str
    text: str
    score: float = Field(..., description="BM25 relevance (higher is better).")
    start: int = Field(..., description="Offset of the chunk's first character in the document's text.")
    end: int = Field(..., description="Offset just past its last character.")
    page: Optional[int] = Field(None, description="The PDF page the chunk is on.")
    chunk: int = Field(..., description="The chunk's id (sessions record the chunks a reply was given).")
    tokens: int = Field(..., description="The chunk's estimated tokens.")
