"""Request and response types of every route, as msgspec Structs.

Requests are decoded straight into these types (`codec.decode`): the JSON shape, the
types and the field constraints are checked there, once, for the gateway and the
model server alike, and the OpenAPI document is generated from the same types
(`openapi.py`). What depends on the model (its dimensions, vocabulary, maximum length,
task) is checked by `limits.py` on the model server. Every request turns into one
call object (`EmbedCall`, `RerankCall`, `TokenizeCall`) that the engine works on.

Response types describe what the response builders (`responses.py`) write; they
are used for the document only (the builders write numpy arrays with orjson).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

# -- shared field types ------------------------------------------------------------

Text = Annotated[str, Meta(min_length=1, description="A text; empty strings are refused")]
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Meta(min_length=1)]
ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        description="A model's resource name, catalog id or source repo id (case-insensitive)",
    ),
]
Dimensions = Annotated[
    int, Meta(ge=1, description="Matryoshka truncation: one of the model's dimensions")
]
InputType = Literal["query", "document"]
# float and base64 (float32 little-endian bytes) are OpenAI's; the rest are the
# vector-database types of Cohere's `embedding_types`: int8/uint8 scale each value by
# the ranges calibrated at conversion, binary/ubinary pack the sign bits (8 per byte).
EncodingFormat = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]
ENCODING_FORMATS: tuple[str, ...] = ("float", "base64", "int8", "uint8", "binary", "ubinary")
CALIBRATED_ENCODINGS = frozenset({"int8", "uint8"})
Task = Literal["embed", "rerank"]


def _non_empty(name: str, value: Sequence[object]) -> None:
    if not value:
        raise ValueError(f"`{name}` is empty; send at least one input")


# -- what the engine is asked to do -------------------------------------------------


@dataclass
class EmbedCall:
    texts: list[str] | None  # exactly one of texts and token_ids
    token_ids: list[list[int]] | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    input_type: str | None = None
    truncate: bool = True
    encoding: str = "float"

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


@dataclass
class RerankCall:
    query: str
    documents: list[str]
    top_n: int | None = None
    truncate: bool = True
    raw_scores: bool = False


@dataclass
class TokenizeCall:
    texts: list[str]
    add_special_tokens: bool = True
    input_type: str | None = None


# -- requests -----------------------------------------------------------------------


class EmbedRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Native embedding request (`POST /api/v1/embed`; the model server's `/embed`)."""

    texts: Annotated[list[Text], Meta(min_length=1)]
    model: ModelName | None = None
    normalize: bool | None = None
    dimensions: Dimensions | None = None
    input_type: InputType | None = None
    truncate: bool = True
    encoding_format: EncodingFormat = "float"

    def call(self) -> EmbedCall:
        return EmbedCall(
            self.texts,
            normalize=self.normalize,
            dimensions=self.dimensions,
            input_type=self.input_type,
            truncate=self.truncate,
            encoding=self.encoding_format,
        )


# OpenAI's `input`: a string, strings, token ids, or token-id arrays (never mixed).
OPENAI_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        {
            "type": "array",
            "minItems": 1,
            "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        },
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            },
        },
    ],
    "description": "Text, texts, token ids or token-id arrays in the model's own vocabulary "
    "(what /tokenize returns, special tokens included)",
}
# msgspec cannot decode a union of several array types: it decodes the loose form
# below, `__post_init__` refuses mixtures, and the document shows the exact forms.
OpenAIInput = Text | list[Text | TokenId | TokenIds]


class OpenAIEmbeddingRequest(Struct, omit_defaults=True):
    """OpenAI `POST /v1/embeddings` (other OpenAI fields, e.g. `user`, are ignored)."""

    input: OpenAIInput
    model: ModelName | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: Dimensions | None = None
    input_type: InputType | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        value = self.input
        if isinstance(value, str):
            return
        _non_empty("input", value)
        kinds = {type(item) for item in value}
        if len(kinds) > 1:
            raise ValueError("`input` mixes texts, token ids and token-id arrays; send one kind")

    def call(self) -> EmbedCall:
        value = self.input
        common = {
            "dimensions": self.dimensions,
            "input_type": self.input_type,
            "encoding": self.encoding_format,
        }
        if isinstance(value, str):
            return EmbedCall([value], **common)  # type: ignore[arg-type]
        if isinstance(value[0], str):
            return EmbedCall(list(value), **common)  # type: ignore[arg-type]
        if isinstance(value[0], int):
            return EmbedCall(None, token_ids=[list(value)], **common)  # type: ignore[arg-type, list-item]
        return EmbedCall(None, token_ids=[list(ids) for ids in value], **common)  # type: ignore[arg-type, union-attr]


TEI_INPUTS_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
    ]
}
TeiInputs = Text | Annotated[list[Text], Meta(min_length=1)]
PromptName = Annotated[
    InputType,
    Meta(description="Text Embeddings Inference's prompt: 'query' or 'document' prefix"),
]


