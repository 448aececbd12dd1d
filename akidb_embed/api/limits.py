"""What one model accepts, and the checks of a call against it (model server side).

The request types check the shape; these are the refusals that depend on the model:
its names, task, dimensions, vocabulary, output types and per-request limit. The
model server builds `ModelLimits` from its artifact once; the OpenAPI document of a
model server is narrowed to the same limits (`openapi.narrow`), so its document states
what it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from akidb_embed.api.errors import ApiError, Code
from akidb_embed.api.types import ENCODING_FORMATS, EmbedCall, RerankCall

# LangChain's OpenAIEmbeddings tokenizes with tiktoken and sends OpenAI token ids
# unless told not to: say how to send text instead.
TOKEN_IDS_HINT = (
    "token ids must be in this model's own vocabulary (as POST /tokenize returns them); "
    "to send text instead of another tokenizer's ids, e.g. from LangChain's "
    "OpenAIEmbeddings, pass check_embedding_ctx_length=False"
)


@dataclass(frozen=True)
class ModelLimits:
    names: Sequence[str]  # the names this server answers to; the first is canonical
    task: str  # embed | rerank
    dimensions: Sequence[int] = ()  # allowed output dimensions (embed)
    vocab_size: int = 0
    max_inputs: int = 2048  # texts (or documents) per request
    encodings: Sequence[str] = ENCODING_FORMATS  # output types this model can give

    @property
    def name(self) -> str:
        return self.names[0]

    def check_model(self, requested: str | None) -> None:
        if requested is None:
            return
        if requested.lower() not in {n.lower() for n in self.names}:
            raise ApiError(
                Code.MODEL_NOT_FOUND,
                f"model {requested!r} is not served here; this server serves {self.name!r} "
                f"(also known as {', '.join(repr(n) for n in self.names[1:]) or 'nothing else'})",
                details={"known_models": list(self.names)},
            )

    def check_task(self, task: str) -> None:
        if task != self.task:
            raise wrong_task(self.name, self.task, task)

    def _check_count(self, count: int, what: str) -> None:
        if count > self.max_inputs:
            raise ApiError(
                Code.TOO_MANY_INPUTS,
                f"{count} {what} in one request, more than the limit of {self.max_inputs}; "
                "split it into smaller requests",
            )

    def check_embed(self, call: EmbedCall) -> None:
        self.check_task("embed")
        self._check_count(call.count, "inputs")
        if call.dimensions is not None and call.dimensions not in self.dimensions:
            raise ApiError(
                Code.UNSUPPORTED_DIMENSIONS,
                f"dimensions {call.dimensions} is not supported by this model; "
                f"allowed: {sorted(self.dimensions)}",
            )
        if call.encoding not in self.encodings:
            raise ApiError(
                Code.UNSUPPORTED_ENCODING,
                f"encoding_format {call.encoding!r} is not available for this model "
                f"(available: {', '.join(self.encodings)}); int8 and uint8 need quantization "
                "ranges calibrated at conversion",
            )
        if call.token_ids is not None:
            for i, ids in enumerate(call.token_ids):
                bad = [t for t in ids if t >= self.vocab_size]
                if bad:
                    raise ApiError(
                        Code.TOKEN_IDS_NOT_IN_VOCABULARY,
                        f"input[{i}] holds token id {bad[0]}, outside this model's vocabulary "
                        f"of {self.vocab_size} tokens: {TOKEN_IDS_HINT}",
                    )

    def check_rerank(self, call: RerankCall) -> None:
        self.check_task("rerank")
        self._check_count(len(call.documents), "documents")


def wrong_task(model: str, has: str, wanted: str) -> ApiError:
    does = {"embed": "an embedding model", "rerank": "a reranker"}
    route = {"embed": "/v1/embeddings or /api/v1/embed", "rerank": "/v1/rerank or /rerank"}
    return ApiError(
        Code.WRONG_TASK,
        f"model {model!r} is {does.get(has, has)}; it cannot {wanted}: use {route.get(has, has)}",
    )
