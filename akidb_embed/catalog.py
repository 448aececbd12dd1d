"""Model families and the catalog of known embedding models, as data.

One place for each model's serving rules: pooling (and the padding side it needs),
normalization, query/document prefixes, maximum length, dimension and matryoshka
dimensions. The conversion step copies these into the artifact manifest, the model
server reads them from there, and `manifests/models/*.yaml` are generated from here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Pooling = Literal["mean", "cls", "last-token"]
Task = Literal["embed", "rerank"]  # embeddings, or relevance scores of (query, document)
POOLING_MODES: tuple[str, ...] = ("mean", "cls", "last-token")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

QWEN3_DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def padding_side_for(pooling: str) -> Literal["left", "right"]:
    """Last-token pooling reads the final position, so sequences must be left padded."""
    return "left" if pooling == "last-token" else "right"


@dataclass(frozen=True)
class Family:
    """Serving rules shared by every model of an architecture family."""

    name: str
    architecture: str  # transformers model_type: "bert", "qwen3", ...
    pooling: Pooling
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    task: Task = "embed"

    @property
    def padding_side(self) -> Literal["left", "right"]:
        return padding_side_for(self.pooling)


@dataclass(frozen=True)
class CatalogEntry:
    """One known model: where it comes from and how it is served."""

    name: str  # Kubernetes-safe name, also the API model id
    repo_id: str
    family: Family
    dimension: int
    max_length: int
    revision: str = "main"
    matryoshka_dimensions: tuple[int, ...] = ()
    params: str = ""
    languages: tuple[str, ...] = ("en",)
    license: str = ""
    memory: str = "512Mi"  # what one server pod of this model is counted as on the node
    default_precision: str = "fp32"
    aliases: tuple[str, ...] = field(default=())

    @property
    def pooling(self) -> str:
        return self.family.pooling

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["family"] = self.family.name
        data["architecture"] = self.family.architecture
        data["pooling"] = self.family.pooling
        data["padding_side"] = self.family.padding_side
        data["normalize"] = self.family.normalize
        data["query_prefix"] = self.family.query_prefix
        data["document_prefix"] = self.family.document_prefix
        data["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
        data["languages"] = list(self.languages)
        data["aliases"] = list(self.aliases)
        return data


SENTENCE_TRANSFORMERS = Family("sentence-transformers", "bert", "mean")
E5 = Family("e5", "bert", "mean", query_prefix="query: ", document_prefix="passage: ")
BGE = Family(
    "bge",
    "bert",
    "cls",
    query_prefix="Represent this sentence for searching relevant passages: ",
)
# Qwen3-Embedding: instruction on queries only, last-token (EOS) pooling, left padding.
QWEN3_EMBEDDING = Family(
    "qwen3-embedding",
    "qwen3",
    "last-token",
    query_prefix=f"Instruct: {QWEN3_DEFAULT_TASK}\nQuery:",
)

# Cross-encoders (rerankers): a (query, document) pair in, one relevance logit out
# (sequence classification with one label). The classification head reads the first
# token's state, hence "cls"; the score is the logit's sigmoid unless raw scores are
# asked for (as Text Embeddings Inference and sentence-transformers' CrossEncoder do).
CROSS_ENCODER = Family("cross-encoder", "bert", "cls", normalize=False, task="rerank")
XLM_ROBERTA_CROSS_ENCODER = Family(
    "xlm-roberta-cross-encoder", "xlm-roberta", "cls", normalize=False, task="rerank"
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        SENTENCE_TRANSFORMERS,
        E5,
        BGE,
        QWEN3_EMBEDDING,
        CROSS_ENCODER,
        XLM_ROBERTA_CROSS_ENCODER,
    )
}


def _mrl(*dims: int) -> tuple[int, ...]:
    return tuple(sorted(dims))


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        SENTENCE_TRANSFORMERS,
        dimension=384,
        max_length=256,
        params="22.7M",
        license="apache-2.0",
        memory="512Mi",
        aliases=("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ),
    CatalogEntry(
        "e5-small-v2",
        "intfloat/e5-small-v2",
        E5,
        dimension=384,
        max_length=512,
        params="33.4M",
        license="mit",
        memory="512Mi",
        aliases=("intfloat/e5-small-v2",),
    ),
    CatalogEntry(
        "bge-small-en-v1.5",
        "BAAI/bge-small-en-v1.5",
        BGE,
        dimension=384,
        max_length=512,
        params="33.4M",
        license="mit",
        memory="512Mi",
        aliases=("BAAI/bge-small-en-v1.5",),
    ),
    CatalogEntry(
        "qwen3-embedding-0.6b",
        "Qwen/Qwen3-Embedding-0.6B",
        QWEN3_EMBEDDING,
        dimension=1024,
        max_length=8192,
        matryoshka_dimensions=_mrl(32, 64, 128, 256, 512, 768, 1024),
        params="0.6B",
        languages=("multilingual",),
        license="apache-2.0",
        memory="3Gi",
        default_precision="fp16",
        aliases=("Qwen/Qwen3-Embedding-0.6B",),
    ),
    CatalogEntry(
        "qwen3-embedding-4b",
        "Qwen/Qwen3-Embedding-4B",
        QWEN3_EMBEDDING,
        dimension=2560,
        max_length=8192,
        matryoshka_dimensions=_mrl(32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 2560),
        params="4B",
        languages=("multilingual",),
        license="apache-2.0",
        memory="10Gi",
        default_precision="fp16",
        aliases=("Qwen/Qwen3-Embedding-4B",),
    ),
    CatalogEntry(
        "qwen3-embedding-8b",
        "Qwen/Qwen3-Embedding-8B",
        QWEN3_EMBEDDING,
        dimension=4096,
        max_length=8192,
        matryoshka_dimensions=_mrl(32, 64, 128, 256, 512, 1024, 2048, 3072, 4096),
        params="8B",
        languages=("multilingual",),
        license="apache-2.0",
        memory="20Gi",
        default_precision="fp16",
        aliases=("Qwen/Qwen3-Embedding-8B",),
    ),
    CatalogEntry(
        "ms-marco-minilm-l6-v2",
        "cross-encoder/ms-marco-MiniLM-L6-v2",
        CROSS_ENCODER,
        dimension=384,
        max_length=512,
        params="22.7M",
        license="apache-2.0",
        memory="512Mi",
        aliases=("ms-marco-MiniLM-L6-v2", "cross-encoder/ms-marco-MiniLM-L-6-v2"),
    ),
    CatalogEntry(
        "bge-reranker-v2-m3",
        "BAAI/bge-reranker-v2-m3",
        XLM_ROBERTA_CROSS_ENCODER,
        dimension=1024,
        max_length=8192,
        params="568M",
        languages=("multilingual",),
        license="apache-2.0",
        memory="3Gi",
        default_precision="fp16",
        aliases=(),
    ),
)


class UnknownModelError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        known = ", ".join(e.name for e in CATALOG)
        return f"unknown model {self.name!r}; known models: {known}"


def lookup(name: str) -> CatalogEntry:
    """Find a catalog entry by name, alias or hub repo id (case-insensitive)."""
    wanted = name.lower()
    for entry in CATALOG:
        keys = {entry.name.lower(), entry.repo_id.lower(), *(a.lower() for a in entry.aliases)}
        if wanted in keys:
            return entry
    raise UnknownModelError(name)


def find_by_repo(repo_id: str) -> CatalogEntry | None:
    try:
        return lookup(repo_id)
    except UnknownModelError:
        return None


def catalog_json() -> str:
    return json.dumps({"models": [e.to_dict() for e in CATALOG]}, indent=2)