class TeiEmbedRequest(Struct, omit_defaults=True):
    """Text Embeddings Inference `POST /embed` (and `POST /`)."""

    inputs: TeiInputs
    model: ModelName | None = None
    normalize: bool = True
    truncate: bool = True
    truncation_direction: Literal["Right", "right"] = "Right"
    prompt_name: PromptName | None = None
    dimensions: Dimensions | None = None

    def call(self) -> EmbedCall:
        texts = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
        return EmbedCall(
            texts,
            normalize=self.normalize,
            dimensions=self.dimensions,
            input_type=self.prompt_name,
            truncate=self.truncate,
        )


# (type name, property) -> the property's schema in the document.
EXACT_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("OpenAIEmbeddingRequest", "input"): OPENAI_INPUT_SCHEMA,
    ("TeiEmbedRequest", "inputs"): TEI_INPUTS_SCHEMA,
    ("TokenizeRequest", "inputs"): TEI_INPUTS_SCHEMA,
}


class Document(Struct):
    text: Text


RerankDocument = Text | Document


class RerankRequest(Struct, omit_defaults=True):
    """Cohere / Jina `POST /v1/rerank` (and Cohere's `/v2/rerank`)."""

    query: Text
    documents: Annotated[list[RerankDocument], Meta(min_length=1)]
    model: ModelName | None = None
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool = False

    def call(self) -> RerankCall:
        docs = [d if isinstance(d, str) else d.text for d in self.documents]
        return RerankCall(self.query, docs, top_n=self.top_n)


class TeiRerankRequest(Struct, omit_defaults=True):
    """Text Embeddings Inference `POST /rerank`."""

    query: Text
    texts: Annotated[list[Text], Meta(min_length=1)]
    model: ModelName | None = None
    truncate: bool = True
    truncation_direction: Literal["Right", "right"] = "Right"
    raw_scores: bool = False
    return_text: bool = False

    def call(self) -> RerankCall:
        return RerankCall(
            self.query, list(self.texts), truncate=self.truncate, raw_scores=self.raw_scores
        )


class TokenizeRequest(Struct, omit_defaults=True):
    """Text Embeddings Inference `POST /tokenize`."""

    inputs: TeiInputs
    model: ModelName | None = None
    add_special_tokens: bool = True
    prompt_name: PromptName | None = None

    def call(self) -> TokenizeCall:
        texts = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
        return TokenizeCall(texts, self.add_special_tokens, self.prompt_name)


# -- responses (for the document) ----------------------------------------------------


class Usage(Struct):
    prompt_tokens: int
    total_tokens: int


# One vector per input: numbers (float; integers for int8/uint8/binary/ubinary) or a
# base64 string.
Vector = list[float] | str


class EmbedResponse(Struct):
    model: str
    dimension: int
    encoding_format: EncodingFormat
    embeddings: Annotated[
        list[Vector],
        Meta(
            description="float: arrays of numbers; base64: strings; int8/uint8: one integer "
            "per dimension; binary/ubinary: dimension/8 integers (packed sign bits)"
        ),
    ]
    usage: Usage


class OpenAIEmbedding(Struct):
    object: Literal["embedding"]
    index: int
    embedding: Vector


class OpenAIEmbeddingResponse(Struct):
    object: Literal["list"]
    model: str
    data: list[OpenAIEmbedding]
    usage: Usage


class RerankResult(Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankUsage(Struct):
    total_tokens: int


class RerankResponse(Struct):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class TeiRank(Struct, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


class TeiToken(Struct):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiInfo(Struct):
    """Text Embeddings Inference `GET /info` (the gateway's default model)."""

    model_id: str
    model_type: dict[str, dict[str, str]]
    max_input_length: int
    max_client_batch_size: int
    version: str
    model_sha: str | None = None
    model_dtype: str | None = None
    tokenization_workers: int | None = None


class ErrorBody(Struct):
    type: str
    code: str
    message: str
    known_models: list[str] | None = None
    model: str | None = None
    phase: str | None = None
    reason: str | None = None


class ErrorResponse(Struct):
    error: ErrorBody


class Status(Struct):
    status: str
    models: int | None = None
    message: str | None = None


class GatewayModel(Struct):
    name: str
    task: Task
    aliases: list[str]
    default: bool
    dimension: int | None
    matryoshka_dimensions: list[int]
    phase: str
    reason: str
    message: str
    pinned: bool
    ready_pods: int
    waiting_requests: int
    last_request_time: str | None
    requested_at: str | None
    active_since: str | None
    performance: dict[str, Any] | None
    artifact: dict[str, Any] | None


class GatewayModels(Struct):
    default_model: str
    models: list[GatewayModel]


class OpenAIModel(Struct, kw_only=True):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: Task = "embed"
    dimension: int | None = None
    dimensions: list[int] = field(default_factory=list)
    max_length: int | None = None
    ready: bool | None = None


class OpenAIModelList(Struct):
    object: Literal["list"]
    data: list[OpenAIModel]
